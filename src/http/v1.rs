//! `/v1`: the integrator API. Order of checks (GUARANTEES.md: "The integrator API"): the route
//! and method, the body's size and arrival (404, 405, 413, 408), then the
//! API key (401), the partner's rate limit (429), `Content-Type` on writes
//! (415), the idempotency key (400), the body (400), and only then the
//! use case (`service`), which claims the key and runs.
//!
//! Each handler extracts, calls its use case and renders the outcome; a
//! refusal travels by `?` to `ApiError`'s one conversion. The answers
//! stored under idempotency keys are worded here too ([`Answers`]), and
//! handed to the use case, which stores them with their effects.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::State;
use super::body::{self, Sender};
use super::error::{ApiError, Body, json_bytes, json_response};
use super::{LogFields, RequestId};
use crate::clock::rfc3339_ms;
use crate::domain::field::{FieldIssue, count_up_to};
use crate::domain::ids::{OrderId, ShipmentId};
use crate::domain::label::{Label, LabelFormat, LabelVoid};
use crate::domain::order::OrderStatus;
use crate::domain::request::{NewOrder, NewShipment};
use crate::idempotency::{self, KeyError};
use crate::live::Live;
use crate::partners::Partner;
use crate::ratelimit::Standing;
use crate::service::{
    Answered, Keyed, Placed, Ports, Refusal, Render, StoredAnswer, orders, shipments,
};
use crate::store::{OrderRecord, ShipmentRecord};
use crate::telemetry::metric;

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

impl V1Route {
    /// The route template, the `endpoint` label of the idempotency counter.
    fn endpoint(self) -> &'static str {
        match self {
            V1Route::Shipments => "/v1/shipments",
            V1Route::Shipment => "/v1/shipments/{shipment_id}",
            V1Route::Label => "/v1/shipments/{shipment_id}/label",
            V1Route::Cancel => "/v1/shipments/{shipment_id}/cancel",
            V1Route::Orders => "/v1/orders",
            V1Route::Order => "/v1/orders/{order_id}",
        }
    }
}

/// Every idempotent endpoint's outcomes at 0 from the start (see
/// `telemetry::export_from_zero`).
pub(crate) fn export_from_zero() {
    for route in [
        V1Route::Shipments,
        V1Route::Label,
        V1Route::Cancel,
        V1Route::Orders,
    ] {
        for outcome in ["executed", "replayed", "conflict", "in_progress"] {
            metrics::counter!(metric::IDEMPOTENCY, "endpoint" => route.endpoint(), "outcome" => outcome)
                .increment(0);
        }
    }
}

pub(super) async fn handle(
    app: &State,
    live: &Live,
    req: Request<Incoming>,
    route: V1Route,
) -> Response<Body> {
    let request_id = RequestId::of(&req);
    let mut fields = LogFields::default();
    let mut standing = None;
    let answer = match call(
        app,
        live,
        req,
        route,
        &request_id,
        (&mut fields, &mut standing),
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => e.into_response(&request_id),
    };
    with_fields(super::with_standing(answer, standing, "partner"), fields)
}

/// Everything up to the use case: transport, the partner, its limit; then
/// the route's handler.
async fn call(
    app: &State,
    live: &Live,
    req: Request<Incoming>,
    route: V1Route,
    request_id: &str,
    (fields, standing): (&mut LogFields, &mut Option<Standing>),
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let allow = match route {
        V1Route::Shipment | V1Route::Order => "GET",
        V1Route::Orders => "GET, POST",
        _ => "POST",
    };
    if !allow.split(", ").any(|m| m == method.as_str()) {
        return Err(ApiError::method_not_allowed(allow));
    }
    let (parts, body, hold) = body::read(app, req, Sender::Unverified)
        .await
        .map_err(|e| e.answer(app, ApiError::validation_failed))?;
    let _slot = super::admit(app)?;
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let partner = live.partners.authenticate(presented.as_bytes());
    // Known or refused, the body no longer counts as unverified.
    drop(hold);
    let partner = partner.ok_or_else(ApiError::unauthenticated)?;
    fields.partner = Some(partner.name.to_string());
    if let Some(limiter) = &partner.limiter {
        match limiter.check() {
            Ok(s) => *standing = Some(s),
            Err(limited) => {
                *standing = Some(limited.standing);
                return Err(ApiError::rate_limited(limited.retry_after_secs));
            }
        }
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
        if route == V1Route::Order {
            fields.order_id = Some(id.clone());
        } else {
            fields.shipment_id = Some(id.clone());
        }
    }
    let mut call = Call {
        app,
        partner: &partner,
        ports: app.ports(live),
        parts: &parts,
        path: &path,
        answers: Answers { request_id },
        endpoint: route.endpoint(),
        fields,
    };
    match route {
        V1Route::Shipments => call.create_shipment(&body).await,
        V1Route::Shipment => call.get_shipment(&ShipmentId::from(id)).await,
        V1Route::Label => call.buy_label(&ShipmentId::from(id), &body).await,
        V1Route::Cancel => call.cancel(&ShipmentId::from(id), &body).await,
        V1Route::Orders if method == Method::POST => call.create_order(&body).await,
        V1Route::Orders => call.list_orders().await,
        V1Route::Order => call.get_order(&OrderId::from(id)).await,
    }
}

