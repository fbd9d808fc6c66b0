//! `spawn_app`: the real gateway on 127.0.0.1:0 with fresh storage.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use waybill::config::{Config, ProcessEnv};

pub use crate::support::*;

pub const SW_SECRET: &str = "whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk=";
pub const STRIPE_SECRET: &str = "whsec_stripe_test";
pub const GH_SECRET: &str = "gh-secret";
pub const EP_SECRET: &str = "ep-s\u{e9}cret";
pub const HASH_SECRET: &str = "hash-secret";
pub const SHOP_SECRET: &str = "shop-secret";

/// Sources covering each scheme and identity rule. `{extra}` is appended.
const BASE: &str = r#"
[server]
max_body_bytes = 4096
max_in_flight = {max_in_flight}
request_timeout = "{request_timeout}"
shutdown_grace = "5s"

[store]
path = "{path}"

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
[sources.mapping.status_map]
in_transit = "IN_TRANSIT"
delivered = "DELIVERED"

[[sources]]
name = "sw"
kind = "store-only"
secrets = ["{sw_secret}"]
signature = { scheme = "standard-webhooks" }

[[sources]]
name = "st"
kind = "store-only"
secrets = ["{stripe_secret}"]
signature = { scheme = "stripe" }
event_id = "/id"

[[sources]]
name = "gh"
kind = "store-only"
secrets = ["{gh_secret}"]
signature = { scheme = "github" }
event_id = "/id"

[[sources]]
name = "sh"
kind = "store-only"
secrets = ["{shop_secret}"]
signature = { scheme = "shopify" }

[[sources]]
name = "hash"
kind = "store-only"
secrets = ["{hash_secret}"]
signature = { scheme = "hmac-sha256", header = "X-Sig", encoding = "hex", prefix = "sha256=" }

[[sources]]
name = "limited"
kind = "store-only"
secrets = ["{gh_secret}"]
signature = { scheme = "github" }
rate_limit = { per_second = 1, burst = 2 }
"#;

pub struct Options {
    pub max_in_flight: usize,
    pub request_timeout: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_in_flight: 256,
            request_timeout: "5s",
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    start(dir, opts).await
}

async fn start(dir: tempfile::TempDir, opts: Options) -> TestApp {
    let text = BASE
        .replace("{path}", &dir.path().join("data").display().to_string())
        .replace("{max_in_flight}", &opts.max_in_flight.to_string())
        .replace("{request_timeout}", opts.request_timeout)
        .replace("{ep_secret}", EP_SECRET)
        .replace("{sw_secret}", SW_SECRET)
        .replace("{stripe_secret}", STRIPE_SECRET)
        .replace("{gh_secret}", GH_SECRET)
        .replace("{shop_secret}", SHOP_SECRET)
        .replace("{hash_secret}", HASH_SECRET);
    let config = Config::parse(&text, &ProcessEnv).expect("test config");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        waybill::app::run(config, listener, async {
            let _ = rx.await;
        })
        .await
        .expect("app runs");
    });
    TestApp {
        addr,
        dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Stops gracefully (drain, flush) and starts again on the same data.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        start(dir, Options::default()).await
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
