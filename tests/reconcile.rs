//! "Books that balance" (GUARANTEES.md) on the built binary, on both
//! stores: after a chaos run (lost answers, kill -9, the breaker opening
//! and closing) `waybill reconcile` finds nothing; each kind of
//! discrepancy made at the simulator is found with its ids, `--fix`
//! repairs what is safe, and a second run finds only the charges, which
//! are reported, never refunded. The background pass counts them in
//! `waybill_reconcile_discrepancies`.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};
use support::*;
use waybill::tools::simulator::SimConfig;

/// `waybill reconcile` on `config` with `args`: its exit code and its JSON
/// lines.
fn reconcile(config: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, Vec<Value>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waybill"))
        .arg("reconcile")
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 1,
        "{code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, lines)
}

/// A call to the simulator under `key`, as if made outside the gateway.
async fn direct(sim: SocketAddr, path: &str, key: &str, body: Value) -> Value {
    let headers = [
        ("Idempotency-Key".to_string(), key.to_string()),
        ("Content-Type".to_string(), "application/json".to_string()),
    ];
    let r = Client::new(sim)
        .send("POST", path, &headers, body.to_string())
        .await;
    assert!(r.status.is_success(), "{path}: {:?}", r.body);
    r.json()
}

/// Sends `send` until its answer is final (not a 503), through whatever
/// the chaos does.
async fn until_final(mut send: impl AsyncFnMut() -> Result<Resp, String>) -> Resp {
    for _ in 0..200 {
        if let Ok(r) = send().await
            && r.status != 503
        {
            return r;
        }
    }
    panic!("never a final answer");
}

crate::on_both_stores!(
    after_a_chaos_run_the_books_balance,
    on_postgres_after_a_chaos_run_the_books_balance,
    chaos_then_reconcile
);

async fn chaos_then_reconcile(on_postgres: bool) {
    let Some((_pg, url)) = support::pg::store_env(on_postgres).await else {
        return;
    };
    let env = [("WAYBILL_DATABASE_URL", url.as_str())];
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        lost_response_rate: 0.4,
        fail_rate: 0.1,
        seed: Some(20261206),
        ..SimConfig::default()
    })
    .await;
    // The carrier goes down for the second round: its breaker opens, and
    // closes again once the carrier is back.
    let split = split_downstream(sim).await;
    let down = |on: bool| {
        split
            .carrier_down
            .store(on, std::sync::atomic::Ordering::SeqCst)
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config::acme_before_simulator(dir.path(), split.addr, on_postgres);
    let mut gw = Gateway::start_with_env(&config, &env);
    for round in 0..3 {
        down(round == 1);
        for n in 0..8 {
            let id = format!("chaos-{round}-{n}");
            let customer = if n % 4 == 0 { "decline-x" } else { "cus" };
            let body = order_body(&id, customer, "SKU-1", 1);
            let api = Api::acme(gw.addr);
            let placed = until_final(async || {
                Ok::<_, String>(api.place_order(&format!("k-{id}"), &body).await)
            })
            .await;
            assert!([201, 402].contains(&placed.status.as_u16()), "{placed:?}");
            // Every third paid order's shipment is cancelled.
            if placed.status == 201 && n % 3 == 0 {
                let shipment = placed.json()["shipment_id"].as_str().unwrap().to_string();
                let c = until_final(async || {
                    Ok::<_, String>(api.cancel(&shipment, &format!("c-{id}")).await)
                })
                .await;
                assert!([200, 409].contains(&c.status.as_u16()), "{c:?}");
            }
        }
        if round == 1 {
            let opened = gw.await_log(1, |v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("circuit breaker opened"))
            });
            assert_eq!(opened[0]["service"], "carrier");
            // Back: once its cooldown is over, a label call is the trial
            // that closes it.
            down(false);
            let api = Api::acme(gw.addr);
            let id = create_shipment(gw.addr, "o-trial").await;
            let bought = eventually(30, async || {
                api.buy_label(&id, "k-trial", "{}").await.status == 201
            })
            .await;
            assert!(bought, "the carrier answers again");
            let closed = gw.await_log(1, |v| {
                v["message"] == "circuit breaker changed state" && v["state"] == "closed"
            });
            assert_eq!(closed[0]["service"], "carrier");
        }
        // A kill -9 between rounds; the next round starts on what it left.
        gw.kill9();
        gw = Gateway::start_with_env(&config, &env);
    }
    down(false);
    // Every owed void settled before the books are read: a void under way
    // is no discrepancy, but this run proves the voids are made.
    let settled = eventually(60, async || {
        let text = get(gw.addr, "/metrics").await;
        metric(
            &String::from_utf8_lossy(&text.body),
            "waybill_label_voids_owed",
            "",
        ) == 0.0
    })
    .await;
    assert!(settled, "owed voids settle");
    // sled is one process's: the gateway stops for the command.
    assert_eq!(gw.terminate(), Some(0));
    let (code, lines) = reconcile(&config, &env, &[]);
    assert_eq!((code, lines), (0, Vec::new()));
}

crate::on_both_stores!(
    each_discrepancy_is_found_and_the_safe_ones_repaired,
    on_postgres_each_discrepancy_is_found_and_the_safe_ones_repaired,
    injected_discrepancies
);

