//! Exact counts of `waybill_webhooks_total` and `waybill_dispatch_total`.
//! The Prometheus recorder is process-wide, so these run in a binary of
//! their own, one scenario after another: a parallel test touching the same
//! labels would make the deltas meaningless.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;
use serde_json::json;
use tokio::net::TcpStream;
use waybill::webhook::signature::SchemeKind;

struct Counts(String);

impl Counts {
    async fn of(app: &TestApp) -> Counts {
        Counts(app.metrics().await)
    }

    fn webhooks(&self, source: &str, outcome: &str) -> f64 {
        metric(
            &self.0,
            "waybill_webhooks_total",
            &format!("source=\"{source}\",outcome=\"{outcome}\""),
        )
    }

    fn dispatch(&self, source: &str, outcome: &str) -> f64 {
        metric(
            &self.0,
            "waybill_dispatch_total",
            &format!("source=\"{source}\",outcome=\"{outcome}\""),
        )
    }

    /// How far `source`'s `outcome` dispatch count moved since `before`.
    fn dispatched_since(&self, before: &Counts, source: &str, outcome: &str) -> f64 {
        self.dispatch(source, outcome) - before.dispatch(source, outcome)
    }

    fn pending(&self) -> f64 {
        metric(&self.0, "waybill_inbox_pending", "")
    }
}

