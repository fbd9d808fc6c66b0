//! What a stored event means to the state machine, read with the source's
//! `[sources.mapping]` (GUARANTEES.md: "Dispatch"). Pure.
//!
//! Intake reads the mapped fields out of the body once (`Fields`, kept with
//! the arrival) so that dispatch needs neither the body nor a JSON parse;
//! the `status_map` and the time are applied at dispatch, with the config
//! then in force. Redelivery reads the fields from the body again, so an
//! event that went to the dead letter under one config is redelivered
//! under the fixed one.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{SourceConfig, SourceKind};
use crate::domain::field::{UNSTORABLE, unstorable};
use crate::domain::order::{PaymentEvent, PaymentStatus};
use crate::domain::shipment::{ShipmentStatus, StatusEvent};
use crate::webhook::canonical;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpretation {
    Tracking {
        tracking_number: String,
        event: StatusEvent,
    },
    Payment {
        order_id: String,
        event: PaymentEvent,
    },
    /// A carrier status the source's `status_map` does not name.
    Ignored { reason: String },
    /// Cannot be applied; kept in the dead letter with the reason.
    Dead { reason: String },
    /// Not for the state machine (store-only, or a type not accepted).
    NotDispatched,
}

/// The mapped fields of one event, as its sender wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fields {
    /// The tracking number or order id.
    #[serde(rename = "k")]
    pub key: String,
    /// The sender's status string, before the `status_map`.
    #[serde(rename = "s")]
    pub status: String,
    /// The `occurred_at` value as JSON text, when present.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
}

/// Reads the mapped fields out of a parsed body, or names each pointer that
/// is missing or of the wrong type.
pub fn extract(
    source: &SourceConfig,
    value: &Value,
) -> Result<Fields, Vec<(String, &'static str)>> {
    let Some(mapping) = &source.mapping else {
        return Err(Vec::new());
    };
    let mut key = None;
    let mut status = None;
    let mut issues = Vec::new();
    for (name, ptr) in &mapping.required {
        if *name == "status" {
            match value.pointer(ptr) {
                Some(Value::String(s)) if unstorable(s) => issues.push((ptr.clone(), UNSTORABLE)),
                Some(Value::String(s)) => status = Some(s.clone()),
                Some(_) => issues.push((ptr.clone(), "must be a string")),
                None => issues.push((ptr.clone(), "missing")),
            }
        } else {
            match id_like(value, ptr) {
                Ok(v) => key = Some(v),
                Err(issue) => issues.push((ptr.clone(), issue)),
            }
        }
    }
    if let Some(ptr) = &mapping.occurred_at
        && value
            .pointer(ptr)
            .and_then(Value::as_str)
            .is_some_and(unstorable)
    {
        issues.push((ptr.clone(), UNSTORABLE));
    }
    match (key, status) {
        (Some(key), Some(status)) if issues.is_empty() => Ok(Fields {
            key,
            status,
            occurred_at: mapping
                .occurred_at
                .as_ref()
                .and_then(|p| value.pointer(p))
                .filter(|v| !v.is_null())
                .map(Value::to_string),
        }),
        _ => Err(issues),
    }
}

