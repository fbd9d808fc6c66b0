//! The state-machine thread: the only writer of shipments and of dispatch
//! outcomes. It drains the inbox in arrival order and runs the commands
//! that change shipments (create, record a label, redeliver), one at a
//! time, so no two of them can interleave on one shipment. What each
//! command does is `store::core`'s, shared with PostgreSQL; here a `Pass`
//! (one sled batch) is the unit of work it runs in.
//!
//! An event's outcome is written into its arrival entry, and each pass over
//! the inbox is one atomic sled batch: the new shipment states, the
//! outcomes and the moved cursor land together or not at all, so an event
//! is applied once even if the process dies between any two steps
//! (GUARANTEES.md: "Applied once"). Parked and dead events need no keys of their own: they
//! are arrivals whose outcome says so, found through the search indexes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use async_trait::async_trait;

use super::codec::{self, Arrival, DispatchOutcome, OrderRecord, OutcomeRecord, ShipmentRecord};
use super::segments::Pointer;
use super::{STALL_AFTER, Shared};
use crate::domain::ids::{OrderId, OrderKey, PartnerName, ShipmentId, TrackingNumber};
use crate::domain::label::{LabelRequest, LabelVoid};
use crate::health::Component;
use crate::idempotency::{self, Decision, IdempotencyKey};
use crate::store::core::{
    EventRows, OrderRows, ParkKey, ShipmentRows, Stored, Unit, Work, gone, run_now,
};
use crate::store::{
    Cancel, Claim, Completion, LabelRecorded, NewLabel, OrderCreated, OrderWrite, StateError,
    StoreError, count_dispatched as count, count_redelivered,
};
use crate::telemetry::metric;
use crate::webhook::mapping::{Interpretation, interpret_fields};

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

/// A write the state machine runs in its round, queuing its reply.
pub(super) type Write = Box<dyn FnOnce(&StateMachine, &mut Replies) + Send>;

pub(super) enum StateMsg {
    Wake,
    /// A write run in the round, answered after the round's flush.
    Write(Write),
    /// Answered once every inbox entry present when it is handled is applied.
    Settle(oneshot::Sender<Result<(), StateError>>),
    CreateShipment(
        Box<ShipmentRecord>,
        Option<Completion>,
        oneshot::Sender<Result<(), StateError>>,
    ),
    Claim {
        claim: Box<Claim>,
        reply: oneshot::Sender<Result<Decision, StateError>>,
    },
    Release {
        partner: PartnerName,
        key: IdempotencyKey,
    },
}

impl StateMsg {
    /// `op`, run by the state machine in its round; its result goes to
    /// `reply` after the round's flush.
    pub(super) fn write<T: Send + 'static>(
        reply: Reply<T>,
        op: impl FnOnce(&StateMachine) -> Result<T, StateError> + Send + 'static,
    ) -> StateMsg {
        StateMsg::Write(Box::new(move |machine, replies| {
            replies.after_sync(reply, op(machine))
        }))
    }
}

/// Replies that may go out only once everything written before them is
/// durable. A round of commands applies its writes, syncs once, and only
/// then answers them all: the state machine's group commit. Answers that
/// only read wait too, since what they read (a replayed answer, say) may
/// have been written earlier in the same round.
#[derive(Default)]
pub(super) struct Replies(Vec<AfterSync>);

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

/// One batch's worth of changes, the unit of work of `store::core`: what
/// it read is kept, so that two events for one shipment in the same pass
/// see each other, and what it writes lands in one atomic batch.
pub(super) struct Pass<'a> {
    shared: &'a Shared,
    tree: &'a sled::Tree,
    batch: sled::Batch,
    shipments: HashMap<ShipmentId, Option<ShipmentRecord>>,
    dirty: HashSet<ShipmentId>,
    tracking: HashMap<TrackingNumber, Option<ShipmentId>>,
    orders: HashMap<OrderKey, Option<OrderRecord>>,
    dirty_orders: HashSet<OrderKey>,
    /// Order id → the partners with an order of that id.
    partners: HashMap<OrderId, Vec<PartnerName>>,
    /// The arrivals whose outcome this pass may write, by sequence number,
    /// with their segment records' pointers.
    arrivals: HashMap<u64, (Pointer, Arrival)>,
    /// Events this pass made parked or dead, and those it took out of
    /// either.
    marked: codec::Held,
    unmarked: codec::Held,
}

