//! `/v1`: the integrator API. Order of checks (contract 5, 9.7): the route
//! and method, the body's size and arrival (404, 405, 413, 408), then the
//! API key (401), the partner's rate limit (429), `Content-Type` on writes
//! (415), the idempotency key (400), the body (400), and only then the
//! idempotency claim and the operation.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::body::{self, Sender};
use super::error::{ApiError, Body, json_bytes, json_response};
use super::{LogFields, RequestId};
use crate::app::{App, Live};
use crate::clock::{now_ms, rfc3339_ms};
use crate::domain::order::OrderStatus;
use crate::domain::request::{NewOrder, NewShipment};
use crate::idempotency::{self, Decision, KeyError};
use crate::identity::FieldIssue;
use crate::partners::Partner;
use crate::service::orders::{self, Placed};
use crate::service::{Refusal, shipments};
use crate::store::{CancelAnswer, Completion, OrderRecord, ShipmentRecord, StateError};
use crate::telemetry::metric;

/// How long a claim holds a key before another request may resume it.
fn lease(app: &App) -> Duration {
    app.store_config.in_progress_timeout
}

/// One authenticated `/v1` request, as its handler needs it.
struct Call<'a> {
    app: &'a App,
    live: &'a Live,
    partner: &'a Partner,
    parts: &'a http::request::Parts,
    path: &'a str,
    request_id: &'a str,
    fields: LogFields,
}

impl<'a> Call<'a> {
    fn split(
        &mut self,
    ) -> (
        &'a App,
        &'a Partner,
        &'a http::request::Parts,
        &'a str,
        &'a str,
        &mut LogFields,
    ) {
        (
            self.app,
            self.partner,
            self.parts,
            self.path,
            self.request_id,
            &mut self.fields,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum V1Route {
    Shipments,
    Shipment,
    Label,
    Cancel,
    /// `POST` creates, `GET` lists.
    Orders,
    Order,
}

pub(super) async fn handle(
    app: &App,
    live: &Live,
    req: Request<Incoming>,
    route: V1Route,
) -> Response<Body> {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let allow = match route {
        V1Route::Shipment | V1Route::Order => "GET",
        V1Route::Orders => "GET, POST",
        _ => "POST",
    };
    if !allow.split(", ").any(|m| m == method.as_str()) {
        return ApiError::method_not_allowed(allow).into_response(&request_id);
    }
    let (parts, body, hold) = match body::read(app, req, Sender::Unverified).await {
        Ok(read) => read,
        Err(e) => {
            return e
                .answer(app, ApiError::validation_failed)
                .into_response(&request_id);
        }
    };
    let _slot = match super::admit(app) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(&request_id),
    };
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let partner = live.partners.authenticate(presented.as_bytes());
    // Known or refused, the body no longer counts as unverified.
    drop(hold);
    let Some(partner) = partner else {
        return ApiError::unauthenticated().into_response(&request_id);
    };
    let mut fields = LogFields {
        partner: Some(partner.name.clone()),
        ..LogFields::default()
    };
    if let Some(limiter) = &partner.limiter
        && let Err(secs) = limiter.check()
    {
        return with_fields(
            ApiError::rate_limited(secs).into_response(&request_id),
            fields,
        );
    }
    let id = path
        .trim_start_matches("/v1/shipments")
        .trim_start_matches("/v1/orders")
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    if !id.is_empty() {
        if matches!(route, V1Route::Order) {
            fields.order_id = Some(id.clone());
        } else {
            fields.shipment_id = Some(id.clone());
        }
    }
    let mut call = Call {
        app,
        live,
        partner: &partner,
        parts: &parts,
        path: &path,
        request_id: &request_id,
        fields,
    };
    let resp = match route {
        V1Route::Shipments => create_shipment(&mut call, body).await,
        V1Route::Shipment => get_shipment(app, &partner, &id, &request_id).await,
        V1Route::Label => buy_label(&mut call, &id, body).await,
        V1Route::Cancel => cancel(&mut call, &id, body).await,
        V1Route::Orders if method == Method::POST => create_order(&mut call, body).await,
        V1Route::Orders => list_orders(app, &partner, parts.uri.query(), &request_id).await,
        V1Route::Order => get_order(app, &partner, &id, &request_id).await,
    };
    let fields = call.fields;
    with_fields(resp, fields)
}

fn with_fields(mut resp: Response<Body>, fields: LogFields) -> Response<Body> {
    resp.extensions_mut().insert(fields);
    resp
}

fn count(endpoint: &'static str, outcome: &'static str) {
    metrics::counter!(metric::IDEMPOTENCY, "endpoint" => endpoint, "outcome" => outcome)
        .increment(1);
}

/// The checks every idempotent write shares, up to the parsed body: the
/// content type, the key, and a body that is JSON.
fn write_preamble(
    parts: &http::request::Parts,
    body: &Bytes,
    fields: &mut LogFields,
) -> Result<(String, Value), ApiError> {
    if !body.is_empty() {
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::unsupported_media_type());
        }
    }
    // A write without a body counts as `{}`; a body that is not JSON (or
    // repeats a name, so that its key field could be read two ways) offers
    // no key field, so the key can then only come from the header.
    let parsed = if body.is_empty() {
        Ok(json!({}))
    } else {
        crate::json::parse(body)
    };
    let headers: Vec<&[u8]> = parts
        .headers
        .get_all("idempotency-key")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let key = idempotency::key_from(&headers, parsed.as_ref().ok()).map_err(|e| match e {
        KeyError::Required => ApiError::idempotency_key_required(),
        KeyError::Invalid(why) => ApiError::idempotency_key_invalid(why),
    })?;
    fields.idempotency_key = Some(key.clone());
    let value = parsed.map_err(ApiError::unparsable_body)?;
    if !value.is_object() {
        return Err(ApiError::validation_failed(vec![FieldIssue::new(
            "",
            "the body must be a JSON object",
        )]));
    }
    Ok((key, value))
}

