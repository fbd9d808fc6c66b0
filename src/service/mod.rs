//! Use cases of the integrator API: each takes what a handler extracted and
//! returns an outcome or a refusal, never a status code. The HTTP layer
//! maps them (`http::v1`); the final answer an idempotent request stores
//! is rendered by it too and handed in as a [`Finalize`], so that it is
//! written in the same durable batch as the effect it answers for.
//!
//! - [`labels`]: buying a shipment's label at the carrier, with the intent
//!   recorded first, and voiding one.
//! - [`orders`]: reserve, charge, create the shipment, buy its label; and
//!   the background fulfilment of orders whose label could not be bought.

pub mod labels;
pub mod orders;

use crate::config::Config;
use crate::downstream::Downstream;
use crate::store::Store;

/// What the use cases work with.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    pub store: &'a Store,
    pub downstream: &'a Downstream,
    pub config: &'a Config,
}
