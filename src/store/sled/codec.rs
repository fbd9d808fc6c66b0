//! Keys and record encodings of the ingest keyspace.
//!
//! Everything an acknowledgement promises lives in one sled tree, written
//! by the writer in an order a crash can only cut (`Shared::write_group`).
//! sled charges several microseconds per key written, so an accepted event
//! costs as few keys as the queries need:
//!
//! | key | value |
//! |---|---|
//! | `e` source 0 event_id | `Ident` and the segment record's `segments::Pointer`, in LEB128 (`encode_event`, about 52 bytes) |
//! | `x` expires_at first_seq | the sequence numbers (8 bytes each) of a group's events that expire by then: the retention index, oldest first |
//! | `n` seq | `ArrivalEntry`: every event in arrival order, pointing at its segment record (which holds the `Arrival`: names, time, fields), with its dispatch outcome once dispatched (a parked one's reason, when the event's key gives it back, as the wait alone); past the cursor, the inbox |
//! | `T` tracking_number 0 seq | (empty): search by tracking number |
//! | `O` order_id 0 seq | (empty): search by order |
//! | `g` segment | `SegmentInfo`: when a payload segment may be deleted |
//! | `m/seq` | the last sequence number handed out |
//! | `m/cursor` | the last sequence number the state machine has dispatched |
//! | `s` shipment_id | `ShipmentRecord` JSON |
//! | `t` tracking_number | shipment_id |
//! | `k` partner 0 key | `idempotency::Record` JSON |
//! | `K` expires_at partner 0 key | (empty): the idempotency retention index |
//!
//! Neither the inbox nor the parked and dead events have keys of their own:
//! dispatch goes in arrival order, so "every dispatched arrival after the
//! cursor" is the inbox, and taking an event out of it is moving the cursor
//! in the same batch that writes its outcome into its arrival; events
//! parked under a tracking number are the ones the `T` index names under it
//! whose outcome is parked. The search entries carry their event's
//! sequence number in their key and nothing else, and a retention entry
//! the sequence numbers of every event of one group commit with the same
//! retention: the arrival under a sequence number names the event, so no
//! name is stored three times, and retention costs one key per group, not
//! per event. The writer thread inserts `e x n T O m/seq`;
//! the state thread writes `m/cursor s t k K` and outcomes into `n`. Source names cannot contain a 0 byte (config
//! allows only `[a-z0-9_-]`), so the first 0 splits a name.

use serde::{Deserialize, Serialize};

pub use crate::store::records::{
    DispatchOutcome, EventMeta, OrderRecord, OutcomeRecord, ShipmentRecord, Waiting,
};

pub const SEQ_KEY: &[u8] = b"m/seq";
pub const CURSOR_KEY: &[u8] = b"m/cursor";
/// How many events dispatch has parked, less those it has unparked: kept
/// by the state machine, in the batch that parks or unparks them.
pub const PARKED_KEY: &[u8] = b"m/parked";
/// How many parked events retention has forgotten: kept by the writer, in
/// the batch that forgets them. Parked now is the difference; two keys,
/// so that each has one writer.
pub const PARKED_SWEPT_KEY: &[u8] = b"m/parked-swept";
/// The same two counts for dead events (`waybill_dead_events`). A store
/// written before they were kept has neither: they are counted once, on
/// open.
pub const DEAD_KEY: &[u8] = b"m/dead";
pub const DEAD_SWEPT_KEY: &[u8] = b"m/dead-swept";

/// Events that are parked and events that are dead, among some set: what
/// a pass marks or unmarks, or what retention forgets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub parked: u64,
    pub dead: u64,
}

impl Held {
    pub fn of(a: &Arrival) -> Held {
        Held::of_outcome(a.outcome.as_ref())
    }

    pub fn of_outcome(outcome: Option<&OutcomeRecord>) -> Held {
        let is = |o| outcome.is_some_and(|r| r.outcome == o);
        Held {
            parked: u64::from(is(DispatchOutcome::Parked)),
            dead: u64::from(is(DispatchOutcome::Dead)),
        }
    }

    pub fn add(&mut self, other: Held) {
        self.parked += other.parked;
        self.dead += other.dead;
    }

    pub fn is_empty(&self) -> bool {
        *self == Held::default()
    }
}

pub fn event_key(source: &str, event_id: &str) -> Vec<u8> {
    prefixed(b'e', source, event_id)
}

/// An event key as words, for a message: `the identity of SOURCE/ID`.
pub fn describe_key(key: &[u8]) -> String {
    let rest = key.get(1..).unwrap_or_default();
    let mut parts = rest.splitn(2, |b| *b == 0);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default());
    format!("the identity of {source}/{id}")
}

fn prefixed(tag: u8, source: &str, event_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + source.len() + event_id.len());
    k.push(tag);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

/// `source 0 event_id`, the value of inbox and expiry entries.
pub fn name(source: &str, event_id: &str) -> Vec<u8> {
    let mut k = prefixed(0, source, event_id);
    k.remove(0);
    k
}

pub fn split_name(v: &[u8]) -> Option<(String, String)> {
    let at = v.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8(v.get(..at)?.to_vec()).ok()?,
        String::from_utf8(v.get(at + 1..)?.to_vec()).ok()?,
    ))
}

