//! `spawn_app`: the real gateway on 127.0.0.1:0 with fresh storage.
#![allow(dead_code)]

use std::net::SocketAddr;

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use waybill::app::App;
use waybill::config::{Config, ProcessEnv};

use waybill::tools::simulator::SimConfig;
use waybill::webhook::signature::SchemeKind;

pub use crate::support::*;

pub const SW_SECRET: &str = "whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk=";
pub const STRIPE_SECRET: &str = "whsec_stripe_test";
pub const GH_SECRET: &str = "gh-secret";
pub const EP_SECRET: &str = "ep-s\u{e9}cret";
pub const HASH_SECRET: &str = "hash-secret";
pub const SHOP_SECRET: &str = "shop-secret";
pub const BASIC_CREDENTIALS: &str = "carrier:p\u{e4}ss:word";
pub const HEADER_TOKEN: &str = "tok-3f9c2b7e5a1d";

/// The Ed25519 key the `swa` source's sender signs `v1a` with.
pub fn v1a_signer() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42; 32])
}

/// Its public key, as the `swa` source's secret.
pub fn v1a_public_key() -> String {
    use base64::Engine;
    let public = v1a_signer().verifying_key();
    format!(
        "whpk_{}",
        base64::engine::general_purpose::STANDARD.encode(public.as_bytes())
    )
}

/// Sources covering each scheme and identity rule. `{extra}` is appended.
const BASE: &str = r#"
[server]
max_body_bytes = {max_body_bytes}
max_in_flight = {max_in_flight}
max_connections = {max_connections}
request_timeout = "{request_timeout}"
shutdown_grace = "5s"

[store]
{store}
{admin}

[[sources]]
name = "ep"
kind = "tracking"
secrets = ["old-secret", "{ep_secret}"]
signature = { scheme = "easypost" }
event_id = "/id"
event_type = "/description"
accept_event_types = ["tracker.updated"]
[sources.mapping]
tracking_number = "/result/tracking_code"
status = "/result/status"
occurred_at = "{occurred_at}"
[sources.mapping.status_map]
pre_transit = "LABEL_CREATED"
in_transit = "IN_TRANSIT"
out_for_delivery = "OUT_FOR_DELIVERY"
delivered = "DELIVERED"
return_to_sender = "RETURNED"
failure = "EXCEPTION"

[[sources]]
name = "pay"
kind = "payment"
secrets = ["{gh_secret}"]
signature = { scheme = "github" }
event_id = "/id"
event_type = "/type"
accept_event_types = ["payment_intent.succeeded", "charge.refunded"]
[sources.mapping]
order_id = "/data/order_id"
status = "/type"
[sources.mapping.status_map]
"payment_intent.succeeded" = "SUCCEEDED"
"charge.refunded" = "REFUNDED"

{builtin}

[downstream]
base_url = "{downstream}"
timeout = "500ms"
max_attempts = 4
backoff = { initial = "5ms", max = "40ms" }
breaker = { failures = 1000, cooldown = "1s" }

[[partners]]
name = "acme"
api_keys = ["acme-old-key", "acme-key"]

[[partners]]
name = "globex"
api_keys = ["globex-key"]

[[partners]]
name = "tiny"
api_keys = ["tiny-key"]
rate_limit = { per_second = 1, burst = 1 }

[[sources]]
name = "limited"
kind = "store-only"
secrets = ["{gh_secret}"]
signature = { scheme = "github" }
rate_limit = { per_second = 1, burst = 2 }
"#;

