//! The HTTP edge: accept loop, graceful drain, and the per-request stack.
//!
//! What an unauthenticated client can take is bounded here:
//! - connections: at most `server.max_connections`, kept below the
//!   descriptor limit; beyond it the accept loop waits for one to close, so
//!   new clients queue in the kernel's backlog instead of meeting errors;
//! - time: the head within `header_timeout` (hyper, also between requests
//!   on a kept-alive connection), the body within `request_timeout`
//!   (`body`), and every write of the answer within `request_timeout` (a
//!   client that never reads loses its connection, and its memory);
//! - memory: the head within `MAX_HEAD_BYTES`, the body within
//!   `max_body_bytes`, all bodies not yet verified within
//!   `max_unverified_mb` (`unverified`), error bodies within
//!   `error::MAX_DETAILS` details;
//! - admin tokens: failed tries per client address (`admin::AuthFailures`);
//! - `max_in_flight`: a request takes a slot only once its body has
//!   arrived (`admit`), so slow senders cannot starve the others;
//! - metric labels: route templates and a fixed set of methods.
//!
//! Each request runs in a task of its own. A client that goes away does not
//! cancel it (the operation runs to its end and its answer is stored for
//! the retry), and a panic in it becomes a 500 `INTERNAL` for that request
//! alone.
//!
//! Operational routes (`/healthz`, `/readyz`, `/metrics`) are answered by
//! `edge` directly, never shed: a gateway at its limit must still say
//! whether it is alive and show the metrics that explain why. With
//! `server.ops_listen` they are also served on a listener of their own,
//! outside the public connection cap.

mod admin;
pub use admin::AuthFailures;
mod body;
mod console;
pub mod error;
mod forwarded;
mod minutes;
mod ops;
pub use ops::OPENAPI;
mod state;
pub use state::State;
mod unverified;
pub use unverified::{Unverified, large_share};
mod v1;
pub(crate) use v1::export_from_zero;
mod webhooks;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

use crate::otlp;
use crate::telemetry::metric;
use crate::trace::TraceContext;
use error::{ApiError, Body};

/// A request head larger than this is refused by hyper (431).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Descriptors kept free of connections, for the store, the downstream
/// client and the log.
const RESERVED_FDS: u64 = 128;

/// The request id, put in request extensions by the edge.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id the edge gave `req` (empty if it went around the edge).
    pub fn of<B>(req: &Request<B>) -> String {
        req.extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default()
    }
}

/// What a handler learned that belongs on the access-log line.
#[derive(Debug, Clone, Default)]
pub struct LogFields {
    pub source: Option<String>,
    pub event_id: Option<String>,
    pub partner: Option<String>,
    pub idempotency_key: Option<String>,
    pub shipment_id: Option<String>,
    pub order_id: Option<String>,
}

/// Why serving stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A signal, or the caller's shutdown future.
    Requested,
    /// A background component failed: drain, then exit non-zero. While
    /// draining, the listener stays open so that `/readyz` can say 503 to
    /// whoever asks.
    Failed,
}

