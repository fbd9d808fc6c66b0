//! The admin API (GUARANTEES.md: "Operations", "Admin in bulk"): the token,
//! search by every key, one event with redelivery of dead events, one at a time
//! and in bulk (10.6).

use serde_json::{Value, json};
use waybill::store::DispatchOutcome;
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

#[tokio::test]
async fn admin_needs_the_token_and_is_404_without_one_configured() {
    let app = spawn_app().await;
    let r = get(app.addr, "/admin/events").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "UNAUTHENTICATED");
    let wrong = vec![("Authorization".to_string(), "Bearer nope".to_string())];
    let r = Client::new(app.addr)
        .send("GET", "/admin/events", &wrong, bytes::Bytes::new())
        .await;
    assert_eq!(r.status, 401);
    // The token is checked before the route exists or not.
    assert_eq!(get(app.addr, "/admin/no/such/thing").await.status, 401);
    assert_eq!(app.admin_get("/admin/no/such/thing").await.status, 404);
    assert_eq!(app.admin_get("/admin/events").await.status, 200);

    let off = spawn_app_with(Options {
        admin: false,
        ..Options::default()
    })
    .await;
    for path in ["/admin/events", "/admin/events/ep/x", "/admin/anything"] {
        assert_eq!(off.admin_get(path).await.status, 404, "{path}");
        assert_eq!(get(off.addr, path).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn search_finds_events_by_each_key_newest_first() {
    let app = spawn_app().await;
    send_tracking(&app, "s-1", "TN-S1", "in_transit", "2026-11-20T10:00:00Z").await;
    send_tracking(&app, "s-2", "TN-S2", "in_transit", "2026-11-20T10:00:00Z").await;
    send_tracking(&app, "s-3", "TN-S1", "held", "2026-11-20T11:00:00Z").await;
    let body =
        json!({"id": "p-1", "type": "charge.refunded", "data": {"order_id": "ord-S"}}).to_string();
    let h: Vec<_> = signed(SchemeKind::Github, GH_SECRET, body.as_bytes(), 0, "x")
        .into_iter()
        .filter(|(k, _)| k != "X-GitHub-Delivery")
        .collect();
    assert_eq!(app.webhook("pay", &h, body.as_bytes()).await.status, 202);
    app.settle().await;

    let ids = |r: &Resp| -> Vec<String> {
        r.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    let r = app.admin_get("/admin/events?tracking_number=TN-S1").await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r), ["s-3", "s-1"]);
    assert_eq!(
        ids(&app.admin_get("/admin/events?order_id=ord-S").await),
        ["p-1"]
    );
    assert_eq!(
        ids(&app.admin_get("/admin/events?source=ep&event_id=s-2").await),
        ["s-2"]
    );
    assert_eq!(
        ids(&app.admin_get("/admin/events?event_id=s-2").await),
        ["s-2"]
    );
    assert_eq!(
        ids(&app.admin_get("/admin/events?source=ep").await),
        ["s-3", "s-2", "s-1"]
    );
    assert_eq!(
        ids(&app.admin_get("/admin/events?outcome=ignored").await),
        ["s-3"]
    );
    assert_eq!(
        ids(&app
            .admin_get("/admin/events?source=ep&outcome=parked")
            .await),
        ["s-2", "s-1"]
    );
    assert_eq!(ids(&app.admin_get("/admin/events?limit=2").await).len(), 2);
    let all = app.admin_get("/admin/events").await.json();
    let first = &all["events"][0];
    assert_eq!(first["event_id"], "p-1");
    assert_eq!(first["source"], "pay");
    assert_eq!(first["event_type"], "charge.refunded");
    assert_eq!(first["outcome"], "parked");
    assert!(first["received_at"].as_str().unwrap().ends_with('Z'));

    for bad in ["limit=0", "limit=1001", "limit=ten", "outcome=great"] {
        let r = app.admin_get(&format!("/admin/events?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.code(), "VALIDATION_FAILED");
        let field = bad.split('=').next().unwrap();
        assert_eq!(r.json()["error"]["details"][0]["field"], field);
    }
}

#[tokio::test]
async fn one_event_shows_redacted_headers_and_its_payload() {
    let app = spawn_app().await;
    send_tracking(
        &app,
        "show-1",
        "TN-SHOW",
        "in_transit",
        "2026-11-20T10:00:00Z",
    )
    .await;
    app.settle().await;
    let r = app.admin_get("/admin/events/ep/show-1").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["event_id"], "show-1");
    assert_eq!(j["outcome"], "parked");
    assert_eq!(j["headers"]["x-hmac-signature"], "[redacted]");
    assert_eq!(j["headers"]["content-type"], "application/json");
    assert_eq!(j["payload"]["result"]["tracking_code"], "TN-SHOW");
    assert!(!r.body.windows(16).any(|w| w == b"hmac-sha256-hex="));
    assert_eq!(app.admin_get("/admin/events/ep/nope").await.status, 404);
    // Ids with a slash are addressed percent-encoded.
    let h: Vec<_> = signed(SchemeKind::Github, GH_SECRET, b"{}", 0, "a/b")
        .into_iter()
        .collect();
    assert_eq!(app.webhook("gh", &h, b"{}").await.status, 202);
    assert_eq!(
        app.admin_get("/admin/events/gh/a%2Fb").await.json()["outcome"],
        "stored"
    );
}

#[tokio::test]
async fn a_dead_event_is_redelivered_once_its_cause_is_fixed() {
    // The carrier's time is read from a pointer that holds garbage: dead.
    let app = spawn_app_with(Options {
        occurred_at: "/result/when",
        ..Options::default()
    })
    .await;
    shipment_with_label(&app, "shp_dead", "TN-DEAD").await;
    let body = json!({"id": "dead-1", "description": "tracker.updated",
        "result": {"tracking_code": "TN-DEAD", "status": "delivered", "when": "sometime", "updated_at": "2026-11-20T10:00:00Z"}})
    .to_string();
    let h = signed(SchemeKind::Easypost, EP_SECRET, body.as_bytes(), 0, "");
    assert_eq!(app.webhook("ep", &h, body.as_bytes()).await.status, 202);
    app.settle().await;
    let shown = app.admin_get("/admin/events/ep/dead-1").await.json();
    assert_eq!(shown["outcome"], "dead");
    assert!(
        shown["reason"].as_str().unwrap().contains("/result/when"),
        "{shown}"
    );
    assert_eq!(
        app.admin_get("/admin/events?outcome=dead").await.json()["events"][0]["event_id"],
        "dead-1"
    );
    // Redelivered under the same config it stays dead, and stays redeliverable.
    let r = app.admin_post("/admin/events/ep/dead-1/redeliver").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["outcome"], "dead");

    // The operator fixes the pointer and restarts; the redelivery applies it.
    let app = app
        .restart_with(Options {
            occurred_at: "/result/updated_at",
            ..Options::default()
        })
        .await;
    let r = app.admin_post("/admin/events/ep/dead-1/redeliver").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["outcome"], "applied");
    assert_eq!(r.json()["attempts"], 3);
    assert_eq!(
        app.app
            .store
            .shipment(&"shp_dead".into())
            .await
            .unwrap()
            .unwrap()
            .timeline
            .status(),
        waybill::domain::shipment::ShipmentStatus::Delivered
    );
    // Once applied, a second redelivery does nothing.
    let r = app.admin_post("/admin/events/ep/dead-1/redeliver").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "NOT_REDELIVERABLE");
    assert_eq!(
        app.app
            .store
            .outcome("ep", "dead-1")
            .await
            .unwrap()
            .unwrap()
            .attempts,
        3
    );
    assert_eq!(
        app.admin_post("/admin/events/ep/nope/redeliver")
            .await
            .status,
        404
    );
    let r = Client::new(app.addr)
        .send(
            "GET",
            "/admin/events/ep/dead-1/redeliver",
            &TestApp::admin_headers(),
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
}