/// The store-only sources of each remaining scheme, and the simulator's
/// tracking source.
fn builtin_sources() -> String {
    let statuses = [
        "LABEL_CREATED",
        "IN_TRANSIT",
        "OUT_FOR_DELIVERY",
        "DELIVERED",
    ]
    .map(|s| (s, s));
    [
        store_only("sw", SW_SECRET, "{ scheme = \"standard-webhooks\" }", None),
        store_only("st", STRIPE_SECRET, "{ scheme = \"stripe\" }", Some("/id")),
        store_only("gh", GH_SECRET, "{ scheme = \"github\" }", Some("/id")),
        store_only("sh", SHOP_SECRET, "{ scheme = \"shopify\" }", None),
        store_only("basic", BASIC_CREDENTIALS, "{ scheme = \"basic\" }", Some("/id")),
        store_only(
            "swa",
            &v1a_public_key(),
            "{ scheme = \"standard-webhooks\" }",
            None,
        ),
        store_only(
            "token",
            HEADER_TOKEN,
            "{ scheme = \"header-token\", header = \"X-Api-Key\" }",
            Some("/id"),
        ),
        store_only(
            "hash",
            HASH_SECRET,
            "{ scheme = \"hmac-sha256\", header = \"X-Sig\", encoding = \"hex\", prefix = \"sha256=\" }",
            None,
        ),
        config::tracking_source("simc", config::Shape::StandardWebhooks, SW_SECRET, &statuses),
    ]
    .concat()
}

fn store_only(name: &str, secret: &str, signature: &str, event_id: Option<&str>) -> String {
    let event_id = event_id
        .map(|p| format!("event_id = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        "\n[[sources]]\nname = \"{name}\"\nkind = \"store-only\"\nsecrets = [\"{secret}\"]\n\
         signature = {signature}\n{event_id}"
    )
}

pub const ADMIN_TOKEN: &str = "admin-test-token";

/// Which adapter this build of the suite runs on: the `api` test target
/// on sled, `api_postgres` (the same files) on PostgreSQL, each app in a
/// schema of its own.
pub fn on_postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "api_postgres"
}

/// Where an app keeps its data: a directory, and on PostgreSQL a schema.
struct Storage {
    dir: tempfile::TempDir,
    pg: Option<crate::support::pg::Schema>,
}

impl Storage {
    async fn new() -> Storage {
        let pg = if on_postgres() {
            match crate::support::pg::schema().await {
                Some(schema) => Some(schema),
                // `schema` said why; the whole suite is skipped, not each
                // test's body.
                None => std::process::exit(0),
            }
        } else {
            None
        };
        Storage {
            dir: tempfile::tempdir().unwrap(),
            pg,
        }
    }

    /// The config's `[store]` keys.
    fn section(&self) -> String {
        match &self.pg {
            Some(schema) => format!(
                "backend = \"postgres\"\nurl = \"{}\"\npool_size = 4",
                schema.url
            ),
            None => format!("path = \"{}\"", self.dir.path().join("data").display()),
        }
    }
}

#[derive(Clone)]
pub struct Options {
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub request_timeout: &'static str,
    pub admin: bool,
    /// The `ep` source's occurred_at pointer.
    pub occurred_at: &'static str,
    /// Where the carrier, payments and inventory are (a simulator).
    pub downstream: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body_bytes: 4096,
            max_in_flight: 256,
            max_connections: 10_000,
            request_timeout: "5s",
            admin: true,
            occurred_at: "/result/updated_at",
            // Nothing listens on the discard port: calls fail fast.
            downstream: "http://127.0.0.1:9".into(),
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    storage: Storage,
    /// The running gateway, for what its HTTP API does not offer yet
    /// (creating shipments, recording labels) and to wait for dispatch.
    pub app: Arc<App>,
    /// The config file it started with, for reloads of an edited copy.
    pub config_text: String,
    opts: Options,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    start(Storage::new().await, opts).await
}