// Fixed-size keys written at constant offsets: the ranges cannot be out of
// bounds. Everything read back from disk goes through `get` instead.
#[allow(clippy::indexing_slicing)]
pub fn expiry_key(expires_at_ms: u64, seq: u64) -> [u8; 17] {
    let mut k = [b'x'; 17];
    k[1..9].copy_from_slice(&expires_at_ms.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

#[allow(clippy::indexing_slicing)]
pub fn seq_key(tag: u8, seq: u64) -> [u8; 9] {
    let mut k = [tag; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `tag` text 0 seq: an index entry under a tracking number or order id.
pub fn text_seq_key(tag: u8, text: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + text.len());
    k.push(tag);
    k.extend_from_slice(text.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The search entries of event `seq`: by tracking number and by order.
/// Written at intake and by replay, removed with the event; the one place
/// that says which an event has.
pub fn search_keys(
    seq: u64,
    tracking_number: Option<&str>,
    order_id: Option<&str>,
) -> impl Iterator<Item = Vec<u8>> {
    (tracking_number
        .map(|tn| text_seq_key(b'T', tn, seq))
        .into_iter())
    .chain(order_id.map(|o| text_seq_key(b'O', o, seq)))
}

/// The prefix of every `text_seq_key(tag, text, _)`.
pub fn text_prefix(tag: u8, text: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + text.len());
    k.push(tag);
    k.extend_from_slice(text.as_bytes());
    k.push(0);
    k
}

pub fn seq_suffix(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        k.get(k.len().checked_sub(8)?..)?.try_into().ok()?,
    ))
}

/// `k` partner 0 key: an idempotency record, scoped per partner.
pub fn idem_key(partner: &str, key: &str) -> Vec<u8> {
    prefixed(b'k', partner, key)
}

/// `K` expires_at partner 0 key: the idempotency retention index.
pub fn idem_expiry_key(expires_at_ms: u64, partner: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + partner.len() + key.len());
    k.push(b'K');
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(&name(partner, key));
    k
}

pub fn parse_idem_expiry_key(k: &[u8]) -> Option<(u64, String, String)> {
    if k.len() < 10 || k.first() != Some(&b'K') {
        return None;
    }
    let at = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let (partner, key) = split_name(k.get(9..)?)?;
    Some((at, partner, key))
}

pub fn shipment_key(shipment_id: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(shipment_id.as_bytes());
    k
}

pub fn tracking_key(tracking_number: &str) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(tracking_number.as_bytes());
    k
}

/// A retention entry's value: sequence numbers, 8 bytes each.
pub fn encode_seqs(seqs: &[u64]) -> Vec<u8> {
    seqs.iter().flat_map(|s| s.to_be_bytes()).collect()
}

pub fn decode_seqs(v: &[u8]) -> impl Iterator<Item = u64> + '_ {
    v.chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
}

pub fn parse_expiry_key(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != 17 || k.first() != Some(&b'x') {
        return None;
    }
    Some((
        u64::from_be_bytes(k.get(1..9)?.try_into().ok()?),
        u64::from_be_bytes(k.get(9..)?.try_into().ok()?),
    ))
}

pub fn parse_seq_key(tag: u8, k: &[u8]) -> Option<u64> {
    if k.len() != 9 || k.first() != Some(&tag) {
        return None;
    }
    Some(u64::from_be_bytes(k.get(1..)?.try_into().ok()?))
}

pub fn decode_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// One arrival, in the `n` index: enough for the state machine to apply
/// the event without reading or parsing its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub source: String,
    pub event_id: String,
    /// Whether the event is for the state machine (else: stored only).
    pub dispatch: bool,
    pub received_at_ms: u64,
    pub fields: Option<crate::webhook::mapping::Fields>,
    /// What dispatch did; set once the cursor has passed this arrival.
    pub outcome: Option<OutcomeRecord>,
}

/// Arrival flags: what follows the fixed head.
const DISPATCH: u8 = 1;
const FIELDS: u8 = 2;
const OUTCOME: u8 = 4;

impl Arrival {
    /// What sled keeps of this arrival, its segment record at `pointer`.
    /// A parked outcome's reason that the event's key gives back
    /// (`OutcomeRecord::waiting_for`) is kept as the wait alone.
    pub fn entry(&self, pointer: super::segments::Pointer) -> ArrivalEntry {
        let waiting = self
            .outcome
            .as_ref()
            .zip(self.fields.as_ref())
            .and_then(|(o, f)| o.waiting_for(&f.key));
        let mut outcome = self.outcome.clone();
        if let Some(o) = outcome.as_mut().filter(|_| waiting.is_some()) {
            o.reason = None;
        }
        ArrivalEntry {
            dispatch: self.dispatch,
            pointer,
            outcome,
            waiting,
        }
    }

    /// Binary, as a segment record holds it (`Logged::arrival`, with no
    /// outcome) and as layout 4 kept it in sled: a flags byte, the arrival
    /// time (u64), source and event id; then, when present, the mapped
    /// fields (key, status, occurred_at) and the outcome (its kind,
    /// attempts, time, reason, shipment id). Strings are a LEB128 length
    /// and their bytes; optional ones count the length plus one, 0 for
    /// none.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.source.len() + self.event_id.len());
        let mut flags = 0;
        if self.dispatch {
            flags |= DISPATCH;
        }
        if self.fields.is_some() {
            flags |= FIELDS;
        }
        if self.outcome.is_some() {
            flags |= OUTCOME;
        }
        v.push(flags);
        v.extend_from_slice(&self.received_at_ms.to_be_bytes());
        put_str(&mut v, &self.source);
        put_str(&mut v, &self.event_id);
        if let Some(f) = &self.fields {
            put_str(&mut v, &f.key);
            put_str(&mut v, &f.status);
            put_opt(&mut v, f.occurred_at.as_deref());
        }
        if let Some(o) = &self.outcome {
            put_outcome(&mut v, o);
        }
        v
    }

    /// None for anything that is not exactly one encoded arrival.
    pub fn decode(v: &[u8]) -> Option<Arrival> {
        let mut r = Reader(v);
        let flags = r.byte()?;
        if flags & !(DISPATCH | FIELDS | OUTCOME) != 0 {
            return None;
        }
        let received_at_ms = r.u64()?;
        let source = r.string()?;
        let event_id = r.string()?;
        let fields = if flags & FIELDS != 0 {
            Some(crate::webhook::mapping::Fields {
                key: r.string()?,
                status: r.string()?,
                occurred_at: r.opt()?,
            })
        } else {
            None
        };
        let outcome = if flags & OUTCOME != 0 {
            Some(r.outcome()?)
        } else {
            None
        };
        r.0.is_empty().then_some(Arrival {
            source,
            event_id,
            dispatch: flags & DISPATCH != 0,
            received_at_ms,
            fields,
            outcome,
        })
    }
}

