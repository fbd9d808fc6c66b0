//! The only module that knows sled.
//!
//! Writes of accepted events go through one writer thread. It takes every
//! request waiting in its queue, decides new-or-duplicate for each against
//! the tree and against the rest of the group, and applies the group as one
//! atomic sled batch. It then hands the group to the flusher thread, which
//! takes every group handed over since its last flush, calls `flush` once
//! (sled acknowledges writes before they are on disk), and only then answers
//! the waiting requests. While one flush runs, the next group is gathered and
//! applied: that overlap is the group commit.
//!
//! A single writer means no compare-and-swap races: two copies of one event,
//! however concurrent, are ordered by the queue, and the second sees the
//! first (in the tree, or earlier in the same group).

pub mod codec;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::config::StoreConfig;
use crate::telemetry::metric;
use codec::{EventMeta, Ident};

/// Requests gathered into one batch at most. Larger groups add latency to
/// the first request in them without making the flush cheaper.
const MAX_GROUP: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
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
    pub meta: EventMeta,
    pub body: Vec<u8>,
}

type Reply = oneshot::Sender<Result<IngestResult, StoreError>>;

enum Msg {
    Ingest(Box<NewEvent>, Reply),
    Sweep {
        now_ms: u64,
        limit: usize,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
}

struct Group {
    answers: Vec<(Reply, Result<IngestResult, StoreError>)>,
    last_seq: u64,
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
    healthy: AtomicBool,
}

pub struct Store {
    shared: Arc<Shared>,
    tx: std::sync::Mutex<Option<mpsc::Sender<Msg>>>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Store {
    pub fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(cfg.cache_bytes)
            .open()?;
        let tree = db.open_tree("ingest")?;
        let seq = match tree.get(codec::SEQ_KEY)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Unavailable("corrupt sequence record".into()))?,
            ),
            None => 0,
        };
        let pending = tree.scan_prefix(b"q").keys().count() as i64;
        let log_file = std::fs::File::open(cfg.path.join("db")).ok();
        let shared = Arc::new(Shared {
            db,
            log_file,
            tree,
            durable_seq: AtomicU64::new(seq),
            inbox_pending: AtomicI64::new(pending),
            healthy: AtomicBool::new(true),
        });
        metrics::gauge!(metric::INBOX_PENDING).set(pending as f64);

        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        let (group_tx, group_rx) = std::sync::mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("waybill-writer".into())
                .spawn(move || Writer { shared, seq }.run(rx, group_tx))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
        };
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("waybill-flusher".into())
                .spawn(move || flusher(shared, group_rx))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
        };
        Ok(Store {
            shared,
            tx: std::sync::Mutex::new(Some(tx)),
            threads: std::sync::Mutex::new(vec![writer, flusher]),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Msg>, StoreError> {
        self.tx
            .lock()
            .expect("store sender lock")
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closing".into()))
    }

    /// Remembers a new event durably, or reports the first copy. Returns only
    /// after a flush covering the answer (guarantee 1).
    pub async fn ingest(&self, event: NewEvent) -> Result<IngestResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Msg::Ingest(Box::new(event), reply))
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    /// Forgets up to `limit` events whose retention ended before `now_ms`;
    /// returns how many. Cost is proportional to what expires: the retention
    /// index is ordered by expiry, so the scan stops at the first live entry.
    pub async fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
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

    pub fn is_ready(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
            && self.tx.lock().expect("store sender lock").is_some()
    }

    /// The highest sequence number covered by a completed flush.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// Checks that no event is half-written: every identity has its event
    /// record and every inbox entry names a stored, dispatched event. Returns
    /// one line per problem; empty means whole.
    pub fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        let tree = &self.shared.tree;
        let mut problems = Vec::new();
        for kv in tree.scan_prefix(b"i") {
            let (k, v) = kv?;
            let name = &k[1..];
            let Some((source, id)) = codec::split_name(name) else {
                problems.push(format!("unreadable identity key {k:?}"));
                continue;
            };
            let Some(ident) = Ident::decode(&v) else {
                problems.push(format!("unreadable identity {source}/{id}"));
                continue;
            };
            match self.event(&source, &id)? {
                None => problems.push(format!("identity {source}/{id} has no event record")),
                Some(ev) if ev.meta.seq != ident.seq => problems.push(format!(
                    "identity {source}/{id} and its event disagree on the sequence"
                )),
                Some(_) => {}
            }
        }
        for (seq, source, id) in self.inbox()? {
            match self.event(&source, &id)? {
                Some(ev) if ev.meta.dispatch && ev.meta.seq == seq => {}
                _ => problems.push(format!(
                    "inbox entry {seq} names no dispatched event {source}/{id}"
                )),
            }
        }
        Ok(problems)
    }

    pub fn inbox_pending(&self) -> i64 {
        self.shared.inbox_pending.load(Ordering::Relaxed)
    }

    /// The inbox in arrival order: (sequence, source, event id).
    pub fn inbox(&self) -> Result<Vec<(u64, String, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.shared.tree.scan_prefix(b"q") {
            let (k, v) = kv?;
            if let (Some(seq), Some((source, id))) =
                (codec::parse_inbox_key(&k), codec::split_name(&v))
            {
                out.push((seq, source, id));
            }
        }
        Ok(out)
    }

    pub fn event(&self, source: &str, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let Some(v) = self.shared.tree.get(codec::event_key(source, event_id))? else {
            return Ok(None);
        };
        let (meta, body) = codec::decode_event(&v)
            .ok_or_else(|| StoreError::Unavailable("corrupt event record".into()))?;
        Ok(Some(StoredEvent {
            source: source.to_string(),
            event_id: event_id.to_string(),
            meta,
            body,
        }))
    }

    /// Whether an identity is remembered (not yet swept).
    pub fn knows(&self, source: &str, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .shared
            .tree
            .contains_key(codec::ident_key(source, event_id))?)
    }

    /// Stops the writer after the requests already queued, waits for their
    /// flush, and flushes once more.
    pub fn close(&self) -> Result<(), StoreError> {
        self.tx.lock().expect("store sender lock").take();
        let threads: Vec<_> = self
            .threads
            .lock()
            .expect("store threads lock")
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
        self.shared.db.flush()?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

struct Writer {
    shared: Arc<Shared>,
    seq: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>, groups: std::sync::mpsc::Sender<Group>) {
        let mut msgs = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            msgs.push(first);
            while msgs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            let mut ingests = Vec::with_capacity(msgs.len());
            for m in msgs.drain(..) {
                match m {
                    Msg::Ingest(ev, reply) => ingests.push((ev, reply)),
                    Msg::Sweep {
                        now_ms,
                        limit,
                        reply,
                    } => {
                        let _ = reply.send(self.sweep(now_ms, limit));
                    }
                }
            }
            if ingests.is_empty() {
                continue;
            }
            if let Some(group) = self.commit(ingests)
                && groups.send(group).is_err()
            {
                break;
            }
        }
    }

    /// Applies one group as a single batch. Answers that need no flush (a
    /// duplicate of something already durable) go out at once; the rest
    /// are returned for the flusher.
    fn commit(&mut self, ingests: Vec<(Box<NewEvent>, Reply)>) -> Option<Group> {
        metrics::histogram!(metric::STORE_GROUP_SIZE).record(ingests.len() as f64);
        let durable = self.shared.durable_seq.load(Ordering::Acquire);
        let mut batch = sled::Batch::default();
        // Identities first written in this group, so a second copy in the
        // same group is a duplicate too.
        let mut fresh: HashMap<Vec<u8>, Ident> = HashMap::new();
        let mut answers = Vec::with_capacity(ingests.len());
        let mut added_to_inbox = 0i64;
        let start_seq = self.seq;
        for (ev, reply) in ingests {
            let key = codec::ident_key(&ev.source, &ev.event_id);
            let existing = match fresh.get(&key) {
                Some(i) => Ok(Some(*i)),
                None => self.shared.tree.get(&key).map(|v| {
                    v.and_then(|v| Ident::decode(&v))
                        .filter(|i| i.expires_at_ms > ev.received_at_ms)
                }),
            };
            match existing {
                Err(e) => answers.push((reply, Err(StoreError::from(e)))),
                Ok(Some(first)) => {
                    let result = Ok(IngestResult::Duplicate {
                        first_received_at_ms: first.received_at_ms,
                        conflict: first.content_hash != ev.content_hash,
                    });
                    if first.seq <= durable {
                        let _ = reply.send(result);
                    } else {
                        answers.push((reply, result));
                    }
                }
                Ok(None) => {
                    self.seq += 1;
                    let ident = Ident {
                        received_at_ms: ev.received_at_ms,
                        expires_at_ms: ev.expires_at_ms,
                        seq: self.seq,
                        content_hash: ev.content_hash,
                    };
                    let name = codec::name(&ev.source, &ev.event_id);
                    let meta = EventMeta {
                        seq: self.seq,
                        received_at_ms: ev.received_at_ms,
                        event_type: ev.event_type.clone(),
                        dispatch: ev.dispatch,
                        headers: ev.headers.clone(),
                        tracking_number: ev.tracking_number.clone(),
                        order_id: ev.order_id.clone(),
                    };
                    batch.insert(key.clone(), ident.encode().to_vec());
                    batch.insert(
                        codec::event_key(&ev.source, &ev.event_id),
                        codec::encode_event(&meta, &ev.body),
                    );
                    batch.insert(
                        codec::expiry_key(ev.expires_at_ms, self.seq).to_vec(),
                        name.clone(),
                    );
                    if ev.dispatch {
                        batch.insert(codec::inbox_key(self.seq).to_vec(), name);
                        added_to_inbox += 1;
                    }
                    fresh.insert(key, ident);
                    answers.push((
                        reply,
                        Ok(IngestResult::Accepted {
                            received_at_ms: ev.received_at_ms,
                        }),
                    ));
                }
            }
        }
        if self.seq != start_seq {
            batch.insert(codec::SEQ_KEY, self.seq.to_be_bytes().to_vec());
            if let Err(e) = self.shared.tree.apply_batch(batch) {
                // Nothing of the batch is applied: every answer in it fails,
                // including duplicates of copies that were in it.
                self.shared.healthy.store(false, Ordering::Relaxed);
                self.seq = start_seq;
                let msg = e.to_string();
                for (reply, _) in answers {
                    let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
                return None;
            }
            let pending = self
                .shared
                .inbox_pending
                .fetch_add(added_to_inbox, Ordering::Relaxed)
                + added_to_inbox;
            metrics::gauge!(metric::INBOX_PENDING).set(pending as f64);
        }
        if answers.is_empty() {
            return None;
        }
        Some(Group {
            answers,
            last_seq: self.seq,
        })
    }

    fn sweep(&mut self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let tree = &self.shared.tree;
        let mut batch = sled::Batch::default();
        let mut swept = 0;
        for kv in tree
            .range(codec::expiry_key(0, 0)..codec::expiry_key(now_ms, 0))
            .take(limit)
        {
            let (k, v) = kv?;
            let Some((_, seq)) = codec::parse_expiry_key(&k) else {
                continue;
            };
            batch.remove(k);
            swept += 1;
            let Some((source, id)) = codec::split_name(&v) else {
                continue;
            };
            let ident_key = codec::ident_key(&source, &id);
            // The identity may have been reused by a later copy after this
            // one expired; only the record this entry indexes is removed.
            if let Some(cur) = tree.get(&ident_key)?.and_then(|v| Ident::decode(&v))
                && cur.seq == seq
            {
                batch.remove(ident_key);
                // An event still waiting in the inbox keeps its record until
                // the state machine has applied it; only its identity goes.
                if !tree.contains_key(codec::inbox_key(seq))? {
                    batch.remove(codec::event_key(&source, &id));
                }
            }
        }
        if swept > 0 {
            tree.apply_batch(batch)?;
        }
        Ok(swept)
    }
}

