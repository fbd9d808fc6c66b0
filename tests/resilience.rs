//! "Nothing stops the gateway" (GUARANTEES.md) on the built binary:
//! nothing a downstream, a sender or a component does stops the gateway
//! from answering. Each test starts the
//! real process and asserts the documented answers, not only survival.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use waybill::store::prelude::*;

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prost::Message;
use serde_json::{Value, json};
use support::*;
use waybill::tools::simulator::SimConfig;
use waybill::webhook::signature::SchemeKind;

const GH_SECRET: &str = "gh-secret";
const ADMIN: &str = "admin-token";

/// A config with a signed tracking source `carrier` (`config::Shape::Github`),
/// the partner `acme`, an admin token, and
/// `extra` appended (it may override `[downstream]` keys through
/// `downstream`).
fn write_config(dir: &Path, downstream: &str, extra: &str) -> PathBuf {
    let carrier = config::tracking_source(
        "carrier",
        config::Shape::Github,
        GH_SECRET,
        &[("transit", "IN_TRANSIT"), ("delivered", "DELIVERED")],
    );
    let rest = format!(
        "{}{carrier}{}\n[downstream]\nbase_url = \"{downstream}\"\ntimeout = \"300ms\"\n\
         max_attempts = 2\nbackoff = {{ initial = \"5ms\", max = \"20ms\" }}\n\
         breaker = {{ failures = 3, cooldown = \"2s\" }}\n",
        config::admin(ADMIN),
        config::partner("acme", "acme-key"),
    );
    config::write(
        dir,
        &format!("shutdown_grace = \"5s\"\nrequest_timeout = \"5s\"\n{extra}"),
        "",
        &rest,
    )
}

/// A gateway in front of a simulator with stock of everything; the
/// gateway's directory lives as long as its guard.
async fn before_simulator() -> (SocketAddr, tempfile::TempDir, Gateway) {
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("http://{sim}"), "");
    let gw = Gateway::start(&cfg);
    (sim, dir, gw)
}

fn tracking(id: &str, tn: &str, status: &str, at: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = format!(r#"{{"id":"{id}","t":"{tn}","s":"{status}","at":{at}}}"#).into_bytes();
    (signed(SchemeKind::Github, GH_SECRET, &body, 0, id), body)
}

fn admin() -> Vec<(String, String)> {
    vec![("Authorization".into(), format!("Bearer {ADMIN}"))]
}

async fn buy(addr: SocketAddr, id: &str, key: &str) -> Resp {
    Api::acme(addr).buy_label(id, key, "{}").await
}

async fn get_shipment(addr: SocketAddr, id: &str) -> Resp {
    Client::new(addr)
        .send(
            "GET",
            &format!("/v1/shipments/{id}"),
            &[("Authorization".into(), "Bearer acme-key".into())],
            Bytes::new(),
        )
        .await
}

/// Polls `/readyz` until it answers `status` (bounded).
async fn await_readyz(addr: SocketAddr, status: u16) -> bool {
    for _ in 0..500 {
        if let Ok(r) = Client::new(addr)
            .try_send("GET", "/readyz", &[], Bytes::new())
            .await
            && r.status == status
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Regression: with the carrier down, the call after the breaker opened never
/// answered and froze the process. Now every call after it answers 503
/// at once with the breaker's Retry-After, and everything else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_carriers_breaker_open_every_call_answers_and_the_process_stops_on_sigterm() {
    let sim = start_sim(SimConfig {
        fail_rate: 1.0,
        default_stock: 1000,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("http://{sim}"), "");
    let mut gw = Gateway::start(&cfg);
    let id = create_shipment(gw.addr, "o-1").await;
    // Three purchases whose every attempt failed: the breaker opens.
    for key in ["k1", "k2", "k3"] {
        let r = buy(gw.addr, &id, key).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
    }
    for key in ["k4", "k5", "k6"] {
        let r = tokio::time::timeout(Duration::from_secs(5), buy(gw.addr, &id, key))
            .await
            .expect("a purchase with the breaker open answers");
        assert_eq!(r.status, 503);
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&wait), "{wait}");
    }
    let metrics = get(gw.addr, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(
        metric(&text, "waybill_circuit_open", r#"service="carrier""#),
        1.0
    );
    assert!(
        metric(
            &text,
            "waybill_downstream_requests_total",
            r#"service="carrier",outcome="breaker_open""#
        ) >= 3.0
    );
    // The operator reads it: the opening at WARN, with the service (once
    // per opening; a trial after the cooldown may open it again); each
    // failed attempt with its status and path.
    let opened = gw.await_log(1, |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("circuit breaker opened"))
    });
    assert!(!opened.is_empty());
    assert!(
        opened
            .iter()
            .all(|v| v["level"] == "WARN" && v["service"] == "carrier"),
        "{opened:?}"
    );
    let failed = gw.await_log(1, |v| v["message"] == "downstream call failed");
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|v| v["status"] == 503 && v["path"] == "/carrier/labels"),
        "{failed:?}"
    );
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
    create_shipment(gw.addr, "o-2").await;
    let (h, b) = tracking("e-1", "TN-X", "transit", "null");
    assert_eq!(post(gw.addr, "/webhooks/carrier", &h, b).await.status, 202);
    gw.sigterm();
    let status = gw
        .wait_for(Duration::from_secs(10))
        .expect("SIGTERM stops the process");
    assert_eq!(status.code(), Some(0));
}