fn admin_json_post(
    app: &TestApp,
    path: &str,
    body: serde_json::Value,
) -> impl std::future::Future<Output = Resp> {
    let mut h = TestApp::admin_headers();
    h.push(("Content-Type".into(), "application/json".into()));
    let addr = app.addr;
    let path = path.to_string();
    async move { post(addr, &path, &h, body.to_string()).await }
}

/// Sends `n` tracking updates whose time is read from a pointer that holds
/// garbage (the app runs with `occurred_at = "/result/when"`): each is dead.
async fn dead_events(app: &TestApp, prefix: &str, tn: &str, n: usize) {
    for i in 0..n {
        let body = json!({"id": format!("{prefix}-{i}"), "description": "tracker.updated",
            "result": {"tracking_code": tn, "status": "in_transit", "when": "sometime",
                "updated_at": format!("2026-11-20T10:{:02}:00Z", i % 60)}})
        .to_string();
        let h = signed(SchemeKind::Easypost, EP_SECRET, body.as_bytes(), 0, "");
        assert_eq!(app.webhook("ep", &h, body.as_bytes()).await.status, 202);
    }
}

#[tokio::test]
async fn search_pages_with_a_cursor_and_filters_by_time_and_type() {
    let app = spawn_app().await;
    for i in 0..7 {
        let body = tracking_body(
            &format!("pg-{i}"),
            "TN-PAGE",
            "in_transit",
            "2026-11-20T10:00:00Z",
        );
        let h = signed(SchemeKind::Easypost, EP_SECRET, &body, 0, "");
        assert_eq!(app.webhook("ep", &h, &body).await.status, 202);
    }
    // Every event so far was received at or before `mid`, the next one after.
    let mid = waybill::clock::now_ms();
    while waybill::clock::now_ms() <= mid {
        std::hint::spin_loop();
    }
    let (until, since) = (
        waybill::clock::rfc3339_ms(mid),
        waybill::clock::rfc3339_ms(mid + 1),
    );
    // A later one of another type, which the source stores without
    // dispatching.
    let body = json!({"id": "pg-other", "description": "tracker.created",
        "result": {"tracking_code": "TN-PAGE", "status": "in_transit", "updated_at": "2026-11-20T10:00:00Z"}})
    .to_string();
    let h = signed(SchemeKind::Easypost, EP_SECRET, body.as_bytes(), 0, "");
    assert_eq!(app.webhook("ep", &h, body.as_bytes()).await.status, 202);

    // Pages of 3 walk all eight, newest first, each once, then stop.
    for by in ["source=ep", "tracking_number=TN-PAGE"] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        for page in 0.. {
            assert!(page < 5, "{by}: the pages never end");
            let r = app
                .admin_get(&format!("/admin/events?{by}&limit=3&cursor={cursor}"))
                .await
                .json();
            for e in r["events"].as_array().unwrap() {
                seen.push(e["event_id"].as_str().unwrap().to_string());
            }
            match r["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => {
                    assert!(r["next_cursor"].is_null(), "{r}");
                    break;
                }
            }
        }
        let mut expected: Vec<String> = (0..7).rev().map(|i| format!("pg-{i}")).collect();
        // Only events for the state machine are indexed by tracking number.
        if by == "source=ep" {
            expected.insert(0, "pg-other".into());
        }
        assert_eq!(seen, expected, "{by}");
    }

    let r = app
        .admin_get("/admin/events?source=ep&event_type=tracker.created")
        .await
        .json();
    assert_eq!(r["events"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["events"][0]["event_id"], "pg-other");
    let since = app
        .admin_get(&format!("/admin/events?source=ep&since={since}"))
        .await
        .json();
    assert_eq!(since["events"].as_array().unwrap().len(), 1, "{since}");
    let until = app
        .admin_get(&format!("/admin/events?source=ep&until={until}"))
        .await
        .json();
    assert_eq!(until["events"].as_array().unwrap().len(), 7, "{until}");
    assert!(until["next_cursor"].is_null());

    for bad in [
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "cursor=abc",
        // No sign, and no number past what a page can give.
        "cursor=%2B5",
        "cursor=50102147310438842104",
    ] {
        let r = app.admin_get(&format!("/admin/events?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.code(), "VALIDATION_FAILED");
    }
}

/// `POST /admin/redeliver`: a dry run counts and changes nothing; the real
/// one redelivers what matches the filter, answers the new outcomes, and a
/// repeat finds nothing left to do.
#[tokio::test]
async fn dead_events_are_redelivered_in_bulk_by_filter_with_a_dry_run_first() {
    let app = spawn_app_with(Options {
        occurred_at: "/result/when",
        ..Options::default()
    })
    .await;
    shipment_with_label(&app, "shp_bulk", "TN-BULK").await;
    dead_events(&app, "bulk", "TN-BULK", 12).await;
    // Dead events of another source must not be touched by a source filter.
    // (a time in milliseconds where seconds belong: out of range, dead).
    let other = json!({"type": "tracking.updated", "data": {"tracking_number": "TN-BULK",
        "status": "IN_TRANSIT", "occurred_at": 99_999_999_999_999u64}})
    .to_string();
    let h = signed(
        SchemeKind::StandardWebhooks,
        SW_SECRET,
        other.as_bytes(),
        now(),
        "simc-dead",
    );
    assert_eq!(app.webhook("simc", &h, other.as_bytes()).await.status, 202);
    app.settle().await;
    assert_eq!(
        app.admin_get("/admin/events/simc/simc-dead").await.json()["outcome"],
        "dead"
    );

    // The operator fixes the pointer (a reload), then looks before acting.
    let fixed = app
        .config_text
        .replace("/result/when", "/result/updated_at");
    assert!(matches!(
        app.app.reload(waybill::config::Config::parse(
            &fixed,
            &waybill::config::ProcessEnv
        )),
        waybill::app::Reload::Applied { .. }
    ));
    let dry = admin_json_post(
        &app,
        "/admin/redeliver",
        json!({"outcome": "dead", "source": "ep", "dry_run": true}),
    )
    .await;
    assert_eq!(dry.status, 200, "{:?}", dry.body);
    let dry = dry.json();
    assert_eq!(dry["matched"], 12, "{dry}");
    assert_eq!(dry["redelivered"], 0);
    assert_eq!(
        app.app
            .store
            .outcome("ep", "bulk-0")
            .await
            .unwrap()
            .unwrap()
            .attempts,
        1,
        "a dry run changes nothing"
    );

    // A limit takes the newest first.
    let some = admin_json_post(
        &app,
        "/admin/redeliver",
        json!({"outcome": "dead", "source": "ep", "limit": 5}),
    )
    .await
    .json();
    assert_eq!(some["matched"], 5, "{some}");
    assert_eq!(some["redelivered"], 5);
    // The redeliveries run concurrently: whichever reaches the shipment
    // first moves it (applied), the others join its history (stale).
    assert_eq!(
        some["outcomes"],
        json!({"applied": 1, "stale": 4}),
        "{some}"
    );
    assert_ne!(
        app.outcome_of("ep", "bulk-11").await,
        DispatchOutcome::Dead,
        "the newest were taken"
    );
    let rest = admin_json_post(
        &app,
        "/admin/redeliver",
        json!({"outcome": "dead", "source": "ep"}),
    )
    .await
    .json();
    assert_eq!(rest["matched"], 7, "{rest}");
    assert_eq!(rest["redelivered"], 7);
    let applied_or_stale = rest["outcomes"]["applied"].as_u64().unwrap_or(0)
        + rest["outcomes"]["stale"].as_u64().unwrap_or(0);
    assert_eq!(applied_or_stale, 7, "{rest}");
    // Repeated: nothing of ep is dead any more; simc's event was never touched.
    let again = admin_json_post(
        &app,
        "/admin/redeliver",
        json!({"outcome": "dead", "source": "ep"}),
    )
    .await
    .json();
    assert_eq!(
        (again["matched"].as_u64(), again["redelivered"].as_u64()),
        (Some(0), Some(0))
    );
    let simc = app
        .app
        .store
        .outcome("simc", "simc-dead")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((simc.outcome, simc.attempts), (DispatchOutcome::Dead, 1));
    for i in 0..12 {
        let o = app
            .app
            .store
            .outcome("ep", &format!("bulk-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(o.attempts, 2, "bulk-{i} redelivered exactly once");
    }
}

#[tokio::test]
async fn parked_events_are_redelivered_in_bulk_once_their_shipment_exists_elsewhere() {
    let app = spawn_app().await;
    let at = "2026-11-20T10:00:00Z";
    for i in 0..4 {
        let r = send_tracking(&app, &format!("bp-{i}"), "TN-BULK-PARK", "in_transit", at).await;
        assert_eq!(r.status, 202);
    }
    app.settle().await;
    let r = admin_json_post(&app, "/admin/redeliver", json!({"outcome": "parked"}))
        .await
        .json();
    // Still no shipment: redelivered, and parked again.
    assert!(r["matched"].as_u64().unwrap() >= 4, "{r}");
    assert!(r["outcomes"]["parked"].as_u64().unwrap() >= 4, "{r}");
    assert_eq!(app.outcome_of("ep", "bp-0").await, DispatchOutcome::Parked);
}

#[tokio::test]
async fn bulk_redelivery_refuses_bad_requests_and_changes_nothing() {
    let app = spawn_app().await;
    let cases = [
        json!({}),
        json!({"outcome": "applied"}),
        json!({"outcome": "dead", "limit": 0}),
        json!({"outcome": "dead", "limit": 10001}),
        json!({"outcome": "dead", "since": "last week"}),
        json!({"outcome": "dead", "dry_run": "yes"}),
        json!({"outcome": "dead", "sauce": "ep"}),
        json!(["dead"]),
    ];
    for body in cases {
        let r = admin_json_post(&app, "/admin/redeliver", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.code(), "VALIDATION_FAILED");
    }
    let r = post(
        app.addr,
        "/admin/redeliver",
        &TestApp::admin_headers(),
        r#"{"outcome":"dead"}"#.to_string(),
    )
    .await;
    assert_eq!(r.status, 415, "no content type");
    let r = admin_json_post(&app, "/admin/redeliver", json!({"outcome": "dead"})).await;
    assert_eq!(r.status, 200);
    let unauth = post(app.addr, "/admin/redeliver", &[], "{}".to_string()).await;
    assert_eq!(unauth.status, 401);
    assert_eq!(app.admin_get("/admin/redeliver").await.status, 405);
}

/// A search the scan bound cuts short hands its place to the next page, so
/// a filter that matches nothing still walks the whole store, a bounded
/// slice per request, and ends.
#[tokio::test]
async fn a_search_cut_short_by_its_scan_bound_goes_on_from_its_cursor() {
    if on_postgres() {
        // The scan bound is the embedded store's: PostgreSQL answers each
        // filter through an index in one query, and its searches complete.
        return;
    }
    let app = spawn_app().await;
    for i in 0..10 {
        let body = tracking_body(
            &format!("sb-{i}"),
            "TN-SB",
            "in_transit",
            "2026-11-20T10:00:00Z",
        );
        let h = signed(SchemeKind::Easypost, EP_SECRET, &body, 0, "");
        assert_eq!(app.webhook("ep", &h, &body).await.status, 202);
    }
    app.settle().await;
    let mut filter = waybill::store::EventFilter {
        event_id: Some("sb-0".into()),
        ..Default::default()
    };
    let mut slices = 0;
    let found = loop {
        slices += 1;
        assert!(slices <= 4, "the slices never end");
        let page = app.app.store.search(&filter, 100, 3).await.unwrap();
        if !page.events.is_empty() {
            break page;
        }
        assert!(!page.complete);
        filter.before_seq = Some(page.next_before.expect("more to read"));
    };
    // sb-0 is the oldest: the fourth slice of three (newest first).
    assert_eq!(slices, 4);
    assert_eq!(found.events[0].0.event_id, "sb-0");
    assert_eq!(found.next_before, None);
}

#[tokio::test]
async fn the_console_signs_in_with_the_token_and_its_cookie_cannot_post_cross_site() {
    let app = spawn_app().await;
    let page = get(app.addr, "/admin/ui").await;
    assert_eq!(page.status, 401);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains("data-mode=\"sign-in\""));
    let csp = page.header("content-security-policy").unwrap().to_string();
    assert!(
        csp.contains("script-src 'nonce-") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(html.contains(&format!("<script nonce=\"{nonce}\">")));

    let form = |token: &str| {
        let body = format!("token={token}");
        let addr = app.addr;
        async move {
            post(
                addr,
                "/admin/ui",
                &[(
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                )],
                body,
            )
            .await
        }
    };
    let wrong = form("nope").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let ok = form(ADMIN_TOKEN).await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.header("location"), Some("/admin/ui"));
    let cookie = ok.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(ADMIN_TOKEN),
        "the cookie holds a digest, not the token"
    );
    let session = vec![(
        "Cookie".to_string(),
        cookie.split(';').next().unwrap().to_string(),
    )];
    let mut client = Client::new(app.addr);
    let console = client
        .send("GET", "/admin/ui", &session, bytes::Bytes::new())
        .await;
    assert_eq!(console.status, 200);
    assert!(String::from_utf8_lossy(&console.body).contains("data-mode=\"console\""));
    let events = client
        .send("GET", "/admin/events", &session, bytes::Bytes::new())
        .await;
    assert_eq!(events.status, 200);
    // A POST with the cookie alone (what a cross-site form could send) is
    // refused; the console's own requests carry its header.
    let forged = client
        .send(
            "POST",
            "/admin/events/ep/x/redeliver",
            &session,
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(forged.status, 401);
    let mut own = session.clone();
    own.push(("X-Waybill-Console".into(), "1".into()));
    let real = client
        .send(
            "POST",
            "/admin/events/ep/x/redeliver",
            &own,
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(real.status, 404, "authenticated: the event does not exist");
    assert_eq!(
        app.admin_get("/admin/ui").await.status,
        200,
        "the bearer token works too"
    );
    // Signing out (from the page: with its header) clears the cookie.
    let mut sign_out = own.clone();
    sign_out.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    let out = client
        .send("POST", "/admin/ui", &sign_out, "action=sign-out")
        .await;
    assert_eq!(out.status, 303);
    let cleared = out.header("set-cookie").unwrap();
    assert!(
        cleared.starts_with("waybill_console=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

/// The console's figures: webhook answers per minute over the hour and
/// each breaker by service; and a shipment an event applied to, whoever's.
#[tokio::test]
async fn stats_count_this_minutes_answers_and_a_shipment_is_shown_with_its_partner() {
    let app = spawn_app().await;
    let before = app.admin_get("/admin/stats").await.json();
    let minutes = before["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let body = br#"{"id":"stats-1"}"#;
    let h = signed(SchemeKind::Github, GH_SECRET, body, 0, "stats-1");
    assert_eq!(app.webhook("gh", &h, body).await.status, 202);
    assert_eq!(app.webhook("gh", &h, body).await.status, 200);
    let forged = signed(SchemeKind::Github, "not-the-secret", body, 0, "stats-1");
    assert_eq!(app.webhook("gh", &forged, body).await.status, 401);
    let after = app.admin_get("/admin/stats").await.json();
    // This minute, or the one after it if the minute turned meanwhile.
    let total = |stats: &Value, key: &str| -> u64 {
        stats["minutes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[key].as_u64().unwrap())
            .sum()
    };
    for (key, n) in [("accepted", 1), ("duplicate", 1), ("invalid_signature", 1)] {
        assert_eq!(
            total(&after, key) - total(&before, key),
            n,
            "{key}: {after}"
        );
    }
    assert_eq!(
        after["breakers"],
        json!([
            {"service": "carrier", "state": "closed"},
            {"service": "payments", "state": "closed"},
            {"service": "inventory", "state": "closed"},
        ])
    );

    shipment_with_label(&app, "shp_admin", "TN-ADMIN").await;
    let shown = app.admin_get("/admin/shipments/shp_admin").await;
    assert_eq!(shown.status, 200);
    let shown = shown.json();
    assert_eq!(shown["partner"], "acme");
    assert_eq!(shown["tracking_number"], "TN-ADMIN");
    assert_eq!(
        app.admin_get("/admin/shipments/shp_none").await.code(),
        "NOT_FOUND"
    );
    let unauthenticated = get(app.addr, "/admin/stats").await;
    assert_eq!(unauthenticated.status, 401);
}

/// Regressions (the API fuzzer): any RFC 3339 time is a valid bound, the
/// year 49 and an offset of +14:20 included; one before 1970 bounds
/// nothing out (since) or everything (until). `limit` 1674.0 is 1674.
#[tokio::test]
async fn times_before_1970_are_valid_bounds_and_whole_numbers_are_integers() {
    let app = spawn_app().await;
    let body = tracking_body("old-1", "TN-OLD", "in_transit", "2026-11-20T10:00:00Z");
    let h = signed(SchemeKind::Easypost, EP_SECRET, &body, 0, "");
    assert_eq!(app.webhook("ep", &h, &body).await.status, 202);
    let since = app
        .admin_get("/admin/events?source=ep&since=0049-11-11T03:54:55.693940Z")
        .await;
    assert_eq!(since.status, 200, "{:?}", since.body);
    assert_eq!(since.json()["events"].as_array().unwrap().len(), 1);
    let until = app
        .admin_get("/admin/events?source=ep&until=0970-04-19T22%3A20%3A33.194%2B14%3A20")
        .await;
    assert_eq!(until.status, 200, "{:?}", until.body);
    assert_eq!(until.json()["events"].as_array().unwrap().len(), 0);
    let bulk = admin_json_post(
        &app,
        "/admin/redeliver",
        json!({"since": "0049-11-11T03:54:55.693940Z", "limit": 12, "outcome": "parked", "dry_run": true}),
    )
    .await;
    assert_eq!(bulk.status, 200, "{:?}", bulk.body);
    // A whole number written with a fraction is an integer, as JSON
    // Schema says.
    let bulk = admin_json_post(
        &app,
        "/admin/redeliver",
        json!({"outcome": "parked", "limit": 1674.0, "dry_run": true}),
    )
    .await;
    assert_eq!(bulk.status, 200, "{:?}", bulk.body);
}