async fn injected_discrepancies(on_postgres: bool) {
    let Some((_pg, url)) = support::pg::store_env(on_postgres).await else {
        return;
    };
    let env = [("WAYBILL_DATABASE_URL", url.as_str())];
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config::acme_before_simulator(dir.path(), sim, on_postgres);
    // The background pass, every second.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[reconcile]\ninterval = \"1s\"\n")).unwrap();
    let gw = Gateway::start_with_env(&config, &env);
    let api = Api::acme(gw.addr);

    // What balances: a confirmed order, a cancelled labelled shipment.
    let placed = api
        .place_order("k-fine", &order_body("o-fine", "cus", "SKU-1", 1))
        .await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let cancelled = create_shipment(gw.addr, "o-cancelled").await;
    let label = api.buy_label(&cancelled, "k-label", "{}").await.json();
    assert_eq!(api.cancel(&cancelled, "k-cancel").await.status, 200);

    // What does not, made at the services behind the gateway's back.
    let ghost = direct(
        sim,
        "/carrier/labels",
        "label:shp_ghost",
        json!({"shipment_id": "shp_ghost"}),
    )
    .await;
    direct(
        sim,
        "/payments/charges",
        "charge:acme:o-ghost",
        json!({"amount_cents": 100, "currency": "EUR", "customer_id": "cus"}),
    )
    .await;
    let ledger = get(sim, "/_sim/ledger").await.json();
    let charge = keyed_rows(&ledger, "charges", "charge:acme:o-fine")[0]["transaction_id"]
        .as_str()
        .unwrap()
        .to_string();
    let changed = Client::new(sim)
        .send(
            "POST",
            &format!("/_sim/charges/{charge}/amount?cents=1"),
            &[],
            "",
        )
        .await;
    assert_eq!(changed.status, 200);
    let unvoid = format!(
        "/_sim/labels/{}/unvoid",
        label["label_id"].as_str().unwrap()
    );
    assert_eq!(
        Client::new(sim).send("POST", &unvoid, &[], "").await.status,
        200
    );
    let left = direct(
        sim,
        "/inventory/reservations",
        "reserve:acme:o-left",
        json!({"items": [{"sku": "SKU-1", "quantity": 1}]}),
    )
    .await;

    // The background pass counts each kind.
    let expected = [
        ("charge_without_order", 1.0),
        ("amount_mismatch", 1.0),
        ("label_without_shipment", 1.0),
        ("label_active_on_cancelled_shipment", 1.0),
        ("reservation_without_order", 1.0),
        ("reservation_of_failed_order", 0.0),
    ];
    let counted = eventually(20, async || {
        let text = String::from_utf8_lossy(&get(gw.addr, "/metrics").await.body).to_string();
        expected.iter().all(|(kind, n)| {
            metric(
                &text,
                "waybill_reconcile_discrepancies",
                &format!("kind=\"{kind}\""),
            ) == *n
        })
    })
    .await;
    assert!(counted, "the gauge counts each kind");
    assert_eq!(gw.terminate(), Some(0));

    let (code, found) = reconcile(&config, &env, &[]);
    assert_eq!(code, 1);
    let by_kind = |lines: &[Value], kind: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["kind"] == kind)
            .cloned()
            .collect()
    };
    assert_eq!(found.len(), 5, "{found:#?}");
    let l = &by_kind(&found, "label_without_shipment")[0];
    assert_eq!(l["service_id"], ghost["label_id"]);
    assert_eq!(l["shipment_id"], "shp_ghost");
    let c = &by_kind(&found, "label_active_on_cancelled_shipment")[0];
    assert_eq!(c["shipment_id"], cancelled.as_str());
    assert_eq!(c["service_id"], label["label_id"]);
    let m = &by_kind(&found, "amount_mismatch")[0];
    assert_eq!(
        (&m["order_id"], &m["service_id"]),
        (&json!("o-fine"), &json!(charge))
    );
    assert!(m["differs"].as_str().unwrap().contains("1 EUR"), "{m}");
    assert_eq!(
        by_kind(&found, "charge_without_order")[0]["order_id"],
        "o-ghost"
    );
    let r = &by_kind(&found, "reservation_without_order")[0];
    assert_eq!(r["service_id"], left["reservation_id"]);
    assert!(found.iter().all(|d| d["fixed"] == false));

    // --fix: the labels voided, the reservation released; the charges
    // are reported, never refunded.
    let (code, fixed) = reconcile(&config, &env, &["--fix"]);
    assert_eq!(code, 1);
    for d in &fixed {
        let safe =
            !d["kind"].as_str().unwrap().starts_with("charge") && d["kind"] != "amount_mismatch";
        assert_eq!(d["fixed"], safe, "{d}");
    }
    let (code, after) = reconcile(&config, &env, &[]);
    assert_eq!(code, 1);
    let mut kinds: Vec<&str> = after.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["amount_mismatch", "charge_without_order"]);
    let ledger = get(sim, "/_sim/ledger").await.json();
    assert_eq!(
        ledger["charges"].as_array().unwrap().len(),
        2,
        "nothing refunded"
    );
    let voided = |id: &Value| ledger_row(&ledger, "labels", ("label_id", id))["voided"].clone();
    assert_eq!(voided(&ghost["label_id"]), true);
    assert_eq!(voided(&label["label_id"]), true);
    let kept = ledger_row(
        &ledger,
        "reservations",
        ("reservation_id", &left["reservation_id"]),
    );
    assert_eq!(kept["released"], true, "{kept}");
    // Only records made after a time: none after now.
    let later = waybill::clock::rfc3339_ms(waybill::clock::now_ms() + 60_000);
    assert_eq!(
        reconcile(&config, &env, &["--since", &later]),
        (0, Vec::new())
    );
}
