//! The state-machine thread: the only writer of shipments and of dispatch
//! outcomes. It drains the inbox in arrival order and runs the commands
//! that change shipments (create, record a label, redeliver), one at a
//! time, so no two of them can interleave on one shipment.
//!
//! An event's outcome is written into its arrival entry, and each pass over
//! the inbox is one atomic sled batch: the new shipment states, the
//! outcomes and the moved cursor land together or not at all, so an event
//! is applied once even if the process dies between any two steps
//! (guarantee 3). Parked and dead events need no keys of their own: they
//! are arrivals whose outcome says so, found through the search indexes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::codec::{self, Arrival, DispatchOutcome, OrderRecord, OutcomeRecord, ShipmentRecord};
use super::{STALL_AFTER, Shared};
use crate::store::{
    CancelAnswer, Completion, LabelRecorded, OrderCreated, OrderWrite, StateError, StoreError,
    count_dispatched as count, count_redelivered,
};

use crate::health::Component;
use crate::idempotency::{self, Decision};
use crate::mapping::{Interpretation, interpret, interpret_fields};
use crate::telemetry::metric;

/// Inbox entries applied in one batch at most.
const PASS: usize = 256;

/// The least time between two passes over the inbox. Every atomic batch in
/// sled takes a process-wide write lock that also waits for a flush in
/// progress, so many tiny passes would stall the intake's group commits;
/// waiting a few milliseconds lets each pass carry what arrived meanwhile.
/// Nobody waits on dispatch for an answer: the sender already has its 202.
const PASS_INTERVAL: Duration = Duration::from_millis(5);

impl From<sled::Error> for StateError {
    fn from(e: sled::Error) -> Self {
        StateError::Store(e.into())
    }
}

type Reply<T> = oneshot::Sender<Result<T, StateError>>;

pub(super) enum StateMsg {
    Wake,
    /// Answered once every inbox entry present when it is handled is applied.
    Settle(oneshot::Sender<Result<(), StateError>>),
    CreateShipment(
        Box<ShipmentRecord>,
        Option<Completion>,
        oneshot::Sender<Result<(), StateError>>,
    ),
    Claim {
        partner: String,
        key: String,
        fingerprint: String,
        lease: Duration,
        reply: oneshot::Sender<Result<Decision, StateError>>,
    },
    Release {
        partner: String,
        key: String,
    },
    /// Forgets up to `limit` stored answers whose retention ended.
    SweepIdempotency {
        now_ms: u64,
        limit: usize,
        reply: oneshot::Sender<Result<usize, StateError>>,
    },
    RecordLabel {
        shipment_id: String,
        tracking_number: String,
        label: serde_json::Value,
        at_ms: u64,
        completion: Option<Completion>,
        reply: oneshot::Sender<Result<LabelRecorded, StateError>>,
    },
    CreateOrder {
        record: Box<OrderRecord>,
        reply: oneshot::Sender<Result<OrderCreated, StateError>>,
    },
    WriteOrder {
        write: Box<OrderWrite>,
        reply: oneshot::Sender<Result<OrderRecord, StateError>>,
    },
    /// Records the carrier request of a label purchase before it is sent;
    /// answers the request to send (an earlier one's, if there was one).
    RecordIntent {
        shipment_id: String,
        request: serde_json::Value,
        reply: oneshot::Sender<Result<serde_json::Value, StateError>>,
    },
    Cancel {
        shipment_id: String,
        at_ms: u64,
        /// The label was already voided at the carrier for this cancel.
        voided: bool,
        answer: Option<CancelAnswer>,
        reply: oneshot::Sender<Result<ShipmentRecord, StateError>>,
    },
    Finish {
        completion: Completion,
        reply: oneshot::Sender<Result<(), StateError>>,
    },
    Redeliver {
        source: String,
        event_id: String,
        reply: oneshot::Sender<Result<OutcomeRecord, StateError>>,
    },
}

/// Replies that may go out only once everything written before them is
/// durable. A round of commands applies its writes, syncs once, and only
/// then answers them all: the state machine's group commit. Answers that
/// only read wait too, since what they read (a replayed answer, say) may
/// have been written earlier in the same round.
#[derive(Default)]
struct Replies(Vec<AfterSync>);

