//! `/admin`: search events, show one, redeliver parked or dead ones one at
//! a time or in bulk (GUARANTEES.md: "Operations", "Dispatch", "Admin in bulk"). The token (or the
//! console's session, `http::console`) is checked before anything else,
//! routing and body size included; only the console's page answers
//! without it, with its sign-in form. Without a configured token every
//! `/admin` path is 404.

use std::net::IpAddr;
use std::sync::PoisonError;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

use super::State;
use super::console;
use super::error::{ApiError, Body, json_response};
use super::{ClientAddr, LogFields, RequestId};
use crate::clock::rfc3339_ms;
use crate::domain::field::{FieldIssue, UNSTORABLE, count_up_to, unstorable};
use crate::domain::ids::ShipmentId;
use crate::live::Live;
use crate::ratelimit::{Failed, Failures};
use crate::service::events::{self, Bulk};
use crate::store::{EventFilter, OutcomeRecord, StoredEvent};

const OUTCOMES: [&str; 7] = [
    "applied", "stale", "ignored", "parked", "dead", "pending", "stored",
];
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Failed admin authentications (a wrong bearer token, session cookie or
/// console sign-in) per client address: ten a minute, then one every six
/// seconds (GUARANTEES.md: "Hostile traffic"). IPv6 clients count by their /64, which one
/// host is commonly given whole.
pub struct AuthFailures(std::sync::Mutex<Failures<IpAddr>>);

impl Default for AuthFailures {
    fn default() -> AuthFailures {
        AuthFailures(std::sync::Mutex::new(Failures::new(
            10,
            std::time::Duration::from_secs(60),
        )))
    }
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

impl AuthFailures {
    /// 429 `RATE_LIMITED` when `client` has failed too often to try now.
    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        let wait = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocked(&client_key(client), std::time::Instant::now());
        match wait {
            Some(wait) => Err(ApiError::rate_limited(
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            )),
            None => Ok(()),
        }
    }

    /// Counts a failed authentication by `client`; the one that uses its
    /// last try is logged at WARN, with the address and never what it sent.
    pub fn failed(&self, client: IpAddr) {
        let failed = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fail(&client_key(client), std::time::Instant::now());
        if let Failed::Blocked(wait) = failed {
            tracing::warn!(
                client_addr = %client,
                retry_after_s = wait.as_secs_f64().ceil() as u64,
                "admin authentication failed repeatedly from this client; its tries are refused (429) for a while"
            );
        }
    }
}

pub async fn handle(app: &State, live: &Live, req: Request<Incoming>) -> Response<Body> {
    let request_id = RequestId::of(&req);
    let Some(token) = &live.config.admin_token else {
        return ApiError::not_found("route").into_response(&request_id);
    };
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0);
    if let Err(e) = app.admin_failures.check(client) {
        return e.into_response(&request_id);
    }
    let credential = console::credential(req.headers(), token);
    let path = req.uri().path().to_string();
    // The console's page answers a browser without credentials with its
    // sign-in form, and takes the token from it.
    if path == "/admin/ui" {
        let admin = console::Admin {
            token,
            secure_cookie: live.config.console_secure_cookie,
        };
        return console::handle(app, req, admin, credential, client, &request_id).await;
    }
    if !console::allowed(credential, req.method(), req.headers()) {
        // Asking without credentials guesses nothing; a wrong token or
        // cookie is a try.
        if credential == console::Credential::None && console::presented(req.headers()) {
            app.admin_failures.failed(client);
        }
        return ApiError::unauthenticated().into_response(&request_id);
    }
    let _slot = match super::admit(app) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(&request_id),
    };

    let segments: Vec<String> = path
        .trim_start_matches("/admin/")
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let method = req.method().clone();
    // No event's source or id holds U+0000: there is nothing to find, and
    // nothing to ask the store.
    if segments.iter().any(|s| unstorable(s)) {
        return ApiError::not_found("event").into_response(&request_id);
    }
    let result = match (
        segments
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        &method,
    ) {
        (["events"], &Method::GET) => search(app, req.uri().query().unwrap_or("")).await,
        (["events"], _) => Err(ApiError::method_not_allowed("GET")),
        (["events", source, id], &Method::GET) => show(app, source, id).await,
        (["events", _, _], _) => Err(ApiError::method_not_allowed("GET")),
        (["events", source, id, "redeliver"], &Method::POST) => redeliver(app, source, id).await,
        (["events", _, _, "redeliver"], _) => Err(ApiError::method_not_allowed("POST")),
        (["redeliver"], &Method::POST) => bulk_redeliver(app, req).await,
        (["redeliver"], _) => Err(ApiError::method_not_allowed("POST")),
        (["shipments", id], &Method::GET) => shipment(app, id).await,
        (["shipments", _], _) => Err(ApiError::method_not_allowed("GET")),
        (["stats"], &Method::GET) => Ok(stats(app, live)),
        (["stats"], _) => Err(ApiError::method_not_allowed("GET")),
        _ => Err(ApiError::not_found("route")),
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => e.into_response(&request_id),
    };
    if let [_, source, id, ..] = segments.as_slice() {
        resp.extensions_mut().insert(LogFields {
            source: Some(source.clone()),
            event_id: Some(id.clone()),
            ..LogFields::default()
        });
    }
    resp
}

