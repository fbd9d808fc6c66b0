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
    ToFlusher,
};
use crate::health::Component;
use crate::telemetry::metric;

/// A new event of a group, waiting for its segment record's pointer:
/// its identity record, and where in the group's writes its arrival entry
/// goes.
struct Indexed {
    key: Vec<u8>,
    ident: Ident,
    dispatch: bool,
    arrival_at: usize,
}

/// Events one retention entry names at most.
const EXPIRY_ENTRY: usize = 128;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) seq: u64,
    /// The segment being written and what retention must know of it.
    pub(super) segment_id: u64,
    pub(super) segment: codec::SegmentInfo,
    /// Segments whose retention entry could not be read, said once each.
    pub(super) unreadable_segments: std::collections::HashSet<u64>,
}

impl Writer {
    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        flusher: std::sync::mpsc::Sender<ToFlusher>,
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
                        // Retention writes too: it waits while the disk is
                        // nearly out (`space`).
                        let swept = if self.shared.space.allows_upkeep() {
                            self.sweep(now_ms, limit)
                        } else {
                            Ok(0)
                        };
                        let _ = reply.send(swept);
                    }
                }
            }
            if !ingests.is_empty()
                && let Some(group) = self.commit(ingests, &flusher)
                && flusher.send(ToFlusher::Indexed(group)).is_err()
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

    /// Writes one group's index. Answers that need no flush (a
    /// duplicate of something already durable) go out at once; the rest
    /// are returned for the flusher, which has had the group's segment to
    /// sync since its payloads were appended.
    fn commit(
        &mut self,
        ingests: Vec<(Box<Prepared>, Reply)>,
        flusher: &std::sync::mpsc::Sender<ToFlusher>,
    ) -> Option<Group> {
        metrics::histogram!(metric::STORE_GROUP_SIZE).record(ingests.len() as f64);
        let durable = self.shared.durable_seq.load(Ordering::Acquire);
        // Duplicates need no space; new events wait until there is some.
        let space = self.shared.check_space();
        // The group's keys, in the order they are written (`write_group`).
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        // Identities first written in this group, so a second copy in the
        // same group is a duplicate too.
        let mut fresh: HashMap<Vec<u8>, Ident> = HashMap::new();
        let mut answers = Vec::with_capacity(ingests.len());
        let mut added_to_inbox = 0i64;
        let start_seq = self.seq;
        // The new events' payloads, written to their segment in one append,
        // and their index records, which point there.
        let mut payloads = Vec::new();
        let mut index = Vec::new();
        let mut expiring: HashMap<u64, (u64, Vec<u64>)> = HashMap::new();
        for (ev, reply) in ingests {
            let mut ev = *ev;
            let key = std::mem::take(&mut ev.key);
            // The record of an expired copy this one replaces.
            let mut replaced = None;
            let existing = match fresh.get(&key) {
                Some(i) => Ok(Some(*i)),
                None => match self.shared.tree.get(&key) {
                    Err(e) => Err(StoreError::from(e)),
                    Ok(None) => Ok(None),
                    // An identity that cannot be read is no absent one:
                    // taking it for new would accept a duplicate.
                    Ok(Some(v)) => match codec::event_ident(&v) {
                        None => Err(StoreError::corrupt(codec::describe_key(&key))),
                        Some(i) if i.expires_at_ms > ev.received_at_ms => Ok(Some(i)),
                        Some(_) => {
                            replaced = Some(v);
                            Ok(None)
                        }
                    },
                },
            };
            match existing {
                Err(e) => answers.push((reply, Err(e))),
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
                    payloads.push(codec::encode_logged(
                        &codec::Logged {
                            ident,
                            index_meta: &ev.index_meta,
                            arrival: &ev.arrival,
                        },
                        &ev.packed,
                    ));
                    self.note_expiry(ev.expires_at_ms);
                    // Events of one group with one retention share a
                    // retention entry, due when the last of them expires.
                    let retention = ev.expires_at_ms.saturating_sub(ev.received_at_ms);
                    let entry = expiring.entry(retention).or_insert((0, Vec::new()));
                    entry.0 = entry.0.max(ev.expires_at_ms);
                    entry.1.push(self.seq);
                    if let Some(old) = replaced {
                        let entries = replaced_entries(&self.shared.segments, &old);
                        writes.extend(entries.into_iter().map(|k| (k, None)));
                    }
                    // Search entries are keys alone: the arrival under
                    // their sequence number names the event. Its entry
                    // points at the segment record, placed below.
                    index.push(Indexed {
                        key: key.clone(),
                        ident,
                        dispatch: ev.dispatch,
                        arrival_at: writes.len(),
                    });
                    writes.push((codec::seq_key(b'n', self.seq).to_vec(), None));
                    let tn = ev.tracking_number.as_deref();
                    let entries = codec::search_keys(self.seq, tn, ev.order_id.as_deref());
                    writes.extend(entries.map(|k| (k, Some(Vec::new()))));
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
            let written = self.shared.segments.append(&payloads).map_err(|e| {
                let full = super::space::is_full(&e);
                let e = StoreError::Unavailable(format!("segment append: {e}"));
                if full {
                    // Another process took the disk: the partial write was
                    // cut, nothing of the group was kept, and the store
                    // refuses writes until there is space again.
                    self.shared.space.met_full_disk();
                } else {
                    // The file's end is unknown: stop, and let the restart
                    // cut the torn tail.
                    self.shared.fail("segment append", &e);
                }
                e
            });
            let (pointers, file) = match written {
                Ok(w) => w,
                Err(e) => {
                    self.seq = start_seq;
                    for (reply, _) in answers {
                        let _ = reply.send(Err(e.clone()));
                    }
                    return None;
                }
            };
            for (ix, pointer) in index.into_iter().zip(&pointers) {
                let entry = codec::ArrivalEntry::new(ix.dispatch, *pointer, None);
                if let Some(w) = writes.get_mut(ix.arrival_at) {
                    w.1 = Some(entry.encode());
                }
                let record = codec::encode_event(&ix.ident, pointer);
                writes.push((ix.key, Some(record)));
            }
            // Gone only when the store is stopping; the group's answers
            // then fail with it.
            if let Some(first) = pointers.first() {
                let _ = flusher.send(ToFlusher::Sync {
                    segment: first.segment,
                    file,
                    last_seq: self.seq,
                });
            }
            // At most `EXPIRY_ENTRY` events an entry, so that a sweep slice
            // stays short however large the group was.
            for (expires_at_ms, seqs) in expiring.into_values() {
                for chunk in seqs.chunks(EXPIRY_ENTRY) {
                    if let Some(first) = chunk.first() {
                        writes.push((
                            codec::expiry_key(expires_at_ms, *first).to_vec(),
                            Some(codec::encode_seqs(chunk)),
                        ));
                    }
                }
            }
            if let Some(last) = pointers.last() {
                self.segment.last_seq = self.seq;
                self.segment.end = last.end();
                writes.push((
                    codec::segment_key(last.segment).to_vec(),
                    Some(self.segment.encode()),
                ));
                self.segment_id = last.segment;
            }
            writes.push((
                codec::SEQ_KEY.to_vec(),
                Some(self.seq.to_be_bytes().to_vec()),
            ));
            // Everything up to here was flushed with its payload: on open,
            // only later events can point past a segment's end.
            writes.push((
                codec::DURABLE_KEY.to_vec(),
                Some(durable.to_be_bytes().to_vec()),
            ));
            if let Err(e) = self.shared.write_group(writes) {
                // Every answer in the group fails, including duplicates of
                // copies that were in it. Part of it may be written: the
                // store stops, and opening it again completes the group
                // from its segment (`replay_log`).
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
            queued: added_to_inbox > 0,
        })
    }

    /// Raises the active segment's latest expiry; a new segment starts
    /// from nothing.
    fn note_expiry(&mut self, expires_at_ms: u64) {
        let active = self.shared.segments.active_id();
        if active != self.segment_id {
            self.segment_id = active;
            self.segment = codec::SegmentInfo::default();
        }
        self.segment.max_expires_at_ms = self.segment.max_expires_at_ms.max(expires_at_ms);
    }

    /// Forgets up to about `limit` expired events (see `plan_sweep`);
    /// answers how many it took out.
    fn sweep(&mut self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let tree = &self.shared.tree;
        let cursor = super::read_cursor(tree)?;
        let mut plan = plan_sweep(tree, &self.shared.segments, now_ms, limit, cursor)?;
        let mut swept = self.shared.swept.load();
        swept.add(plan.held);
        if !plan.held.is_empty() {
            super::HeldKeys::Swept.write(&mut plan.batch, swept);
        }
        if plan.swept > 0 {
            self.shared.apply(plan.batch)?;
            self.shared.swept.store(swept);
        }
        if plan.swept < limit {
            self.sweep_segments(now_ms, cursor)?;
        }
        Ok(plan.swept)
    }

    /// Deletes the payload segments whose every event has expired, been
    /// dispatched and been swept: whole files, so disk follows the live
    /// data at no cost per event.
    fn sweep_segments(&mut self, now_ms: u64, cursor: u64) -> Result<(), StoreError> {
        let tree = &self.shared.tree;
        let segments = &self.shared.segments;
        let active = segments.active_id();
        // An event still remembered keeps its expiry entry; none may be
        // older than a segment that goes.
        let oldest_kept = match tree
            .range(codec::expiry_key(0, 0)..codec::expiry_key(u64::MAX, u64::MAX))
            .next()
        {
            Some(kv) => codec::parse_expiry_key(&kv?.0).map(|(at, _)| at),
            None => None,
        };
        let mut known = std::collections::HashSet::new();
        let mut batch = sled::Batch::default();
        let mut deleted = Vec::new();
        for kv in tree.scan_prefix(b"g") {
            let (k, v) = kv?;
            let Some(id) = codec::parse_seq_key(b'g', &k) else {
                continue;
            };
            known.insert(id);
            // A segment whose entry cannot be read is kept: all zeros
            // would pass every test below and delete live payloads.
            let Some(info) = codec::SegmentInfo::decode(&v) else {
                if self.unreadable_segments.insert(id) {
                    let _ = StoreError::corrupt(format!("the retention entry of segment {id}"));
                }
                continue;
            };
            let done = id < active
                && info.max_expires_at_ms <= now_ms
                && info.last_seq <= cursor
                && oldest_kept.is_none_or(|at| at > info.max_expires_at_ms);
            if done {
                batch.remove(k);
                deleted.push(id);
            }
        }
        // A segment without an entry was written by a group whose index
        // never landed (a crash between the two): nothing points into it.
        let ids = segments
            .ids()
            .map_err(|e| StoreError::Unavailable(format!("segments: {e}")))?;
        deleted.extend(
            ids.into_iter()
                .filter(|id| *id < active && !known.contains(id)),
        );
        if deleted.is_empty() {
            return Ok(());
        }
        self.shared.apply(batch)?;
        for id in deleted {
            segments
                .delete(id)
                .map_err(|e| StoreError::Unavailable(format!("deleting segment {id}: {e}")))?;
            tracing::debug!(segment = id, "payload segment deleted by retention");
        }
        Ok(())
    }
}

