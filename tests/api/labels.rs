//! Labels and cancel (GUARANTEES.md: "The integrator API") against the simulator: one label per
//! shipment however the carrier fails, and cancels that void it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;
use waybill::tools::simulator::SimConfig;

use crate::helpers::*;

#[tokio::test]
async fn a_label_is_bought_once_and_a_second_key_gets_label_exists() {
    let (app, sim) = app_with_sim(SimConfig::default()).await;
    let id = new_shipment(&app, "l-1").await;
    let r = buy(&app, &id, "label-1").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let label = r.json();
    assert_eq!(label["shipment_id"], id.as_str());
    assert_eq!(label["format"], "ZPL");
    assert_eq!(label["carrier"], "ups");
    for field in ["label_id", "tracking_number", "created_at"] {
        assert!(label[field].is_string(), "{field}");
    }
    let again = buy(&app, &id, "label-1").await;
    again.assert_replays(&r);
    let second = buy(&app, &id, "label-2").await;
    assert_eq!(
        (second.status.as_u16(), second.code().as_str()),
        (409, "LABEL_EXISTS")
    );
    assert_eq!(
        second.json()["error"]["details"],
        json!([{"field": "label_id", "issue": label["label_id"]}])
    );
    let shown = Api::acme(app.addr).shipment(&id).await.json();
    assert_eq!(shown["status"], "LABEL_CREATED");
    assert_eq!(shown["tracking_number"], label["tracking_number"]);
    assert_eq!(shown["label"], label);
    assert_eq!(ledger(sim).await["labels"].as_array().unwrap().len(), 1);
    // Another partner's shipment, or none: 404, and nothing bought.
    let other = post(
        app.addr,
        &format!("/v1/shipments/{id}/label"),
        &[
            ("Authorization".into(), "Bearer globex-key".into()),
            ("Idempotency-Key".into(), "g".into()),
        ],
        "",
    )
    .await;
    assert_eq!(other.status, 404);
    assert_eq!(buy(&app, "shp_nope", "label-3").await.status, 404);
    let bad = Api::acme(app.addr)
        .buy_label(&id, "label-4", r#"{"format":"PNG"}"#)
        .await;
    assert_eq!(bad.json()["error"]["details"][0]["field"], "/format");
}

#[tokio::test]
async fn an_unreachable_carrier_is_503_and_leaves_the_key_unused() {
    let (app, sim) = app_with_sim(SimConfig {
        fail_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let id = new_shipment(&app, "l-down").await;
    let r = buy(&app, &id, "label-down").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "UPSTREAM_UNAVAILABLE")
    );
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(ledger(sim).await["labels"].as_array().unwrap().is_empty());
    // Not stored: the same key runs again (and fails again here).
    let again = buy(&app, &id, "label-down").await;
    assert_eq!(again.header("idempotent-replayed"), None);
    assert_eq!(again.status, 503);
}

#[tokio::test]
async fn two_hundred_purchases_through_faults_buy_one_label_each() {
    let (app, sim) = app_with_sim(lossy(11)).await;
    let app = Arc::new(app);
    let results = concurrently(200, |n| {
        let app = app.clone();
        async move {
            let id = new_shipment(&app, &format!("fault-{n}")).await;
            let key = format!("buy-{n}");
            let mut successes = Vec::new();
            // The client retries with the same key until the answer is final,
            // then once more: a replay must name the same label.
            for _ in 0..100 {
                let r = buy(&app, &id, &key).await;
                match r.status.as_u16() {
                    201 => {
                        successes.push(r.json()["label_id"].as_str().unwrap().to_string());
                        if successes.len() == 2 {
                            break;
                        }
                    }
                    503 => continue,
                    other => panic!("unexpected {other}: {:?}", r.body),
                }
            }
            (id, successes)
        }
    })
    .await;
    let mut by_shipment = HashMap::new();
    for (id, successes) in results {
        assert_eq!(successes.len(), 2, "{id} never got its label");
        assert_eq!(
            successes[0], successes[1],
            "{id}: every success names the same label"
        );
        by_shipment.insert(format!("label:{id}"), successes[0].clone());
    }
    let l = ledger(sim).await;
    let rows = l["labels"].as_array().unwrap();
    let keys: HashSet<&str> = rows
        .iter()
        .map(|r| r["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(rows.len(), 200, "exactly one label per shipment");
    assert_eq!(keys.len(), 200);
    for row in rows {
        let key = row["idempotency_key"].as_str().unwrap();
        assert_eq!(by_shipment[key], row["label_id"].as_str().unwrap(), "{key}");
    }
}

#[tokio::test]
async fn cancel_voids_the_label_and_only_before_the_shipment_moves() {
    let (app, sim) = app_with_sim(SimConfig::default()).await;
    // Without a label.
    let a = new_shipment(&app, "c-1").await;
    let r = cancel(&app, &a, "cancel-a").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["status"], "CANCELLED");
    let history = r.json()["history"].as_array().unwrap().clone();
    assert_eq!(history.last().unwrap()["status"], "CANCELLED");
    assert_eq!(history.last().unwrap()["source"], "waybill");
    // Again, under a new key: the same shipment, nothing done again.
    let again = cancel(&app, &a, "cancel-a2").await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.json()["history"].as_array().unwrap().len(),
        history.len()
    );
    // A cancelled shipment cannot get a label.
    let r = buy(&app, &a, "label-after-cancel").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (409, "INVALID_TRANSITION")
    );

    // With a label: the carrier voids it.
    let b = new_shipment(&app, "c-2").await;
    let label = buy(&app, &b, "label-b").await.json();
    assert_eq!(
        cancel(&app, &b, "cancel-b").await.json()["status"],
        "CANCELLED"
    );
    let l = ledger(sim).await;
    let row = ledger_row(&l, "labels", ("label_id", &label["label_id"]));
    assert_eq!(row["voided"], true);

    // Moving: refused, and the refusal is final (replayed).
    let c = new_shipment(&app, "c-3").await;
    let tn = buy(&app, &c, "label-c").await.json()["tracking_number"]
        .as_str()
        .unwrap()
        .to_string();
    send_tracking(&app, "c-move", &tn, "in_transit", "2026-11-20T10:00:00Z").await;
    app.settle().await;
    let r = cancel(&app, &c, "cancel-c").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (409, "INVALID_TRANSITION")
    );
    let r2 = cancel(&app, &c, "cancel-c").await;
    r2.assert_replays(&r);
}
