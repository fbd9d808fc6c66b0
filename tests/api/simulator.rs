//! `waybill simulate` (GUARANTEES.md: "Downstreams"): every endpoint, idempotency on each,
//! fault injection that never touches the ledger, and tracking webhooks
//! that reach a running gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use bytes::Bytes;
use serde_json::{Value, json};
use waybill::tools::simulator::SimConfig;

fn config() -> SimConfig {
    SimConfig {
        default_stock: 1000,
        ..SimConfig::default()
    }
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Value,
) -> Result<Resp, String> {
    let mut h = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(k) = key {
        h.push(("idempotency-key".to_string(), k.to_string()));
    }
    Client::new(addr)
        .try_send(method, path, &h, Bytes::from(body.to_string()))
        .await
}

/// A POST under idempotency key `key` that got an answer.
async fn keyed_post(addr: SocketAddr, path: &str, key: &str, body: Value) -> Resp {
    call(addr, "POST", path, Some(key), body).await.unwrap()
}

/// A charge of `amount_cents` euros to `customer` under `key`.
async fn charge(addr: SocketAddr, key: &str, amount_cents: u64, customer: &str) -> Resp {
    let body = json!({"amount_cents": amount_cents, "currency": "EUR", "customer_id": customer});
    keyed_post(addr, "/payments/charges", key, body).await
}

async fn ledger(addr: SocketAddr) -> Value {
    get(addr, "/_sim/ledger").await.json()
}

fn label_body(shipment: &str) -> Value {
    json!({"shipment_id": shipment, "carrier": "ups", "service": "ground", "from": {}, "to": {}, "parcels": [], "format": "PDF"})
}

#[tokio::test]
async fn labels_are_idempotent_and_voids_are_recorded_on_their_row() {
    let sim = start_sim(config()).await;
    let first = keyed_post(sim, "/carrier/labels", "label:shp_1", label_body("shp_1")).await;
    assert_eq!(first.status, 201);
    let label = first.json();
    assert!(
        label["tracking_number"]
            .as_str()
            .unwrap()
            .starts_with("SIM")
    );
    let again = keyed_post(sim, "/carrier/labels", "label:shp_1", label_body("shp_1")).await;
    assert_eq!(again.json(), label);
    let other = keyed_post(sim, "/carrier/labels", "label:shp_1", label_body("shp_2")).await;
    assert_eq!(other.status, 409);
    let l = ledger(sim).await;
    assert_eq!(l["labels"].as_array().unwrap().len(), 1);
    assert_eq!(l["labels"][0]["idempotency_key"], "label:shp_1");
    assert_eq!(l["labels"][0]["voided"], false);
    let void = format!(
        "/carrier/labels/{}/void",
        label["label_id"].as_str().unwrap()
    );
    for _ in 0..2 {
        assert_eq!(
            call(sim, "POST", &void, None, json!({}))
                .await
                .unwrap()
                .status,
            200
        );
    }
    let l = ledger(sim).await;
    assert_eq!(l["labels"].as_array().unwrap().len(), 1);
    assert_eq!(l["labels"][0]["voided"], true);
    assert_eq!(
        call(sim, "POST", "/carrier/labels/nope/void", None, json!({}))
            .await
            .unwrap()
            .status,
        404
    );
}

#[tokio::test]
async fn charges_decline_without_a_trace() {
    let sim = start_sim(config()).await;
    let ok = charge(sim, "charge:acme:o1", 4599, "cus_1").await;
    assert_eq!(ok.status, 201);
    assert!(ok.json()["transaction_id"].is_string());
    for _ in 0..2 {
        let declined = charge(sim, "charge:acme:o2", 100, "decline_card").await;
        assert_eq!(declined.status, 402);
    }
    let l = ledger(sim).await;
    assert_eq!(l["charges"].as_array().unwrap().len(), 1);
    assert_eq!(l["charges"][0]["amount_cents"], 4599);
    assert_eq!(l["charges"][0]["customer_id"], "cus_1");
}

#[tokio::test]
async fn reservations_take_and_give_back_stock() {
    let sim = start_sim(SimConfig {
        stock: HashMap::from([("SKU-A".to_string(), 2)]),
        ..config()
    })
    .await;
    let items = |q: i64| json!({"items": [{"sku": "SKU-A", "quantity": q}]});
    let r = keyed_post(sim, "/inventory/reservations", "res:1", items(2)).await;
    assert_eq!(r.status, 201);
    let id = r.json()["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(
        keyed_post(sim, "/inventory/reservations", "res:2", items(1))
            .await
            .status,
        422
    );
    let path = format!("/inventory/reservations/{id}");
    for _ in 0..2 {
        assert_eq!(
            call(sim, "DELETE", &path, None, json!({}))
                .await
                .unwrap()
                .status,
            204
        );
    }
    assert_eq!(
        keyed_post(sim, "/inventory/reservations", "res:3", items(2))
            .await
            .status,
        201
    );
    assert_eq!(
        call(
            sim,
            "DELETE",
            "/inventory/reservations/nope",
            None,
            json!({})
        )
        .await
        .unwrap()
        .status,
        404
    );
    let l = ledger(sim).await;
    let rows = l["reservations"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "the 422 performed nothing");
    assert_eq!(rows[0]["released"], true);
    assert_eq!(rows[1]["released"], false);
}