fn with_fields(mut resp: Response<Body>, fields: LogFields) -> Response<Body> {
    resp.extensions_mut().insert(fields);
    resp
}

/// One authenticated `/v1` request, as its handler needs it.
struct Call<'a> {
    app: &'a State,
    partner: &'a Partner,
    ports: Ports<'a>,
    parts: &'a http::request::Parts,
    path: &'a str,
    answers: Answers<'a>,
    endpoint: &'static str,
    fields: &'a mut LogFields,
}

impl Call<'_> {
    /// The checks every idempotent write shares, up to the parsed body:
    /// the content type, the key, a body that is a JSON object; the write
    /// keyed by partner, key and fingerprint.
    fn keyed(&mut self, body: &Bytes) -> Result<(Keyed, Value), ApiError> {
        if !body.is_empty() {
            super::body::require_json(&self.parts.headers)?;
        }
        // A write without a body counts as `{}`; a body that is not JSON
        // (or repeats a name, so that its key field could be read two
        // ways) offers no key field, so the key can then only come from
        // the header.
        let parsed = if body.is_empty() {
            Ok(json!({}))
        } else {
            crate::json::parse(body)
        };
        let headers: Vec<&[u8]> = self
            .parts
            .headers
            .get_all("idempotency-key")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let key = idempotency::key_from(&headers, parsed.as_ref().ok()).map_err(|e| match e {
            KeyError::Required => ApiError::idempotency_key_required(),
            KeyError::Invalid(why) => ApiError::idempotency_key_invalid(why),
        })?;
        self.fields.idempotency_key = Some(key.to_string());
        let value = parsed.map_err(ApiError::unparsable_body)?;
        if !value.is_object() {
            return Err(ApiError::validation_failed(vec![FieldIssue::new(
                "",
                "the body must be a JSON object",
            )]));
        }
        let store = &self.app.store_config;
        let keyed = Keyed {
            partner: self.partner.name.clone(),
            key,
            fingerprint: idempotency::fingerprint("POST", self.path, Some(&value)),
            lease: store.in_progress_timeout,
            retention: store.idempotency_retention,
        };
        Ok((keyed, value))
    }

    /// Counts how a keyed write went (`waybill_idempotency_total`).
    fn count(&self, outcome: &'static str) {
        metrics::counter!(metric::IDEMPOTENCY, "endpoint" => self.endpoint, "outcome" => outcome)
            .increment(1);
    }

    /// A keyed write's answer: what it did, rendered by `fresh`, or the
    /// stored answer repeated; a refusal is counted and passed on.
    fn answered<T>(
        &self,
        result: Result<Answered<T>, Refusal>,
        fresh: impl FnOnce(T) -> Response<Body>,
    ) -> Result<Response<Body>, ApiError> {
        match result {
            Ok(Answered::Ran(done)) => {
                self.count("executed");
                Ok(fresh(done))
            }
            Ok(Answered::Replayed(stored)) => {
                self.count("replayed");
                Ok(replay(stored))
            }
            Err(refusal) => {
                match refusal {
                    Refusal::KeyConflict => self.count("conflict"),
                    Refusal::KeyInProgress => self.count("in_progress"),
                    _ => {}
                }
                Err(refusal.into())
            }
        }
    }

    async fn create_shipment(&mut self, body: &Bytes) -> Result<Response<Body>, ApiError> {
        let (keyed, value) = self.keyed(body)?;
        let request = NewShipment::parse(&value).map_err(ApiError::validation_failed)?;
        self.fields.order_id = Some(request.order_id.to_string());
        let result = shipments::create(self.ports, &keyed, &request, &self.answers).await;
        if let Ok(Answered::Ran(rec)) = &result {
            self.fields.shipment_id = Some(rec.shipment_id.to_string());
        }
        self.answered(result, |rec| {
            let mut resp = json_bytes(StatusCode::CREATED, shipment_view(&rec).to_string());
            if let Ok(location) =
                HeaderValue::from_str(&format!("/v1/shipments/{}", rec.shipment_id))
            {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            resp
        })
    }

    async fn buy_label(
        &mut self,
        id: &ShipmentId,
        body: &Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let (keyed, value) = self.keyed(body)?;
        let format = match value.get("format") {
            None | Some(Value::Null) => LabelFormat::Pdf,
            Some(f) => f.as_str().and_then(LabelFormat::parse).ok_or_else(|| {
                ApiError::validation_failed(vec![FieldIssue::new(
                    "/format",
                    "must be \"PDF\" or \"ZPL\"",
                )])
            })?,
        };
        let result = shipments::label(self.ports, &keyed, id, format, &self.answers).await;
        self.answered(result, |label| {
            json_bytes(StatusCode::CREATED, label_view(&label).to_string())
        })
    }

    async fn cancel(&mut self, id: &ShipmentId, body: &Bytes) -> Result<Response<Body>, ApiError> {
        let (keyed, _) = self.keyed(body)?;
        let result = shipments::cancel_keyed(self.ports, &keyed, id, &self.answers).await;
        self.answered(result, |rec| {
            json_response(StatusCode::OK, &shipment_view(&rec))
        })
    }

    async fn create_order(&mut self, body: &Bytes) -> Result<Response<Body>, ApiError> {
        let (keyed, value) = self.keyed(body)?;
        let request = NewOrder::parse(&value).map_err(ApiError::validation_failed)?;
        self.fields.order_id = Some(request.order_id.to_string());
        let result = orders::order(self.ports, &keyed, &request, &self.answers).await;
        if let Ok(Answered::Ran((_, order))) = &result
            && let Some(s) = &order.progress.shipment_id
        {
            self.fields.shipment_id = Some(s.to_string());
        }
        let request_id = self.answers.request_id;
        self.answered(result, |(placed, order)| {
            let answer = placed_answer(placed, &order, request_id);
            json_bytes(
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
                answer.body,
            )
        })
    }

    async fn get_shipment(&mut self, id: &ShipmentId) -> Result<Response<Body>, ApiError> {
        let rec = shipments::own(self.ports, &self.partner.name, id).await?;
        Ok(json_response(StatusCode::OK, &shipment_view(&rec)))
    }

    async fn get_order(&mut self, id: &OrderId) -> Result<Response<Body>, ApiError> {
        let (order, shipment) = orders::get(self.ports, &self.partner.name, id).await?;
        Ok(json_response(
            StatusCode::OK,
            &order_view(&order, shipment.as_ref()),
        ))
    }

    async fn list_orders(&mut self) -> Result<Response<Body>, ApiError> {
        let mut page = 1usize;
        let mut page_size = 20usize;
        let mut issues = Vec::new();
        for (k, v) in form_urlencoded::parse(self.parts.uri.query().unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "page" => {
                    page = count_up_to("page", &v, MAX_PAGE, &mut issues).unwrap_or(page);
                }
                "page_size" => {
                    page_size = count_up_to("page_size", &v, MAX_PAGE_SIZE, &mut issues)
                        .unwrap_or(page_size);
                }
                _ => {}
            }
        }
        if !issues.is_empty() {
            return Err(ApiError::validation_failed(issues));
        }
        let skip = (page - 1).saturating_mul(page_size);
        let (count, listed) = orders::list(self.ports, &self.partner.name, skip, page_size).await?;
        let results: Vec<Value> = listed
            .iter()
            .map(|(o, s)| order_view(o, s.as_ref()))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"count": count, "page": page, "page_size": page_size, "results": results}),
        ))
    }
}

