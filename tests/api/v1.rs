//! Creating and reading shipments, and idempotency (GUARANTEES.md: "The
//! integrator API", "Idempotency keys").

use std::sync::Arc;

use serde_json::{Value, json};
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

fn address(name: &str) -> Value {
    json!({"name": name, "street1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"})
}

fn shipment_body(order: &str) -> Value {
    json!({
        "order_id": order,
        "carrier": "ups",
        "service": "ground",
        "from": address("Warehouse"),
        "to": address("Ada"),
        "parcels": [{"weight_grams": 500, "length_cm": 20, "width_cm": 15, "height_cm": 10}]
    })
}

fn headers(api_key: &str, idem: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        ("Authorization".to_string(), format!("Bearer {api_key}")),
        ("Content-Type".to_string(), "application/json".to_string()),
    ];
    if let Some(k) = idem {
        h.push(("Idempotency-Key".to_string(), k.to_string()));
    }
    h
}

async fn create(app: &TestApp, api_key: &str, idem: Option<&str>, body: &str) -> Resp {
    post(
        app.addr,
        "/v1/shipments",
        &headers(api_key, idem),
        body.to_string(),
    )
    .await
}

async fn get_shipment(app: &TestApp, api_key: &str, id: &str) -> Resp {
    Api::with_key(app.addr, api_key).shipment(id).await
}

#[tokio::test]
async fn a_shipment_is_created_and_read_back() {
    let app = spawn_app().await;
    let r = Api::acme(app.addr)
        .create_shipment("k-create", &shipment_body("o-1"))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let s = r.json();
    let id = s["shipment_id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("shp_") && uuid::Uuid::parse_str(&id[4..]).is_ok(),
        "{id}"
    );
    assert_eq!(s["order_id"], "o-1");
    assert_eq!(s["status"], "CREATED");
    assert_eq!(s["tracking_number"], Value::Null);
    assert_eq!(s["label"], Value::Null);
    assert_eq!(
        s["history"],
        json!([{"status": "CREATED", "occurred_at": s["created_at"], "source": "waybill", "event_id": null}])
    );
    assert_eq!(s["to"]["name"], "Ada");
    let g = get_shipment(&app, "acme-key", &id).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json(), s);
    // Another partner does not see it; an unknown id is the same answer.
    assert_eq!(get_shipment(&app, "globex-key", &id).await.status, 404);
    assert_eq!(
        get_shipment(&app, "acme-key", "shp_nope").await.code(),
        "NOT_FOUND"
    );
}

