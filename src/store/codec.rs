//! Keys and record encodings of the ingest keyspace.
//!
//! Everything an acknowledgement promises lives in one sled tree so that one
//! `apply_batch` (atomic, and atomic across a crash) writes all of it:
//!
//! | key | value |
//! |---|---|
//! | `i` source 0 event_id | `Ident`: received_at, expires_at, seq, content hash (56 bytes) |
//! | `e` source 0 event_id | `EventMeta` JSON length, the JSON, then the raw body |
//! | `q` seq | source 0 event_id: the inbox, in arrival order |
//! | `x` expires_at seq | source 0 event_id: the retention index, oldest first |
//! | `m/seq` | the last sequence number handed out |
//!
//! Identity records are small and apart from payloads so that the dedupe
//! check touches 56 bytes, not the whole event. Source names cannot contain
//! a 0 byte (config allows only `[a-z0-9_-]`), so the first 0 splits a key.

use serde::{Deserialize, Serialize};

pub const SEQ_KEY: &[u8] = b"m/seq";

pub fn ident_key(source: &str, event_id: &str) -> Vec<u8> {
    prefixed(b'i', source, event_id)
}

pub fn event_key(source: &str, event_id: &str) -> Vec<u8> {
    prefixed(b'e', source, event_id)
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
        String::from_utf8(v[..at].to_vec()).ok()?,
        String::from_utf8(v[at + 1..].to_vec()).ok()?,
    ))
}

pub fn inbox_key(seq: u64) -> [u8; 9] {
    let mut k = [b'q'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn expiry_key(expires_at_ms: u64, seq: u64) -> [u8; 17] {
    let mut k = [b'x'; 17];
    k[1..9].copy_from_slice(&expires_at_ms.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse_expiry_key(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != 17 || k[0] != b'x' {
        return None;
    }
    Some((
        u64::from_be_bytes(k[1..9].try_into().ok()?),
        u64::from_be_bytes(k[9..].try_into().ok()?),
    ))
}

pub fn parse_inbox_key(k: &[u8]) -> Option<u64> {
    if k.len() != 9 || k[0] != b'q' {
        return None;
    }
    Some(u64::from_be_bytes(k[1..].try_into().ok()?))
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
            received_at_ms: u64::from_be_bytes(v[..8].try_into().ok()?),
            expires_at_ms: u64::from_be_bytes(v[8..16].try_into().ok()?),
            seq: u64::from_be_bytes(v[16..24].try_into().ok()?),
            content_hash: v[24..].try_into().ok()?,
        })
    }
}

/// Everything about a stored event except its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    pub seq: u64,
    pub received_at_ms: u64,
    pub event_type: Option<String>,
    /// Whether the event was put in the inbox for the state machine.
    pub dispatch: bool,
    pub headers: Vec<(String, String)>,
    pub tracking_number: Option<String>,
    pub order_id: Option<String>,
}

pub fn encode_event(meta: &EventMeta, body: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(meta).expect("EventMeta serialises");
    let mut v = Vec::with_capacity(4 + json.len() + body.len());
    v.extend_from_slice(&(json.len() as u32).to_be_bytes());
    v.extend_from_slice(&json);
    v.extend_from_slice(body);
    v
}

pub fn decode_event(v: &[u8]) -> Option<(EventMeta, Vec<u8>)> {
    let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let json = v.get(4..4 + len)?;
    let meta = serde_json::from_slice(json).ok()?;
    Some((meta, v[4 + len..].to_vec()))
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
            seq: 3,
            received_at_ms: 9,
            event_type: Some("t".into()),
            dispatch: true,
            headers: vec![("a".into(), "b".into())],
            tracking_number: None,
            order_id: Some("o".into()),
        };
        let body = b"{\"x\":\x00}";
        assert_eq!(
            decode_event(&encode_event(&meta, body)),
            Some((meta, body.to_vec()))
        );
        assert!(inbox_key(255) < inbox_key(256));
        assert!(expiry_key(1, 999) < expiry_key(2, 0));
        assert_eq!(parse_expiry_key(&expiry_key(5, 6)), Some((5, 6)));
        assert_eq!(parse_inbox_key(&inbox_key(77)), Some(77));
        assert_eq!(
            split_name(&name("src", "id\0with nul")),
            Some(("src".into(), "id\0with nul".into()))
        );
    }
}
