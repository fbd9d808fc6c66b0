//! "Nothing stops the gateway" (GUARANTEES.md) in-process: clients that go away, race, flood one
//! tracking number, invent methods or send enormous invalid bodies.

use std::collections::HashMap;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waybill::domain::shipment::MAX_CARRIER_EVENTS;
use waybill::tools::simulator::SimConfig;

use crate::helpers::*;

/// Writes a label purchase on a raw connection and returns the connection.
async fn start_purchase(app: &TestApp, id: &str, key: &str) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let mut req =
        format!("POST /v1/shipments/{id}/label HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n");
    for (k, v) in headers(key) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    // The body `buy` sends, so that its retries are the same request.
    req.push_str("\r\n{\"format\":\"ZPL\"}");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

/// "Nothing stops the gateway" (GUARANTEES.md): a client that goes away
/// mid-request does not abandon the operation; it runs to its end and its
/// answer is stored, so the retry gets it (409 IN_PROGRESS while it still
/// runs).
#[tokio::test]
async fn a_client_that_disconnects_does_not_abandon_its_label() {
    let (app, mut carrier) = app_with_gated_carrier().await;
    let id = new_shipment(&app, "gone").await;
    let conn = start_purchase(&app, &id, "gone-key").await;
    // The purchase is at the carrier; its client goes away.
    carrier.arrived.recv().await.unwrap();
    drop(conn);
    let during = buy(&app, &id, "gone-key").await;
    assert_eq!(during.status, 409);
    assert_eq!(during.code(), "IDEMPOTENCY_IN_PROGRESS");
    assert_eq!(during.header("retry-after"), Some("1"));
    carrier.release.add_permits(1);
    let mut answer = None;
    for _ in 0..500 {
        let r = buy(&app, &id, "gone-key").await;
        if r.status != 409 {
            answer = Some(r);
            break;
        }
        tokio::task::yield_now().await;
    }
    let r = answer.expect("the purchase finished");
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(r.json()["label_id"], "lbl_gated");
}

/// "The integrator API" (GUARANTEES.md): two purchases for one shipment under different keys at
/// the same moment: one label, one 201, one 409 LABEL_EXISTS naming it.
#[tokio::test]
async fn two_purchases_at_once_under_two_keys_give_one_label_and_one_conflict() {
    let (app, mut carrier) = app_with_gated_carrier().await;
    let id = new_shipment(&app, "race").await;
    let a = tokio::spawn({
        let addr = app.addr;
        let id = id.clone();
        async move { Api::acme(addr).buy_label(&id, "race-a", "{}").await }
    });
    let b = tokio::spawn({
        let addr = app.addr;
        let id = id.clone();
        async move { Api::acme(addr).buy_label(&id, "race-b", "{}").await }
    });
    // Both are at the carrier before either is answered.
    carrier.arrived.recv().await.unwrap();
    carrier.arrived.recv().await.unwrap();
    carrier.release.add_permits(2);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
    let conflict = if a.status == 409 { &a } else { &b };
    assert_eq!(conflict.code(), "LABEL_EXISTS");
    assert_eq!(
        conflict.json()["error"]["details"][0],
        json!({"field": "label_id", "issue": "lbl_gated"})
    );
}

/// "No partial state", "Labels are voided, never waited on" (GUARANTEES.md):
/// with the carrier losing answers, a label purchase that ended 503 may
/// still have sold a label. The cancel answers CANCELLED at once and owes
/// the void; settling it finds the label through the business key and
/// voids it, however many answers are lost on the way.
#[tokio::test]
async fn a_label_sold_behind_a_lost_answer_is_voided_by_the_cancel() {
    let (app, sim) = app_with_sim(SimConfig {
        lost_response_rate: 0.8,
        seed: Some(7),
        ..SimConfig::default()
    })
    .await;
    let mut cancelled = Vec::new();
    let mut lost = 0;
    for n in 0..30 {
        let id = new_shipment(&app, &format!("lost-{n}")).await;
        let r = buy(&app, &id, &format!("lost-buy-{n}")).await;
        if r.status == 201 {
            continue;
        }
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
        lost += 1;
        // The client gives up on the label and cancels: at once.
        let c = cancel(&app, &id, &format!("lost-cancel-{n}")).await;
        assert_eq!(c.status, 200, "{:?}", c.body);
        assert_eq!(c.json()["status"], "CANCELLED");
        assert_eq!(c.json()["label_void"]["status"], "owed");
        cancelled.push(format!("label:{id}"));
    }
    assert!(lost > 0, "the seed loses some purchases");
    // The owed voids, settled round after round, each an hour after the
    // last so every one is due (the background does the same over time).
    let live = app.app.live();
    let ports = app.app.ports(&live);
    let mut at = waybill::clock::now_ms();
    for _ in 0..100 {
        if app.app.store.voids_owed().await.unwrap() == 0 {
            break;
        }
        at += 3_600_000;
        waybill::service::shipments::settle_owed_voids(ports, at, 100)
            .await
            .unwrap();
    }
    assert_eq!(app.app.store.voids_owed().await.unwrap(), 0);
    let rows = ledger(sim).await["labels"].as_array().unwrap().clone();
    let by_key: HashMap<String, &Value> = rows
        .iter()
        .map(|r| (r["idempotency_key"].as_str().unwrap().to_string(), r))
        .collect();
    let mut found = 0;
    for key in &cancelled {
        if let Some(row) = by_key.get(key) {
            assert_eq!(row["voided"], true, "{key}: a label nobody knows of");
            found += 1;
        }
    }
    assert!(found > 0, "some lost purchases had sold a label");
}

