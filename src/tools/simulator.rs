//! `waybill simulate`: the carrier, payments and inventory services the
//! gateway calls, on one address, with the faults real ones have
//! (GUARANTEES.md: "Downstreams"). Every side effect it really performs is one row in
//! `GET /_sim/ledger`, so a test can prove that nothing happened twice;
//! fault injection never touches the ledger.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::webhook::canonical;
use crate::webhook::signature::{Scheme, SchemeKind};

#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub stock: HashMap<String, i64>,
    pub default_stock: i64,
    /// Chance of a 503 before any work.
    pub fail_rate: f64,
    /// Chance that, after doing the work, the answer is lost: a 500 or a
    /// dropped connection.
    pub lost_response_rate: f64,
    pub latency: Duration,
    pub seed: Option<u64>,
    /// Where to send tracking webhooks for every label, and the
    /// Standard Webhooks secret to sign them with.
    pub emit: Option<(String, String)>,
    pub duplicate_rate: f64,
    pub reorder_rate: f64,
    /// Serve HTTPS with this certificate and key (`--tls-cert`,
    /// `--tls-key`), as a real carrier does.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A TLS server config from a PEM certificate chain and a PEM private key.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map(Arc::new)
        .map_err(|e| format!("TLS: {e}"))
}

#[derive(Debug, Clone, Serialize)]
struct ChargeRow {
    idempotency_key: Option<String>,
    created_at: String,
    #[serde(skip)]
    created_ms: u64,
    transaction_id: String,
    amount_cents: i64,
    currency: String,
    customer_id: String,
}

#[derive(Debug, Clone, Serialize)]
struct LabelRow {
    idempotency_key: Option<String>,
    created_at: String,
    #[serde(skip)]
    created_ms: u64,
    label_id: String,
    tracking_number: String,
    voided: bool,
}

/// A request's `traceparent`, as the simulator received it.
#[derive(Debug, Clone, Serialize)]
struct TraceRow {
    method: String,
    path: String,
    traceparent: String,
}

/// How many received `traceparent`s the ledger keeps.
const MAX_TRACES: usize = 1000;

#[derive(Debug, Clone, Serialize)]
struct ReservationRow {
    idempotency_key: Option<String>,
    created_at: String,
    #[serde(skip)]
    created_ms: u64,
    reservation_id: String,
    items: Value,
    released: bool,
}

#[derive(Default)]
struct Ledger {
    charges: Vec<ChargeRow>,
    labels: Vec<LabelRow>,
    reservations: Vec<ReservationRow>,
    stock: HashMap<String, i64>,
    traces: std::collections::VecDeque<TraceRow>,
}

/// A stored answer for an idempotency key: the request's fingerprint and
/// what it got.
type Stored = (String, StatusCode, Value);

struct Sim {
    config: SimConfig,
    ledger: Mutex<Ledger>,
    answers: Mutex<HashMap<String, Stored>>,
    /// One lock per idempotency key: concurrent requests with one key are
    /// served one after the other and get the same answer.
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    rng: Mutex<fastrand::Rng>,
    counter: std::sync::atomic::AtomicU64,
    /// This run's part of every tracking number, never from the seed: a
    /// restart with one seed repeats the fault dice, not the numbers.
    run: u32,
}

/// Serves until `shutdown` resolves.
pub async fn run(listener: TcpListener, config: SimConfig, shutdown: impl Future<Output = ()>) {
    let rng = config
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let sim = Arc::new(Sim {
        ledger: Mutex::new(Ledger {
            stock: config.stock.clone(),
            ..Ledger::default()
        }),
        config,
        answers: Mutex::new(HashMap::new()),
        key_locks: Mutex::new(HashMap::new()),
        rng: Mutex::new(rng),
        counter: std::sync::atomic::AtomicU64::new(0),
        // The random bits of a UUIDv7, which differ from run to run.
        run: (uuid::Uuid::now_v7().as_u128() & 0xFF_FFFF) as u32,
    });
    let tls = sim.config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let sim = sim.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let sim = sim.clone();
                        async move { sim.serve(req).await }
                    });
                    let http = http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                            Err(e) => tracing::info!(error = %e, "TLS handshake failed"),
                        },
                    }
                });
            }
            _ = &mut shutdown => return,
        }
    }
}

/// The error a service answer can end in: a dropped connection.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response lost on purpose")
    }
}

impl std::error::Error for Dropped {}

