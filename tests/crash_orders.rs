//! "Once per key", "No partial state" (GUARANTEES.md) for orders: the built
//! binary dies (`abort`, a real process death) between every two steps of an
//! order: after the reservation, after the charge, after the charge is
//! recorded, after the shipment, after the label. After a restart, the retry
//! with the same key finishes the order, the payment service has one charge,
//! the inventory one reservation, the carrier one label, and the store is
//! whole. On both adapters: sled, and PostgreSQL (`support::pg`).

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use waybill::store::Store;

use serde_json::{Value, json};
use support::pg::Schema;
use support::*;
use waybill::tools::simulator::SimConfig;

fn write_config(dir: &Path, sim: SocketAddr, pg: Option<&Schema>) -> std::path::PathBuf {
    config::acme_before_simulator(dir, sim, pg.is_some())
}

async fn place(addr: SocketAddr, order_id: &str, key: &str) -> Result<Resp, String> {
    let body = json!({
        "order_id": order_id, "customer_id": "cus-1", "amount_cents": 1000, "currency": "EUR",
        "items": [{"sku": "SKU-1", "quantity": 1}],
        "ship_to": {"name": "A", "street1": "1", "city": "C", "postal_code": "1", "country": "DE"},
    });
    Client::new(addr)
        .try_send(
            "POST",
            "/v1/orders",
            &partner_headers(key),
            body.to_string(),
        )
        .await
}

crate::on_both_stores!(
    an_order_killed_between_any_two_steps_is_finished_by_the_retry_and_charged_once,
    on_postgres_an_order_killed_between_any_two_steps_is_finished_and_charged_once,
    killed_between_steps
);

async fn killed_between_steps(on_postgres: bool) {
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        ..SimConfig::default()
    })
    .await;
    for failpoint in [
        "order-after-reserve",
        "order-after-charge",
        "order-after-charge-recorded",
        "order-after-shipment",
        "order-after-label",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let Some(pg) = support::pg::if_postgres(on_postgres).await else {
            return;
        };
        let url = pg.as_ref().map_or(String::new(), |s| s.url.clone());
        let config = write_config(dir.path(), sim, pg.as_ref());
        let env = [("WAYBILL_DATABASE_URL", url.as_str())];
        let failing = format!("{failpoint}=return");
        let gw = Gateway::start_with_env(&config, &[env[0], ("FAILPOINTS", &failing)]);
        let order_id = format!("o-{failpoint}");
        let key = format!("key-{failpoint}");
        let died = place(gw.addr, &order_id, &key).await;
        died_at(gw, &died, failpoint);

        let gw = Gateway::start_with_env(&config, &env);
        // On PostgreSQL the retry waits out the dead claim's lease; on
        // sled the restart freed the key.
        let first = if pg.is_some() {
            past_dead_claim(async || place(gw.addr, &order_id, &key).await.unwrap()).await
        } else {
            place(gw.addr, &order_id, &key).await.unwrap()
        };
        assert_eq!(first.status, 201, "{failpoint}: {:?}", first.body);
        let answer = first.json();
        assert_eq!(answer["status"], "CONFIRMED", "{failpoint}");
        // The request's log line names the order and its shipment (the
        // retries that waited out a lease are logged too, without one).
        let with_order =
            |v: &Value| v["message"] == "request" && v["order_id"] == order_id.as_str();
        let logged = gw.await_log(1, |v| with_order(v) && v["shipment_id"].is_string());
        assert_eq!(logged.len(), 1, "{failpoint}");
        let seen = gw.log_lines(with_order).len();
        assert_eq!(logged[0]["shipment_id"], answer["shipment_id"]);
        assert_eq!(logged[0]["partner"], "acme");
        let replay = place(gw.addr, &order_id, &key).await.unwrap();
        assert_eq!(replay.body, first.body, "{failpoint}");
        let other = place(gw.addr, &order_id, &format!("{key}-other"))
            .await
            .unwrap();
        assert_eq!(other.code(), "ORDER_EXISTS", "{failpoint}");
        // The replay and the refusal are logged with the order too.
        let logged = gw.await_log(seen + 2, with_order);
        assert_eq!(logged.len(), seen + 2, "{failpoint}");

        let ledger = get(sim, "/_sim/ledger").await.json();
        let charges = keyed_rows(&ledger, "charges", &format!("charge:acme:{order_id}"));
        assert_eq!(charges.len(), 1, "{failpoint}: charged once");
        assert_eq!(
            charges[0]["transaction_id"], answer["transaction_id"],
            "{failpoint}"
        );
        assert_eq!(
            keyed_rows(&ledger, "reservations", &format!("reserve:acme:{order_id}")).len(),
            1,
            "{failpoint}: reserved once"
        );
        let shipment_id = answer["shipment_id"].as_str().unwrap();
        let labels = keyed_rows(&ledger, "labels", &format!("label:{shipment_id}"));
        assert_eq!(labels.len(), 1, "{failpoint}: one label");
        assert_eq!(labels[0]["tracking_number"], answer["tracking_number"]);
        gw.terminate();

        let store: std::sync::Arc<dyn Store> = match &pg {
            None => {
                let store = open_store(&dir.path().join("data")).await;
                assert_eq!(
                    store.integrity_problems().unwrap(),
                    Vec::<String>::new(),
                    "{failpoint}"
                );
                store
            }
            Some(schema) => std::sync::Arc::new(schema.store(2)),
        };
        let order = store
            .order(&waybill::domain::ids::OrderKey::new(
                "acme".into(),
                order_id.as_str().into(),
            ))
            .await
            .unwrap()
            .unwrap();
        let shipment = store
            .shipment(order.progress.shipment_id.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shipment.order_id, order_id);
        assert!(shipment.label.is_some(), "{failpoint}");
        tokio::task::spawn_blocking(move || store.close().unwrap())
            .await
            .unwrap();
    }
}
