//! The web console (`/admin/ui`; GUARANTEES.md: "Admin in bulk") in a real browser:
//! headless Chromium, driven over the WebDriver protocol by chromedriver,
//! against the built binary. It signs in, lists the dead events, opens
//! one, has the operator fix the config (SIGHUP) and redeliver it from the
//! page, and keeps a screenshot of each screen in `target/console/`.
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

    /// Waits, in the page, until `css` holds `text`.
    async fn wait_for_text(&mut self, css: &str, text: &str) {
        let css = serde_json::to_string(css).unwrap();
        let text = serde_json::to_string(text).unwrap();
        self.wait_until(&format!(
            "document.querySelector({css}) && document.querySelector({css}).textContent.includes({text})"
        ))
        .await;
    }

    /// Keeps a screenshot of the page as `target/console/{name}.png`, where
    /// CI keeps it.
    async fn screenshot(&mut self, name: &str) {
        let png = self.call("GET", "screenshot", json!({})).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// What `script` returns, run in the page.
    async fn eval(&mut self, script: &str) -> Value {
        self.call(
            "POST",
            "execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Waits, in the page, until `condition` (an expression) holds: a
    /// MutationObserver answers as soon as it does (the script timeout
    /// bounds the wait). A page that is replaced meanwhile (a form's
    /// redirect) ends the script: the wait starts again on the new one.
    async fn wait_until(&mut self, condition: &str) {
        let script = format!(
            r#"
            const done = arguments[arguments.length - 1];
            const holds = () => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }};
            if (holds()) {{ done(true); return; }}
            const seen = new MutationObserver(() => {{
                if (holds()) {{ seen.disconnect(); done(true); }}
            }});
            seen.observe(document.documentElement,
                {{ subtree: true, childList: true, characterData: true, attributes: true }});
        "#
        );
        let check = format!("try {{ return !!({condition}); }} catch (e) {{ return false; }}");
        let mut last = Value::Null;
        for _ in 0..3 {
            let (ok, held) = self
                .try_call(
                    "POST",
                    "execute/async",
                    json!({"script": script, "args": []}),
                )
                .await;
            if ok && held == json!(true) {
                return;
            }
            if self.eval(&check).await == json!(true) {
                return;
            }
            last = held;
        }
        let page = self.eval("return document.body.innerText").await;
        panic!("{condition} never held: {last}\nthe page:\n{page}");
    }

    /// The figure labelled `label` on the console's first row: its value,
    /// and whether it is marked bad.
    async fn figure(&mut self, label: &str) -> (String, bool) {
        let script = format!(
            r##"for (const f of document.querySelectorAll("#figures .figure")) {{
                 if (f.lastChild.textContent === {label:?})
                   return [f.querySelector("b").textContent, f.classList.contains("bad")];
               }}
               return null;"##
        );
        let found = self.eval(&script).await;
        let found = found
            .as_array()
            .unwrap_or_else(|| panic!("no figure {label:?}"));
        (
            found[0].as_str().unwrap().to_string(),
            found[1].as_bool().unwrap(),
        )
    }

    async fn open(&mut self, url: &str) {
        self.call("POST", "url", json!({"url": url})).await;
    }

    /// The console's session cookie, as the browser holds it.
    async fn session_cookie(&mut self) -> Option<Value> {
        let (ok, cookie) = self
            .try_call("GET", "cookie/waybill_console", json!({}))
            .await;
        ok.then_some(cookie)
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

fn forged(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let (mut h, body) = tracking(id);
    for (k, v) in &mut h {
        if k.eq_ignore_ascii_case("x-hmac-signature") {
            *v = format!("hmac-sha256-hex={}", "0".repeat(64));
        }
    }
    (h, body)
}

fn applied(id: &str, tracking_number: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = json!({"id": id, "description": "tracker.updated",
        "result": {"tracking_code": tracking_number, "status": "in_transit",
            "when": "sometime", "updated_at": "2026-11-20T11:00:00Z"}})
    .to_string()
    .into_bytes();
    (signed(SchemeKind::Easypost, SECRET, &body, 0, ""), body)
}

/// The console at 3 a.m., in a real browser on the built binary: sign in;
/// rates over the last minutes, each breaker by service and a chart of the
/// hour; the dead list with its reasons; an event's whole detail beside
/// the list, with links to its shipment, its tracking number and its
/// order; deep links; quick time ranges; the API's error details; a
/// redelivery after a config fix; a phone's width; and signing out. Each
/// screen's screenshot is kept in `target/console/`.
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
    let sim = start_sim(waybill::tools::simulator::SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // The carrier's time is read from a pointer that holds garbage: dead.
    let rest = format!(
        "{}{}\n[downstream]\nbase_url = \"http://{sim}\"\ntimeout = \"1s\"\n",
        config("/result/when"),
        support::config::partner("acme", "acme-key"),
    );
    let cfg = write_gateway_config(dir.path(), "", &rest);
    let gw = Gateway::start(&cfg);
    for id in ["con-1", "con-2"] {
        let (h, b) = tracking(id);
        assert_eq!(post(gw.addr, "/webhooks/ep", &h, b).await.status, 202);
    }
    let (h, b) = forged("con-forged");
    assert_eq!(post(gw.addr, "/webhooks/ep", &h, b).await.status, 401);
    let base = format!("http://127.0.0.1:{}", gw.addr.port());

    // Signed out: the sign-in form.
    browser.open(&format!("{base}/admin/ui")).await;
    browser
        .wait_until("!document.getElementById('sign-in').hidden")
        .await;
    browser.screenshot("1-sign-in").await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in-button").await;

    // Now: rates over the last five minutes, each breaker by service, and
    // the hour's chart with a line each for accepted, duplicate, refused.
    browser.wait_for_text("#figures", "carrier breaker").await;
    assert_eq!(
        browser.figure("Invalid signatures, 5 min").await,
        ("1".to_string(), true)
    );
    assert_eq!(
        browser.figure("Accepted, 5 min").await,
        ("2".to_string(), false)
    );
    assert_eq!(
        browser.figure("carrier breaker").await,
        ("closed".to_string(), false)
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#chart polyline').length")
            .await,
        3
    );
    // The session cookie lasts a shift, and no script can read it.
    let cookie = browser.session_cookie().await.expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], false, "served over plain HTTP: {cookie}");
    let expiry = cookie["expiry"].as_u64().expect("an expiry");
    let left = expiry.saturating_sub(now() as u64);
    assert!((43_000..=43_200).contains(&left), "{cookie}");
    browser.screenshot("2-now").await;

    // The dead list: both events, each with its reason (the state machine
    // may still be on them, so wait until the page shows them).
    browser.click("#list-dead").await;
    browser.wait_for_text("#results", "con-2").await;
    browser.wait_for_text("#results", "con-1").await;
    assert!(
        browser
            .text("tr.event[data-event-id='con-1'] .reason")
            .await
            .contains("/result/when")
    );

    // Open one: beside the list, its facts, headers (signature redacted)
    // and payload.
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
    let facts = browser.text("#detail-facts").await;
    for fact in ["received", "attempts", "tracking number", "TN-CONSOLE"] {
        assert!(facts.contains(fact), "{fact}: {facts}");
    }
    assert_eq!(
        browser
            .eval("return getComputedStyle(document.getElementById('panes')).gridTemplateColumns.split(' ').length")
            .await,
        2,
        "the detail stands beside the list"
    );
    browser.screenshot("3-dead-event").await;

    // The address names what is shown: opened afresh, it shows it again.
    let hash = browser.eval("return location.hash").await;
    let hash = hash.as_str().unwrap().to_string();
    assert!(
        hash.contains("outcome=dead") && hash.contains("event=ep%2Fcon-1"),
        "{hash}"
    );
    browser.open("about:blank").await;
    browser.open(&format!("{base}/admin/ui{hash}")).await;
    browser.wait_for_text("#detail-name", "ep / con-1").await;
    assert_eq!(
        browser
            .eval("return document.getElementById('f-outcome').value")
            .await,
        "dead"
    );

    // The API's own words for a bad filter, field by field.
    browser.type_into("#f-since", "yesterday").await;
    browser.click("#search-button").await;
    browser
        .wait_for_text("#status", "since: must be an RFC 3339 time")
        .await;

    // A quick range replaces the typed time.
    browser.click("button.range[data-minutes='60']").await;
    browser.wait_for_text("#status", "2 shown").await;
    let since = browser
        .eval("return document.getElementById('f-since').value")
        .await;
    assert!(since.as_str().unwrap().ends_with('Z'), "{since}");

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
    browser.click("tr.event[data-event-id='con-1']").await;
    browser.wait_for_text("#detail-name", "con-1").await;
    browser.click("#redeliver").await;
    browser
        .wait_for_text("#redeliver-result", "Redelivered: parked")
        .await;
    assert_eq!(browser.text("#detail-outcome").await, "parked");

    // An event applied to a shipment links to it: its status and history.
    let id = create_shipment(gw.addr, "o-console").await;
    let label = Api::acme(gw.addr)
        .buy_label(&id, "console-label", "{}")
        .await;
    assert_eq!(label.status, 201, "{:?}", label.body);
    let tracking_number = label.json()["tracking_number"]
        .as_str()
        .unwrap()
        .to_string();
    let (h, b) = applied("con-ship", &tracking_number);
    assert_eq!(post(gw.addr, "/webhooks/ep", &h, b).await.status, 202);
    let auth = [("Authorization".to_string(), format!("Bearer {TOKEN}"))];
    let dispatched = eventually(10, async || {
        let ev = get_with(gw.addr, "/admin/events/ep/con-ship", &auth)
            .await
            .json();
        ev["outcome"] == "applied"
    })
    .await;
    assert!(dispatched, "the tracking event applies to its shipment");
    browser
        .open(&format!("{base}/admin/ui#event=ep%2Fcon-ship"))
        .await;
    browser.wait_until("document.querySelector('#detail-facts a') && document.getElementById('detail-outcome').textContent === 'applied'").await;
    browser.click("#detail-facts a").await;
    browser.wait_for_text("#shipment-facts", "IN_TRANSIT").await;
    assert!(browser.text("#shipment-facts").await.contains("acme"));
    assert!(browser.text("#shipment-history").await.contains("con-ship"));
    browser.screenshot("4-shipment").await;

    // On a phone, the detail goes below the list.
    browser
        .call("POST", "window/rect", json!({"width": 390, "height": 844}))
        .await;
    assert_eq!(
        browser
            .eval("return getComputedStyle(document.getElementById('panes')).gridTemplateColumns.split(' ').length")
            .await,
        1
    );
    browser.screenshot("5-phone").await;

    // Signing out ends the session in this browser.
    browser.click("#sign-out").await;
    browser
        .wait_until("!document.getElementById('sign-in').hidden")
        .await;
    assert_eq!(browser.session_cookie().await, None);
    browser.screenshot("6-signed-out").await;

    // The gateway agrees; the other dead event is untouched.
    let one = get_with(gw.addr, "/admin/events/ep/con-1", &auth)
        .await
        .json();
    assert_eq!(one["outcome"], "parked", "{one}");
    assert_eq!(one["attempts"], 2, "{one}");
    let two = get_with(gw.addr, "/admin/events/ep/con-2", &auth)
        .await
        .json();
    assert_eq!(two["outcome"], "dead", "{two}");
    browser.call("DELETE", "", json!({})).await;
    assert_eq!(gw.terminate(), Some(0));
}