async fn start(storage: Storage, opts: Options) -> TestApp {
    let text = BASE
        .replace("{store}", &storage.section())
        .replace("{max_body_bytes}", &opts.max_body_bytes.to_string())
        .replace("{max_in_flight}", &opts.max_in_flight.to_string())
        .replace("{max_connections}", &opts.max_connections.to_string())
        .replace("{request_timeout}", opts.request_timeout)
        .replace(
            "{admin}",
            &if opts.admin {
                format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"")
            } else {
                String::new()
            },
        )
        .replace("{occurred_at}", opts.occurred_at)
        .replace("{downstream}", &opts.downstream)
        .replace("{ep_secret}", EP_SECRET)
        .replace("{sw_secret}", SW_SECRET)
        .replace("{stripe_secret}", STRIPE_SECRET)
        .replace("{gh_secret}", GH_SECRET)
        .replace("{shop_secret}", SHOP_SECRET)
        .replace("{hash_secret}", HASH_SECRET)
        .replace("{builtin}", &builtin_sources());
    let config = Config::parse(&text, &ProcessEnv).expect("test config");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let app = App::start(config).await.expect("app starts");
    let serving = app.clone();
    let handle = tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("app runs");
    });
    TestApp {
        addr,
        storage,
        app,
        config_text: text,
        opts,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// What dispatch made of event `id` of `source`, which must be stored.
    pub async fn outcome_of(&self, source: &str, id: &str) -> waybill::store::DispatchOutcome {
        let stored = self.app.store.outcome(source, id).await.unwrap();
        stored.expect("an outcome").outcome
    }

    /// Stops gracefully (drain, flush) and starts again on the same data.
    pub async fn restart(self) -> TestApp {
        let opts = self.opts.clone();
        self.restart_with(opts).await
    }

    /// Stops and starts again on the same data with other options.
    pub async fn restart_with(mut self, opts: Options) -> TestApp {
        self.stop().await;
        let TestApp { storage, app, .. } = self;
        drop(app);
        start(storage, opts).await
    }

    /// Waits until everything accepted so far has been dispatched.
    pub async fn settle(&self) {
        self.app.store.settle().await.expect("dispatch settles");
    }

    pub fn admin_headers() -> Vec<(String, String)> {
        vec![("Authorization".into(), format!("Bearer {ADMIN_TOKEN}"))]
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        Client::new(self.addr)
            .send("GET", path, &TestApp::admin_headers(), bytes::Bytes::new())
            .await
    }

    pub async fn admin_post(&self, path: &str) -> Resp {
        Client::new(self.addr)
            .send("POST", path, &TestApp::admin_headers(), bytes::Bytes::new())
            .await
    }

    /// Signals shutdown without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8(get(self.addr, "/metrics").await.body.to_vec()).unwrap()
    }

    pub async fn webhook(&self, source: &str, headers: &[(String, String)], body: &[u8]) -> Resp {
        post(
            self.addr,
            &format!("/webhooks/{source}"),
            headers,
            body.to_vec(),
        )
        .await
    }
}

pub fn tracking_body(id: &str, tn: &str, status: &str, at: &str) -> Vec<u8> {
    json!({
        "id": id,
        "description": "tracker.updated",
        "result": {"tracking_code": tn, "status": status, "updated_at": at}
    })
    .to_string()
    .into_bytes()
}

pub async fn send_tracking(app: &TestApp, id: &str, tn: &str, status: &str, at: &str) -> Resp {
    let body = tracking_body(id, tn, status, at);
    app.webhook(
        "ep",
        &signed(SchemeKind::Easypost, EP_SECRET, &body, 0, ""),
        &body,
    )
    .await
}

