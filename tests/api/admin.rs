//! Contract 8 admin API: the token, search by every key, one event with
//! redacted headers, redelivery of dead events.

use serde_json::json;
use waybill::signature::SchemeKind;

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
            .shipment("shp_dead")
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