fn json(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Rows a list page holds when the caller names no `limit`, and at most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// One page of `rows`, newest first, as a provider lists what it did:
/// `created_after` (RFC 3339) keeps the newer ones, `limit` bounds the
/// page, and `cursor` (a previous page's `next_cursor`) goes on below it.
fn list<T: Serialize>(
    rows: &[T],
    created_ms: impl Fn(&T) -> u64,
    query: &str,
) -> (StatusCode, Value) {
    let mut after = 0;
    let mut limit = PAGE;
    let mut below = rows.len();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let parsed = match k.as_ref() {
            "created_after" => crate::clock::parse_rfc3339_ms(&v).map(|ms| after = ms),
            "limit" => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .map(|n| limit = n),
            "cursor" => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= rows.len())
                .map(|n| below = n),
            _ => Some(()),
        };
        if parsed.is_none() {
            return error(StatusCode::BAD_REQUEST, "INVALID", &format!("bad {k}"));
        }
    }
    let mut data = Vec::new();
    let mut next = None;
    for i in (0..below).rev() {
        let Some(row) = rows.get(i) else { continue };
        if created_ms(row) <= after {
            continue;
        }
        if data.len() == limit {
            next = Some((i + 1).to_string());
            break;
        }
        data.push(serde_json::to_value(row).unwrap_or(Value::Null));
    }
    (StatusCode::OK, json!({"data": data, "next_cursor": next}))
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"code": code, "message": message}}))
}