/// Regression: a tracking event whose numeric time was epoch milliseconds
/// reached a shipment as the year 57,000; reading the shipment panicked,
/// and a cancel killed the state machine. Now it is dead-lettered with a
/// reason naming the field, and everything else works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_in_milliseconds_is_dead_lettered_and_the_shipment_stays_usable() {
    let (_sim, _dir, gw) = before_simulator().await;
    let id = create_shipment(gw.addr, "o-ms").await;
    let label = buy(gw.addr, &id, "label-ms").await;
    assert_eq!(label.status, 201, "{:?}", label.body);
    let tn = label.json()["tracking_number"]
        .as_str()
        .unwrap()
        .to_string();
    for (event, at) in [("ms", "1763800000000"), ("neg", "-5"), ("huge", "1e308")] {
        let (h, b) = tracking(event, &tn, "transit", at);
        assert_eq!(post(gw.addr, "/webhooks/carrier", &h, b).await.status, 202);
    }
    // An ordinary event behind them is applied: the dispatcher is alive.
    let (h, b) = tracking("fine", &tn, "transit", "1763800000");
    assert_eq!(post(gw.addr, "/webhooks/carrier", &h, b).await.status, 202);
    let mut applied = Value::Null;
    for _ in 0..500 {
        let r = Client::new(gw.addr)
            .send("GET", "/admin/events/carrier/fine", &admin(), Bytes::new())
            .await;
        applied = r.json();
        if applied["outcome"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(applied["outcome"], "applied");
    for event in ["ms", "neg", "huge"] {
        let r = Client::new(gw.addr)
            .send(
                "GET",
                &format!("/admin/events/carrier/{event}"),
                &admin(),
                Bytes::new(),
            )
            .await;
        let v = r.json();
        assert_eq!(v["outcome"], "dead", "{v}");
        assert!(v["reason"].as_str().unwrap().starts_with("/at "), "{v}");
    }
    let shipment = get_shipment(gw.addr, &id).await;
    assert_eq!(shipment.status, 200);
    let s = shipment.json();
    assert_eq!(s["status"], "IN_TRANSIT");
    for e in s["history"].as_array().unwrap() {
        let at = e["occurred_at"].as_str().unwrap();
        assert!(at.starts_with("20"), "{at}");
    }
    // A cancel of a moving shipment is refused cleanly; the state machine
    // and the write path are alive after it.
    let c = post(
        gw.addr,
        &format!("/v1/shipments/{id}/cancel"),
        &partner_headers("cancel-ms"),
        "{}",
    )
    .await;
    assert_eq!(c.status, 409);
    assert_eq!(c.code(), "INVALID_TRANSITION");
    create_shipment(gw.addr, "o-after").await;
    assert_eq!(get(gw.addr, "/readyz").await.status, 200);
}

/// The fake carrier's behaviour, switched by the chaos test.
const FAIL: u8 = 0;
const HANG: u8 = 1;
const ANSWER: u8 = 2;

/// A carrier whose every label call fails (503), hangs, or sells a label,
/// as `mode` says at the time of the call.
async fn fake_carrier(mode: Arc<AtomicU8>) -> SocketAddr {
    let sold = Arc::new(std::sync::atomic::AtomicU64::new(0));
    serve(move |_req: Request<Incoming>| {
        let mode = mode.load(Ordering::SeqCst);
        let n = sold.fetch_add(1, Ordering::SeqCst);
        async move {
            match mode {
                FAIL => answer(StatusCode::SERVICE_UNAVAILABLE, "{}"),
                HANG => std::future::pending().await,
                _ => {
                    let body = json!({"label_id": format!("lbl_{n}"), "tracking_number": format!("TN{n}"), "carrier": "ups"});
                    answer(StatusCode::CREATED, body.to_string())
                }
            }
        }
    })
    .await
}

/// The chaos test (GUARANTEES.md: "Nothing stops the gateway"): webhooks and
/// `/v1` traffic flow while the carrier fails every call, then hangs, then
/// answers again. Through all of it `/healthz` answers promptly, intake keeps
/// its answers, labels answer 503 with the breaker's Retry-After; after healing
/// the next label succeeds; SIGTERM then exits 0 within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_failing_then_hanging_then_healed_carrier() {
    let mode = Arc::new(AtomicU8::new(FAIL));
    let carrier = fake_carrier(mode.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("http://{carrier}"), "");
    let mut gw = Gateway::start(&cfg);
    let addr = gw.addr;

    // Background traffic: webhooks and shipment creations, every answer
    // checked, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let (h, b) = tracking(&format!("bg-{n}"), "TN-BG", "transit", "null");
                let r = client.send("POST", "/webhooks/carrier", &h, b).await;
                assert_eq!(r.status, 202, "webhook {n}: {:?}", r.body);
                if n.is_multiple_of(10) {
                    create_shipment(addr, &format!("bg-{n}")).await;
                }
                n += 1;
            }
            n
        })
    };
    let health = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let r = client.send("GET", "/healthz", &[], Bytes::new()).await;
                assert_eq!(r.status, 200);
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        })
    };

    let id = create_shipment(addr, "chaos").await;
    // Failing: 503, and the breaker opens after three failures.
    let mut key = 0;
    let mut next_key = || {
        key += 1;
        format!("chaos-{key}")
    };
    let mut saw_open = false;
    for _ in 0..4 {
        let r = buy(addr, &id, &next_key()).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&wait));
        let text = String::from_utf8_lossy(&get(addr, "/metrics").await.body).into_owned();
        saw_open |= metric(&text, "waybill_circuit_open", r#"service="carrier""#) == 1.0;
    }
    assert!(saw_open, "the breaker opened");
    // Hanging: calls end at the timeout, still 503, never a hang.
    mode.store(HANG, Ordering::SeqCst);
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(5), buy(addr, &id, &next_key()))
            .await
            .expect("a hanging carrier does not hang the request");
        assert_eq!(r.status, 503);
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
    }
    // Healed: once the cooldown allows a trial, a label is bought.
    mode.store(ANSWER, Ordering::SeqCst);
    let mut bought = None;
    for _ in 0..20 {
        let r = buy(addr, &id, &next_key()).await;
        if r.status == 201 {
            bought = Some(r);
            break;
        }
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    let bought = bought.expect("a label is bought after the carrier heals");
    assert!(bought.json()["label_id"].as_str().is_some());

    stop.store(true, Ordering::SeqCst);
    let sent = traffic.await.unwrap();
    assert!(sent > 0);
    let slowest = health.await.unwrap();
    // A generous bound: it catches a health check stuck behind a hung
    // downstream (seconds), not a slow machine.
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    gw.sigterm();
    let status = gw
        .wait_for(Duration::from_secs(5 + 2))
        .expect("SIGTERM exits within the grace");
    assert_eq!(status.code(), Some(0));
}

