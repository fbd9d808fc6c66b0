//! The writer and flusher threads: group commit of accepted events, and the
//! retention sweep (which runs on the writer so that it never races a new
//! copy of an identity it is forgetting).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::codec::{self, Ident};
use super::{
    Group, IngestResult, MAX_GROUP, Msg, Prepared, Reply, STALL_AFTER, Shared, StoreError,
};
use crate::health::Component;
use crate::telemetry::metric;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) seq: u64,
}

impl Writer {
    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        groups: std::sync::mpsc::Sender<Group>,
    ) {
        let alive = self.shared.health.enter(Component::Store, STALL_AFTER);
        let mut msgs = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            alive.beat();
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
                    Msg::Ping => {
                        let _ = self.shared.check_space();
                    }
                    Msg::Sweep {
                        now_ms,
                        limit,
                        reply,
                    } => {
                        let _ = reply.send(self.sweep(now_ms, limit));
                    }
                }
            }
            if !ingests.is_empty()
                && let Some(group) = self.commit(ingests)
                && groups.send(group).is_err()
            {
                break;
            }
            if !self.shared.is_healthy() {
                break;
            }
        }
        // Requests still queued are answered "unavailable" by their
        // dropped reply channels.
    }

    /// Applies one group as a single batch. Answers that need no flush (a
    /// duplicate of something already durable) go out at once; the rest
    /// are returned for the flusher.
    fn commit(&mut self, ingests: Vec<(Box<Prepared>, Reply)>) -> Option<Group> {
        metrics::histogram!(metric::STORE_GROUP_SIZE).record(ingests.len() as f64);
        let durable = self.shared.durable_seq.load(Ordering::Acquire);
        // Duplicates need no space; new events wait until there is some.
        let space = self.shared.check_space();
        let mut batch = sled::Batch::default();
        // Identities first written in this group, so a second copy in the
        // same group is a duplicate too.
        let mut fresh: HashMap<Vec<u8>, Ident> = HashMap::new();
        let mut answers = Vec::with_capacity(ingests.len());
        let mut added_to_inbox = 0i64;
        let start_seq = self.seq;
        for (ev, reply) in ingests {
            let ev = *ev;
            let key = ev.key;
            let existing = match fresh.get(&key) {
                Some(i) => Ok(Some(*i)),
                None => self.shared.tree.get(&key).map(|v| {
                    v.and_then(|v| codec::event_ident(&v))
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
                    if let Err(e) = &space {
                        answers.push((reply, Err(e.clone())));
                        continue;
                    }
                    self.seq += 1;
                    let ident = Ident {
                        received_at_ms: ev.received_at_ms,
                        expires_at_ms: ev.expires_at_ms,
                        seq: self.seq,
                        content_hash: ev.content_hash,
                    };
                    let name = ev.name;
                    batch.insert(key.clone(), codec::assemble_event(&ident, &ev.payload));
                    batch.insert(
                        codec::expiry_key(ev.expires_at_ms, self.seq).to_vec(),
                        name.clone(),
                    );
                    batch.insert(codec::seq_key(b'n', self.seq).to_vec(), ev.arrival);
                    if let Some(tn) = &ev.tracking_number {
                        batch.insert(codec::text_seq_key(b'T', tn, self.seq), name.clone());
                    }
                    if let Some(order) = &ev.order_id {
                        batch.insert(codec::text_seq_key(b'O', order, self.seq), name);
                    }
                    if ev.dispatch {
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
            if let Err(e) = self.shared.apply(batch) {
                // Nothing of the batch is applied: every answer in it fails,
                // including duplicates of copies that were in it.
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
            if added_to_inbox > 0 {
                self.shared.wake_dispatcher();
            }
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
        let cursor = super::read_cursor(tree)?;
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
            if let Some((source, id)) = codec::split_name(&v) {
                let current = tree
                    .get(codec::event_key(&source, &id))?
                    .and_then(|v| codec::decode_event(&v));
                // A record reused by a later copy after this one expired is
                // not this entry's to remove.
                if let Some((ident, meta, _)) = current.filter(|(cur, _, _)| cur.seq == seq) {
                    if meta.dispatch && ident.seq > cursor {
                        // Still waiting for the state machine: kept whole,
                        // and met again by a later sweep.
                        continue;
                    }
                    forget_event(tree, &mut batch, &source, &id, seq)?;
                }
            }
            batch.remove(k);
            swept += 1;
        }
        if swept > 0 {
            self.shared.apply(batch)?;
        }
        Ok(swept)
    }
}

/// Removes an event's record and every index entry naming it.
fn forget_event(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    source: &str,
    id: &str,
    seq: u64,
) -> Result<(), StoreError> {
    if let Some((_, meta, _)) = tree
        .get(codec::event_key(source, id))?
        .and_then(|v| codec::decode_event(&v))
    {
        if let Some(tn) = &meta.tracking_number {
            batch.remove(codec::text_seq_key(b'T', tn, seq));
        }
        if let Some(order) = &meta.order_id {
            batch.remove(codec::text_seq_key(b'O', order, seq));
        }
    }
    batch.remove(codec::seq_key(b'n', seq).to_vec());
    batch.remove(codec::event_key(source, id));
    Ok(())
}

pub(super) fn flusher(shared: Arc<Shared>, groups: std::sync::mpsc::Receiver<Group>) {
    let alive = shared.health.enter(Component::Store, STALL_AFTER);
    loop {
        let first = match groups.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(g) => g,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                alive.beat();
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        alive.beat();
        let mut pending = vec![first];
        pending.extend(groups.try_iter());
        let started = Instant::now();
        let flushed = shared.sync();
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
                let msg = e.to_string();
                for g in pending {
                    for (reply, _) in g.answers {
                        let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
                    }
                }
                break;
            }
        }
    }
}
