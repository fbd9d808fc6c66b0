//! The web console (`/admin/ui`; GUARANTEES.md: "Admin in bulk") in a real browser:
//! headless Chromium, driven over the WebDriver protocol by chromedriver,
//! against the built binary. It signs in, lists the dead events, opens
//! one, has the operator fix the config (SIGHUP) and redeliver it from the
//! page, and keeps a screenshot in `target/console.png`.
//!
//! It needs Debian's `chromium` and `chromium-driver`; without them it says
//! so and passes, unless `WAYBILL_REQUIRE_BROWSER` is set (`.ci/run` sets
//! it, and installs them).

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{Value, json};
use support::*;
use waybill::webhook::signature::SchemeKind;

const TOKEN: &str = "console-test-token";
const SECRET: &str = "ep-secret";

fn config(occurred_at: &str) -> String {
    format!(
        r#"[admin]
token = "{TOKEN}"

[[sources]]
name = "ep"
kind = "tracking"
secrets = ["{SECRET}"]
signature = {{ scheme = "easypost" }}
event_id = "/id"

[sources.mapping]
tracking_number = "/result/tracking_code"
status = "/result/status"
occurred_at = "{occurred_at}"

[sources.mapping.status_map]
in_transit = "IN_TRANSIT"
"#
    )
}

struct Driver {
    child: Child,
    client: Client,
    session: String,
}

