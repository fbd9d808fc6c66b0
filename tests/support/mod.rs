//! Helpers shared by the test binaries: a small HTTP client over hyper,
//! the integrator API typed (`api`), the configs the gateways run with
//! (`config`), and signing deliveries the way each sender does. Each
//! binary uses some of them.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waybill::webhook::signature::{Scheme, SchemeKind};

/// Two tests of `run(on_postgres)` on the built binary: `$sled` on the
/// embedded store, `$pg` on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($sled:ident, $pg:ident, $run:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sled() {
            $run(false).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            $run(true).await;
        }
    };
}

pub mod api;
pub use api::Api;
pub mod config;
pub mod pg;

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// Asserts that this answer replays `first`: its status and body byte
    /// for byte, marked `Idempotent-Replayed: true`.
    #[track_caller]
    pub fn assert_replays(&self, first: &Resp) {
        assert_eq!(self.status, first.status, "{:?}", self.body);
        assert_eq!(self.body, first.body, "replayed byte for byte");
        assert_eq!(self.header("idempotent-replayed"), Some("true"));
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of an error body.
    /// The error body's message; empty when there is none.
    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One keep-alive connection; reconnects when the server closed it.
pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, sender: None }
    }

    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let result = sender.send_request(req).await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.to_string());
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        if parts
            .headers
            .get("connection")
            .is_some_and(|v| v == "close")
        {
            self.sender = None;
        }
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    Client::new(addr).send("GET", path, &[], Bytes::new()).await
}

pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    body: impl Into<Bytes>,
) -> Resp {
    Client::new(addr).send("POST", path, headers, body).await
}

/// A store config for opening a gateway's data directory directly.
pub fn store_config(data_dir: &std::path::Path) -> waybill::config::StoreConfig {
    waybill::config::StoreConfig {
        path: data_dir.to_path_buf(),
        dedupe_retention: std::time::Duration::from_secs(86_400),
        idempotency_retention: std::time::Duration::from_secs(86_400),
        in_progress_timeout: std::time::Duration::from_secs(30),
        cache_bytes: 16 << 20,
        min_free_bytes: 0,
        segment_bytes: 64 << 20,
        index_flush: waybill::config::DEFAULT_INDEX_FLUSH,
        backend: waybill::config::StoreBackend::Sled,
    }
}

/// Partner `acme`'s claim on `key` for a request with `fingerprint`.
pub fn acme_claim(
    key: &str,
    fingerprint: waybill::idempotency::Fingerprint,
    lease: std::time::Duration,
) -> waybill::store::Claim {
    waybill::store::Claim {
        partner: "acme".into(),
        key: key.try_into().unwrap(),
        fingerprint,
        lease,
    }
}

