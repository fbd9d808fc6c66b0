//! `POST /webhooks/{source}`: transport checks (size, time), then the
//! ingest use case, then the answer.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::State;
use super::body::{self, BodyError, Sender};
use super::error::{ApiError, Body, json_response};
use super::{LogFields, RequestId, with_standing};
use crate::clock::rfc3339_ms;
use crate::live::Live;
use crate::telemetry::{metric, outcome};
use crate::webhook::ingest::{Outcome, Refusal};
use crate::webhook::signature::Rejection;

pub async fn handle(
    app: &State,
    live: &Live,
    req: Request<Incoming>,
    source_name: &str,
) -> Response<Body> {
    let request_id = RequestId::of(&req);
    let Some(source) = live.ingest.source(source_name) else {
        return ApiError::not_found("source").into_response(&request_id);
    };
    if req.method() != Method::POST {
        return ApiError::method_not_allowed("POST").into_response(&request_id);
    }
    let name = source.config.name.clone();
    let count = |o: &'static str| {
        metrics::counter!(metric::WEBHOOKS, "source" => name.clone(), "outcome" => o).increment(1);
        app.minutes
            .record(super::minutes::Answer::of(o), crate::clock::now_ms());
    };
    let mut fields = LogFields {
        source: Some(name.clone()),
        ..LogFields::default()
    };

    let (parts, body, hold) = match body::read(app, req, Sender::Unverified).await {
        Ok(read) => read,
        Err(e) => {
            match e {
                BodyError::TooLarge => count(outcome::TOO_LARGE),
                BodyError::Overloaded => count(outcome::UNAVAILABLE),
                // A client that leaves before it was verified is nobody's:
                // it moves no counter of the source it named.
                BodyError::Timeout | BodyError::Unreadable => {}
            }
            let answer = e.answer(app, |d| {
                ApiError::invalid_payload("the body could not be read", d)
            });
            return with_fields(answer.into_response(&request_id), fields);
        }
    };

    let _slot = match super::admit(app) {
        Ok(slot) => slot,
        Err(e) => {
            count(outcome::UNAVAILABLE);
            return with_fields(e.into_response(&request_id), fields);
        }
    };
    let verified = live.ingest.verify(&source, &parts.headers, body);
    // Verified or refused, the body no longer counts as unverified.
    drop(hold);
    let limited = verified.and_then(|d| Ok((live.ingest.limit(&d)?, d)));
    let (standing, received) = match limited {
        Ok((standing, delivery)) => (standing, live.ingest.accept(delivery, &parts.headers).await),
        Err(refusal) => (None, Err(refusal)),
    };
    // Where the source's limit stands, for the RateLimit headers.
    let standing = match &received {
        Err(Refusal::RateLimited(limited)) => Some(limited.standing),
        _ => standing,
    };
    let resp = match received {
        Ok(Outcome::Accepted {
            event_id,
            received_at_ms,
        }) => {
            count(outcome::ACCEPTED);
            metrics::gauge!(crate::telemetry::metric::SOURCE_LAST_ACCEPTED, "source" => name.to_string())
                .set(received_at_ms as f64 / 1000.0);
            let answer = (StatusCode::ACCEPTED, "accepted", "received_at");
            delivery_answer(answer, &name, event_id, received_at_ms, &mut fields)
        }
        Ok(Outcome::Duplicate {
            event_id,
            first_received_at_ms,
            conflict,
        }) => {
            if conflict {
                count(outcome::DUPLICATE_CONFLICT);
                tracing::warn!(
                    source = %name,
                    event_id = %event_id,
                    request_id = %request_id,
                    "duplicate delivery with a different body; the first copy is kept"
                );
            } else {
                count(outcome::DUPLICATE);
            }
            let answer = (StatusCode::OK, "duplicate", "first_received_at");
            delivery_answer(answer, &name, event_id, first_received_at_ms, &mut fields)
        }
        Err(Refusal::Signature(Rejection::Stale { .. })) => {
            count(outcome::STALE_TIMESTAMP);
            ApiError::stale_timestamp().into_response(&request_id)
        }
        Err(Refusal::Signature(Rejection::Invalid(why))) => {
            count(outcome::INVALID_SIGNATURE);
            ApiError::invalid_signature(why).into_response(&request_id)
        }
        Err(Refusal::RateLimited(limited)) => {
            count(outcome::RATE_LIMITED);
            ApiError::rate_limited(limited.retry_after_secs).into_response(&request_id)
        }
        Err(Refusal::InvalidPayload(details)) => {
            count(outcome::INVALID_PAYLOAD);
            ApiError::invalid_payload("the webhook body is not usable", details)
                .into_response(&request_id)
        }
        Err(Refusal::Unavailable(e)) => {
            count(outcome::UNAVAILABLE);
            tracing::error!(source = %name, request_id = %request_id, error = %e, "store write failed");
            ApiError::store_unavailable().into_response(&request_id)
        }
    };
    with_fields(with_standing(resp, standing, "source"), fields)
}

fn with_fields(mut resp: Response<Body>, fields: LogFields) -> Response<Body> {
    resp.extensions_mut().insert(fields);
    resp
}

/// A new or duplicate delivery's answer: its status, source, event id and
/// when (the first copy) was received, under `at_name`.
fn delivery_answer(
    (code, status, at_name): (StatusCode, &str, &str),
    source: &str,
    event_id: String,
    at_ms: u64,
    fields: &mut LogFields,
) -> Response<Body> {
    let body = json!({
        "status": status,
        "source": source,
        "event_id": event_id,
        at_name: rfc3339_ms(at_ms),
    });
    fields.event_id = Some(event_id);
    json_response(code, &body)
}
