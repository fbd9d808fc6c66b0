//! Calls to the carrier, payments and inventory services (GUARANTEES.md: "Downstreams"):
//! a timeout per attempt, retries with exponential backoff and full jitter
//! on 5xx, timeouts and connection errors (never on 4xx), a circuit breaker
//! per service, and the caller's `Idempotency-Key` on every attempt, so a
//! retry after a lost answer never buys or charges twice.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use serde_json::Value;

use crate::config::DownstreamConfig;
use crate::otlp;
use crate::telemetry::metric;
use crate::trace::TraceContext;

mod services;

pub use crate::service::ports::Service;

/// A service's answer that is final for the caller: a success or a 4xx.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

/// The service could not be reached after every attempt, or its breaker is
/// open; retrying later may work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// The breaker's remaining cooldown, at least 1; 1 while it is closed.
    pub retry_after_secs: u64,
}

/// Consecutive failed calls (every attempt failed) open the breaker; after
/// the cooldown one trial attempt goes through (half-open): its success
/// closes the breaker, its failure opens it again. Pure: the time is an
/// argument.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
    /// The state last reported (`take_change`).
    reported: BreakerState,
}

/// Where a breaker stands, as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go out.
    Closed,
    /// Calls are refused until the cooldown ends.
    Open,
    /// The cooldown ended: one trial call decides.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// What `admit` let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed.
    Normal,
    /// The one call allowed while half-open; its result decides.
    Trial,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
            trial_in_flight: false,
            reported: BreakerState::Closed,
        }
    }

    /// Whether a call may go out now; Err with the wait when it may not.
    pub fn admit(&mut self, now: Instant) -> Result<Admission, Duration> {
        match self.open_until {
            None => Ok(Admission::Normal),
            Some(until) if now < until => Err(until - now),
            Some(_) if self.trial_in_flight => Err(Duration::from_secs(1)),
            Some(_) => {
                self.trial_in_flight = true;
                Ok(Admission::Trial)
            }
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.trial_in_flight = false;
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.trial_in_flight || self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            self.trial_in_flight = false;
        }
    }

    /// The trial call ended with no verdict (its caller went away): the
    /// next caller may try instead, so the breaker is never stuck
    /// half-open.
    pub fn abandon_trial(&mut self) {
        self.trial_in_flight = false;
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    /// The state now, when it differs from the one last reported; then it
    /// is the one reported. A change made by time (the cooldown's end) is
    /// seen by the first call after it.
    pub fn take_change(&mut self, now: Instant) -> Option<BreakerState> {
        let state = self.state(now);
        (state != std::mem::replace(&mut self.reported, state)).then_some(state)
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Seconds until a call may be tried again, at least 1.
    pub fn retry_after(&self, now: Instant) -> u64 {
        match self.open_until {
            Some(until) if now < until => secs_up(until - now),
            _ => 1,
        }
    }
}

/// Whole seconds, rounded up, at least 1.
fn secs_up(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// One service's breaker behind its lock. Every method takes the lock for
/// one short critical section that decides and updates, releases it, and
/// only then publishes the gauge: nothing that may lock runs under it.
struct Guarded {
    service: Service,
    breaker: Mutex<Breaker>,
}

impl Guarded {
    fn with<R>(&self, f: impl FnOnce(&mut Breaker, Instant) -> R) -> R {
        let now = Instant::now();
        let (result, open, changes) = {
            // A poisoned lock only means a panic elsewhere while it was
            // held; the breaker's fields are valid after any of its methods.
            let mut b = self
                .breaker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Time may have moved it (open to half-open) before this call
            // moves it again.
            let seen = b.take_change(now);
            let result = f(&mut b, now);
            let made = b.take_change(now);
            (result, b.is_open(now), [seen, made])
        };
        metrics::gauge!(metric::CIRCUIT_OPEN, "service" => self.service.as_str()).set(if open {
            1.0
        } else {
            0.0
        });
        // Each change once, by the call that made or saw it (GUARANTEES.md:
        // "Operations"): opening is a warning, the rest news.
        for state in changes.into_iter().flatten() {
            let service = self.service.as_str();
            if state == BreakerState::Open {
                tracing::warn!(
                    service,
                    state = state.as_str(),
                    "circuit breaker opened: calls are refused until the cooldown ends"
                );
            } else {
                tracing::info!(
                    service,
                    state = state.as_str(),
                    "circuit breaker changed state"
                );
            }
        }
        result
    }

    /// Admits a call, or says how long to wait.
    fn admit(&self) -> Result<Permit<'_>, Duration> {
        let admission = self.with(|b, now| b.admit(now))?;
        Ok(Permit {
            guarded: self,
            trial: admission == Admission::Trial,
            settled: false,
        })
    }
}

/// A call the breaker let through. Its verdict is given by `success` or
/// `failure`; dropped without one (the caller's future was dropped), a
/// half-open trial is given back rather than left taken.
struct Permit<'a> {
    guarded: &'a Guarded,
    trial: bool,
    settled: bool,
}

