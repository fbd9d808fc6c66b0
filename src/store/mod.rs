//! The store port: what the use cases, the HTTP layer and the background
//! tasks ask of storage, and the records they exchange. Two adapters
//! implement it:
//!
//! - [`sled`] (the default): one process, an embedded sled tree for the
//!   index and state and segment files for the payloads;
//! - [`postgres`]: any number of processes on one PostgreSQL database,
//!   which is the only coordinator between them.
//!
//! [`open`] picks one from `[store] backend`; nothing above this module
//! knows which runs. Every method that changes something returns only
//! once the change is durable, and a method that takes a [`Completion`]
//! writes that final answer in the same atomic write as its effect.

pub mod core;
pub mod packed;
pub mod postgres;
pub mod records;
pub mod sled;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{SourceConfig, StoreBackend, StoreConfig};
use crate::domain::ids::{LabelId, OrderId, OrderKey, PartnerName, ShipmentId, TrackingNumber};
use crate::domain::label::{Label, LabelRequest, LabelVoid};
use crate::health::Health;
use crate::idempotency::{Decision, Fingerprint, IdempotencyKey, StoredAnswer};
pub use records::{DispatchOutcome, EventMeta, OrderRecord, OutcomeRecord, ShipmentRecord};
pub use sled::SledStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record is there and cannot be read. Never taken for an absent
    /// one: that would accept a duplicate, delete live data or skip an
    /// event. The operation that met it fails (503) and it is counted
    /// (`waybill_store_unreadable_records_total`).
    #[error("unreadable record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A record, named by `what`, that is there and cannot be read:
    /// logged at ERROR and counted where it is met.
    #[track_caller]
    pub fn corrupt(what: impl Into<String>) -> StoreError {
        let what = what.into();
        if !UNREPORTED.get() {
            let at = std::panic::Location::caller();
            tracing::error!(record = %what, at = %at, "a stored record cannot be read");
            metrics::counter!(crate::telemetry::metric::UNREADABLE).increment(1);
        }
        StoreError::Corrupt(what)
    }
}

thread_local! {
    static UNREPORTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `read`, a read done only to bring records into a cache ahead of
/// the same read that follows, without reporting the unreadable records
/// it meets: the read that follows reports them, once.
pub(crate) fn unreported<T>(read: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            UNREPORTED.set(self.0);
        }
    }
    let _restore = Restore(UNREPORTED.replace(true));
    read()
}

/// An event that passed every check and is to be remembered.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub source: String,
    pub event_id: String,
    pub received_at_ms: u64,
    pub expires_at_ms: u64,
    pub content_hash: [u8; 32],
    pub dispatch: bool,
    pub event_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub tracking_number: Option<String>,
    pub order_id: Option<String>,
    /// The mapped fields of a dispatched event, read at intake.
    pub fields: Option<crate::webhook::mapping::Fields>,
    pub body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestResult {
    Accepted {
        received_at_ms: u64,
    },
    Duplicate {
        first_received_at_ms: u64,
        conflict: bool,
    },
}

/// A stored event as read back.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub source: String,
    pub event_id: String,
    /// The arrival sequence number.
    pub seq: u64,
    pub meta: EventMeta,
    pub body: Vec<u8>,
}

impl StoredEvent {
    /// What the admin API shows as the event's outcome: the dispatch outcome
    /// once there is one; before that `pending` (in the inbox) or `stored`
    /// (not for the state machine).
    pub fn outcome_name(&self, record: Option<&OutcomeRecord>) -> &'static str {
        match record {
            Some(r) => r.outcome.as_str(),
            None if self.meta.dispatch => "pending",
            None => "stored",
        }
    }
}

/// What a search found, newest first.
#[derive(Debug)]
pub struct Search {
    pub events: Vec<(StoredEvent, Option<OutcomeRecord>)>,
    /// False when the scan bound stopped it before the end of its index.
    pub complete: bool,
    /// Where the next page starts (`EventFilter::before_seq`): the last
    /// sequence number read, when the page or the scan bound ended the
    /// search before the end of what could match; None at the end.
    pub next_before: Option<u64>,
}