#[tokio::test]
async fn tracking_updates_reach_a_shipment_created_through_the_api() {
    let app = spawn_app().await;
    let s = Api::acme(app.addr)
        .create_shipment("k-track", &shipment_body("o-track"))
        .await
        .json();
    let id = s["shipment_id"].as_str().unwrap();
    send_tracking(
        &app,
        "api-1",
        "TN-API",
        "in_transit",
        "2026-11-20T10:00:00Z",
    )
    .await;
    app.settle().await;
    let now = waybill::clock::now_ms();
    let label = waybill::domain::label::Label::new(
        "lbl_1",
        &id.into(),
        "TN-API",
        waybill::clock::rfc3339_ms(now),
    );
    app.app
        .store
        .record_label(waybill::store::NewLabel { label, at_ms: now }, None)
        .await
        .unwrap();
    let g = get_shipment(&app, "acme-key", id).await.json();
    assert_eq!(g["status"], "IN_TRANSIT");
    assert_eq!(g["tracking_number"], "TN-API");
    let history = g["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0]["status"], "CREATED");
    assert_eq!(history[1]["status"], "LABEL_CREATED");
    assert_eq!(history[1]["source"], "waybill");
    assert_eq!(
        history[2],
        json!({"status": "IN_TRANSIT", "occurred_at": "2026-11-20T10:00:00.000Z", "source": "ep", "event_id": "api-1"})
    );
}

#[tokio::test]
async fn a_retry_replays_the_stored_answer_byte_for_byte() {
    let app = spawn_app().await;
    let first = Api::acme(app.addr)
        .create_shipment("k-replay", &shipment_body("o-2"))
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    // The same request with other key order and spacing is the same request.
    let reordered = "{ \"parcels\": [{\"height_cm\": 10, \"width_cm\": 15, \"length_cm\": 20, \"weight_grams\": 500}],\n \"to\": {\"country\": \"DE\", \"postal_code\": \"10115\", \"city\": \"Berlin\", \"street1\": \"1 Main St\", \"name\": \"Ada\"},\n \"from\": {\"name\": \"Warehouse\", \"street1\": \"1 Main St\", \"city\": \"Berlin\", \"postal_code\": \"10115\", \"country\": \"DE\"},\n \"service\": \"ground\", \"carrier\": \"ups\", \"order_id\": \"o-2\" }";
    for body in [shipment_body("o-2").to_string(), reordered.to_string()] {
        let again = create(&app, "acme-key", Some("k-replay"), &body).await;
        again.assert_replays(&first);
        assert_ne!(again.header("x-request-id"), first.header("x-request-id"));
    }
    // The key in the body instead of the header is the same key.
    let mut with_field = shipment_body("o-2");
    with_field["idempotency_key"] = json!("k-replay");
    let again = create(&app, "acme-key", None, &with_field.to_string()).await;
    assert_eq!(again.body, first.body);
}

/// "Idempotency keys" (GUARANTEES.md): a key sent as an RFC 8941 string (quotes included, as
/// the IETF draft writes it) is the same key as its unquoted content.
#[tokio::test]
async fn a_quoted_key_and_its_unquoted_form_are_one_key() {
    let app = spawn_app().await;
    let body = shipment_body("o-quoted").to_string();
    let first = create(&app, "acme-key", Some("\"k-quoted\""), &body).await;
    assert_eq!(first.status, 201);
    let again = create(&app, "acme-key", Some("k-quoted"), &body).await;
    again.assert_replays(&first);
    // And the other way round, with another body: one key, so a conflict.
    let other = create(
        &app,
        "acme-key",
        Some("\"k-quoted\""),
        &shipment_body("o-other").to_string(),
    )
    .await;
    assert_eq!(other.status, 409);
    assert_eq!(other.code(), "IDEMPOTENCY_CONFLICT");
    // A malformed string is an invalid key, and creates nothing.
    let bad = create(&app, "acme-key", Some("\"k\"x\""), &body).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.code(), "IDEMPOTENCY_KEY_INVALID");
}

#[tokio::test]
async fn a_reused_key_for_another_request_is_a_conflict() {
    let app = spawn_app().await;
    assert_eq!(
        Api::acme(app.addr)
            .create_shipment("k-conf", &shipment_body("o-3"))
            .await
            .status,
        201
    );
    let r = Api::acme(app.addr)
        .create_shipment("k-conf", &shipment_body("o-4"))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "IDEMPOTENCY_CONFLICT");
}

#[tokio::test]
async fn keys_are_required_valid_and_consistent() {
    let app = spawn_app().await;
    let body = shipment_body("o-5").to_string();
    let r = create(&app, "acme-key", None, &body).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (400, "IDEMPOTENCY_KEY_REQUIRED")
    );
    for bad in ["has space", &"k".repeat(256)] {
        let r = create(&app, "acme-key", Some(bad), &body).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (400, "IDEMPOTENCY_KEY_INVALID"),
            "{bad}"
        );
    }
    let mut with_field = shipment_body("o-5");
    with_field["idempotency_key"] = json!("other");
    let r = create(&app, "acme-key", Some("k-5"), &with_field.to_string()).await;
    assert_eq!(r.code(), "IDEMPOTENCY_KEY_INVALID");
    with_field["idempotency_key"] = json!("");
    let r = create(&app, "acme-key", None, &with_field.to_string()).await;
    assert_eq!(r.code(), "IDEMPOTENCY_KEY_INVALID");
}

#[tokio::test]
async fn keys_are_scoped_per_partner() {
    let app = spawn_app().await;
    let body = shipment_body("o-6").to_string();
    let a = create(&app, "acme-key", Some("shared-key"), &body).await;
    let b = create(&app, "globex-key", Some("shared-key"), &body).await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (201, 201));
    assert_eq!(b.header("idempotent-replayed"), None);
    assert_ne!(a.json()["shipment_id"], b.json()["shipment_id"]);
    // Either of a partner's rotated keys is the same partner.
    let c = create(&app, "acme-old-key", Some("shared-key"), &body).await;
    assert_eq!(c.body, a.body);
}

