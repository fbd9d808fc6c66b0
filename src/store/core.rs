//! The writes that change shipments, orders and dispatch outcomes, written
//! once for both adapters: dispatch an event, record a label and unpark
//! what waited for it, create and write an order, cancel a shipment,
//! record a label's intent, redeliver an event.
//!
//! Each runs inside one unit of work ([`Unit`]) that an adapter provides:
//! a sled batch on the state-machine thread, or a PostgreSQL transaction.
//! A unit reads records (locking them where the adapter locks), keeps what
//! it read so that two events for one shipment in one unit see each other,
//! and buffers what is written until the adapter commits the unit as one
//! atomic write. The rules of each record's own change are the records'
//! (`store::records`); what to read, in which order, and what to write
//! with what, is here. So a rule changes in one place, whatever the store.
//!
//! The functions are async because PostgreSQL's unit waits on the
//! database; sled's never waits, and its state machine runs them to the
//! end in one poll ([`run_now`]).

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;

use super::{
    Cancel, Completion, DispatchOutcome, LabelRecorded, NewLabel, OrderCreated, OrderRecord,
    OrderWrite, OutcomeRecord, ShipmentRecord, StateError, StoreError,
};
use crate::config::SourceConfig;
use crate::domain::ids::{OrderId, OrderKey, ShipmentId, TrackingNumber};
use crate::domain::label::{Label, LabelRequest, LabelVoid};
use crate::webhook::mapping::{Interpretation, interpret};

/// The sources events are read with, by name.
pub type Sources = HashMap<String, SourceConfig>;

/// What a unit counted: (source, outcome) per event dispatched, for
/// `waybill_dispatch_total`.
pub type Counted = Vec<(String, DispatchOutcome)>;

/// What an event may wait under while parked, and the name of the lock
/// that serialises parking and unparking under it across processes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ParkKey {
    Tracking(TrackingNumber),
    Order(OrderId),
}

impl ParkKey {
    pub fn lock_name(&self) -> String {
        match self {
            ParkKey::Tracking(tn) => format!("t:{tn}"),
            ParkKey::Order(id) => format!("o:{id}"),
        }
    }

    fn of(interpretation: &Interpretation) -> Option<ParkKey> {
        match interpretation {
            Interpretation::Tracking {
                tracking_number, ..
            } => Some(ParkKey::Tracking(TrackingNumber::from(
                tracking_number.as_str(),
            ))),
            Interpretation::Payment { order_id, .. } => {
                Some(ParkKey::Order(OrderId::from(order_id.as_str())))
            }
            _ => None,
        }
    }
}

/// A stored event handed to dispatch: where its outcome goes (its
/// sequence number), whose it is, and what it was before.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub source: String,
    pub event_id: String,
    pub received_at_ms: u64,
    /// Its outcome so far; None while it waits in the inbox.
    pub outcome: Option<OutcomeRecord>,
}

impl Stored {
    fn attempts(&self) -> u32 {
        self.outcome.as_ref().map_or(0, |o| o.attempts)
    }
}

/// The primitives a store provides for one atomic write. Reads return
/// what the unit has seen (written or read earlier in it) before asking
/// the store; writes are buffered, or made inside the transaction, and
/// land with the unit's commit.
#[async_trait]
pub trait Unit: ShipmentRows + OrderRows + EventRows {
    /// Takes the locks that serialise parking and unparking under these
    /// keys, all at once, before any row is read (the lock order).
    async fn lock(&mut self, keys: &BTreeSet<ParkKey>) -> Result<(), StoreError>;

    /// Reads at once, after `lock`, the rows that events under these keys
    /// name (shipments by tracking number, orders by id), so that applying
    /// them one by one finds them read. Only a speed-up: a row it could not
    /// read is read, and found unreadable, when an event asks for it.
    async fn read_ahead(&mut self, _keys: &BTreeSet<ParkKey>) -> Result<(), StoreError> {
        Ok(())
    }