/// Sends one reply, given how the round's flush went.
type AfterSync = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

impl Replies {
    fn after_sync<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T, StateError>) {
        self.0.push(Box::new(move |synced| {
            let result = match synced {
                Ok(()) => result,
                Err(e) => result.and(Err(StateError::Store(e.clone()))),
            };
            let _ = reply.send(result);
        }));
    }
}

pub(super) struct StateMachine {
    pub(super) shared: Arc<Shared>,
}

/// One batch's worth of changes, with the shipments it touched cached so
/// that two events for one shipment in the same pass see each other.
struct Pass<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    shipments: HashMap<String, Option<ShipmentRecord>>,
    dirty: HashSet<String>,
    tracking: HashMap<String, Option<String>>,
    orders: HashMap<(String, String), Option<OrderRecord>>,
    dirty_orders: HashSet<(String, String)>,
    /// Order id → the partners with an order of that id.
    partners: HashMap<String, Vec<String>>,
    counted: Vec<(String, DispatchOutcome)>,
    /// Events this pass made parked or dead, and those it took out of
    /// either.
    marked: codec::Held,
    unmarked: codec::Held,
}

impl<'a> Pass<'a> {
    fn new(tree: &'a sled::Tree) -> Pass<'a> {
        Pass {
            tree,
            batch: sled::Batch::default(),
            shipments: HashMap::new(),
            dirty: HashSet::new(),
            tracking: HashMap::new(),
            orders: HashMap::new(),
            dirty_orders: HashSet::new(),
            partners: HashMap::new(),
            counted: Vec::new(),
            marked: codec::Held::default(),
            unmarked: codec::Held::default(),
        }
    }

    fn order_mut(
        &mut self,
        partner: &str,
        order_id: &str,
    ) -> Result<Option<&mut OrderRecord>, StateError> {
        let key = (partner.to_string(), order_id.to_string());
        if !self.orders.contains_key(&key) {
            let rec = super::read_order(self.tree, partner, order_id)?;
            self.orders.insert(key.clone(), rec);
        }
        Ok(self.orders.get_mut(&key).and_then(Option::as_mut))
    }

    fn put_order(&mut self, rec: OrderRecord) {
        let key = (rec.partner.clone(), rec.order_id.clone());
        self.dirty_orders.insert(key.clone());
        self.orders.insert(key, Some(rec));
    }

    fn touch_order(&mut self, partner: &str, order_id: &str) {
        self.dirty_orders
            .insert((partner.to_string(), order_id.to_string()));
    }

    /// The partners that have an order with this id.
    fn order_partners(&mut self, order_id: &str) -> Result<Vec<String>, StateError> {
        if let Some(found) = self.partners.get(order_id) {
            return Ok(found.clone());
        }
        let prefix = codec::order_partner_prefix(order_id);
        let mut found = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, _) = kv?;
            if let Some(p) = k.get(prefix.len()..) {
                found.push(String::from_utf8_lossy(p).into_owned());
            }
        }
        self.partners.insert(order_id.to_string(), found.clone());
        Ok(found)
    }

    fn shipment_mut(&mut self, id: &str) -> Result<Option<&mut ShipmentRecord>, StateError> {
        if !self.shipments.contains_key(id) {
            let rec = super::read_shipment(self.tree, id)?;
            self.shipments.insert(id.to_string(), rec);
        }
        Ok(self.shipments.get_mut(id).and_then(Option::as_mut))
    }

    fn touch(&mut self, id: &str) {
        self.dirty.insert(id.to_string());
    }

    fn shipment_for(&mut self, tracking_number: &str) -> Result<Option<String>, StateError> {
        if let Some(hit) = self.tracking.get(tracking_number) {
            return Ok(hit.clone());
        }
        let found = self
            .tree
            .get(codec::tracking_key(tracking_number))?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        self.tracking
            .insert(tracking_number.to_string(), found.clone());
        Ok(found)
    }

    /// Writes the touched shipments into the batch and applies it.
    fn commit(mut self, shared: &Shared) -> Result<Vec<(String, DispatchOutcome)>, StateError> {
        for id in &self.dirty {
            if let Some(Some(rec)) = self.shipments.get(id) {
                self.batch
                    .insert(codec::shipment_key(id), codec::encode_shipment(rec));
            }
        }
        for key in &self.dirty_orders {
            if let Some(Some(rec)) = self.orders.get(key) {
                self.batch.insert(
                    codec::order_key(&rec.partner, &rec.order_id),
                    codec::encode_order(rec),
                );
            }
        }
        let before = shared.marked.load();
        let marked = codec::Held {
            parked: (before.parked + self.marked.parked).saturating_sub(self.unmarked.parked),
            dead: (before.dead + self.marked.dead).saturating_sub(self.unmarked.dead),
        };
        if marked != before {
            super::HeldKeys::Marked.write(&mut self.batch, marked);
        }
        shared.apply(self.batch)?;
        shared.marked.store(marked);
        Ok(self.counted)
    }
}