impl Permit<'_> {
    fn success(mut self) {
        self.settled = true;
        self.guarded.with(|b, _| b.success());
    }

    fn failure(mut self) {
        self.settled = true;
        self.guarded.with(|b, now| b.failure(now));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            self.guarded.with(|b, _| b.abandon_trial());
        }
    }
}

/// The wait before attempt `attempt` (2 for the first retry): a random
/// time from 0 to the exponential cap ("full jitter").
pub fn backoff(
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: &mut fastrand::Rng,
) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(2).min(20));
    let cap = exp.min(max);
    Duration::from_nanos(rng.u64(0..=cap.as_nanos() as u64))
}

pub struct Downstream {
    config: DownstreamConfig,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    breakers: [Guarded; 3],
}

/// How one attempt of a call went: the `outcome` label of
/// `waybill_downstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    ClientError,
    ServerError,
    Timeout,
    ConnectError,
    BreakerOpen,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::BreakerOpen,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::BreakerOpen => "breaker_open",
        }
    }
}

/// Every service's call outcomes at 0, and its breaker closed, from the
/// start (see `telemetry::export_from_zero`).
pub(crate) fn export_from_zero() {
    for service in Service::ALL {
        for outcome in Outcome::ALL {
            Downstream::count(service, outcome, 0);
        }
        metrics::gauge!(metric::CIRCUIT_OPEN, "service" => service.as_str()).increment(0.0);
    }
}

enum Attempt {
    Final(Answer),
    /// The outcome counted, and the status when the service answered one.
    Failed(Outcome, Option<StatusCode>),
}

