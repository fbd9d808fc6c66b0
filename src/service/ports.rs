//! The services the use cases call, as they need them: typed requests and
//! answers, each call idempotent under a key formed from the business
//! identity it acts on (never the integrator's key), so that a retry after
//! a lost answer gets the first answer back. `downstream` implements them
//! over HTTP; the use cases' tests implement them with fakes.

use async_trait::async_trait;

use crate::domain::ids::{
    LabelId, OrderId, PartnerName, ReservationId, TrackingNumber, TransactionId,
};
use crate::domain::label::LabelRequest;
use crate::domain::request::Item;

/// The services called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Carrier,
    Payments,
    Inventory,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Carrier, Service::Payments, Service::Inventory];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Carrier => "carrier",
            Service::Payments => "payments",
            Service::Inventory => "inventory",
        }
    }
}

/// Why a call did not give its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Unreachable after every attempt, or its breaker is open.
    Unavailable { retry_after_secs: u64 },
    /// The service answered with a status that means no answer (an error
    /// other than the refusals each call names).
    Refused { status: u16 },
    /// A success that lacks what a success carries.
    Malformed { missing: &'static str },
}

/// A label the carrier sold (or sold before under the same key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSold {
    pub label_id: LabelId,
    pub tracking_number: TrackingNumber,
    /// The carrier's name for itself, when it gives one.
    pub carrier: Option<String>,
}

#[async_trait]
pub trait Carrier: Send + Sync {
    /// Buys the label `request` asks for, under the key
    /// `label:<shipment_id>`: asked again, the carrier answers the label
    /// it sold the first time.
    async fn buy_label(&self, request: &LabelRequest) -> Result<LabelSold, Failure>;

    /// Voids a label under the key `void:<label_id>`. A label the carrier
    /// does not know is void.
    async fn void_label(&self, label_id: &LabelId) -> Result<(), Failure>;

    /// Voids a label again, under a key of its own (`void:<label_id>:<again>`):
    /// one the carrier shows active after an earlier void would otherwise
    /// get that void's stored answer and stay active.
    async fn void_label_again(&self, label_id: &LabelId, again: &str) -> Result<(), Failure> {
        let _ = again;
        self.void_label(label_id).await
    }
}

/// What a charge came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    Paid { transaction_id: TransactionId },
    Declined,
}

/// What an order is charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest<'a> {
    pub partner: &'a PartnerName,
    pub order_id: &'a OrderId,
    pub amount_cents: u64,
    pub currency: &'a str,
    pub customer_id: &'a str,
}

#[async_trait]
pub trait Payments: Send + Sync {
    /// Charges an order once, under the key `charge:<partner>:<order_id>`.
    async fn charge(&self, request: ChargeRequest<'_>) -> Result<Charge, Failure>;
}

/// What a reservation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Reserved { reservation_id: ReservationId },
    OutOfStock,
}

#[async_trait]
pub trait Inventory: Send + Sync {
    /// Reserves an order's items once, under the key
    /// `reserve:<partner>:<order_id>`.
    async fn reserve(
        &self,
        partner: &PartnerName,
        order_id: &OrderId,
        items: &[Item],
    ) -> Result<Reservation, Failure>;

    /// Gives a reservation back, under the key
    /// `release:<partner>:<order_id>`. One the inventory does not know is
    /// given back.
    async fn release(
        &self,
        partner: &PartnerName,
        order_id: &OrderId,
        reservation_id: &ReservationId,
    ) -> Result<(), Failure>;
}

/// One thing a service has on record: a label, a charge, a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id at the service.
    pub id: String,
    /// The idempotency key it was made under; none when it was made
    /// without one (outside waybill).
    pub key: Option<String>,
    /// Still in force: a label not voided, a reservation not released; a
    /// charge always.
    pub active: bool,
    /// A charge's amount and currency.
    pub amount: Option<(i64, String)>,
}

/// A page of a service's records, newest first, and where the next starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next: Option<String>,
}

/// Which page of a service's books: its records made after `since_ms`
/// (all without it), from `cursor` (the first page without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAt<'a> {
    pub service: Service,
    pub since_ms: Option<u64>,
    pub cursor: Option<&'a str>,
}

/// The services' own books, read a page at a time: what reconciliation
/// compares with waybill's records.
#[async_trait]
pub trait Books: Send + Sync {
    async fn page(&self, at: PageAt<'_>) -> Result<Page, Failure>;
}