/// Reads a stored body again, with the current config.
pub fn interpret(
    source: &SourceConfig,
    event_id: &str,
    received_at_ms: u64,
    body: &[u8],
) -> Interpretation {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Interpretation::Dead {
                reason: format!("body is not JSON: {e}"),
            };
        }
    };
    let event_type = source
        .event_type
        .as_ref()
        .and_then(|p| value.pointer(p))
        .and_then(Value::as_str);
    if !source.dispatches(event_type) || source.mapping.is_none() {
        return Interpretation::NotDispatched;
    }
    match extract(source, &value) {
        Ok(fields) => interpret_fields(source, event_id, received_at_ms, &fields),
        Err(issues) => Interpretation::Dead {
            reason: issues
                .iter()
                .map(|(ptr, issue)| format!("{ptr}: {issue}"))
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

/// Applies the `status_map` and reads the time of fields taken at intake.
pub fn interpret_fields(
    source: &SourceConfig,
    event_id: &str,
    received_at_ms: u64,
    fields: &Fields,
) -> Interpretation {
    let dead = |reason: String| Interpretation::Dead { reason };
    let Some(mapping) = &source.mapping else {
        return Interpretation::NotDispatched;
    };
    let Some(mapped) = mapping.status_map.get(&fields.status) else {
        return Interpretation::Ignored {
            reason: format!("status {:?} is not in the status_map", fields.status),
        };
    };
    let occurred_at_ms = match &fields.occurred_at {
        None => received_at_ms as i64,
        Some(raw) => {
            let ptr = mapping.occurred_at.as_deref().unwrap_or("occurred_at");
            let value = serde_json::from_str::<Value>(raw).ok();
            match value.as_ref().and_then(parse_time) {
                Some(ms) if crate::clock::in_range(ms) => ms,
                Some(ms) => {
                    // Epoch milliseconds sent where seconds belong are the
                    // usual cause of a number past the range: say so to
                    // whoever reads the dead letter. A written time past it
                    // is something else.
                    let hint = if ms > crate::clock::LATEST_MS
                        && value.as_ref().is_some_and(Value::is_number)
                    {
                        " (unix seconds are expected, not milliseconds)"
                    } else {
                        ""
                    };
                    return dead(format!(
                        "{ptr} is outside the years 1970-9999: {}{hint}",
                        clip(raw)
                    ));
                }
                None => {
                    return dead(format!(
                        "{ptr} is neither an RFC 3339 time nor unix seconds: {}",
                        clip(raw)
                    ));
                }
            }
        }
    };
    let key = fields.key.clone();
    match source.kind {
        SourceKind::Tracking => match ShipmentStatus::parse(mapped) {
            Some(status) => Interpretation::Tracking {
                tracking_number: key,
                event: StatusEvent::carrier(status, occurred_at_ms, &source.name, event_id),
            },
            None => dead(format!(
                "status_map value {mapped} is not a shipment status"
            )),
        },
        SourceKind::Payment => match PaymentStatus::parse(mapped) {
            Some(status) => Interpretation::Payment {
                order_id: key,
                event: PaymentEvent {
                    status,
                    occurred_at_ms,
                    source: source.name.clone(),
                    event_id: event_id.to_string(),
                },
            },
            None => dead(format!("status_map value {mapped} is not a payment status")),
        },
        SourceKind::StoreOnly => Interpretation::NotDispatched,
    }
}

/// A sender's value as it goes into a reason: at most 64 characters.
fn clip(raw: &str) -> String {
    if raw.chars().count() > 64 {
        format!("{}...", raw.chars().take(64).collect::<String>())
    } else {
        raw.to_string()
    }
}

/// A string or an integer, as text: `"123"` and `123` name the same thing.
pub fn id_like(value: &Value, ptr: &str) -> Result<String, &'static str> {
    match value.pointer(ptr) {
        None => Err("missing"),
        Some(Value::String(s)) if s.is_empty() => Err("empty"),
        Some(Value::String(s)) if unstorable(s) => Err(UNSTORABLE),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => {
            canonical::integer_text(n).ok_or("must be a string or an integer")
        }
        Some(_) => Err("must be a string or an integer"),
    }
}

/// An RFC 3339 string or unix seconds (integer or fractional), as
/// milliseconds since the epoch.
pub fn parse_time(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => {
            let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
        }
        Value::Number(n) => {
            let secs: f64 = n.to_string().parse().ok()?;
            let ms = secs * 1000.0;
            // Saturating: the range check that follows tells a huge value
            // from a malformed one.
            ms.is_finite().then_some(ms.round() as i64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(source: &str, body: &str) -> Interpretation {
        let source = crate::config::test_source(source);
        interpret(&source, "ev1", 5_000, body.as_bytes())
    }

    #[test]
    fn tracking_events_map_status_and_time() {
        for (at, ms) in [
            (r#""2026-11-20T12:00:00Z""#, 1_795_176_000_000),
            (r#""2026-11-20T13:00:00+01:00""#, 1_795_176_000_000),
            ("1795176000", 1_795_176_000_000),
            ("1795176000.5", 1_795_176_000_500),
            ("null", 5_000),
        ] {
            let body =
                format!(r#"{{"type":"tracker.updated","tn":"1Z","st":"transit","at":{at}}}"#);
            assert_eq!(
                run("carrier", &body),
                Interpretation::Tracking {
                    tracking_number: "1Z".into(),
                    event: StatusEvent::carrier(ShipmentStatus::InTransit, ms, "carrier", "ev1"),
                },
                "{at}"
            );
        }
        // Absent occurred_at: the time it was received.
        let Interpretation::Tracking { event, .. } = run(
            "carrier",
            r#"{"type":"tracker.updated","tn":1234,"st":"delivered"}"#,
        ) else {
            panic!()
        };
        assert_eq!(event.occurred_at_ms, 5_000);
    }

    #[test]
    fn unmapped_statuses_are_ignored_and_bad_times_are_dead() {
        assert!(matches!(
            run(
                "carrier",
                r#"{"type":"tracker.updated","tn":"1Z","st":"weird"}"#
            ),
            Interpretation::Ignored { .. }
        ));
        let Interpretation::Dead { reason } = run(
            "carrier",
            r#"{"type":"tracker.updated","tn":"1Z","st":"transit","at":"yesterday"}"#,
        ) else {
            panic!()
        };
        assert!(reason.contains("/at"), "{reason}");
        assert!(matches!(
            run("carrier", r#"{"type":"tracker.updated","st":"transit"}"#),
            Interpretation::Dead { .. }
        ));
        assert_eq!(
            run("carrier", r#"{"type":"other"}"#),
            Interpretation::NotDispatched
        );
    }

    #[test]
    fn times_outside_1970_to_9999_are_dead_naming_the_field() {
        for at in [
            "1763800000000",
            "-1",
            "1e300",
            "-1e300",
            "253402300800",
            r#""1969-12-31T23:59:59Z""#,
            "123456789012345678901234567890",
        ] {
            let body =
                format!(r#"{{"type":"tracker.updated","tn":"1Z","st":"transit","at":{at}}}"#);
            let Interpretation::Dead { reason } = run("carrier", &body) else {
                panic!("{at} was not dead")
            };
            assert!(reason.starts_with("/at "), "{reason}");
            assert!(reason.len() < 200, "{reason}");
        }
        let Interpretation::Dead { reason } = run(
            "carrier",
            r#"{"type":"tracker.updated","tn":"1Z","st":"transit","at":1763800000000}"#,
        ) else {
            panic!()
        };
        assert!(reason.contains("milliseconds"), "{reason}");
        // A written time past the range is not mistaken for milliseconds.
        let Interpretation::Dead { reason } = run(
            "carrier",
            r#"{"type":"tracker.updated","tn":"1Z","st":"transit","at":"9999-12-31T23:59:59-23:59"}"#,
        ) else {
            panic!("a time past 9999 in UTC was not dead")
        };
        assert!(reason.starts_with("/at is outside"), "{reason}");
        assert!(!reason.contains("milliseconds"), "{reason}");
        // The ends of the range are fine.
        for at in ["0", "253402300799", r#""9999-12-31T23:59:59.999Z""#] {
            let body =
                format!(r#"{{"type":"tracker.updated","tn":"1Z","st":"transit","at":{at}}}"#);
            assert!(
                matches!(run("carrier", &body), Interpretation::Tracking { .. }),
                "{at}"
            );
        }
    }

    #[test]
    fn payment_events_map_onto_payment_statuses() {
        assert_eq!(
            run("pay", r#"{"order":"o-1","st":"refund"}"#),
            Interpretation::Payment {
                order_id: "o-1".into(),
                event: PaymentEvent {
                    status: PaymentStatus::Refunded,
                    occurred_at_ms: 5_000,
                    source: "pay".into(),
                    event_id: "ev1".into(),
                },
            }
        );
    }
}