/// Route templates: metrics are labelled by these, never by raw paths.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Webhook(&'a str),
    AdminEvents,
    AdminEvent,
    AdminRedeliver,
    AdminBulkRedeliver,
    AdminShipment,
    AdminStats,
    AdminUi,
    /// Any other `/admin` path: still the admin handler's, which checks the
    /// token before it says the path does not exist.
    AdminOther,
    V1Shipments,
    V1Shipment,
    V1Orders,
    V1Order,
    V1Label,
    V1Cancel,
    Unmatched,
}
/// Every path template the router serves, as `docs/openapi.json` names
/// them (the admin catch-all, which answers 404 past the token, is not an
/// operation). `tests/api/openapi.rs` holds the two to each other.
pub const TEMPLATES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/webhooks/{source}",
    "/admin/events",
    "/admin/events/{source}/{event_id}",
    "/admin/events/{source}/{event_id}/redeliver",
    "/admin/redeliver",
    "/admin/shipments/{shipment_id}",
    "/admin/stats",
    "/admin/ui",
    "/v1/shipments",
    "/v1/orders",
    "/v1/orders/{order_id}",
    "/v1/shipments/{shipment_id}",
    "/v1/shipments/{shipment_id}/label",
    "/v1/shipments/{shipment_id}/cancel",
];

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Route<'a> {
        match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/openapi.json" => Route::OpenApi,
            "/admin/events" => Route::AdminEvents,
            "/admin/redeliver" => Route::AdminBulkRedeliver,
            "/admin/stats" => Route::AdminStats,
            "/admin/ui" => Route::AdminUi,
            "/v1/shipments" => Route::V1Shipments,
            "/v1/orders" => Route::V1Orders,
            _ if path == "/admin" || path.starts_with("/admin/") => {
                match path.split('/').skip(2).collect::<Vec<_>>().as_slice() {
                    ["events", s, e] if !s.is_empty() && !e.is_empty() => Route::AdminEvent,
                    ["events", s, e, "redeliver"] if !s.is_empty() && !e.is_empty() => {
                        Route::AdminRedeliver
                    }
                    ["shipments", id] if !id.is_empty() => Route::AdminShipment,
                    _ => Route::AdminOther,
                }
            }
            _ => {
                if let Some(name) = path.strip_prefix("/webhooks/")
                    && !name.is_empty()
                    && !name.contains('/')
                {
                    Route::Webhook(name)
                } else if let Some(id) = path.strip_prefix("/v1/orders/")
                    && !id.is_empty()
                    && !id.contains('/')
                {
                    Route::V1Order
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
            Route::OpenApi => "/openapi.json",
            Route::Webhook(_) => "/webhooks/{source}",
            Route::AdminEvents => "/admin/events",
            Route::AdminEvent => "/admin/events/{source}/{event_id}",
            Route::AdminRedeliver => "/admin/events/{source}/{event_id}/redeliver",
            Route::AdminBulkRedeliver => "/admin/redeliver",
            Route::AdminShipment => "/admin/shipments/{shipment_id}",
            Route::AdminStats => "/admin/stats",
            Route::AdminUi => "/admin/ui",
            Route::AdminOther => "/admin",
            Route::V1Shipments => "/v1/shipments",
            Route::V1Orders => "/v1/orders",
            Route::V1Order => "/v1/orders/{order_id}",
            Route::V1Shipment => "/v1/shipments/{shipment_id}",
            Route::V1Label => "/v1/shipments/{shipment_id}/label",
            Route::V1Cancel => "/v1/shipments/{shipment_id}/cancel",
            Route::Unmatched => "unmatched",
        }
    }
}

/// The value of the `method` label: one of a fixed set, so a client cannot
/// mint label values.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `resp` with the RateLimit headers of the limit that applied, if any
/// (a source's for webhooks, a partner's for `/v1`).
fn with_standing(
    mut resp: Response<Body>,
    standing: Option<crate::ratelimit::Standing>,
    policy: &str,
) -> Response<Body> {
    if let Some(standing) = standing {
        for (name, value) in standing.headers(policy) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, value);
            }
        }
    }
    resp
}

/// Takes an in-flight slot for a request whose body has arrived, or says
/// the gateway is overloaded (503 `OVERLOADED`). The slot is given back
/// when the permit drops, however the request ends.
fn admit(app: &State) -> Result<OwnedSemaphorePermit, ApiError> {
    app.in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::overloaded())
}

/// The most connections this process can hold: the configured cap, kept
/// `RESERVED_FDS` below the descriptor limit.
pub fn connection_cap(configured: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    let budget = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    configured.min(budget).max(1)
}

/// Connections the operations listener (`server.ops_listen`) holds at
/// most: probes and scrapers, a handful at a time.
const OPS_CONNECTIONS: usize = 64;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Public,
    /// `server.ops_listen`: `/healthz`, `/readyz` and `/metrics` only.
    Ops,
}

/// The address of the client a request came from, put in request
/// extensions by the edge.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

fn builder(app: &State) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.server.header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
}

