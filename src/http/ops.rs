//! `/healthz`, `/readyz`, `/metrics`, `/openapi.json`: never
//! rate-limited, never shed.

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use super::Route;
use super::State;
use super::error::{ApiError, Body, json_response};

/// The API described (GUARANTEES.md: "The API described"): `docs/openapi.json`, kept by hand
/// and checked against the router by `tests/api/openapi.rs`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub(super) async fn handle(
    app: &State,
    route: &Route<'_>,
    method: &Method,
    request_id: &str,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::method_not_allowed("GET").into_response(request_id);
    }
    match route {
        Route::Healthz => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Route::Readyz if app.is_ready() => {
            json_response(StatusCode::OK, &json!({"status": "ready"}))
        }
        Route::Readyz => ApiError::store_unavailable().into_response(request_id),
        Route::OpenApi => {
            let mut resp = Response::new(OPENAPI.into());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => {
            // A gauge the store cannot read now keeps its last value.
            if let Ok(pending) = app.store.inbox_pending().await {
                metrics::gauge!(crate::telemetry::metric::INBOX_PENDING).set(pending as f64);
            }
            let oldest = app.store.oldest_pending_ms().await.ok().flatten();
            let age = oldest.map_or(0.0, |at| {
                crate::clock::now_ms().saturating_sub(at) as f64 / 1000.0
            });
            metrics::gauge!(crate::telemetry::metric::INBOX_OLDEST_AGE).set(age);
            if let Ok(dead) = app.store.dead().await {
                metrics::gauge!(crate::telemetry::metric::DEAD).set(dead as f64);
            }
            if let Ok(parked) = app.store.parked().await {
                metrics::gauge!(crate::telemetry::metric::PARKED).set(parked as f64);
            }
            if let Ok(owed) = app.store.voids_owed().await {
                metrics::gauge!(crate::telemetry::metric::VOIDS_OWED).set(owed as f64);
            }
            crate::telemetry::collect_process();
            let mut resp = Response::new(app.metrics.render().into());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
    }
}