/// Supervision: the state machine panics (a failpoint) while applying a
/// pass. `/readyz` turns 503, `waybill_component_up{component="dispatcher"}`
/// is 0, an ERROR names the component, and the process exits non-zero.
/// Restarted on the same data, it applies every pending event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_state_machine_stops_the_process_and_a_restart_applies_the_inbox_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "http://127.0.0.1:9", "");
    let mut gw = Gateway::start_with_env(&cfg, &[("FAILPOINTS", "dispatch-before-commit=panic")]);
    let addr = gw.addr;
    // A request held open keeps the drain going, so the answers during it
    // can be read.
    let held = hold_in_flight(addr, "/webhooks/carrier", &[], b"{}").await;
    // The first pass panics as soon as the first event is in; deliveries
    // on connections opened before that may be cut by the drain, and are
    // sent again, as a sender would.
    for i in 0..5 {
        let (h, b) = tracking(&format!("p-{i}"), "TN-P", "transit", "null");
        let mut answered = None;
        for _ in 0..20 {
            if let Ok(r) = Client::new(addr)
                .try_send("POST", "/webhooks/carrier", &h, b.clone())
                .await
            {
                answered = Some(r.status);
                break;
            }
        }
        // 200 if an earlier copy was stored and its answer cut.
        assert!(
            matches!(answered, Some(StatusCode::ACCEPTED | StatusCode::OK)),
            "p-{i}: {answered:?}"
        );
    }
    assert!(await_readyz(addr, 503).await, "readyz turns 503");
    let text = String::from_utf8_lossy(&get(addr, "/metrics").await.body).into_owned();
    assert_eq!(
        metric(&text, "waybill_component_up", r#"component="dispatcher""#),
        0.0
    );
    assert_eq!(
        metric(&text, "waybill_component_up", r#"component="store""#),
        1.0
    );
    drop(held);
    let status = gw
        .wait_for(Duration::from_secs(10))
        .expect("the process exits after a component failure");
    assert!(!status.success(), "{status:?}");
    let errors = gw.await_log(1, |v| {
        v["level"] == "ERROR" && v["component"] == "dispatcher"
    });
    assert!(!errors.is_empty(), "an ERROR names the dispatcher");
    drop(gw);

    // Restart without the failpoint: the five are applied, once each.
    let gw = Gateway::start(&cfg);
    for i in 0..5 {
        let mut v = Value::Null;
        for _ in 0..500 {
            v = Client::new(gw.addr)
                .send(
                    "GET",
                    &format!("/admin/events/carrier/p-{i}"),
                    &admin(),
                    Bytes::new(),
                )
                .await
                .json();
            if v["outcome"] != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(v["outcome"], "parked", "{v}");
        assert_eq!(v["attempts"], 1, "{v}");
    }
    gw.terminate();
    let store = open_store(&dir.path().join("data")).await;
    assert_eq!(store.inbox_pending().await.unwrap(), 0);
    assert_whole(&store);
    close_store(store).await;
}

/// A panic while handling one request answers that request 500 INTERNAL,
/// logged at ERROR with its request id; the process and the connection go
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_request_is_a_500_for_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "http://127.0.0.1:9", "");
    let gw = Gateway::start_with_env(&cfg, &[("FAILPOINTS", "admin-show=panic")]);
    let mut client = Client::new(gw.addr);
    let mut headers = admin();
    headers.push(("X-Request-Id".into(), "boom-1".into()));
    let r = client
        .send("GET", "/admin/events/carrier/x", &headers, Bytes::new())
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.code(), "INTERNAL");
    assert_eq!(r.json()["error"]["request_id"], "boom-1");
    assert!(!String::from_utf8_lossy(&r.body).contains("panic"));
    // The same connection serves the next request.
    let (h, b) = tracking("after-panic", "TN", "transit", "null");
    assert_eq!(
        client.send("POST", "/webhooks/carrier", &h, b).await.status,
        202
    );
    assert_eq!(get(gw.addr, "/readyz").await.status, 200);
    let logged = gw.await_log(1, |v| v["level"] == "ERROR" && v["request_id"] == "boom-1");
    assert_eq!(logged.len(), 1, "one ERROR with the request id");
}