/// Asserts that `store` holds nothing half-written (its own integrity
/// check), naming the first few problems if it does.
#[track_caller]
pub fn assert_whole(store: &waybill::store::SledStore) {
    let problems = store.integrity_problems().unwrap();
    assert!(
        problems.is_empty(),
        "{} problems, the first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
}

/// Opens a stopped gateway's store, without its state machine.
pub async fn open_store(data_dir: &std::path::Path) -> std::sync::Arc<waybill::store::SledStore> {
    let cfg = store_config(data_dir);
    let store = tokio::task::spawn_blocking(move || {
        waybill::store::SledStore::open(&cfg).expect("open store")
    })
    .await
    .unwrap();
    std::sync::Arc::new(store)
}

/// Closes a store and lets go of its file lock.
pub async fn close_store(store: std::sync::Arc<waybill::store::SledStore>) {
    tokio::task::spawn_blocking(move || {
        waybill::store::Upkeep::close(&*store).expect("close store");
        drop(store);
    })
    .await
    .unwrap();
}

/// A simulator on 127.0.0.1:0, serving until the test's runtime ends.
pub async fn start_sim(config: waybill::tools::simulator::SimConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(waybill::tools::simulator::run(
        listener,
        config,
        std::future::pending(),
    ));
    addr
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Headers signing `body` with `secret` under `kind`, at `ts`, with `id`
/// where the scheme carries one.
pub fn signed(
    kind: SchemeKind,
    secret: &str,
    body: &[u8],
    ts: i64,
    id: &str,
) -> Vec<(String, String)> {
    let scheme = Scheme::new(kind, None);
    let key = scheme.key_from_secret(secret).expect("test secret");
    let mut h = vec![("content-type".to_string(), "application/json".to_string())];
    h.extend(scheme.sign(&key, body, ts, id));
    h
}

/// The value of one Prometheus sample, 0 when absent. `labels` must be
/// written in the exposition's order, e.g. `source="a",outcome="accepted"`.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Reads one response until the server closes or the whole of it is in.
pub async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Opens a webhook request and sends only part of its body, so the request
/// holds its in-flight slot until the rest comes.
pub async fn hold_in_flight(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: x\r\n").into_bytes();
    for (k, v) in headers {
        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    head.extend_from_slice(&body[..1]);
    stream.write_all(&head).await.unwrap();
    stream
}

/// Polls `probe` every 20 ms until it holds, for at most `secs` seconds;
/// whether it held.
pub async fn eventually(secs: u64, mut probe: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..secs * 50 {
        if probe().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// A running gateway process; killed with SIGKILL when dropped.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// Every log line so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    pub fn start(config: &std::path::Path) -> Gateway {
        Gateway::start_with_env(config, &[])
    }

    /// Starts the gateway with extra environment, e.g. `FAILPOINTS`.
    pub fn start_with_env(config: &std::path::Path, env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waybill"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Gateway::spawn(cmd, config)
    }

    /// Starts the gateway with `serve`'s options `args` after its config.
    pub fn start_with_args(config: &std::path::Path, args: &[&std::ffi::OsStr]) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waybill"));
        cmd.args(["serve", "--config"]).arg(config).args(args);
        Gateway::announced(cmd)
    }

    /// Runs `cmd` as `serve --config config` and waits for it to announce
    /// its address.
    fn spawn(mut cmd: Command, config: &std::path::Path) -> Gateway {
        cmd.args(["serve", "--config"]).arg(config);
        Gateway::announced(cmd)
    }

    /// Starts `cmd` and waits for the gateway to announce its address.
    fn announced(mut cmd: Command) -> Gateway {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start waybill");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("read log");
            log.lock().unwrap().push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "waybill serving" {
                addr = Some(v["listen"].as_str().unwrap().parse().unwrap());
                break;
            }
        }
        // Keep draining the log so the server never blocks on a full pipe.
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Gateway {
            child,
            addr: addr.expect("the gateway announced its address"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines, parsed, that satisfy `pred`.
    pub fn log_lines(&self, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v| pred(v))
            .collect()
    }

    /// The log lines that satisfy `pred`, once there are at least `count`
    /// of them (lines reach us through a pipe and a reader thread), or
    /// what there is after five seconds.
    pub fn await_log(
        &self,
        count: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        for _ in 0..250 {
            found = self.log_lines(&pred);
            if found.len() >= count {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        found
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits for the process to end by itself, at most `limit`; its exit
    /// status, or None if it is still running then.
    pub fn wait_for(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// SIGTERM, and waits for the graceful exit; its exit code.
    pub fn terminate(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap().code()
    }

    /// Waits for the process to end by itself; its exit status.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The headers of a `/v1` write by partner `acme` (key `acme-key`).
pub fn partner_headers(key: &str) -> Vec<(String, String)> {
    api::Api::acme(([127, 0, 0, 1], 0).into()).write_headers(key)
}

/// Creates a shipment for order `order` as partner `acme`; its id.
pub async fn create_shipment(addr: SocketAddr, order: &str) -> String {
    let address = serde_json::json!({"name": "A", "street1": "1", "city": "C", "postal_code": "1", "country": "US"});
    let body = serde_json::json!({"order_id": order, "carrier": "ups", "service": "ground", "from": address, "to": address,
        "parcels": [{"weight_grams": 100, "length_cm": 1, "width_cm": 1, "height_cm": 1}]});
    let r = api::Api::acme(addr)
        .create_shipment(&format!("create-{order}"), &body)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["shipment_id"].as_str().unwrap().to_string()
}

/// Writes a gateway config in `dir`: the server on 127.0.0.1:0 with
/// `server` added to its table, the store under `dir/data` (no free-space
/// floor), then `rest`. Its path.
pub fn write_gateway_config(dir: &std::path::Path, server: &str, rest: &str) -> std::path::PathBuf {
    config::write(dir, server, "", rest)
}

/// A gateway started in a new temporary directory with `server` lines and
/// then `rest` (see `write_gateway_config`); the directory lives as long
/// as its guard.
pub fn gateway_with(server: &str, rest: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_gateway_config(dir.path(), server, rest);
    let gw = Gateway::start(&cfg);
    (dir, gw)
}

/// Asserts that `gw` aborted at `failpoint` while answering the request
/// whose result is `died`: the request failed and the process ended on
/// SIGABRT (a real death, not one task's).
pub fn died_at(gw: Gateway, died: &Result<Resp, String>, failpoint: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        died.is_err(),
        "{failpoint}: the request should have died with the process (is the binary built \
         without the failpoints feature, e.g. by a concurrent `cargo build`?): {died:?}"
    );
    let status = gw.wait();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{failpoint}: {status:?}"
    );
}

/// Sends until the answer is not 409 `IDEMPOTENCY_IN_PROGRESS`, at most
/// 100 times 50 ms apart, as a client retrying on it does: on PostgreSQL a
/// claim whose process died holds its key until its lease ends.
pub async fn past_dead_claim(mut send: impl AsyncFnMut() -> Resp) -> Resp {
    let mut answer = send().await;
    for _ in 0..100 {
        if answer.code() != "IDEMPOTENCY_IN_PROGRESS" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        answer = send().await;
    }
    answer
}

/// A downstream in front of a simulator whose carrier can be switched off:
/// while `carrier_down` is set, every `/carrier` call answers 503; the rest
/// goes on to the simulator.
pub struct SplitDownstream {
    pub addr: SocketAddr,
    pub carrier_down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Which of the next carrier calls lose their answer, lowest bit
    /// first: the simulator does the call, the gateway gets a 502.
    pub carrier_answers_lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// An HTTP/1 server on a free loopback port that answers each request
/// with `answer`'s response; its address.
pub async fn serve<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let svc = hyper::service::service_fn(move |req| {
                let answered = answer(req);
                async move { Ok::<_, std::convert::Infallible>(answered.await) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A response of `status` with `body`.
pub fn answer(
    status: http::StatusCode,
    body: impl Into<Bytes>,
) -> http::Response<http_body_util::Full<Bytes>> {
    let mut resp = http::Response::new(http_body_util::Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

pub async fn split_downstream(sim: SocketAddr) -> SplitDownstream {
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering;
    let carrier_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let carrier_answers_lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let down = carrier_down.clone();
    let lost = carrier_answers_lost.clone();
    let addr = serve(move |req: http::Request<hyper::body::Incoming>| {
        let down = down.clone();
        let lost = lost.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let headers: Vec<(String, String)> = ["idempotency-key", "content-type"]
                .iter()
                .filter_map(|h| {
                    req.headers()
                        .get(*h)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| (h.to_string(), v.to_string()))
                })
                .collect();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let carrier = path.starts_with("/carrier");
            if carrier && down.load(Ordering::SeqCst) {
                return answer(http::StatusCode::SERVICE_UNAVAILABLE, "{}");
            }
            let lose = carrier
                && lost
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| Some(b >> 1))
                    .is_ok_and(|b| b & 1 == 1);
            match Client::new(sim)
                .try_send(&method, &path, &headers, body)
                .await
            {
                Ok(r) if !lose => answer(r.status, r.body),
                _ => answer(http::StatusCode::BAD_GATEWAY, Bytes::new()),
            }
        }
    })
    .await;
    SplitDownstream {
        addr,
        carrier_down,
        carrier_answers_lost,
    }
}

/// The body of an order of `quantity` of `sku` for `customer`.
pub fn order_body(order_id: &str, customer: &str, sku: &str, quantity: u64) -> Value {
    serde_json::json!({
        "order_id": order_id,
        "customer_id": customer,
        "amount_cents": 2599,
        "currency": "EUR",
        "items": [{"sku": sku, "quantity": quantity}],
        "ship_to": {"name": "Ada", "street1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    })
}

/// A `carrier` tracking source with pointers `/id`, `/t`, `/s`, `/at` and
/// four statuses mapped (`held` is not), for tests that build events.
pub fn carrier_sources() -> Vec<waybill::config::SourceConfig> {
    let statuses = [
        ("pre_transit", "LABEL_CREATED"),
        ("in_transit", "IN_TRANSIT"),
        ("out_for_delivery", "OUT_FOR_DELIVERY"),
        ("delivered", "DELIVERED"),
    ];
    waybill::config::Config::parse(
        &config::tracking_source("carrier", config::Shape::Github, "s", &statuses),
        &waybill::config::ProcessEnv,
    )
    .unwrap()
    .sources
}

/// A simulator (stock for all) behind a `split_downstream` whose carrier is
/// down until `carrier_down` is cleared: the simulator's address (for its
/// ledger) and the downstream to configure.
pub async fn sim_with_carrier_down() -> (SocketAddr, SplitDownstream) {
    let sim = start_sim(waybill::tools::simulator::SimConfig {
        default_stock: 1000,
        ..Default::default()
    })
    .await;
    let split = split_downstream(sim).await;
    split
        .carrier_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    (sim, split)
}

impl Gateway {
    /// Starts the gateway with its address space limited to `bytes`
    /// (`RLIMIT_AS`): an allocation past it fails, and a Rust process
    /// aborts on a failed allocation, as it would in a container at its
    /// memory limit.
    pub fn start_with_address_space(config: &std::path::Path, bytes: u64) -> Gateway {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waybill"));
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Gateway::spawn(cmd, config)
    }
}

/// A shipment made outside the API, as tests put them in a store: one
/// parcel, created at `created_at_ms`, no label yet.
pub fn shipment_record(
    shipment_id: &str,
    partner: &str,
    order_id: &str,
    created_at_ms: u64,
) -> waybill::store::ShipmentRecord {
    waybill::store::ShipmentRecord::new(
        shipment_id.into(),
        partner.into(),
        order_id.into(),
        waybill::domain::request::ShipmentDetails::example("ups"),
        created_at_ms,
    )
}

/// The label `lbl-<shipment_id>` with tracking number `tracking_number`,
/// recorded at `at_ms`.
pub fn label_for(shipment_id: &str, tracking_number: &str, at_ms: u64) -> waybill::store::NewLabel {
    waybill::store::NewLabel {
        label: waybill::domain::label::Label::new(
            format!("lbl-{shipment_id}"),
            &shipment_id.into(),
            tracking_number,
            waybill::clock::rfc3339_ms(at_ms),
        ),
        at_ms,
    }
}

/// The rows of `ledger`'s `kind` (labels, charges, reservations) made
/// under `key`.
pub fn keyed_rows<'a>(ledger: &'a Value, kind: &str, key: &str) -> Vec<&'a Value> {
    ledger[kind]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["idempotency_key"] == key)
        .collect()
}

/// The row of `ledger`'s `kind` whose `field` is `value` (a label by its
/// `label_id`, ...).
pub fn ledger_row(ledger: &Value, kind: &str, (field, value): (&str, &Value)) -> Value {
    ledger[kind]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r[field] == *value)
        .unwrap_or_else(|| panic!("no {kind} with {field} {value}"))
        .clone()
}

/// A GET of `path` with `headers`.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Resp {
    Client::new(addr)
        .send("GET", path, headers, Bytes::new())
        .await
}

/// The simulator's labels sold for shipment `id` (under `label:<id>`).
pub async fn labels_of(sim: SocketAddr, id: &str) -> Vec<Value> {
    let ledger = get(sim, "/_sim/ledger").await.json();
    keyed_rows(&ledger, "labels", &format!("label:{id}"))
        .into_iter()
        .cloned()
        .collect()
}

/// The `traceparent`s the simulator received on `path`.
pub async fn traces_to(sim: SocketAddr, path: &str) -> Vec<String> {
    let ledger = get(sim, "/_sim/ledger").await.json();
    ledger["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["path"] == path)
        .filter_map(|t| t["traceparent"].as_str().map(str::to_string))
        .collect()
}

/// Shipment `id` once the void its cancel owed is settled (bounded wait).
pub async fn void_settled(api: &api::Api, id: &str) -> Value {
    let mut shipment = Value::Null;
    let settled = eventually(30, async || {
        shipment = api.shipment(id).await.json();
        shipment["label_void"]["status"] != "owed"
    })
    .await;
    assert!(settled, "the owed void is settled: {shipment}");
    shipment
}