/// A time filter (`since`, `until`): any RFC 3339 time, as unix
/// milliseconds; one before 1970 is 1970, before every event.
fn time_filter(key: &str, v: &str, issues: &mut Vec<FieldIssue>) -> Option<u64> {
    let ms = crate::clock::parse_rfc3339_ms(v);
    if ms.is_none() {
        issues.push(FieldIssue::new(
            key,
            "must be an RFC 3339 time, like 2026-11-30T08:00:00Z",
        ));
    }
    ms
}

/// A cursor as pages give them: a sequence number, 1 to 19 digits (the
/// API description's pattern; no sign, and never past `u64`).
fn cursor(v: &str) -> Option<u64> {
    let digits = (1..=19).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| v.parse().ok()).flatten()
}

async fn search(app: &State, query: &str) -> Result<Response<Body>, ApiError> {
    let mut filter = EventFilter::default();
    let mut limit = DEFAULT_LIMIT;
    let mut issues = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.into_owned();
        if v.is_empty() {
            continue;
        }
        if unstorable(&v) {
            issues.push(FieldIssue::new(k.as_ref(), UNSTORABLE));
            continue;
        }
        match k.as_ref() {
            "source" => filter.source = Some(v),
            "event_id" => filter.event_id = Some(v),
            "tracking_number" => filter.tracking_number = Some(v),
            "order_id" => filter.order_id = Some(v),
            "event_type" => filter.event_type = Some(v),
            "since" => filter.since_ms = time_filter("since", &v, &mut issues),
            "until" => filter.until_ms = time_filter("until", &v, &mut issues),
            "cursor" => match cursor(&v) {
                Some(seq) => filter.before_seq = Some(seq),
                None => issues.push(FieldIssue::new(
                    "cursor",
                    "must be a next_cursor from an earlier page",
                )),
            },
            "outcome" if OUTCOMES.contains(&v.as_str()) => filter.outcome = Some(v),
            "outcome" => issues.push(FieldIssue::new(
                "outcome",
                format!("must be one of {}", OUTCOMES.join(", ")),
            )),
            "limit" => {
                limit = count_up_to("limit", &v, MAX_LIMIT, &mut issues).unwrap_or(limit);
            }
            _ => {}
        }
    }
    if !issues.is_empty() {
        return Err(ApiError::validation_failed(issues));
    }
    let found = events::search(app.store.as_ref(), &filter, limit).await?;
    let events: Vec<Value> = found
        .events
        .iter()
        .map(|(ev, outcome)| Value::Object(summary(ev, outcome.as_ref())))
        .collect();
    // The cursor is the sequence number the next page starts below: it
    // stays valid whatever arrives meanwhile, and a page cut short by the
    // scan bound hands the rest of the store to the next request.
    let next_cursor = found.next_before.map(|seq| seq.to_string());
    let body = if found.complete {
        json!({ "events": events, "next_cursor": next_cursor })
    } else {
        json!({ "events": events, "next_cursor": next_cursor, "incomplete": true })
    };
    Ok(json_response(StatusCode::OK, &body))
}

const BULK_DEFAULT: usize = 1000;
const BULK_MAX: usize = 10_000;

fn parse_bulk(body: &[u8]) -> Result<Bulk, ApiError> {
    let Value::Object(fields) = crate::json::parse(body).map_err(ApiError::unparsable_body)? else {
        return Err(ApiError::validation_failed(vec![FieldIssue::new(
            "",
            "the body must be a JSON object",
        )]));
    };
    let mut issues = Vec::new();
    let mut bulk = Bulk {
        filter: EventFilter::default(),
        limit: BULK_DEFAULT,
        dry_run: false,
    };
    let text = |k: &str, v: &Value, issues: &mut Vec<FieldIssue>| match v {
        Value::String(s) if unstorable(s) => {
            issues.push(FieldIssue::new(k, UNSTORABLE));
            None
        }
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => {
            issues.push(FieldIssue::new(k, "must be a non-empty string"));
            None
        }
    };
    for (k, v) in &fields {
        match k.as_str() {
            "outcome" => match v.as_str() {
                Some(o @ ("dead" | "parked")) => bulk.filter.outcome = Some(o.to_string()),
                _ => issues.push(FieldIssue::new("outcome", "must be \"dead\" or \"parked\"")),
            },
            "source" => bulk.filter.source = text(k, v, &mut issues),
            "event_type" => bulk.filter.event_type = text(k, v, &mut issues),
            "since" | "until" => {
                let at = text(k, v, &mut issues).and_then(|t| time_filter(k, &t, &mut issues));
                if k == "since" {
                    bulk.filter.since_ms = at;
                } else {
                    bulk.filter.until_ms = at;
                }
            }
            "limit" => match v.as_number().and_then(crate::domain::request::whole_number) {
                Some(n) if (1..=BULK_MAX as u64).contains(&n) => bulk.limit = n as usize,
                _ => issues.push(FieldIssue::new(
                    "limit",
                    format!("must be an integer from 1 to {BULK_MAX}"),
                )),
            },
            "dry_run" => match v.as_bool() {
                Some(b) => bulk.dry_run = b,
                None => issues.push(FieldIssue::new("dry_run", "must be true or false")),
            },
            other => issues.push(FieldIssue::new(other, "is not a field of this request")),
        }
    }
    if bulk.filter.outcome.is_none() && !fields.contains_key("outcome") {
        issues.push(FieldIssue::new(
            "outcome",
            "is required: \"dead\" or \"parked\"",
        ));
    }
    if issues.is_empty() {
        Ok(bulk)
    } else {
        Err(ApiError::validation_failed(issues))
    }
}