#[tokio::test]
async fn outcomes_are_counted_exactly() {
    let app = spawn_app().await;

    // Webhook outcomes: one each, and a conflict is not also a duplicate.
    let before = Counts::of(&app).await;
    let gh = |body: &[u8], id: &str| signed(SchemeKind::Github, GH_SECRET, body, 0, id);
    let a = br#"{"id":"m-1","v":1}"#;
    let b = br#"{"id":"m-1","v":2}"#;
    assert_eq!(app.webhook("gh", &gh(a, "m-1"), a).await.status, 202);
    assert_eq!(app.webhook("gh", &gh(a, "m-1"), a).await.status, 200);
    assert_eq!(app.webhook("gh", &gh(b, "m-1"), b).await.status, 200);
    assert_eq!(
        app.webhook("gh", &signed(SchemeKind::Github, "bad", a, 0, "x"), a)
            .await
            .status,
        401
    );
    assert_eq!(app.webhook("gh", &[], a).await.status, 401);
    assert_eq!(app.webhook("gh", &[], &[b' '; 5000]).await.status, 413);
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let mut req =
        b"POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(b"3e8\r\n");
        req.extend_from_slice(&[b' '; 1000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, &req)
        .await
        .unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 413"));
    let stale = signed(SchemeKind::Stripe, STRIPE_SECRET, a, now() - 3600, "");
    assert_eq!(app.webhook("st", &stale, a).await.status, 401);
    let not_object = b"[]";
    assert_eq!(
        app.webhook("gh", &gh(not_object, "m-2"), not_object)
            .await
            .status,
        400
    );
    // "Hostile traffic" (GUARANTEES.md): clients that leave mid-body, before anything was
    // verified, are nobody's: they move no counter of the source they
    // named. Their requests still end, and are counted by route.
    let ended = |c: &Counts| {
        metric(
            &c.0,
            "waybill_http_requests_total",
            "route=\"/webhooks/{source}\",method=\"POST\",status=\"400\"",
        )
    };
    let before_gone = Counts::of(&app).await;
    let forged = [(
        "X-Hub-Signature-256".to_string(),
        format!("sha256={}", "0".repeat(64)),
    )];
    for _ in 0..5 {
        drop(hold_in_flight(app.addr, "/webhooks/gh", &forged, &[b' '; 100]).await);
    }
    eventually(5, async || {
        ended(&Counts::of(&app).await) - ended(&before_gone) >= 5.0
    })
    .await;
    let gone = Counts::of(&app).await;
    assert_eq!(
        ended(&gone) - ended(&before_gone),
        5.0,
        "the five requests ended"
    );
    let after = Counts::of(&app).await;
    for (source, outcome, n) in [
        ("gh", "accepted", 1.0),
        ("gh", "duplicate", 1.0),
        ("gh", "duplicate_conflict", 1.0),
        ("gh", "invalid_signature", 2.0),
        ("gh", "too_large", 2.0),
        ("gh", "invalid_payload", 1.0),
        ("st", "stale_timestamp", 1.0),
    ] {
        assert_eq!(
            after.webhooks(source, outcome) - before.webhooks(source, outcome),
            n,
            "{source} {outcome}"
        );
    }

    // Dispatch outcomes: parked, then counted again when applied; ignored.
    let before = Counts::of(&app).await;
    send_tracking(&app, "d-1", "TN-M", "in_transit", "2026-11-20T10:00:00Z").await;
    send_tracking(&app, "d-2", "TN-M", "pre_transit", "2026-11-20T08:00:00Z").await;
    app.settle().await;
    let mid = Counts::of(&app).await;
    assert_eq!(mid.dispatched_since(&before, "ep", "parked"), 2.0);
    assert_eq!(mid.pending(), 0.0, "parked events are not pending");
    shipment_with_label(&app, "shp_m", "TN-M").await;
    send_tracking(
        &app,
        "d-3",
        "TN-M",
        "held_at_customs",
        "2026-11-20T09:00:00Z",
    )
    .await;
    send_tracking(&app, "d-4", "TN-M", "pre_transit", "2026-11-20T07:00:00Z").await;
    app.settle().await;
    let after = Counts::of(&app).await;
    // d-1 applied (IN_TRANSIT), d-2 and d-4 stale (earlier), d-3 ignored.
    assert_eq!(after.dispatched_since(&mid, "ep", "applied"), 1.0);
    assert_eq!(after.dispatched_since(&mid, "ep", "stale"), 2.0);
    assert_eq!(after.dispatched_since(&mid, "ep", "ignored"), 1.0);
    assert_eq!(after.dispatched_since(&mid, "ep", "parked"), 0.0);

    // Idempotent writes: executed, replayed, conflict.
    let before = Counts::of(&app).await;
    let h = |k: &str| {
        vec![
            ("Authorization".to_string(), "Bearer acme-key".to_string()),
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Idempotency-Key".to_string(), k.to_string()),
        ]
    };
    let address =
        json!({"name": "A", "street1": "S", "city": "C", "postal_code": "1", "country": "US"});
    let body = |order: &str| {
        json!({"order_id": order, "carrier": "ups", "service": "ground", "from": address, "to": address,
               "parcels": [{"weight_grams": 1, "length_cm": 1, "width_cm": 1, "height_cm": 1}]})
        .to_string()
    };
    assert_eq!(
        post(app.addr, "/v1/shipments", &h("m-k"), body("m-o"))
            .await
            .status,
        201
    );
    assert_eq!(
        post(app.addr, "/v1/shipments", &h("m-k"), body("m-o"))
            .await
            .status,
        201
    );
    assert_eq!(
        post(app.addr, "/v1/shipments", &h("m-k"), body("m-other"))
            .await
            .status,
        409
    );
    let after = Counts::of(&app).await;
    for (outcome, n) in [
        ("executed", 1.0),
        ("replayed", 1.0),
        ("conflict", 1.0),
        ("in_progress", 0.0),
    ] {
        let l = format!("endpoint=\"/v1/shipments\",outcome=\"{outcome}\"");
        assert_eq!(
            metric(&after.0, "waybill_idempotency_total", &l)
                - metric(&before.0, "waybill_idempotency_total", &l),
            n,
            "{outcome}"
        );
    }

    // Downstream calls: an unreachable carrier is tried max_attempts (4)
    // times, each counted; the breaker (1000 failures) stays closed.
    let before = Counts::of(&app).await;
    let id = post(app.addr, "/v1/shipments", &h("m-dk"), body("m-down"))
        .await
        .json()["shipment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post(
        app.addr,
        &format!("/v1/shipments/{id}/label"),
        &h("m-label"),
        "{}".to_string(),
    )
    .await;
    assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
    let after = Counts::of(&app).await;
    let calls = |c: &Counts, outcome: &str| {
        metric(
            &c.0,
            "waybill_downstream_requests_total",
            &format!("service=\"carrier\",outcome=\"{outcome}\""),
        )
    };
    assert_eq!(
        calls(&after, "connect_error") - calls(&before, "connect_error"),
        4.0
    );
    assert_eq!(
        metric(&after.0, "waybill_circuit_open", "service=\"carrier\""),
        0.0
    );

    // A dead event: counted dead, and not again on a refused redelivery.
    let app = app
        .restart_with(Options {
            occurred_at: "/result/when",
            ..Options::default()
        })
        .await;
    let before = Counts::of(&app).await;
    let body = json!({"id": "d-5", "description": "tracker.updated",
        "result": {"tracking_code": "TN-M", "status": "delivered", "when": "soon"}})
    .to_string();
    let h = signed(SchemeKind::Easypost, EP_SECRET, body.as_bytes(), 0, "");
    assert_eq!(app.webhook("ep", &h, body.as_bytes()).await.status, 202);
    app.settle().await;
    assert_eq!(
        app.admin_post("/admin/events/ep/d-1/redeliver")
            .await
            .status,
        409
    );
    let after = Counts::of(&app).await;
    assert_eq!(after.dispatched_since(&before, "ep", "dead"), 1.0);
    assert_eq!(after.dispatched_since(&before, "ep", "applied"), 0.0);
}

/// "Counters" (GUARANTEES.md): parked and dead are counted once, when an event becomes
/// so; redeliveries that leave it so count nothing, and
/// `waybill_dead_events` says how many are dead now. On a gateway process
/// of its own (its own recorder) per store.
async fn redeliveries_that_change_nothing_count_nothing(store: &str, env: &[(&str, &str)]) {
    const ADMIN: &str = "metrics-admin-token-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let carrier = config::tracking_source(
        "carrier",
        config::Shape::Github,
        GH_SECRET,
        &[("in_transit", "IN_TRANSIT")],
    );
    let cfg = config::write(dir.path(), "", store, &(config::admin(ADMIN) + &carrier));
    let gw = Gateway::start_with_env(&cfg, env);
    let mut client = Client::new(gw.addr);
    const PARKED: usize = 1000;
    const DEAD: usize = 50;
    for i in 0..PARKED + DEAD {
        // No shipment has these tracking numbers: parked. A time that is
        // no time: dead.
        let at = if i < PARKED {
            "2026-11-20T10:00:00Z"
        } else {
            "soon"
        };
        let body =
            json!({"id": format!("e-{i}"), "t": format!("TN-{i}"), "s": "in_transit", "at": at})
                .to_string();
        let h = signed(SchemeKind::Github, GH_SECRET, body.as_bytes(), 0, "");
        let r = client.send("POST", "/webhooks/carrier", &h, body).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let metrics = async || String::from_utf8(get(gw.addr, "/metrics").await.body.to_vec()).unwrap();
    eventually(10, async || {
        let text = metrics().await;
        metric(&text, "waybill_parked_events", "") == PARKED as f64
            && metric(&text, "waybill_dead_events", "") == DEAD as f64
    })
    .await;
    let text = metrics().await;
    let counted = |text: &str, outcome: &str| {
        metric(
            text,
            "waybill_dispatch_total",
            &format!("source=\"carrier\",outcome=\"{outcome}\""),
        )
    };
    assert_eq!(
        metric(&text, "waybill_parked_events", ""),
        PARKED as f64,
        "{store}"
    );
    assert_eq!(
        metric(&text, "waybill_dead_events", ""),
        DEAD as f64,
        "{store}"
    );
    assert_eq!(counted(&text, "parked"), PARKED as f64, "{store}");
    assert_eq!(counted(&text, "dead"), DEAD as f64, "{store}");

    let admin = vec![
        ("Authorization".to_string(), format!("Bearer {ADMIN}")),
        ("Content-Type".to_string(), "application/json".to_string()),
    ];
    for outcome in ["parked", "dead"] {
        for _ in 0..10 {
            let r = client
                .send(
                    "POST",
                    "/admin/redeliver",
                    &admin,
                    format!(r#"{{"outcome":"{outcome}","limit":10000}}"#),
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            let n = if outcome == "parked" { PARKED } else { DEAD };
            assert_eq!(r.json()["outcomes"][outcome], n, "{store}: {:?}", r.body);
        }
    }
    let text = metrics().await;
    assert_eq!(
        counted(&text, "parked"),
        PARKED as f64,
        "{store}: parked counted again"
    );
    assert_eq!(
        counted(&text, "dead"),
        DEAD as f64,
        "{store}: dead counted again"
    );
    assert_eq!(metric(&text, "waybill_parked_events", ""), PARKED as f64);
    assert_eq!(metric(&text, "waybill_dead_events", ""), DEAD as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_that_leave_events_parked_or_dead_count_nothing() {
    redeliveries_that_change_nothing_count_nothing("", &[]).await;
    if let Some(schema) = support::pg::schema().await {
        redeliveries_that_change_nothing_count_nothing(
            "backend = \"postgres\"\nurl = \"env:WAYBILL_DATABASE_URL\"",
            &[("WAYBILL_DATABASE_URL", &schema.url)],
        )
        .await;
    }
}

/// A counter of rare events is exported at 0 from the start: one that
/// appeared at its first increment would show `increase` nothing, and the
/// first unreadable record would page nobody.
#[tokio::test]
async fn the_unreadable_records_counter_is_exported_at_zero_from_the_start() {
    let app = spawn_app().await;
    let text = app.metrics().await;
    assert!(
        text.lines()
            .any(|l| l == "waybill_store_unreadable_records_total 0"),
        "{text}"
    );
}

/// "Counters" (GUARANTEES.md): every counter family whose labels come from
/// the config or a fixed set is there at 0 before anything happened, in a
/// fresh process, so that a rule's `increase` sees the first occurrence:
/// reloads by result, webhooks by source and outcome, dispatch by source
/// and outcome, downstream calls by service and outcome, idempotent writes
/// by endpoint and outcome, and the breakers closed.
#[tokio::test]
async fn counter_families_are_exported_at_zero_before_the_first_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config::write(
        dir.path(),
        "",
        "",
        &format!(
            "{}\n[[sources]]\nname = \"kept\"\nkind = \"store-only\"\nsecrets = [\"s\"]\n\
             signature = {{ scheme = \"github\" }}\nevent_id = \"/id\"\n",
            support::config::tracking_source(
                "carrier",
                support::config::Shape::Github,
                "s",
                &[("moving", "IN_TRANSIT")]
            )
        ),
    );
    let gw = support::Gateway::start(&cfg);
    let text = String::from_utf8(support::get(gw.addr, "/metrics").await.body.to_vec()).unwrap();
    let zero = |name: &str, labels: &str| {
        let line = if labels.is_empty() {
            format!("{name} 0")
        } else {
            format!("{name}{{{labels}}} 0")
        };
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    };
    for result in ["ok", "rejected"] {
        zero(
            "waybill_config_reloads_total",
            &format!("result=\"{result}\""),
        );
    }
    for source in ["carrier", "kept"] {
        for outcome in [
            "accepted",
            "duplicate",
            "invalid_signature",
            "stale_timestamp",
        ] {
            zero(
                "waybill_webhooks_total",
                &format!("source=\"{source}\",outcome=\"{outcome}\""),
            );
        }
    }
    for outcome in ["applied", "stale", "ignored", "parked", "dead"] {
        zero(
            "waybill_dispatch_total",
            &format!("source=\"carrier\",outcome=\"{outcome}\""),
        );
    }
    assert!(
        !text.contains("waybill_dispatch_total{source=\"kept\""),
        "a store-only source is never dispatched"
    );
    for service in ["carrier", "payments", "inventory"] {
        for outcome in ["success", "server_error", "timeout", "breaker_open"] {
            zero(
                "waybill_downstream_requests_total",
                &format!("service=\"{service}\",outcome=\"{outcome}\""),
            );
        }
        zero("waybill_circuit_open", &format!("service=\"{service}\""));
    }
    for outcome in ["executed", "replayed", "conflict", "in_progress"] {
        zero(
            "waybill_idempotency_total",
            &format!("endpoint=\"/v1/shipments\",outcome=\"{outcome}\""),
        );
    }
    // The process's own figures, under the names every dashboard knows.
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        let value = metric(&text, name, "");
        assert!(value > 0.0, "{name} is {value}");
    }
    // Every family says what it is.
    for family in waybill::telemetry::metric::ALL {
        if text.contains(&format!("\n{family}")) || text.starts_with(family) {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} has no HELP"
            );
        }
    }
    gw.terminate();
}