/// Delivery `n` to the rate-limited source `limited`, signed, its id
/// `{id}{n}`.
pub async fn to_limited(app: &TestApp, id: &str, n: usize) -> Resp {
    let body = format!(r#"{{"n":{n}}}"#);
    let h = signed(
        SchemeKind::Github,
        GH_SECRET,
        body.as_bytes(),
        0,
        &format!("{id}{n}"),
    );
    app.webhook("limited", &h, body.as_bytes()).await
}

pub async fn shipment_with_label(app: &TestApp, shipment_id: &str, tn: &str) {
    let now = waybill::clock::now_ms();
    let rec = shipment_record(shipment_id, "acme", &format!("order-{shipment_id}"), now);
    app.app.store.create_shipment(rec, None).await.unwrap();
    app.app
        .store
        .record_label(label_for(shipment_id, tn, now), None)
        .await
        .unwrap();
}

/// A gateway in front of a simulator started with `config`.
pub async fn app_with_sim(config: SimConfig) -> (TestApp, SocketAddr) {
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        ..config
    })
    .await;
    let app = spawn_app_with(Options {
        downstream: format!("http://{sim}"),
        ..Options::default()
    })
    .await;
    (app, sim)
}

pub fn headers(key: &str) -> Vec<(String, String)> {
    partner_headers(key)
}

pub async fn new_shipment(app: &TestApp, order: &str) -> String {
    create_shipment(app.addr, order).await
}

pub async fn buy(app: &TestApp, id: &str, key: &str) -> Resp {
    Api::acme(app.addr)
        .buy_label(id, key, r#"{"format":"ZPL"}"#)
        .await
}

pub async fn cancel(app: &TestApp, id: &str, key: &str) -> Resp {
    Api::acme(app.addr).cancel(id, key).await
}

pub async fn ledger(sim: SocketAddr) -> Value {
    get(sim, "/_sim/ledger").await.json()
}

/// A carrier that holds every label call until the test releases it: the
/// test knows a call is in flight (`arrived`) and decides when it ends.
/// Each released call sells the same label, as a carrier does for one
/// idempotency key.
pub struct GatedCarrier {
    pub addr: SocketAddr,
    pub arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    pub release: std::sync::Arc<tokio::sync::Semaphore>,
}

pub async fn gated_carrier() -> GatedCarrier {
    let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let addr = serve(move |_req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        let gate = gate.clone();
        async move {
            let _ = tx.send(());
            gate.acquire().await.unwrap().forget();
            let body =
                json!({"label_id": "lbl_gated", "tracking_number": "TN-GATED", "carrier": "ups"});
            answer(http::StatusCode::CREATED, body.to_string())
        }
    })
    .await;
    GatedCarrier {
        addr,
        arrived,
        release,
    }
}

pub async fn place_order(app: &TestApp, key: &str, body: &Value) -> Resp {
    Api::acme(app.addr).place_order(key, body).await
}

pub async fn get_order(app: &TestApp, api_key: &str, order_id: &str) -> Resp {
    Api::with_key(app.addr, api_key).order(order_id).await
}

/// A gateway whose carrier is a `GatedCarrier`.
pub async fn app_with_gated_carrier() -> (TestApp, GatedCarrier) {
    let carrier = gated_carrier().await;
    let app = spawn_app_with(Options {
        downstream: format!("http://{}", carrier.addr),
        ..Options::default()
    })
    .await;
    (app, carrier)
}

/// A gateway in front of a simulator whose carrier is down until
/// `carrier_down` is cleared; the simulator's address for its ledger.
pub async fn app_with_carrier_down() -> (TestApp, SplitDownstream, SocketAddr) {
    let (sim, split) = sim_with_carrier_down().await;
    let app = spawn_app_with(Options {
        downstream: format!("http://{}", split.addr),
        ..Options::default()
    })
    .await;
    (app, split, sim)
}

/// Runs `task(0)` to `task(n - 1)` at once, each on a task of its own;
/// their results in that order.
pub async fn concurrently<T, F>(n: usize, task: impl Fn(usize) -> F) -> Vec<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(task(i))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A simulator that fails a fifth of the calls and loses half of its
/// answers, the same way for one `seed`.
pub fn lossy(seed: u64) -> SimConfig {
    SimConfig {
        fail_rate: 0.2,
        lost_response_rate: 0.5,
        seed: Some(seed),
        ..SimConfig::default()
    }
}
