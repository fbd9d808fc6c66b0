//! Use cases of the integrator API, end to end: each takes what a handler
//! extracted and answers an outcome or a [`Refusal`], never a status code.
//! The idempotent lifecycle (claim, run, store the final answer or give
//! the key back) is [`keyed`]'s; the answers stored under keys are worded
//! by the caller through [`Render`] and written in the same durable write
//! as the effect they answer for.
//!
//! - [`labels`]: buying a shipment's label at the carrier, with the intent
//!   recorded first, and voiding one.
//! - [`shipments`]: create a shipment, buy its label, cancel it, read it.
//! - [`orders`]: reserve, charge, create the shipment, buy its label; read
//!   and list orders; and the background fulfilment of orders whose label
//!   could not be bought.
//! - [`events`]: the operator's: search events, show one, redeliver one
//!   or every one that matches.

pub mod events;
pub mod keyed;
pub mod labels;
pub mod orders;
pub mod ports;
pub mod reconcile;
pub mod shipments;

use crate::domain::ids::LabelId;
use crate::domain::label::Label;
use crate::store::{Keys, OrderRecord, Orders, ShipmentRecord, Shipments, StateError, StoreError};
pub use keyed::{Answered, Keyed, StoredAnswer};
pub use orders::Placed;
use ports::{Carrier, Failure, Inventory, Payments, Service};

/// Why a use case did not do what it was asked. The HTTP layer maps each
/// to its answer in one place; whether one is final (and stored under the
/// idempotency key) is [`Refusal::is_final`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The shipment cannot make this move (cancelled, moving, done).
    #[error("{0}")]
    InvalidTransition(String),
    /// The shipment has this label, bought under another key.
    #[error("the shipment has label {0}")]
    LabelExists(LabelId),
    /// The order id is taken by a request with another key.
    #[error("the order id is taken")]
    OrderExists,
    /// A downstream could not be reached, refused, or answered nonsense;
    /// retrying later may work.
    #[error("the {} service is unavailable", .service.as_str())]
    Upstream {
        service: Service,
        retry_after_secs: u64,
    },
    /// No such shipment or order (named) for this partner.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The key was used for another request.
    #[error("the idempotency key was used for another request")]
    KeyConflict,
    /// A request with the key is still running.
    #[error("a request with the idempotency key is running")]
    KeyInProgress,
    /// The event is neither parked nor dead (why).
    #[error("{0}")]
    NotRedeliverable(String),
    /// The store failed; retrying later may work.
    #[error(transparent)]
    Store(StoreError),
}

impl Refusal {
    /// Whether the refusal is the request's final answer, stored under its
    /// key and repeated to its retries (GUARANTEES.md: "Idempotency keys"); any other gives the
    /// key back so that a retry runs.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Refusal::InvalidTransition(_) | Refusal::LabelExists(_) | Refusal::OrderExists
        )
    }

    /// A call to `service` that did not give its answer; the one place
    /// such a failure is logged (an unreachable service is logged by the
    /// client, per attempt).
    pub fn upstream(service: Service, failure: Failure) -> Refusal {
        let retry_after_secs = match failure {
            Failure::Unavailable { retry_after_secs } => retry_after_secs,
            Failure::Refused { status } => {
                tracing::warn!(
                    service = service.as_str(),
                    status,
                    "the service refused the call"
                );
                1
            }
            Failure::Malformed { missing } => {
                tracing::error!(
                    service = service.as_str(),
                    missing,
                    "the service's answer lacks what a success carries"
                );
                1
            }
        };
        Refusal::Upstream {
            service,
            retry_after_secs,
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NotFound => Refusal::NotFound("resource"),
            StateError::InvalidTransition => {
                Refusal::InvalidTransition("the shipment is moving or done".into())
            }
            StateError::LabelExists(id) => Refusal::LabelExists(id),
            StateError::Store(e) => Refusal::Store(e),
            // None of these reaches an integrator's request: a minted id,
            // a carrier's tracking number (handled where a label is
            // recorded), a redelivery. Should one, it is the store's.
            other @ (StateError::ShipmentExists(_)
            | StateError::TrackingNumberTaken { .. }
            | StateError::NotRedeliverable(_)) => {
                Refusal::Store(StoreError::Unavailable(other.to_string()))
            }
        }
    }
}

/// How the caller words the answers stored under idempotency keys.
pub trait Render: Sync {
    /// A shipment just created (201).
    fn created(&self, shipment: &ShipmentRecord) -> StoredAnswer;
    /// A label just bought (201).
    fn label(&self, label: &Label) -> StoredAnswer;
    /// How an order request ended.
    fn placed(&self, placed: Placed, order: &OrderRecord) -> StoredAnswer;
    /// A final refusal.
    fn refusal(&self, refusal: &Refusal) -> StoredAnswer;
    /// The answer to a cancel, the shipment as the cancel leaves it: a
    /// plain function, since the store calls it inside its write.
    fn cancelled(&self) -> fn(&ShipmentRecord) -> StoredAnswer;
}

/// What the use cases work with.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    pub keys: &'a dyn Keys,
    pub shipments: &'a dyn Shipments,
    pub orders: &'a dyn Orders,
    pub carrier: &'a dyn Carrier,
    pub payments: &'a dyn Payments,
    pub inventory: &'a dyn Inventory,
}

#[cfg(test)]
mod tests;