/// `page_size` at most (GUARANTEES.md: "The integrator API").
const MAX_PAGE_SIZE: usize = 100;
/// `page` at most: a bound the API description can state (a hundred
/// million orders at the largest page size).
const MAX_PAGE: usize = 1_000_000;

/// How this request's stored answers are worded: the same bodies a fresh
/// answer has, errors with this request's id.
struct Answers<'a> {
    request_id: &'a str,
}

impl Render for Answers<'_> {
    fn created(&self, shipment: &ShipmentRecord) -> StoredAnswer {
        StoredAnswer {
            status: StatusCode::CREATED.as_u16(),
            body: shipment_view(shipment).to_string(),
        }
    }

    fn label(&self, label: &Label) -> StoredAnswer {
        StoredAnswer {
            status: StatusCode::CREATED.as_u16(),
            body: label_view(label).to_string(),
        }
    }

    fn placed(&self, placed: Placed, order: &OrderRecord) -> StoredAnswer {
        placed_answer(placed, order, self.request_id)
    }

    fn refusal(&self, refusal: &Refusal) -> StoredAnswer {
        let e = ApiError::from(refusal);
        StoredAnswer {
            status: e.status.as_u16(),
            body: e.body_bytes(self.request_id),
        }
    }

    fn cancelled(&self) -> fn(&ShipmentRecord) -> StoredAnswer {
        |shipment| StoredAnswer {
            status: StatusCode::OK.as_u16(),
            body: shipment_view(shipment).to_string(),
        }
    }
}

