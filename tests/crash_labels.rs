//! "Once per key", "No partial state" (GUARANTEES.md) for label purchase: the
//! built binary is made to die (`abort`, a real process death) at each step
//! boundary of buying a label: after claiming the key, after the carrier
//! answered, and before the local commit. After a restart, retrying with the
//! same key gives one label, bought once at the carrier, never two, and the key
//! is never stuck. On both adapters: sled, and PostgreSQL (`support::pg`),
//! where the retry waits out the dead process's claim (a short lease here).

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::*;
use waybill::tools::simulator::SimConfig;

fn write_config(dir: &Path, sim: SocketAddr, on_postgres: bool) -> std::path::PathBuf {
    config::acme_before_simulator(dir, sim, on_postgres)
}

async fn buy(addr: SocketAddr, id: &str, key: &str) -> Result<Resp, String> {
    Client::new(addr)
        .try_send(
            "POST",
            &format!("/v1/shipments/{id}/label"),
            &partner_headers(key),
            "{}",
        )
        .await
}

crate::on_both_stores!(
    a_label_purchase_killed_at_any_step_is_bought_once,
    on_postgres_a_label_purchase_killed_at_any_step_is_bought_once,
    killed_at_each_step
);

async fn killed_at_each_step(on_postgres: bool) {
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        ..SimConfig::default()
    })
    .await;

    for failpoint in [
        "label-after-claim",
        "label-after-carrier",
        "label-before-commit",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let Some(pg) = support::pg::if_postgres(on_postgres).await else {
            return;
        };
        let url = pg.as_ref().map_or(String::new(), |s| s.url.clone());
        let config = write_config(dir.path(), sim, on_postgres);
        let env = [("WAYBILL_DATABASE_URL", url.as_str())];
        let failing = format!("{failpoint}=return");
        let gw = Gateway::start_with_env(&config, &[env[0], ("FAILPOINTS", &failing)]);
        let id = create_shipment(gw.addr, failpoint).await;
        let key = format!("buy-{failpoint}");
        let died = buy(gw.addr, &id, &key).await;
        died_at(gw, &died, failpoint);

        let gw = Gateway::start_with_env(&config, &env);
        // On PostgreSQL the retry waits out the dead claim's lease; on
        // sled the restart freed the key.
        let first = if pg.is_some() {
            past_dead_claim(async || buy(gw.addr, &id, &key).await.unwrap()).await
        } else {
            buy(gw.addr, &id, &key).await.unwrap()
        };
        assert_eq!(first.status, 201, "{failpoint}: {:?}", first.body);
        let label = first.json();
        let replay = buy(gw.addr, &id, &key).await.unwrap();
        assert_eq!(replay.body, first.body, "{failpoint}");
        let other = buy(gw.addr, &id, &format!("{key}-other")).await.unwrap();
        assert_eq!(other.code(), "LABEL_EXISTS", "{failpoint}");

        let rows = labels_of(sim, &id).await;
        assert_eq!(rows.len(), 1, "{failpoint}: bought once at the carrier");
        assert_eq!(rows[0]["label_id"], label["label_id"], "{failpoint}");
        let shown = Api::acme(gw.addr).shipment(&id).await.json();
        assert_eq!(shown["status"], "LABEL_CREATED", "{failpoint}");
        assert_eq!(shown["label"]["label_id"], label["label_id"], "{failpoint}");
        gw.kill9();
    }
}

crate::on_both_stores!(
    a_shipment_cancelled_while_the_carrier_is_down_owes_its_void_across_a_kill,
    on_postgres_a_shipment_cancelled_while_the_carrier_is_down_owes_its_void_across_a_kill,
    cancelled_while_the_carrier_is_down
);

/// "Labels" (GUARANTEES.md; 11.4): with the carrier down, an order is
/// paid and waits for its label; its shipment is cancelled at once (200),
/// owing the void. Killed with the void still owed, the gateway restarts,
/// and once the carrier is back (losing some answers) it asks under the
/// shipment's key and voids what it finds: the carrier holds no active
/// label for the shipment, and sold it one at most.
async fn cancelled_while_the_carrier_is_down(on_postgres: bool) {
    let Some((_pg, url)) = support::pg::store_env(on_postgres).await else {
        return;
    };
    let env = [("WAYBILL_DATABASE_URL", url.as_str())];
    let (sim, split) = sim_with_carrier_down().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), split.addr, on_postgres);
    let gw = Gateway::start_with_env(&config, &env);
    let api = Api::acme(gw.addr);

    let placed = api
        .place_order("void-order", &order_body("o-void", "cus", "SKU-1", 1))
        .await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    assert_eq!(
        placed.json()["status"],
        "PAYMENT_SUCCESS_PENDING_FULFILLMENT"
    );
    let id = placed.json()["shipment_id"].as_str().unwrap().to_string();

    let cancelled = api.cancel(&id, "void-cancel").await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "CANCELLED");
    assert_eq!(cancelled.json()["label_void"]["status"], "owed");
    let metrics = get(gw.addr, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(metric(&text, "waybill_label_voids_owed", ""), 1.0);
    gw.kill9();

    // Back, losing its first answer and its third: the void is settled
    // through both, after the restart.
    split
        .carrier_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    split
        .carrier_answers_lost
        .store(0b101, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start_with_env(&config, &env);
    let api = Api::acme(gw.addr);
    let settled = void_settled(&api, &id).await;
    assert_eq!(settled["status"], "CANCELLED");
    assert_eq!(settled["label_void"]["status"], "voided", "{settled}");

    let labels = labels_of(sim, &id).await;
    assert_eq!(labels.len(), 1, "one label sold at most: {labels:?}");
    assert_eq!(labels[0]["voided"], true, "no active label: {labels:?}");
    assert_eq!(settled["label_void"]["label_id"], labels[0]["label_id"]);
    let metrics = get(gw.addr, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(metric(&text, "waybill_label_voids_owed", ""), 0.0);
    // The order follows its shipment.
    let order = api.order("o-void").await.json();
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(gw.terminate(), Some(0));
}
