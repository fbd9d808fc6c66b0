//! What a verified delivery is: its event id, type, content hash, and
//! whether it goes to the state machine (GUARANTEES.md: "Order of checks", "Event identity").
//! Pure: bytes and config in, an `Examined` event or field issues out.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{SourceConfig, SourceKind};
use crate::domain::field::{FieldIssue, UNSTORABLE, unstorable};
use crate::json::JsonError;
use crate::webhook::canonical;
use crate::webhook::mapping::{self, Fields, id_like};

/// Longer ids are refused: an id is a key in the store, and nobody's real
/// event ids come near this.
pub const MAX_EVENT_ID_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Examined {
    pub event_id: String,
    pub event_type: Option<String>,
    /// SHA-256 of the body's canonical form; equal for equal content.
    pub content_hash: [u8; 32],
    /// Whether the event goes to the inbox for the state machine.
    pub dispatch: bool,
    /// The mapped fields, for an event that is dispatched.
    pub fields: Option<Fields>,
    /// Values the admin search indexes, when the mapping names them.
    pub tracking_number: Option<String>,
    pub order_id: Option<String>,
}

/// Reads a verified body. `header_id` is the event id the signature scheme's
/// headers carried, which wins over the body (GUARANTEES.md: "Event identity").
pub fn examine(
    source: &SourceConfig,
    header_id: Option<String>,
    body: &[u8],
) -> Result<Examined, Vec<FieldIssue>> {
    let value: Value = match crate::json::parse(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err(vec![FieldIssue::new("", "body is not a JSON object")]),
        Err(JsonError::DuplicateKey(at)) => {
            return Err(vec![FieldIssue::new(at, "appears twice in its object")]);
        }
        Err(JsonError::Syntax(e)) => {
            return Err(vec![FieldIssue::new(
                "",
                format!("body is not valid JSON: {e}"),
            )]);
        }
    };
    let canonical = canonical::to_vec(&value);
    let content_hash: [u8; 32] = Sha256::digest(&canonical).into();

    let mut issues = Vec::new();
    let event_id = match (header_id, &source.event_id) {
        (Some(id), _) => Some(id),
        (None, Some(ptr)) => match id_like(&value, ptr) {
            Ok(id) => Some(id),
            Err(issue) => {
                issues.push(FieldIssue::new(ptr, issue));
                None
            }
        },
        (None, None) => Some(format!("sha256:{}", hex::encode(content_hash))),
    };
    if let Some(id) = &event_id
        && id.len() > MAX_EVENT_ID_BYTES
    {
        let field = source.event_id.clone().unwrap_or_else(|| "event id".into());
        issues.push(FieldIssue::new(
            field,
            format!("longer than {MAX_EVENT_ID_BYTES} bytes"),
        ));
    }

    let event_type = source
        .event_type
        .as_ref()
        .and_then(|ptr| value.pointer(ptr))
        .and_then(Value::as_str)
        .map(str::to_string);
    if let (Some(ptr), Some(t)) = (&source.event_type, &event_type)
        && unstorable(t)
    {
        issues.push(FieldIssue::new(ptr, UNSTORABLE));
    }
    let dispatch = source.dispatches(event_type.as_deref());

    let fields = if dispatch && source.mapping.is_some() {
        match mapping::extract(source, &value) {
            Ok(f) => Some(f),
            Err(bad) => {
                issues.extend(
                    bad.into_iter()
                        .map(|(ptr, issue)| FieldIssue::new(ptr, issue)),
                );
                None
            }
        }
    } else {
        None
    };
    let key = fields.as_ref().map(|f| f.key.clone());
    let (tracking_number, order_id) = match source.kind {
        SourceKind::Tracking => (key, None),
        SourceKind::Payment => (None, key),
        SourceKind::StoreOnly => (None, None),
    };

    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(Examined {
        event_id: event_id.expect("an id is set whenever no issue was recorded"),
        event_type,
        content_hash,
        dispatch,
        fields,
        tracking_number,
        order_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str) -> SourceConfig {
        crate::config::test_source(name)
    }

    fn ok(name: &str, body: &str) -> Examined {
        examine(&source(name), None, body.as_bytes()).unwrap()
    }

    fn issues(name: &str, body: &str) -> Vec<FieldIssue> {
        examine(&source(name), None, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn pointer_id_string_and_integer_are_the_same_event() {
        let a = ok("carrier", r#"{"id":"123","type":"other"}"#);
        let b = ok("carrier", r#"{"id":123,"type":"other"}"#);
        assert_eq!(a.event_id, "123");
        assert_eq!(b.event_id, "123");
        let big = ok(
            "carrier",
            r#"{"id":12345678901234567890123,"type":"other"}"#,
        );
        assert_eq!(big.event_id, "12345678901234567890123");
    }

    #[test]
    fn header_id_wins_and_makes_the_pointer_optional() {
        let e = examine(
            &source("carrier"),
            Some("hdr-1".into()),
            br#"{"type":"other"}"#,
        )
        .unwrap();
        assert_eq!(e.event_id, "hdr-1");
    }

    #[test]
    fn bad_ids_name_the_pointer() {
        for (body, issue) in [
            (r#"{"type":"other"}"#, "missing"),
            (r#"{"id":null}"#, "must be a string or an integer"),
            (r#"{"id":1.5}"#, "must be a string or an integer"),
            (r#"{"id":{"a":1}}"#, "must be a string or an integer"),
            (r#"{"id":""}"#, "empty"),
        ] {
            assert_eq!(
                issues("carrier", body),
                vec![FieldIssue::new("/id", issue)],
                "{body}"
            );
        }
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_EVENT_ID_BYTES + 1));
        assert_eq!(issues("carrier", &long)[0].field, "/id");
    }

    #[test]
    fn non_objects_are_refused() {
        for body in ["[]", "1", "\"s\"", "null", "{", "", "{\"a\":1} x"] {
            let i = issues("hashed", body);
            assert_eq!(i.len(), 1, "{body}");
            assert_eq!(i[0].field, "");
        }
    }

    #[test]
    fn content_hash_ignores_key_order_spacing_and_escapes() {
        let a = ok("hashed", r#"{"a":1,"b":"é"}"#);
        let b = ok("hashed", "{ \"b\" : \"\\u00e9\",\n \"a\" : 1 }");
        assert_eq!(a.event_id, b.event_id);
        assert!(a.event_id.starts_with("sha256:"));
        assert_eq!(a.event_id.len(), 7 + 64);
        let c = ok("hashed", r#"{"a":2,"b":"é"}"#);
        assert_ne!(a.event_id, c.event_id);
    }

    #[test]
    fn accepted_types_need_their_mapping_fields() {
        let body = r#"{"id":"e1","type":"tracker.updated","tn":"1Z","st":"delivered"}"#;
        let e = ok("carrier", body);
        assert!(e.dispatch);
        assert_eq!(e.tracking_number.as_deref(), Some("1Z"));
        assert_eq!(
            issues("carrier", r#"{"id":"e1","type":"tracker.updated","st":5}"#),
            vec![
                FieldIssue::new("/tn", "missing"),
                FieldIssue::new("/st", "must be a string"),
            ]
        );
    }

    #[test]
    fn other_or_absent_types_are_stored_not_dispatched_and_not_checked() {
        let e = ok("carrier", r#"{"id":"e1","type":"tracker.created"}"#);
        assert!(!e.dispatch);
        let e = ok("carrier", r#"{"id":"e1"}"#);
        assert!(!e.dispatch);
        assert_eq!(e.event_type, None);
        // A type that is not a string counts as absent.
        let e = ok("carrier", r#"{"id":"e1","type":7}"#);
        assert_eq!(e.event_type, None);
        assert!(!e.dispatch);
        assert!(!ok("hashed", r#"{"a":1}"#).dispatch);
    }
}