impl Downstream {
    pub fn new(config: &DownstreamConfig) -> Downstream {
        let connector = crate::tls::connector(&config.ca_certs, config.timeout);
        let breaker = |service| Guarded {
            service,
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                config.breaker_cooldown,
            )),
        };
        Downstream {
            config: config.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            breakers: [
                breaker(Service::Carrier),
                breaker(Service::Payments),
                breaker(Service::Inventory),
            ],
        }
    }

    /// Where each service's breaker stands now.
    pub fn breakers(&self) -> Vec<(Service, BreakerState)> {
        self.breakers
            .iter()
            .map(|g| (g.service, g.with(|b, now| b.state(now))))
            .collect()
    }

    fn breaker(&self, service: Service) -> &Guarded {
        match service {
            Service::Carrier => &self.breakers[0],
            Service::Payments => &self.breakers[1],
            Service::Inventory => &self.breakers[2],
        }
    }

    fn count(service: Service, outcome: Outcome, n: u64) {
        metrics::counter!(metric::DOWNSTREAM, "service" => service.as_str(), "outcome" => outcome.as_str())
            .increment(n);
    }

    /// Calls `service`, retrying as configured. A success or a 4xx is the
    /// answer; anything else after the last attempt is `Unavailable`.
    pub async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        idempotency_key: &str,
        body: Option<&Value>,
    ) -> Result<Answer, Unavailable> {
        let mut rng = fastrand::Rng::new();
        let breaker = self.breaker(service);
        for attempt in 1..=self.config.max_attempts {
            if attempt > 1 {
                tokio::time::sleep(backoff(
                    self.config.backoff_initial,
                    self.config.backoff_max,
                    attempt,
                    &mut rng,
                ))
                .await;
            }
            let permit = match breaker.admit() {
                Ok(p) => p,
                Err(wait) => {
                    Downstream::count(service, Outcome::BreakerOpen, 1);
                    return Err(Unavailable {
                        retry_after_secs: secs_up(wait),
                    });
                }
            };
            match self
                .attempt(service, &method, path, idempotency_key, body)
                .await
            {
                Attempt::Final(answer) => {
                    let outcome = if answer.status.is_success() {
                        Outcome::Success
                    } else {
                        Outcome::ClientError
                    };
                    Downstream::count(service, outcome, 1);
                    permit.success();
                    return Ok(answer);
                }
                Attempt::Failed(outcome, status) => {
                    Downstream::count(service, outcome, 1);
                    // The breaker counts calls, not attempts: a call whose
                    // retry succeeds is a success. Counting attempts, a
                    // service failing one call in five would trip it at
                    // any real concurrency and turn a mostly-working
                    // carrier into a dead one. A half-open trial is one
                    // attempt, and its failure reopens at once.
                    if permit.trial || attempt == self.config.max_attempts {
                        permit.failure();
                    } else {
                        drop(permit);
                    }
                    tracing::warn!(
                        service = service.as_str(),
                        %method,
                        path,
                        status = status.map(|s| s.as_u16()),
                        attempt,
                        outcome = outcome.as_str(),
                        "downstream call failed"
                    );
                }
            }
        }
        Err(Unavailable {
            retry_after_secs: breaker.with(|b, now| b.retry_after(now)),
        })
    }

    async fn attempt(
        &self,
        service: Service,
        method: &Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Attempt {
        // A span of the request's trace (a trace of its own for background
        // work), so the service's logs join the gateway's.
        let parent = TraceContext::current();
        let span = parent.map_or_else(TraceContext::start, |t| t.child());
        let started = Instant::now();
        let uri = format!("{}{path}", self.config.base_url);
        let attempt = self.send(span, method, &uri, key, body).await;
        if otlp::wanted(&span) {
            let (status, failure) = match &attempt {
                Attempt::Final(answer) => (Some(answer.status), None),
                Attempt::Failed(outcome, status) => (*status, Some(outcome.as_str())),
            };
            otlp::record(otlp::Ended {
                attributes: vec![
                    KeyValue::new("http.request.method", method.to_string()),
                    KeyValue::new("url.full", uri),
                    KeyValue::new("waybill.service", service.as_str()),
                ],
                status: status.map(|s| s.as_u16()),
                error: failure,
                context: span,
                parent: parent.map(|p| (p.span_id, false)),
                kind: SpanKind::Client,
                name: format!("{method} {}", service.as_str()),
                took: started.elapsed(),
            });
        }
        attempt
    }

    /// One attempt, as span `span` of its trace.
    async fn send(
        &self,
        span: TraceContext,
        method: &Method,
        uri: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Attempt {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("idempotency-key", header_safe_key(key).as_ref())
            .header("traceparent", span.header());
        let payload = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = match req.body(Full::new(payload)) {
            Ok(req) => req,
            Err(e) => {
                tracing::error!(error = %e, uri, "cannot build a downstream request");
                return Attempt::Failed(Outcome::ConnectError, None);
            }
        };
        let sent = tokio::time::timeout(self.config.timeout, async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        })
        .await;
        match sent {
            Err(_) => Attempt::Failed(Outcome::Timeout, None),
            Ok(Err(e)) => {
                let connect = e
                    .downcast_ref::<hyper_util::client::legacy::Error>()
                    .is_some_and(|e| e.is_connect());
                if connect {
                    // A refused connection, or a TLS handshake that
                    // failed (an unknown CA, a wrong name): say which.
                    tracing::warn!(
                        url = %self.config.base_url,
                        error = %error_chain(e.as_ref()),
                        "cannot connect to the downstream"
                    );
                }
                Attempt::Failed(
                    if connect {
                        Outcome::ConnectError
                    } else {
                        Outcome::ServerError
                    },
                    None,
                )
            }
            Ok(Ok((status, _))) if status.is_server_error() => {
                Attempt::Failed(Outcome::ServerError, Some(status))
            }
            Ok(Ok((status, bytes))) => Attempt::Final(Answer {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            }),
        }
    }
}

/// The key as a header value: as it is when it is printable ASCII (what
/// every business key made of our ids is), else a digest of it, so that
/// an order id in any script still gives one stable key per operation
/// instead of a request that cannot be built.
fn header_safe_key(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return std::borrow::Cow::Borrowed(key);
    }
    use sha2::Digest;
    std::borrow::Cow::Owned(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    ))
}