/// Serves until `stop` resolves, then stops accepting (unless a component
/// failed), lets in-flight requests finish within `server.shutdown_grace`,
/// and returns why it stopped. `ops`, when given, serves the operational
/// routes on a listener of its own until then.
pub async fn serve(
    listener: TcpListener,
    ops: Option<TcpListener>,
    app: Arc<State>,
    stop: impl Future<Output = Stop>,
) -> Stop {
    let builder = builder(&app);
    let ops = ops.map(|ops| tokio::spawn(serve_ops(ops, app.clone())));
    let cap = connection_cap(app.server.max_connections);
    let connections = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let accept_backoff = Backoff::default();
    tokio::pin!(stop);
    let reason = loop {
        tokio::select! {
            biased;
            reason = &mut stop => break reason,
            conn = accept(&listener, &connections, &accept_backoff) => {
                let (stream, peer, slot) = conn;
                let svc = service(app.clone(), peer, Listener::Public);
                let io = timed(stream, app.server.request_timeout);
                let conn = graceful.watch(builder.serve_connection(io, svc));
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = conn.await {
                        transport_error(&e);
                    }
                });
            }
        }
    };
    app.draining.store(true, Ordering::Relaxed);
    let grace = tokio::time::sleep(app.server.shutdown_grace);
    tokio::pin!(grace);
    match reason {
        Stop::Requested => {
            drop(listener);
            tracing::info!("draining in-flight requests");
            tokio::select! {
                _ = graceful.shutdown() => {}
                _ = &mut grace => {
                    tracing::warn!("shutdown grace elapsed with requests still in flight");
                }
            }
        }
        Stop::Failed => {
            tracing::error!("draining after a component failure");
            let drained = graceful.shutdown();
            tokio::pin!(drained);
            loop {
                tokio::select! {
                    _ = &mut drained => break,
                    _ = &mut grace => break,
                    conn = accept(&listener, &connections, &accept_backoff) => {
                        // Answered (mostly 503) and closed; not waited for.
                        let (stream, peer, slot) = conn;
                        let svc = service(app.clone(), peer, Listener::Public);
                        let io = timed(stream, app.server.request_timeout);
                        let conn = builder.serve_connection(io, svc);
                        tokio::spawn(async move {
                            let _slot = slot;
                            let _ = conn.await;
                        });
                    }
                }
            }
        }
    }
    if let Some(ops) = ops {
        ops.abort();
    }
    reason
}

/// The operations listener: its own accept loop and connection cap, so
/// that probes and scrapes are answered whatever holds the public one.
async fn serve_ops(listener: TcpListener, app: Arc<State>) {
    let builder = builder(&app);
    let connections = Arc::new(Semaphore::new(OPS_CONNECTIONS));
    let backoff = Backoff::default();
    loop {
        let (stream, peer, slot) = accept(&listener, &connections, &backoff).await;
        let svc = service(app.clone(), peer, Listener::Ops);
        let conn = builder.serve_connection(timed(stream, app.server.request_timeout), svc);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                transport_error(&e);
            }
        });
    }
}

type Io = TokioIo<std::pin::Pin<Box<TimeoutStream<tokio::net::TcpStream>>>>;

/// A connection whose every write must make progress within `timeout`.
fn timed(stream: tokio::net::TcpStream, timeout: Duration) -> Io {
    let _ = stream.set_nodelay(true);
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(timeout));
    TokioIo::new(Box::pin(stream))
}