impl<'a> Pass<'a> {
    fn new(shared: &'a Shared) -> Pass<'a> {
        Pass {
            shared,
            tree: &shared.tree,
            batch: sled::Batch::default(),
            shipments: HashMap::new(),
            dirty: HashSet::new(),
            tracking: HashMap::new(),
            orders: HashMap::new(),
            dirty_orders: HashSet::new(),
            partners: HashMap::new(),
            arrivals: HashMap::new(),
            marked: codec::Held::default(),
            unmarked: codec::Held::default(),
        }
    }

    /// An arrival as a stored event handed to dispatch, kept so that its
    /// outcome can be written into it.
    fn stored(&mut self, seq: u64, (pointer, arrival): (Pointer, Arrival)) -> Stored {
        let stored = Stored {
            seq,
            source: arrival.source.clone(),
            event_id: arrival.event_id.clone(),
            received_at_ms: arrival.received_at_ms,
            outcome: arrival.outcome.clone(),
        };
        self.arrivals.insert(seq, (pointer, arrival));
        stored
    }

    /// Writes the touched shipments and orders into the batch and applies it.
    fn commit(mut self) -> Result<(), StateError> {
        let shared = self.shared;
        for id in &self.dirty {
            if let Some(Some(rec)) = self.shipments.get(id) {
                self.batch.insert(
                    codec::shipment_key(id.as_str()),
                    codec::encode_shipment(rec),
                );
            }
        }
        for key in &self.dirty_orders {
            if let Some(Some(rec)) = self.orders.get(key) {
                self.batch.insert(
                    codec::order_key(rec.partner.as_str(), rec.order_id.as_str()),
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
        Ok(())
    }
}

#[async_trait]
impl Unit for Pass<'_> {
    /// One thread writes: nothing to lock.
    async fn lock(&mut self, _: &BTreeSet<ParkKey>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn put_completion(&mut self, completion: &Completion) -> Result<(), StoreError> {
        put_completion(&mut self.batch, completion);
        Ok(())
    }
}

#[async_trait]
impl ShipmentRows for Pass<'_> {
    async fn shipment(&mut self, id: &ShipmentId) -> Result<Option<ShipmentRecord>, StoreError> {
        if !self.shipments.contains_key(id) {
            let rec = super::read_shipment(self.tree, id.as_str())?;
            self.shipments.insert(id.clone(), rec);
        }
        Ok(self.shipments.get(id).cloned().flatten())
    }

    async fn shipment_for(
        &mut self,
        tracking_number: &TrackingNumber,
    ) -> Result<Option<ShipmentId>, StoreError> {
        if let Some(hit) = self.tracking.get(tracking_number) {
            return Ok(hit.clone());
        }
        let found = match self
            .tree
            .get(codec::tracking_key(tracking_number.as_str()))?
        {
            None => None,
            Some(v) => Some(ShipmentId::from(utf8(&v, || {
                format!("the tracking entry of {tracking_number}")
            })?)),
        };
        self.tracking.insert(tracking_number.clone(), found.clone());
        Ok(found)
    }

    fn put_shipment(&mut self, rec: ShipmentRecord) {
        if let Some(tn) = &rec.tracking_number
            && self.tracking.get(tn) != Some(&Some(rec.shipment_id.clone()))
        {
            self.batch.insert(
                codec::tracking_key(tn.as_str()),
                rec.shipment_id.as_str().as_bytes().to_vec(),
            );
            self.tracking
                .insert(tn.clone(), Some(rec.shipment_id.clone()));
        }
        self.dirty.insert(rec.shipment_id.clone());
        self.shipments.insert(rec.shipment_id.clone(), Some(rec));
    }

    async fn insert_shipment(&mut self, rec: ShipmentRecord) -> Result<(), StateError> {
        if self.shipment(&rec.shipment_id).await?.is_some() {
            return Err(StateError::ShipmentExists(rec.shipment_id));
        }
        self.put_shipment(rec);
        Ok(())
    }

    async fn schedule_void(&mut self, id: &ShipmentId, due_ms: u64) -> Result<(), StoreError> {
        self.batch
            .insert(codec::void_key(due_ms, id.as_str()), Vec::new());
        Ok(())
    }

    async fn unschedule_void(&mut self, id: &ShipmentId, due_ms: u64) -> Result<(), StoreError> {
        self.batch.remove(codec::void_key(due_ms, id.as_str()));
        Ok(())
    }
}

#[async_trait]
impl OrderRows for Pass<'_> {
    async fn order(&mut self, key: &OrderKey) -> Result<Option<OrderRecord>, StoreError> {
        if !self.orders.contains_key(key) {
            let rec = super::read_order(self.tree, key.partner.as_str(), key.order_id.as_str())?;
            self.orders.insert(key.clone(), rec);
        }
        Ok(self.orders.get(key).cloned().flatten())
    }

    async fn orders_with_id(&mut self, order_id: &OrderId) -> Result<Vec<OrderRecord>, StoreError> {
        let partners = match self.partners.get(order_id) {
            Some(found) => found.clone(),
            None => {
                let prefix = codec::order_partner_prefix(order_id.as_str());
                let mut found = Vec::new();
                for kv in self.tree.scan_prefix(&prefix) {
                    let (k, _) = kv?;
                    if let Some(p) = k.get(prefix.len()..) {
                        found.push(PartnerName::from(utf8(p, || {
                            format!("a partner entry of order {order_id}")
                        })?));
                    }
                }
                self.partners.insert(order_id.clone(), found.clone());
                found
            }
        };
        let mut orders = Vec::with_capacity(partners.len());
        for partner in &partners {
            let key = OrderKey::new(partner.clone(), order_id.clone());
            orders.extend(self.order(&key).await?);
        }
        Ok(orders)
    }

    fn put_order(&mut self, rec: OrderRecord) {
        let key = rec.key();
        self.dirty_orders.insert(key.clone());
        self.orders.insert(key, Some(rec));
    }

    async fn insert_order(&mut self, rec: &OrderRecord) -> Result<bool, StoreError> {
        if self.order(&rec.key()).await?.is_some() {
            return Ok(false);
        }
        let (partner, order_id) = (rec.partner.as_str(), rec.order_id.as_str());
        self.batch.insert(
            codec::order_list_key(partner, rec.created_at_ms, order_id),
            Vec::new(),
        );
        self.batch
            .insert(codec::order_partner_key(order_id, partner), Vec::new());
        // The partners of this id as the store has them, and this one.
        self.orders_with_id(&rec.order_id).await?;
        if let Some(partners) = self.partners.get_mut(&rec.order_id) {
            partners.push(rec.partner.clone());
        }
        self.put_order(rec.clone());
        Ok(true)
    }

    async fn schedule(&mut self, order: &OrderRecord, due_ms: u64) -> Result<(), StoreError> {
        self.batch.insert(
            codec::fulfil_key(due_ms, order.partner.as_str(), order.order_id.as_str()),
            Vec::new(),
        );
        Ok(())
    }

    async fn unschedule(&mut self, order: &OrderRecord, due_ms: u64) -> Result<(), StoreError> {
        self.batch.remove(codec::fulfil_key(
            due_ms,
            order.partner.as_str(),
            order.order_id.as_str(),
        ));
        Ok(())
    }
}

#[async_trait]
impl EventRows for Pass<'_> {
    async fn parked(
        &mut self,
        key: &ParkKey,
    ) -> Result<Vec<(Stored, Option<Vec<u8>>)>, StoreError> {
        let (tag, text) = match key {
            ParkKey::Tracking(tn) => (b'T', tn.as_str()),
            ParkKey::Order(id) => (b'O', id.as_str()),
        };
        let cursor = super::read_cursor(self.tree)?;
        let mut parked = Vec::new();
        for kv in self.tree.scan_prefix(codec::text_prefix(tag, text)) {
            let (k, _) = kv?;
            let Some(seq) = codec::seq_suffix(&k) else {
                continue;
            };
            if seq > cursor {
                // Still in the inbox: the next pass applies it.
                continue;
            }
            // Whether it is parked needs no segment record; what is
            // unparked needs one read of it, for the arrival and the body.
            let Some(entry) = super::read_entry(self.tree, seq)? else {
                continue;
            };
            if entry.held().parked == 0 {
                continue;
            }
            let segments = &self.shared.segments;
            let (pointer, arrival, body) = super::arrival_with_body(segments, seq, &entry)?;
            let body = match super::identity_seq(self.tree, &arrival.source, &arrival.event_id)? {
                // A copy that came again after this one expired has its
                // own arrival; this one waits for retention.
                Some(current) if current != seq => continue,
                Some(_) => Some(body),
                None => None,
            };
            parked.push((self.stored(seq, (pointer, arrival)), body));
        }
        Ok(parked)
    }

    async fn event(
        &mut self,
        source: &str,
        event_id: &str,
        _locked: bool,
    ) -> Result<Option<(Stored, Option<Vec<u8>>)>, StoreError> {
        let Some(ev) = super::read_event(self.shared, source, event_id)? else {
            return Ok(None);
        };
        let Some(arrival) = super::read_arrival(self.tree, &self.shared.segments, ev.seq)? else {
            return Ok(None);
        };
        Ok(Some((self.stored(ev.seq, arrival), Some(ev.body))))
    }

    fn put_outcome(&mut self, event: &Stored, outcome: &OutcomeRecord) {
        let Some((pointer, arrival)) = self.arrivals.get_mut(&event.seq) else {
            // Every event handed to the core came through `stored`.
            tracing::error!(
                seq = event.seq,
                "an outcome for an arrival this pass never read"
            );
            return;
        };
        let was = codec::Held::of(arrival);
        arrival.outcome = Some(outcome.clone());
        let is = codec::Held::of(arrival);
        self.marked.add(is);
        self.unmarked.add(was);
        self.batch.insert(
            codec::seq_key(b'n', event.seq).to_vec(),
            arrival.entry(*pointer).encode(),
        );
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
            StateMsg::Write(write) => write(self, replies),
            StateMsg::CreateShipment(rec, completion, reply) => {
                self.create_shipments(vec![(*rec, completion, reply)], replies);
            }
            StateMsg::Claim { claim, reply } => {
                // Only a replay waits for the round's flush: the answer it
                // repeats may have been written in this round. Any other
                // decision rests on a claim, which needs no flush (lost in
                // a crash, it was never answered for, and the retry runs).
                match self.claim(&claim) {
                    replay @ Ok(Decision::Replay { .. }) => replies.after_sync(reply, replay),
                    other => {
                        let _ = reply.send(other);
                    }
                }
            }
            StateMsg::Release { partner, key } => {
                if let Err(e) = self.release(&partner, &key) {
                    tracing::warn!(error = %e, "releasing an idempotency key failed");
                }
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
            self.shared.wake_pending.store(false, Ordering::SeqCst);
            let cursor = super::read_cursor(tree)?;
            // Only events whose group is durable: an event is forwarded
            // only once it is stored for good, and the outcome written
            // here then follows its whole group in sled's log
            // (`Shared::write_group`).
            let durable = self.shared.durable_seq.load(Ordering::SeqCst);
            if durable <= cursor {
                return Ok(());
            }
            let mut pass = Pass::new(&self.shared);
            let mut last = cursor;
            let mut events = Vec::new();
            // Queued events whose arrival cannot be read: out of the
            // inbox, as the cursor passes them.
            let mut passed_over = 0i64;
            let sources = self.shared.sources.load_full();
            let inbox = codec::seq_key(b'n', cursor + 1)..=codec::seq_key(b'n', durable);
            for kv in tree.range(inbox).take(PASS) {
                let (k, v) = kv?;
                let Some(seq) = codec::parse_seq_key(b'n', &k) else {
                    break;
                };
                last = seq;
                // An arrival that cannot be read names no event to apply:
                // reported and counted, and the pass goes on, so that one
                // bad record does not stop dispatch for every other. A
                // read that fails is the store's, and stops the pass.
                let Some(entry) = codec::ArrivalEntry::decode(&v) else {
                    let _ = StoreError::corrupt(format!(
                        "the arrival of event {seq}, passed over by dispatch"
                    ));
                    continue;
                };
                if !entry.dispatch {
                    continue;
                }
                let read = match super::arrival_of(&self.shared.segments, seq, &entry) {
                    Err(StoreError::Corrupt(_)) => {
                        passed_over += 1;
                        continue;
                    }
                    read => read?,
                };
                let arrival = &read.1;
                let interpretation = match (sources.get(&arrival.source), &arrival.fields) {
                    (None, _) => gone(&arrival.source),
                    (Some(cfg), Some(fields)) => {
                        interpret_fields(cfg, &arrival.event_id, arrival.received_at_ms, fields)
                    }
                    (Some(_), None) => Interpretation::NotDispatched,
                };
                events.push((pass.stored(seq, read), interpretation));
            }
            if last == cursor {
                return Ok(());
            }
            let dispatched = events.len() as i64 + passed_over;
            let mut work = Work::new(&mut pass, &sources);
            run_now(work.dispatch(events))?;
            let counted = work.counted;
            pass.batch
                .insert(codec::CURSOR_KEY, last.to_be_bytes().to_vec());
            // The crash tests stop the state machine here, with a pass
            // decided and not yet written.
            fail::fail_point!("dispatch-before-commit");
            pass.commit()?;
            let pending = self
                .shared
                .inbox_pending
                .fetch_sub(dispatched, Ordering::Relaxed)
                - dispatched;
            metrics::gauge!(metric::INBOX_PENDING).set(pending as f64);
            count(&counted);
        }
    }

    /// Commits a command's pass, then counts what it dispatched.
    fn commit(pass: Pass<'_>, counted: &[(String, DispatchOutcome)]) -> Result<(), StateError> {
        pass.commit()?;
        count(counted);
        Ok(())
    }

    /// Runs one write of the shared orchestration in `pass`, then commits
    /// it and counts the dispatch outcomes it decided.
    fn write<'s, T, E>(
        &'s self,
        mut pass: Pass<'s>,
        write: impl FnOnce(&mut Work<'_, Pass<'s>>) -> Result<T, E>,
    ) -> Result<T, StateError>
    where
        StateError: From<E>,
    {
        let sources = self.shared.sources.load_full();
        let mut work = Work::new(&mut pass, &sources);
        let out = write(&mut work)?;
        let counted = std::mem::take(&mut work.counted);
        Self::commit(pass, &counted)?;
        Ok(out)
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
        if let Err(e) = self.shared.check_space() {
            for (_, _, reply) in creates {
                let _ = reply.send(Err(e.clone().into()));
            }
            return;
        }
        let sources = self.shared.sources.load_full();
        let mut pass = Pass::new(&self.shared);
        let mut work = Work::new(&mut pass, &sources);
        let mut accepted = Vec::new();
        for (rec, completion, reply) in creates {
            match run_now(work.create_shipment(rec, completion.as_ref())) {
                Ok(()) => accepted.push(reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let result = pass.commit();
        for reply in accepted {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(StateError::Store(e)) => Err(StateError::Store(e.clone())),
                Err(e) => Err(StateError::Store(StoreError::Unavailable(e.to_string()))),
            };
            replies.after_sync(reply, result);
        }
    }

    /// Claims a key for a request, or says why not. A claim needs no flush:
    /// lost in a crash, it was never answered for, and the retry runs again.
    fn claim(&self, claim: &Claim) -> Result<Decision, StateError> {
        // Every write starts with a claim: short of space, none starts.
        self.shared.check_space()?;
        let k = codec::idem_key(claim.partner.as_str(), claim.key.as_str());
        let record = read_key_record(&self.shared.tree, &k)?;
        let now = crate::clock::now_ms();
        let epoch = self.shared.epoch;
        let decision = idempotency::decide(record.as_ref(), &claim.fingerprint, now, epoch);
        if decision == Decision::Run {
            // A plain insert, not a batch: sled's batches wait for a flush
            // in progress, and a claim must not.
            self.shared
                .tree
                .insert(k, codec::encode_record(&claim.record(epoch, now)))
                .map_err(StoreError::from)
                .inspect_err(|e| self.shared.fail("write", e))?;
        }
        Ok(decision)
    }

    /// Forgets stored answers past their retention, oldest first; the index
    /// is ordered by expiry, so the cost is proportional to what expires.
    pub(super) fn sweep_idempotency(&self, now_ms: u64, limit: usize) -> Result<usize, StateError> {
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
            let record = read_key_record(tree, &record_key)?;
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
    fn release(&self, partner: &PartnerName, key: &IdempotencyKey) -> Result<(), StateError> {
        let tree = &self.shared.tree;
        let k = codec::idem_key(partner.as_str(), key.as_str());
        let record = read_key_record(tree, &k)?;
        if let Some(idempotency::Record::InProgress { epoch, .. }) = record
            && epoch == self.shared.epoch
        {
            tree.remove(k)?;
        }
        Ok(())
    }

    /// Stores the final answer of a request that wrote nothing else.
    pub(super) fn finish(&self, completion: &Completion) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        put_completion(&mut batch, completion);
        self.shared.apply(batch).map_err(StateError::from)
    }

    pub(super) fn record_label(
        &self,
        label: NewLabel,
        completion: Option<Completion>,
    ) -> Result<LabelRecorded, StateError> {
        self.write(Pass::new(&self.shared), |work| {
            run_now(work.record_label(label, completion.as_ref()))
        })
    }

    pub(super) fn create_order(&self, rec: OrderRecord) -> Result<OrderCreated, StateError> {
        let mut pass = Pass::new(&self.shared);
        if run_now(pass.order(&rec.key()))?.is_none() {
            // Only a new order writes: short of space, none is made.
            self.shared.check_space()?;
        }
        self.write(pass, |work| run_now(work.create_order(rec)))
    }

    pub(super) fn write_order(&self, w: OrderWrite) -> Result<OrderRecord, StateError> {
        self.write(Pass::new(&self.shared), |work| run_now(work.write_order(w)))
    }

    pub(super) fn record_intent(
        &self,
        shipment_id: &ShipmentId,
        request: LabelRequest,
    ) -> Result<LabelRequest, StateError> {
        self.shared.check_space()?;
        let sources = self.shared.sources.load_full();
        let mut pass = Pass::new(&self.shared);
        let (request, changed) =
            run_now(Work::new(&mut pass, &sources).record_intent(shipment_id, request))?;
        if changed {
            pass.commit()?;
        }
        Ok(request)
    }

    pub(super) fn settle_void(
        &self,
        id: &ShipmentId,
        outcome: LabelVoid,
    ) -> Result<Option<ShipmentRecord>, StateError> {
        let sources = self.shared.sources.load_full();
        let mut pass = Pass::new(&self.shared);
        let out = run_now(Work::new(&mut pass, &sources).settle_void(id, outcome))?;
        pass.commit()?;
        Ok(out)
    }

    pub(super) fn cancel(&self, cancel: Cancel) -> Result<ShipmentRecord, StateError> {
        let sources = self.shared.sources.load_full();
        let mut pass = Pass::new(&self.shared);
        let out = run_now(Work::new(&mut pass, &sources).cancel(cancel))?;
        pass.commit()?;
        Ok(out)
    }

    pub(super) fn redeliver(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<OutcomeRecord, StateError> {
        let sources = self.shared.sources.load_full();
        let mut pass = Pass::new(&self.shared);
        let mut work = Work::new(&mut pass, &sources);
        let (out, before) = run_now(work.redeliver(source, event_id))?;
        let counted = work.counted;
        pass.commit()?;
        count_redelivered(before, &counted);
        Ok(out)
    }
}

/// An id stored as bytes: text, or an unreadable record (named by `what`),
/// never a lossy guess.
fn utf8(bytes: &[u8], what: impl FnOnce() -> String) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::corrupt(what()))
}

/// An idempotency key's record; one that cannot be read is an error, never
/// an unused key (which would run the request a second time).
fn read_key_record(tree: &sled::Tree, k: &[u8]) -> Result<Option<idempotency::Record>, StoreError> {
    match tree.get(k)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|_| StoreError::corrupt("an idempotency key's record")),
    }
}

/// Stores a final answer and its retention entry into a batch.
fn put_completion(batch: &mut sled::Batch, c: &Completion) {
    let (partner, key) = (c.partner.as_str(), c.key.as_str());
    if let idempotency::Record::Done { expires_at_ms, .. } = &c.record {
        batch.insert(
            codec::idem_expiry_key(*expires_at_ms, partner, key),
            Vec::new(),
        );
    }
    batch.insert(
        codec::idem_key(partner, key),
        codec::encode_record(&c.record),
    );
}