/// A create request, checked up to its claimed key: the preamble, the
/// body parsed by `parse`, the fingerprint, the claim. Err is the answer.
/// The request's `order_id` goes on the log line whatever the answer.
async fn checked_create<T>(
    call: &mut Call<'_>,
    endpoint: &'static str,
    body: &Bytes,
    parse: fn(&Value) -> Result<T, Vec<FieldIssue>>,
    order_id: fn(&T) -> &str,
) -> Result<(String, String, T), Response<Body>> {
    let (app, partner, parts, path, request_id, fields) = call.split();
    let (key, value) =
        write_preamble(parts, body, fields).map_err(|e| e.into_response(request_id))?;
    let request = parse(&value)
        .map_err(|issues| ApiError::validation_failed(issues).into_response(request_id))?;
    fields.order_id = Some(order_id(&request).to_string());
    let fingerprint = hex::encode(idempotency::fingerprint("POST", path, Some(&value)));
    claim(app, endpoint, partner, &key, &fingerprint, request_id).await?;
    Ok((key, fingerprint, request))
}

async fn create_shipment(call: &mut Call<'_>, body: Bytes) -> Response<Body> {
    const ENDPOINT: &str = "/v1/shipments";
    let (key, fingerprint, request) =
        match checked_create(call, ENDPOINT, &body, NewShipment::parse, |r| &r.order_id).await {
            Ok(checked) => checked,
            Err(answer) => return answer,
        };
    let live = call.live;
    let (app, partner, _, _, request_id, fields) = call.split();
    let record = shipments::new_record(&partner.name, &request);
    fields.shipment_id = Some(record.shipment_id.clone());
    let done = Done::new(app, partner, &key, &fingerprint);
    let finalize =
        |rec: &ShipmentRecord| done.answer(StatusCode::CREATED, shipment_view(rec).to_string());
    match shipments::create(app.ports(live), record, &finalize).await {
        Ok(rec) => {
            count(ENDPOINT, "executed");
            let mut resp = json_bytes(StatusCode::CREATED, shipment_view(&rec).to_string());
            if let Ok(location) =
                HeaderValue::from_str(&format!("/v1/shipments/{}", rec.shipment_id))
            {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            resp
        }
        Err(r) => refuse(app, partner, &key, &fingerprint, refused(r), request_id).await,
    }
}

/// Builds the final answer of one idempotent request, stored under its
/// key with the write it answers for.
struct Done<'a> {
    partner: &'a str,
    key: &'a str,
    fingerprint: &'a str,
    expires_at_ms: u64,
}