/// A stored answer, byte for byte, marked as a replay.
fn replay(stored: StoredAnswer) -> Response<Body> {
    let mut resp = json_bytes(
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
        stored.body,
    );
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

/// The answer to an order request that settled (GUARANTEES.md: "The integrator API").
fn placed_answer(placed: Placed, order: &OrderRecord, request_id: &str) -> StoredAnswer {
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
                "amount_cents": order.request.amount_cents,
                "currency": order.request.currency,
                "transaction_id": order.progress.transaction_id,
                "shipment_id": order.progress.shipment_id,
                "tracking_number": tracking,
            });
            StoredAnswer {
                status: StatusCode::CREATED.as_u16(),
                body: body.to_string(),
            }
        }
        Placed::PaymentFailed => StoredAnswer {
            status: StatusCode::PAYMENT_REQUIRED.as_u16(),
            body: ApiError::payment_failed().body_bytes(request_id),
        },
        Placed::InsufficientStock => StoredAnswer {
            status: StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
            body: ApiError::insufficient_stock().body_bytes(request_id),
        },
    }
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

/// The label resource (GUARANTEES.md: "The integrator API"), with its members in order of name
/// as every answer has them.
fn label_view(label: &Label) -> Value {
    serde_json::to_value(label).unwrap_or(Value::Null)
}

/// The Shipment resource (GUARANTEES.md: "The integrator API").
pub(super) fn shipment_view(rec: &ShipmentRecord) -> Value {
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
        "label": rec.label.as_ref().map(label_view),
        "label_void": rec.label_void.as_ref().map(label_void_view),
        "history": history,
        "created_at": rfc3339_ms(rec.created_at_ms),
    });
    if let (Value::Object(view), Ok(Value::Object(details))) =
        (&mut view, serde_json::to_value(&rec.details))
    {
        for (k, v) in details {
            view.entry(k).or_insert(v);
        }
    }
    view
}

/// A cancel's owed label void as integrators read it: `owed` until the
/// carrier confirms, then `voided` (with the label) or `nothing_sold`.
fn label_void_view(void: &LabelVoid) -> Value {
    match void {
        LabelVoid::Owed { .. } => json!({"status": "owed"}),
        LabelVoid::Voided { label_id, at_ms } => {
            json!({"status": "voided", "label_id": label_id, "at": rfc3339_ms(*at_ms)})
        }
        LabelVoid::NothingSold { at_ms } => {
            json!({"status": "nothing_sold", "at": rfc3339_ms(*at_ms)})
        }
    }
}

/// The Order resource (GUARANTEES.md: "The integrator API"): the order, its payments and its
/// shipment, in the status that follows the shipment.
fn order_view(order: &OrderRecord, shipment: Option<&ShipmentRecord>) -> Value {
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
    let request = &order.request;
    json!({
        "order_id": order.order_id,
        "status": status.as_str(),
        "failure_reason": order.failure_reason.map(|f| f.as_str()),
        "customer_id": request.customer_id,
        "amount_cents": request.amount_cents,
        "currency": request.currency,
        "items": request.items,
        "ship_to": request.ship_to,
        "transaction_id": order.progress.transaction_id,
        "shipment_id": order.progress.shipment_id,
        "tracking_number": shipment.and_then(|s| s.tracking_number.clone()),
        "payment_status": order.payments.status().map(|p| p.as_str()),
        "payment_history": history,
        "shipments": shipment.map(shipment_view).into_iter().collect::<Vec<_>>(),
        "created_at": rfc3339_ms(order.created_at_ms),
    })
}
