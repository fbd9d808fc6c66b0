//! Orders (GUARANTEES.md: "The integrator API", "Idempotency keys", "Orders
//! follow their shipment") against the simulator: every answer, each
//! idempotency rule on `/v1/orders`, payment events, orders following their
//! shipment, background fulfilment, and the money test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use waybill::tools::simulator::SimConfig;
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

fn rows<'a>(ledger: &'a Value, kind: &str) -> &'a Vec<Value> {
    ledger[kind].as_array().unwrap()
}

#[tokio::test]
async fn an_order_is_reserved_charged_shipped_and_confirmed() {
    let (app, sim) = app_with_sim(SimConfig::default()).await;
    let r = place_order(&app, "o1-key", &order_body("o-1", "cus-1", "SKU-1", 2)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "CONFIRMED");
    assert_eq!(v["order_id"], "o-1");
    assert_eq!(v["amount_cents"], 2599);
    assert_eq!(v["currency"], "EUR");
    let shipment_id = v["shipment_id"].as_str().unwrap().to_string();
    assert!(shipment_id.starts_with("shp_"));
    let tx = v["transaction_id"].as_str().unwrap().to_string();
    let tn = v["tracking_number"].as_str().unwrap().to_string();

    let l = ledger(sim).await;
    let charges = keyed_rows(&l, "charges", "charge:acme:o-1");
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["transaction_id"], tx.as_str());
    assert_eq!(charges[0]["amount_cents"], 2599);
    assert_eq!(keyed_rows(&l, "reservations", "reserve:acme:o-1").len(), 1);
    let labels = keyed_rows(&l, "labels", &format!("label:{shipment_id}"));
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0]["tracking_number"], tn.as_str());

    let o = get_order(&app, "acme-key", "o-1").await;
    assert_eq!(o.status, 200);
    let o = o.json();
    assert_eq!(o["status"], "CONFIRMED");
    assert_eq!(o["transaction_id"], tx.as_str());
    assert_eq!(o["tracking_number"], tn.as_str());
    assert_eq!(o["payment_history"], json!([]));
    assert_eq!(o["shipments"][0]["shipment_id"], shipment_id.as_str());
    assert_eq!(o["shipments"][0]["status"], "LABEL_CREATED");
    assert_eq!(o["shipments"][0]["order_id"], "o-1");

    // A replay repeats the answer byte for byte; nothing runs again.
    let again = place_order(&app, "o1-key", &order_body("o-1", "cus-1", "SKU-1", 2)).await;
    again.assert_replays(&r);
    assert_eq!(rows(&ledger(sim).await, "charges").len(), 1);
    // Another partner does not see it.
    assert_eq!(get_order(&app, "globex-key", "o-1").await.status, 404);
}

#[tokio::test]
async fn a_declined_payment_is_402_with_the_reservation_released() {
    let (app, sim) = app_with_sim(SimConfig::default()).await;
    let body = order_body("o-dec", "decline-7", "SKU-1", 1);
    let r = place_order(&app, "dec-key", &body).await;
    assert_eq!(r.status, 402, "{:?}", r.body);
    assert_eq!(r.code(), "PAYMENT_FAILED");
    let l = ledger(sim).await;
    assert!(keyed_rows(&l, "charges", "charge:acme:o-dec").is_empty());
    let res = keyed_rows(&l, "reservations", "reserve:acme:o-dec");
    assert_eq!(res.len(), 1);
    assert_eq!(res[0]["released"], true);
    let o = get_order(&app, "acme-key", "o-dec").await.json();
    assert_eq!(o["status"], "FAILURE");
    assert_eq!(o["failure_reason"], "PAYMENT_FAILED");
    assert_eq!(o["shipments"], json!([]));
    let again = place_order(&app, "dec-key", &body).await;
    again.assert_replays(&r);
}