/// Regression: 40,000 events for one tracking number made dispatch quadratic
/// and the shipment's answer megabytes. The history is bounded; the status
/// is still the rule's.
#[tokio::test]
async fn a_busy_tracking_number_keeps_a_bounded_history() {
    let app = spawn_app().await;
    shipment_with_label(&app, "shp_busy", "TN-BUSY").await;
    send_tracking(
        &app,
        "busy-d",
        "TN-BUSY",
        "delivered",
        "2026-01-01T00:00:00Z",
    )
    .await;
    for i in 0..(2 * MAX_CARRIER_EVENTS) {
        let at = format!("2026-02-01T00:{:02}:{:02}Z", i / 60, i % 60);
        let r = send_tracking(&app, &format!("busy-{i}"), "TN-BUSY", "in_transit", &at).await;
        assert_eq!(r.status, 202);
    }
    app.settle().await;
    let rec = app
        .app
        .store
        .shipment(&"shp_busy".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.timeline.status().as_str(), "DELIVERED");
    let carrier_events = rec
        .timeline
        .history()
        .filter(|e| e.event_id.is_some())
        .count();
    assert_eq!(carrier_events, MAX_CARRIER_EVENTS + 1);
}

/// Regression: the raw method was a metric label, so made-up methods grew
/// `/metrics` without bound. They are `other`.
#[tokio::test]
async fn made_up_methods_do_not_become_metric_labels() {
    let app = spawn_app().await;
    for i in 0..50 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let req =
            format!("MADEUP{i}XYZ /webhooks/gh HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let resp = {
            stream.write_all(req.as_bytes()).await.unwrap();
            read_response(&mut stream).await
        };
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    }
    let text = app.metrics().await;
    assert!(!text.contains("MADEUP"), "a client-chosen label value");
    assert!(text.contains(r#"method="other""#));
}

/// Regression: 12,000 invalid parcels gave a 3.5 MB error body. The details
/// are capped, the last one saying how many more there were.
#[tokio::test]
async fn an_error_body_lists_a_bounded_number_of_details() {
    let app = spawn_app_with(Options {
        ..Options::default()
    })
    .await;
    let parcels: Vec<Value> = (0..12_000).map(|_| json!({"weight_grams": -1})).collect();
    let body = json!({"order_id": "o", "carrier": "ups", "service": "s", "parcels": parcels});
    let r = Api::acme(app.addr).create_shipment("many", &body).await;
    // The test server's body limit is small: 413 first.
    assert_eq!(r.status, 413);
    let few: Vec<Value> = (0..300).map(|_| json!({"weight_grams": -1})).collect();
    let body = json!({"order_id": "o", "carrier": "ups", "service": "s", "parcels": few});
    let big = spawn_app_with(Options {
        max_body_bytes: 1 << 20,
        ..Options::default()
    })
    .await;
    let r = Api::acme(big.addr).create_shipment("many", &body).await;
    assert_eq!(r.status, 400);
    let details = r.json()["error"]["details"].as_array().unwrap().clone();
    assert_eq!(details.len(), 51);
    assert!(
        details[50]["issue"]
            .as_str()
            .unwrap()
            .ends_with("more issues not listed"),
        "{:?}",
        details[50]
    );
    assert!(r.body.len() < 16 * 1024, "{}", r.body.len());
}

/// Connections beyond `max_connections` wait in the backlog rather than
/// failing, and are served once others close.
#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let app = spawn_app_with(Options {
        max_connections: 8,
        ..Options::default()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let body = br#"{"id":"capped"}"#.to_vec();
    let waiting = tokio::spawn({
        let addr = app.addr;
        let h = signed(
            waybill::webhook::signature::SchemeKind::Github,
            GH_SECRET,
            &body,
            0,
            "c",
        );
        async move { post(addr, "/webhooks/gh", &h, body).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(silent);
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 202);
}