/// What sled keeps of an arrival (`n` seq): whether the event is for the
/// state machine, where its segment record is, and what dispatch did with
/// it. The record holds the rest of the arrival (`Logged::arrival`: the
/// names, the time, the mapped fields), written once; only this small
/// entry is rewritten with the outcome, and only it stays in sled's cache
/// and log for the event's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrivalEntry {
    pub dispatch: bool,
    pub pointer: super::segments::Pointer,
    /// Without its reason when `waiting` gives it back.
    outcome: Option<OutcomeRecord>,
    waiting: Option<Waiting>,
}

/// Marks an `ArrivalEntry`, so that no entry decodes as a whole `Arrival`
/// (the form of layout 4) nor one of those as an entry.
const ENTRY: u8 = 0x40;
/// A parked outcome whose reason is the one its wait gives for the
/// event's key, which the segment record holds (since layout 7).
const WAITING_SHIPMENT: u8 = 0x08;
const WAITING_ORDER: u8 = 0x10;

impl ArrivalEntry {
    /// An entry that keeps `outcome` as it is, reason and all: what
    /// layouts 5 and 6 wrote, and what the writer writes before dispatch.
    pub fn new(
        dispatch: bool,
        pointer: super::segments::Pointer,
        outcome: Option<OutcomeRecord>,
    ) -> ArrivalEntry {
        ArrivalEntry {
            dispatch,
            pointer,
            outcome,
            waiting: None,
        }
    }

    /// Whether the event is parked or dead, for the counts.
    pub fn held(&self) -> Held {
        Held::of_outcome(self.outcome.as_ref())
    }

    /// Whether the outcome's reason must be given back from the event's
    /// key, which only its segment record holds.
    pub fn needs_fields(&self) -> bool {
        self.waiting.is_some()
    }

    /// The outcome, its reason given back from `fields` when the entry
    /// keeps the wait alone. None inside when there is no outcome yet;
    /// None outside when the reason needs fields the arrival lacks: the
    /// entry does not belong to that arrival.
    pub fn outcome(
        &self,
        fields: Option<&crate::webhook::mapping::Fields>,
    ) -> Option<Option<OutcomeRecord>> {
        let Some(mut outcome) = self.outcome.clone() else {
            return Some(None);
        };
        if let Some(w) = self.waiting {
            outcome.reason = Some(w.reason(&fields?.key));
        }
        Some(Some(outcome))
    }

    /// A flags byte (`ENTRY`, `DISPATCH`, `OUTCOME`, one of the
    /// `WAITING_*`), the pointer's segment, offset and length as LEB128,
    /// then the outcome as an `Arrival` holds it, less its reason when a
    /// wait gives that back.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        let mut flags = ENTRY;
        if self.dispatch {
            flags |= DISPATCH;
        }
        if self.outcome.is_some() {
            flags |= OUTCOME;
        }
        flags |= match self.waiting {
            None => 0,
            Some(Waiting::Shipment) => WAITING_SHIPMENT,
            Some(Waiting::Order) => WAITING_ORDER,
        };
        v.push(flags);
        put_varint(&mut v, self.pointer.segment);
        put_varint(&mut v, self.pointer.offset);
        put_varint(&mut v, u64::from(self.pointer.len));
        if let Some(o) = &self.outcome {
            if self.waiting.is_some() {
                put_outcome_head(&mut v, o);
                put_opt(&mut v, o.shipment_id.as_ref().map(|id| id.as_str()));
            } else {
                put_outcome(&mut v, o);
            }
        }
        v
    }

    /// None for anything that is not exactly one encoded entry.
    pub fn decode(v: &[u8]) -> Option<ArrivalEntry> {
        let mut r = Reader(v);
        let flags = r.byte()?;
        let known = ENTRY | DISPATCH | OUTCOME | WAITING_SHIPMENT | WAITING_ORDER;
        if flags & !known != 0 || flags & ENTRY == 0 {
            return None;
        }
        let waiting = match (flags & WAITING_SHIPMENT != 0, flags & WAITING_ORDER != 0) {
            (false, false) => None,
            (true, false) => Some(Waiting::Shipment),
            (false, true) => Some(Waiting::Order),
            (true, true) => return None,
        };
        let pointer = super::segments::Pointer {
            segment: r.varint()?,
            offset: r.varint()?,
            len: u32::try_from(r.varint()?).ok()?,
        };
        let outcome = match (flags & OUTCOME != 0, waiting) {
            (false, None) => None,
            (false, Some(_)) => return None,
            (true, None) => Some(r.outcome()?),
            (true, Some(_)) => Some(r.waiting_outcome()?),
        };
        r.0.is_empty().then_some(ArrivalEntry {
            dispatch: flags & DISPATCH != 0,
            pointer,
            outcome,
            waiting,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    pub received_at_ms: u64,
    pub expires_at_ms: u64,
    pub seq: u64,
    pub content_hash: [u8; 32],
}

impl Ident {
    pub fn encode(&self) -> [u8; 56] {
        let mut v = [0u8; 56];
        v[..8].copy_from_slice(&self.received_at_ms.to_be_bytes());
        v[8..16].copy_from_slice(&self.expires_at_ms.to_be_bytes());
        v[16..24].copy_from_slice(&self.seq.to_be_bytes());
        v[24..].copy_from_slice(&self.content_hash);
        v
    }

    pub fn decode(v: &[u8]) -> Option<Ident> {
        if v.len() != 56 {
            return None;
        }
        Some(Ident {
            received_at_ms: u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
            expires_at_ms: u64::from_be_bytes(v.get(8..16)?.try_into().ok()?),
            seq: u64::from_be_bytes(v.get(16..24)?.try_into().ok()?),
            content_hash: v.get(24..)?.try_into().ok()?,
        })
    }
}

/// `D`: a sequence number up to which every event was flushed with its
/// payload, as of the last group commit.
pub const DURABLE_KEY: &[u8] = b"D";

/// `F`: the store's layout version.
pub const FORMAT_KEY: &[u8] = b"F";

/// `g` segment: what retention needs to know of a payload segment.
pub fn segment_key(id: u64) -> [u8; 9] {
    seq_key(b'g', id)
}

/// A segment's retention facts: when its last event expires, and its
/// newest event's sequence (it may go once the inbox is past it); and how
/// far into it the index goes, so that on open only what lies beyond is
/// read back (`replay_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub max_expires_at_ms: u64,
    pub last_seq: u64,
    #[serde(default)]
    pub end: u64,
}

impl SegmentInfo {
    /// What an entry that cannot be read stands for: its events' expiries
    /// are unknown, so retention never deletes the segment (taken as zeros
    /// or as the newer events' alone, a longer-lived older event's payload
    /// would go with it), and on open it is read back from its start.
    pub const KEEP: SegmentInfo = SegmentInfo {
        max_expires_at_ms: u64::MAX,
        last_seq: 0,
        end: 0,
    };

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("SegmentInfo serialises: numbers only")
    }

    /// None for anything that is not one segment's entry.
    pub fn decode(v: &[u8]) -> Option<SegmentInfo> {
        serde_json::from_slice(v).ok()
    }
}