impl StateMachine {
    pub(super) fn run(self, rx: std::sync::mpsc::Receiver<StateMsg>) {
        let alive = self.shared.health.enter(Component::Dispatcher, STALL_AFTER);
        self.shared
            .dispatcher_running
            .store(true, Ordering::Relaxed);
        'serve: loop {
            alive.beat();
            if let Err(e) = self.drain_inbox() {
                // Only the store fails a pass, and it does not recover
                // in-process: stop, and let supervision restart.
                tracing::error!(error = %e, "dispatch failed");
                break;
            }
            if !self.shared.is_healthy() {
                break;
            }
            // Commands are served at once; new arrivals wait for the interval.
            let rested = Instant::now() + PASS_INTERVAL;
            loop {
                let left = rested.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(StateMsg::Wake) => {}
                    Ok(msg) => self.handle_all(std::iter::once(msg).chain(rx.try_iter())),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break 'serve,
                }
            }
            // A wake-up already taken during the interval leaves the flag
            // set: go straight to the next pass.
            if self.shared.wake_pending.load(Ordering::Acquire) {
                continue;
            }
            // The timeout bounds how long an entry could wait if a wake-up
            // were ever missed.
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(StateMsg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(msg) => self.handle_all(std::iter::once(msg).chain(rx.try_iter())),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.shared
            .dispatcher_running
            .store(false, Ordering::Relaxed);
    }

    /// Serves the commands waiting in the queue as one round: each applies
    /// its writes, then one flush makes them all durable, and only then is
    /// any of them answered (a group commit, as for intake). Shipment
    /// creations also share one batch; any other command first applies the
    /// creations before it, so it sees them.
    fn handle_all(&self, msgs: impl Iterator<Item = StateMsg>) {
        let mut creates = Vec::new();
        let mut replies = Replies::default();
        for msg in msgs {
            match msg {
                StateMsg::CreateShipment(rec, completion, reply) => {
                    creates.push((*rec, completion, reply))
                }
                StateMsg::Wake => {}
                claim @ (StateMsg::Claim { .. } | StateMsg::Release { .. }) => {
                    self.handle(claim, &mut replies)
                }
                other => {
                    self.create_shipments(std::mem::take(&mut creates), &mut replies);
                    self.handle(other, &mut replies);
                }
            }
        }
        self.create_shipments(creates, &mut replies);
        if !replies.0.is_empty() {
            let synced = self.shared.sync();
            for reply in replies.0 {
                reply(&synced);
            }
        }
    }

