//! The HTTP edge: accept loop, graceful drain, and the per-request stack.
//!
//! Order of the stack, outermost first, and why:
//! 1. `edge`: request id, `nosniff`, `Connection: close` while draining,
//!    metrics by route template, one access-log line. Outermost so that
//!    every answer, a shed one included, carries them.
//! 2. Operational routes (`/healthz`, `/readyz`, `/metrics`) are answered
//!    here, before load shedding: a gateway at its limit must still say
//!    whether it is alive and show the metrics that explain why.
//! 3. tower's `LoadShed` over `ConcurrencyLimit(max_in_flight)`: beyond the
//!    limit a request is refused at once (503 `OVERLOADED`) instead of
//!    queueing and timing out.
//! 4. `router`: resource handlers.

mod admin;
mod body;
pub mod error;
mod ops;
mod v1;
mod webhooks;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use crate::app::App;
use crate::telemetry::{metric, outcome};
use error::{ApiError, Body};

/// The request id, put in request extensions by the edge.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What a handler learned that belongs on the access-log line.
#[derive(Debug, Clone, Default)]
pub struct LogFields {
    pub source: Option<String>,
    pub event_id: Option<String>,
    pub partner: Option<String>,
    pub idempotency_key: Option<String>,
    pub shipment_id: Option<String>,
}

/// Route templates: metrics are labelled by these, never by raw paths.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    Webhook(&'a str),
    AdminEvents,
    AdminEvent,
    AdminRedeliver,
    /// Any other `/admin` path: still the admin handler's, which checks the
    /// token before it says the path does not exist.
    AdminOther,
    V1Shipments,
    V1Shipment,
    V1Label,
    V1Cancel,
    Unmatched,
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Route<'a> {
        match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/admin/events" => Route::AdminEvents,
            "/v1/shipments" => Route::V1Shipments,
            _ if path == "/admin" || path.starts_with("/admin/") => {
                match path.split('/').skip(2).collect::<Vec<_>>().as_slice() {
                    ["events", s, e] if !s.is_empty() && !e.is_empty() => Route::AdminEvent,
                    ["events", s, e, "redeliver"] if !s.is_empty() && !e.is_empty() => {
                        Route::AdminRedeliver
                    }
                    _ => Route::AdminOther,
                }
            }
            _ => {
                if let Some(name) = path.strip_prefix("/webhooks/")
                    && !name.is_empty()
                    && !name.contains('/')
                {
                    Route::Webhook(name)
                } else if let Some(rest) = path.strip_prefix("/v1/shipments/") {
                    match rest.split('/').collect::<Vec<_>>().as_slice() {
                        [id] if !id.is_empty() => Route::V1Shipment,
                        [id, "label"] if !id.is_empty() => Route::V1Label,
                        [id, "cancel"] if !id.is_empty() => Route::V1Cancel,
                        _ => Route::Unmatched,
                    }
                } else {
                    Route::Unmatched
                }
            }
        }
    }

    fn template(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Webhook(_) => "/webhooks/{source}",
            Route::AdminEvents => "/admin/events",
            Route::AdminEvent => "/admin/events/{source}/{event_id}",
            Route::AdminRedeliver => "/admin/events/{source}/{event_id}/redeliver",
            Route::AdminOther => "/admin",
            Route::V1Shipments => "/v1/shipments",
            Route::V1Shipment => "/v1/shipments/{shipment_id}",
            Route::V1Label => "/v1/shipments/{shipment_id}/label",
            Route::V1Cancel => "/v1/shipments/{shipment_id}/cancel",
            Route::Unmatched => "unmatched",
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish within `server.shutdown_grace`, and returns.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let inner = {
        let app = app.clone();
        ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(app.config.server.max_in_flight)
            .service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(router(&app, req).await) }
            })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.server.request_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let inner = inner.clone();
                let svc = hyper::service::service_fn(move |req| edge(app.clone(), inner.clone(), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    app.draining.store(true, Ordering::Relaxed);
    tracing::info!("draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(app.config.server.shutdown_grace) => {
            tracing::warn!("shutdown grace elapsed with requests still in flight");
        }
    }
}