fn flusher(shared: Arc<Shared>, groups: std::sync::mpsc::Receiver<Group>) {
    while let Ok(first) = groups.recv() {
        let mut pending = vec![first];
        pending.extend(groups.try_iter());
        let started = Instant::now();
        let flushed =
            shared
                .db
                .flush()
                .map_err(StoreError::from)
                .and_then(|_| match &shared.log_file {
                    Some(f) => f
                        .sync_data()
                        .map_err(|e| StoreError::Unavailable(e.to_string())),
                    None => Ok(()),
                });
        metrics::histogram!(metric::STORE_FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        match flushed {
            Ok(_) => {
                let last = pending.iter().map(|g| g.last_seq).max().unwrap_or(0);
                shared.durable_seq.fetch_max(last, Ordering::AcqRel);
                for g in pending {
                    for (reply, result) in g.answers {
                        let _ = reply.send(result);
                    }
                }
            }
            Err(e) => {
                shared.healthy.store(false, Ordering::Relaxed);
                let msg = e.to_string();
                for g in pending {
                    for (reply, _) in g.answers {
                        let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn cfg(path: &Path) -> StoreConfig {
        StoreConfig {
            path: path.to_path_buf(),
            dedupe_retention: Duration::from_secs(60),
            idempotency_retention: Duration::from_secs(60),
            in_progress_timeout: Duration::from_secs(30),
            cache_bytes: 8 << 20,
        }
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
            body: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn accepts_once_then_reports_duplicates_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
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
        assert_eq!(store.inbox_pending(), 1);
    }

    #[tokio::test]
    async fn concurrent_copies_yield_one_acceptance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&cfg(dir.path())).unwrap());
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
        let store = Arc::new(Store::open(&cfg(dir.path())).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("e{i}");
                store.ingest(event(&id, 10, 1, i % 2 == 0)).await.unwrap();
                let durable = store.durable_seq();
                let seq = store.event("s", &id).unwrap().unwrap().meta.seq;
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
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&cfg(dir.path())).unwrap();
            store.ingest(event("a", 10, 1, true)).await.unwrap();
            store.ingest(event("b", 11, 1, false)).await.unwrap();
            store.close().unwrap();
        }
        let store = Store::open(&cfg(dir.path())).unwrap();
        assert_eq!(store.inbox_pending(), 1);
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
        let store = Store::open(&cfg(dir.path())).unwrap();
        store.ingest(event("old", 0, 1, false)).await.unwrap(); // expires at 1000
        store.ingest(event("new", 5000, 1, false)).await.unwrap(); // expires at 6000
        assert_eq!(store.sweep_expired(999, 100).await.unwrap(), 0);
        assert_eq!(store.sweep_expired(1001, 100).await.unwrap(), 1);
        assert!(!store.knows("s", "old").unwrap());
        assert!(store.event("s", "old").unwrap().is_none());
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
        let store = Store::open(&cfg(dir.path())).unwrap();
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
            store.event("s", "x").unwrap().unwrap().meta.received_at_ms,
            2000
        );
    }

    #[tokio::test]
    async fn an_expired_event_still_in_the_inbox_keeps_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        store.ingest(event("waiting", 0, 1, true)).await.unwrap();
        assert_eq!(store.sweep_expired(5000, 100).await.unwrap(), 1);
        assert!(!store.knows("s", "waiting").unwrap());
        assert!(store.event("s", "waiting").unwrap().is_some());
        assert_eq!(store.inbox().unwrap().len(), 1);
        assert!(store.integrity_problems().unwrap().is_empty());
    }

    #[tokio::test]
    async fn sweep_is_bounded_by_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
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
}
