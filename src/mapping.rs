//! What a stored event means to the state machine, read with the source's
//! current mapping (contract 4, 2.1 `[sources.mapping]`). Pure: the body and
//! config in, an `Interpretation` out. It runs at dispatch time, not at
//! intake, so an event that went to the dead letter under one config can be
//! redelivered after the config is fixed.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{SourceConfig, SourceKind};
use crate::domain::order::{PaymentEvent, PaymentStatus};
use crate::domain::shipment::{ShipmentStatus, StatusEvent};
use crate::identity::id_like;

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

pub fn interpret(
    source: &SourceConfig,
    event_id: &str,
    received_at_ms: u64,
    body: &[u8],
) -> Interpretation {
    let dead = |reason: String| Interpretation::Dead { reason };
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return dead(format!("body is not JSON: {e}")),
    };
    let event_type = source
        .event_type
        .as_ref()
        .and_then(|p| value.pointer(p))
        .and_then(Value::as_str);
    if !source.dispatches(event_type) {
        return Interpretation::NotDispatched;
    }
    let Some(mapping) = &source.mapping else {
        return Interpretation::NotDispatched;
    };
    let mut key = None;
    let mut raw_status = None;
    for (name, ptr) in &mapping.required {
        if *name == "status" {
            match value.pointer(ptr) {
                Some(Value::String(s)) => raw_status = Some(s.clone()),
                Some(_) => return dead(format!("{ptr} must be a string")),
                None => return dead(format!("{ptr} is missing")),
            }
        } else {
            match id_like(&value, ptr) {
                Ok(v) => key = Some(v),
                Err(issue) => return dead(format!("{ptr}: {issue}")),
            }
        }
    }
    let (Some(key), Some(raw_status)) = (key, raw_status) else {
        return dead("the mapping names no key or status".into());
    };
    let Some(mapped) = mapping.status_map.get(&raw_status) else {
        return Interpretation::Ignored {
            reason: format!("status {raw_status:?} is not in the status_map"),
        };
    };
    let occurred_at_ms = match &mapping.occurred_at {
        None => received_at_ms as i64,
        Some(ptr) => match value.pointer(ptr) {
            None | Some(Value::Null) => received_at_ms as i64,
            Some(v) => match parse_time(v) {
                Some(ms) => ms,
                None => {
                    return dead(format!(
                        "{ptr} is neither an RFC 3339 time nor unix seconds: {v}"
                    ));
                }
            },
        },
    };
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
            (ms.is_finite() && ms.abs() < 1e17).then_some(ms.round() as i64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    const CONFIG: &str = r#"
        [[sources]]
        name = "ups"
        kind = "tracking"
        secrets = ["x"]
        signature = { scheme = "github" }
        event_type = "/type"
        accept_event_types = ["track"]
        [sources.mapping]
        tracking_number = "/tn"
        status = "/st"
        occurred_at = "/at"
        [sources.mapping.status_map]
        transit = "IN_TRANSIT"
        delivered = "DELIVERED"

        [[sources]]
        name = "pay"
        kind = "payment"
        secrets = ["x"]
        signature = { scheme = "github" }
        [sources.mapping]
        order_id = "/order"
        status = "/st"
        [sources.mapping.status_map]
        ok = "SUCCEEDED"
        refund = "REFUNDED"
    "#;

    fn run(source: &str, body: &str) -> Interpretation {
        let cfg = Config::parse(CONFIG, &NoEnv).unwrap();
        interpret(cfg.source(source).unwrap(), "ev1", 5_000, body.as_bytes())
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
            let body = format!(r#"{{"type":"track","tn":"1Z","st":"transit","at":{at}}}"#);
            assert_eq!(
                run("ups", &body),
                Interpretation::Tracking {
                    tracking_number: "1Z".into(),
                    event: StatusEvent::carrier(ShipmentStatus::InTransit, ms, "ups", "ev1"),
                },
                "{at}"
            );
        }
        // Absent occurred_at: the time it was received.
        let Interpretation::Tracking { event, .. } =
            run("ups", r#"{"type":"track","tn":1234,"st":"delivered"}"#)
        else {
            panic!()
        };
        assert_eq!(event.occurred_at_ms, 5_000);
    }

    #[test]
    fn unmapped_statuses_are_ignored_and_bad_times_are_dead() {
        assert!(matches!(
            run("ups", r#"{"type":"track","tn":"1Z","st":"weird"}"#),
            Interpretation::Ignored { .. }
        ));
        let Interpretation::Dead { reason } = run(
            "ups",
            r#"{"type":"track","tn":"1Z","st":"transit","at":"yesterday"}"#,
        ) else {
            panic!()
        };
        assert!(reason.contains("/at"), "{reason}");
        assert!(matches!(
            run("ups", r#"{"type":"track","st":"transit"}"#),
            Interpretation::Dead { .. }
        ));
        assert_eq!(
            run("ups", r#"{"type":"other"}"#),
            Interpretation::NotDispatched
        );
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