#[tokio::test]
async fn injected_failures_do_nothing_and_lost_responses_do_everything() {
    let failing = start_sim(SimConfig {
        fail_rate: 1.0,
        ..config()
    })
    .await;
    let r = call(
        failing,
        "POST",
        "/carrier/labels",
        Some("k"),
        label_body("s"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503);
    assert!(
        ledger(failing).await["labels"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let losing = start_sim(SimConfig {
        lost_response_rate: 1.0,
        seed: Some(3),
        ..config()
    })
    .await;
    for i in 0..6 {
        // Either a 500 or a dropped connection (an error here).
        let answer = call(
            losing,
            "POST",
            "/carrier/labels",
            Some(&format!("k{i}")),
            label_body("s"),
        )
        .await;
        if let Ok(r) = answer {
            assert_eq!(r.status, 500);
        }
    }
    assert_eq!(ledger(losing).await["labels"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn retries_through_faults_buy_one_label_per_key() {
    let sim = start_sim(SimConfig {
        fail_rate: 0.2,
        lost_response_rate: 0.5,
        seed: Some(42),
        ..config()
    })
    .await;
    let mut answers = HashMap::new();
    for s in 0..60 {
        let key = format!("label:shp_{s}");
        let mut got = None;
        for _ in 0..200 {
            if let Ok(r) = call(
                sim,
                "POST",
                "/carrier/labels",
                Some(&key),
                label_body(&format!("shp_{s}")),
            )
            .await
                && r.status == 201
            {
                got = Some(r.json());
                break;
            }
        }
        answers.insert(key, got.expect("a retry got through"));
    }
    let l = ledger(sim).await;
    let rows = l["labels"].as_array().unwrap();
    assert_eq!(rows.len(), 60, "exactly one label per key");
    for row in rows {
        let key = row["idempotency_key"].as_str().unwrap();
        assert_eq!(answers[key]["label_id"], row["label_id"], "{key}");
    }
}

#[tokio::test]
async fn concurrent_requests_with_one_key_get_one_answer() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(5),
        ..config()
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            charge(sim, "charge:same", 1, "c").await.json()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(
            t.await.unwrap()["transaction_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(ledger(sim).await["charges"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn emitted_tracking_webhooks_reach_the_gateway_and_move_the_shipment() {
    let app = Arc::new(spawn_app().await);
    let sim = start_sim(SimConfig {
        emit: Some((
            format!("http://{}/webhooks/simc", app.addr),
            SW_SECRET.to_string(),
        )),
        duplicate_rate: 0.5,
        reorder_rate: 0.5,
        seed: Some(9),
        ..config()
    })
    .await;
    let shipment = post(
        app.addr,
        "/v1/shipments",
        &[
            ("Authorization".into(), "Bearer acme-key".into()),
            ("Content-Type".into(), "application/json".into()),
            ("Idempotency-Key".into(), "loop-1".into()),
        ],
        json!({"order_id": "o-loop", "carrier": "ups", "service": "ground",
               "from": {"name": "W", "street1": "1", "city": "C", "postal_code": "1", "country": "US"},
               "to": {"name": "A", "street1": "2", "city": "C", "postal_code": "2", "country": "US"},
               "parcels": [{"weight_grams": 1, "length_cm": 1, "width_cm": 1, "height_cm": 1}]})
        .to_string(),
    )
    .await
    .json();
    let id = shipment["shipment_id"].as_str().unwrap().to_string();
    let label = call(
        sim,
        "POST",
        "/carrier/labels",
        Some(&format!("label:{id}")),
        label_body(&id),
    )
    .await
    .unwrap()
    .json();
    let tn = label["tracking_number"].as_str().unwrap().to_string();
    app.app
        .store
        .record_label(
            crate::support::label_for(&id, &tn, waybill::clock::now_ms()),
            None,
        )
        .await
        .unwrap();
    // The simulator sends on its own schedule: wait, bounded, for its four updates.
    let mut seen = 0;
    for _ in 0..500 {
        let found = app
            .admin_get(&format!("/admin/events?tracking_number={tn}"))
            .await
            .json();
        seen = found["events"].as_array().unwrap().len();
        if seen == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 4, "each update once, however often it was sent");
    app.settle().await;
    let s = app
        .app
        .store
        .shipment(&id.as_str().into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.timeline.status(),
        waybill::domain::shipment::ShipmentStatus::Delivered
    );
    assert_eq!(s.timeline.history().filter(|e| !e.is_gateway()).count(), 4);
}

/// A simulator restarted with the same seed issues tracking numbers the
/// earlier run did not: the seed repeats the fault dice, not the numbers,
/// which would otherwise collide at the gateway as `duplicate_conflict`.
#[tokio::test]
async fn a_restart_with_the_same_seed_issues_new_tracking_numbers() {
    let mut issued = std::collections::HashSet::new();
    for run in 0..2 {
        let sim = start_sim(SimConfig {
            seed: Some(7),
            ..config()
        })
        .await;
        for n in 0..3 {
            let label = keyed_post(
                sim,
                "/carrier/labels",
                &format!("label:{n}"),
                label_body("s"),
            )
            .await
            .json();
            let tn = label["tracking_number"].as_str().unwrap().to_string();
            assert!(issued.insert(tn.clone()), "run {run} issued {tn} again");
        }
    }
}