/// Redelivers every parked or dead event that matches, up to `limit`,
/// newest first. The search runs on the blocking pool a bounded slice at a
/// time, one search at a time; the redeliveries go to the state machine,
/// which applies each with the config in force.
async fn bulk_redeliver(app: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    super::body::require_json(req.headers())?;
    let (_, body, _) = super::body::read(app, req, super::body::Sender::Verified)
        .await
        .map_err(|e| e.answer(app, ApiError::validation_failed))?;
    let bulk = parse_bulk(&body)?;
    let report = events::redeliver_all(app.store.as_ref(), app.store.clone(), &bulk).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "matched": report.matched,
            "redelivered": report.redelivered,
            "skipped": report.skipped,
            "outcomes": report.outcomes,
            "dry_run": bulk.dry_run,
        }),
    ))
}

fn summary(ev: &StoredEvent, outcome: Option<&OutcomeRecord>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("source".into(), json!(ev.source));
    m.insert("event_id".into(), json!(ev.event_id));
    m.insert("event_type".into(), json!(ev.meta.event_type));
    m.insert(
        "received_at".into(),
        json!(rfc3339_ms(ev.meta.received_at_ms)),
    );
    m.insert("outcome".into(), json!(ev.outcome_name(outcome)));
    if let Some(o) = outcome {
        m.insert("reason".into(), json!(o.reason));
    }
    m
}

async fn show(app: &State, source: &str, id: &str) -> Result<Response<Body>, ApiError> {
    // The supervision tests make one request panic here.
    fail::fail_point!("admin-show");
    let (ev, outcome) = events::show(app.store.as_ref(), source, id).await?;
    let mut m = summary(&ev, outcome.as_ref());
    let mut headers = Map::new();
    for (k, v) in &ev.meta.headers {
        match headers.get_mut(k) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(v);
            }
            _ => {
                headers.insert(k.clone(), json!(v));
            }
        }
    }
    m.insert("headers".into(), Value::Object(headers));
    let payload = serde_json::from_slice::<Value>(&ev.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&ev.body).into_owned()));
    m.insert("payload".into(), payload);
    m.insert("tracking_number".into(), json!(ev.meta.tracking_number));
    m.insert("order_id".into(), json!(ev.meta.order_id));
    if let Some(o) = &outcome {
        m.insert("shipment_id".into(), json!(o.shipment_id));
        m.insert("attempts".into(), json!(o.attempts));
        m.insert("dispatched_at".into(), json!(rfc3339_ms(o.at_ms)));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(m)))
}

/// `GET /admin/shipments/{id}`: a shipment as its partner reads it, and
/// whose it is.
async fn shipment(app: &State, id: &str) -> Result<Response<Body>, ApiError> {
    let rec = events::shipment(app.store.as_ref(), &ShipmentId::from(id)).await?;
    let mut view = super::v1::shipment_view(&rec);
    if let Value::Object(m) = &mut view {
        m.insert("partner".into(), json!(rec.partner));
    }
    Ok(json_response(StatusCode::OK, &view))
}

/// `GET /admin/stats`: webhook answers per minute over the last hour,
/// oldest first (the last minute still counting), and where each
/// downstream's breaker stands.
fn stats(app: &State, live: &Live) -> Response<Body> {
    let minutes: Vec<Value> = app
        .minutes
        .last_hour(crate::clock::now_ms())
        .iter()
        .map(|m| {
            let [accepted, duplicate, invalid_signature, refused] = m.counts;
            json!({
                "start": rfc3339_ms(m.start_ms),
                "accepted": accepted,
                "duplicate": duplicate,
                "invalid_signature": invalid_signature,
                "refused": refused,
            })
        })
        .collect();
    let breakers: Vec<Value> = live
        .downstream
        .breakers()
        .into_iter()
        .map(|(service, state)| json!({"service": service.as_str(), "state": state.as_str()}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"minutes": minutes, "breakers": breakers}),
    )
}

async fn redeliver(app: &State, source: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let out = events::redeliver(app.store.as_ref(), source, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "source": source,
            "event_id": id,
            "outcome": out.outcome.as_str(),
            "reason": out.reason,
            "shipment_id": out.shipment_id,
            "attempts": out.attempts,
        }),
    ))
}