    fn handle(&self, msg: StateMsg, replies: &mut Replies) {
        match msg {
            StateMsg::Wake => {}
            StateMsg::Settle(reply) => replies.after_sync(reply, self.drain_inbox()),
            StateMsg::CreateShipment(rec, completion, reply) => {
                self.create_shipments(vec![(*rec, completion, reply)], replies);
            }
            StateMsg::Claim {
                partner,
                key,
                fingerprint,
                lease,
                reply,
            } => {
                // Only a replay waits for the round's flush: the answer it
                // repeats may have been written in this round. Any other
                // decision rests on a claim, which needs no flush (lost in
                // a crash, it was never answered for, and the retry runs).
                match self.claim(&partner, &key, &fingerprint, lease) {
                    replay @ Ok(Decision::Replay { .. }) => replies.after_sync(reply, replay),
                    other => {
                        let _ = reply.send(other);
                    }
                }
            }
            StateMsg::SweepIdempotency {
                now_ms,
                limit,
                reply,
            } => {
                replies.after_sync(reply, self.sweep_idempotency(now_ms, limit));
            }
            StateMsg::Release { partner, key } => {
                if let Err(e) = self.release(&partner, &key) {
                    tracing::warn!(error = %e, "releasing an idempotency key failed");
                }
            }
            StateMsg::RecordLabel {
                shipment_id,
                tracking_number,
                label,
                at_ms,
                completion,
                reply,
            } => {
                replies.after_sync(
                    reply,
                    self.record_label(&shipment_id, &tracking_number, label, at_ms, completion),
                );
            }
            StateMsg::CreateOrder { record, reply } => {
                replies.after_sync(reply, self.create_order(*record));
            }
            StateMsg::WriteOrder { write, reply } => {
                replies.after_sync(reply, self.write_order(*write));
            }
            StateMsg::RecordIntent {
                shipment_id,
                request,
                reply,
            } => {
                replies.after_sync(reply, self.record_intent(&shipment_id, request));
            }
            StateMsg::Cancel {
                shipment_id,
                at_ms,
                voided,
                answer,
                reply,
            } => {
                replies.after_sync(reply, self.cancel(&shipment_id, at_ms, voided, answer));
            }
            StateMsg::Finish { completion, reply } => {
                let mut batch = sled::Batch::default();
                put_completion(&mut batch, &completion);
                let result = self.shared.apply(batch).map_err(StateError::from);
                replies.after_sync(reply, result);
            }
            StateMsg::Redeliver {
                source,
                event_id,
                reply,
            } => {
                replies.after_sync(reply, self.redeliver(&source, &event_id));
            }
        }
    }

    /// Applies inbox entries in arrival order, a pass at a time, until the
    /// inbox is empty. Each pass moves the cursor in the same batch as the
    /// outcomes it records.
    fn drain_inbox(&self) -> Result<(), StateError> {
        let tree = &self.shared.tree;
        loop {
            // Dispatch writes: it waits, the inbox kept, while the disk is
            // nearly out (`space`).
            if !self.shared.space.allows_upkeep() {
                return Ok(());
            }
            self.shared.health.beat(Component::Dispatcher);
            self.shared.wake_pending.store(false, Ordering::Release);
            let cursor = super::read_cursor(tree)?;
            let mut pass = Pass::new(tree);
            let mut last = cursor;
            let mut dispatched = 0i64;
            let sources = self.shared.sources.load_full();
            for kv in tree.range(codec::seq_key(b'n', cursor + 1)..).take(PASS) {
                let (k, v) = kv?;
                let Some(seq) = codec::parse_seq_key(b'n', &k) else {
                    break;
                };
                last = seq;
                // An arrival that cannot be read names no event to apply:
                // reported and counted, and the pass goes on, so that one
                // bad record does not stop dispatch for every other.
                let Some(mut arrival) = Arrival::decode(&v) else {
                    let _ = StoreError::corrupt(format!(
                        "the arrival of event {seq}, passed over by dispatch"
                    ));
                    continue;
                };
                if !arrival.dispatch {
                    continue;
                }
                dispatched += 1;
                let interpretation = match (sources.get(&arrival.source), &arrival.fields) {
                    (None, _) => Interpretation::Dead {
                        reason: format!("source {} is no longer configured", arrival.source),
                    },
                    (Some(cfg), Some(fields)) => {
                        interpret_fields(cfg, &arrival.event_id, arrival.received_at_ms, fields)
                    }
                    (Some(_), None) => Interpretation::NotDispatched,
                };
                self.record(&mut pass, seq, &mut arrival, interpretation)?;
            }
            if last == cursor {
                return Ok(());
            }
            pass.batch
                .insert(codec::CURSOR_KEY, last.to_be_bytes().to_vec());
            // The crash tests stop the state machine here, with a pass
            // decided and not yet written.
            fail::fail_point!("dispatch-before-commit");
            let counted = pass.commit(&self.shared)?;
            let pending = self
                .shared
                .inbox_pending
                .fetch_sub(dispatched, Ordering::Relaxed)
                - dispatched;
            metrics::gauge!(metric::INBOX_PENDING).set(pending as f64);
            count(&counted);
        }
    }

