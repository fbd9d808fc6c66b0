//! The embedded adapter: sled for the index and state, segment files for
//! the events (`segments`). One process owns the directory.
//!
//! Three threads write, each owning its keys (see `codec`):
//! - the writer (`writer.rs`) takes every ingest request waiting in its
//!   queue, decides new-or-duplicate for each against the tree and the rest
//!   of the group, appends the new events' records to the active segment
//!   and writes the group's index into sled, key by key, in an order
//!   that a crash can only cut, never scramble (`Shared::write_group`);
//! - the flusher `fdatasync`s each group's segment as soon as the writer
//!   has appended to it, while the writer writes that group's index, and
//!   answers a group's requests once both are done. While one flush runs
//!   the next group is gathered and applied: the group commit. sled
//!   writes its log out in the background;
//!   what it had not when the process died is rebuilt from the segments on
//!   open (`replay_log`);
//! - the state machine (`state.rs`) drains the inbox into shipments and
//!   runs the commands that change shipments.
//!
//! A single writer means no compare-and-swap races: two copies of one event,
//! however concurrent, are ordered by the queue, and the second sees the
//! first (in the tree, or earlier in the same group).

pub mod codec;
pub mod segments;
mod space;
mod state;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{
    Cancel, Claim, Completion, EventFilter, IngestResult, LabelRecorded, NewEvent, NewLabel,
    OrderCreated, OrderRecord, OrderWrite, OutcomeRecord, Search, ShipmentRecord, StateError,
    StoreError, StoredEvent,
};
use crate::config::{SourceConfig, StoreConfig};
use crate::domain::ids::{OrderId, OrderKey, PartnerName, ShipmentId};
use crate::domain::label::{LabelRequest, LabelVoid};
use crate::health::Health;
use crate::idempotency::IdempotencyKey;
use crate::store::prelude::*;
use crate::telemetry::metric;
use codec::EventMeta;
use state::{StateMachine, StateMsg};

/// Requests gathered into one batch at most. Larger groups add latency to
/// the first request in them without making the flush cheaper.
const MAX_GROUP: usize = 2048;

/// How long the writer, flusher or state machine may go without a
/// heartbeat before `/readyz` says the store is stuck. Idle, each is woken
/// at least every second.
const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Sequence numbers follow arrival, and arrival times nearly do: an event
/// is stamped when its request is read and numbered when the writer takes
/// it, which a request's own deadlines keep within seconds. A newest-first
/// search with `since` stops once it is this far past it.
const SINCE_SLACK_MS: u64 = 5 * 60 * 1000;

type Reply = oneshot::Sender<Result<IngestResult, StoreError>>;

/// A new event with everything but its sequence number already encoded,
/// by the caller's task, so the single writer thread only decides and
/// copies.
struct Prepared {
    key: Vec<u8>,
    received_at_ms: u64,
    expires_at_ms: u64,
    content_hash: [u8; 32],
    dispatch: bool,
    tracking_number: Option<String>,
    order_id: Option<String>,
    /// Headers and body, compressed here rather than on the writer thread
    /// (`codec::pack_payload`).
    packed: Vec<u8>,
    /// What a search shows of the event (no headers), encoded: the
    /// segment record carries it (`codec::Logged::index_meta`).
    index_meta: Vec<u8>,
    arrival: Vec<u8>,
}

impl Prepared {
    fn from(ev: NewEvent) -> Prepared {
        let meta = EventMeta {
            received_at_ms: ev.received_at_ms,
            event_type: ev.event_type,
            dispatch: ev.dispatch,
            headers: ev.headers,
            tracking_number: ev.tracking_number.clone(),
            order_id: ev.order_id.clone(),
        };
        let arrival = codec::Arrival {
            source: ev.source.clone(),
            event_id: ev.event_id.clone(),
            dispatch: ev.dispatch,
            received_at_ms: ev.received_at_ms,
            fields: ev.fields,
            outcome: None,
        };
        Prepared {
            key: codec::event_key(&ev.source, &ev.event_id),
            received_at_ms: ev.received_at_ms,
            expires_at_ms: ev.expires_at_ms,
            content_hash: ev.content_hash,
            dispatch: ev.dispatch,
            tracking_number: ev.tracking_number,
            order_id: ev.order_id,
            index_meta: codec::encode_index_meta(&meta),
            packed: codec::pack_payload(&meta, &ev.body),
            arrival: arrival.encode(),
        }
    }
}

enum Msg {
    Ingest(Box<Prepared>, Reply),
    /// Wakes an idle writer so that it beats and checks the free space.
    Ping,
    Sweep {
        now_ms: u64,
        limit: usize,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
}

/// A group whose index is written, for the flusher to answer once its
/// segment is synced.
struct Group {
    answers: Vec<(Reply, Result<IngestResult, StoreError>)>,
    last_seq: u64,
    /// Whether the group put events in the inbox: the dispatcher is woken
    /// once they are durable.
    queued: bool,
}

/// What the writer hands the flusher. A group that stored new events
/// sends its segment as soon as the payloads are written, so that the
/// `fdatasync` runs while the writer writes the group's index; the group
/// itself follows once its index is written. It is answered, and its
/// events are given to dispatch, only when both are done.
enum ToFlusher {
    Sync {
        segment: u64,
        file: std::fs::File,
        last_seq: u64,
    },
    Indexed(Group),
}

struct Shared {
    db: sled::Db,
    /// sled's own flush on Linux ends in `sync_file_range`, which survives
    /// the death of the process but neither flushes the device's write cache
    /// nor the file's metadata (sled grows its file as it goes). An
    /// `fdatasync` on the same file after each flush closes that gap for
    /// power loss too.
    log_file: Option<std::fs::File>,
    tree: sled::Tree,
    durable_seq: AtomicU64,
    inbox_pending: AtomicI64,
    /// The parked and dead counts as last written: by dispatch
    /// (`PARKED_KEY`, `DEAD_KEY`) and by retention (`PARKED_SWEPT_KEY`,
    /// `DEAD_SWEPT_KEY`). Held now is the difference.
    marked: AtomicHeld,
    swept: AtomicHeld,
    /// False once sled failed a write or a flush. sled cannot recover from
    /// that in-process, so the threads that see it stop, and supervision
    /// restarts the process on the same data.
    healthy: AtomicBool,
    /// The free-space floor and the disk reserve (`space`).
    space: space::Space,
    /// Event payloads (headers and body), beside sled's small records.
    segments: segments::Segments,
    health: Arc<Health>,
    /// Batches applied, and how many of them the last flush covered: an
    /// answer given while `synced < applied` for its own write would be an
    /// acknowledgement before the flush (the tests check it never is).
    applied: AtomicU64,
    synced: AtomicU64,
    /// Held only to clone, take or send on the sender: nothing in such a
    /// section can leave it inconsistent, so a poisoned lock is used as is.
    state_tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<StateMsg>>>,
    /// Set when a wake-up is on its way to the state machine, so the flusher
    /// sends one per pass rather than one per group.
    wake_pending: AtomicBool,
    dispatcher_running: AtomicBool,
    /// The sources the state machine interprets events with: their status
    /// maps and pointers. A reload swaps them whole, and each event is
    /// interpreted under one version.
    sources: arc_swap::ArcSwap<HashMap<String, SourceConfig>>,
    /// How many of a group's writes the tests let through (`cut_here`).
    #[cfg(test)]
    cut_group_after: std::sync::atomic::AtomicUsize,
    /// Distinguishes this run of the process: an idempotency claim made by
    /// an earlier run belongs to a request that died with it.
    epoch: u64,
}

/// A `codec::Held` that threads read and write.
#[derive(Default)]
struct AtomicHeld {
    parked: AtomicU64,
    dead: AtomicU64,
}

impl AtomicHeld {
    fn load(&self) -> codec::Held {
        codec::Held {
            parked: self.parked.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }

    fn store(&self, h: codec::Held) {
        self.parked.store(h.parked, Ordering::Relaxed);
        self.dead.store(h.dead, Ordering::Relaxed);
    }
}

/// The keys a `Held` is written under: dispatch's or retention's.
#[derive(Clone, Copy)]
enum HeldKeys {
    Marked,
    Swept,
}

impl HeldKeys {
    fn keys(self) -> (&'static [u8], &'static [u8]) {
        match self {
            HeldKeys::Marked => (codec::PARKED_KEY, codec::DEAD_KEY),
            HeldKeys::Swept => (codec::PARKED_SWEPT_KEY, codec::DEAD_SWEPT_KEY),
        }
    }

    fn read(self, tree: &sled::Tree) -> Result<codec::Held, StoreError> {
        let (parked, dead) = self.keys();
        Ok(codec::Held {
            parked: read_u64(tree, parked)?,
            dead: read_u64(tree, dead)?,
        })
    }

    fn write(self, batch: &mut sled::Batch, h: codec::Held) {
        let (parked, dead) = self.keys();
        batch.insert(parked, h.parked.to_be_bytes().to_vec());
        batch.insert(dead, h.dead.to_be_bytes().to_vec());
    }
}

impl Shared {
    /// Events parked and dead now.
    fn held(&self) -> codec::Held {
        let (m, s) = (self.marked.load(), self.swept.load());
        codec::Held {
            parked: m.parked.saturating_sub(s.parked),
            dead: m.dead.saturating_sub(s.dead),
        }
    }

    /// Makes everything written so far durable.
    fn sync(&self) -> Result<(), StoreError> {
        let covered = self.applied.load(Ordering::Acquire);
        let synced = self
            .db
            .flush()
            .map_err(StoreError::from)
            .and_then(|_| match &self.log_file {
                Some(f) => f
                    .sync_data()
                    .map_err(|e| StoreError::Unavailable(e.to_string())),
                None => Ok(()),
            });
        synced
            .inspect(|_| {
                self.synced.fetch_max(covered, Ordering::AcqRel);
            })
            .inspect_err(|e| self.fail("flush", e))
    }

    /// Writes a group's keys one by one, in order; a failure is the
    /// store's end (`fail`).
    ///
    /// Not a sled batch: every `apply_batch` seals sled's log buffer
    /// before and after it, two `pwrite`s and two `sync_file_range`s on
    /// sled's IO threads, and it waits for a sled flush in progress. A
    /// group needs no atomicity of its own: sled recovers a prefix of its
    /// writes, and the group ends with its segment's entry (`g`) and then
    /// `SEQ_KEY`, so a crash leaves either the whole group or a part that
    /// `replay_log` completes from the segment. What the state machine
    /// writes about an event comes after the whole group (`drain_inbox`
    /// takes only durable events), so no replay can overwrite an outcome.
    fn write_group(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        writes
            .into_iter()
            .enumerate()
            .try_for_each(|(i, (k, v))| {
                self.cut_here(i)?;
                match v {
                    Some(v) => self.tree.insert(k, v),
                    None => self.tree.remove(k),
                }
                .map(|_| ())
            })
            .map_err(StoreError::from)
            .inspect(|_| {
                self.applied.fetch_add(1, Ordering::AcqRel);
            })
            .inspect_err(|e| self.fail("write", e))
    }

    /// Where the tests stop a group's writes, as a crash could.
    #[cfg(test)]
    fn cut_here(&self, written: usize) -> sled::Result<()> {
        if written == self.cut_group_after.load(Ordering::Relaxed) {
            return Err(sled::Error::Io(std::io::Error::other("the group was cut")));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn cut_here(&self, _written: usize) -> sled::Result<()> {
        Ok(())
    }

    /// Applies a batch atomically; a failure is the store's end (`fail`).
    fn apply(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.tree
            .apply_batch(batch)
            .map_err(StoreError::from)
            .inspect(|_| {
                self.applied.fetch_add(1, Ordering::AcqRel);
            })
            .inspect_err(|e| self.fail("write", e))
    }

    fn fail(&self, what: &str, e: &StoreError) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(error = %e, what, "the store failed; it stops and the process will exit");
        }
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Refuses new writes while the file system is short of space, so sled
    /// never meets a full disk (`space`). Checked per group and per
    /// command, which costs one statvfs.
    fn check_space(&self) -> Result<(), StoreError> {
        self.space.check()
    }

    fn wake_dispatcher(&self) {
        // SeqCst, as where the state machine clears the flag and reads
        // `durable_seq` (`drain_inbox`): the flusher publishes `durable_seq`
        // and then tests the flag, the state machine clears the flag and
        // then reads `durable_seq`, and with weaker orderings each could
        // miss the other's write, leaving the events to the 500 ms timeout.
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.tell(StateMsg::Wake);
        }
    }