pub fn encode_meta(meta: &EventMeta) -> Vec<u8> {
    serde_json::to_vec(meta).expect("EventMeta serialises: strings and numbers only")
}

/// Metadata and body, length-prefixed: a payload segment's record.
pub fn encode_payload(meta: &EventMeta, body: &[u8]) -> Vec<u8> {
    frame(&encode_meta(meta), body)
}

/// `len | meta | rest`.
pub fn frame(meta: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + meta.len() + rest.len());
    v.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    v.extend_from_slice(meta);
    v.extend_from_slice(rest);
    v
}

/// What a segment record carries besides its payload: everything the
/// event's index entries are made of, so that the segments alone can
/// rebuild an index that sled had not flushed yet (`Store::open`).
/// Written by `encode_logged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged<'a> {
    pub ident: Ident,
    /// `encode_index_meta`.
    pub index_meta: &'a [u8],
    /// `Arrival::encode`, as accepted (no outcome); it names the event,
    /// and so its key.
    pub arrival: &'a [u8],
}

/// A segment record: the identity, then the index metadata and arrival
/// (each a u32 length and its bytes), then the payload as the request's
/// task packed it (`lz4(encode_payload)`), to the end.
pub fn encode_logged(logged: &Logged<'_>, packed: &[u8]) -> Vec<u8> {
    let parts = [logged.index_meta, logged.arrival];
    let mut v =
        Vec::with_capacity(56 + 8 + parts.iter().map(|p| p.len()).sum::<usize>() + packed.len());
    v.extend_from_slice(&logged.ident.encode());
    for part in parts {
        v.extend_from_slice(&(part.len() as u32).to_be_bytes());
        v.extend_from_slice(part);
    }
    v.extend_from_slice(packed);
    v
}

/// A segment record's index part and packed payload.
pub fn decode_logged(v: &[u8]) -> Option<(Logged<'_>, &[u8])> {
    let ident = Ident::decode(v.get(..56)?)?;
    let mut rest = v.get(56..)?;
    let mut part = || -> Option<&[u8]> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let (p, tail) = rest.get(4..)?.split_at_checked(len)?;
        rest = tail;
        Some(p)
    };
    let (index_meta, arrival) = (part()?, part()?);
    Some((
        Logged {
            ident,
            index_meta,
            arrival,
        },
        rest,
    ))
}

/// The metadata and body of a segment record's payload, unpacked.
pub fn unpack_payload(packed: &[u8]) -> Option<(EventMeta, Vec<u8>)> {
    decode_payload(&crate::store::packed::unpack(packed)?)
}

/// The packed form of a payload, as a segment record holds it.
pub fn pack_payload(meta: &EventMeta, body: &[u8]) -> Vec<u8> {
    crate::store::packed::pack(&encode_payload(meta, body))
}

/// The metadata and body of a payload segment's record.
pub fn decode_payload(v: &[u8]) -> Option<(EventMeta, Vec<u8>)> {
    let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let json = v.get(4..4usize.checked_add(len)?)?;
    let meta = serde_json::from_slice(json).ok()?;
    Some((meta, v.get(4 + len..)?.to_vec()))
}

/// The length of an identity record of layout 6: the identity (56 bytes)
/// and its segment record's pointer (20).
const SLIM_EVENT_RECORD: usize = 56 + super::segments::Pointer::ENCODED;

/// Marks an identity record of layout 7. One of an earlier layout begins
/// with the top byte of its arrival time in milliseconds, which is 0 for
/// any time a clock gives.
const IDENTITY: u8 = 0x80;