impl<'a> Done<'a> {
    fn new(app: &App, partner: &'a Partner, key: &'a str, fingerprint: &'a str) -> Done<'a> {
        Done {
            partner: &partner.name,
            key,
            fingerprint,
            expires_at_ms: now_ms()
                .saturating_add(app.store_config.idempotency_retention.as_millis() as u64),
        }
    }

    fn answer(&self, status: StatusCode, body: String) -> Completion {
        Completion {
            partner: self.partner.to_string(),
            key: self.key.to_string(),
            record: idempotency::Record::Done {
                fingerprint: self.fingerprint.to_string(),
                status: status.as_u16(),
                body,
                expires_at_ms: self.expires_at_ms,
            },
        }
    }
}

/// The one mapping of a use case's refusal to its answer.
fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::InvalidTransition(why) => ApiError::invalid_transition(&why),
        Refusal::LabelExists(label_id) => ApiError::label_exists(&label_id),
        Refusal::OrderExists => ApiError::order_exists(),
        Refusal::Upstream {
            service,
            retry_after_secs,
        } => ApiError::upstream_unavailable(service.as_str(), retry_after_secs),
        Refusal::Store(StateError::NotFound) => ApiError::not_found("resource"),
        Refusal::Store(e) => {
            tracing::error!(error = %e, "the store failed a write");
            ApiError::store_unavailable()
        }
    }
}

async fn create_order(call: &mut Call<'_>, body: Bytes) -> Response<Body> {
    const ENDPOINT: &str = "/v1/orders";
    let (key, fingerprint, request) =
        match checked_create(call, ENDPOINT, &body, NewOrder::parse, |r| &r.order_id).await {
            Ok(checked) => checked,
            Err(answer) => return answer,
        };
    let live = call.live;
    let (app, partner, _, _, request_id, fields) = call.split();
    let done = Done::new(app, partner, &key, &fingerprint);
    let finalize = |placed: Placed, order: &OrderRecord| {
        let (status, body) = placed_answer(placed, order, request_id);
        done.answer(status, body)
    };
    match orders::place(app.ports(live), &partner.name, &key, &request, &finalize).await {
        Ok((placed, order)) => {
            count(ENDPOINT, "executed");
            if let Some(s) = &order.progress.shipment_id {
                fields.shipment_id = Some(s.clone());
            }
            let (status, body) = placed_answer(placed, &order, request_id);
            json_bytes(status, body)
        }
        Err(r) => refuse(app, partner, &key, &fingerprint, refused(r), request_id).await,
    }
}

/// The answer to an order request that settled (contract 5.1, 9.8).
fn placed_answer(placed: Placed, order: &OrderRecord, request_id: &str) -> (StatusCode, String) {
    match placed {
        Placed::Confirmed | Placed::PendingFulfilment => {
            let status = if placed == Placed::Confirmed {
                OrderStatus::Confirmed
            } else {
                OrderStatus::PaymentSuccessPendingFulfillment
            };
            let tracking = if placed == Placed::Confirmed {
                json!(order.progress.tracking_number)
            } else {
                Value::Null
            };
            let body = json!({
                "order_id": order.order_id,
                "status": status.as_str(),
                "amount_cents": order.request.get("amount_cents"),
                "currency": order.request.get("currency"),
                "transaction_id": order.progress.transaction_id,
                "shipment_id": order.progress.shipment_id,
                "tracking_number": tracking,
            });
            (StatusCode::CREATED, body.to_string())
        }
        Placed::PaymentFailed => (
            StatusCode::PAYMENT_REQUIRED,
            ApiError::payment_failed().body_bytes(request_id),
        ),
        Placed::InsufficientStock => (
            StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::insufficient_stock().body_bytes(request_id),
        ),
    }
}