fn service(
    app: Arc<State>,
    peer: std::net::SocketAddr,
    listener: Listener,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> {
    let peer = peer.ip();
    hyper::service::service_fn(move |req| edge(app.clone(), peer, listener, req))
}

/// Waits for a free connection slot, then for a connection. Accept errors
/// (out of descriptors and the like) are logged and backed off.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
    backoff: &Backoff,
) -> (
    tokio::net::TcpStream,
    std::net::SocketAddr,
    OwnedSemaphorePermit,
) {
    let slot = match connections.clone().acquire_owned().await {
        Ok(slot) => slot,
        // The semaphore is never closed.
        Err(_) => return std::future::pending().await,
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.reset();
                return (stream, peer, slot);
            }
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "accept failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Doubling waits from 10 ms to 1 s between failed accepts.
#[derive(Default)]
struct Backoff(std::sync::atomic::AtomicU32);

impl Backoff {
    fn next(&self) -> Duration {
        let n = self.0.fetch_add(1, Ordering::Relaxed).min(7);
        Duration::from_millis(10 << n).min(Duration::from_secs(1))
    }

    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A connection that hyper ended on a malformed or too large head, or a
/// head that did not arrive in time. hyper answers those itself (a bare
/// 400, 408, 414 or 431) before any handler runs; they are counted and
/// logged here so they are not invisible.
fn transport_error(e: &hyper::Error) {
    let status = if e.is_parse_too_large() {
        431
    } else if e.is_timeout() {
        408
    } else if e.is_parse() || e.is_parse_status() {
        400
    } else {
        // The client went away, or a write timed out: nothing was answered.
        tracing::debug!(error = %e, "connection ended");
        return;
    };
    metrics::counter!(metric::HTTP_REQUESTS, "route" => "unmatched", "method" => "other", "status" => status.to_string())
        .increment(1);
    tracing::info!(
        route = "unmatched",
        status,
        error = %e,
        "request refused by the HTTP parser"
    );
}

async fn edge(
    app: Arc<State>,
    peer: std::net::IpAddr,
    listener: Listener,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let client = ClientAddr(forwarded::client(
        peer,
        req.headers(),
        &app.server.trusted_proxies,
    ));
    // This request's span: below the caller's, or the first of a trace.
    let caller = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let trace = caller.map_or_else(TraceContext::start, |parent| parent.child());
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
            ops::handle(&app, &route, &method, &request_id).await
        }
        _ if listener == Listener::Ops => ApiError::not_found("route").into_response(&request_id),
        Route::OpenApi => ops::handle(&app, &route, &method, &request_id).await,
        _ => {
            req.extensions_mut().insert(RequestId(request_id.clone()));
            req.extensions_mut().insert(client);
            // Its own task: it runs to its end even if this connection
            // goes, and its panic is this request's alone.
            let task = {
                let app = app.clone();
                tokio::spawn(trace.scope(async move { router(&app, req).await }))
            };
            match task.await {
                Ok(resp) => resp,
                Err(e) => {
                    let why = panic_message(e);
                    tracing::error!(
                        request_id = %request_id,
                        route = route.template(),
                        panic = %why,
                        "request handler panicked"
                    );
                    ApiError::internal().into_response(&request_id)
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
    let method = method_label(&method);
    count_request(template, method, status, latency);
    let fields = resp
        .extensions()
        .get::<LogFields>()
        .cloned()
        .unwrap_or_default();
    let code = resp.extensions().get::<error::ErrorCode>().map(|c| c.0);
    tracing::info!(
        request_id = %request_id,
        route = template,
        method,
        status,
        code,
        trace_id = %trace.trace_id_hex(),
        client_addr = %client.0,
        latency_ms = latency.as_secs_f64() * 1000.0,
        source = fields.source.as_deref(),
        event_id = fields.event_id.as_deref(),
        partner = fields.partner.as_deref(),
        idempotency_key = fields.idempotency_key.as_deref(),
        shipment_id = fields.shipment_id.as_deref(),
        order_id = fields.order_id.as_deref(),
        "request"
    );
    // Probes and scrapes are not traced: they would bury the requests.
    if otlp::wanted(&trace) && !matches!(route, Route::Healthz | Route::Readyz | Route::Metrics) {
        otlp::record(otlp::Ended {
            context: trace,
            parent: caller.map(|c| (c.span_id, true)),
            kind: SpanKind::Server,
            name: format!("{method} {template}"),
            took: latency,
            attributes: vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("http.route", template),
                KeyValue::new("waybill.request_id", request_id),
            ],
            status: Some(status),
            // A refusal is the client's; only a server error fails the span.
            error: code.filter(|_| status >= 500),
        });
    }
    Ok(resp)
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

async fn router(app: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    // The config this request runs under, to its end, whatever a reload
    // does meanwhile.
    let live = app.live();
    let live = &*live;
    // Every request's future is moved into a task of its own (`edge`), so
    // its size is copied, and its pages touched, once per webhook. The
    // API's and the console's futures hold downstream calls and run to
    // kilobytes: boxed, only their own requests pay for them.
    let v1_route = match Route::of(&path) {
        Route::Webhook(name) => return webhooks::handle(app, live, req, name).await,
        route if route.template().starts_with("/admin") => {
            return Box::pin(admin::handle(app, live, req)).await;
        }
        Route::V1Shipments => v1::V1Route::Shipments,
        Route::V1Orders => v1::V1Route::Orders,
        Route::V1Order => v1::V1Route::Order,
        Route::V1Shipment => v1::V1Route::Shipment,
        Route::V1Label => v1::V1Route::Label,
        Route::V1Cancel => v1::V1Route::Cancel,
        _ => return ApiError::not_found("route").into_response(&RequestId::of(&req)),
    };
    Box::pin(v1::handle(app, live, req, v1_route)).await
}

/// The series of one route, method and status.
type RequestSeries = (metrics::Counter, metrics::Histogram);

thread_local! {
    /// Every request moves these series. Looked up once per thread, not
    /// built and hashed (and the status formatted as text) each time:
    /// that was a twentieth of the runtime threads' time. The routes,
    /// methods and statuses are few and fixed, so the map stays small.
    static REQUEST_SERIES: std::cell::RefCell<
        std::collections::HashMap<(&'static str, &'static str, u16), RequestSeries>,
    > = Default::default();
    static IN_FLIGHT: std::cell::OnceCell<metrics::Gauge> = const { std::cell::OnceCell::new() };
}

fn count_request(template: &'static str, method: &'static str, status: u16, latency: Duration) {
    let series = || {
        (
            metrics::counter!(metric::HTTP_REQUESTS, "route" => template, "method" => method, "status" => status.to_string()),
            metrics::histogram!(metric::HTTP_DURATION, "route" => template),
        )
    };
    let record = |(requests, duration): &RequestSeries| {
        requests.increment(1);
        duration.record(latency.as_secs_f64());
    };
    if !crate::telemetry::recorder_installed() {
        return record(&series());
    }
    REQUEST_SERIES.with_borrow_mut(|kept| {
        record(
            kept.entry((template, method, status))
                .or_insert_with(series),
        );
    });
}

/// Counts a request in `waybill_http_requests_in_flight` until dropped,
/// also when the connection goes away mid-request.
struct InFlight;

impl InFlight {
    fn gauge(change: impl FnOnce(&metrics::Gauge)) {
        if !crate::telemetry::recorder_installed() {
            return change(&metrics::gauge!(metric::HTTP_IN_FLIGHT));
        }
        IN_FLIGHT.with(|g| change(g.get_or_init(|| metrics::gauge!(metric::HTTP_IN_FLIGHT))));
    }

    fn enter() -> InFlight {
        InFlight::gauge(|g| g.increment(1.0));
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        InFlight::gauge(|g| g.decrement(1.0));
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

    fn future_size<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A request's task holds the router's future; a handler awaited in
    /// place instead of boxed makes every webhook copy it (it was 11 KB
    /// with the API's handlers inline, against 1.9 KB for the webhook's).
    #[test]
    fn the_future_every_request_spawns_stays_small() {
        let router = future_size::<&'static State, Request<Incoming>, _>(router);
        assert!(router <= 4096, "the router's future is {router} bytes");
    }

    /// `TEMPLATES` is exactly the templates of the routes that are
    /// operations. The match is exhaustive on purpose: a new route does
    /// not compile until it is placed here, and so in `TEMPLATES`.
    #[test]
    fn templates_name_every_route() {
        let operation = |r: &Route<'_>| match r {
            Route::AdminOther | Route::Unmatched => false,
            Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::OpenApi
            | Route::Webhook(_)
            | Route::AdminEvents
            | Route::AdminEvent
            | Route::AdminRedeliver
            | Route::AdminBulkRedeliver
            | Route::AdminShipment
            | Route::AdminStats
            | Route::AdminUi
            | Route::V1Shipments
            | Route::V1Shipment
            | Route::V1Orders
            | Route::V1Order
            | Route::V1Label
            | Route::V1Cancel => true,
        };
        for template in TEMPLATES {
            let path = template
                .replace("{source}", "s")
                .replace("{event_id}", "e")
                .replace("{order_id}", "o")
                .replace("{shipment_id}", "shp_1");
            let route = Route::of(&path);
            assert!(operation(&route), "{template}");
            assert_eq!(route.template(), *template);
        }
        let all = [
            Route::Healthz,
            Route::Readyz,
            Route::Metrics,
            Route::OpenApi,
            Route::Webhook("s"),
            Route::AdminEvents,
            Route::AdminEvent,
            Route::AdminRedeliver,
            Route::AdminBulkRedeliver,
            Route::AdminShipment,
            Route::AdminStats,
            Route::AdminUi,
            Route::AdminOther,
            Route::V1Shipments,
            Route::V1Shipment,
            Route::V1Orders,
            Route::V1Order,
            Route::V1Label,
            Route::V1Cancel,
            Route::Unmatched,
        ];
        for r in all.iter().filter(|r| operation(r)) {
            assert!(TEMPLATES.contains(&r.template()), "{r:?}");
        }
    }

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
        assert_eq!(Route::of("/v1/orders"), Route::V1Orders);
        assert_eq!(
            Route::of("/v1/orders/o-1").template(),
            "/v1/orders/{order_id}"
        );
        assert_eq!(Route::of("/v1/orders/o-1/x"), Route::Unmatched);
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