/// An identity record (`e` source 0 event_id), about 52 bytes: `IDENTITY`,
/// then as LEB128 the arrival time, the time from it to expiry, the
/// sequence number and the segment record's pointer (segment, offset,
/// length), then the content hash. What a search shows of the event
/// (`encode_index_meta`) is in the segment record, read with its arrival.
pub fn encode_event(ident: &Ident, pointer: &super::segments::Pointer) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.push(IDENTITY);
    put_varint(&mut v, ident.received_at_ms);
    // Wrapping, so that any pair of times has one encoding.
    put_varint(
        &mut v,
        ident.expires_at_ms.wrapping_sub(ident.received_at_ms),
    );
    put_varint(&mut v, ident.seq);
    put_varint(&mut v, pointer.segment);
    put_varint(&mut v, pointer.offset);
    put_varint(&mut v, u64::from(pointer.len));
    v.extend_from_slice(&ident.content_hash);
    v
}

/// The searchable part of an event's metadata, in binary: a flags byte
/// (bit 0: dispatched), then the event type, tracking number and order id,
/// each a u32 length (`u32::MAX` for none) and its bytes. Headers live in
/// the payload only; the arrival time is the identity's.
pub fn encode_index_meta(meta: &EventMeta) -> Vec<u8> {
    let strings = [&meta.event_type, &meta.tracking_number, &meta.order_id];
    let mut v = Vec::with_capacity(
        13 + strings
            .iter()
            .flat_map(|s| s.iter())
            .map(String::len)
            .sum::<usize>(),
    );
    v.push(u8::from(meta.dispatch));
    for s in strings {
        match s {
            Some(s) => {
                v.extend_from_slice(&(s.len() as u32).to_be_bytes());
                v.extend_from_slice(s.as_bytes());
            }
            None => v.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    v
}

pub fn decode_index_meta(v: &[u8], received_at_ms: u64) -> Option<EventMeta> {
    let mut rest = v.get(1..)?;
    let mut next = || -> Option<Option<String>> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = rest.get(4..)?;
        if len == u32::MAX {
            return Some(None);
        }
        let (s, tail) = rest.split_at_checked(len as usize)?;
        rest = tail;
        Some(Some(String::from_utf8(s.to_vec()).ok()?))
    };
    let (event_type, tracking_number, order_id) = (next()?, next()?, next()?);
    Some(EventMeta {
        received_at_ms,
        event_type,
        dispatch: v.first()? & 1 == 1,
        headers: Vec::new(),
        tracking_number,
        order_id,
    })
}

/// The identity an identity record holds.
pub fn event_ident(v: &[u8]) -> Option<Ident> {
    decode_event(v).map(|(ident, _)| ident)
}

/// Exactly one identity record: the identity and the pointer.
pub fn decode_event(v: &[u8]) -> Option<(Ident, super::segments::Pointer)> {
    let mut r = Reader(v);
    if r.byte()? != IDENTITY {
        return None;
    }
    let received_at_ms = r.varint()?;
    let expires_at_ms = received_at_ms.wrapping_add(r.varint()?);
    let seq = r.varint()?;
    let pointer = super::segments::Pointer {
        segment: r.varint()?,
        offset: r.varint()?,
        len: u32::try_from(r.varint()?).ok()?,
    };
    let ident = Ident {
        received_at_ms,
        expires_at_ms,
        seq,
        content_hash: r.0.try_into().ok()?,
    };
    Some((ident, pointer))
}

/// An identity record as layouts 4 to 6 wrote it: the identity and the
/// pointer in fixed widths (layout 6), followed by the index metadata
/// (layouts 4 and 5). None for one of this layout, which never reads as
/// one of these (`IDENTITY`), or for one too short to be either.
pub fn older_event(v: &[u8]) -> Option<(Ident, super::segments::Pointer)> {
    if v.first() == Some(&IDENTITY) {
        return None;
    }
    let head = v.get(..SLIM_EVENT_RECORD)?;
    Some((
        Ident::decode(head.get(..56)?)?,
        super::segments::Pointer::decode(head.get(56..)?)?,
    ))
}

fn put_varint(v: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        v.push((n as u8) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    put_varint(v, s.len() as u64);
    v.extend_from_slice(s.as_bytes());
}

fn put_opt(v: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => v.push(0),
        Some(s) => {
            put_varint(v, s.len() as u64 + 1);
            v.extend_from_slice(s.as_bytes());
        }
    }
}

fn put_outcome(v: &mut Vec<u8>, o: &OutcomeRecord) {
    put_outcome_head(v, o);
    put_opt(v, o.reason.as_deref());
    put_opt(v, o.shipment_id.as_ref().map(|id| id.as_str()));
}

/// An outcome's kind, attempts and time.
fn put_outcome_head(v: &mut Vec<u8>, o: &OutcomeRecord) {
    v.push(o.outcome.code());
    put_varint(v, u64::from(o.attempts));
    v.extend_from_slice(&o.at_ms.to_be_bytes());
}

/// Reads what `put_*` wrote; None at the first thing that does not fit.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }

    /// The shortest LEB128 form only (what `put_varint` writes), so that a
    /// record has one encoding.
    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return None;
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return (shift == 0 || b != 0).then_some(n);
            }
        }
        None
    }

    fn bytes(&mut self, len: u64) -> Option<String> {
        let (s, rest) = self.0.split_at_checked(usize::try_from(len).ok()?)?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }

    fn string(&mut self) -> Option<String> {
        let len = self.varint()?;
        self.bytes(len)
    }

    fn outcome(&mut self) -> Option<OutcomeRecord> {
        let mut o = self.outcome_head()?;
        o.reason = self.opt()?;
        o.shipment_id = self.opt()?.map(crate::domain::ids::ShipmentId::from);
        Some(o)
    }

    /// A parked outcome kept without its reason: no other kind has one to
    /// give back.
    fn waiting_outcome(&mut self) -> Option<OutcomeRecord> {
        let mut o = self.outcome_head()?;
        o.shipment_id = self.opt()?.map(crate::domain::ids::ShipmentId::from);
        (o.outcome == DispatchOutcome::Parked).then_some(o)
    }

    fn outcome_head(&mut self) -> Option<OutcomeRecord> {
        Some(OutcomeRecord {
            outcome: DispatchOutcome::from_code(self.byte()?)?,
            attempts: u32::try_from(self.varint()?).ok()?,
            at_ms: self.u64()?,
            reason: None,
            shipment_id: None,
        })
    }

    /// An optional string: None when it is absent, Some(None) when the
    /// record does not fit.
    fn opt(&mut self) -> Option<Option<String>> {
        match self.varint()? {
            0 => Some(None),
            n => self.bytes(n - 1).map(Some),
        }
    }
}