#[tokio::test]
async fn insufficient_stock_is_422_and_replayed() {
    let (app, sim) = app_with_sim(SimConfig {
        stock: [("SKU-LOW".to_string(), 1)].into_iter().collect(),
        ..SimConfig::default()
    })
    .await;
    let body = order_body("o-low", "cus-1", "SKU-LOW", 2);
    let r = place_order(&app, "low-key", &body).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.code(), "INSUFFICIENT_STOCK");
    let o = get_order(&app, "acme-key", "o-low").await.json();
    assert_eq!(o["status"], "FAILURE");
    assert_eq!(o["failure_reason"], "INSUFFICIENT_STOCK");
    let l = ledger(sim).await;
    assert!(rows(&l, "charges").is_empty());
    assert!(keyed_rows(&l, "reservations", "reserve:acme:o-low").is_empty());
    let again = place_order(&app, "low-key", &body).await;
    again.assert_replays(&r);
}

#[tokio::test]
async fn the_same_order_id_under_another_key_is_order_exists() {
    let (app, sim) = app_with_sim(SimConfig::default()).await;
    let body = order_body("o-dup", "cus-1", "SKU-1", 1);
    assert_eq!(place_order(&app, "first", &body).await.status, 201);
    let r = place_order(&app, "second", &body).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "ORDER_EXISTS");
    let again = place_order(&app, "second", &body).await;
    again.assert_replays(&r);
    assert_eq!(
        keyed_rows(&ledger(sim).await, "charges", "charge:acme:o-dup").len(),
        1
    );
    // The same key with another body is a conflict, as everywhere.
    let other = place_order(&app, "first", &order_body("o-dup", "cus-2", "SKU-1", 1)).await;
    assert_eq!(other.code(), "IDEMPOTENCY_CONFLICT");
}

#[tokio::test]
async fn orders_are_validated_field_by_field() {
    let app = spawn_app().await;
    let mut body = order_body("o-bad", "cus", "SKU", 1);
    body["amount_cents"] = json!(0);
    body["currency"] = json!("euro");
    body["items"] = json!([]);
    let r = place_order(&app, "bad", &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "VALIDATION_FAILED");
    let fields: HashSet<String> = r.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        fields,
        ["/amount_cents", "/currency", "/items"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    // Validation runs before anything, so the key is unused.
    let r = place_order(&app, "bad", &order_body("o-ok", "cus", "SKU", 1)).await;
    assert_ne!(r.code(), "IDEMPOTENCY_CONFLICT");
}

/// A step before payment success that cannot complete: 503, the order is
/// PENDING, the key unused; the retry with the same key resumes it.
#[tokio::test]
async fn an_unreachable_downstream_is_503_and_the_retry_resumes_the_order() {
    let app = spawn_app().await; // its downstream is a closed port
    let body = order_body("o-res", "cus-1", "SKU-1", 1);
    let r = place_order(&app, "res-key", &body).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        get_order(&app, "acme-key", "o-res").await.json()["status"],
        "PENDING"
    );
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        ..SimConfig::default()
    })
    .await;
    let app = app
        .restart_with(Options {
            downstream: format!("http://{sim}"),
            ..Options::default()
        })
        .await;
    let r = place_order(&app, "res-key", &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("idempotent-replayed"), None);
    assert_eq!(r.json()["status"], "CONFIRMED");
    let l = ledger(sim).await;
    assert_eq!(keyed_rows(&l, "charges", "charge:acme:o-res").len(), 1);
    assert_eq!(
        keyed_rows(&l, "reservations", "reserve:acme:o-res").len(),
        1
    );
}