    /// Dispatches a stored event again, reading its body with the current
    /// config (redelivery, unparking).
    fn redispatch(
        &self,
        pass: &mut Pass<'_>,
        seq: u64,
        arrival: &mut Arrival,
    ) -> Result<OutcomeRecord, StateError> {
        let event = super::read_event(&self.shared, &arrival.source, &arrival.event_id, true)?;
        let interpretation = match (&event, self.shared.sources.load().get(&arrival.source)) {
            (None, _) => Interpretation::Dead {
                reason: "the event record is missing".into(),
            },
            (Some(_), None) => Interpretation::Dead {
                reason: format!("source {} is no longer configured", arrival.source),
            },
            (Some(ev), Some(cfg)) => {
                interpret(cfg, &arrival.event_id, ev.meta.received_at_ms, &ev.body)
            }
        };
        self.record(pass, seq, arrival, interpretation)
    }

    /// Applies an interpretation into `pass`: the shipment, and the outcome
    /// written into the arrival entry.
    fn record(
        &self,
        pass: &mut Pass<'_>,
        seq: u64,
        arrival: &mut Arrival,
        interpretation: Interpretation,
    ) -> Result<OutcomeRecord, StateError> {
        let mut record = OutcomeRecord::attempt(arrival.outcome.as_ref().map_or(0, |o| o.attempts));
        match interpretation {
            Interpretation::Tracking {
                tracking_number,
                event,
            } => match pass.shipment_for(&tracking_number)? {
                None => record.park_for_tracking(&tracking_number),
                Some(shipment_id) => match pass.shipment_mut(&shipment_id)? {
                    None => {
                        record.reason = Some(format!(
                            "shipment {shipment_id} of tracking number {tracking_number} is missing"
                        ));
                    }
                    Some(shipment) => {
                        record.apply_tracking(shipment, event);
                        pass.touch(&shipment_id);
                    }
                },
            },
            Interpretation::Payment { order_id, event } => {
                let partners = pass.order_partners(&order_id)?;
                if partners.is_empty() {
                    record.park_for_order(&order_id);
                } else {
                    for partner in &partners {
                        pass.order_mut(partner, &order_id)?;
                        pass.touch_order(partner, &order_id);
                    }
                    let orders = pass
                        .orders
                        .iter_mut()
                        .filter(|((p, o), _)| *o == order_id && partners.contains(p))
                        .filter_map(|(_, rec)| rec.as_mut());
                    record.apply_payment(orders, &event);
                }
            }
            plain => {
                record.settle_plain(&plain);
            }
        }
        let was = codec::Held::of(arrival);
        arrival.outcome = Some(record.clone());
        let is = codec::Held::of(arrival);
        pass.marked.add(is);
        pass.unmarked.add(was);
        pass.batch
            .insert(codec::seq_key(b'n', seq).to_vec(), arrival.encode());
        if record.outcome != DispatchOutcome::Stored {
            pass.counted.push((arrival.source.clone(), record.outcome));
        }
        Ok(record)
    }

    /// Stores new shipments, each with the final answer of the request
    /// that created it, in one batch; each is answered after the round's
    /// flush.
    fn create_shipments(
        &self,
        creates: Vec<(ShipmentRecord, Option<Completion>, Reply<()>)>,
        replies: &mut Replies,
    ) {
        if creates.is_empty() {
            return;
        }
        let tree = &self.shared.tree;
        let mut batch = sled::Batch::default();
        let mut accepted = Vec::new();
        let mut seen = HashSet::new();
        if let Err(e) = self.shared.check_space() {
            for (_, _, reply) in creates {
                let _ = reply.send(Err(e.clone().into()));
            }
            return;
        }
        for (rec, completion, reply) in creates {
            let key = codec::shipment_key(&rec.shipment_id);
            match tree.contains_key(&key) {
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
                Ok(exists) if exists || !seen.insert(rec.shipment_id.clone()) => {
                    let _ = reply.send(Err(StateError::Conflict(format!(
                        "shipment {} exists",
                        rec.shipment_id
                    ))));
                    continue;
                }
                Ok(_) => {}
            }
            batch.insert(key, codec::encode_shipment(&rec));
            if let Some(c) = completion {
                put_completion(&mut batch, &c);
            }
            accepted.push(reply);
        }
        if accepted.is_empty() {
            return;
        }
        let result = self.shared.apply(batch);
        for reply in accepted {
            replies.after_sync(reply, result.clone().map_err(StateError::from));
        }
    }