/// Search criteria for stored events; every one given must match.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub source: Option<String>,
    pub event_id: Option<String>,
    pub tracking_number: Option<String>,
    pub order_id: Option<String>,
    pub outcome: Option<String>,
    pub event_type: Option<String>,
    /// Received at or after / at or before (unix milliseconds).
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only events older than this arrival (a cursor: the previous page's
    /// `next_before`).
    pub before_seq: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("not found")]
    NotFound,
    #[error("not redeliverable: {0}")]
    NotRedeliverable(String),
    /// A shipment with this id is stored already.
    #[error("shipment {0} exists")]
    ShipmentExists(ShipmentId),
    /// The carrier's tracking number is another shipment's.
    #[error("tracking number {tracking_number} belongs to shipment {owner}")]
    TrackingNumberTaken {
        tracking_number: TrackingNumber,
        owner: ShipmentId,
    },
    #[error("the shipment is moving or done")]
    InvalidTransition,
    /// The shipment already has a label, bought under another key.
    #[error("the shipment already has label {0}")]
    LabelExists(LabelId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The final answer of an idempotent request, stored under its key in the
/// same atomic write as the effect it answers for.
#[derive(Debug, Clone)]
pub struct Completion {
    pub partner: PartnerName,
    pub key: IdempotencyKey,
    pub record: crate::idempotency::Record,
}

/// A request's claim on its idempotency key.
#[derive(Debug, Clone)]
pub struct Claim {
    pub partner: PartnerName,
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    /// How long the claim holds the key before another request may resume
    /// it.
    pub lease: std::time::Duration,
}

impl Claim {
    /// The record that holds the key for this claim, made at `now_ms` by
    /// the process of `epoch`.
    pub fn record(&self, epoch: u64, now_ms: u64) -> crate::idempotency::Record {
        crate::idempotency::Record::InProgress {
            fingerprint: self.fingerprint,
            epoch,
            lease_until_ms: now_ms
                .saturating_add(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// A cancel of a shipment that is not moving.
#[derive(Debug, Clone)]
pub struct Cancel {
    pub shipment_id: ShipmentId,
    pub at_ms: u64,
    /// The label was already voided at the carrier for this cancel.
    pub voided: bool,
    /// Stored with the cancel, when it answers an idempotent request.
    pub answer: Option<CancelAnswer>,
}

impl Cancel {
    /// A cancel at `at_ms` that voided nothing and stores no answer.
    pub fn at(shipment_id: ShipmentId, at_ms: u64) -> Cancel {
        Cancel {
            shipment_id,
            at_ms,
            voided: false,
            answer: None,
        }
    }
}

/// How to store the answer to a cancel, which is the shipment as the
/// cancel leaves it: rendered where the shipment is changed, in the same
/// atomic write.
#[derive(Debug, Clone)]
pub struct CancelAnswer {
    pub partner: PartnerName,
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    pub expires_at_ms: u64,
    pub render: fn(&ShipmentRecord) -> StoredAnswer,
}

impl CancelAnswer {
    /// The stored answer: the shipment as the cancel left it.
    pub fn completion(self, shipment: &ShipmentRecord) -> Completion {
        let answer = (self.render)(shipment);
        Completion {
            partner: self.partner,
            key: self.key,
            record: crate::idempotency::Record::Done {
                fingerprint: self.fingerprint,
                status: answer.status,
                body: answer.body,
                expires_at_ms: self.expires_at_ms,
            },
        }
    }
}

/// What creating an order found.
#[derive(Debug, Clone)]
pub enum OrderCreated {
    Created(OrderRecord),
    /// An order with that partner and id was there already.
    Existing(OrderRecord),
}

/// A label to record with an order's step.
#[derive(Debug, Clone)]
pub struct NewLabel {
    pub label: Label,
    pub at_ms: u64,
}

/// One step of an order's flow, written at once: the order as it now is,
/// and what comes with the step.
#[derive(Debug, Clone)]
pub struct OrderWrite {
    pub order: OrderRecord,
    /// The order's shipment, created with the step that records the charge.
    pub new_shipment: Option<ShipmentRecord>,
    /// The label of the order's shipment.
    pub label: Option<NewLabel>,
    /// The final answer of the request that took the step.
    pub completion: Option<Completion>,
    /// The fulfilment entry to remove (its due time), the order having left
    /// the queue or moved in it.
    pub unschedule: Option<u64>,
}

impl OrderWrite {
    /// The order as it now is, and nothing with it.
    pub fn of(order: OrderRecord) -> OrderWrite {
        OrderWrite {
            order,
            new_shipment: None,
            label: None,
            completion: None,
            unschedule: None,
        }
    }

    pub fn with_shipment(self, shipment: ShipmentRecord) -> OrderWrite {
        OrderWrite {
            new_shipment: Some(shipment),
            ..self
        }
    }

    /// With the final answer of the request that took the step.
    pub fn answered(self, completion: Completion) -> OrderWrite {
        OrderWrite {
            completion: Some(completion),
            ..self
        }
    }

    /// Out of the fulfilment queue where it was due at `due_ms`.
    pub fn leaving_queue(self, due_ms: u64) -> OrderWrite {
        OrderWrite {
            unschedule: Some(due_ms),
            ..self
        }
    }
}

/// A recorded label and what it did to the events parked for it.
#[derive(Debug, Clone)]
pub struct LabelRecorded {
    pub shipment: ShipmentRecord,
    pub unparked: Vec<(String, DispatchOutcome)>,
}

/// Counts dispatch outcomes (`waybill_dispatch_total`).
fn count_dispatched(counted: &[(String, DispatchOutcome)]) {
    for (source, outcome) in counted {
        metrics::counter!(crate::telemetry::metric::DISPATCH, "source" => source.clone(), "outcome" => outcome.as_str()).increment(1);
    }
}

/// Counts what a redelivery of an event that was `before` did. An event
/// that stays parked or dead was counted when it became so, and a
/// redelivery that leaves it so is not counted again (GUARANTEES.md: "Counters"): a
/// bulk redelivery of dead events that stay dead must not look like new
/// ones to the dead-events alert.
fn count_redelivered(before: DispatchOutcome, counted: &[(String, DispatchOutcome)]) {
    let changed: Vec<_> = counted
        .iter()
        .filter(|(_, outcome)| *outcome != before)
        .cloned()
        .collect();
    count_dispatched(&changed);
}

/// The port's traits, for callers: `use crate::store::prelude::*`.
pub mod prelude {
    pub use super::{Dispatch, Events, Intake, Keys, Orders, Shipments, Store, Upkeep};
}

/// What every adapter does, one trait per role; the composition root
/// holds the whole (`Arc<dyn Store>`) and each caller uses its roles.
/// Reads and writes are async: the sled adapter answers most from memory,
/// the PostgreSQL one over the network.
pub trait Store: Intake + Dispatch + Keys + Shipments + Orders + Events + Upkeep {}

impl<T: Intake + Dispatch + Keys + Shipments + Orders + Events + Upkeep> Store for T {}

/// Takes in new events.
#[async_trait]
pub trait Intake: Send + Sync {
    /// Remembers a new event durably, or reports the first copy (GUARANTEES.md:
    /// "Event identity"). Answers only once the event is durable
    /// (GUARANTEES.md: "Durable before acknowledged").
    async fn ingest(&self, event: NewEvent) -> Result<IngestResult, StoreError>;
}

/// Applies stored events to shipments and orders.
#[async_trait]
pub trait Dispatch: Send + Sync {
    /// Starts dispatch: events already pending are applied at once, then
    /// every new one (GUARANTEES.md: "Dispatch").
    fn start_dispatcher(&self, sources: Vec<SourceConfig>) -> Result<(), StoreError>;

    /// Replaces the sources dispatch interprets events with (a reload).
    fn set_sources(&self, sources: Vec<SourceConfig>);

    /// Resolves once every event accepted before the call is dispatched.
    async fn settle(&self) -> Result<(), StateError>;

    /// Dispatches a parked or dead event again; its new outcome.
    async fn redeliver(&self, source: &str, event_id: &str) -> Result<OutcomeRecord, StateError>;
}

/// Idempotency keys: claims and final answers.
#[async_trait]
pub trait Keys: Send + Sync {
    /// Claims an idempotency key for a request with this fingerprint, or
    /// says what the request gets instead (replay, conflict, in progress).
    async fn claim(&self, claim: &Claim) -> Result<Decision, StateError>;

    /// Gives up this process's claim on a key (the answer was not final),
    /// so that a retry sent after the answer runs.
    async fn release(&self, partner: &PartnerName, key: &IdempotencyKey);

    /// Stores the final answer of a request that wrote nothing else.
    async fn finish(&self, completion: Completion) -> Result<(), StateError>;
}

/// Shipments and their labels.
#[async_trait]
pub trait Shipments: Send + Sync {
    /// Stores a new shipment, with the final answer of the request that
    /// created it when given.
    async fn create_shipment(
        &self,
        rec: ShipmentRecord,
        completion: Option<Completion>,
    ) -> Result<(), StateError>;

    /// Records the carrier request of a label purchase before it is sent;
    /// returns the request to send, an earlier purchase's when there was one.
    async fn record_intent(
        &self,
        shipment_id: &ShipmentId,
        request: LabelRequest,
    ) -> Result<LabelRequest, StateError>;

    /// Records a shipment's label and applies, in the same write, every
    /// tracking event parked for its tracking number.
    async fn record_label(
        &self,
        label: NewLabel,
        completion: Option<Completion>,
    ) -> Result<LabelRecorded, StateError>;

    /// Cancels a shipment that is not moving.
    async fn cancel(&self, cancel: Cancel) -> Result<ShipmentRecord, StateError>;

    async fn shipment(
        &self,
        shipment_id: &ShipmentId,
    ) -> Result<Option<ShipmentRecord>, StoreError>;

    /// The shipments of `ids` that exist, in no particular order: one read
    /// for a page of orders.
    async fn shipments(&self, ids: &[ShipmentId]) -> Result<Vec<ShipmentRecord>, StoreError>;

    /// Shipments whose owed label void is due at `now_ms`, soonest first,
    /// at most `limit`. Each is this process's to work on for a while:
    /// other processes sharing the store skip it until it is settled or
    /// the claim runs out.
    async fn due_voids(&self, now_ms: u64, limit: usize) -> Result<Vec<ShipmentId>, StoreError>;

    /// Settles a shipment's owed void (`Work::settle_void`).
    async fn settle_void(
        &self,
        id: &ShipmentId,
        outcome: LabelVoid,
    ) -> Result<Option<ShipmentRecord>, StateError>;

    /// How many label voids are owed.
    async fn voids_owed(&self) -> Result<u64, StoreError>;
}

/// Orders and their background fulfilment.
#[async_trait]
pub trait Orders: Send + Sync {
    /// Creates an order, or answers the one already there with its partner
    /// and id. Payment events parked for the order id are applied with it.
    async fn create_order(&self, record: OrderRecord) -> Result<OrderCreated, StateError>;

    /// Records a step of an order's flow with what comes with it.
    async fn write_order(&self, write: OrderWrite) -> Result<OrderRecord, StateError>;

    async fn order(&self, key: &OrderKey) -> Result<Option<OrderRecord>, StoreError>;

    /// A partner's orders, newest first: `limit` of them after skipping
    /// `skip`, and how many the partner has.
    async fn orders(
        &self,
        partner: &PartnerName,
        skip: usize,
        limit: usize,
    ) -> Result<(usize, Vec<OrderRecord>), StoreError>;

    /// Orders whose background fulfilment is due at `now_ms`, soonest
    /// first, at most `limit`: (due, partner, order id). Each is this
    /// process's to work on for a while: other processes sharing the store
    /// skip it until the order is written or the claim runs out.
    async fn due_fulfilments(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PartnerName, OrderId)>, StoreError>;
}

/// What is stored about events, for operators.
#[async_trait]
pub trait Events: Send + Sync {
    async fn event(&self, source: &str, event_id: &str) -> Result<Option<StoredEvent>, StoreError>;

    /// What dispatch did with an event; None before it was dispatched (or
    /// when it is not for the state machine).
    async fn outcome(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<OutcomeRecord>, StoreError>;

    /// Events matching every given criterion, newest first, reading at
    /// most `max_scan` candidates (`Search::complete` says whether it got
    /// to the end).
    async fn search(
        &self,
        filter: &EventFilter,
        limit: usize,
        max_scan: usize,
    ) -> Result<Search, StoreError>;
}

/// Retention, gauges, health and shutdown.
#[async_trait]
pub trait Upkeep: Send + Sync {
    /// Forgets up to `limit` events whose retention ended before `now_ms`;
    /// how many.
    async fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// Forgets up to `limit` stored idempotent answers past retention.
    async fn sweep_idempotency(&self, now_ms: u64, limit: usize) -> Result<usize, StateError>;

    /// Events waiting for dispatch.
    async fn inbox_pending(&self) -> Result<i64, StoreError>;

    /// Events parked now (`waybill_parked_events`).
    async fn parked(&self) -> Result<u64, StoreError>;

    /// Events dead now (`waybill_dead_events`).
    async fn dead(&self) -> Result<u64, StoreError>;

    /// When the oldest event waiting for dispatch arrived.
    async fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError>;

    /// Bytes the store takes (`waybill_store_size_bytes`). May block
    /// briefly: call it off the async workers.
    fn size_bytes(&self) -> u64;

    /// Free space where the store writes, when the adapter can know it
    /// (`waybill_store_free_bytes`). May block briefly.
    fn free_bytes(&self) -> Option<u64>;

    /// Whether the store takes writes and dispatch runs.
    fn is_ready(&self) -> bool;

    /// Wakes the adapter's background work so that it beats while idle.
    /// Never waits.
    fn ping(&self);

    /// Stops the background work after what is queued and makes
    /// everything durable. Blocks: call it off the async workers.
    fn close(&self) -> Result<(), StoreError>;
}

/// Opens the store `[store]` names to read it and nothing else: no
/// dispatcher, no migrations (the tools that read it beside, or instead
/// of, a gateway). sled waits a while for another process to let go.
pub async fn open_to_read(cfg: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match &cfg.backend {
        StoreBackend::Sled => {
            let cfg = cfg.clone();
            let store = tokio::task::spawn_blocking(move || SledStore::open(&cfg))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Ok(Arc::new(store))
        }
        StoreBackend::Postgres { url, ca_certs, .. } => Ok(Arc::new(postgres::PgStore::connect(
            url.expose(),
            ca_certs,
            2,
            Health::new(),
        )?)),
    }
}

/// Opens the store `[store]` names and starts its dispatcher. Migrations
/// run first on PostgreSQL.
pub async fn open(
    cfg: &StoreConfig,
    health: Arc<Health>,
    sources: Vec<SourceConfig>,
) -> Result<Arc<dyn Store>, StoreError> {
    match &cfg.backend {
        StoreBackend::Sled => {
            let cfg = cfg.clone();
            let store = tokio::task::spawn_blocking(move || {
                let store = SledStore::open_supervised(&cfg, health)?;
                store.start_dispatcher(sources)?;
                Ok::<_, StoreError>(store)
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Ok(Arc::new(store))
        }
        StoreBackend::Postgres {
            url,
            pool_size,
            ca_certs,
        } => {
            let store = postgres::PgStore::connect(url.expose(), ca_certs, *pool_size, health)?;
            store.migrate().await?;
            store.start_dispatcher(sources)?;
            Ok(Arc::new(store))
        }
    }
}