/// Requests that hyper refuses before any handler runs (a malformed
/// Content-Length, an oversized head) are counted and logged, not
/// invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_the_parser_are_logged_and_counted() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "http://127.0.0.1:9", "");
    let gw = Gateway::start(&cfg);
    for raw in [
        "POST /webhooks/carrier HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".to_string(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let _ = s.write_all(raw.as_bytes()).await;
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 4"), "{resp}");
    }
    // The connection's end is counted after its answer went out: wait for
    // the count (bounded).
    let mut text = String::new();
    for _ in 0..200 {
        text = String::from_utf8_lossy(&get(gw.addr, "/metrics").await.body).into_owned();
        let counted = |status: &str| {
            metric(
                &text,
                "waybill_http_requests_total",
                &format!(r#"route="unmatched",method="other",status="{status}""#),
            )
        };
        if counted("400") + counted("431") >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(
            &text,
            "waybill_http_requests_total",
            r#"route="unmatched",method="other",status="400""#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "waybill_http_requests_total",
            r#"route="unmatched",method="other",status="431""#
        ),
        1.0
    );
    let logged = gw.await_log(2, |v| v["message"] == "request refused by the HTTP parser");
    assert_eq!(logged.len(), 2, "{logged:?}");
}

/// "Operations" (GUARANTEES.md): behind a proxy named in
/// `server.trusted_proxies`, the client in the request's log line is the
/// one the proxy forwarded; the same header from a peer that is not
/// trusted changes nothing.
#[tokio::test]
async fn a_trusted_proxys_forwarded_client_is_the_client_in_the_log() {
    let forged = |for_: &str| {
        let body = br#"{"id":"f-1"}"#.to_vec();
        let mut h = signed(SchemeKind::Github, "not-the-secret", &body, now(), "f-1");
        h.push(("X-Forwarded-For".into(), for_.into()));
        (h, body)
    };
    for (trusted, expected) in [("[\"127.0.0.1\"]", "203.0.113.7"), ("[]", "127.0.0.1")] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config::write(
            dir.path(),
            &format!("trusted_proxies = {trusted}"),
            "",
            "\n[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"s\"]\n\
             signature = { scheme = \"github\" }\nevent_id = \"/id\"\n",
        );
        let gw = Gateway::start(&cfg);
        let (h, b) = forged("198.51.100.1, 203.0.113.7");
        assert_eq!(post(gw.addr, "/webhooks/gh", &h, b).await.status, 401);
        let line = gw.await_log(1, |v| v["message"] == "request" && v["status"] == 401);
        assert_eq!(line[0]["client_addr"], expected, "trusted {trusted}");
        gw.terminate();
    }
}