#[tokio::test]
async fn answers_that_are_not_final_leave_the_key_unused() {
    let app = spawn_app().await;
    let body = shipment_body("o-7").to_string();
    let r = create(&app, "wrong-key", Some("k-7"), &body).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (401, "UNAUTHENTICATED")
    );
    let mut h = headers("acme-key", Some("k-7"));
    h[1].1 = "text/plain".into();
    let r = post(app.addr, "/v1/shipments", &h, body.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (415, "UNSUPPORTED_MEDIA_TYPE")
    );
    let mut bad = shipment_body("o-7");
    bad["parcels"] = json!([]);
    let r = create(&app, "acme-key", Some("k-7"), &bad.to_string()).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (400, "VALIDATION_FAILED")
    );
    assert_eq!(r.json()["error"]["details"][0]["field"], "/parcels");
    let r = create(&app, "acme-key", Some("k-7"), "{not json").await;
    assert_eq!(r.code(), "VALIDATION_FAILED");
    // None of those burned the key: this one runs.
    let r = create(&app, "acme-key", Some("k-7"), &body).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("idempotent-replayed"), None);

    // A rate-limited request does not burn it either.
    let tiny = |k: &'static str, body: String| {
        let addr = app.addr;
        async move { post(addr, "/v1/shipments", &headers("tiny-key", Some(k)), body).await }
    };
    assert_eq!(
        tiny("t-1", shipment_body("o-8").to_string()).await.status,
        201
    );
    let limited = tiny("t-2", shipment_body("o-9").to_string()).await;
    assert_eq!(
        (limited.status.as_u16(), limited.code().as_str()),
        (429, "RATE_LIMITED")
    );
    assert!(limited.header("retry-after").is_some());
}

