//! The idempotency rules (GUARANTEES.md: "Idempotency keys"), pure: where the key comes from and
//! what it may be, the request fingerprint, which answers are final, and what
//! a new request with a known key gets. The store keeps the records; this
//! module decides.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::webhook::canonical;

pub const MAX_KEY_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Required,
    Invalid(&'static str),
}

/// 1 to 255 printable ASCII characters without space (0x21 to 0x7E).
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// An idempotency key that keeps the rules: only `TryFrom` makes one.
/// Stored as the plain string it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = KeyError;

    fn try_from(key: String) -> Result<Self, KeyError> {
        if valid_key(&key) {
            Ok(IdempotencyKey(key))
        } else {
            Err(KeyError::Invalid(
                "an idempotency key is 1-255 printable ASCII characters without spaces",
            ))
        }
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = KeyError;

    fn try_from(key: &str) -> Result<Self, KeyError> {
        IdempotencyKey::try_from(key.to_string())
    }
}

impl From<IdempotencyKey> for String {
    fn from(k: IdempotencyKey) -> String {
        k.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Required => f.write_str("an idempotency key is required"),
            KeyError::Invalid(why) => f.write_str(why),
        }
    }
}

/// The SHA-256 a request is known by under its key (`fingerprint`). Stored
/// as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes)
            .map_err(|e| format!("not a fingerprint ({e}): {text:?}"))?;
        Ok(Fingerprint(bytes))
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.to_hex()
    }
}

/// The key from the `Idempotency-Key` header (`headers`: every value sent
/// under that name) or the body's `idempotency_key` (a body that is not
/// JSON offers none). Two headers are refused rather than one picked:
/// a proxy and the server could each read a different one.
pub fn key_from(headers: &[&[u8]], body: Option<&Value>) -> Result<IdempotencyKey, KeyError> {
    let from_header = match headers {
        [] => None,
        [_, _, ..] => {
            return Err(KeyError::Invalid(
                "send one Idempotency-Key header, not several",
            ));
        }
        [raw] => match std::str::from_utf8(raw).ok().and_then(unquote) {
            Some(k) if valid_key(&k) => Some(k),
            _ => {
                return Err(KeyError::Invalid(
                    "Idempotency-Key must be 1-255 printable ASCII characters without spaces",
                ));
            }
        },
    };
    let from_body = match body.and_then(|b| b.get("idempotency_key")) {
        None => None,
        Some(Value::String(k)) if valid_key(k) => Some(k.clone()),
        Some(_) => {
            return Err(KeyError::Invalid(
                "idempotency_key must be 1-255 printable ASCII characters without spaces",
            ));
        }
    };
    match (from_header, from_body) {
        (Some(h), Some(b)) if h != b => Err(KeyError::Invalid(
            "the Idempotency-Key header and the idempotency_key field differ",
        )),
        (Some(k), _) | (None, Some(k)) => IdempotencyKey::try_from(k),
        (None, None) => Err(KeyError::Required),
    }
}

/// A header value as the key it names: an RFC 8941 string (`"abc"`, as
/// the IETF draft writes keys) is its unquoted content, with `\"` and
/// `\\` unescaped; anything else is taken as it is. None for a quoted
/// value that is not a well-formed string.
fn unquote(raw: &str) -> Option<String> {
    let Some(inner) = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| raw.len() >= 2)
    else {
        return Some(raw.to_string());
    };
    let mut key = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => key.push(e),
                _ => return None,
            },
            '"' => return None,
            c => key.push(c),
        }
    }
    Some(key)
}

/// SHA-256 of the method, the concrete path and the RFC 8785 form of the
/// body without its `idempotency_key`; a write without a body counts as `{}`.
pub fn fingerprint(method: &str, path: &str, body: Option<&Value>) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    match body {
        Some(Value::Object(map)) => {
            let mut map = map.clone();
            map.remove("idempotency_key");
            h.update(canonical::to_vec(&Value::Object(map)));
        }
        Some(other) => h.update(canonical::to_vec(other)),
        None => h.update(b"{}"),
    }
    Fingerprint(h.finalize().into())
}

/// Only final answers are kept for replay; anything else leaves the key
/// unused so the client's retry runs the operation again.
pub fn is_final(status: u16, code: Option<&str>) -> bool {
    match status {
        200..=299 | 402 | 422 => true,
        409 => matches!(
            code,
            Some("ORDER_EXISTS" | "LABEL_EXISTS" | "INVALID_TRANSITION")
        ),
        _ => false,
    }
}

