//! Arbitrary JSON values in every mapped field of a tracking and a payment
//! source, driven through intake, dispatch, the shipment's GET, a cancel
//! and the admin show: every answer is a documented one, nothing
//! panics, and the state machine is still running at the end.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

/// Numbers of every size and sign, strings with unicode and times at and
/// beyond the edges, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("1763800000000"),
            Just("-62135596800"),
            Just("1e308"),
            Just("-1e308"),
            Just("123456789012345678901234567890"),
            Just("0.0000001"),
            Just("253402300799"),
            Just("253402300800"),
        ]
        .prop_map(|n| serde_json::from_str::<Value>(n).unwrap()),
        prop_oneof![
            Just("2026-11-20T12:00:00Z"),
            Just("9999-12-31T23:59:59.999Z"),
            Just("0000-01-01T00:00:00Z"),
            Just("1969-12-31T23:59:59Z"),
            Just("2026-02-30T00:00:00Z"),
            Just("in_transit"),
            Just("delivered"),
            Just(""),
        ]
        .prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Delivers `body` to a source signed as it expects: whether it was
/// accepted. Refused, it must be as `INVALID_PAYLOAD`; any other answer
/// fails the test, naming `what` was sent.
async fn deliver(
    app: &TestApp,
    (source, scheme, secret): (&str, SchemeKind, &str),
    body: &Value,
    what: &str,
) -> bool {
    let body = body.to_string();
    let r = app
        .webhook(
            source,
            &signed(scheme, secret, body.as_bytes(), 0, ""),
            body.as_bytes(),
        )
        .await;
    match r.status.as_u16() {
        202 => true,
        400 => {
            assert_eq!(r.code(), "INVALID_PAYLOAD", "{what}");
            false
        }
        other => panic!("{other} for {what}: {:?}", r.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_values_in_mapped_fields_get_documented_answers_and_never_panic() {
    let app = spawn_app().await;
    shipment_with_label(&app, "shp_fuzz", "TN-FUZZ").await;
    let mut runner = TestRunner::new(Config {
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261130),
        ..Config::default()
    });
    let strategy = any_json();
    let mut ids = Vec::new();
    for n in 0..400 {
        let value = strategy.new_tree(&mut runner).unwrap().current();
        // Tracking: one mapped field arbitrary, the rest valid, so the value
        // reaches as far as it can.
        let mut result = json!({"tracking_code": "TN-FUZZ", "status": "in_transit", "updated_at": "2026-11-20T12:00:00Z"});
        let field = ["tracking_code", "status", "updated_at"][n % 3];
        result[field] = value.clone();
        let id = format!("fz-{n}");
        let body = json!({"id": id, "description": "tracker.updated", "result": result});
        let what = format!("{field} = {value}");
        if deliver(&app, ("ep", SchemeKind::Easypost, EP_SECRET), &body, &what).await {
            ids.push(("ep", id));
        }
        // Payment: the order id or the status arbitrary.
        let mut data = json!({"order_id": "o-fuzz"});
        let mut kind = Value::from("payment_intent.succeeded");
        if n % 2 == 0 {
            data["order_id"] = value.clone();
        } else {
            kind = value.clone();
        }
        let id = format!("pz-{n}");
        let body = json!({"id": id, "type": kind, "data": data});
        let what = format!("payment {value}");
        if deliver(&app, ("pay", SchemeKind::Github, GH_SECRET), &body, &what).await {
            ids.push(("pay", id));
        }
    }
    app.settle().await;

    let outcomes = [
        "applied", "stale", "ignored", "parked", "dead", "pending", "stored",
    ];
    for (source, id) in &ids {
        let r = app.admin_get(&format!("/admin/events/{source}/{id}")).await;
        assert_eq!(r.status, 200, "{source}/{id}");
        let v = r.json();
        assert!(
            outcomes.contains(&v["outcome"].as_str().unwrap()),
            "{source}/{id}: {v}"
        );
        if v["outcome"] == "dead" {
            assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
    }
    let r = app.admin_get("/admin/events?limit=1000").await;
    assert_eq!(r.status, 200);

    let auth = [("Authorization".to_string(), "Bearer acme-key".to_string())];
    let mut client = Client::new(app.addr);
    let shipment = client
        .send("GET", "/v1/shipments/shp_fuzz", &auth, Bytes::new())
        .await;
    assert_eq!(shipment.status, 200);
    let s = shipment.json();
    for e in s["history"].as_array().unwrap() {
        let at = e["occurred_at"].as_str().unwrap();
        assert!(
            at.len() == 24 && at.ends_with('Z') && at.as_bytes()[0] != b'-',
            "{at}"
        );
    }
    let c = post(
        app.addr,
        "/v1/shipments/shp_fuzz/cancel",
        &headers("fuzz-cancel"),
        "{}",
    )
    .await;
    assert!(
        c.status == 200 || (c.status == 409 && c.code() == "INVALID_TRANSITION"),
        "{:?}",
        c.body
    );
    assert_eq!(get(app.addr, "/readyz").await.status, 200);
    assert!(app.app.health.failure().is_none());
}