impl Sim {
    /// The tests' hands on the books, as if someone had changed them at
    /// the provider: `POST /_sim/charges/{id}/amount?cents=N` changes a
    /// charge's amount, `POST /_sim/labels/{id}/unvoid` makes a voided
    /// label active again.
    fn tamper(&self, path: &str, req: &Request<Incoming>) -> Option<(StatusCode, Value)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut l = self.ledger.lock().expect("ledger lock");
        match segments.as_slice() {
            ["_sim", "charges", id, "amount"] => {
                let cents = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .find(|(k, _)| k == "cents")
                    .and_then(|(_, v)| v.parse::<i64>().ok());
                let row = l.charges.iter_mut().find(|r| r.transaction_id == *id);
                Some(match (row, cents) {
                    (Some(row), Some(cents)) => {
                        row.amount_cents = cents;
                        (StatusCode::OK, json!({"amount_cents": cents}))
                    }
                    _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such charge"),
                })
            }
            ["_sim", "labels", id, "unvoid"] => {
                Some(match l.labels.iter_mut().find(|r| r.label_id == *id) {
                    Some(row) => {
                        row.voided = false;
                        (StatusCode::OK, json!({"voided": false}))
                    }
                    None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such label"),
                })
            }
            _ => None,
        }
    }

    fn draw(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().expect("rng lock").f64() < p
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}_{n:06}{}", uuid::Uuid::now_v7().simple())
    }

    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Dropped> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        if path == "/_sim/ledger" && method == Method::GET {
            let l = self.ledger.lock().expect("ledger lock");
            return Ok(json(
                StatusCode::OK,
                &json!({"charges": l.charges, "labels": l.labels, "reservations": l.reservations,
                        "traces": l.traces}),
            ));
        }
        if method == Method::GET {
            let query = req.uri().query().unwrap_or("");
            let l = self.ledger.lock().expect("ledger lock");
            let page = match path.as_str() {
                "/carrier/labels" => Some(list(&l.labels, |r| r.created_ms, query)),
                "/payments/charges" => Some(list(&l.charges, |r| r.created_ms, query)),
                "/inventory/reservations" => Some(list(&l.reservations, |r| r.created_ms, query)),
                _ => None,
            };
            if let Some((status, body)) = page {
                return Ok(json(status, &body));
            }
        }
        if method == Method::POST
            && let Some((status, body)) = self.tamper(&path, &req)
        {
            return Ok(json(status, &body));
        }
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(traceparent) = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            let mut l = self.ledger.lock().expect("ledger lock");
            // The most recent only: the ledger of a long run stays small.
            if l.traces.len() >= MAX_TRACES {
                l.traces.pop_front();
            }
            l.traces.push_back(TraceRow {
                method: method.to_string(),
                path: path.clone(),
                traceparent: traceparent.to_string(),
            });
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        if self.draw(self.config.fail_rate) {
            let (s, b) = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "injected failure",
            );
            return Ok(json(s, &b));
        }
        let (status, answer) = self.answer(&method, &path, key, &body).await;
        if self.draw(self.config.lost_response_rate) {
            // The work is done (and in the ledger); the caller never hears.
            if self.draw(0.5) {
                return Err(Dropped);
            }
            let (s, b) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "LOST",
                "the response was lost",
            );
            return Ok(json(s, &b));
        }
        if status == StatusCode::NO_CONTENT {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = status;
            return Ok(r);
        }
        Ok(json(status, &answer))
    }

    /// The answer to a request, remembered under its idempotency key.
    async fn answer(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        key: Option<String>,
        body: &Bytes,
    ) -> (StatusCode, Value) {
        let parsed: Option<Value> = if body.is_empty() {
            Some(json!({}))
        } else {
            serde_json::from_slice(body).ok()
        };
        let Some(value) = parsed else {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_JSON",
                "the body is not JSON",
            );
        };
        let Some(key) = key.filter(|_| method == Method::POST) else {
            return self.perform(method, path, &value, None);
        };
        let scoped = format!("{path}\n{key}");
        let lock = self
            .key_locks
            .lock()
            .expect("key lock table")
            .entry(scoped.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let fingerprint = hex::encode(Sha256::digest(canonical::to_vec(&value)));
        if let Some((fp, status, answer)) = self
            .answers
            .lock()
            .expect("answers lock")
            .get(&scoped)
            .cloned()
        {
            if fp != fingerprint {
                return error(
                    StatusCode::CONFLICT,
                    "IDEMPOTENCY_CONFLICT",
                    "this key was used with another body",
                );
            }
            return (status, answer);
        }
        let (status, answer) = self.perform(method, path, &value, Some(&key));
        if status.is_success()
            || status == StatusCode::PAYMENT_REQUIRED
            || status == StatusCode::UNPROCESSABLE_ENTITY
        {
            self.answers
                .lock()
                .expect("answers lock")
                .insert(scoped, (fingerprint, status, answer.clone()));
        }
        (status, answer)
    }

    fn perform(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_string);
        let now = crate::clock::now_ms();
        match (method, segments.as_slice()) {
            (&Method::POST, ["carrier", "labels"]) => {
                if text("shipment_id").is_none() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID",
                        "shipment_id is required",
                    );
                }
                let carrier = text("carrier").unwrap_or_else(|| "sim".into());
                let label_id = self.next_id("lbl");
                // Unique by construction: this run's mark, a serial, then
                // random digits.
                let serial = self
                    .counter
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let noise = self.rng.lock().expect("rng lock").u32(..0xFF_FFFF);
                let tracking_number = format!("SIM{:06X}{serial:08}{noise:06X}", self.run);
                self.ledger
                    .lock()
                    .expect("ledger lock")
                    .labels
                    .push(LabelRow {
                        idempotency_key: key.map(str::to_string),
                        created_at: crate::clock::rfc3339_ms(now),
                        created_ms: now,
                        label_id: label_id.clone(),
                        tracking_number: tracking_number.clone(),
                        voided: false,
                    });
                if let Some((url, secret)) = &self.config.emit {
                    tokio::spawn(emit_tracking(
                        self.clone(),
                        url.clone(),
                        secret.clone(),
                        tracking_number.clone(),
                    ));
                }
                (
                    StatusCode::CREATED,
                    json!({"label_id": label_id, "tracking_number": tracking_number, "carrier": carrier,
                           "label_url": format!("https://labels.sim.invalid/{label_id}.pdf")}),
                )
            }
            (&Method::POST, ["carrier", "labels", label_id, "void"]) => {
                let mut l = self.ledger.lock().expect("ledger lock");
                match l.labels.iter_mut().find(|r| r.label_id == *label_id) {
                    Some(row) => {
                        row.voided = true;
                        (
                            StatusCode::OK,
                            json!({"label_id": label_id, "voided": true}),
                        )
                    }
                    None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such label"),
                }
            }
            (&Method::POST, ["payments", "charges"]) => {
                let (Some(amount), Some(currency), Some(customer)) = (
                    body.get("amount_cents").and_then(Value::as_i64),
                    text("currency"),
                    text("customer_id"),
                ) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID",
                        "amount_cents, currency and customer_id are required",
                    );
                };
                if customer.starts_with("decline") {
                    return error(
                        StatusCode::PAYMENT_REQUIRED,
                        "PAYMENT_FAILED",
                        "card declined",
                    );
                }
                let transaction_id = self.next_id("txn");
                self.ledger
                    .lock()
                    .expect("ledger lock")
                    .charges
                    .push(ChargeRow {
                        idempotency_key: key.map(str::to_string),
                        created_at: crate::clock::rfc3339_ms(now),
                        created_ms: now,
                        transaction_id: transaction_id.clone(),
                        amount_cents: amount,
                        currency,
                        customer_id: customer,
                    });
                (
                    StatusCode::CREATED,
                    json!({"transaction_id": transaction_id}),
                )
            }
            (&Method::POST, ["inventory", "reservations"]) => {
                let Some(items) = body.get("items").and_then(Value::as_array) else {
                    return error(StatusCode::BAD_REQUEST, "INVALID", "items is required");
                };
                let mut wanted: Vec<(String, i64)> = Vec::new();
                for item in items {
                    match (
                        item.get("sku").and_then(Value::as_str),
                        item.get("quantity").and_then(Value::as_i64),
                    ) {
                        (Some(sku), Some(q)) if q > 0 => wanted.push((sku.to_string(), q)),
                        _ => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "INVALID",
                                "each item needs a sku and a positive quantity",
                            );
                        }
                    }
                }
                let mut l = self.ledger.lock().expect("ledger lock");
                let default = self.config.default_stock;
                if wanted
                    .iter()
                    .any(|(sku, q)| *l.stock.get(sku).unwrap_or(&default) < *q)
                {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "INSUFFICIENT_STOCK",
                        "not enough stock",
                    );
                }
                for (sku, q) in &wanted {
                    *l.stock.entry(sku.clone()).or_insert(default) -= q;
                }
                let reservation_id = self.next_id("res");
                l.reservations.push(ReservationRow {
                    idempotency_key: key.map(str::to_string),
                    created_at: crate::clock::rfc3339_ms(now),
                    created_ms: now,
                    reservation_id: reservation_id.clone(),
                    items: Value::Array(items.clone()),
                    released: false,
                });
                (
                    StatusCode::CREATED,
                    json!({"reservation_id": reservation_id}),
                )
            }
            (&Method::DELETE, ["inventory", "reservations", id]) => {
                let mut l = self.ledger.lock().expect("ledger lock");
                let Some(row) = l.reservations.iter_mut().find(|r| r.reservation_id == *id) else {
                    return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such reservation");
                };
                if !row.released {
                    row.released = true;
                    let items = row.items.clone();
                    let default = self.config.default_stock;
                    for item in items.as_array().into_iter().flatten() {
                        if let (Some(sku), Some(q)) = (
                            item.get("sku").and_then(Value::as_str),
                            item.get("quantity").and_then(Value::as_i64),
                        ) {
                            *l.stock.entry(sku.to_string()).or_insert(default) += q;
                        }
                    }
                }
                (StatusCode::NO_CONTENT, Value::Null)
            }
            _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"),
        }
    }
}