/// What the store keeps under a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Record {
    /// Claimed by a request of process run `epoch`, until `lease_until_ms`.
    InProgress {
        fingerprint: Fingerprint,
        epoch: u64,
        lease_until_ms: u64,
    },
    Done {
        fingerprint: Fingerprint,
        status: u16,
        body: String,
        expires_at_ms: u64,
    },
}

/// An answer as stored under a key, to be repeated byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run the operation (first use, or resuming a claim whose owner died).
    Run,
    Replay {
        status: u16,
        body: String,
    },
    Conflict,
    InProgress,
}

/// What a request with `fingerprint` gets, given the key's record, the
/// current time and this process run's epoch. A claim made by an earlier
/// run (its owner crashed or was restarted) or whose lease ran out is
/// resumable, so a key is never stuck.
pub fn decide(
    record: Option<&Record>,
    fingerprint: &Fingerprint,
    now_ms: u64,
    epoch: u64,
) -> Decision {
    match record {
        None => Decision::Run,
        Some(Record::Done { expires_at_ms, .. }) if now_ms >= *expires_at_ms => Decision::Run,
        Some(Record::Done { fingerprint: f, .. })
        | Some(Record::InProgress { fingerprint: f, .. })
            if f != fingerprint =>
        {
            Decision::Conflict
        }
        Some(Record::Done { status, body, .. }) => Decision::Replay {
            status: *status,
            body: body.clone(),
        },
        Some(Record::InProgress {
            epoch: e,
            lease_until_ms,
            ..
        }) => {
            if *e != epoch || now_ms >= *lease_until_ms {
                Decision::Run
            } else {
                Decision::InProgress
            }
        }
    }
}