    /// Claims a key for a request, or says why not. A claim needs no flush:
    /// lost in a crash, it was never answered for, and the retry runs again.
    fn claim(
        &self,
        partner: &str,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Decision, StateError> {
        let tree = &self.shared.tree;
        // Every write starts with a claim: short of space, none starts.
        self.shared.check_space()?;
        let k = codec::idem_key(partner, key);
        let record: Option<idempotency::Record> =
            tree.get(&k)?.and_then(|v| serde_json::from_slice(&v).ok());
        let now = crate::clock::now_ms();
        let decision = idempotency::decide(record.as_ref(), fingerprint, now, self.shared.epoch);
        if decision == Decision::Run {
            let claim = idempotency::Record::InProgress {
                fingerprint: fingerprint.to_string(),
                epoch: self.shared.epoch,
                lease_until_ms: now.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(0)),
            };
            // A plain insert, not a batch: sled's batches wait for a flush
            // in progress, and a claim must not.
            self.shared
                .tree
                .insert(k, codec::encode_record(&claim))
                .map_err(StoreError::from)
                .inspect_err(|e| self.shared.fail("write", e))?;
        }
        Ok(decision)
    }

    /// Forgets stored answers past their retention, oldest first; the index
    /// is ordered by expiry, so the cost is proportional to what expires.
    fn sweep_idempotency(&self, now_ms: u64, limit: usize) -> Result<usize, StateError> {
        let tree = &self.shared.tree;
        let mut batch = sled::Batch::default();
        let mut swept = 0;
        for kv in tree
            .range(codec::idem_expiry_key(0, "", "")..codec::idem_expiry_key(now_ms, "", ""))
            .take(limit)
        {
            let (k, _) = kv?;
            batch.remove(k.clone());
            swept += 1;
            let Some((at, partner, key)) = codec::parse_idem_expiry_key(&k) else {
                continue;
            };
            let record_key = codec::idem_key(&partner, &key);
            let record: Option<idempotency::Record> = tree
                .get(&record_key)?
                .and_then(|v| serde_json::from_slice(&v).ok());
            // The key may have been used again since: only the answer this
            // entry indexes is forgotten.
            if let Some(idempotency::Record::Done { expires_at_ms, .. }) = record
                && expires_at_ms == at
            {
                batch.remove(record_key);
            }
        }
        if swept > 0 {
            self.shared.apply(batch)?;
        }
        Ok(swept)
    }

    /// Gives up a claim after an answer that is not final, so the retry runs.
    fn release(&self, partner: &str, key: &str) -> Result<(), StateError> {
        let tree = &self.shared.tree;
        let k = codec::idem_key(partner, key);
        let record: Option<idempotency::Record> =
            tree.get(&k)?.and_then(|v| serde_json::from_slice(&v).ok());
        if let Some(idempotency::Record::InProgress { epoch, .. }) = record
            && epoch == self.shared.epoch
        {
            tree.remove(k)?;
        }
        Ok(())
    }

    /// Records a label: the shipment gets its tracking number, label and the
    /// gateway's LABEL_CREATED, and every event parked under that tracking
    /// number is applied in the same batch.
    fn record_label(
        &self,
        shipment_id: &str,
        tracking_number: &str,
        label: serde_json::Value,
        at_ms: u64,
        completion: Option<Completion>,
    ) -> Result<LabelRecorded, StateError> {
        let tree = &self.shared.tree;
        let mut pass = Pass::new(tree);
        let unparked = self.apply_label(&mut pass, shipment_id, tracking_number, label, at_ms)?;
        if let Some(c) = &completion {
            put_completion(&mut pass.batch, c);
        }
        let counted = pass.commit(&self.shared)?;
        count(&counted);
        let shipment = super::read_shipment(tree, shipment_id)?.ok_or(StateError::NotFound)?;
        Ok(LabelRecorded { shipment, unparked })
    }