/// Sends the tracking updates a carrier would for a new label, signed with
/// Standard Webhooks, some twice and some out of order.
async fn emit_tracking(sim: Arc<Sim>, url: String, secret: String, tracking_number: String) {
    let scheme = Scheme::new(SchemeKind::StandardWebhooks, None);
    let Ok(key) = scheme.key_from_secret(&secret) else {
        tracing::error!("--secret is not a Standard Webhooks secret");
        return;
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        tracing::error!(url, "--emit-webhooks is not a URL");
        return;
    };
    let statuses = [
        "LABEL_CREATED",
        "IN_TRANSIT",
        "OUT_FOR_DELIVERY",
        "DELIVERED",
    ];
    let start = crate::clock::now_ms();
    let mut events: Vec<(String, Vec<u8>)> = statuses
        .iter()
        .enumerate()
        .map(|(i, status)| {
            let id = format!("evt_{}_{i}", tracking_number);
            let occurred = crate::clock::rfc3339_ms(start + i as u64 * 60_000);
            let body = json!({"id": id, "type": "tracking.updated",
                              "data": {"tracking_number": tracking_number, "status": status, "occurred_at": occurred}});
            (id, body.to_string().into_bytes())
        })
        .collect();
    for i in 0..events.len().saturating_sub(1) {
        if sim.draw(sim.config.reorder_rate) {
            events.swap(i, i + 1);
        }
    }
    let mut sends = Vec::new();
    for e in events {
        let twice = sim.draw(sim.config.duplicate_rate);
        sends.push(e.clone());
        if twice {
            sends.push(e);
        }
    }
    let Some(authority) = uri.authority().map(|a| a.to_string()) else {
        return;
    };
    let path = uri.path().to_string();
    for (id, body) in sends {
        let headers = scheme.sign(&key, &body, (crate::clock::now_ms() / 1000) as i64, &id);
        if let Err(e) = post(&authority, &path, headers, body).await {
            tracing::warn!(error = %e, "emitting a tracking webhook failed");
        }
    }
}

async fn post(
    authority: &str,
    path: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Result<StatusCode, String> {
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", authority)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status())
}