/// The Order resource (contract 9.8): the order, its payments and its
/// shipment, in the status that follows the shipment.
pub fn order_view(order: &OrderRecord, shipment: Option<&ShipmentRecord>) -> Value {
    let status = match shipment {
        Some(s) => crate::domain::order::follow(order.status, s.timeline.status()),
        None => order.status,
    };
    let history: Vec<Value> = order
        .payments
        .events()
        .iter()
        .map(|e| {
            history_entry(
                e.status.as_str(),
                e.occurred_at_ms,
                &e.source,
                Some(&e.event_id),
            )
        })
        .collect();
    json!({
        "order_id": order.order_id,
        "status": status.as_str(),
        "failure_reason": order.failure_reason,
        "customer_id": order.request.get("customer_id"),
        "amount_cents": order.request.get("amount_cents"),
        "currency": order.request.get("currency"),
        "items": order.request.get("items"),
        "ship_to": order.request.get("ship_to"),
        "transaction_id": order.progress.transaction_id,
        "shipment_id": order.progress.shipment_id,
        "tracking_number": shipment.and_then(|s| s.tracking_number.clone()),
        "payment_status": order.payments.status().map(|p| p.as_str()),
        "payment_history": history,
        "shipments": shipment.map(shipment_view).into_iter().collect::<Vec<_>>(),
        "created_at": rfc3339_ms(order.created_at_ms),
    })
}

async fn order_with_shipment(app: &App, order: &OrderRecord) -> Result<Value, ApiError> {
    let shipment = match &order.progress.shipment_id {
        Some(id) => app.store.shipment(id).await.map_err(|e| {
            tracing::error!(error = %e, "reading a shipment failed");
            ApiError::store_unavailable()
        })?,
        None => None,
    };
    Ok(order_view(order, shipment.as_ref()))
}

