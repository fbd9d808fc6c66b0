//! Use cases of the integrator API: each takes what a handler extracted and
//! returns an outcome or a refusal, never a status code. The HTTP layer
//! maps them (`http::v1`); the final answer an idempotent request stores
//! is rendered by it too and handed in as a [`Finalize`], so that it is
//! written in the same durable batch as the effect it answers for.
//!
//! - [`labels`]: buying a shipment's label at the carrier, with the intent
//!   recorded first, and voiding one.
//! - [`shipments`]: create a shipment, buy its label, cancel it.
//! - [`orders`]: reserve, charge, create the shipment, buy its label; and
//!   the background fulfilment of orders whose label could not be bought.

pub mod labels;
pub mod orders;
pub mod shipments;

use crate::downstream::{Downstream, Service};
use crate::store::{StateError, Store};

/// Why a use case did not do what it was asked. The HTTP layer maps each
/// to its answer in one place; whether that answer is final (and stored
/// under the idempotency key) is the contract's rule, not the use case's.
#[derive(Debug)]
pub enum Refusal {
    /// The shipment cannot make this move (cancelled, moving, done).
    InvalidTransition(String),
    /// The shipment has this label, bought under another key.
    LabelExists(String),
    /// The order id is taken by a request with another key.
    OrderExists,
    /// A downstream could not be reached, refused, or answered nonsense;
    /// retrying later may work.
    Upstream {
        service: Service,
        retry_after_secs: u64,
    },
    Store(StateError),
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Self {
        Refusal::Store(e)
    }
}

/// What the use cases work with.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    pub store: &'a dyn Store,
    pub downstream: &'a Downstream,
}