async fn await_order_status(app: &TestApp, order_id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        last = get_order(app, "acme-key", order_id).await.json();
        if last["status"] == status {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{order_id} never became {status}: {last}");
}

/// Carrier down: the paid order is 201 PAYMENT_SUCCESS_PENDING_FULFILLMENT;
/// once the carrier is back, background fulfilment makes it CONFIRMED with
/// no client call, also across a restart in between. The stored answer
/// stays what it was.
#[tokio::test]
async fn background_fulfilment_confirms_a_paid_order_once_the_carrier_is_back() {
    let (app, split, sim) = app_with_carrier_down().await;
    let body = order_body("o-bg", "cus-1", "SKU-1", 1);
    let r = place_order(&app, "bg-key", &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "PAYMENT_SUCCESS_PENDING_FULFILLMENT");
    assert_eq!(v["tracking_number"], Value::Null);
    let shipment_id = v["shipment_id"].as_str().unwrap().to_string();
    let o = get_order(&app, "acme-key", "o-bg").await.json();
    assert_eq!(o["status"], "PAYMENT_SUCCESS_PENDING_FULFILLMENT");
    assert_eq!(o["shipments"][0]["status"], "CREATED");

    // A restart in between: the queue is in the store.
    let app = app.restart().await;
    split.carrier_down.store(false, Ordering::SeqCst);
    let o = await_order_status(&app, "o-bg", "CONFIRMED").await;
    assert_eq!(o["shipments"][0]["status"], "LABEL_CREATED");
    let l = ledger(sim).await;
    assert_eq!(
        keyed_rows(&l, "labels", &format!("label:{shipment_id}")).len(),
        1
    );
    assert_eq!(keyed_rows(&l, "charges", "charge:acme:o-bg").len(), 1);
    // The stored answer is the answer to that request.
    let again = place_order(&app, "bg-key", &body).await;
    assert_eq!(again.body, r.body);
}

/// Cancelling the shipment of an order waiting for fulfilment stops it and
/// makes the order CANCELLED: at once, though the carrier is down, owing
/// the void of whatever the label request may have bought, which is made
/// once the carrier answers.
#[tokio::test]
async fn cancelling_a_pending_fulfilment_stops_it() {
    let (app, split, sim) = app_with_carrier_down().await;
    let r = place_order(&app, "cx-key", &order_body("o-cx", "cus-1", "SKU-1", 1)).await;
    let shipment_id = r.json()["shipment_id"].as_str().unwrap().to_string();
    let c = cancel(&app, &shipment_id, "cx-cancel").await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    assert_eq!(c.json()["status"], "CANCELLED");
    assert_eq!(c.json()["label_void"]["status"], "owed");
    let o = await_order_status(&app, "o-cx", "CANCELLED").await;
    assert_eq!(o["shipments"][0]["status"], "CANCELLED");
    split.carrier_down.store(false, Ordering::SeqCst);
    let shipment = void_settled(&Api::acme(app.addr), &shipment_id).await;
    assert_eq!(shipment["label_void"]["status"], "voided", "{shipment}");
    // Whatever the request bought at the carrier, it was voided.
    let rows = labels_of(sim, &shipment_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["voided"], true);
    // A replay of the cancel is its first answer.
    cancel(&app, &shipment_id, "cx-cancel")
        .await
        .assert_replays(&c);
}

fn payment(id: &str, order_id: &str, kind: &str) -> Vec<u8> {
    json!({"id": id, "type": kind, "data": {"order_id": order_id}})
        .to_string()
        .into_bytes()
}

/// Delivers a payment event, accepted, and waits until it is dispatched.
async fn pay(app: &TestApp, id: &str, order_id: &str, kind: &str) {
    let body = payment(id, order_id, kind);
    let h = signed(SchemeKind::Github, GH_SECRET, &body, 0, id);
    assert_eq!(app.webhook("pay", &h, &body).await.status, 202, "{id}");
    app.settle().await;
}

/// Payment events join the order's history, parked while the order does
/// not exist yet; a refund sets the payment status; fulfilment is not
/// touched.
#[tokio::test]
async fn payment_events_are_kept_in_the_orders_history() {
    let (app, _sim) = app_with_sim(SimConfig::default()).await;
    // Before the order exists: parked.
    pay(&app, "pay-early", "o-pay", "payment_intent.succeeded").await;
    let e = app.admin_get("/admin/events/pay/pay-early").await.json();
    assert_eq!(e["outcome"], "parked");
    let r = place_order(&app, "pay-key", &order_body("o-pay", "cus-1", "SKU-1", 1)).await;
    assert_eq!(r.status, 201);
    let e = app.admin_get("/admin/events/pay/pay-early").await.json();
    assert_eq!(e["outcome"], "applied", "unparked by the order's creation");
    let o = get_order(&app, "acme-key", "o-pay").await.json();
    assert_eq!(o["payment_status"], "SUCCEEDED");
    assert_eq!(o["payment_history"][0]["event_id"], "pay-early");

    pay(&app, "pay-refund", "o-pay", "charge.refunded").await;
    let o = get_order(&app, "acme-key", "o-pay").await.json();
    assert_eq!(o["payment_status"], "REFUNDED");
    assert_eq!(o["payment_history"].as_array().unwrap().len(), 2);
    assert_eq!(o["status"], "CONFIRMED", "payments never change fulfilment");
    // Found by order id in the admin search.
    let found = app.admin_get("/admin/events?order_id=o-pay").await.json();
    assert_eq!(found["events"].as_array().unwrap().len(), 2);
}

/// A confirmed order follows its shipment: SHIPPED, then DELIVERED.
#[tokio::test]
async fn a_confirmed_order_follows_its_shipment() {
    let (app, _sim) = app_with_sim(SimConfig::default()).await;
    let r = place_order(&app, "f-key", &order_body("o-f", "cus-1", "SKU-1", 1)).await;
    let tn = r.json()["tracking_number"].as_str().unwrap().to_string();
    send_tracking(&app, "f-1", &tn, "in_transit", "2026-11-20T10:00:00Z").await;
    app.settle().await;
    assert_eq!(
        get_order(&app, "acme-key", "o-f").await.json()["status"],
        "SHIPPED"
    );
    send_tracking(&app, "f-2", &tn, "delivered", "2026-11-21T10:00:00Z").await;
    app.settle().await;
    assert_eq!(
        get_order(&app, "acme-key", "o-f").await.json()["status"],
        "DELIVERED"
    );
}

#[tokio::test]
async fn orders_are_listed_newest_first_in_pages_per_partner() {
    let (app, _sim) = app_with_sim(SimConfig::default()).await;
    for i in 0..5 {
        let r = place_order(
            &app,
            &format!("list-{i}"),
            &order_body(&format!("o-list-{i}"), "cus", "SKU-1", 1),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let list = |q: &'static str, key: &'static str| {
        let addr = app.addr;
        async move {
            Client::new(addr)
                .send(
                    "GET",
                    &format!("/v1/orders{q}"),
                    &[("Authorization".into(), format!("Bearer {key}"))],
                    bytes::Bytes::new(),
                )
                .await
        }
    };
    let p = list("?page=1&page_size=2", "acme-key").await.json();
    assert_eq!(p["count"], 5);
    assert_eq!(p["page"], 1);
    assert_eq!(p["page_size"], 2);
    let ids: Vec<&str> = p["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o-list-4", "o-list-3"]);
    let last = list("?page=3&page_size=2", "acme-key").await.json();
    assert_eq!(last["results"].as_array().unwrap().len(), 1);
    let past = list("?page=9", "acme-key").await.json();
    assert_eq!(past["results"], json!([]));
    let default = list("", "acme-key").await.json();
    assert_eq!(default["page_size"], 20);
    assert_eq!(list("", "globex-key").await.json()["count"], 0);
    for bad in ["?page=0", "?page_size=101", "?page_size=0", "?page=x"] {
        let r = Client::new(app.addr)
            .send(
                "GET",
                &format!("/v1/orders{bad}"),
                &[("Authorization".into(), "Bearer acme-key".into())],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.code(), "VALIDATION_FAILED");
    }
}

/// The money test: 200 orders through a payment service and an inventory
/// that lose half their answers and fail a fifth of calls, each retried by
/// its client until the answer is final. The ledger shows one charge and
/// one reservation per order, every declined or out-of-stock order's
/// reservation released, and every answer's transaction_id is a ledger row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_orders_through_faults_charge_each_once() {
    let (app, sim) = app_with_sim(SimConfig {
        stock: [("SKU-SCARCE".to_string(), 20)].into_iter().collect(),
        ..lossy(42)
    })
    .await;
    let app = Arc::new(app);
    let results = concurrently(200, |n| {
        let app = app.clone();
        async move {
            let customer = if n % 10 == 0 { "decline-x" } else { "cus" };
            let sku = if n % 7 == 0 { "SKU-SCARCE" } else { "SKU-1" };
            let body = order_body(&format!("m-{n}"), customer, sku, 3);
            for _ in 0..200 {
                let r = place_order(&app, &format!("money-{n}"), &body).await;
                match r.status.as_u16() {
                    503 => continue,
                    201 | 402 | 422 => return (n, r.status.as_u16(), r.json()),
                    other => panic!("m-{n}: unexpected {other}: {:?}", r.body),
                }
            }
            panic!("m-{n} never got a final answer");
        }
    })
    .await;
    let answers: HashMap<_, _> = results
        .into_iter()
        .map(|(n, status, body)| (n, (status, body)))
        .collect();
    let l = ledger(sim).await;
    let charges_by_key: HashMap<String, Vec<&Value>> =
        rows(&l, "charges").iter().fold(HashMap::new(), |mut m, r| {
            m.entry(r["idempotency_key"].as_str().unwrap().to_string())
                .or_default()
                .push(r);
            m
        });
    for (n, (status, body)) in &answers {
        let charges = charges_by_key
            .get(&format!("charge:acme:m-{n}"))
            .map_or(0, Vec::len);
        let reservations = keyed_rows(&l, "reservations", &format!("reserve:acme:m-{n}"));
        assert!(reservations.len() <= 1, "m-{n}: reserved twice");
        match status {
            201 => {
                assert_eq!(charges, 1, "m-{n}: charged {charges} times");
                assert_eq!(reservations.len(), 1);
                let tx = body["transaction_id"].as_str().unwrap();
                assert_eq!(
                    charges_by_key[&format!("charge:acme:m-{n}")][0]["transaction_id"],
                    tx
                );
            }
            402 => {
                assert_eq!(charges, 0, "m-{n}: a declined order was charged");
                assert_eq!(reservations.len(), 1);
                assert_eq!(reservations[0]["released"], true, "m-{n}");
            }
            422 => {
                assert_eq!(charges, 0);
                assert!(reservations.is_empty());
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(
        rows(&l, "charges").len(),
        answers.values().filter(|(s, _)| *s == 201).count(),
        "no charge without its order"
    );
    assert!(answers.values().any(|(s, _)| *s == 402));
    assert!(answers.values().any(|(s, _)| *s == 422));
}

/// Twenty concurrent requests with one key: one runs the order, the others
/// get 409 IDEMPOTENCY_IN_PROGRESS or the replay of its answer; the
/// payment service has one charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_place_one_order() {
    let (app, sim) = app_with_sim(SimConfig {
        latency: std::time::Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await;
    let app = Arc::new(app);
    let body = order_body("o-conc", "cus-1", "SKU-1", 1);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            place_order(&app, "conc-key", &body).await
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => created.push(r),
            409 => assert_eq!(r.code(), "IDEMPOTENCY_IN_PROGRESS"),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert!(!created.is_empty());
    assert!(created.iter().all(|r| r.body == created[0].body));
    assert_eq!(
        created
            .iter()
            .filter(|r| r.header("idempotent-replayed").is_none())
            .count(),
        1,
        "exactly one request ran the order"
    );
    let l = ledger(sim).await;
    assert_eq!(keyed_rows(&l, "charges", "charge:acme:o-conc").len(), 1);
    assert_eq!(
        keyed_rows(&l, "reservations", "reserve:acme:o-conc").len(),
        1
    );
}