/// `o` partner 0 order_id: an order.
pub fn order_key(partner: &str, order_id: &str) -> Vec<u8> {
    prefixed(b'o', partner, order_id)
}

/// `l` partner 0 created_at order_id: a partner's orders, oldest first.
pub fn order_list_key(partner: &str, created_at_ms: u64, order_id: &str) -> Vec<u8> {
    let mut k = order_list_prefix(partner);
    k.extend_from_slice(&created_at_ms.to_be_bytes());
    k.extend_from_slice(order_id.as_bytes());
    k
}

pub fn order_list_prefix(partner: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + partner.len());
    k.push(b'l');
    k.extend_from_slice(partner.as_bytes());
    k.push(0);
    k
}

/// The order id at the end of an `order_list_key`.
pub fn order_from_list_key(partner: &str, k: &[u8]) -> Option<String> {
    let id = k.get(order_list_prefix(partner).len() + 8..)?;
    String::from_utf8(id.to_vec()).ok()
}

/// `P` order_id 0 partner: which partners have an order with this id, for
/// payment events, which name the order only.
pub fn order_partner_key(order_id: &str, partner: &str) -> Vec<u8> {
    prefixed(b'P', order_id, partner)
}

pub fn order_partner_prefix(order_id: &str) -> Vec<u8> {
    prefixed(b'P', order_id, "")
}

/// `f` due 0 partner 0 order_id: an order waiting for background
/// fulfilment, ordered by when it is next due.
pub fn fulfil_key(due_ms: u64, partner: &str, order_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + partner.len() + order_id.len());
    k.push(b'f');
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(&name(partner, order_id));
    k
}

pub fn parse_fulfil_key(k: &[u8]) -> Option<(u64, String, String)> {
    if k.first() != Some(&b'f') {
        return None;
    }
    let due = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let (partner, order_id) = split_name(k.get(9..)?)?;
    Some((due, partner, order_id))
}

/// The queue of owed label voids: a shipment's entry, ordered by when it
/// is next due.
pub fn void_key(due_ms: u64, shipment_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + shipment_id.len());
    k.push(b'v');
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(shipment_id.as_bytes());
    k
}

/// The queue of owed voids, all of it.
pub const VOID_PREFIX: &[u8] = b"v";

pub fn parse_void_key(k: &[u8]) -> Option<(u64, String)> {
    if k.first() != Some(&b'v') {
        return None;
    }
    let due = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let id = std::str::from_utf8(k.get(9..)?).ok()?;
    Some((due, id.to_string()))
}

/// An order's stored form.
pub fn encode_order(rec: &OrderRecord) -> Vec<u8> {
    serde_json::to_vec(rec).expect("an order serialises: strings, numbers and JSON values only")
}

/// A shipment's stored form.
pub fn encode_shipment(rec: &ShipmentRecord) -> Vec<u8> {
    serde_json::to_vec(rec).expect("a shipment serialises: strings, numbers and JSON values only")
}