async fn get_order(app: &App, partner: &Partner, id: &str, request_id: &str) -> Response<Body> {
    let found = app.store.order(&partner.name, id).await.map_err(|e| {
        tracing::error!(error = %e, "reading an order failed");
        ApiError::store_unavailable()
    });
    let viewed = match found {
        Ok(Some(o)) => order_with_shipment(app, &o).await.map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    match viewed {
        Ok(Some(view)) => json_response(StatusCode::OK, &view),
        // Another partner's order does not exist for this one.
        Ok(None) => ApiError::not_found("order").into_response(request_id),
        Err(e) => e.into_response(request_id),
    }
}

/// `page_size` at most (contract 5.1).
const MAX_PAGE_SIZE: usize = 100;
/// `page` at most: a bound the API description can state (a hundred
/// million orders at the largest page size).
const MAX_PAGE: usize = 1_000_000;

async fn list_orders(
    app: &App,
    partner: &Partner,
    query: Option<&str>,
    request_id: &str,
) -> Response<Body> {
    let mut page = 1usize;
    let mut page_size = 20usize;
    let mut issues = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "page" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => page = n,
                _ => issues.push(FieldIssue::new(
                    "page",
                    format!("must be an integer from 1 to {MAX_PAGE}"),
                )),
            },
            "page_size" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => page_size = n,
                _ => issues.push(FieldIssue::new(
                    "page_size",
                    format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                )),
            },
            _ => {}
        }
    }
    if !issues.is_empty() {
        return ApiError::validation_failed(issues).into_response(request_id);
    }
    let skip = (page - 1).saturating_mul(page_size);
    let listed = match app.store.orders(&partner.name, skip, page_size).await {
        Ok((count, orders)) => {
            let mut results = Vec::with_capacity(orders.len());
            let mut failed = None;
            for o in &orders {
                match order_with_shipment(app, o).await {
                    Ok(view) => results.push(view),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            failed.map_or(Ok((count, results)), Err)
        }
        Err(e) => {
            tracing::error!(error = %e, "listing orders failed");
            Err(ApiError::store_unavailable())
        }
    };
    match listed {
        Ok((count, results)) => json_response(
            StatusCode::OK,
            &json!({"count": count, "page": page, "page_size": page_size, "results": results}),
        ),
        Err(e) => e.into_response(request_id),
    }
}

/// Claims the key, or returns the answer the request gets instead.
async fn claim(
    app: &App,
    endpoint: &'static str,
    partner: &Partner,
    key: &str,
    fingerprint: &str,
    request_id: &str,
) -> Result<(), Response<Body>> {
    match app
        .store
        .claim(&partner.name, key, fingerprint, lease(app))
        .await
    {
        Err(e) => {
            tracing::error!(error = %e, "idempotency claim failed");
            Err(ApiError::store_unavailable().into_response(request_id))
        }
        Ok(Decision::Replay { status, body }) => {
            count(endpoint, "replayed");
            Err(replay(status, body))
        }
        Ok(Decision::Conflict) => {
            count(endpoint, "conflict");
            Err(ApiError::idempotency_conflict().into_response(request_id))
        }
        Ok(Decision::InProgress) => {
            count(endpoint, "in_progress");
            Err(ApiError::idempotency_in_progress().into_response(request_id))
        }
        Ok(Decision::Run) => Ok(()),
    }
}

/// Answers with an error. A final one (contract 5.2) is stored under the
/// key for replay; any other gives the key back.
async fn refuse(
    app: &App,
    partner: &Partner,
    key: &str,
    fingerprint: &str,
    error: ApiError,
    request_id: &str,
) -> Response<Body> {
    if idempotency::is_final(error.status.as_u16(), Some(error.code)) {
        let completion = Completion {
            partner: partner.name.clone(),
            key: key.to_string(),
            record: idempotency::Record::Done {
                fingerprint: fingerprint.to_string(),
                status: error.status.as_u16(),
                body: error.body_bytes(request_id),
                expires_at_ms: now_ms() + app.store_config.idempotency_retention.as_millis() as u64,
            },
        };
        if let Err(e) = app.store.finish(completion).await {
            tracing::error!(error = %e, "storing a final answer failed");
            app.store.release(&partner.name, key).await;
            return ApiError::store_unavailable().into_response(request_id);
        }
    } else {
        app.store.release(&partner.name, key).await;
    }
    error.into_response(request_id)
}

/// The shipment behind `id` for this partner; None when it is another's
/// or does not exist.
async fn own_shipment(
    app: &App,
    partner: &Partner,
    id: &str,
) -> Result<Option<ShipmentRecord>, ApiError> {
    match app.store.shipment(id).await {
        Ok(Some(rec)) if rec.partner == partner.name => Ok(Some(rec)),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "reading a shipment failed");
            Err(ApiError::store_unavailable())
        }
    }
}

async fn buy_label(call: &mut Call<'_>, id: &str, body: Bytes) -> Response<Body> {
    let live = call.live;
    let (app, partner, parts, path, request_id, fields) = call.split();
    const ENDPOINT: &str = "/v1/shipments/{shipment_id}/label";
    let (key, value) = match write_preamble(parts, &body, fields) {
        Ok(k) => k,
        Err(e) => return e.into_response(request_id),
    };
    let format = match value.get("format") {
        None | Some(Value::Null) => "PDF".to_string(),
        Some(Value::String(f)) if f == "PDF" || f == "ZPL" => f.clone(),
        Some(_) => {
            return ApiError::validation_failed(vec![FieldIssue::new(
                "/format",
                "must be \"PDF\" or \"ZPL\"",
            )])
            .into_response(request_id);
        }
    };
    let shipment = match own_shipment(app, partner, id).await {
        Ok(Some(s)) => s,
        Ok(None) => return ApiError::not_found("shipment").into_response(request_id),
        Err(e) => return e.into_response(request_id),
    };
    let fingerprint = hex::encode(idempotency::fingerprint("POST", path, Some(&value)));
    if let Err(answer) = claim(app, ENDPOINT, partner, &key, &fingerprint, request_id).await {
        return answer;
    }
    // The crash tests kill the process at each step boundary: the process
    // must really die, not one task.
    fail::fail_point!("label-after-claim", |_| std::process::abort());
    let done = Done::new(app, partner, &key, &fingerprint);
    let finalize = |label: &Value| done.answer(StatusCode::CREATED, label.to_string());
    match shipments::buy_label(app.ports(live), &shipment, &format, &finalize).await {
        Ok(label) => {
            count(ENDPOINT, "executed");
            json_bytes(StatusCode::CREATED, label.to_string())
        }
        Err(r) => refuse(app, partner, &key, &fingerprint, refused(r), request_id).await,
    }
}