/// What one sweep slice takes out: the batch, and how many events.
pub(super) struct SweepPlan {
    batch: sled::Batch,
    swept: usize,
    /// Of those, how many were parked and how many dead.
    held: codec::Held,
}

/// Reads up to about `limit` expired events, a retention entry at a time,
/// and plans their removal. Events still waiting for the state machine
/// stay, and so does their entry, rewritten to name only them, so that no
/// later slice reads the rest again; at most `4 * limit` of them are passed
/// over in one slice.
///
/// Only reads: the writer runs it right before applying the plan, so that
/// nothing can change in between, and `Store::sweep_expired` runs it first
/// off the writer, only to bring the pages into sled's cache (expired
/// records are the coldest there are, and reading them on the writer held
/// up intake).
pub(super) fn plan_sweep(
    tree: &sled::Tree,
    segments: &super::segments::Segments,
    now_ms: u64,
    limit: usize,
    cursor: u64,
) -> Result<SweepPlan, StoreError> {
    let mut batch = sled::Batch::default();
    let mut swept = 0;
    let mut held = codec::Held::default();
    let mut passed_over = 0;
    for kv in tree.range(codec::expiry_key(0, 0)..codec::expiry_key(now_ms, 0)) {
        if swept >= limit || passed_over >= 4 * limit {
            break;
        }
        let (k, v) = kv?;
        let mut waiting = Vec::new();
        for seq in codec::decode_seqs(&v) {
            // Gone already (forgotten on open after a crash).
            let Some(entry) = super::read_entry(tree, seq)? else {
                continue;
            };
            let (names, meta) = match super::record_index(segments, seq, &entry.pointer) {
                Ok(read) => read,
                // A record that cannot be read (reported) names nothing
                // to forget but its arrival, once dispatch has passed it.
                // Keeping the arrival would keep its retention entry, and
                // with it every segment after its own: the disk would
                // fill. Its identity and search entries stay; a later copy
                // replaces the identity once it has expired.
                Err(StoreError::Corrupt(_)) => {
                    if entry.dispatch && seq > cursor {
                        waiting.push(seq);
                    } else {
                        held.add(entry.held());
                        batch.remove(codec::seq_key(b'n', seq).to_vec());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let current = tree
                .get(codec::event_key(&names.source, &names.event_id))?
                .and_then(|v| codec::decode_event(&v))
                .is_some_and(|(ident, _)| ident.seq == seq);
            if current && entry.dispatch && seq > cursor {
                waiting.push(seq);
                continue;
            }
            held.add(entry.held());
            if current {
                forget_event(&mut batch, &names.source, &names.event_id, seq, &meta);
            } else {
                // Reused by a later copy after this one expired: this
                // copy's arrival goes, and its search entries if the
                // copy that replaced it could not take them.
                for entry in search_entries(seq, &meta) {
                    batch.remove(entry);
                }
                batch.remove(codec::seq_key(b'n', seq).to_vec());
            }
        }
        let total = v.len() / 8;
        swept += total - waiting.len();
        passed_over += waiting.len();
        if waiting.is_empty() {
            batch.remove(k);
        } else if waiting.len() < total {
            batch.insert(k, codec::encode_seqs(&waiting));
        }
    }
    Ok(SweepPlan { batch, swept, held })
}

pub(super) fn search_entries(seq: u64, meta: &codec::EventMeta) -> impl Iterator<Item = Vec<u8>> {
    codec::search_keys(
        seq,
        meta.tracking_number.as_deref(),
        meta.order_id.as_deref(),
    )
}

/// The search entries of an expired copy that a new copy replaces, named
/// by the old copy's segment record: they go with its identity record,
/// so that no lookup by tracking number or order meets the old copy. A
/// record that cannot be read (reported by `with_record`) leaves them for
/// the sweep, which takes them with the old arrival; a search passes over
/// an arrival whose identity names a later copy.
pub(super) fn replaced_entries(segments: &super::segments::Segments, old: &[u8]) -> Vec<Vec<u8>> {
    codec::decode_event(old)
        .and_then(|(ident, pointer)| {
            let (_, meta) = super::record_index(segments, ident.seq, &pointer).ok()?;
            Some(search_entries(ident.seq, &meta).collect())
        })
        .unwrap_or_default()
}

/// Removes an event's record, its arrival and its search entries.
pub(super) fn forget_event(
    batch: &mut sled::Batch,
    source: &str,
    id: &str,
    seq: u64,
    meta: &codec::EventMeta,
) {
    for entry in search_entries(seq, meta) {
        batch.remove(entry);
    }
    batch.remove(codec::seq_key(b'n', seq).to_vec());
    batch.remove(codec::event_key(source, id));
}

/// How often the idle flusher looks at the free space and sled's
/// headroom: well within sled's own flush interval, for a statvfs and an
/// fallocate that finds its blocks there.
const SPACE_WATCH: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) fn flusher(shared: Arc<Shared>, inbox: std::sync::mpsc::Receiver<ToFlusher>) {
    let alive = shared.health.enter(Component::Store, STALL_AFTER);
    let mut books = Flushes::new(shared.durable_seq.load(Ordering::SeqCst));
    loop {
        let first = match inbox.recv_timeout(SPACE_WATCH) {
            Ok(m) => m,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                alive.beat();
                // While nothing arrives the writer checks no space: another
                // process filling the disk is noticed here, and sled's
                // headroom is kept (`space`).
                let _ = shared.check_space();
                shared.space.keep_headroom();
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        alive.beat();
        let (files, reach) = books.take(std::iter::once(first).chain(inbox.try_iter()));
        // Groups an earlier sync covered need not wait for this one.
        answer(&shared, books.ready());
        if files.is_empty() {
            continue;
        }
        let started = Instant::now();
        let flushed = files
            .iter()
            .try_for_each(|f| f.sync_data())
            .map_err(|e| StoreError::Unavailable(format!("segment sync: {e}")))
            .inspect_err(|e| shared.fail("segment sync", e));
        metrics::histogram!(metric::STORE_FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(e) = flushed {
            let msg = e.to_string();
            for g in books.waiting.drain(..) {
                for (reply, _) in g.answers {
                    let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
            }
            break;
        }
        books.synced_to(reach);
        answer(&shared, books.ready());
    }
}

/// The flusher's books: how far the segments are synced, and the groups
/// whose index is written while their segment's sync has not yet ended.
struct Flushes {
    /// Every event up to this sequence number has its payload synced.
    synced: u64,
    waiting: Vec<Group>,
}

impl Flushes {
    fn new(synced: u64) -> Flushes {
        Flushes {
            synced,
            waiting: Vec::new(),
        }
    }

    /// Keeps the groups among `msgs`, and returns the segment files to
    /// sync with the sequence number that syncing them reaches: each
    /// segment once, however many groups appended to it. A second
    /// `fdatasync` of the same file is not free: it adds its own wait to
    /// every answer behind it (docs/BENCHMARKS.md).
    fn take(&mut self, msgs: impl IntoIterator<Item = ToFlusher>) -> (Vec<std::fs::File>, u64) {
        let mut files: Vec<(u64, std::fs::File)> = Vec::new();
        let mut reach = self.synced;
        for m in msgs {
            match m {
                ToFlusher::Sync {
                    segment,
                    file,
                    last_seq,
                } => {
                    if !files.iter().any(|(s, _)| *s == segment) {
                        files.push((segment, file));
                    }
                    reach = reach.max(last_seq);
                }
                ToFlusher::Indexed(group) => self.waiting.push(group),
            }
        }
        (files.into_iter().map(|(_, f)| f).collect(), reach)
    }

    /// A sync that started after the writer sent `reach` has ended.
    fn synced_to(&mut self, reach: u64) {
        self.synced = self.synced.max(reach);
    }

    /// The groups whose every event is now synced, in the order they came.
    fn ready(&mut self) -> Vec<Group> {
        let (ready, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|g| g.last_seq <= self.synced);
        self.waiting = waiting;
        ready
    }
}

/// Makes `groups` durable for dispatch, then answers their requests.
fn answer(shared: &Shared, groups: Vec<Group>) {
    let Some(last) = groups.iter().map(|g| g.last_seq).max() else {
        return;
    };
    shared.durable_seq.fetch_max(last, Ordering::SeqCst);
    // Dispatch takes only what is durable (`drain_inbox`).
    if groups.iter().any(|g| g.queued) {
        shared.wake_dispatcher();
    }
    for g in groups {
        for (reply, result) in g.answers {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(last_seq: u64) -> ToFlusher {
        let (reply, _) = tokio::sync::oneshot::channel();
        ToFlusher::Indexed(Group {
            answers: vec![(reply, Ok(IngestResult::Accepted { received_at_ms: 1 }))],
            last_seq,
            queued: false,
        })
    }

    fn sync(last_seq: u64) -> ToFlusher {
        sync_of(1, last_seq)
    }

    fn sync_of(segment: u64, last_seq: u64) -> ToFlusher {
        ToFlusher::Sync {
            segment,
            file: tempfile::tempfile().unwrap(),
            last_seq,
        }
    }

    fn seqs(groups: &[Group]) -> Vec<u64> {
        groups.iter().map(|g| g.last_seq).collect()
    }

    /// A group whose index is written before its segment's sync ends
    /// waits for the sync: answered earlier, a crash could take an
    /// acknowledged event.
    #[test]
    fn an_indexed_group_waits_for_its_sync() {
        let mut books = Flushes::new(10);
        let (files, reach) = books.take([sync(12), group(12)]);
        assert_eq!((files.len(), reach), (1, 12));
        assert_eq!(seqs(&books.ready()), Vec::<u64>::new());
        books.synced_to(reach);
        assert_eq!(seqs(&books.ready()), [12]);
        assert!(books.waiting.is_empty());
    }

    /// A sync that ended before its group's index was written answers the
    /// group as soon as it comes, with nothing more to sync; a later
    /// group's segment, handed over meanwhile, does not hold it back.
    #[test]
    fn a_synced_group_is_answered_when_indexed() {
        let mut books = Flushes::new(10);
        let (files, reach) = books.take([sync(12)]);
        assert_eq!(files.len(), 1);
        books.synced_to(reach);
        assert_eq!(seqs(&books.ready()), Vec::<u64>::new());
        let (files, reach) = books.take([group(12), sync(15)]);
        assert_eq!((files.len(), reach), (1, 15));
        assert_eq!(seqs(&books.ready()), [12]);
        books.synced_to(reach);
        let (files, _) = books.take([group(15)]);
        assert!(files.is_empty());
        assert_eq!(seqs(&books.ready()), [15]);
    }

    /// Groups that appended to two segments (the first one filled up)
    /// have both synced; the first's copies are not synced twice.
    #[test]
    fn each_segment_written_is_synced_once() {
        let mut books = Flushes::new(0);
        let (files, reach) = books.take([sync_of(1, 3), sync_of(1, 5), sync_of(2, 6), group(3)]);
        assert_eq!((files.len(), reach), (2, 6));
        books.synced_to(reach);
        assert_eq!(seqs(&books.ready()), [3]);
    }

    /// A group that stored nothing new (duplicates of events still being
    /// flushed, or refusals) waits for the sync of what it awaits, and
    /// groups are answered in the order they came.
    #[test]
    fn a_group_without_events_waits_for_the_earlier_sync() {
        let mut books = Flushes::new(10);
        let (files, reach) = books.take([sync(11), group(11), group(11), sync(13)]);
        assert_eq!((files.len(), reach), (1, 13), "one segment, synced once");
        assert_eq!(seqs(&books.ready()), Vec::<u64>::new());
        books.synced_to(11);
        assert_eq!(seqs(&books.ready()), [11, 11]);
        books.synced_to(reach);
        let (_, _) = books.take([group(13)]);
        assert_eq!(seqs(&books.ready()), [13]);
        // What was synced stays synced.
        books.synced_to(12);
        assert_eq!(books.synced, 13);
    }
}