async fn edge<S>(
    app: Arc<App>,
    inner: S,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = BoxError>,
{
    let started = Instant::now();
    let _in_flight = InFlight::enter();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = Route::of(&path);

    let mut resp = match route {
        Route::Healthz | Route::Readyz | Route::Metrics => {
            ops::handle(&app, &route, &method, &request_id)
        }
        _ => {
            req.extensions_mut().insert(RequestId(request_id.clone()));
            match inner.oneshot(req).await {
                Ok(resp) => resp,
                Err(_) => {
                    // The only error the stack produces is the shed.
                    if let Route::Webhook(name) = route
                        && let Some(source) = app.ingest.source(name)
                    {
                        metrics::counter!(metric::WEBHOOKS, "source" => source.config.name.clone(), "outcome" => outcome::UNAVAILABLE)
                            .increment(1);
                    }
                    ApiError::overloaded().into_response(&request_id)
                }
            }
        }
    };

    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if app.draining.load(Ordering::Relaxed) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    let status = resp.status().as_u16();
    let latency = started.elapsed();
    let template = route.template();
    metrics::counter!(metric::HTTP_REQUESTS, "route" => template, "method" => method.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(metric::HTTP_DURATION, "route" => template).record(latency.as_secs_f64());
    let fields = resp
        .extensions()
        .get::<LogFields>()
        .cloned()
        .unwrap_or_default();
    tracing::info!(
        request_id = %request_id,
        route = template,
        method = %method,
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        source = fields.source.as_deref(),
        event_id = fields.event_id.as_deref(),
        partner = fields.partner.as_deref(),
        idempotency_key = fields.idempotency_key.as_deref(),
        shipment_id = fields.shipment_id.as_deref(),
        "request"
    );
    Ok(resp)
}

async fn router(app: &App, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match Route::of(&path) {
        Route::Webhook(name) => webhooks::handle(app, req, name).await,
        Route::AdminEvents | Route::AdminEvent | Route::AdminRedeliver | Route::AdminOther => {
            admin::handle(app, req).await
        }
        Route::V1Shipments => v1::handle(app, req, v1::V1Route::Shipments).await,
        Route::V1Shipment => v1::handle(app, req, v1::V1Route::Shipment).await,
        Route::V1Label => v1::handle(app, req, v1::V1Route::Label).await,
        Route::V1Cancel => v1::handle(app, req, v1::V1Route::Cancel).await,
        _ => {
            let id = req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.as_str())
                .unwrap_or("");
            ApiError::not_found("route").into_response(id)
        }
    }
}

/// Counts a request in `waybill_http_requests_in_flight` until dropped,
/// also when the connection goes away mid-request.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        metrics::gauge!(metric::HTTP_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(metric::HTTP_IN_FLIGHT).decrement(1.0);
    }
}

fn valid_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates() {
        assert_eq!(Route::of("/webhooks/easypost"), Route::Webhook("easypost"));
        assert_eq!(Route::of("/webhooks/"), Route::Unmatched);
        assert_eq!(Route::of("/webhooks/a/b"), Route::Unmatched);
        assert_eq!(Route::of("/metrics").template(), "/metrics");
        assert_eq!(Route::of("/webhooks/x").template(), "/webhooks/{source}");
        assert_eq!(Route::of("/admin/events"), Route::AdminEvents);
        assert_eq!(Route::of("/admin/events/ups/e%2F1"), Route::AdminEvent);
        assert_eq!(
            Route::of("/admin/events/ups/e1/redeliver"),
            Route::AdminRedeliver
        );
        assert_eq!(Route::of("/admin/nothing"), Route::AdminOther);
        assert_eq!(Route::of("/admin"), Route::AdminOther);
        assert_eq!(Route::of("/administrator"), Route::Unmatched);
        assert_eq!(Route::of("/v1/shipments"), Route::V1Shipments);
        assert_eq!(
            Route::of("/v1/shipments/shp_1").template(),
            "/v1/shipments/{shipment_id}"
        );
        assert_eq!(Route::of("/v1/shipments/shp_1/label"), Route::V1Label);
        assert_eq!(
            Route::of("/v1/shipments/shp_1/cancel").template(),
            "/v1/shipments/{shipment_id}/cancel"
        );
        assert_eq!(Route::of("/v1/shipments/shp_1/other"), Route::Unmatched);
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(valid_request_id("abc-1.2_3"));
        assert!(valid_request_id(&"a".repeat(128)));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id("semi;colon"));
    }
}