async fn cancel(call: &mut Call<'_>, id: &str, body: Bytes) -> Response<Body> {
    let live = call.live;
    let (app, partner, parts, path, request_id, fields) = call.split();
    const ENDPOINT: &str = "/v1/shipments/{shipment_id}/cancel";
    let (key, value) = match write_preamble(parts, &body, fields) {
        Ok(k) => k,
        Err(e) => return e.into_response(request_id),
    };
    let shipment = match own_shipment(app, partner, id).await {
        Ok(Some(s)) => s,
        Ok(None) => return ApiError::not_found("shipment").into_response(request_id),
        Err(e) => return e.into_response(request_id),
    };
    let fingerprint = hex::encode(idempotency::fingerprint("POST", path, Some(&value)));
    if let Err(answer) = claim(app, ENDPOINT, partner, &key, &fingerprint, request_id).await {
        return answer;
    }
    let answer = CancelAnswer {
        partner: partner.name.clone(),
        key: key.clone(),
        fingerprint: fingerprint.clone(),
        expires_at_ms: now_ms() + app.store_config.idempotency_retention.as_millis() as u64,
        render: shipment_view,
    };
    match shipments::cancel(app.ports(live), &shipment, answer).await {
        Ok(rec) => {
            count(ENDPOINT, "executed");
            json_response(StatusCode::OK, &shipment_view(&rec))
        }
        Err(r) => refuse(app, partner, &key, &fingerprint, refused(r), request_id).await,
    }
}

async fn get_shipment(app: &App, partner: &Partner, id: &str, request_id: &str) -> Response<Body> {
    match app.store.shipment(id).await {
        Ok(Some(rec)) if rec.partner == partner.name => {
            json_response(StatusCode::OK, &shipment_view(&rec))
        }
        // Another partner's shipment does not exist for this one.
        Ok(_) => ApiError::not_found("shipment").into_response(request_id),
        Err(e) => {
            tracing::error!(error = %e, "reading a shipment failed");
            ApiError::store_unavailable().into_response(request_id)
        }
    }
}

/// A stored answer, byte for byte, marked as a replay.
fn replay(status: u16, body: String) -> Response<Body> {
    let mut resp = json_bytes(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body);
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

/// One entry of a shipment's `history` or an order's `payment_history`.
fn history_entry(status: &str, occurred_at_ms: i64, source: &str, event_id: Option<&str>) -> Value {
    json!({
        "status": status,
        "occurred_at": rfc3339_ms(occurred_at_ms),
        "source": source,
        "event_id": event_id,
    })
}

/// The Shipment resource of contract 5.1.
pub fn shipment_view(rec: &ShipmentRecord) -> Value {
    let history: Vec<Value> = rec
        .timeline
        .history()
        .map(|e| {
            history_entry(
                e.status.as_str(),
                e.occurred_at_ms,
                &e.source,
                e.event_id.as_deref(),
            )
        })
        .collect();
    let mut view = json!({
        "shipment_id": rec.shipment_id,
        "order_id": rec.order_id,
        "status": rec.timeline.status().as_str(),
        "tracking_number": rec.tracking_number,
        "label": rec.label,
        "history": history,
        "created_at": rfc3339_ms(rec.created_at_ms),
    });
    if let (Value::Object(view), Value::Object(details)) = (&mut view, &rec.details) {
        for (k, v) in details {
            if k != "order_id" {
                view.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    view
}
