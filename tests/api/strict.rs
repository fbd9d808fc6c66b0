//! "One behaviour, either store", "Hostile traffic" (GUARANTEES.md): input a
//! store cannot hold, or that two readers could read two ways, is refused with
//! a 400 that names where, the same on both stores, and changes nothing.

use serde_json::{Value, json};
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

fn ep(body: &[u8]) -> Vec<(String, String)> {
    signed(SchemeKind::Easypost, EP_SECRET, body, 0, "")
}

/// Signed as the `gh` and `pay` sources expect, with no delivery header,
/// so that the `/id` pointer names the event.
fn by_pointer(body: &[u8]) -> Vec<(String, String)> {
    signed(SchemeKind::Github, GH_SECRET, body, now(), "")
        .into_iter()
        .filter(|(k, _)| k != "X-GitHub-Delivery")
        .collect()
}

fn refused_at(r: &Resp, code: &str, field: &str) {
    assert_eq!(r.status, 400, "{field}: {:?}", r.body);
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{field}: {body}");
    assert!(
        body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["field"] == field),
        "{field} not named: {body}"
    );
}

/// "One behaviour, either store" (GUARANTEES.md): U+0000 in an event id, a
/// tracking number, a status, an event type, an occurred_at or an order id of a
/// validly signed webhook is 400 `INVALID_PAYLOAD` naming its pointer, on
/// either store, never a 5xx a sender would retry forever; the genuine delivery
/// is then new.
#[tokio::test]
async fn u0000_in_a_webhook_field_is_refused_naming_its_pointer() {
    let app = spawn_app().await;
    let tracking = |id: &str, tn: &str, status: &str, kind: &str, at: &str| {
        json!({"id": id, "description": kind,
               "result": {"tracking_code": tn, "status": status, "updated_at": at}})
        .to_string()
        .into_bytes()
    };
    let at = "2026-11-30T10:00:00Z";
    for (body, pointer) in [
        (
            tracking("ev\u{0}1", "TN1", "in_transit", "tracker.updated", at),
            "/id",
        ),
        (
            tracking("ev-1", "TN\u{0}1", "in_transit", "tracker.updated", at),
            "/result/tracking_code",
        ),
        (
            tracking("ev-1", "TN1", "in_\u{0}transit", "tracker.updated", at),
            "/result/status",
        ),
        (
            tracking("ev-1", "TN1", "in_transit", "tracker.\u{0}updated", at),
            "/description",
        ),
        (
            tracking("ev-1", "TN1", "in_transit", "tracker.updated", "2026\u{0}"),
            "/result/updated_at",
        ),
    ] {
        let r = app.webhook("ep", &ep(&body), &body).await;
        refused_at(&r, "INVALID_PAYLOAD", pointer);
    }
    let genuine = tracking("ev-1", "TN1", "in_transit", "tracker.updated", at);
    assert_eq!(app.webhook("ep", &ep(&genuine), &genuine).await.status, 202);

    let payment = |order: &str| {
        json!({"id": "pay-1", "type": "payment_intent.succeeded", "data": {"order_id": order}})
            .to_string()
            .into_bytes()
    };
    let body = payment("ord\u{0}1");
    refused_at(
        &app.webhook("pay", &by_pointer(&body), &body).await,
        "INVALID_PAYLOAD",
        "/data/order_id",
    );
    let body = payment("ord-1");
    assert_eq!(
        app.webhook("pay", &by_pointer(&body), &body).await.status,
        202
    );
    // U+0000 anywhere else in a body is the sender's business: the body is
    // kept as it came.
    let body = br#"{"id":"free-text","note":"a\u0000b"}"#;
    let r = app
        .webhook(
            "gh",
            &signed(SchemeKind::Github, GH_SECRET, body, now(), "d1"),
            body,
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}

fn address() -> Value {
    json!({"name": "A", "street1": "1 Main St", "city": "C", "postal_code": "1", "country": "US"})
}

/// "One behaviour, either store" (GUARANTEES.md): U+0000 in any `/v1` text field is 400
/// `VALIDATION_FAILED` naming the field, on either store; the key stays
/// unused, so the same key with a clean body then runs.
#[tokio::test]
async fn u0000_in_a_v1_text_field_is_refused_naming_the_field() {
    let (app, _sim) = app_with_sim(Default::default()).await;
    let shipment = json!({"order_id": "o-1", "carrier": "ups", "service": "ground",
        "from": address(), "to": address(), "reference": "r",
        "parcels": [{"weight_grams": 1, "length_cm": 1, "width_cm": 1, "height_cm": 1}]});
    let mut fields: Vec<String> = ["order_id", "carrier", "service", "reference"]
        .iter()
        .map(|f| format!("/{f}"))
        .collect();
    for side in ["from", "to"] {
        for f in ["name", "street1", "city", "postal_code", "country"] {
            fields.push(format!("/{side}/{f}"));
        }
    }
    for field in &fields {
        let mut body = shipment.clone();
        *body.pointer_mut(field).unwrap() = json!("x\u{0}y");
        let r = Api::acme(app.addr).create_shipment("nul-ship", &body).await;
        refused_at(&r, "VALIDATION_FAILED", field);
    }
    let r = Api::acme(app.addr)
        .create_shipment("nul-ship", &shipment)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    let order = order_body("ord-nul", "cust-1", "SKU-1", 1);
    for field in [
        "/order_id",
        "/customer_id",
        "/currency",
        "/items/0/sku",
        "/ship_to/name",
        "/ship_to/city",
    ] {
        let mut body = order.clone();
        *body.pointer_mut(field).unwrap() = json!("E\u{0}R");
        let r = place_order(&app, "nul-order", &body).await;
        refused_at(&r, "VALIDATION_FAILED", field);
    }
    let r = place_order(&app, "nul-order", &order).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// "One behaviour, either store" (GUARANTEES.md): an admin filter holding U+0000 is 400 naming the
/// parameter, and an event id holding it is simply not found; neither
/// reaches the store.
#[tokio::test]
async fn u0000_in_an_admin_filter_is_refused_naming_the_parameter() {
    let app = spawn_app().await;
    for param in [
        "source",
        "event_id",
        "tracking_number",
        "order_id",
        "event_type",
    ] {
        let r = app.admin_get(&format!("/admin/events?{param}=a%00b")).await;
        refused_at(&r, "VALIDATION_FAILED", param);
    }
    let r = app.admin_get("/admin/events/gh/a%00b").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "NOT_FOUND");
    let r = app.admin_post("/admin/events/g%00h/a/redeliver").await;
    assert_eq!(r.status, 404);
    let r = Client::new(app.addr)
        .send(
            "POST",
            "/admin/redeliver",
            &[
                TestApp::admin_headers().remove(0),
                ("Content-Type".into(), "application/json".into()),
            ],
            r#"{"outcome":"dead","source":"g\u0000h"}"#,
        )
        .await;
    refused_at(&r, "VALIDATION_FAILED", "source");
    assert_eq!(app.admin_get("/admin/events?source=gh").await.status, 200);
}

/// "Hostile traffic" (GUARANTEES.md): a webhook body whose JSON repeats a name, at any depth,
/// is 400 `INVALID_PAYLOAD` naming it: the identity could be read two
/// ways. Nothing is stored; the unambiguous delivery is then new.
#[tokio::test]
async fn a_webhook_body_that_repeats_a_name_is_refused() {
    let app = spawn_app().await;
    for (body, pointer) in [
        (&br#"{"id":"a","id":"b"}"#[..], "/id"),
        (br#"{"id":"a","x":{"y":[{"z":1,"z":2}]}}"#, "/x/y/0/z"),
        (br#"{"id":"a","\u0069d":"b"}"#, "/id"),
    ] {
        let r = app.webhook("gh", &by_pointer(body), body).await;
        refused_at(&r, "INVALID_PAYLOAD", pointer);
    }
    let body = br#"{"id":"a"}"#;
    let r = app.webhook("gh", &by_pointer(body), body).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}

/// "Hostile traffic" (GUARANTEES.md): a `/v1` body that repeats a name is 400
/// `INVALID_PAYLOAD`, and two `Idempotency-Key` headers are 400
/// `IDEMPOTENCY_KEY_INVALID`; neither uses the key.
#[tokio::test]
async fn a_v1_body_that_repeats_a_name_or_two_keys_are_refused() {
    let (app, _sim) = app_with_sim(Default::default()).await;
    let one = order_body("ord-dup", "cust-1", "SKU-1", 1).to_string();
    let twice = one.replacen("{", r#"{"order_id":"ord-other","#, 1);
    let r = post(app.addr, "/v1/orders", &headers("dup-key"), twice).await;
    refused_at(&r, "INVALID_PAYLOAD", "/order_id");

    let mut two_keys = headers("dup-key");
    two_keys.push(("Idempotency-Key".into(), "dup-key-2".into()));
    let r = post(app.addr, "/v1/orders", &two_keys, one.clone()).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.code(), "IDEMPOTENCY_KEY_INVALID");
    let mut same_twice = headers("dup-key");
    same_twice.push(("Idempotency-Key".into(), "dup-key".into()));
    let r = post(app.addr, "/v1/orders", &same_twice, one.clone()).await;
    assert_eq!(r.code(), "IDEMPOTENCY_KEY_INVALID");

    let r = post(app.addr, "/v1/orders", &headers("dup-key"), one).await;
    assert_eq!(r.status, 201, "the key was never used: {:?}", r.body);
    assert!(r.header("idempotent-replayed").is_none());
}