    /// Sends the state machine a message that needs no answer; nothing
    /// happens when it is not running.
    fn tell(&self, msg: StateMsg) {
        if let Some(tx) = self
            .state_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = tx.send(msg);
        }
    }
}

pub struct SledStore {
    shared: Arc<Shared>,
    tx: std::sync::Mutex<Option<mpsc::Sender<Msg>>>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl SledStore {
    /// Opens the store and starts the writer and flusher. The state machine
    /// starts separately (`start_dispatcher`), so tools and tests can open a
    /// store to read it without applying anything.
    pub fn open(cfg: &StoreConfig) -> Result<SledStore, StoreError> {
        SledStore::open_supervised(cfg, Health::new())
    }

    /// `open`, with the threads reporting to `health`.
    pub fn open_supervised(
        cfg: &StoreConfig,
        health: Arc<Health>,
    ) -> Result<SledStore, StoreError> {
        // Accepted events are durable in the segments; sled holds their
        // index and is flushed in the background (and with every state
        // machine round), and `replay_log` rebuilds what it had not
        // flushed when the process died.
        std::fs::create_dir_all(&cfg.path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", cfg.path.display())))?;
        // Before sled: on a disk another process filled, the headroom is
        // handed back so that opening can write.
        let space = space::Space::open(&cfg.path, cfg.min_free_bytes);
        let db = open_db(
            &sled::Config::new()
                .path(&cfg.path)
                .cache_capacity(cfg.cache_bytes)
                .flush_every_ms(Some(flush_ms(cfg.index_flush))),
        )?;
        let tree = db.open_tree("state")?;
        let segments = segments::Segments::open(&cfg.path.join("segments"), cfg.segment_bytes)
            .map_err(|e| StoreError::Unavailable(format!("segments: {e}")))?;
        check_format(&tree)?;
        replay_log(&tree, &segments)?;
        drop_dangling(&tree, &segments)?;
        let seq = read_u64(&tree, codec::SEQ_KEY)?;
        let cursor = read_cursor(&tree)?;
        let mut pending = 0i64;
        for kv in tree.range(codec::seq_key(b'n', cursor + 1)..codec::seq_key(b'n', u64::MAX)) {
            let (_, v) = kv?;
            if codec::ArrivalEntry::decode(&v).is_some_and(|a| a.dispatch) {
                pending += 1;
            }
        }
        count_dead_once(&tree, cursor)?;
        let marked = HeldKeys::Marked.read(&tree)?;
        let swept = HeldKeys::Swept.read(&tree)?;
        let log_file = std::fs::File::open(cfg.path.join("db")).ok();
        let shared = Arc::new(Shared {
            db,
            log_file,
            tree,
            durable_seq: AtomicU64::new(seq),
            inbox_pending: AtomicI64::new(pending),
            marked: AtomicHeld::default(),
            swept: AtomicHeld::default(),
            healthy: AtomicBool::new(true),
            space,
            segments,
            health,
            applied: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            state_tx: std::sync::Mutex::new(None),
            wake_pending: AtomicBool::new(false),
            dispatcher_running: AtomicBool::new(false),
            sources: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            epoch: fastrand::u64(1..),
            #[cfg(test)]
            cut_group_after: std::sync::atomic::AtomicUsize::new(usize::MAX),
        });
        shared.marked.store(marked);
        shared.swept.store(swept);
        shared.space.keep_headroom();
        metrics::gauge!(metric::INBOX_PENDING).set(pending as f64);
        let _ = shared.check_space();

        let segment_id = shared.segments.active_id();
        let segment = match shared.tree.get(codec::segment_key(segment_id))? {
            Some(v) => segment_info(segment_id, &v),
            None => codec::SegmentInfo::default(),
        };
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        let (flush_tx, flush_rx) = std::sync::mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("waybill-writer".into())
                .spawn(move || {
                    writer::Writer {
                        shared,
                        seq,
                        segment_id,
                        segment,
                        unreadable_segments: Default::default(),
                    }
                    .run(rx, flush_tx)
                })
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
        };
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("waybill-flusher".into())
                .spawn(move || writer::flusher(shared, flush_rx))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
        };
        Ok(SledStore {
            shared,
            tx: std::sync::Mutex::new(Some(tx)),
            threads: std::sync::Mutex::new(vec![writer, flusher]),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Msg>, StoreError> {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closing".into()))
    }

    /// Runs `op` in the state machine's next round; answered after the
    /// round's flush, so durable on return.
    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&StateMachine) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        self.command(|reply| StateMsg::write(reply, op)).await
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StateError>>) -> StateMsg,
    ) -> Result<T, StateError> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self
                .shared
                .state_tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let tx = guard.as_ref().ok_or_else(|| {
                StoreError::Unavailable("the state machine is not running".into())
            })?;
            tx.send(make(reply))
                .map_err(|_| StoreError::Unavailable("the state machine stopped".into()))?;
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("the state machine stopped".into()))?
    }

    /// Batches applied so far, and how many a completed flush covers.
    pub fn writes_applied_and_synced(&self) -> (u64, u64) {
        (
            self.shared.applied.load(Ordering::Acquire),
            self.shared.synced.load(Ordering::Acquire),
        )
    }

    /// The highest sequence number covered by a completed flush.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// The inbox in arrival order: (sequence, source, event id).
    pub fn inbox(&self) -> Result<Vec<(u64, String, String)>, StoreError> {
        let tree = &self.shared.tree;
        let cursor = read_cursor(tree)?;
        let mut out = Vec::new();
        for kv in tree.range(codec::seq_key(b'n', cursor + 1)..codec::seq_key(b'n', u64::MAX)) {
            let (k, v) = kv?;
            if let Some((seq, a)) = arrival_at(&self.shared.segments, &k, &v)?
                && a.dispatch
            {
                out.push((seq, a.source, a.event_id));
            }
        }
        Ok(out)
    }

    /// Whether an identity is remembered (not yet swept).
    pub fn knows(&self, source: &str, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .shared
            .tree
            .contains_key(codec::event_key(source, event_id))?)
    }

    /// Checks that nothing is half-written or dispatched twice: every
    /// arrival names its stored event; every dispatched arrival up to the
    /// cursor has an outcome and none past it has one; every charged order
    /// has its shipment and every order waiting for fulfilment its queue
    /// entry. Returns one line per problem; empty means whole.
    pub fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        let tree = &self.shared.tree;
        let cursor = read_cursor(tree)?;
        let mut problems = Vec::new();
        let mut held = codec::Held::default();
        for kv in tree.scan_prefix(b"n") {
            let (k, v) = kv?;
            let Some((seq, entry)) = codec::parse_seq_key(b'n', &k)
                .and_then(|seq| Some((seq, codec::ArrivalEntry::decode(&v)?)))
            else {
                problems.push(format!("unreadable arrival {k:?}"));
                continue;
            };
            let a = match arrival_of(&self.shared.segments, seq, &entry) {
                Ok((_, a)) => a,
                Err(e) => {
                    problems.push(format!("arrival {seq}: {e}"));
                    continue;
                }
            };
            match read_event(&self.shared, &a.source, &a.event_id) {
                Ok(Some(ev)) if ev.seq == seq && ev.meta.dispatch == a.dispatch => {}
                // The event expired and came again; retention takes this
                // copy's arrival.
                Ok(Some(ev)) if ev.seq > seq => {}
                Ok(_) => problems.push(format!(
                    "arrival {seq} names no stored event {}/{}",
                    a.source, a.event_id
                )),
                Err(e) => problems.push(format!(
                    "arrival {seq}: the payload of {}/{} is unreadable: {e}",
                    a.source, a.event_id
                )),
            }
            if !a.dispatch {
                continue;
            }
            held.add(codec::Held::of(&a));
            let dispatched = a.outcome.is_some();
            if seq <= cursor && !dispatched {
                problems.push(format!(
                    "{}/{} is past the cursor with no outcome",
                    a.source, a.event_id
                ));
            }
            if seq > cursor && dispatched {
                problems.push(format!(
                    "{}/{} is in the inbox and was dispatched too",
                    a.source, a.event_id
                ));
            }
        }
        let (marked, swept) = (HeldKeys::Marked.read(tree)?, HeldKeys::Swept.read(tree)?);
        let counted = codec::Held {
            parked: marked.parked.saturating_sub(swept.parked),
            dead: marked.dead.saturating_sub(swept.dead),
        };
        if counted != held {
            problems.push(format!(
                "the counts say {counted:?} where {held:?} events are parked and dead"
            ));
        }
        // No charge without its order's shipment; no order waiting for
        // fulfilment outside the queue.
        for kv in tree.scan_prefix(b"o") {
            let (_, v) = kv?;
            let Ok(order) = serde_json::from_slice::<OrderRecord>(&v) else {
                problems.push("unreadable order record".into());
                continue;
            };
            let name = format!("order {}/{}", order.partner, order.order_id);
            if order.progress.transaction_id.is_some() {
                match &order.progress.shipment_id {
                    Some(id) if read_shipment(tree, id.as_str())?.is_some() => {}
                    _ => problems.push(format!("{name} is charged without its shipment")),
                }
            }
            if let Some(due) = order.fulfil_due_ms
                && !tree.contains_key(codec::fulfil_key(
                    due,
                    order.partner.as_str(),
                    order.order_id.as_str(),
                ))?
            {
                problems.push(format!("{name} waits for fulfilment outside the queue"));
            }
        }
        // Every owed void is in its queue, once.
        let mut queued = 0;
        for kv in tree.scan_prefix(codec::VOID_PREFIX) {
            let (k, _) = kv?;
            queued += 1;
            let owes = codec::parse_void_key(&k)
                .map(|(due, id)| Ok::<_, StoreError>((due, read_shipment(tree, &id)?)))
                .transpose()?
                .is_some_and(|(due, s)| {
                    s.and_then(|s| s.label_void).and_then(|v| v.due_ms()) == Some(due)
                });
            if !owes {
                problems.push("a queued label void that no shipment owes".into());
            }
        }
        let mut owed = 0;
        for v in tree.scan_prefix(b"s").values() {
            match serde_json::from_slice::<ShipmentRecord>(&v?) {
                Ok(s) if s.label_void.as_ref().and_then(LabelVoid::due_ms).is_some() => owed += 1,
                Ok(_) => {}
                Err(_) => problems.push("unreadable shipment record".into()),
            }
        }
        if owed != queued {
            problems.push(format!("{owed} label voids owed, {queued} queued"));
        }
        Ok(problems)
    }
}

#[async_trait::async_trait]
impl Intake for SledStore {
    /// Remembers a new event durably, or reports the first copy. Returns only
    /// after a flush covering the answer (GUARANTEES.md: "Durable before acknowledged").
    async fn ingest(&self, event: NewEvent) -> Result<IngestResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Msg::Ingest(Box::new(Prepared::from(event)), reply))
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

#[async_trait::async_trait]
impl Dispatch for SledStore {
    /// Starts the state machine: pending inbox entries are applied at once,
    /// then every new one as it arrives.
    fn start_dispatcher(&self, sources: Vec<SourceConfig>) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self
            .shared
            .state_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(tx);
        self.set_sources(sources);
        let machine = StateMachine {
            shared: self.shared.clone(),
        };
        self.shared
            .dispatcher_running
            .store(true, Ordering::Relaxed);
        let handle = std::thread::Builder::new()
            .name("waybill-state".into())
            .spawn(move || machine.run(rx))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
        Ok(())
    }

    /// Replaces the sources the state machine interprets events with
    /// (a config reload); events from now on are read with these.
    fn set_sources(&self, sources: Vec<SourceConfig>) {
        self.shared.sources.store(Arc::new(
            sources.into_iter().map(|s| (s.name.clone(), s)).collect(),
        ));
    }

    /// Resolves once every event accepted before the call has been
    /// dispatched.
    async fn settle(&self) -> Result<(), StateError> {
        self.command(StateMsg::Settle).await
    }

    /// Dispatches a parked or dead event again; its new outcome.
    async fn redeliver(&self, source: &str, event_id: &str) -> Result<OutcomeRecord, StateError> {
        let (source, event_id) = (source.to_string(), event_id.to_string());
        self.write(move |machine| machine.redeliver(&source, &event_id))
            .await
    }
}

#[async_trait::async_trait]
impl Keys for SledStore {
    /// Claims an idempotency key for a request with this fingerprint, or
    /// says what the request gets instead (replay, conflict, in progress).
    async fn claim(&self, claim: &Claim) -> Result<crate::idempotency::Decision, StateError> {
        self.command(|reply| StateMsg::Claim {
            claim: Box::new(claim.clone()),
            reply,
        })
        .await
    }

    /// Gives up this run's claim on a key (the answer was not final).
    async fn release(&self, partner: &PartnerName, key: &IdempotencyKey) {
        self.shared.tell(StateMsg::Release {
            partner: partner.clone(),
            key: key.clone(),
        });
    }

    /// Stores the final answer of an idempotent request that wrote nothing
    /// else (a refusal that is final); durable on return.
    async fn finish(&self, completion: Completion) -> Result<(), StateError> {
        self.write(move |machine| machine.finish(&completion)).await
    }
}

#[async_trait::async_trait]
impl Shipments for SledStore {
    async fn create_shipment(
        &self,
        rec: ShipmentRecord,
        completion: Option<Completion>,
    ) -> Result<(), StateError> {
        self.command(|reply| StateMsg::CreateShipment(Box::new(rec), completion, reply))
            .await
    }