    /// Gives a shipment its label, tracking number and the gateway's
    /// LABEL_CREATED in `pass`, and applies there every event parked for
    /// that tracking number; what they became.
    fn apply_label(
        &self,
        pass: &mut Pass<'_>,
        shipment_id: &str,
        tracking_number: &str,
        label: serde_json::Value,
        at_ms: u64,
    ) -> Result<Vec<(String, DispatchOutcome)>, StateError> {
        if let Some(owner) = pass.shipment_for(tracking_number)?
            && owner != shipment_id
        {
            return Err(StateError::Conflict(format!(
                "tracking number {tracking_number} belongs to shipment {owner}"
            )));
        }
        pass.shipment_mut(shipment_id)?
            .ok_or(StateError::NotFound)?
            .give_label(tracking_number, label, at_ms)?;
        pass.touch(shipment_id);
        pass.batch.insert(
            codec::tracking_key(tracking_number),
            shipment_id.as_bytes().to_vec(),
        );
        pass.tracking
            .insert(tracking_number.to_string(), Some(shipment_id.to_string()));

        self.unpark(pass, b'T', tracking_number)
    }

    /// Dispatches again, in `pass`, every event parked under `text` in the
    /// search index `tag` (a tracking number, an order id); what they
    /// became.
    fn unpark(
        &self,
        pass: &mut Pass<'_>,
        tag: u8,
        text: &str,
    ) -> Result<Vec<(String, DispatchOutcome)>, StateError> {
        let tree = pass.tree;
        let cursor = super::read_cursor(tree)?;
        let mut unparked = Vec::new();
        for kv in tree.scan_prefix(codec::text_prefix(tag, text)) {
            let (k, _) = kv?;
            let Some(seq) = codec::seq_suffix(&k) else {
                continue;
            };
            if seq > cursor {
                // Still in the inbox: the next pass applies it.
                continue;
            }
            let Some(mut arrival) = super::read_arrival(tree, seq)? else {
                continue;
            };
            if arrival
                .outcome
                .as_ref()
                .is_some_and(|o| o.outcome == DispatchOutcome::Parked)
            {
                let out = self.redispatch(pass, seq, &mut arrival)?;
                unparked.push((arrival.source, out.outcome));
            }
        }
        Ok(unparked)
    }

    /// Creates an order, unless one with its partner and id exists: then
    /// that one is answered, for the caller to resume or refuse. Payment
    /// events parked for the order id are applied in the same write.
    fn create_order(&self, rec: OrderRecord) -> Result<OrderCreated, StateError> {
        let tree = &self.shared.tree;
        let mut pass = Pass::new(tree);
        if let Some(existing) = pass.order_mut(&rec.partner, &rec.order_id)? {
            return Ok(OrderCreated::Existing(existing.clone()));
        }
        self.shared.check_space()?;
        pass.batch.insert(
            codec::order_list_key(&rec.partner, rec.created_at_ms, &rec.order_id),
            Vec::new(),
        );
        pass.batch.insert(
            codec::order_partner_key(&rec.order_id, &rec.partner),
            Vec::new(),
        );
        pass.order_partners(&rec.order_id)?;
        if let Some(partners) = pass.partners.get_mut(&rec.order_id) {
            partners.push(rec.partner.clone());
        }
        pass.put_order(rec.clone());
        self.unpark(&mut pass, b'O', &rec.order_id)?;
        let counted = pass.commit(&self.shared)?;
        count(&counted);
        let stored =
            super::read_order(tree, &rec.partner, &rec.order_id)?.ok_or(StateError::NotFound)?;
        Ok(OrderCreated::Created(stored))
    }

