//! The one place where a failure becomes an HTTP status and an error body
//! (GUARANTEES.md: "Errors"). Handlers build an `ApiError`; nothing below the HTTP layer
//! knows a status code.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use crate::domain::field::FieldIssue;
use crate::json::JsonError;
use crate::service::Refusal;
use crate::store::StoreError;

pub type Body = Full<Bytes>;

/// Details listed in one error body at most.
pub const MAX_DETAILS: usize = 50;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldIssue>,
    pub retry_after: Option<u64>,
    pub allow: Option<&'static str>,
    /// Whether the connection should close after this answer (the body was
    /// not read to its end, so the connection cannot carry another request).
    pub close: bool,
}

/// The code of an error answer, carried on the response to its log line
/// (a 401 says `INVALID_SIGNATURE` or `STALE_TIMESTAMP` there).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            allow: None,
            close: false,
        }
    }

    /// The same error, telling the client when to try again.
    fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("{what} not found"),
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("method not allowed; use {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("body is larger than {limit} bytes"),
        );
        e.close = true;
        e
    }

    pub fn request_timeout() -> ApiError {
        let mut e = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request body was not received in time",
        );
        e.close = true;
        e
    }

    pub fn invalid_signature(why: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
            format!("signature invalid: {why}"),
        )
    }

    pub fn stale_timestamp() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "STALE_TIMESTAMP",
            "signature timestamp is outside the allowed tolerance",
        )
    }

    pub fn rate_limited(retry_after_secs: u64) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "rate limit exceeded",
        )
        .retry_after(retry_after_secs)
    }

    pub fn invalid_payload(message: &str, details: Vec<FieldIssue>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PAYLOAD", message);
        e.details = details;
        e
    }

    /// A request body that is not JSON (400 `VALIDATION_FAILED`), or
    /// whose JSON repeats a name (400 `INVALID_PAYLOAD` naming where: it
    /// could be read two ways; GUARANTEES.md: "Hostile traffic").
    pub fn unparsable_body(e: JsonError) -> ApiError {
        match e {
            JsonError::DuplicateKey(at) => ApiError::invalid_payload(
                "a name appears twice in one object of the body",
                vec![FieldIssue::new(at, "appears twice in its object")],
            ),
            JsonError::Syntax(_) => {
                ApiError::validation_failed(vec![FieldIssue::new("", "the body is not valid JSON")])
            }
        }
    }

    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "a valid bearer token is required",
        )
    }

    pub fn validation_failed(details: Vec<FieldIssue>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
            "the request is not valid",
        );
        e.details = details;
        e
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "writes with a body need Content-Type: application/json",
        )
    }

    pub fn idempotency_key_required() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "IDEMPOTENCY_KEY_REQUIRED",
            "an Idempotency-Key header (or idempotency_key field) is required",
        )
    }

    pub fn idempotency_key_invalid(why: &str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "IDEMPOTENCY_KEY_INVALID", why)
    }

    pub fn idempotency_conflict() -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "IDEMPOTENCY_CONFLICT",
            "this idempotency key was used for a different request",
        )
    }

    pub fn idempotency_in_progress() -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "IDEMPOTENCY_IN_PROGRESS",
            "a request with this idempotency key is still running",
        )
        .retry_after(1)
    }

    pub fn label_exists(label_id: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "LABEL_EXISTS",
            "the shipment already has a label",
        );
        e.details = vec![FieldIssue::new("label_id", label_id)];
        e
    }

    pub fn payment_failed() -> ApiError {
        ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "PAYMENT_FAILED",
            "the payment was declined",
        )
    }

    pub fn insufficient_stock() -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INSUFFICIENT_STOCK",
            "not enough stock to reserve the order's items",
        )
    }

    pub fn order_exists() -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "ORDER_EXISTS",
            "an order with this order_id was created with another idempotency key",
        )
    }

    pub fn invalid_transition(why: &str) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "INVALID_TRANSITION", why)
    }

    pub fn upstream_unavailable(service: &str, retry_after_secs: u64) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            format!("the {service} service is unavailable; retry later"),
        )
        .retry_after(retry_after_secs)
    }

    /// The error body as stored for an idempotent replay.
    /// The error body (GUARANTEES.md: "Errors"). At most `MAX_DETAILS` details are
    /// listed, the last saying how many more there were: a body with
    /// twelve thousand bad parcels must not answer megabytes.
    pub fn body_bytes(&self, request_id: &str) -> String {
        let mut details: Vec<_> = self
            .details
            .iter()
            .take(MAX_DETAILS)
            .map(|d| json!({"field": d.field, "issue": d.issue}))
            .collect();
        if self.details.len() > MAX_DETAILS {
            details.push(json!({
                "field": "",
                "issue": format!("{} more issues not listed", self.details.len() - MAX_DETAILS),
            }));
        }
        json!({"error": {"code": self.code, "message": self.message, "details": details, "request_id": request_id}})
            .to_string()
    }

    pub fn not_redeliverable(why: String) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "NOT_REDELIVERABLE", why)
    }

    /// Never shows internals: the cause is logged by the caller.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
        )
    }

    pub fn overloaded() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            "too many requests in flight; retry shortly",
        )
        .retry_after(1)
    }

    pub fn store_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORE_UNAVAILABLE",
            "the event store is unavailable; retry later",
        )
        .retry_after(5)
    }

    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let mut resp = json_bytes(self.status, self.body_bytes(request_id));
        resp.extensions_mut().insert(ErrorCode(self.code));
        let h = resp.headers_mut();
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code == "UNAUTHENTICATED" {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A store that failed to answer, on any route: 503 `STORE_UNAVAILABLE` with
/// `Retry-After` (GUARANTEES.md: "One behaviour, either store"), never a 500.
/// The cause is logged here, once, with the place that met it.
impl From<StoreError> for ApiError {
    #[track_caller]
    fn from(e: StoreError) -> ApiError {
        let at = std::panic::Location::caller();
        tracing::error!(error = %e, at = %at, "the store did not answer");
        ApiError::store_unavailable()
    }
}

/// A use case's refusal, as its answer (GUARANTEES.md: "Errors").
impl From<&Refusal> for ApiError {
    fn from(r: &Refusal) -> ApiError {
        match r {
            Refusal::InvalidTransition(why) => ApiError::invalid_transition(why),
            Refusal::LabelExists(label_id) => ApiError::label_exists(label_id.as_str()),
            Refusal::OrderExists => ApiError::order_exists(),
            Refusal::Upstream {
                service,
                retry_after_secs,
            } => ApiError::upstream_unavailable(service.as_str(), *retry_after_secs),
            Refusal::NotFound(what) => ApiError::not_found(what),
            Refusal::KeyConflict => ApiError::idempotency_conflict(),
            Refusal::KeyInProgress => ApiError::idempotency_in_progress(),
            Refusal::NotRedeliverable(why) => ApiError::not_redeliverable(why.clone()),
            Refusal::Store(e) => ApiError::from(e.clone()),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        ApiError::from(&r)
    }
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    json_bytes(status, body.to_string())
}

/// A JSON answer whose body is already serialised.
pub fn json_bytes(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