/// "Operations" (GUARANTEES.md): a label purchase sent with a W3C
/// `traceparent` continues its trace: the request's log line carries the
/// trace id, and the carrier (the simulator) receives a `traceparent` of
/// the same trace with a span of the gateway's own. A request without one
/// starts a trace of its own, which its downstream calls carry too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_purchase_carries_its_trace_to_the_log_and_the_carrier() {
    let (sim, _dir, gw) = before_simulator().await;
    let id = create_shipment(gw.addr, "o-traced").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut headers = partner_headers("traced-1");
    headers.push(("traceparent".into(), format!("00-{trace}-{caller_span}-01")));
    let r = Client::new(gw.addr)
        .send("POST", &format!("/v1/shipments/{id}/label"), &headers, "{}")
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let line = gw.await_log(1, |v| {
        v["message"] == "request" && v["route"] == "/v1/shipments/{shipment_id}/label"
    });
    assert_eq!(line[0]["trace_id"], trace);
    let received = traces_to(sim, "/carrier/labels").await;
    assert_eq!(received.len(), 1, "{received:?}");
    let parts: Vec<&str> = received[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{received:?}");
    assert_eq!(parts[1], trace, "the same trace");
    assert_ne!(parts[2], caller_span, "a span of the gateway's own");
    assert_eq!(parts[3], "01");

    // The shipment's creation sent none: its trace started here, and its
    // log line names it.
    let created = gw.await_log(1, |v| {
        v["message"] == "request" && v["route"] == "/v1/shipments"
    });
    let own = created[0]["trace_id"].as_str().unwrap();
    assert_eq!(own.len(), 32);
    assert_ne!(own, trace);
}

type Exported = Arc<std::sync::Mutex<Vec<ExportTraceServiceRequest>>>;

/// An OTLP/HTTP collector: it decodes each export of `/v1/traces` and
/// keeps it; `hang`, it takes each export and never answers.
async fn fake_collector(hang: bool) -> (SocketAddr, Exported) {
    let exported = Exported::default();
    let kept = exported.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let kept = kept.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(
                req.headers()["content-type"],
                "application/x-protobuf",
                "OTLP/HTTP in its binary encoding"
            );
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            if hang {
                std::future::pending::<()>().await;
            }
            let export = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
            kept.lock().unwrap().push(export);
            let mut resp = answer(
                StatusCode::OK,
                ExportTraceServiceResponse::default().encode_to_vec(),
            );
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            resp
        }
    })
    .await;
    (addr, exported)
}