/// `decide` where processes share the keys (several replicas on one
/// database): another process's claim may be alive whatever its epoch, so
/// only the end of its lease makes it resumable.
pub fn decide_leased(record: Option<&Record>, fingerprint: &Fingerprint, now_ms: u64) -> Decision {
    let owner = match record {
        Some(Record::InProgress { epoch, .. }) => *epoch,
        _ => 0,
    };
    decide(record, fingerprint, now_ms, owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// "Idempotency keys" (GUARANTEES.md): a key sent as an RFC 8941 string is its content.
    #[test]
    fn a_quoted_key_is_the_same_key_as_its_content() {
        let key = |h: &str| key_from(&[h.as_bytes()], None).map(String::from);
        assert_eq!(key("\"abc-123\"").unwrap(), "abc-123");
        assert_eq!(key("abc-123").unwrap(), "abc-123");
        assert_eq!(key(r#""a\"b\\c""#).unwrap(), r#"a"b\c"#);
        // A lone quote is not a string: it is the one-character key.
        assert_eq!(key("\"").unwrap(), "\"");
        // The content follows the rules of an unquoted key.
        for bad in [
            r#""""#,
            r#""has space""#,
            r#""a"b""#,
            r#""bad\escape""#,
            r#""trailing\""#,
        ] {
            assert!(
                matches!(key(bad), Err(KeyError::Invalid(_))),
                "{bad} was accepted"
            );
        }
        // The quoted header and the unquoted body field name one key.
        let body = json!({"idempotency_key": "abc-123"});
        assert_eq!(
            key_from(&[b"\"abc-123\""], Some(&body)).unwrap().as_str(),
            "abc-123"
        );
    }

    #[test]
    fn keys_are_printable_ascii_without_space() {
        assert!(valid_key("a"));
        assert!(valid_key(&"~".repeat(255)));
        assert!(valid_key("key-1_2.3:4/!"));
        for bad in ["", " ", "has space", "tab\t", "é", &"a".repeat(256)] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_key_comes_from_header_or_body_and_they_must_agree() {
        let body = json!({"idempotency_key": "k1"});
        assert_eq!(key_from(&[b"k1"], None).map(String::from), Ok("k1".into()));
        assert_eq!(
            key_from(&[], Some(&body)).map(String::from),
            Ok("k1".into())
        );
        assert_eq!(
            key_from(&[b"k1"], Some(&body)).map(String::from),
            Ok("k1".into())
        );
        assert!(matches!(
            key_from(&[b"k2"], Some(&body)),
            Err(KeyError::Invalid(_))
        ));
        assert_eq!(key_from(&[], Some(&json!({}))), Err(KeyError::Required));
        assert!(matches!(
            key_from(&[b"k1", b"k1"], None),
            Err(KeyError::Invalid(_))
        ));
        assert_eq!(key_from(&[], None), Err(KeyError::Required));
        assert!(matches!(key_from(&[b""], None), Err(KeyError::Invalid(_))));
        assert!(matches!(
            key_from(&[], Some(&json!({"idempotency_key": ""}))),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            key_from(&[], Some(&json!({"idempotency_key": 5}))),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            key_from(&[b"a b"], None),
            Err(KeyError::Invalid(_))
        ));
    }

    #[test]
    fn fingerprints_ignore_formatting_and_the_key_field_but_not_the_path() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":[1,2],"idempotency_key":"k"}"#).unwrap();
        let b: Value = serde_json::from_str("{ \"b\" : [1, 2],\n \"a\" : 1 }").unwrap();
        assert_eq!(
            fingerprint("POST", "/v1/x", Some(&a)),
            fingerprint("POST", "/v1/x", Some(&b))
        );
        assert_ne!(
            fingerprint("POST", "/v1/x", Some(&a)),
            fingerprint("POST", "/v1/y", Some(&a))
        );
        assert_ne!(
            fingerprint("POST", "/v1/x", Some(&a)),
            fingerprint("POST", "/v1/x", Some(&json!({"a": 2, "b": [1, 2]})))
        );
        assert_eq!(
            fingerprint("POST", "/v1/x", None),
            fingerprint("POST", "/v1/x", Some(&json!({})))
        );
    }

    #[test]
    fn final_answers() {
        for (status, code, expect) in [
            (201, None, true),
            (200, None, true),
            (402, Some("PAYMENT_FAILED"), true),
            (422, Some("INSUFFICIENT_STOCK"), true),
            (409, Some("ORDER_EXISTS"), true),
            (409, Some("LABEL_EXISTS"), true),
            (409, Some("INVALID_TRANSITION"), true),
            (409, Some("IDEMPOTENCY_CONFLICT"), false),
            (400, Some("VALIDATION_FAILED"), false),
            (401, None, false),
            (404, None, false),
            (408, None, false),
            (413, None, false),
            (415, None, false),
            (429, None, false),
            (500, None, false),
            (503, None, false),
        ] {
            assert_eq!(is_final(status, code), expect, "{status} {code:?}");
        }
    }

    #[test]
    fn decisions() {
        let fp = &fingerprint("POST", "/a", None);
        let f2 = &fingerprint("POST", "/b", None);
        let done = Record::Done {
            fingerprint: *fp,
            status: 201,
            body: "{}".into(),
            expires_at_ms: 1000,
        };
        let claimed = Record::InProgress {
            fingerprint: *fp,
            epoch: 7,
            lease_until_ms: 500,
        };
        assert_eq!(decide(None, fp, 0, 7), Decision::Run);
        assert_eq!(
            decide(Some(&done), fp, 10, 7),
            Decision::Replay {
                status: 201,
                body: "{}".into()
            }
        );
        assert_eq!(decide(Some(&done), f2, 10, 7), Decision::Conflict);
        assert_eq!(
            decide(Some(&done), fp, 1000, 7),
            Decision::Run,
            "forgotten after retention"
        );
        assert_eq!(decide(Some(&claimed), fp, 10, 7), Decision::InProgress);
        assert_eq!(decide(Some(&claimed), f2, 10, 7), Decision::Conflict);
        assert_eq!(
            decide(Some(&claimed), fp, 500, 7),
            Decision::Run,
            "lease ran out"
        );
        assert_eq!(
            decide(Some(&claimed), fp, 10, 8),
            Decision::Run,
            "claimed before a restart"
        );
    }

    /// Stored records keep their shape: the fingerprint is its hex.
    #[test]
    fn a_record_is_stored_with_the_fingerprint_in_hex() {
        let fp = fingerprint("POST", "/a", None);
        let text = serde_json::to_string(&Record::InProgress {
            fingerprint: fp,
            epoch: 1,
            lease_until_ms: 2,
        })
        .unwrap();
        assert!(
            text.contains(&format!("\"fingerprint\":\"{}\"", fp.to_hex())),
            "{text}"
        );
        let back: Record = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Record::InProgress { fingerprint, .. } if fingerprint == fp));
        assert!(
            serde_json::from_str::<Record>(
                r#"{"state":"in_progress","fingerprint":"zz","epoch":1,"lease_until_ms":2}"#
            )
            .is_err()
        );
    }
}