    async fn record_label(
        &self,
        label: NewLabel,
        completion: Option<Completion>,
    ) -> Result<LabelRecorded, StateError> {
        self.write(move |machine| machine.record_label(label, completion))
            .await
    }

    /// Records the carrier request of a label purchase before it is sent,
    /// durably; returns the request to send, which is an earlier
    /// purchase's when there was one.
    async fn record_intent(
        &self,
        shipment_id: &ShipmentId,
        request: LabelRequest,
    ) -> Result<LabelRequest, StateError> {
        let id = shipment_id.clone();
        self.write(move |machine| machine.record_intent(&id, request))
            .await
    }

    /// Cancels a shipment that is not moving; durable on return.
    async fn cancel(&self, cancel: Cancel) -> Result<ShipmentRecord, StateError> {
        self.write(move |machine| machine.cancel(cancel)).await
    }

    async fn shipment(
        &self,
        shipment_id: &ShipmentId,
    ) -> Result<Option<ShipmentRecord>, StoreError> {
        read_shipment(&self.shared.tree, shipment_id.as_str())
    }

    async fn shipments(&self, ids: &[ShipmentId]) -> Result<Vec<ShipmentRecord>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(read_shipment(&self.shared.tree, id.as_str())?);
        }
        Ok(found)
    }

    /// One process serves a sled store: what is due is its own.
    async fn due_voids(&self, now_ms: u64, limit: usize) -> Result<Vec<ShipmentId>, StoreError> {
        let mut out = Vec::new();
        let due = codec::void_key(0, "")..codec::void_key(now_ms.saturating_add(1), "");
        for kv in self.shared.tree.range(due).take(limit) {
            let (k, _) = kv?;
            let (_, id) = codec::parse_void_key(&k)
                .ok_or_else(|| StoreError::corrupt("an entry of the owed voids' queue"))?;
            out.push(ShipmentId::from(id));
        }
        Ok(out)
    }

    async fn settle_void(
        &self,
        id: &ShipmentId,
        outcome: LabelVoid,
    ) -> Result<Option<ShipmentRecord>, StateError> {
        let id = id.clone();
        self.write(move |machine| machine.settle_void(&id, outcome))
            .await
    }

    async fn voids_owed(&self) -> Result<u64, StoreError> {
        let tree = self.shared.tree.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            for kv in tree.scan_prefix(codec::VOID_PREFIX) {
                kv?;
                n += 1;
            }
            Ok(n)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl Orders for SledStore {
    /// Creates an order durably, or answers the one already there with its
    /// partner and id.
    async fn create_order(&self, record: OrderRecord) -> Result<OrderCreated, StateError> {
        self.write(move |machine| machine.create_order(record))
            .await
    }

    /// Records a step of an order's flow; durable on return.
    async fn write_order(&self, write: OrderWrite) -> Result<OrderRecord, StateError> {
        self.write(move |machine| machine.write_order(write)).await
    }

    async fn order(&self, key: &OrderKey) -> Result<Option<OrderRecord>, StoreError> {
        read_order(
            &self.shared.tree,
            key.partner.as_str(),
            key.order_id.as_str(),
        )
    }

    async fn orders(
        &self,
        partner: &PartnerName,
        skip: usize,
        limit: usize,
    ) -> Result<(usize, Vec<OrderRecord>), StoreError> {
        let tree = &self.shared.tree;
        let mut count = 0;
        let mut page = Vec::new();
        let partner = partner.as_str();
        for kv in tree.scan_prefix(codec::order_list_prefix(partner)).rev() {
            let (k, _) = kv?;
            if count >= skip
                && page.len() < limit
                && let Some(id) = codec::order_from_list_key(partner, &k)
                && let Some(rec) = read_order(tree, partner, &id)?
            {
                page.push(rec);
            }
            count += 1;
        }
        Ok((count, page))
    }

    /// Orders whose background fulfilment is due at `now_ms`, soonest
    /// first, at most `limit`: (due, partner, order id).
    async fn due_fulfilments(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PartnerName, OrderId)>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .shared
            .tree
            .range(
                codec::fulfil_key(0, "", "")..codec::fulfil_key(now_ms.saturating_add(1), "", ""),
            )
            .take(limit)
        {
            let (k, _) = kv?;
            if let Some((due, partner, order_id)) = codec::parse_fulfil_key(&k) {
                out.push((due, PartnerName::from(partner), OrderId::from(order_id)));
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Events for SledStore {
    async fn event(&self, source: &str, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
        read_event(&self.shared, source, event_id)
    }

    /// What dispatch did with an event; None before it was dispatched (or
    /// when it is not for the state machine).
    async fn outcome(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<OutcomeRecord>, StoreError> {
        let tree = &self.shared.tree;
        let Some(ident) = tree
            .get(codec::event_key(source, event_id))?
            .and_then(|v| codec::event_ident(&v))
        else {
            return Ok(None);
        };
        let Some(entry) = read_entry(tree, ident.seq)? else {
            return Ok(None);
        };
        if entry.needs_fields() {
            let (_, arrival) = arrival_of(&self.shared.segments, ident.seq, &entry)?;
            return Ok(arrival.outcome);
        }
        Ok(entry.outcome(None).flatten())
    }

    async fn search(
        &self,
        filter: &EventFilter,
        limit: usize,
        max_scan: usize,
    ) -> Result<Search, StoreError> {
        let shared = self.shared.clone();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || search(&shared, &filter, limit, max_scan))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl Upkeep for SledStore {
    /// Stops the state machine and the writer after the requests already
    /// queued, waits for their flush, and flushes once more.
    fn close(&self) -> Result<(), StoreError> {
        self.shared
            .state_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
        self.shared.sync()
    }

    /// Forgets up to `limit` events whose retention ended before `now_ms`;
    /// returns how many. Cost is proportional to what expires: the retention
    /// index is ordered by expiry, so the scan stops at the first live entry.
    async fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        // The same reads the writer is about to do, done first here: they
        // bring the expired records into the cache, so the writer's pass
        // holds up intake only for the writes. What they fail on, the
        // writer's pass fails on again and reports.
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            crate::store::unreported(|| {
                let cursor = read_cursor(&shared.tree)?;
                writer::plan_sweep(&shared.tree, &shared.segments, now_ms, limit, cursor).map(drop)
            })
        })
        .await
        .map_err(|_| StoreError::Unavailable("sweep planning stopped".into()))?
        .ok();
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Msg::Sweep {
                now_ms,
                limit,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    /// Forgets up to `limit` stored idempotent answers whose retention ended
    /// before `now_ms`; returns how many.
    async fn sweep_idempotency(&self, now_ms: u64, limit: usize) -> Result<usize, StateError> {
        self.write(move |machine| machine.sweep_idempotency(now_ms, limit))
            .await
    }

    fn is_ready(&self) -> bool {
        self.shared.is_healthy()
            && !self.shared.space.is_low()
            && self.shared.dispatcher_running.load(Ordering::Relaxed)
            && self
                .tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    /// Wakes the writer and the state machine so that they beat (and the
    /// writer checks the free space) while idle. Never waits.
    fn ping(&self) {
        if let Ok(tx) = self.sender() {
            let _ = tx.try_send(Msg::Ping);
        }
        self.shared.tell(StateMsg::Wake);
    }

    async fn inbox_pending(&self) -> Result<i64, StoreError> {
        Ok(self.shared.inbox_pending.load(Ordering::Relaxed))
    }

    /// Events parked now (`waybill_parked_events`): parked by dispatch and
    /// neither unparked, redelivered nor forgotten by retention since.
    async fn parked(&self) -> Result<u64, StoreError> {
        Ok(self.shared.held().parked)
    }

    /// Events dead now (`waybill_dead_events`), kept the way the parked
    /// count is.
    async fn dead(&self) -> Result<u64, StoreError> {
        Ok(self.shared.held().dead)
    }

    /// When the oldest event the state machine has not passed yet arrived;
    /// None when the inbox is empty.
    async fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        if self.shared.inbox_pending.load(Ordering::Relaxed) <= 0 {
            return Ok(None);
        }
        let tree = &self.shared.tree;
        let cursor = read_cursor(tree)?;
        let first = tree
            .range(codec::seq_key(b'n', cursor + 1)..codec::seq_key(b'n', u64::MAX))
            .next()
            .transpose()?;
        let Some((k, v)) = first else {
            return Ok(None);
        };
        Ok(arrival_at(&self.shared.segments, &k, &v)?.map(|(_, a)| a.received_at_ms))
    }

    /// Bytes the store takes on disk: sled's files and the payload
    /// segments.
    fn size_bytes(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0) + self.shared.segments.size_bytes()
    }

    /// Free space on the store's file system, for `waybill_store_free_bytes`
    /// (the disk-filling alert); None when it cannot be read.
    fn free_bytes(&self) -> Option<u64> {
        self.shared.space.free()
    }
}

/// Events matching every given criterion, newest first. An index picks
/// the candidates (the exact id, the tracking number, the order id, or
/// arrival order); the rest of the criteria filter them. At most
/// `max_scan` candidates are read, so a search that matches little on a
/// large store is bounded; `Search::complete` says whether it got to
/// the end. Reads block.
fn search(
    shared: &Shared,
    filter: &EventFilter,
    limit: usize,
    max_scan: usize,
) -> Result<Search, StoreError> {
    let tree = &shared.tree;
    type Seqs<'t> = Box<dyn Iterator<Item = Result<Option<u64>, StoreError>> + 't>;
    let before = filter.before_seq.unwrap_or(u64::MAX);
    // Search entries are keys only: the sequence number in them leads to
    // the arrival entry, and that to the segment record naming the event.
    let under = |tag: u8, text: &str| -> Seqs<'_> {
        Box::new(
            tree.range(codec::text_prefix(tag, text)..codec::text_seq_key(tag, text, before))
                .rev()
                .map(|kv| Ok(codec::seq_suffix(&kv?.0))),
        )
    };
    let candidates: Seqs<'_> = match (
        &filter.source,
        &filter.event_id,
        &filter.tracking_number,
        &filter.order_id,
    ) {
        (Some(source), Some(id), _, _) => {
            let seq = match tree.get(codec::event_key(source, id))? {
                None => None,
                Some(v) => Some(
                    codec::decode_event(&v)
                        .ok_or_else(|| {
                            StoreError::corrupt(format!("the event record of {source}/{id}"))
                        })?
                        .0
                        .seq,
                ),
            };
            Box::new(seq.map(|seq| Ok(Some(seq))).into_iter())
        }
        (_, _, Some(tn), _) => under(b'T', tn),
        (_, _, _, Some(order)) => under(b'O', order),
        _ => Box::new(
            tree.range(codec::seq_key(b'n', 0)..codec::seq_key(b'n', before))
                .rev()
                .map(|kv| Ok(codec::parse_seq_key(b'n', &kv?.0))),
        ),
    };
    let mut out = Vec::new();
    let mut complete = true;
    let mut next_before = None;
    for (scanned, seq) in candidates.enumerate() {
        if out.len() >= limit {
            break;
        }
        if scanned >= max_scan {
            complete = false;
            break;
        }
        let Some(seq) = seq? else {
            continue;
        };
        next_before = Some(seq);
        let Some((ev, outcome)) = indexed_event(shared, seq)? else {
            continue;
        };
        if seq >= before {
            continue;
        }
        let at = ev.meta.received_at_ms;
        if filter
            .since_ms
            .is_some_and(|since| at.saturating_add(SINCE_SLACK_MS) < since)
        {
            // Everything further is older still.
            next_before = None;
            break;
        }
        let matches = filter.source.as_ref().is_none_or(|s| *s == ev.source)
            && filter.event_id.as_ref().is_none_or(|e| *e == ev.event_id)
            && filter
                .tracking_number
                .as_ref()
                .is_none_or(|t| ev.meta.tracking_number.as_ref() == Some(t))
            && filter
                .order_id
                .as_ref()
                .is_none_or(|o| ev.meta.order_id.as_ref() == Some(o))
            && filter
                .event_type
                .as_ref()
                .is_none_or(|t| ev.meta.event_type.as_ref() == Some(t))
            && filter.since_ms.is_none_or(|since| at >= since)
            && filter.until_ms.is_none_or(|until| at <= until)
            && filter
                .outcome
                .as_ref()
                .is_none_or(|o| ev.outcome_name(outcome.as_ref()) == o);
        if matches {
            out.push((ev, outcome));
        }
    }
    // A page cut short by its limit or the scan bound goes on from the
    // last entry read; one that ran out of entries is the last.
    if complete && out.len() < limit {
        next_before = None;
    }
    // A single named event has no next page.
    if filter.source.is_some() && filter.event_id.is_some() {
        next_before = None;
    }
    Ok(Search {
        events: out,
        complete,
        next_before,
    })
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// An event, from its identity record and its segment record: what a
/// search shows, its headers and its body.
fn read_event(
    shared: &Shared,
    source: &str,
    event_id: &str,
) -> Result<Option<StoredEvent>, StoreError> {
    let Some(v) = shared.tree.get(codec::event_key(source, event_id))? else {
        return Ok(None);
    };
    let (ident, pointer) = codec::decode_event(&v)
        .ok_or_else(|| StoreError::corrupt(format!("the event record of {source}/{event_id}")))?;
    let (meta, body) = with_record(&shared.segments, ident.seq, &pointer, |_, packed| {
        codec::unpack_payload(packed)
    })?;
    Ok(Some(StoredEvent {
        source: source.to_string(),
        event_id: event_id.to_string(),
        seq: ident.seq,
        meta,
        body,
    }))
}

/// sled's flush interval in whole milliseconds (`store.index_flush`).
/// Nothing waits for that flush: an event is acknowledged once its
/// segment is synced, and what sled had not flushed is replayed from the
/// segments on open.
fn flush_ms(every: std::time::Duration) -> u64 {
    u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How long an open waits for sled's file lock to be let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens sled's database, waiting up to `LOCK_WAIT` for its file lock.
///
/// sled lets go of the lock when the last handle on its log file closes,
/// and its background writes hold handles of their own: a database dropped
/// in this process, or a process that is still exiting, holds it a moment
/// longer (sled's own tests block on the lock for this reason). Nothing
/// tells when it is free, so the open is retried; a lock still held after
/// the wait is another live process on the same directory, and an error.
pub fn open_db(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// Segment `id`'s entry as stored; one that cannot be read is reported
/// and stands for a segment to keep.
fn segment_info(id: u64, v: &[u8]) -> codec::SegmentInfo {
    codec::SegmentInfo::decode(v).unwrap_or_else(|| {
        let _ = StoreError::corrupt(format!("the retention entry of segment {id}"));
        codec::SegmentInfo::KEEP
    })
}

/// Rebuilds the index of the events whose segment records outlived a
/// crash that took sled's unflushed writes: every record past the last
/// sequence number sled holds. Each segment's info says how far into it
/// the index goes (`end`), so only the records beyond are read, one at a
/// time. They are synced before the checkpoint that follows says they are
/// durable.
///
/// A group writes its segment's info just before `SEQ_KEY`
/// (`Shared::write_group`): a crash between the two leaves an info whose
/// `last_seq` is ahead, and the whole group indexed before it.
fn replay_log(tree: &sled::Tree, segments: &segments::Segments) -> Result<(), StoreError> {
    let seg_err = |e: std::io::Error| StoreError::Unavailable(format!("segments: {e}"));
    let stored = read_u64(tree, codec::SEQ_KEY)?;
    // Every segment's entry, read once. One that cannot be read is
    // replayed from the start, which rewrites only what is missing, and
    // keeps its segment (`SegmentInfo::KEEP`).
    let mut infos: HashMap<u64, codec::SegmentInfo> = HashMap::new();
    for kv in tree.scan_prefix(b"g") {
        let (k, v) = kv?;
        if let Some(id) = codec::parse_seq_key(b'g', &k) {
            infos.insert(id, segment_info(id, &v));
        }
    }
    let indexed = infos.values().map(|i| i.last_seq).fold(stored, u64::max);
    let mut batch = sled::Batch::default();
    // Records this replay wrote, not yet in the tree.
    let mut replayed: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut touched = Vec::new();
    let mut last = indexed;
    for id in segments.ids().map_err(seg_err)? {
        let mut info = infos.remove(&id).unwrap_or_default();
        if segments.len(id).map_err(seg_err)? <= info.end {
            continue;
        }
        let before = last;
        segments.each_record(id, info.end, |pointer, body| {
            let Some((logged, arrival)) = codec::decode_logged(body)
                .and_then(|(l, _)| codec::Arrival::decode(l.arrival).map(|a| (l, a)))
            else {
                tracing::error!(
                    segment = id,
                    offset = pointer.offset,
                    "unreadable segment record skipped"
                );
                return Ok(());
            };
            let seq = logged.ident.seq;
            if seq <= last {
                return Ok(());
            }
            let key = codec::event_key(&arrival.source, &arrival.event_id);
            let current = match replayed.get(&key) {
                Some(v) => Some(v.clone()),
                None => tree.get(&key)?.map(|v| v.to_vec()),
            };
            let current_seq = current
                .as_deref()
                .and_then(codec::event_ident)
                .map(|i| i.seq);
            if current_seq.is_none_or(|at| at <= seq) {
                // An older copy's entries go as they would have with the
                // group (`writer::replaced_entries`).
                if let Some(old) = current.filter(|_| current_seq != Some(seq)) {
                    for entry in writer::replaced_entries(segments, &old) {
                        batch.remove(entry);
                    }
                }
                let record = codec::encode_event(&logged.ident, &pointer);
                batch.insert(key.clone(), record.clone());
                replayed.insert(key, record);
            }
            batch.insert(
                codec::seq_key(b'n', seq).to_vec(),
                arrival.entry(pointer).encode(),
            );
            if let Some(meta) =
                codec::decode_index_meta(logged.index_meta, logged.ident.received_at_ms)
            {
                for entry in writer::search_entries(seq, &meta) {
                    batch.insert(entry, Vec::new());
                }
            }
            batch.insert(
                codec::expiry_key(logged.ident.expires_at_ms, seq).to_vec(),
                codec::encode_seqs(&[seq]),
            );
            info.max_expires_at_ms = info.max_expires_at_ms.max(logged.ident.expires_at_ms);
            info.last_seq = info.last_seq.max(seq);
            info.end = pointer.end();
            last = seq;
            Ok(())
        })?;
        if last != before {
            touched.push((id, info));
        }
    }
    if touched.is_empty() {
        if indexed > stored {
            tree.insert(codec::SEQ_KEY, indexed.to_be_bytes().to_vec())?;
        }
        return Ok(());
    }
    for (id, info) in &touched {
        segments.sync(*id).map_err(seg_err)?;
        batch.insert(codec::segment_key(*id).to_vec(), info.encode());
    }
    batch.insert(codec::SEQ_KEY, last.to_be_bytes().to_vec());
    batch.insert(codec::DURABLE_KEY, last.to_be_bytes().to_vec());
    tracing::warn!(
        from = indexed + 1,
        to = last,
        "rebuilt the index of events the segments held and sled had not flushed"
    );
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(())
}

/// Forgets the events written after the last flush checkpoint whose
/// payload did not reach its segment (a crash cut the segment's tail):
/// they were never acknowledged, and an index entry must never point at
/// nothing.
fn drop_dangling(tree: &sled::Tree, segments: &segments::Segments) -> Result<(), StoreError> {
    let checkpoint = read_u64(tree, codec::DURABLE_KEY)?;
    let mut batch = sled::Batch::default();
    let mut held = codec::Held::default();
    // The arrivals whose record is gone; with it went their names.
    let mut gone = HashMap::new();
    for kv in tree.range(codec::seq_key(b'n', checkpoint + 1)..codec::seq_key(b'n', u64::MAX)) {
        let (k, v) = kv?;
        let Some(seq) = codec::parse_seq_key(b'n', &k) else {
            continue;
        };
        let entry = decode_entry(seq, &v)?;
        if !segments.contains(&entry.pointer) {
            held.add(entry.held());
            batch.remove(k);
            gone.insert(seq, entry.pointer);
        }
    }
    if !gone.is_empty() {
        // Only a crash that cut a segment's tail gets here: the identities
        // pointing into the cut are found by reading every identity once,
        // their search entries by the sequence number in their keys. Their
        // retention entries stay: the sweep skips what is gone.
        for kv in tree.scan_prefix(b"e") {
            let (k, v) = kv?;
            let Some((ident, pointer)) = codec::decode_event(&v) else {
                continue;
            };
            if gone.get(&ident.seq) == Some(&pointer) {
                batch.remove(k);
            }
        }
        for kv in tree.scan_prefix(b"T").chain(tree.scan_prefix(b"O")) {
            let (k, _) = kv?;
            if codec::seq_suffix(&k).is_some_and(|seq| gone.contains_key(&seq)) {
                batch.remove(k);
            }
        }
    }
    let dropped = gone.len();
    if !held.is_empty() {
        let mut swept = HeldKeys::Swept.read(tree)?;
        swept.add(held);
        HeldKeys::Swept.write(&mut batch, swept);
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "forgot events whose payloads a crash cut before they were acknowledged"
        );
        tree.apply_batch(batch)?;
        tree.flush()?;
    }
    Ok(())
}

/// The version of the store's layout, kept under `F`: 2 put payloads in
/// segments, 3 made index records binary, search entries keys alone and
/// retention entries one per group, 4 made arrivals binary, 5 left in
/// sled only an entry of each arrival (`codec::ArrivalEntry`), 6 only the
/// identity and the pointer in each identity record, 7 let an entry keep a
/// parked outcome's wait instead of its reason when the event's key gives
/// the reason back, and made identity records compact. A store of layout
/// 4, 5 or 6 is brought to 7 on open (`entries_from_arrivals`,
/// `compact_identities`); one of any other layout is refused, not
/// misread.
const FORMAT: u64 = 7;

/// Brings a store of layout 5 or 6 to layout 7: each identity record
/// becomes the compact one (`codec::encode_event`), losing the index
/// metadata after its pointer that layout 5 kept and the segment record
/// holds. Entries keep the reasons they have, which this layout reads as
/// they are. Idempotent, so an open cut short goes on where it stopped: an
/// identity record of this layout never reads as an older one.
fn compact_identities(tree: &sled::Tree, from: u64) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let (mut in_batch, mut compacted) = (0, 0u64);
    for kv in tree.scan_prefix(b"e") {
        let (k, v) = kv?;
        if codec::decode_event(&v).is_some() {
            continue;
        }
        let (ident, pointer) =
            codec::older_event(&v).ok_or_else(|| StoreError::corrupt(codec::describe_key(&k)))?;
        batch.insert(k, codec::encode_event(&ident, &pointer));
        compacted += 1;
        apply_when_full(tree, &mut batch, &mut in_batch)?;
    }
    tree.apply_batch(batch)?;
    tree.insert(codec::FORMAT_KEY, FORMAT.to_be_bytes().to_vec())?;
    tree.flush()?;
    tracing::warn!(
        compacted,
        "brought the store from layout {from} to layout {FORMAT}: identity records are compact"
    );
    Ok(())
}

/// Records rewritten per batch while an older store is brought to this
/// layout.
const MIGRATE_BATCH: usize = 10_000;

/// Counts one more change in `batch`, and applies it once it holds
/// `MIGRATE_BATCH`.
fn apply_when_full(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    in_batch: &mut usize,
) -> Result<(), StoreError> {
    *in_batch += 1;
    if *in_batch == MIGRATE_BATCH {
        tree.apply_batch(std::mem::take(batch))?;
        *in_batch = 0;
    }
    Ok(())
}

/// Brings a store of layout 4 to layout 5, then 7 (`compact_identities`):
/// each whole arrival under `n` becomes an entry pointing at its event's
/// segment record, which its identity record names. An arrival whose
/// identity now names another copy (the event expired and came again;
/// retention had not yet taken the old arrival) is forgotten, and
/// counted, as the sweep would have. Batches are atomic and the layout is
/// written last, so an open cut short goes on where it stopped: no entry
/// decodes as a whole arrival.
fn entries_from_arrivals(tree: &sled::Tree) -> Result<(), StoreError> {
    let mut swept = HeldKeys::Swept.read(tree)?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let (mut rewritten, mut forgotten) = (0u64, 0u64);
    for kv in tree.scan_prefix(b"n") {
        let (k, v) = kv?;
        if codec::ArrivalEntry::decode(&v).is_some() {
            continue;
        }
        let what = || format!("the arrival {}", String::from_utf8_lossy(&k));
        let seq = codec::parse_seq_key(b'n', &k).ok_or_else(|| StoreError::corrupt(what()))?;
        let arrival = codec::Arrival::decode(&v).ok_or_else(|| StoreError::corrupt(what()))?;
        let key = codec::event_key(&arrival.source, &arrival.event_id);
        let current = match tree.get(&key)? {
            None => None,
            Some(record) => Some(
                codec::decode_event(&record)
                    .or_else(|| codec::older_event(&record))
                    .map(|(ident, p)| (ident.seq, p))
                    .ok_or_else(|| StoreError::corrupt(codec::describe_key(&key)))?,
            ),
        };
        match current {
            Some((at, pointer)) if at == seq => {
                batch.insert(k, arrival.entry(pointer).encode());
                rewritten += 1;
            }
            _ => {
                swept.add(codec::Held::of(&arrival));
                HeldKeys::Swept.write(&mut batch, swept);
                batch.remove(k);
                forgotten += 1;
            }
        }
        apply_when_full(tree, &mut batch, &mut in_batch)?;
    }
    tree.apply_batch(batch)?;
    tree.insert(codec::FORMAT_KEY, 5u64.to_be_bytes().to_vec())?;
    tree.flush()?;
    tracing::warn!(
        rewritten,
        forgotten,
        "brought the store from layout 4 to layout 5: arrivals are entries now"
    );
    compact_identities(tree, 5)
}

/// Counts the dead events of a store written before their count was
/// kept, once: it has no `DEAD_KEY`. The count starts there and is kept
/// from then on like the parked one.
fn count_dead_once(tree: &sled::Tree, cursor: u64) -> Result<(), StoreError> {
    if tree.get(codec::DEAD_KEY)?.is_some() {
        return Ok(());
    }
    let mut dead = 0u64;
    for kv in tree.range(codec::seq_key(b'n', 0)..=codec::seq_key(b'n', cursor)) {
        let (_, v) = kv?;
        if let Some(a) = codec::ArrivalEntry::decode(&v) {
            dead += a.held().dead;
        }
    }
    let mut batch = sled::Batch::default();
    batch.insert(codec::DEAD_KEY, dead.to_be_bytes().to_vec());
    batch.insert(codec::DEAD_SWEPT_KEY, 0u64.to_be_bytes().to_vec());
    tree.apply_batch(batch)?;
    Ok(())
}

fn check_format(tree: &sled::Tree) -> Result<(), StoreError> {
    match tree
        .get(codec::FORMAT_KEY)?
        .and_then(|v| codec::decode_u64(&v))
    {
        Some(FORMAT) => Ok(()),
        Some(4) => entries_from_arrivals(tree),
        Some(from @ (5 | 6)) => compact_identities(tree, from),
        Some(other) => Err(StoreError::Unavailable(format!(
            "the store has layout {other}; this build reads layout {FORMAT}"
        ))),
        None if tree.is_empty() => {
            tree.insert(codec::FORMAT_KEY, FORMAT.to_be_bytes().to_vec())?;
            Ok(())
        }
        None => Err(StoreError::Unavailable(format!(
            "the store was written by an earlier layout; this build reads layout {FORMAT}"
        ))),
    }
}

/// The arrival under `seq`, from its entry and its segment record, with
/// the record's pointer; one that is there and cannot be read is an
/// error, never taken for absent.
fn read_arrival(
    tree: &sled::Tree,
    segments: &segments::Segments,
    seq: u64,
) -> Result<Option<(segments::Pointer, codec::Arrival)>, StoreError> {
    match tree.get(codec::seq_key(b'n', seq))? {
        None => Ok(None),
        Some(v) => arrival_of(segments, seq, &decode_entry(seq, &v)?).map(Some),
    }
}

/// The entry under `seq` alone: what dispatch did, without the segment
/// record.
fn read_entry(tree: &sled::Tree, seq: u64) -> Result<Option<codec::ArrivalEntry>, StoreError> {
    tree.get(codec::seq_key(b'n', seq))?
        .map(|v| decode_entry(seq, &v))
        .transpose()
}

/// The entry stored under `n` seq.
fn decode_entry(seq: u64, v: &[u8]) -> Result<codec::ArrivalEntry, StoreError> {
    codec::ArrivalEntry::decode(v)
        .ok_or_else(|| StoreError::corrupt(format!("the arrival of event {seq}")))
}

/// The whole arrival an entry stands for: the names, time and fields its
/// segment record holds, the outcome the entry holds. A record that
/// fails its checksum, or holds another event, is unreadable; a read
/// that fails is the store's.
fn arrival_of(
    segments: &segments::Segments,
    seq: u64,
    entry: &codec::ArrivalEntry,
) -> Result<(segments::Pointer, codec::Arrival), StoreError> {
    let arrival = with_record(segments, seq, &entry.pointer, |logged, _| {
        whole_arrival(logged, entry)
    })?;
    Ok((entry.pointer, arrival))
}

/// `arrival_of` and the event's body, from one read of its record.
fn arrival_with_body(
    segments: &segments::Segments,
    seq: u64,
    entry: &codec::ArrivalEntry,
) -> Result<(segments::Pointer, codec::Arrival, Vec<u8>), StoreError> {
    let (arrival, body) = with_record(segments, seq, &entry.pointer, |logged, packed| {
        Some((
            whole_arrival(logged, entry)?,
            codec::unpack_payload(packed)?.1,
        ))
    })?;
    Ok((entry.pointer, arrival, body))
}

/// The arrival a segment record holds, with the outcome its entry keeps;
/// None when the two do not belong together.
fn whole_arrival(
    logged: &codec::Logged<'_>,
    entry: &codec::ArrivalEntry,
) -> Option<codec::Arrival> {
    let mut a = codec::Arrival::decode(logged.arrival)
        .filter(|a| a.dispatch == entry.dispatch && a.outcome.is_none())?;
    a.outcome = entry.outcome(a.fields.as_ref())?;
    Some(a)
}

/// The sequence number of the copy that `source`/`event_id`'s identity
/// record names; None when there is none.
fn identity_seq(
    tree: &sled::Tree,
    source: &str,
    event_id: &str,
) -> Result<Option<u64>, StoreError> {
    tree.get(codec::event_key(source, event_id))?
        .map(|v| {
            codec::event_ident(&v)
                .map(|ident| ident.seq)
                .ok_or_else(|| {
                    StoreError::corrupt(format!("the event record of {source}/{event_id}"))
                })
        })
        .transpose()
}

/// Event `seq` as a search shows it (no headers or body), with its
/// outcome: its arrival entry, one read of its segment record, and its
/// identity record, which must still name it. None when it is gone, or
/// when a later copy of its identity replaced it (that copy has its own
/// entry).
fn indexed_event(
    shared: &Shared,
    seq: u64,
) -> Result<Option<(StoredEvent, Option<OutcomeRecord>)>, StoreError> {
    let Some(entry) = read_entry(&shared.tree, seq)? else {
        return Ok(None);
    };
    let (names, meta) = record_index(&shared.segments, seq, &entry.pointer)?;
    let outcome = entry
        .outcome(names.fields.as_ref())
        .ok_or_else(|| StoreError::corrupt(format!("the segment record of event {seq}")))?;
    let (source, event_id) = (names.source, names.event_id);
    let current = identity_seq(&shared.tree, &source, &event_id)? == Some(seq);
    Ok(current.then(|| {
        (
            StoredEvent {
                source,
                event_id,
                seq,
                meta,
                body: Vec::new(),
            },
            outcome,
        )
    }))
}

/// The arrival (names, time, fields; no outcome) and the searchable
/// metadata that event `seq`'s segment record holds.
fn record_index(
    segments: &segments::Segments,
    seq: u64,
    pointer: &segments::Pointer,
) -> Result<(codec::Arrival, codec::EventMeta), StoreError> {
    with_record(segments, seq, pointer, |logged, _| {
        Some((
            codec::Arrival::decode(logged.arrival)?,
            codec::decode_index_meta(logged.index_meta, logged.ident.received_at_ms)?,
        ))
    })
}

/// The arrival stored under `n` key `k` with value `v`, whole, with its
/// sequence number; None for a key that is not an arrival's.
fn arrival_at(
    segments: &segments::Segments,
    k: &[u8],
    v: &[u8],
) -> Result<Option<(u64, codec::Arrival)>, StoreError> {
    let Some(seq) = codec::parse_seq_key(b'n', k) else {
        return Ok(None);
    };
    let (_, arrival) = arrival_of(segments, seq, &decode_entry(seq, v)?)?;
    Ok(Some((seq, arrival)))
}

/// What `read` takes from event `seq`'s segment record at `pointer`. A
/// record that fails its checksum, holds another event, or that `read`
/// cannot read, is unreadable; a read that fails is the store's.
fn with_record<T>(
    segments: &segments::Segments,
    seq: u64,
    pointer: &segments::Pointer,
    read: impl FnOnce(&codec::Logged<'_>, &[u8]) -> Option<T>,
) -> Result<T, StoreError> {
    let unreadable = || StoreError::corrupt(format!("the segment record of event {seq}"));
    let record = segments.read(pointer).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => unreadable(),
        _ => StoreError::Unavailable(format!("the segment record of event {seq}: {e}")),
    })?;
    codec::decode_logged(&record)
        .filter(|(logged, _)| logged.ident.seq == seq)
        .and_then(|(logged, packed)| read(&logged, packed))
        .ok_or_else(unreadable)
}

fn read_cursor(tree: &sled::Tree) -> Result<u64, StoreError> {
    read_u64(tree, codec::CURSOR_KEY)
}

/// One of the store's own numbers: 0 until first written, and an
/// unreadable record, never 0, when its bytes are not a number.
#[track_caller]
fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match tree.get(key)? {
        None => Ok(0),
        Some(v) => codec::decode_u64(&v).ok_or_else(|| {
            StoreError::corrupt(format!("the record {}", String::from_utf8_lossy(key)))
        }),
    }
}

fn read_order(
    tree: &sled::Tree,
    partner: &str,
    order_id: &str,
) -> Result<Option<OrderRecord>, StoreError> {
    match tree.get(codec::order_key(partner, order_id))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::corrupt(format!("the order {partner}/{order_id} ({e})"))),
    }
}