    /// Stores a request's final answer with this unit.
    async fn put_completion(&mut self, completion: &Completion) -> Result<(), StoreError>;
}

/// A unit's shipments.
#[async_trait]
pub trait ShipmentRows: Send {
    async fn shipment(&mut self, id: &ShipmentId) -> Result<Option<ShipmentRecord>, StoreError>;
    /// The shipment that has this tracking number.
    async fn shipment_for(
        &mut self,
        tracking_number: &TrackingNumber,
    ) -> Result<Option<ShipmentId>, StoreError>;
    /// Writes a shipment read from this unit back (its tracking number
    /// indexed).
    fn put_shipment(&mut self, rec: ShipmentRecord);
    /// Stores a new shipment; `ShipmentExists` when its id is taken.
    async fn insert_shipment(&mut self, rec: ShipmentRecord) -> Result<(), StateError>;
    /// Puts the shipment in the queue of owed label voids at `due_ms`, or
    /// takes its entry at `due_ms` out.
    async fn schedule_void(&mut self, id: &ShipmentId, due_ms: u64) -> Result<(), StoreError>;
    async fn unschedule_void(&mut self, id: &ShipmentId, due_ms: u64) -> Result<(), StoreError>;
}

/// A unit's orders and their place in the fulfilment queue.
#[async_trait]
pub trait OrderRows: Send {
    async fn order(&mut self, key: &OrderKey) -> Result<Option<OrderRecord>, StoreError>;
    /// Every partner's order with this id (partners choose order ids
    /// independently).
    async fn orders_with_id(&mut self, order_id: &OrderId) -> Result<Vec<OrderRecord>, StoreError>;
    fn put_order(&mut self, rec: OrderRecord);
    /// Stores a new order; false, writing nothing, when the partner has
    /// one with this id.
    async fn insert_order(&mut self, rec: &OrderRecord) -> Result<bool, StoreError>;
    /// Puts the order in the fulfilment queue at `due_ms`, or takes the
    /// entry at `due_ms` out.
    async fn schedule(&mut self, order: &OrderRecord, due_ms: u64) -> Result<(), StoreError>;
    async fn unschedule(&mut self, order: &OrderRecord, due_ms: u64) -> Result<(), StoreError>;
}

/// A unit's stored events and their outcomes.
#[async_trait]
pub trait EventRows: Send {
    /// The events parked under `key` that dispatch has passed (an event
    /// still in the inbox is applied by its own pass), with their bodies
    /// (None where the event's record is gone).
    async fn parked(&mut self, key: &ParkKey)
    -> Result<Vec<(Stored, Option<Vec<u8>>)>, StoreError>;
    /// A stored event and its body, for a redelivery; `locked` once the
    /// keys it parks under are locked (a row is locked only after them).
    async fn event(
        &mut self,
        source: &str,
        event_id: &str,
        locked: bool,
    ) -> Result<Option<(Stored, Option<Vec<u8>>)>, StoreError>;
    /// Writes an event's new outcome.
    fn put_outcome(&mut self, event: &Stored, outcome: &OutcomeRecord);
}

/// A unit with the sources events are read with, and what it dispatched.
pub struct Work<'u, U: Unit + ?Sized> {
    pub unit: &'u mut U,
    pub sources: &'u Sources,
    pub counted: Counted,
}

impl<'u, U: Unit + ?Sized> Work<'u, U> {
    pub fn new(unit: &'u mut U, sources: &'u Sources) -> Self {
        Work {
            unit,
            sources,
            counted: Vec::new(),
        }
    }

    /// An event of `source` read from its body with the current config.
    fn interpret(&self, event: &Stored, body: Option<&[u8]>) -> Interpretation {
        match (body, self.sources.get(&event.source)) {
            (None, _) => Interpretation::Dead {
                reason: "the event record is missing".into(),
            },
            (Some(_), None) => gone(&event.source),
            (Some(body), Some(cfg)) => interpret(cfg, &event.event_id, event.received_at_ms, body),
        }
    }

