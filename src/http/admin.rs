//! `/admin`: search events, show one, redeliver parked or dead ones
//! (contract 8, 9.5, 9.13). The token is checked before anything else,
//! routing and body size included; without a configured token every
//! `/admin` path is 404.

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::error::{ApiError, Body, json_response};
use super::{LogFields, RequestId};
use crate::app::{App, Live};
use crate::clock::rfc3339_ms;
use crate::identity::FieldIssue;
use crate::store::{EventFilter, OutcomeRecord, StateError, StoredEvent};

const OUTCOMES: [&str; 7] = [
    "applied", "stale", "ignored", "parked", "dead", "pending", "stored",
];
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Index entries one search reads at most: a search that matches nothing
/// on a large store ends after this many, saying it is incomplete.
const MAX_SCAN: usize = 100_000;

/// Searches run one at a time, on the blocking pool: on two cores, a
/// second concurrent scan would only take the other core from intake.
static SEARCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub async fn handle(app: &App, live: &Live, req: Request<Incoming>) -> Response<Body> {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let Some(token) = &live.config.admin_token else {
        return ApiError::not_found("route").into_response(&request_id);
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        return ApiError::unauthenticated().into_response(&request_id);
    }
    let _slot = match super::admit(app) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(&request_id),
    };

    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .trim_start_matches("/admin/")
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let method = req.method().clone();
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
        (["events", source, id], &Method::GET) => show(app, source, id),
        (["events", _, _], _) => Err(ApiError::method_not_allowed("GET")),
        (["events", source, id, "redeliver"], &Method::POST) => redeliver(app, source, id).await,
        (["events", _, _, "redeliver"], _) => Err(ApiError::method_not_allowed("POST")),
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

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin store read failed");
    ApiError::internal()
}

async fn search(app: &App, query: &str) -> Result<Response<Body>, ApiError> {
    let mut filter = EventFilter::default();
    let mut limit = DEFAULT_LIMIT;
    let mut issues = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.into_owned();
        if v.is_empty() {
            continue;
        }
        match k.as_ref() {
            "source" => filter.source = Some(v),
            "event_id" => filter.event_id = Some(v),
            "tracking_number" => filter.tracking_number = Some(v),
            "order_id" => filter.order_id = Some(v),
            "outcome" if OUTCOMES.contains(&v.as_str()) => filter.outcome = Some(v),
            "outcome" => issues.push(FieldIssue::new(
                "outcome",
                format!("must be one of {}", OUTCOMES.join(", ")),
            )),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => issues.push(FieldIssue::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                )),
            },
            _ => {}
        }
    }
    if !issues.is_empty() {
        return Err(ApiError::validation_failed(issues));
    }
    let _turn = SEARCHES.acquire().await.map_err(store_error)?;
    let store = app.store.clone();
    let found = tokio::task::spawn_blocking(move || store.search(&filter, limit, MAX_SCAN))
        .await
        .map_err(store_error)?
        .map_err(store_error)?;
    let events: Vec<Value> = found
        .events
        .iter()
        .map(|(ev, outcome)| Value::Object(summary(ev, outcome.as_ref())))
        .collect();
    let body = if found.complete {
        json!({ "events": events })
    } else {
        json!({ "events": events, "incomplete": true })
    };
    Ok(json_response(StatusCode::OK, &body))
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
    m
}

fn show(app: &App, source: &str, id: &str) -> Result<Response<Body>, ApiError> {
    // The supervision tests make one request panic here.
    fail::fail_point!("admin-show");
    let ev = app
        .store
        .event(source, id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let outcome = app.store.outcome(source, id).map_err(store_error)?;
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
    if let Some(o) = &outcome {
        m.insert("reason".into(), json!(o.reason));
        m.insert("shipment_id".into(), json!(o.shipment_id));
        m.insert("attempts".into(), json!(o.attempts));
        m.insert("dispatched_at".into(), json!(rfc3339_ms(o.at_ms)));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(m)))
}

async fn redeliver(app: &App, source: &str, id: &str) -> Result<Response<Body>, ApiError> {
    match app.store.redeliver(source, id).await {
        Ok(out) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "source": source,
                "event_id": id,
                "outcome": out.outcome.as_str(),
                "reason": out.reason,
                "shipment_id": out.shipment_id,
                "attempts": out.attempts,
            }),
        )),
        Err(StateError::NotFound) => Err(ApiError::not_found("event")),
        Err(StateError::NotRedeliverable(why)) => Err(ApiError::not_redeliverable(why)),
        Err(StateError::Store(e)) => {
            tracing::error!(error = %e, "redeliver failed");
            Err(ApiError::store_unavailable())
        }
        Err(e) => Err(store_error(e)),
    }
}