    /// Records a step of an order's flow, with what it brings (a new
    /// shipment, a label, the request's final answer, the fulfilment queue)
    /// in one durable write. The payment history is the store's: only
    /// dispatch changes it.
    fn write_order(&self, w: OrderWrite) -> Result<OrderRecord, StateError> {
        let tree = &self.shared.tree;
        let mut pass = Pass::new(tree);
        let OrderWrite {
            mut order,
            new_shipment,
            label,
            completion,
            unschedule,
        } = w;
        let current = pass
            .order_mut(&order.partner, &order.order_id)?
            .ok_or(StateError::NotFound)?;
        order.payments = current.payments.clone();
        if let Some(rec) = new_shipment {
            if pass.shipment_mut(&rec.shipment_id)?.is_some() {
                return Err(StateError::Conflict(format!(
                    "shipment {} exists",
                    rec.shipment_id
                )));
            }
            let id = rec.shipment_id.clone();
            pass.shipments.insert(id.clone(), Some(rec));
            pass.touch(&id);
        }
        if let Some(l) = label {
            let shipment_id = order
                .progress
                .shipment_id
                .clone()
                .ok_or(StateError::NotFound)?;
            self.apply_label(
                &mut pass,
                &shipment_id,
                &l.tracking_number,
                l.label,
                l.at_ms,
            )?;
        }
        if let Some(due) = unschedule {
            pass.batch
                .remove(codec::fulfil_key(due, &order.partner, &order.order_id));
        }
        if let Some(due) = order.fulfil_due_ms {
            pass.batch.insert(
                codec::fulfil_key(due, &order.partner, &order.order_id),
                Vec::new(),
            );
        }
        if let Some(c) = &completion {
            put_completion(&mut pass.batch, c);
        }
        pass.put_order(order.clone());
        let counted = pass.commit(&self.shared)?;
        count(&counted);
        Ok(order)
    }

    /// Records, durably, the carrier request about to be sent for a
    /// shipment's label, unless one is recorded already: then that one is
    /// the request to send, so that the carrier sees the same body under
    /// the same key whatever the retry asked for.
    fn record_intent(
        &self,
        shipment_id: &str,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, StateError> {
        self.shared.check_space()?;
        let mut pass = Pass::new(&self.shared.tree);
        let (request, changed) = pass
            .shipment_mut(shipment_id)?
            .ok_or(StateError::NotFound)?
            .intend_label(request)?;
        if changed {
            pass.touch(shipment_id);
            pass.commit(&self.shared)?;
        }
        Ok(request)
    }

    /// Cancels a shipment that is not moving: the gateway's CANCELLED joins
    /// its timeline. Already cancelled: nothing changes. Moving or done:
    /// `InvalidTransition`, checked again here, unless the label was
    /// already voided for this cancel.
    fn cancel(
        &self,
        shipment_id: &str,
        at_ms: u64,
        voided: bool,
        answer: Option<CancelAnswer>,
    ) -> Result<ShipmentRecord, StateError> {
        let tree = &self.shared.tree;
        let mut pass = Pass::new(tree);
        let shipment = pass
            .shipment_mut(shipment_id)?
            .ok_or(StateError::NotFound)?;
        shipment.cancel(at_ms, voided)?;
        let record = shipment.clone();
        pass.touch(shipment_id);
        if let Some(a) = answer {
            put_completion(&mut pass.batch, &a.completion(&record));
        }
        pass.commit(&self.shared)?;
        Ok(record)
    }

    fn redeliver(&self, source: &str, event_id: &str) -> Result<OutcomeRecord, StateError> {
        let tree = &self.shared.tree;
        let event = super::read_event(&self.shared, source, event_id, false)?
            .ok_or(StateError::NotFound)?;
        let seq = event.seq;
        let mut arrival = super::read_arrival(tree, seq)?.ok_or(StateError::NotFound)?;
        let before = match arrival.outcome.as_ref().map(|o| o.outcome) {
            Some(o @ (DispatchOutcome::Parked | DispatchOutcome::Dead)) => o,
            _ => {
                return Err(StateError::NotRedeliverable(format!(
                    "event {source}/{event_id} is neither parked nor dead"
                )));
            }
        };
        let mut pass = Pass::new(tree);
        let out = self.redispatch(&mut pass, seq, &mut arrival)?;
        let counted = pass.commit(&self.shared)?;
        count_redelivered(before, &counted);
        Ok(out)
    }
}

/// Stores a final answer and its retention entry into a batch.
fn put_completion(batch: &mut sled::Batch, c: &Completion) {
    if let idempotency::Record::Done { expires_at_ms, .. } = &c.record {
        batch.insert(
            codec::idem_expiry_key(*expires_at_ms, &c.partner, &c.key),
            Vec::new(),
        );
    }
    batch.insert(
        codec::idem_key(&c.partner, &c.key),
        codec::encode_record(&c.record),
    );
}