fn read_shipment(
    tree: &sled::Tree,
    shipment_id: &str,
) -> Result<Option<ShipmentRecord>, StoreError> {
    match tree.get(codec::shipment_key(shipment_id))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::corrupt(format!("the shipment {shipment_id} ({e})"))),
    }
}

/// A small embedded store at `path` for the crate's own tests: a
/// minute's retention, an 8 MiB cache, 1 MiB segments, no free-space floor.
#[cfg(test)]
pub(crate) fn test_config(path: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: path.to_path_buf(),
        dedupe_retention: std::time::Duration::from_secs(60),
        idempotency_retention: std::time::Duration::from_secs(60),
        in_progress_timeout: std::time::Duration::from_secs(30),
        cache_bytes: 8 << 20,
        min_free_bytes: 0,
        segment_bytes: 1 << 20,
        index_flush: crate::config::DEFAULT_INDEX_FLUSH,
        backend: crate::config::StoreBackend::Sled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::path::Path;

    use crate::domain::label::{Label, LabelFormat, LabelRequest};
    use crate::domain::request::{NewOrder, ShipmentDetails};

    fn shipment_details() -> ShipmentDetails {
        ShipmentDetails::example("ups")
    }

    /// Shipment `s1` of partner `p`, for order `order_id`.
    fn example_shipment(order_id: &str) -> ShipmentRecord {
        ShipmentRecord::new(
            "s1".into(),
            "p".into(),
            order_id.into(),
            shipment_details(),
            1,
        )
    }

    fn label(label_id: &str, shipment_id: &str, tracking_number: &str) -> Label {
        Label::new(
            label_id,
            &shipment_id.into(),
            tracking_number,
            String::new(),
        )
    }

    fn cfg(path: &Path) -> StoreConfig {
        super::test_config(path)
    }

    /// A directory holding a store that took `events` and was closed.
    async fn closed_after(events: Vec<NewEvent>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        for e in events {
            store.ingest(e).await.unwrap();
        }
        store.close().unwrap();
        dir
    }

    fn event(id: &str, at: u64, hash: u8, dispatch: bool) -> NewEvent {
        NewEvent {
            source: "s".into(),
            event_id: id.into(),
            received_at_ms: at,
            expires_at_ms: at + 1000,
            content_hash: [hash; 32],
            dispatch,
            event_type: None,
            headers: vec![],
            tracking_number: None,
            order_id: None,
            fields: None,
            body: Bytes::from_static(b"{}"),
        }
    }

    /// A "transit" update from source `carrier` for tracking number `tn`.
    fn tracking_event(id: &str, at: u64, hash: u8, tn: &str) -> NewEvent {
        let mut ev = event(id, at, hash, true);
        ev.source = "carrier".into();
        ev.tracking_number = Some(tn.into());
        ev.fields = Some(crate::webhook::mapping::Fields {
            key: tn.into(),
            status: "transit".into(),
            occurred_at: None,
        });
        ev
    }

    #[tokio::test]
    async fn accepts_once_then_reports_duplicates_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        assert_eq!(
            store.ingest(event("a", 10, 1, true)).await.unwrap(),
            IngestResult::Accepted { received_at_ms: 10 }
        );
        assert_eq!(
            store.ingest(event("a", 20, 1, true)).await.unwrap(),
            IngestResult::Duplicate {
                first_received_at_ms: 10,
                conflict: false
            }
        );
        assert_eq!(
            store.ingest(event("a", 30, 2, true)).await.unwrap(),
            IngestResult::Duplicate {
                first_received_at_ms: 10,
                conflict: true
            }
        );
        assert_eq!(store.inbox().unwrap().len(), 1);
        assert_eq!(store.inbox_pending().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn concurrent_copies_yield_one_acceptance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&cfg(dir.path())).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.ingest(event("same", 100 + i, 1, true)).await.unwrap()
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), IngestResult::Accepted { .. }) {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 1);
        assert_eq!(store.inbox().unwrap().len(), 1);
    }

    /// Replies come from the flusher only after the flush that covers them:
    /// every acknowledged event's sequence is already durable when its
    /// caller hears back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledgements_follow_the_flush_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&cfg(dir.path())).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("e{i}");
                store.ingest(event(&id, 10, 1, i % 2 == 0)).await.unwrap();
                let durable = store.durable_seq();
                let seq = store.event("s", &id).await.unwrap().unwrap().seq;
                assert!(
                    seq <= durable,
                    "{id} acknowledged at seq {seq} with only {durable} flushed"
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(store.integrity_problems().unwrap().is_empty());
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = closed_after(vec![event("a", 10, 1, true), event("b", 11, 1, false)]).await;
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        assert_eq!(store.inbox_pending().await.unwrap(), 1);
        assert!(matches!(
            store.ingest(event("b", 50, 1, false)).await.unwrap(),
            IngestResult::Duplicate {
                first_received_at_ms: 11,
                ..
            }
        ));
        // Sequence numbers continue rather than restart.
        store.ingest(event("c", 60, 1, true)).await.unwrap();
        let seqs: Vec<u64> = store.inbox().unwrap().iter().map(|e| e.0).collect();
        assert_eq!(seqs, [1, 3]);
    }

    #[tokio::test]
    async fn sweep_forgets_only_what_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store.ingest(event("old", 0, 1, false)).await.unwrap(); // expires at 1000
        store.ingest(event("new", 5000, 1, false)).await.unwrap(); // expires at 6000
        assert_eq!(store.sweep_expired(999, 100).await.unwrap(), 0);
        assert_eq!(store.sweep_expired(1001, 100).await.unwrap(), 1);
        assert!(!store.knows("s", "old").unwrap());
        assert!(store.event("s", "old").await.unwrap().is_none());
        assert!(store.knows("s", "new").unwrap());
        // Once forgotten, the same id is a new event again.
        assert!(matches!(
            store.ingest(event("old", 7000, 1, false)).await.unwrap(),
            IngestResult::Accepted { .. }
        ));
    }

    #[tokio::test]
    async fn an_expired_identity_reused_before_the_sweep_survives_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store.ingest(event("x", 0, 1, false)).await.unwrap(); // expires at 1000
        // Past its retention but not yet swept: accepted as new.
        assert!(matches!(
            store.ingest(event("x", 2000, 2, false)).await.unwrap(),
            IngestResult::Accepted {
                received_at_ms: 2000
            }
        ));
        assert_eq!(store.sweep_expired(1500, 100).await.unwrap(), 1);
        assert!(store.knows("s", "x").unwrap());
        assert_eq!(
            store
                .event("s", "x")
                .await
                .unwrap()
                .unwrap()
                .meta
                .received_at_ms,
            2000
        );
        // The first copy's arrival went with it: one event, listed once.
        let all = store
            .search(&EventFilter::default(), 10, 100)
            .await
            .unwrap();
        assert_eq!(all.events.len(), 1);
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_expired_event_still_in_the_inbox_is_kept_until_dispatched() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store.ingest(event("waiting", 0, 1, true)).await.unwrap();
        // No state machine runs here: the event stays in the inbox, and the
        // sweep leaves it whole.
        assert_eq!(store.sweep_expired(5000, 100).await.unwrap(), 0);
        assert!(store.knows("s", "waiting").unwrap());
        assert_eq!(store.inbox().unwrap().len(), 1);
        assert!(store.integrity_problems().unwrap().is_empty());
    }

    /// "Durable before acknowledged" (GUARANTEES.md) for the state machine's
    /// commands: each answers only after a flush that covers its own write (the
    /// round's group commit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_answer_after_the_flush_that_covers_their_write() {
        use crate::domain::order::OrderStatus;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store.start_dispatcher(Vec::new()).unwrap();
        let covered = |store: &SledStore, what: &str| {
            let (applied, synced) = store.writes_applied_and_synced();
            assert!(applied > 0, "{what} wrote nothing");
            assert_eq!(synced, applied, "{what} answered before its flush");
        };
        let fingerprint = crate::idempotency::fingerprint("POST", "/x", None);
        let completion = |key: &str| Completion {
            partner: "p".into(),
            key: key.try_into().unwrap(),
            record: crate::idempotency::Record::Done {
                fingerprint,
                status: 201,
                body: "{}".into(),
                expires_at_ms: u64::MAX / 2,
            },
        };
        let shipment = example_shipment("o1");
        store
            .create_shipment(shipment, Some(completion("k1")))
            .await
            .unwrap();
        covered(&store, "create");
        store
            .record_intent(
                &"s1".into(),
                LabelRequest::new(&"s1".into(), &shipment_details(), LabelFormat::Pdf),
            )
            .await
            .unwrap();
        covered(&store, "intent");
        store
            .record_label(
                NewLabel {
                    label: label("l1", "s1", "TN1"),
                    at_ms: 2,
                },
                Some(completion("k2")),
            )
            .await
            .unwrap();
        covered(&store, "label");
        store.finish(completion("k3")).await.unwrap();
        covered(&store, "finish");
        store.cancel(Cancel::at("s1".into(), 3)).await.unwrap();
        covered(&store, "cancel");
        let order = OrderRecord::new(
            "p".into(),
            "k4".try_into().unwrap(),
            NewOrder::example("o1"),
            1,
        );
        let created = store.create_order(order).await.unwrap();
        covered(&store, "create order");
        let OrderCreated::Created(mut order) = created else {
            panic!("created")
        };
        order.status = OrderStatus::Failure;
        store
            .write_order(OrderWrite {
                order,
                new_shipment: None,
                label: None,
                completion: Some(completion("k4")),
                unschedule: None,
            })
            .await
            .unwrap();
        covered(&store, "order step");
        // A replay of an answer is given after the flush that covers it.
        let decision = store
            .claim(&Claim {
                partner: "p".into(),
                key: "k4".try_into().unwrap(),
                fingerprint,
                lease: std::time::Duration::from_secs(30),
            })
            .await
            .unwrap();
        assert!(matches!(
            decision,
            crate::idempotency::Decision::Replay { .. }
        ));
        covered(&store, "replay");
    }

    /// A store whose segments hold one event of the body given with it,
    /// its state machine running: it moves the inbox cursor past every
    /// arrival, and a segment goes only once the cursor is past it.
    fn one_event_per_segment(dir: &Path) -> (SledStore, Bytes) {
        let mut config = cfg(dir);
        config.segment_bytes = 512;
        let store = SledStore::open(&config).unwrap();
        store.start_dispatcher(Vec::new()).unwrap();
        let body = Bytes::from(format!("{{\"pad\":\"{}\"}}", "y".repeat(2000)));
        (store, body)
    }

    /// A store of `n` events received at 10 (long expired), a segment
    /// each, and the body they share.
    async fn old_events_a_segment_each(dir: &Path, n: usize) -> (SledStore, Bytes) {
        let (store, body) = one_event_per_segment(dir);
        for i in 0..n {
            let mut ev = event(&format!("old-{i}"), 10, 1, false);
            ev.body = body.clone();
            store.ingest(ev).await.unwrap();
        }
        (store, body)
    }

    /// Retention deletes whole payload segments once every event in them
    /// has expired and been swept; live events stay readable.
    #[tokio::test]
    async fn retention_deletes_whole_segments_of_expired_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let (store, body) = old_events_a_segment_each(dir.path(), 40).await;
        let before = store.shared.segments.ids().unwrap();
        assert!(before.len() > 5, "{before:?}");
        for i in 0..3 {
            let mut ev = event(&format!("new-{i}"), 5_000, 2, false);
            ev.body = body.clone();
            store.ingest(ev).await.unwrap();
        }
        store.settle().await.unwrap();
        let size_before = store.size_bytes();
        assert_eq!(store.sweep_expired(4_000, 1000).await.unwrap(), 40);
        let after = store.shared.segments.ids().unwrap();
        assert!(after.len() <= 2, "{after:?}");
        assert!(store.size_bytes() < size_before || after.len() < before.len());
        for i in 0..3 {
            let ev = store
                .event("s", &format!("new-{i}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(ev.body, body.to_vec());
        }
        assert!(store.event("s", "old-0").await.unwrap().is_none());
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    }

    /// An event whose payload a crash cut from its segment, written after
    /// the last flush checkpoint, is forgotten on open: never served, never
    /// a duplicate of itself.
    #[tokio::test]
    async fn an_event_whose_payload_was_cut_is_forgotten_on_open() {
        let dir = closed_after(vec![event("kept", 10, 1, true), event("cut", 20, 1, true)]).await;
        // Cut the last record's bytes, as a crash before its sync could;
        // and move the checkpoint back as if its group were not yet flushed.
        let seg = dir.path().join("segments").join(format!("{:016x}.seg", 1));
        let size = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(size - 2)
            .unwrap();
        {
            let db = open_db(&sled::Config::new().path(dir.path())).unwrap();
            let tree = db.open_tree("state").unwrap();
            tree.insert(codec::DURABLE_KEY, 1u64.to_be_bytes().to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        assert!(store.event("s", "kept").await.unwrap().is_some());
        assert!(!store.knows("s", "cut").unwrap());
        assert_eq!(store.inbox().unwrap().len(), 1);
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
        // The same delivery again is new.
        assert!(matches!(
            store.ingest(event("cut", 30, 1, true)).await.unwrap(),
            IngestResult::Accepted { .. }
        ));
        // The forgotten event's retention entry stayed behind: the sweep
        // passes over what is gone and leaves nothing of it.
        store.start_dispatcher(Vec::new()).unwrap();
        store.settle().await.unwrap();
        while store.sweep_expired(10_000, 100).await.unwrap() > 0 {}
        assert_eq!(store.shared.tree.scan_prefix(b"x").count(), 0);
        assert_eq!(store.shared.tree.scan_prefix(b"n").count(), 0);
        assert!(!store.knows("s", "kept").unwrap());
    }

    /// A retention entry names the events of a whole group commit: the
    /// sweep forgets those that may go, keeps the entry while one of them
    /// waits in the inbox, and removes it once the inbox is past it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_retention_entry_keeps_only_its_waiting_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(&cfg(dir.path())).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .ingest(event(&format!("g{i}"), 0, 1, i % 10 == 0))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let entries = || store.shared.tree.scan_prefix(b"x").count();
        println!("200 events in {} retention entries", entries());
        // Every event is named by exactly one entry.
        let mut named: Vec<u64> = store
            .shared
            .tree
            .scan_prefix(b"x")
            .flat_map(|kv| codec::decode_seqs(&kv.unwrap().1).collect::<Vec<_>>())
            .collect();
        named.sort_unstable();
        assert_eq!(named, (1..=200).collect::<Vec<u64>>());
        while store.sweep_expired(5000, 64).await.unwrap() > 0 {}
        let known = (0..200)
            .filter(|i| store.knows("s", &format!("g{i}")).unwrap())
            .collect::<Vec<_>>();
        assert_eq!(known, (0..200).step_by(10).collect::<Vec<_>>());
        assert!(entries() > 0);
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());

        store.start_dispatcher(Vec::new()).unwrap();
        store.settle().await.unwrap();
        while store.sweep_expired(5000, 64).await.unwrap() > 0 {}
        assert!((0..200).all(|i| !store.knows("s", &format!("g{i}")).unwrap()));
        assert_eq!(entries(), 0);
        assert_eq!(store.shared.tree.scan_prefix(b"n").count(), 0);
    }

    /// Index entries (identity, tracking number, order) that name no
    /// arrival of theirs.
    fn dangling_entries(store: &SledStore) -> Vec<String> {
        let tree = &store.shared.tree;
        let arrival = |seq| {
            read_arrival(tree, &store.shared.segments, seq)
                .unwrap()
                .map(|(_, a)| a)
        };
        let mut dangling = Vec::new();
        for kv in tree.scan_prefix(b"e") {
            let (k, v) = kv.unwrap();
            let seq = codec::event_ident(&v).unwrap().seq;
            let named = arrival(seq).map(|a| codec::event_key(&a.source, &a.event_id));
            if named.as_deref() != Some(&k[..]) {
                dangling.push(codec::describe_key(&k));
            }
        }
        for tag in [b'T', b'O'] {
            for kv in tree.scan_prefix([tag]) {
                let (k, _) = kv.unwrap();
                let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
                if arrival(seq).is_none() {
                    dangling.push(format!("{} entry of {seq}", tag as char));
                }
            }
        }
        dangling
    }

    /// sled keeps a prefix of its writes through a crash, and a group's
    /// keys are written one by one: a crash may cut a group after any of
    /// them. Opened again, the store completes the group from its segment,
    /// numbers the next event past it, dispatches and forgets it like any
    /// other, and leaves no entry behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_cut_after_any_of_its_writes_is_whole_after_open() {
        for cut in 0.. {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(&cfg(dir.path())).unwrap();
            for first in [("reused", 10), ("kept", 2000)] {
                let event = tracking_event(first.0, first.1, 1, "TN1");
                store.ingest(event).await.unwrap();
            }
            // A new copy of an identity whose first copy expired.
            let mut copy = tracking_event("reused", 3000, 2, "TN2");
            copy.order_id = Some("order-1".into());
            store.shared.cut_group_after.store(cut, Ordering::Relaxed);
            let whole = store.ingest(copy).await.is_ok();
            let _ = store.close();
            drop(store);

            let store = SledStore::open(&cfg(dir.path())).unwrap();
            // The expired first copy's arrival goes, as without a crash.
            while store.sweep_expired(2500, 100).await.unwrap() > 0 {}
            assert_eq!(
                store.integrity_problems().unwrap(),
                Vec::<String>::new(),
                "cut {cut}"
            );
            assert_eq!(dangling_entries(&store), Vec::<String>::new(), "cut {cut}");
            let copy = store.event("carrier", "reused").await.unwrap().unwrap();
            assert_eq!(copy.meta.received_at_ms, 3000, "cut {cut}");
            let entry = |tag, text| {
                let at = codec::text_seq_key(tag, text, copy.seq);
                store.shared.tree.get(at).unwrap().is_some()
            };
            assert!(entry(b'T', "TN2") && entry(b'O', "order-1"), "cut {cut}");
            // The next event is numbered past the cut group.
            store
                .ingest(tracking_event("new", 4000, 3, "TN3"))
                .await
                .unwrap();
            assert_eq!(
                store.integrity_problems().unwrap(),
                Vec::<String>::new(),
                "cut {cut}"
            );
            let kept = store.event("carrier", "kept").await.unwrap().unwrap();
            let new = store.event("carrier", "new").await.unwrap().unwrap();
            assert!(kept.seq < copy.seq && copy.seq < new.seq, "cut {cut}");

            store.start_dispatcher(Vec::new()).unwrap();
            store.settle().await.unwrap();
            assert_eq!(store.inbox().unwrap(), Vec::new(), "cut {cut}");
            assert_eq!(
                store.integrity_problems().unwrap(),
                Vec::<String>::new(),
                "cut {cut}"
            );
            while store.sweep_expired(1_000_000, 100).await.unwrap() > 0 {}
            for prefix in [b"e", b"n", b"x", b"T", b"O"] {
                assert_eq!(
                    store.shared.tree.scan_prefix(prefix).count(),
                    0,
                    "cut {cut}"
                );
            }
            if whole {
                // Every cut point before the last write was tried.
                assert!(cut > 0);
                break;
            }
        }
    }

    /// The device refuses the segment's sync (`/dev/null` cannot sync):
    /// the group waiting for it is answered "unavailable", never
    /// "accepted", its events are not given to dispatch, and the store
    /// stops, as after any write it cannot vouch for.
    #[test]
    fn a_failed_segment_sync_fails_its_group_and_stops_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        let durable = store.durable_seq();
        let last_seq = durable + 1;
        let (tx, rx) = std::sync::mpsc::channel();
        let (reply, answer) = oneshot::channel();
        let unsyncable = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        tx.send(ToFlusher::Sync {
            segment: 1,
            file: unsyncable,
            last_seq,
        })
        .unwrap();
        tx.send(ToFlusher::Indexed(Group {
            answers: vec![(reply, Ok(IngestResult::Accepted { received_at_ms: 1 }))],
            last_seq,
            queued: true,
        }))
        .unwrap();
        let shared = store.shared.clone();
        // Both messages are queued before it starts: one round sees them.
        std::thread::spawn(move || writer::flusher(shared, rx))
            .join()
            .unwrap();
        assert!(matches!(
            answer.blocking_recv().unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(store.durable_seq(), durable);
        assert!(!store.shared.is_healthy());
    }

    /// The state machine takes an event only once its group is durable:
    /// forwarded before, it could be forwarded again after a crash took it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatch_waits_until_the_event_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store.start_dispatcher(Vec::new()).unwrap();
        store
            .ingest(tracking_event("a", 10, 1, "TN1"))
            .await
            .unwrap();
        let durable = store.durable_seq();
        // As if the flush covering it had not yet finished.
        store
            .shared
            .durable_seq
            .store(durable - 1, Ordering::Release);
        store.settle().await.unwrap();
        assert_eq!(store.inbox().unwrap().len(), 1);
        store.shared.durable_seq.store(durable, Ordering::Release);
        store.settle().await.unwrap();
        assert_eq!(store.inbox().unwrap(), Vec::new());
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    }

    /// "Operations" (GUARANTEES.md): the age of the oldest event waiting for the state
    /// machine, from the first arrival past the cursor; none once drained.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_oldest_pending_event_is_the_first_past_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        assert_eq!(store.oldest_pending_ms().await.unwrap(), None);
        store.ingest(event("first", 100, 1, true)).await.unwrap();
        store.ingest(event("second", 200, 1, true)).await.unwrap();
        assert_eq!(store.oldest_pending_ms().await.unwrap(), Some(100));
        store.start_dispatcher(Vec::new()).unwrap();
        store.settle().await.unwrap();
        assert_eq!(store.oldest_pending_ms().await.unwrap(), None);
    }

    #[tokio::test]
    async fn sweep_is_bounded_by_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        for i in 0..10 {
            store
                .ingest(event(&format!("e{i}"), i, 1, false))
                .await
                .unwrap();
        }
        assert_eq!(store.sweep_expired(u64::MAX / 2, 4).await.unwrap(), 4);
        assert_eq!(store.sweep_expired(u64::MAX / 2, 100).await.unwrap(), 6);
        assert_eq!(store.sweep_expired(u64::MAX / 2, 100).await.unwrap(), 0);
    }

    async fn moving_shipment(dir: &Path) -> SledStore {
        let store = SledStore::open(&cfg(dir)).unwrap();
        store
            .start_dispatcher(crate::config::test_sources())
            .unwrap();
        store
            .create_shipment(example_shipment("o"), None)
            .await
            .unwrap();
        store
            .record_label(
                NewLabel {
                    label: label("l1", "s1", "TN"),
                    at_ms: 2,
                },
                None,
            )
            .await
            .unwrap();
        store
            .ingest(tracking_event("move", 10, 1, "TN"))
            .await
            .unwrap();
        store.settle().await.unwrap();
        store
    }

    async fn status(store: &SledStore) -> crate::domain::shipment::ShipmentStatus {
        let shipment = store.shipment(&"s1".into()).await.unwrap().unwrap();
        shipment.timeline.status()
    }

    #[tokio::test]
    async fn a_moving_shipment_refuses_a_cancel_unless_its_label_was_voided_for_it() {
        use crate::domain::shipment::ShipmentStatus;
        let dir = tempfile::tempdir().unwrap();
        let store = moving_shipment(dir.path()).await;
        assert_eq!(status(&store).await, ShipmentStatus::InTransit);
        assert!(matches!(
            store.cancel(Cancel::at("s1".into(), 20)).await,
            Err(StateError::InvalidTransition)
        ));
        assert_eq!(status(&store).await, ShipmentStatus::InTransit);
        // The carrier already voided the label for this cancel: it is recorded.
        let rec = store
            .cancel(Cancel {
                voided: true,
                ..Cancel::at("s1".into(), 20)
            })
            .await
            .unwrap();
        assert_eq!(rec.timeline.status(), ShipmentStatus::Cancelled);
        // And a label cannot be recorded on a cancelled shipment.
        assert!(matches!(
            store
                .record_label(
                    NewLabel {
                        label: label("l1", "s1", "TN"),
                        at_ms: 30
                    },
                    None
                )
                .await,
            Err(StateError::InvalidTransition)
        ));
    }

    /// An identity record that cannot be read is an error: taken for an
    /// absent one, the copy would be accepted as new and dedupe broken.
    #[tokio::test]
    async fn an_unreadable_identity_refuses_its_copy_instead_of_accepting_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store.ingest(event("a", 10, 1, false)).await.unwrap();
        store
            .shared
            .tree
            .insert(codec::event_key("s", "a"), b"unreadable".to_vec())
            .unwrap();
        assert!(matches!(
            store.ingest(event("a", 20, 1, false)).await,
            Err(StoreError::Corrupt(what)) if what.contains("s/a")
        ));
        // Other identities go on.
        assert!(matches!(
            store.ingest(event("b", 30, 1, false)).await,
            Ok(IngestResult::Accepted { .. })
        ));
    }

    /// The store's own numbers (the last sequence number, the dispatch
    /// cursor, the durable checkpoint, the parked and dead counts) that
    /// cannot be read stop the store from opening, naming the record: read
    /// as 0, a cursor would dispatch every event again and a sequence
    /// number would hand out numbers already taken. Whatever else was
    /// stored is left as it was.
    #[tokio::test]
    async fn an_unreadable_cursor_or_sequence_record_stops_the_store_from_opening() {
        for key in [
            codec::SEQ_KEY,
            codec::CURSOR_KEY,
            codec::DURABLE_KEY,
            codec::PARKED_KEY,
        ] {
            let name = String::from_utf8_lossy(key).into_owned();
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(&cfg(dir.path())).unwrap();
            store.ingest(event("a", 10, 1, true)).await.unwrap();
            store.shared.tree.insert(key, b"bad".to_vec()).unwrap();
            store.close().unwrap();
            drop(store);

            let refused = SledStore::open(&cfg(dir.path())).map(|_| ());
            assert!(
                matches!(&refused, Err(StoreError::Corrupt(what)) if what.contains(&name)),
                "{name}: {refused:?}"
            );
            let db = open_db(&sled::Config::new().path(dir.path())).unwrap();
            let tree = db.open_tree("state").unwrap();
            assert_eq!(
                tree.get(key).unwrap().as_deref(),
                Some(&b"bad"[..]),
                "{name} is left for the operator to see"
            );
        }
    }

    /// The integrity check names a shipment record it cannot read, where
    /// counting only the readable ones could hide an owed void.
    #[tokio::test]
    async fn the_integrity_check_reports_an_unreadable_shipment() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
        store
            .shared
            .tree
            .insert(codec::shipment_key("s1"), b"{not json".to_vec())
            .unwrap();
        assert_eq!(
            store.integrity_problems().unwrap(),
            ["unreadable shipment record"]
        );
    }

    /// A segment whose retention entry cannot be read is kept: read as
    /// zeros it would pass every test for deletion.
    #[tokio::test]
    async fn a_segment_with_an_unreadable_retention_entry_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, body) = old_events_a_segment_each(dir.path(), 4).await;
        store.settle().await.unwrap();
        let first = store.shared.segments.ids().unwrap()[0];
        store
            .shared
            .tree
            .insert(codec::segment_key(first), b"{not json".to_vec())
            .unwrap();
        let mut ev = event("new", 5_000, 2, false);
        ev.body = body.clone();
        store.ingest(ev).await.unwrap();
        assert_eq!(store.sweep_expired(4_000, 1000).await.unwrap(), 4);
        let ids = store.shared.segments.ids().unwrap();
        assert!(ids.contains(&first), "{ids:?}");
        assert!(ids.len() < 5, "the others went: {ids:?}");
    }

    /// The same for the segment being written when the store opens: its
    /// entry is rewritten with each group, and rewritten from an empty one
    /// it would hold only the newer events' expiry, so retention would
    /// delete the older, longer-lived event's payload with the segment.
    #[tokio::test]
    async fn an_unreadable_entry_of_the_active_segment_keeps_it_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        let mut long = event("long", 10, 1, false);
        long.expires_at_ms = 1_000_000;
        store.ingest(long).await.unwrap();
        let active = store.shared.segments.active_id();
        let key = codec::segment_key(active);
        store
            .shared
            .tree
            .insert(key, b"{not json".to_vec())
            .unwrap();
        store.close().unwrap();
        drop(store);

        let store = SledStore::open(&cfg(dir.path())).unwrap();
        assert_eq!(store.shared.segments.active_id(), active);
        store.ingest(event("short", 20, 2, false)).await.unwrap();
        let entry = store.shared.tree.get(key).unwrap().unwrap();
        let info = codec::SegmentInfo::decode(&entry).unwrap();
        assert_eq!(info.max_expires_at_ms, u64::MAX, "{info:?}");
        assert!(store.event("s", "long").await.unwrap().is_some());
    }

    /// A shipment record that cannot be read sends the event for it to the
    /// dead letter, saying so, and dispatch goes on with the others; once
    /// the record is repaired, a redelivery applies the event.
    #[tokio::test]
    async fn an_unreadable_shipment_sends_its_event_to_the_dead_letter_not_dispatch_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = moving_shipment(dir.path()).await;
        let key = codec::shipment_key("s1");
        let good = store.shared.tree.get(&key).unwrap().unwrap();
        store
            .shared
            .tree
            .insert(&key, b"{not json".to_vec())
            .unwrap();
        for (id, at, tn) in [("late", 50, "TN"), ("other", 60, "TN-9")] {
            let mut ev = tracking_event(id, at, at as u8, tn);
            // What the fields are read from again on redelivery.
            ev.body = Bytes::from(format!(
                r#"{{"type":"tracker.updated","tn":"{tn}","st":"transit"}}"#
            ));
            store.ingest(ev).await.unwrap();
        }
        store.settle().await.unwrap();
        let dead = store.outcome("carrier", "late").await.unwrap().unwrap();
        use crate::store::DispatchOutcome;
        assert_eq!(dead.outcome, DispatchOutcome::Dead);
        assert!(
            dead.reason.as_deref().unwrap().contains("shipment s1")
                && dead.reason.as_deref().unwrap().ends_with("cannot be read"),
            "{dead:?}"
        );
        let other = store.outcome("carrier", "other").await.unwrap().unwrap();
        assert_eq!(other.outcome, DispatchOutcome::Parked);
        store.shared.tree.insert(&key, good).unwrap();
        let again = store.redeliver("carrier", "late").await.unwrap();
        // It reached its shipment (as a repeat of the status it has).
        assert_eq!(again.outcome, DispatchOutcome::Stale, "{again:?}");
        assert_eq!(again.shipment_id, Some("s1".into()));
    }

    /// A tracking entry that is not text is unreadable, not a lossy guess
    /// at a shipment id: the event for it goes to the dead letter saying so.
    #[tokio::test]
    async fn a_tracking_entry_that_is_not_text_is_unreadable() {
        use crate::store::DispatchOutcome;
        let dir = tempfile::tempdir().unwrap();
        let store = moving_shipment(dir.path()).await;
        store
            .shared
            .tree
            .insert(codec::tracking_key("TN"), b"s\xff1".to_vec())
            .unwrap();
        store
            .ingest(tracking_event("bad-tn", 70, 7, "TN"))
            .await
            .unwrap();
        store.settle().await.unwrap();
        let dead = store.outcome("carrier", "bad-tn").await.unwrap().unwrap();
        assert_eq!(dead.outcome, DispatchOutcome::Dead);
        assert_eq!(
            dead.reason.as_deref(),
            Some("the tracking entry of TN cannot be read")
        );
    }

    /// What a search with no criteria shows: every event, newest first,
    /// with its outcome.
    async fn everything(store: &SledStore) -> Vec<(String, u64, Option<OutcomeRecord>)> {
        let found = store
            .search(&EventFilter::default(), 100, 1000)
            .await
            .unwrap();
        assert!(found.complete);
        found
            .events
            .into_iter()
            .map(|(ev, o)| (ev.event_id, ev.seq, o))
            .collect()
    }

    /// A store written by layout 4 kept whole arrivals in sled, one of
    /// layout 4 or 5 the index metadata in each identity record, and one
    /// of layout 4, 5 or 6 each parked outcome's reason and identity
    /// records in fixed widths. Opened by this build, each arrival becomes
    /// an entry pointing at its segment record, with its outcome, and each
    /// identity record the compact identity and pointer alone; what every
    /// reader sees stays as it was, reasons included. The arrival of a
    /// copy that a later one replaced goes, as the sweep would have taken
    /// it. An open cut short, with some records already rewritten, goes on
    /// where it stopped.
    #[tokio::test]
    async fn a_store_of_layout_4_is_brought_to_layout_7_on_open() {
        upgraded_from(4).await;
    }

    #[tokio::test]
    async fn a_store_of_layout_5_is_brought_to_layout_7_on_open() {
        upgraded_from(5).await;
    }

    #[tokio::test]
    async fn a_store_of_layout_6_is_brought_to_layout_7_on_open() {
        upgraded_from(6).await;
    }

    async fn upgraded_from(layout: u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = moving_shipment(dir.path()).await;
        for ev in [
            tracking_event("applied", 10, 1, "TN"),
            tracking_event("parked", 11, 2, "TN9"),
            event("stored", 12, 3, false),
            // Expires at 1013 and comes again: two arrivals, one identity.
            tracking_event("again", 13, 4, "TN"),
            tracking_event("again", 2000, 5, "TN"),
        ] {
            store.ingest(ev).await.unwrap();
        }
        store.settle().await.unwrap();
        store.close().unwrap();
        drop(store);
        // Queued, not dispatched: in the inbox through the upgrade.
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store
            .ingest(tracking_event("waiting", 2001, 6, "TN"))
            .await
            .unwrap();
        let before = everything(&store).await;
        let (parked, dead) = (store.parked().await.unwrap(), store.dead().await.unwrap());
        let inbox = store.inbox().unwrap();
        assert_eq!(parked, 1);
        assert_eq!(inbox.len(), 1);
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
        store.close().unwrap();
        drop(store);

        // Written back as the older layout wrote them: each parked
        // outcome with its reason; in layouts 4 and 5 each identity record
        // with the index metadata after its pointer; in layout 4 each
        // arrival whole, with its outcome. The first of each stays as this
        // build writes it, as if the upgrade had been cut after it.
        let arrivals;
        {
            let db = open_db(&sled::Config::new().path(dir.path())).unwrap();
            let tree = db.open_tree("state").unwrap();
            let segs = segments::Segments::open(&dir.path().join("segments"), 1 << 20).unwrap();
            let all: Vec<_> = tree.scan_prefix(b"n").map(Result::unwrap).collect();
            arrivals = all.len();
            let waits = all
                .iter()
                .map(|(_, v)| codec::ArrivalEntry::decode(v).unwrap());
            assert_eq!(waits.filter(|e| e.needs_fields()).count(), 1, "parked");
            for (k, v) in all.iter().skip(1) {
                let seq = codec::parse_seq_key(b'n', k).unwrap();
                let entry = codec::ArrivalEntry::decode(v).unwrap();
                let (pointer, whole) = arrival_of(&segs, seq, &entry).unwrap();
                let old = match layout {
                    4 => whole.encode(),
                    _ => codec::ArrivalEntry::new(whole.dispatch, pointer, whole.outcome).encode(),
                };
                tree.insert(k, old).unwrap();
            }
            let identities: Vec<_> = tree.scan_prefix(b"e").map(Result::unwrap).collect();
            for (k, v) in identities.iter().skip(1) {
                let (ident, pointer) = codec::decode_event(v).unwrap();
                let mut old = [&ident.encode()[..], &pointer.encode()].concat();
                if layout < 6 {
                    let (_, meta) = record_index(&segs, ident.seq, &pointer).unwrap();
                    old.extend(codec::encode_index_meta(&meta));
                }
                tree.insert(k, old).unwrap();
            }
            tree.insert(codec::FORMAT_KEY, layout.to_be_bytes().to_vec())
                .unwrap();
            db.flush().unwrap();
        }

        let store = SledStore::open(&cfg(dir.path())).unwrap();
        let tree = &store.shared.tree;
        assert_eq!(read_u64(tree, codec::FORMAT_KEY).unwrap(), FORMAT);
        let entries: Vec<_> = tree.scan_prefix(b"n").map(Result::unwrap).collect();
        let replaced = usize::from(layout == 4);
        assert_eq!(
            entries.len(),
            arrivals - replaced,
            "the replaced copy's arrival goes"
        );
        for (k, v) in &entries {
            assert!(codec::ArrivalEntry::decode(v).is_some(), "{k:?}");
        }
        for kv in tree.scan_prefix(b"e") {
            let (k, v) = kv.unwrap();
            assert!(codec::decode_event(&v).is_some(), "{k:?}");
        }
        assert_eq!(everything(&store).await, before);
        assert_eq!(store.parked().await.unwrap(), parked);
        assert_eq!(store.dead().await.unwrap(), dead);
        assert_eq!(store.inbox().unwrap(), inbox);
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
        let ev = store.event("carrier", "parked").await.unwrap().unwrap();
        assert_eq!(ev.body, b"{}".to_vec());
        // Dispatch goes on from where it was.
        store
            .start_dispatcher(crate::config::test_sources())
            .unwrap();
        store.settle().await.unwrap();
        assert!(store.inbox().unwrap().is_empty());
        assert!(store.outcome("carrier", "waiting").await.unwrap().is_some());
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    }

    /// An event that expired and came again has two arrivals until
    /// retention takes the first; a search lists the event once.
    #[tokio::test]
    async fn a_search_lists_an_event_that_came_again_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        store.ingest(event("again", 10, 1, false)).await.unwrap();
        store.ingest(event("again", 2000, 2, false)).await.unwrap();
        assert_eq!(store.shared.tree.scan_prefix(b"n").count(), 2);
        let seq = store.event("s", "again").await.unwrap().unwrap().seq;
        assert_eq!(everything(&store).await, vec![("again".into(), seq, None)]);
        let by_type = EventFilter {
            source: Some("s".into()),
            ..EventFilter::default()
        };
        assert_eq!(
            store.search(&by_type, 10, 100).await.unwrap().events.len(),
            1
        );
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    }

    /// An arrival whose segment record fails its checksum names no event
    /// to apply: dispatch passes over it, reported, and applies the
    /// others; the integrity check names it.
    #[tokio::test]
    async fn dispatch_passes_over_an_arrival_whose_record_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&cfg(dir.path())).unwrap();
        for (id, at) in [("first", 10), ("damaged", 11), ("last", 12)] {
            store
                .ingest(tracking_event(id, at, 1, "TN9"))
                .await
                .unwrap();
        }
        let record = store
            .shared
            .tree
            .get(codec::event_key("carrier", "damaged"))
            .unwrap()
            .unwrap();
        let (_, pointer) = codec::decode_event(&record).unwrap();
        let file = dir
            .path()
            .join("segments")
            .join(format!("{:016x}.seg", pointer.segment));
        let mut bytes = std::fs::read(&file).unwrap();
        let at = usize::try_from(pointer.offset).unwrap() + 8 + 60;
        bytes[at] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();

        store
            .start_dispatcher(crate::config::test_sources())
            .unwrap();
        store.settle().await.unwrap();
        assert_eq!(store.inbox_pending().await.unwrap(), 0);
        for id in ["first", "last"] {
            let outcome = store.outcome("carrier", id).await.unwrap().unwrap();
            assert_eq!(outcome.outcome, codec::DispatchOutcome::Parked, "{id}");
        }
        assert_eq!(store.outcome("carrier", "damaged").await.unwrap(), None);
        let problems = store.integrity_problems().unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("segment record"), "{problems:?}");
        assert!(matches!(
            store.search(&EventFilter::default(), 10, 100).await,
            Err(StoreError::Corrupt(_))
        ));
        // A sweep reads the damaged record twice, first only to warm the
        // cache, and reports it once.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let reported = || {
            let text = recorder.handle().render();
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("waybill_store_unreadable_records_total "));
            line.map_or(0, |v| v.parse::<u64>().unwrap())
        };
        let cursor = read_cursor(&store.shared.tree).unwrap();
        let plan = || {
            let shared = &store.shared;
            writer::plan_sweep(&shared.tree, &shared.segments, 1_000_000, 100, cursor).map(drop)
        };
        metrics::with_local_recorder(&recorder, || {
            crate::store::unreported(plan).unwrap();
            assert_eq!(reported(), 0, "warming the cache");
            plan().unwrap();
            assert_eq!(reported(), 1, "the writer's pass");
        });
        // Retention takes the damaged arrival too: kept, its retention
        // entry would keep every segment from here on.
        while store.sweep_expired(1_000_000, 100).await.unwrap() > 0 {}
        assert_eq!(store.shared.tree.scan_prefix(b"n").count(), 0);
        assert_eq!(store.shared.tree.scan_prefix(b"x").count(), 0);
    }

    /// A parked arrival that cannot be read fails the label that would
    /// unpark it, instead of being passed over (its event never applied).
    #[tokio::test]
    async fn an_unreadable_parked_arrival_fails_the_label_instead_of_being_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = moving_shipment(dir.path()).await;
        store
            .ingest(tracking_event("parked", 40, 3, "TN2"))
            .await
            .unwrap();
        store.settle().await.unwrap();
        assert_eq!(store.parked().await.unwrap(), 1);
        let seq = store.event("carrier", "parked").await.unwrap().unwrap().seq;
        store
            .shared
            .tree
            .insert(codec::seq_key(b'n', seq), b"\xff".to_vec())
            .unwrap();
        let mut second = store.shipment(&"s1".into()).await.unwrap().unwrap();
        second.shipment_id = "s2".into();
        second.tracking_number = None;
        second.label = None;
        second.timeline = crate::domain::shipment::Timeline::new(1);
        store.create_shipment(second, None).await.unwrap();
        assert!(matches!(
            store
                .record_label(
                    NewLabel {
                        label: label("l2", "s2", "TN2"),
                        at_ms: 50
                    },
                    None
                )
                .await,
            Err(StateError::Store(StoreError::Corrupt(_)))
        ));
        // Nothing was recorded: the label can be recorded once repaired.
        assert!(
            store
                .shipment(&"s2".into())
                .await
                .unwrap()
                .unwrap()
                .label
                .is_none()
        );
    }
}