/// The spans a collector received, with the `service.name` of each.
fn spans(exported: &Exported) -> Vec<(String, otlp::Span)> {
    let mut out = Vec::new();
    for export in exported.lock().unwrap().iter() {
        for resource in &export.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                out.extend(scope.spans.iter().map(|s| (service.clone(), s.clone())));
            }
        }
    }
    out
}

/// A gateway in front of a simulator, exporting its spans to `collector`.
async fn exporting_to(collector: SocketAddr) -> (SocketAddr, tempfile::TempDir, Gateway) {
    let sim = start_sim(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // The table after the server's lines: they end where it starts.
    let telemetry = format!("[telemetry]\notlp_endpoint = \"http://{collector}/\"");
    let cfg = write_config(dir.path(), &format!("http://{sim}"), &telemetry);
    (sim, dir, Gateway::start(&cfg))
}

/// "Operations" (GUARANTEES.md): with `[telemetry] otlp_endpoint` set, a
/// label purchase sent with a `traceparent` is exported as one trace: the
/// request's span below the caller's, and the carrier call's span below
/// it, whose id is the one the carrier received. A trace its caller did
/// not sample is not exported, and what is held is sent before the process
/// exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_purchase_is_exported_as_one_trace_to_an_otlp_collector() {
    let (collector, exported) = fake_collector(false).await;
    let (sim, _dir, gw) = exporting_to(collector).await;
    let id = create_shipment(gw.addr, "o-exported").await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let traced = async |key: &str, flags: &str, trace: &str| {
        let mut headers = partner_headers(key);
        headers.push(("traceparent".into(), format!("00-{trace}-{caller}-{flags}")));
        let path = format!("/v1/shipments/{id}/label");
        Client::new(gw.addr)
            .send("POST", &path, &headers, "{}")
            .await
    };
    assert_eq!(traced("exported", "01", trace).await.status, 201);
    // The same request again under a trace its caller did not sample.
    let unsampled = "11111111111111111111111111111111";
    assert_eq!(traced("exported", "00", unsampled).await.status, 201);
    // Stopping sends what is held.
    assert_eq!(gw.terminate(), Some(0));

    let spans = spans(&exported);
    let in_trace: Vec<&otlp::Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| hex::encode(&s.trace_id) == trace)
        .collect();
    assert!(
        spans
            .iter()
            .all(|(_, s)| hex::encode(&s.trace_id) != unsampled),
        "an unsampled trace is not exported"
    );
    assert!(
        spans.iter().all(|(service, _)| service.contains("waybill")),
        "{spans:?}"
    );
    let server: Vec<_> = in_trace
        .iter()
        .filter(|s| s.kind == otlp::span::SpanKind::Server as i32)
        .collect();
    assert_eq!(server.len(), 1, "{in_trace:?}");
    let server = server[0];
    assert_eq!(server.name, "POST /v1/shipments/{shipment_id}/label");
    assert_eq!(hex::encode(&server.parent_span_id), caller);
    let status = server
        .attributes
        .iter()
        .find(|a| a.key == "http.response.status_code")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{:?}", v.value));
    assert_eq!(status.as_deref(), Some("Some(IntValue(201))"));

    let client: Vec<_> = in_trace
        .iter()
        .filter(|s| s.kind == otlp::span::SpanKind::Client as i32)
        .collect();
    assert_eq!(client.len(), 1, "one call to the carrier: {in_trace:?}");
    assert_eq!(client[0].parent_span_id, server.span_id);
    let received: Vec<String> = traces_to(sim, "/carrier/labels")
        .await
        .into_iter()
        .filter(|t| t.contains(trace))
        .collect();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0],
        format!("00-{trace}-{}-01", hex::encode(&client[0].span_id)),
        "the carrier received the client span's own id"
    );
}

/// A collector that takes every export and never answers costs requests
/// nothing, and the process still stops, after the export's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_delays_no_request_and_no_exit() {
    let (collector, _exported) = fake_collector(true).await;
    let (_sim, _dir, mut gw) = exporting_to(collector).await;
    for n in 0..20 {
        let id = create_shipment(gw.addr, &format!("o-hung-{n}")).await;
        assert_eq!(buy(gw.addr, &id, &format!("hung-{n}")).await.status, 201);
    }
    gw.sigterm();
    let exited = gw.wait_for(Duration::from_secs(40));
    assert!(
        exited.is_some_and(|s| s.success()),
        "stopped despite the collector: {exited:?}"
    );
}