/// An error and its causes, `: `-separated: hyper's own message says
/// only "client error (Connect)".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by the API fuzzer): an order id with characters
    /// a header cannot carry made every inventory call unbuildable, and
    /// the order a 503. Keys are now always header values, stable ones.
    #[test]
    fn every_business_key_is_a_stable_header_value() {
        assert_eq!(header_safe_key("reserve:acme:o-1"), "reserve:acme:o-1");
        for odd in [
            "reserve:acme:\u{85}é😍",
            "reserve:acme:a b",
            "",
            &"k".repeat(300),
        ] {
            let safe = header_safe_key(odd);
            assert!(http::HeaderValue::from_str(&safe).is_ok(), "{odd:?}");
            assert!(safe.starts_with("sha256:"), "{odd:?}");
            assert_eq!(safe, header_safe_key(odd), "stable");
        }
        assert_ne!(header_safe_key("a b"), header_safe_key("a  b"));
    }

    /// Every state is entered, acted in and left, and each change is
    /// reported once (the log line an operator reads): closed, open, the
    /// cooldown's end seen as half-open, a failed trial open again, a good
    /// trial closed.
    #[test]
    fn each_change_of_state_is_reported_once() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut b = Breaker::new(1, Duration::from_secs(10));
        assert_eq!(b.take_change(t0), None, "closed from the start");
        assert_eq!(b.admit(t0), Ok(Admission::Normal));
        b.failure(t0);
        assert_eq!(b.take_change(t0), Some(BreakerState::Open));
        assert_eq!(b.take_change(later(5)), None, "still open");
        assert!(b.admit(later(5)).is_err());
        assert_eq!(b.take_change(later(11)), Some(BreakerState::HalfOpen));
        assert_eq!(b.admit(later(11)), Ok(Admission::Trial));
        b.failure(later(11));
        assert_eq!(b.take_change(later(11)), Some(BreakerState::Open));
        assert_eq!(b.take_change(later(22)), Some(BreakerState::HalfOpen));
        assert_eq!(b.admit(later(22)), Ok(Admission::Trial));
        b.success();
        assert_eq!(b.take_change(later(22)), Some(BreakerState::Closed));
        assert_eq!(b.take_change(later(23)), None);
    }

    #[test]
    fn consecutive_failures_open_the_breaker_until_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(b.admit(t0).is_ok());
            b.failure(t0);
        }
        assert!(!b.is_open(t0));
        b.success();
        for _ in 0..3 {
            assert!(b.admit(t0).is_ok());
            b.failure(t0);
        }
        assert!(b.is_open(t0));
        assert_eq!(
            b.admit(t0 + Duration::from_millis(2500)),
            Err(Duration::from_millis(7500))
        );
        assert_eq!(b.retry_after(t0 + Duration::from_millis(2500)), 8);
        // Half-open: one trial, and only one.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(later), Ok(Admission::Trial));
        assert!(b.admit(later).is_err());
        // The trial fails: open again for a whole cooldown.
        b.failure(later);
        assert!(b.is_open(later + Duration::from_secs(9)));
        // The next trial succeeds: closed.
        let again = later + Duration::from_secs(10);
        assert!(b.admit(again).is_ok());
        b.success();
        assert_eq!(b.admit(again), Ok(Admission::Normal));
        assert_eq!(b.retry_after(again), 1);
    }

    fn guarded(threshold: u32, cooldown: Duration) -> Guarded {
        Guarded {
            service: Service::Carrier,
            breaker: Mutex::new(Breaker::new(threshold, cooldown)),
        }
    }

    #[test]
    fn a_trial_whose_caller_went_away_is_given_back() {
        // Open with no cooldown: the next admission is the half-open trial.
        let g = guarded(1, Duration::ZERO);
        g.admit().unwrap().failure();
        let trial = g.admit().unwrap();
        assert!(trial.trial);
        assert!(g.admit().is_err(), "one trial at a time");
        drop(trial);
        // Dropped without a verdict: another caller gets the trial.
        let again = g.admit().unwrap();
        assert!(again.trial);
        again.success();
        let closed = g.admit().unwrap();
        assert!(!closed.trial);
        drop(closed);
        assert!(!g.with(|b, now| b.is_open(now)));
    }

    fn unreachable(threshold: u32, cooldown: Duration) -> Downstream {
        // Nothing listens on the discard port: every attempt fails at once.
        Downstream::new(&DownstreamConfig {
            base_url: "http://127.0.0.1:9".into(),
            ca_certs: Vec::new(),
            timeout: Duration::from_secs(1),
            max_attempts: 1,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            breaker_failures: threshold,
            breaker_cooldown: cooldown,
        })
    }

    /// The breaker opens, and every call after that answers at once with the
    /// remaining cooldown instead of waiting on the breaker's own lock.
    #[tokio::test]
    async fn calls_after_the_breaker_opened_answer_at_once() {
        let d = unreachable(2, Duration::from_secs(30));
        for _ in 0..2 {
            let e = d
                .call(Service::Carrier, Method::POST, "/x", "k", None)
                .await
                .unwrap_err();
            assert!(e.retry_after_secs >= 1);
        }
        for _ in 0..3 {
            let e = tokio::time::timeout(
                Duration::from_secs(5),
                d.call(Service::Carrier, Method::POST, "/x", "k", None),
            )
            .await
            .expect("a call with the breaker open answers at once")
            .unwrap_err();
            assert!((29..=30).contains(&e.retry_after_secs), "{e:?}");
        }
        // Other services have breakers of their own.
        let e = d
            .call(Service::Payments, Method::POST, "/x", "k", None)
            .await
            .unwrap_err();
        assert_eq!(e.retry_after_secs, 1);
    }

    /// A service that fails two attempts in three, in a fixed cycle; every
    /// call succeeds on its third attempt.
    async fn two_in_three() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let svc = hyper::service::service_fn(move |_req| {
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let mut resp = http::Response::new(Full::new(Bytes::from("{}")));
                        if n % 3 != 2 {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        addr
    }

    /// The breaker counts calls: failed attempts that a retry makes good do
    /// not open it, however many there are.
    #[tokio::test]
    async fn attempts_a_retry_makes_good_do_not_open_the_breaker() {
        let addr = two_in_three().await;
        let d = Downstream::new(&DownstreamConfig {
            base_url: format!("http://{addr}"),
            ca_certs: Vec::new(),
            timeout: Duration::from_secs(2),
            max_attempts: 3,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            breaker_failures: 2,
            breaker_cooldown: Duration::from_secs(30),
        });
        for _ in 0..10 {
            let a = d
                .call(Service::Carrier, Method::POST, "/x", "k", None)
                .await
                .expect("the third attempt succeeds");
            assert!(a.status.is_success());
        }
        assert!(!d.breaker(Service::Carrier).with(|b, now| b.is_open(now)));
    }

    /// Half-open with nothing to reach: the trial fails and the breaker is
    /// open again for a whole cooldown; the next call is refused at once.
    #[tokio::test]
    async fn a_failed_trial_opens_the_breaker_again() {
        let d = unreachable(1, Duration::ZERO);
        d.call(Service::Carrier, Method::POST, "/x", "k", None)
            .await
            .unwrap_err();
        // Cooldown zero: this call is the trial; it fails and reopens.
        d.call(Service::Carrier, Method::POST, "/x", "k", None)
            .await
            .unwrap_err();
        assert!(!d.breaker(Service::Carrier).with(|b, _| b.trial_in_flight));
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_cap() {
        let mut rng = fastrand::Rng::with_seed(1);
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for (attempt, cap) in [
            (2, 100),
            (3, 200),
            (4, 400),
            (5, 800),
            (6, 1600),
            (7, 2000),
            (30, 2000),
        ] {
            let waits: Vec<Duration> = (0..200)
                .map(|_| backoff(initial, max, attempt, &mut rng))
                .collect();
            assert!(
                waits.iter().all(|w| *w <= Duration::from_millis(cap)),
                "attempt {attempt}"
            );
            assert!(
                waits.iter().any(|w| *w > Duration::from_millis(cap / 2)),
                "attempt {attempt} spreads"
            );
            assert!(
                waits.iter().any(|w| *w < Duration::from_millis(cap / 2)),
                "attempt {attempt} spreads"
            );
        }
    }
}