#[tokio::test]
async fn transport_answers_come_before_authentication() {
    let app = spawn_app().await;
    assert_eq!(get(app.addr, "/v1/nothing").await.status, 404);
    let r = get(app.addr, "/v1/shipments").await;
    assert_eq!((r.status.as_u16(), r.header("allow")), (405, Some("POST")));
    let big = "x".repeat(5000);
    assert_eq!(post(app.addr, "/v1/shipments", &[], big).await.status, 413);
    assert_eq!(post(app.addr, "/v1/shipments", &[], "{}").await.status, 401);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_shipment() {
    let app = Arc::new(spawn_app().await);
    let body = shipment_body("o-race").to_string();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            create(&app, "acme-key", Some("k-race"), &body).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut in_progress = 0;
    let mut executed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => {
                if r.header("idempotent-replayed").is_none() {
                    executed += 1;
                }
                ids.insert(r.json()["shipment_id"].as_str().unwrap().to_string());
            }
            409 => {
                assert_eq!(r.code(), "IDEMPOTENCY_IN_PROGRESS");
                assert_eq!(r.header("retry-after"), Some("1"));
                in_progress += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(executed, 1, "exactly one request ran the operation");
    assert_eq!(ids.len(), 1, "every success names the same shipment");
    assert!(in_progress < 20);
}

#[tokio::test]
async fn a_claim_left_by_a_request_that_died_is_resumable_after_restart() {
    let app = spawn_app().await;
    let body = shipment_body("o-dead");
    // A request claimed the key and the process went down before it
    // answered: the claim is all that is left of it.
    let fp = waybill::idempotency::fingerprint("POST", "/v1/shipments", Some(&body));
    let d = app
        .app
        .store
        .claim(&crate::support::acme_claim(
            "k-dead",
            fp,
            std::time::Duration::from_secs(3600),
        ))
        .await
        .unwrap();
    assert_eq!(d, waybill::idempotency::Decision::Run);
    let r = create(&app, "acme-key", Some("k-dead"), &body.to_string()).await;
    assert_eq!(
        r.code(),
        "IDEMPOTENCY_IN_PROGRESS",
        "held while its lease runs in this process"
    );
    let app = app.restart().await;
    let r = create(&app, "acme-key", Some("k-dead"), &body.to_string()).await;
    if on_postgres() {
        // Processes sharing a database cannot tell a claim whose process
        // died from a live replica's: only the end of its lease frees it
        // (`tests/api/postgres_adapter.rs` shows that).
        assert_eq!(r.code(), "IDEMPOTENCY_IN_PROGRESS");
        return;
    }
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("idempotent-replayed"), None);
}

#[tokio::test]
async fn stored_answers_are_forgotten_after_their_retention() {
    let app = spawn_app().await;
    let body = shipment_body("o-ret").to_string();
    let first = create(&app, "acme-key", Some("k-ret"), &body).await.json();
    let now = waybill::clock::now_ms();
    let hour = 3_600_000;
    // The default retention is 24 h: an hour on, the answer is still kept.
    assert_eq!(
        app.app
            .store
            .sweep_idempotency(now + hour, 100)
            .await
            .unwrap(),
        0
    );
    let again = create(&app, "acme-key", Some("k-ret"), &body).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        app.app
            .store
            .sweep_idempotency(now + 25 * hour, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        app.app
            .store
            .sweep_idempotency(now + 25 * hour, 100)
            .await
            .unwrap(),
        0
    );
    // Forgotten: the key runs the operation again.
    let fresh = create(&app, "acme-key", Some("k-ret"), &body).await;
    assert_eq!(fresh.status, 201);
    assert_eq!(fresh.header("idempotent-replayed"), None);
    assert_ne!(fresh.json()["shipment_id"], first["shipment_id"]);
}

/// "Senders" (11.8): an answer carries the IETF `RateLimit-Policy` and
/// `RateLimit` headers of the limit that applied: the partner's on `/v1`,
/// the source's on a webhook; none where no limit is configured.
#[tokio::test]
async fn answers_carry_the_ratelimit_headers_of_the_limit_that_applied() {
    let app = spawn_app().await;
    let limits = |r: &Resp| {
        (
            r.header("ratelimit-policy").map(str::to_string),
            r.header("ratelimit").map(str::to_string),
        )
    };
    // Partner `tiny`: one request at once, one a second.
    let tiny = |k: &'static str, order: &'static str| {
        let addr = app.addr;
        async move {
            let body = shipment_body(order).to_string();
            post(addr, "/v1/shipments", &headers("tiny-key", Some(k)), body).await
        }
    };
    let first = tiny("rl-1", "o-rl-1").await;
    assert_eq!(first.status, 201);
    let policy = Some("\"partner\";q=1;w=1".to_string());
    assert_eq!(
        limits(&first),
        (policy.clone(), Some("\"partner\";r=0;t=1".into()))
    );
    let refused = tiny("rl-2", "o-rl-2").await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        limits(&refused),
        (policy, Some("\"partner\";r=0;t=1".into()))
    );
    // Partner `acme` has no limit.
    let free = create(
        &app,
        "acme-key",
        Some("rl-3"),
        &shipment_body("o-rl-3").to_string(),
    )
    .await;
    assert_eq!(free.status, 201);
    assert_eq!(limits(&free), (None, None));

    // Source `limited`: two at once, one a second. The 429 says none is
    // left and that both are back within two seconds.
    let mut answers = Vec::new();
    for i in 0..10 {
        let r = to_limited(&app, "rl", i).await;
        let status = r.status.as_u16();
        answers.push((status, limits(&r)));
        if status == 429 {
            break;
        }
    }
    let policy = Some("\"source\";q=2;w=2".to_string());
    assert!(
        answers.iter().all(|(_, (p, _))| *p == policy),
        "{answers:?}"
    );
    let (status, (_, last)) = answers.last().unwrap();
    assert_eq!(
        (*status, last.as_deref()),
        (429, Some("\"source\";r=0;t=2"))
    );
    for (status, (_, limit)) in &answers[..answers.len() - 1] {
        assert_eq!(*status, 202);
        let limit = limit.as_deref().unwrap();
        assert!(limit.starts_with("\"source\";r="), "{limit}");
    }
    // Source `gh` has no limit.
    let body = br#"{"id":"rl-free"}"#;
    let h = signed(SchemeKind::Github, GH_SECRET, body, 0, "rl-free");
    let free = app.webhook("gh", &h, body).await;
    assert_eq!(free.status, 202);
    assert_eq!(limits(&free), (None, None));
}