/// An idempotency record's stored form.
pub fn encode_record(rec: &crate::idempotency::Record) -> Vec<u8> {
    serde_json::to_vec(rec).expect("a key record serialises: strings and numbers only")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_round_trips() {
        let i = Ident {
            received_at_ms: 1,
            expires_at_ms: u64::MAX,
            seq: 42,
            content_hash: [7; 32],
        };
        assert_eq!(Ident::decode(&i.encode()), Some(i));
        assert_eq!(Ident::decode(&[0; 55]), None);
    }

    #[test]
    fn event_round_trips_and_keys_order_by_number() {
        let meta = EventMeta {
            received_at_ms: 9,
            event_type: Some("t".into()),
            dispatch: true,
            headers: vec![("a".into(), "b".into())],
            tracking_number: None,
            order_id: Some("o".into()),
        };
        let body = b"{\"x\":\x00}";
        let ident = Ident {
            received_at_ms: 9,
            expires_at_ms: 10,
            seq: 3,
            content_hash: [1; 32],
        };
        let pointer = super::super::segments::Pointer {
            segment: 9,
            offset: 1 << 40,
            len: 700,
        };
        let enc = encode_event(&ident, &pointer);
        assert_eq!(event_ident(&enc), Some(ident));
        assert_eq!(decode_event(&enc), Some((ident, pointer)));
        assert_eq!(older_event(&enc), None);
        // Layout 6: fixed widths; 5 and earlier: the index metadata after
        // the pointer.
        let slim = [&ident.encode()[..], &pointer.encode()].concat();
        let fat = [slim.clone(), encode_index_meta(&meta)].concat();
        for older in [&slim, &fat] {
            assert_eq!(decode_event(older), None);
            assert_eq!(older_event(older), Some((ident, pointer)));
        }
        let indexed = EventMeta {
            headers: Vec::new(),
            ..meta.clone()
        };
        assert_eq!(
            decode_index_meta(&encode_index_meta(&meta), 9),
            Some(indexed)
        );
        assert_eq!(
            decode_payload(&encode_payload(&meta, body)),
            Some((meta, body.to_vec()))
        );
        // Every truncation of a record is refused, never misread.
        for cut in 0..enc.len() {
            assert_eq!(decode_event(&enc[..cut]), None, "cut at {cut}");
        }
        assert!(seq_key(b'n', 255) < seq_key(b'n', 256));
        assert!(void_key(255, "shp_z") < void_key(256, "shp_a"));
        assert_eq!(
            parse_void_key(&void_key(77, "shp_1")),
            Some((77, "shp_1".to_string()))
        );
        assert_eq!(parse_void_key(&fulfil_key(77, "p", "o")), None);
        let a = Arrival {
            source: "s".into(),
            event_id: "e".into(),
            dispatch: true,
            received_at_ms: 5,
            fields: None,
            outcome: None,
        };
        assert_eq!(Arrival::decode(&a.encode()), Some(a));
        let full = Arrival {
            source: "easypost".into(),
            event_id: "evt_\u{e9}1".into(),
            dispatch: true,
            received_at_ms: 1_764_000_000_000,
            fields: Some(crate::webhook::mapping::Fields {
                key: "1Z999".into(),
                status: "in_transit".into(),
                occurred_at: Some("\"2026-11-30T08:00:00Z\"".into()),
            }),
            outcome: Some(OutcomeRecord {
                outcome: DispatchOutcome::Parked,
                reason: Some("no shipment".into()),
                shipment_id: None,
                attempts: 300,
                at_ms: 7,
            }),
        };
        let enc = full.encode();
        assert_eq!(Arrival::decode(&enc), Some(full));
        for cut in 0..enc.len() {
            assert_eq!(Arrival::decode(&enc[..cut]), None, "cut at {cut}");
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert_eq!(Arrival::decode(&longer), None, "trailing bytes");
        let arrival_bytes = enc.clone();
        let logged = Logged {
            ident: Ident {
                received_at_ms: 1,
                expires_at_ms: 2,
                seq: 3,
                content_hash: [4; 32],
            },
            index_meta: b"meta",
            arrival: &arrival_bytes,
        };
        let record = encode_logged(&logged, b"packed payload");
        assert_eq!(
            decode_logged(&record),
            Some((logged.clone(), &b"packed payload"[..]))
        );
        // A record cut inside its index part is refused.
        for cut in 0..56 + 8 + 4 + arrival_bytes.len() {
            assert_eq!(decode_logged(&record[..cut]), None, "cut at {cut}");
        }
        let mut r = Reader(&[0x80, 0x00]);
        assert_eq!(r.varint(), None, "a padded varint");
        let mut v = Vec::new();
        put_varint(&mut v, u64::MAX);
        assert_eq!(Reader(&v).varint(), Some(u64::MAX));
        let mut over = v.clone();
        if let Some(last) = over.last_mut() {
            *last = 0x02;
        }
        assert_eq!(Reader(&over).varint(), None, "past 64 bits");
        assert!(expiry_key(1, 999) < expiry_key(2, 0));
        assert_eq!(parse_expiry_key(&expiry_key(5, 6)), Some((5, 6)));
        let seqs = [1, 256, u64::MAX];
        assert_eq!(decode_seqs(&encode_seqs(&seqs)).collect::<Vec<_>>(), seqs);
        assert_eq!(
            parse_idem_expiry_key(&idem_expiry_key(9, "acme", "k/1")),
            Some((9, "acme".into(), "k/1".into()))
        );
        assert!(idem_expiry_key(1, "z", "z") < idem_expiry_key(2, "a", "a"));
        assert_eq!(parse_seq_key(b'n', &seq_key(b'n', 77)), Some(77));
        assert_eq!(parse_seq_key(b'd', &seq_key(b'n', 77)), None);
        assert_eq!(
            split_name(&name("src", "id\0with nul")),
            Some(("src".into(), "id\0with nul".into()))
        );
    }

    fn arrival() -> impl proptest::strategy::Strategy<Value = Arrival> {
        use proptest::prelude::*;
        let text = || ".{0,40}";
        let fields = proptest::option::of((text(), text(), proptest::option::of(text())).prop_map(
            |(key, status, occurred_at)| crate::webhook::mapping::Fields {
                key,
                status,
                occurred_at,
            },
        ));
        let outcome = proptest::option::of(
            (
                0u8..6,
                any::<u32>(),
                any::<u64>(),
                proptest::option::of(text()),
                proptest::option::of(text()),
            )
                .prop_map(|(code, attempts, at_ms, reason, shipment_id)| {
                    OutcomeRecord {
                        outcome: DispatchOutcome::from_code(code).unwrap(),
                        reason,
                        shipment_id: shipment_id.map(Into::into),
                        attempts,
                        at_ms,
                    }
                }),
        );
        (text(), text(), any::<bool>(), any::<u64>(), fields, outcome).prop_map(
            |(source, event_id, dispatch, received_at_ms, fields, outcome)| Arrival {
                source,
                event_id,
                dispatch,
                received_at_ms,
                fields,
                outcome,
            },
        )
    }

    proptest::proptest! {
        /// Every arrival reads back as written, unicode and extremes
        /// included.
        #[test]
        fn arrivals_round_trip(a in arrival()) {
            proptest::prop_assert_eq!(Arrival::decode(&a.encode()), Some(a));
        }

        /// Every entry reads back as written, cut anywhere it is refused,
        /// and no entry reads as a whole arrival nor an arrival as an
        /// entry: a store half brought from layout 4 tells them apart.
        #[test]
        fn entries_round_trip_and_are_never_taken_for_arrivals(
            a in arrival(),
            segment in proptest::prelude::any::<u64>(),
            offset in proptest::prelude::any::<u64>(),
            len in proptest::prelude::any::<u32>(),
        ) {
            let pointer = crate::store::sled::segments::Pointer { segment, offset, len };
            let entry = a.entry(pointer);
            let enc = entry.encode();
            proptest::prop_assert_eq!(ArrivalEntry::decode(&enc), Some(entry));
            for cut in 0..enc.len() {
                proptest::prop_assert_eq!(ArrivalEntry::decode(&enc[..cut]), None);
            }
            proptest::prop_assert_eq!(Arrival::decode(&enc), None);
            proptest::prop_assert_eq!(ArrivalEntry::decode(&a.encode()), None);
        }

        /// A parked outcome whose reason its wait gives for the event's
        /// key is kept without the reason, and read back whole with the
        /// fields of the arrival it belongs to; without them it is
        /// refused, not given an empty reason. Any other reason is kept
        /// as it is.
        #[test]
        fn a_reason_the_key_gives_back_is_kept_as_its_wait(
            a in arrival(),
            key in ".{0,40}",
            shipment in proptest::prelude::any::<bool>(),
            other in ".{0,40}",
        ) {
            let waiting = if shipment { Waiting::Shipment } else { Waiting::Order };
            let pointer = crate::store::sled::segments::Pointer { segment: 3, offset: 9, len: 700 };
            let fields = crate::webhook::mapping::Fields {
                key: key.clone(),
                status: "in_transit".into(),
                occurred_at: None,
            };
            let mut a = Arrival { fields: Some(fields), ..a };
            let mut outcome = OutcomeRecord::attempt(1);
            if shipment {
                outcome.park_for_tracking(&key);
            } else {
                outcome.park_for_order(&key);
            }
            a.outcome = Some(outcome.clone());
            let reason = outcome.reason.clone().unwrap_or_default();
            proptest::prop_assert_eq!(outcome.waiting_for(&key), Some(waiting));

            let entry = a.entry(pointer);
            proptest::prop_assert!(entry.needs_fields());
            let enc = entry.encode();
            let stated = ArrivalEntry::new(a.dispatch, pointer, a.outcome.clone()).encode();
            let mut reason_bytes = Vec::new();
            put_opt(&mut reason_bytes, Some(&reason));
            proptest::prop_assert_eq!(enc.len() + reason_bytes.len(), stated.len());
            let read = ArrivalEntry::decode(&enc);
            proptest::prop_assert_eq!(read.as_ref(), Some(&entry));
            proptest::prop_assert_eq!(entry.outcome(a.fields.as_ref()), Some(a.outcome.clone()));
            proptest::prop_assert_eq!(entry.outcome(None), None);
            proptest::prop_assert_eq!(entry.held(), Held::of(&a));
            for cut in 0..enc.len() {
                proptest::prop_assert_eq!(ArrivalEntry::decode(&enc[..cut]), None);
            }

            // Another reason, or another outcome, stays as it was.
            let mut kept = outcome.clone();
            kept.reason = Some(other.clone());
            a.outcome = Some(kept.clone());
            let entry = a.entry(pointer);
            proptest::prop_assert_eq!(entry.needs_fields(), waiting.reason(&key) == other);
            proptest::prop_assert_eq!(entry.outcome(a.fields.as_ref()), Some(Some(kept)));
            let mut applied = outcome;
            applied.outcome = DispatchOutcome::Applied;
            a.outcome = Some(applied.clone());
            let entry = a.entry(pointer);
            proptest::prop_assert!(!entry.needs_fields());
            proptest::prop_assert_eq!(entry.outcome(None), Some(Some(applied)));
        }

        /// Every identity record reads back as written, cut or extended
        /// it is refused, and one of this layout never reads as an older
        /// one nor, for any time a clock gives, an older one as this.
        #[test]
        fn identity_records_round_trip_and_are_never_taken_for_older_ones(
            received_at_ms in proptest::prelude::any::<u64>(),
            expires_at_ms in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
            content_hash in proptest::prelude::any::<[u8; 32]>(),
            segment in proptest::prelude::any::<u64>(),
            offset in proptest::prelude::any::<u64>(),
            len in proptest::prelude::any::<u32>(),
            now in 0u64..1 << 56,
        ) {
            let ident = Ident { received_at_ms, expires_at_ms, seq, content_hash };
            let pointer = crate::store::sled::segments::Pointer { segment, offset, len };
            let enc = encode_event(&ident, &pointer);
            proptest::prop_assert_eq!(decode_event(&enc), Some((ident, pointer)));
            proptest::prop_assert_eq!(older_event(&enc), None);
            for cut in 0..enc.len() {
                proptest::prop_assert_eq!(decode_event(&enc[..cut]), None);
            }
            proptest::prop_assert_eq!(decode_event(&[&enc[..], &[0]].concat()), None);
            let clocked = Ident { received_at_ms: now, ..ident };
            let slim = [&clocked.encode()[..], &pointer.encode()].concat();
            proptest::prop_assert_eq!(decode_event(&slim), None);
            proptest::prop_assert_eq!(older_event(&slim), Some((clocked, pointer)));
        }

        /// Bytes that are not an identity record are refused, never a
        /// panic, and what decodes has exactly one encoding.
        #[test]
        fn any_bytes_decode_as_an_identity_record_or_are_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)
        ) {
            for bytes in [bytes.clone(), [&[IDENTITY][..], &bytes].concat()] {
                if let Some((ident, pointer)) = decode_event(&bytes) {
                    proptest::prop_assert_eq!(encode_event(&ident, &pointer), bytes);
                }
            }
        }

        /// Bytes that are not an entry are refused, never a panic, and
        /// what decodes has exactly one encoding.
        #[test]
        fn any_bytes_decode_as_an_entry_or_are_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60)
        ) {
            if let Some(e) = ArrivalEntry::decode(&bytes) {
                proptest::prop_assert_eq!(e.encode(), bytes);
            }
        }

        /// Bytes that are not an arrival are refused, never a panic.
        #[test]
        fn any_bytes_decode_or_are_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)
        ) {
            // What decodes has exactly one encoding: these bytes.
            if let Some(a) = Arrival::decode(&bytes) {
                proptest::prop_assert_eq!(a.encode(), bytes);
            }
        }
    }
}