    /// Dispatches events the adapter took from its inbox, each with what
    /// its mapped fields say: locks every key they park under first, then
    /// applies them in order. Their outcomes.
    pub async fn dispatch(
        &mut self,
        events: Vec<(Stored, Interpretation)>,
    ) -> Result<Vec<OutcomeRecord>, StoreError> {
        let keys = events
            .iter()
            .filter_map(|(_, i)| ParkKey::of(i))
            .collect::<BTreeSet<_>>();
        self.unit.lock(&keys).await?;
        self.unit.read_ahead(&keys).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        for (event, interpretation) in events {
            outcomes.push(self.apply(&event, interpretation).await?);
        }
        Ok(outcomes)
    }

    /// Applies one interpretation of `event` and records its outcome. A
    /// record the event needs that cannot be read sends the event to the
    /// dead letter with that reason (it is redelivered once repaired),
    /// instead of stopping dispatch for every other event.
    async fn apply(
        &mut self,
        event: &Stored,
        interpretation: Interpretation,
    ) -> Result<OutcomeRecord, StoreError> {
        let mut record = OutcomeRecord::attempt(event.attempts());
        if !record.settle_plain(&interpretation) {
            match self.apply_to_records(&mut record, interpretation).await {
                Ok(()) => {}
                Err(StoreError::Corrupt(what)) => {
                    record.outcome = DispatchOutcome::Dead;
                    record.reason = Some(format!("{what} cannot be read"));
                    record.shipment_id = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.unit.put_outcome(event, &record);
        if record.outcome != DispatchOutcome::Stored {
            self.counted.push((event.source.clone(), record.outcome));
        }
        Ok(record)
    }

    /// Applies a tracking or payment event to the records it names, or
    /// parks it for them. Writes nothing unless every record was read.
    async fn apply_to_records(
        &mut self,
        record: &mut OutcomeRecord,
        interpretation: Interpretation,
    ) -> Result<(), StoreError> {
        match interpretation {
            Interpretation::Tracking {
                tracking_number,
                event: status,
            } => {
                let tn = TrackingNumber::from(tracking_number);
                match self.unit.shipment_for(&tn).await? {
                    None => record.park_for_tracking(tn.as_str()),
                    Some(id) => match self.unit.shipment(&id).await? {
                        None => {
                            record.reason =
                                Some(format!("shipment {id} of tracking number {tn} is missing"));
                        }
                        Some(mut shipment) => {
                            record.apply_tracking(&mut shipment, status);
                            self.unit.put_shipment(shipment);
                        }
                    },
                }
            }
            Interpretation::Payment {
                order_id,
                event: payment,
            } => {
                let id = OrderId::from(order_id);
                let mut orders = self.unit.orders_with_id(&id).await?;
                if orders.is_empty() {
                    record.park_for_order(id.as_str());
                } else {
                    record.apply_payment(orders.iter_mut(), &payment);
                    for order in orders {
                        self.unit.put_order(order);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Dispatches again every event parked under `key`, read from its body
    /// with the current config; what they became.
    async fn unpark(&mut self, key: &ParkKey) -> Result<Counted, StoreError> {
        let mut unparked = Vec::new();
        for (event, body) in self.unit.parked(key).await? {
            let interpretation = self.interpret(&event, body.as_deref());
            let out = self.apply(&event, interpretation).await?;
            unparked.push((event.source, out.outcome));
        }
        Ok(unparked)
    }

    /// Gives a shipment its label, its tracking number and the gateway's
    /// LABEL_CREATED, and applies every event parked for that tracking
    /// number. The caller holds the tracking number's lock.
    async fn give_label(&mut self, label: Label, at_ms: u64) -> Result<LabelRecorded, StateError> {
        let tn = label.tracking_number.clone();
        let shipment_id = label.shipment_id.clone();
        if let Some(owner) = self.unit.shipment_for(&tn).await?
            && owner != shipment_id
        {
            return Err(StateError::TrackingNumberTaken {
                tracking_number: tn,
                owner,
            });
        }
        let mut shipment = self
            .unit
            .shipment(&shipment_id)
            .await?
            .ok_or(StateError::NotFound)?;
        shipment.give_label(label, at_ms)?;
        self.unit.put_shipment(shipment);
        let unparked = self.unpark(&ParkKey::Tracking(tn)).await?;
        let shipment = self
            .unit
            .shipment(&shipment_id)
            .await?
            .ok_or(StateError::NotFound)?;
        Ok(LabelRecorded { shipment, unparked })
    }

    /// Records a label with the final answer of the request that bought it.
    pub async fn record_label(
        &mut self,
        NewLabel { label, at_ms }: NewLabel,
        completion: Option<&Completion>,
    ) -> Result<LabelRecorded, StateError> {
        let keys = BTreeSet::from([ParkKey::Tracking(label.tracking_number.clone())]);
        self.unit.lock(&keys).await?;
        let recorded = self.give_label(label, at_ms).await?;
        if let Some(c) = completion {
            self.unit.put_completion(c).await?;
        }
        Ok(recorded)
    }

    /// Stores a new shipment with the final answer of the request that
    /// created it.
    pub async fn create_shipment(
        &mut self,
        rec: ShipmentRecord,
        completion: Option<&Completion>,
    ) -> Result<(), StateError> {
        self.unit.insert_shipment(rec).await?;
        if let Some(c) = completion {
            self.unit.put_completion(c).await?;
        }
        Ok(())
    }

    /// Records the carrier request of a label purchase unless one is
    /// recorded already; the request to send.
    pub async fn record_intent(
        &mut self,
        shipment_id: &ShipmentId,
        request: LabelRequest,
    ) -> Result<(LabelRequest, bool), StateError> {
        let mut shipment = self
            .unit
            .shipment(shipment_id)
            .await?
            .ok_or(StateError::NotFound)?;
        let (request, changed) = shipment.intend_label(request)?;
        if changed {
            self.unit.put_shipment(shipment);
        }
        Ok((request, changed))
    }

    /// Cancels a shipment that is not moving, storing the cancel's answer
    /// (the shipment as it leaves it) with it.
    pub async fn cancel(&mut self, cancel: Cancel) -> Result<ShipmentRecord, StateError> {
        let mut shipment = self
            .unit
            .shipment(&cancel.shipment_id)
            .await?
            .ok_or(StateError::NotFound)?;
        let owed_before = shipment.label_void.is_some();
        shipment.cancel(cancel.at_ms, cancel.voided)?;
        if !owed_before && let Some(due) = shipment.label_void.as_ref().and_then(LabelVoid::due_ms)
        {
            self.unit.schedule_void(&shipment.shipment_id, due).await?;
        }
        self.unit.put_shipment(shipment.clone());
        if let Some(a) = cancel.answer {
            self.unit.put_completion(&a.completion(&shipment)).await?;
        }
        Ok(shipment)
    }

    /// Settles the label void a cancel owes with `outcome`, moving its
    /// queue entry when it is owed again. None when none is owed any more
    /// (another process settled it first).
    pub async fn settle_void(
        &mut self,
        id: &ShipmentId,
        outcome: LabelVoid,
    ) -> Result<Option<ShipmentRecord>, StateError> {
        let mut shipment = self.unit.shipment(id).await?.ok_or(StateError::NotFound)?;
        let next = outcome.due_ms();
        let Some(due) = shipment.settle_void(outcome) else {
            return Ok(None);
        };
        self.unit.unschedule_void(id, due).await?;
        if let Some(next) = next {
            self.unit.schedule_void(id, next).await?;
        }
        self.unit.put_shipment(shipment.clone());
        Ok(Some(shipment))
    }

    /// Creates an order, unless its partner has one with its id: then that
    /// one is answered, for the caller to resume or refuse. Payment events
    /// parked for the order id are applied in the same write.
    pub async fn create_order(&mut self, rec: OrderRecord) -> Result<OrderCreated, StateError> {
        let key = ParkKey::Order(rec.order_id.clone());
        self.unit.lock(&BTreeSet::from([key.clone()])).await?;
        if !self.unit.insert_order(&rec).await? {
            let existing = self
                .unit
                .order(&rec.key())
                .await?
                .ok_or(StateError::NotFound)?;
            return Ok(OrderCreated::Existing(existing));
        }
        self.unpark(&key).await?;
        let stored = self
            .unit
            .order(&rec.key())
            .await?
            .ok_or(StateError::NotFound)?;
        Ok(OrderCreated::Created(stored))
    }

    /// Records a step of an order's flow with what it brings (its new
    /// shipment, its label, the request's final answer, its place in the
    /// fulfilment queue). The payment history is dispatch's to change.
    pub async fn write_order(&mut self, w: OrderWrite) -> Result<OrderRecord, StateError> {
        let OrderWrite {
            mut order,
            new_shipment,
            label,
            completion,
            unschedule,
        } = w;
        let mut keys = BTreeSet::from([ParkKey::Order(order.order_id.clone())]);
        if let Some(l) = &label {
            keys.insert(ParkKey::Tracking(l.label.tracking_number.clone()));
        }
        self.unit.lock(&keys).await?;
        let current = self
            .unit
            .order(&order.key())
            .await?
            .ok_or(StateError::NotFound)?;
        order.payments = current.payments;
        if let Some(rec) = new_shipment {
            self.unit.insert_shipment(rec).await?;
        }
        if let Some(NewLabel { label, at_ms }) = label {
            if order.progress.shipment_id.as_ref() != Some(&label.shipment_id) {
                return Err(StateError::NotFound);
            }
            self.give_label(label, at_ms).await?;
        }
        if let Some(due) = unschedule {
            self.unit.unschedule(&order, due).await?;
        }
        if let Some(due) = order.fulfil_due_ms {
            self.unit.schedule(&order, due).await?;
        }
        if let Some(c) = &completion {
            self.unit.put_completion(c).await?;
        }
        self.unit.put_order(order.clone());
        Ok(order)
    }

    /// Dispatches a parked or dead event again with the current config;
    /// its new outcome and what it was.
    pub async fn redeliver(
        &mut self,
        source: &str,
        event_id: &str,
    ) -> Result<(OutcomeRecord, DispatchOutcome), StateError> {
        let (event, body) = self
            .unit
            .event(source, event_id, false)
            .await?
            .ok_or(StateError::NotFound)?;
        let interpretation = self.interpret(&event, body.as_deref());
        self.unit
            .lock(&ParkKey::of(&interpretation).into_iter().collect())
            .await?;
        // Read again under the lock: another process may have moved it.
        let (event, _) = self
            .unit
            .event(source, event_id, true)
            .await?
            .ok_or(StateError::NotFound)?;
        let before = match event.outcome.as_ref().map(|o| o.outcome) {
            Some(o @ (DispatchOutcome::Parked | DispatchOutcome::Dead)) => o,
            _ => {
                return Err(StateError::NotRedeliverable(format!(
                    "event {source}/{event_id} is neither parked nor dead"
                )));
            }
        };
        let out = self.apply(&event, interpretation).await?;
        Ok((out, before))
    }
}

/// An event of a source the config no longer has.
pub fn gone(source: &str) -> Interpretation {
    Interpretation::Dead {
        reason: format!("source {source} is no longer configured"),
    }
}

/// Runs a future whose every wait is already over, to its end, on this
/// thread: sled's units never wait, so the state machine runs the
/// orchestration in one poll. A future that does wait is polled again
/// until it is done (it is never woken: that would be a unit that waits,
/// which sled's are not).
pub fn run_now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}