impl Drop for Driver {
    /// chromedriver and the browsers it started share a process group of
    /// their own: all of them go, whatever state the test ended in.
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Driver {
    /// chromedriver on a free port and a headless Chromium session, or None
    /// when they are not installed.
    async fn start() -> Option<Driver> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        use std::os::unix::process::CommandExt;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut child = child;
        // chromedriver says "... started successfully" once it listens.
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        for line in lines.by_ref() {
            if line.ok()?.contains("started successfully") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut client = Client::new(addr);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,1100"
            ]}
        }}});
        let r = client
            .send(
                "POST",
                "/session",
                &[("Content-Type".into(), "application/json".into())],
                caps.to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let session = r.json()["value"]["sessionId"].as_str().unwrap().to_string();
        let mut driver = Driver {
            child,
            client,
            session,
        };
        driver
            .call(
                "POST",
                "timeouts",
                json!({"implicit": 10_000, "script": 10_000, "pageLoad": 10_000}),
            )
            .await;
        Some(driver)
    }

    async fn call(&mut self, method: &str, path: &str, body: Value) -> Value {
        let (ok, value) = self.try_call(method, path, body).await;
        assert!(ok, "{method} {path}: {value}");
        value
    }

    async fn try_call(&mut self, method: &str, path: &str, body: Value) -> (bool, Value) {
        let url = if path.is_empty() {
            format!("/session/{}", self.session)
        } else {
            format!("/session/{}/{path}", self.session)
        };
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let r = self
            .client
            .send(
                method,
                &url,
                &[("Content-Type".into(), "application/json".into())],
                body,
            )
            .await;
        (r.status == 200, r.json()["value"].clone())
    }

    async fn element(&mut self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    async fn click(&mut self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("element/{id}/click"), json!({}))
            .await;
    }

    async fn type_into(&mut self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            "POST",
            &format!("element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn text(&mut self, css: &str) -> String {
        let id = self.element(css).await;
        self.call("GET", &format!("element/{id}/text"), json!({}))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits, in the page, until `css` holds `text`: a MutationObserver
    /// answers as soon as it does (the script timeout bounds the wait).
    async fn wait_for_text(&mut self, css: &str, text: &str) {
        let script = r#"
            const [css, text, done] = arguments;
            const holds = () => {
                const el = document.querySelector(css);
                return !!el && el.textContent.includes(text);
            };
            if (holds()) { done(true); return; }
            const seen = new MutationObserver(() => {
                if (holds()) { seen.disconnect(); done(true); }
            });
            seen.observe(document.documentElement,
                { subtree: true, childList: true, characterData: true, attributes: true });
        "#;
        let (ok, held) = self
            .try_call(
                "POST",
                "execute/async",
                json!({"script": script, "args": [css, text]}),
            )
            .await;
        if !ok || held != json!(true) {
            let page = self
                .call(
                    "POST",
                    "execute/sync",
                    json!({"script": "return document.body.innerText", "args": []}),
                )
                .await;
            panic!("{css} never held {text:?}: {held}\nthe page:\n{page}");
        }
    }

    async fn screenshot(&mut self, path: &std::path::Path) {
        let png = self.call("GET", "screenshot", json!({})).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn tracking(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = json!({"id": id, "description": "tracker.updated",
        "result": {"tracking_code": "TN-CONSOLE", "status": "in_transit",
            "when": "sometime", "updated_at": "2026-11-20T10:00:00Z"}})
    .to_string()
    .into_bytes();
    (signed(SchemeKind::Easypost, SECRET, &body, 0, ""), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_dead_event_in_the_console_and_redelivers_it() {
    let Some(mut browser) = Driver::start().await else {
        assert!(
            std::env::var_os("WAYBILL_REQUIRE_BROWSER").is_none(),
            "chromedriver is required here (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: no chromedriver (apt-get install chromium chromium-driver to run the console in a browser)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The carrier's time is read from a pointer that holds garbage: dead.
    let cfg = write_gateway_config(dir.path(), "", &config("/result/when"));
    let gw = Gateway::start(&cfg);
    for id in ["con-1", "con-2"] {
        let (h, b) = tracking(id);
        assert_eq!(post(gw.addr, "/webhooks/ep", &h, b).await.status, 202);
    }
    let base = format!("http://127.0.0.1:{}", gw.addr.port());

    // Signed out: the sign-in form.
    browser
        .call("POST", "url", json!({"url": format!("{base}/admin/ui")}))
        .await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in-button").await;
    // The console, with its key figures.
    browser.wait_for_text("#figures", "Inbox pending").await;

    // The dead list: both events (the state machine may still be on them,
    // so wait until the page shows them).
    browser.click("#list-dead").await;
    browser.wait_for_text("#results", "con-2").await;
    browser.wait_for_text("#results", "con-1").await;

    // Open one: its headers (signature redacted) and payload.
    browser.click("tr.event[data-event-id='con-1']").await;
    browser.wait_for_text("#detail-payload", "TN-CONSOLE").await;
    assert_eq!(browser.text("#detail-outcome").await, "dead");
    assert!(
        browser
            .text("#detail-reason")
            .await
            .contains("/result/when")
    );
    assert!(browser.text("#detail-headers").await.contains("[redacted]"));

    // The operator fixes the pointer and reloads the config.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("/result/when", "/result/updated_at"),
    )
    .unwrap();
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(gw.pid() as i32, libc::SIGHUP) };
    assert_eq!(
        gw.await_log(1, |v| v["message"] == "config reloaded").len(),
        1
    );

    // Redeliver from the page: readable now, it waits for its shipment
    // (parked), and the page says so.
    browser.click("#redeliver").await;
    browser
        .wait_for_text("#redeliver-result", "Redelivered: parked")
        .await;
    assert_eq!(browser.text("#detail-outcome").await, "parked");
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
    browser
        .screenshot(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/console.png"
        )))
        .await;

    // The gateway agrees; the other dead event is untouched.
    let mut admin = Client::new(gw.addr);
    let auth = [("Authorization".to_string(), format!("Bearer {TOKEN}"))];
    let one = admin
        .send("GET", "/admin/events/ep/con-1", &auth, bytes::Bytes::new())
        .await
        .json();
    assert_eq!(one["outcome"], "parked", "{one}");
    assert_eq!(one["attempts"], 2, "{one}");
    let two = admin
        .send("GET", "/admin/events/ep/con-2", &auth, bytes::Bytes::new())
        .await
        .json();
    assert_eq!(two["outcome"], "dead", "{two}");
    browser.call("DELETE", "", json!({})).await;
    assert_eq!(gw.terminate(), Some(0));
}
