//! "Applied once" (GUARANTEES.md) under `kill -9`: the built binary works through a backlog of
//! thousands of tracking events and is killed at a random point, several
//! times. After each kill every event is either still in the inbox or was
//! dispatched exactly once, never both; shipments hold exactly the events
//! dispatched to them; and after a last restart the inbox drains to 0 and
//! every shipment has the status the rule gives its events.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use waybill::store::prelude::*;

use bytes::Bytes;
use serde_json::json;
use support::*;
use waybill::config::{Config, ProcessEnv};
use waybill::domain::shipment::{MAX_CARRIER_EVENTS, ShipmentStatus, StatusEvent, Timeline};
use waybill::store::{DispatchOutcome, NewEvent, SledStore};

const SHIPMENTS: usize = 100;
const BACKLOG: usize = 3000;
const ROUNDS: usize = 3;
const STATUSES: [&str; 7] = [
    "LABEL_CREATED",
    "IN_TRANSIT",
    "OUT_FOR_DELIVERY",
    "DELIVERED",
    "EXCEPTION",
    "RETURNED",
    "WEIRD",
];

fn config_text(dir: &Path) -> String {
    // Every status but the last, which the map leaves out.
    let statuses: Vec<(&str, &str)> = STATUSES[..STATUSES.len() - 1]
        .iter()
        .map(|s| (*s, *s))
        .collect();
    let carrier = config::tracking_source(
        "carrier",
        config::Shape::StandardWebhooks,
        "whsec_Y3Jhc2gtZGlzcGF0Y2gta2V5LTAwMDAwMDAwMDA=",
        &statuses,
    );
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n{carrier}",
        dir.join("data").display()
    )
}

async fn open(dir: &Path) -> Arc<SledStore> {
    open_store(&dir.join("data")).await
}

async fn close(store: Arc<SledStore>) {
    close_store(store).await
}

/// One generated tracking event: (id, tracking number, status, occurred_at ms).
type Generated = (String, String, &'static str, i64);

/// Puts `BACKLOG` events straight into the inbox of a stopped store, so the
/// gateway starts with a backlog to work through.
async fn fill_backlog(dir: &Path, round: usize, rng: &mut fastrand::Rng) -> Vec<Generated> {
    let store = open(dir).await;
    let mut generated = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..BACKLOG {
        // A few tracking numbers no shipment has: those events park.
        let tn = if rng.u8(..100) < 5 {
            format!("TN-NONE-{}", rng.u8(..5))
        } else {
            format!("TN-{}", rng.usize(..SHIPMENTS))
        };
        let status = STATUSES[rng.usize(..STATUSES.len())];
        let at_ms = 1_795_000_000_000 + rng.i64(0..10_000_000) * 1000;
        let at = waybill::clock::rfc3339_ms(at_ms as u64);
        let id = format!("r{round}-e{n}");
        let body = json!({"type": "tracking.updated", "data": {"tracking_number": tn, "status": status, "occurred_at": at}});
        generated.push((id.clone(), tn.clone(), status, at_ms));
        let fields = waybill::webhook::mapping::Fields {
            key: tn.clone(),
            status: status.to_string(),
            occurred_at: Some(format!("\"{at}\"")),
        };
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let now = waybill::clock::now_ms();
            store
                .ingest(NewEvent {
                    source: "carrier".into(),
                    event_id: id,
                    received_at_ms: now,
                    expires_at_ms: now + 86_400_000,
                    content_hash: [0; 32],
                    dispatch: true,
                    event_type: Some("tracking.updated".into()),
                    headers: vec![],
                    tracking_number: Some(tn),
                    order_id: None,
                    fields: Some(fields),
                    body: Bytes::from(body.to_string()),
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    close(store).await;
    generated
}

/// Checks exactly-once after a kill: every event is in the inbox xor has one
/// dispatch, and each shipment holds exactly the events applied to it.
async fn check(dir: &Path, events: &[Generated]) -> usize {
    let store = open(dir).await;
    assert_whole(&store);
    let inbox: HashSet<String> = store
        .inbox()
        .unwrap()
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    let mut dispatched_to: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, tn, status, _) in events {
        let outcome = store.outcome("carrier", id).await.unwrap();
        match (inbox.contains(id), outcome) {
            (true, None) => {}
            (false, Some(o)) => {
                assert_eq!(o.attempts, 1, "{id} was dispatched {} times", o.attempts);
                let expect_parked = tn.starts_with("TN-NONE");
                match o.outcome {
                    DispatchOutcome::Applied | DispatchOutcome::Stale => {
                        assert!(!expect_parked && *status != "WEIRD", "{id}: {o:?}");
                        dispatched_to
                            .entry(o.shipment_id.clone().unwrap().into_string())
                            .or_default()
                            .insert(id.clone());
                    }
                    DispatchOutcome::Ignored => assert_eq!(*status, "WEIRD", "{id}"),
                    DispatchOutcome::Parked => assert!(expect_parked, "{id}"),
                    other => panic!("{id}: unexpected {other:?}"),
                }
            }
            (in_inbox, o) => panic!("{id}: in inbox {in_inbox}, outcome {o:?}"),
        }
    }
    for s in 0..SHIPMENTS {
        let sid = format!("shp_{s}");
        let rec = store.shipment(&sid.as_str().into()).await.unwrap().unwrap();
        let ids: Vec<String> = rec
            .timeline
            .history()
            .filter_map(|e| e.event_id.clone())
            .collect();
        let unique: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), unique.len(), "{sid} holds an event twice");
        // A shipment keeps a bounded history (the greatest events and its
        // greatest terminal one): every event it holds was dispatched to
        // it, and it holds all of them up to the bound. Which ones it keeps
        // is checked against the rule after the last run.
        let dispatched = dispatched_to.remove(&sid).unwrap_or_default();
        assert!(unique.is_subset(&dispatched), "{sid}");
        assert!(
            unique.len() >= dispatched.len().min(MAX_CARRIER_EVENTS)
                && unique.len() <= MAX_CARRIER_EVENTS + 1,
            "{sid}: {} of {}",
            unique.len(),
            dispatched.len()
        );
    }
    let pending = inbox.len();
    close(store).await;
    pending
}

/// Kills the gateway once the inbox has fallen to `threshold` or below.
async fn kill_when_pending_at_most(gw: Gateway, threshold: f64) {
    let mut client = Client::new(gw.addr);
    for _ in 0..100_000 {
        let Ok(r) = client.try_send("GET", "/metrics", &[], Bytes::new()).await else {
            break;
        };
        if metric(
            &String::from_utf8_lossy(&r.body),
            "waybill_inbox_pending",
            "",
        ) <= threshold
        {
            break;
        }
    }
    gw.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_is_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("waybill.toml");
    std::fs::write(&config_path, config_text(dir.path())).unwrap();
    let seed = fastrand::u64(..);
    println!("dispatch crash test seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    // Shipments with labels, recorded the way the label code will.
    {
        let config = Config::parse(&config_text(dir.path()), &ProcessEnv).unwrap();
        let store = open(dir.path()).await;
        store.start_dispatcher(config.sources.clone()).unwrap();
        for s in 0..SHIPMENTS {
            let sid = format!("shp_{s}");
            store
                .create_shipment(shipment_record(&sid, "acme", &format!("o{s}"), 1_000), None)
                .await
                .unwrap();
            store
                .record_label(label_for(&sid, &format!("TN-{s}"), 2_000), None)
                .await
                .unwrap();
        }
        close(store).await;
    }

    let mut all = Vec::new();
    let mut killed_mid_backlog = 0;
    for round in 0..ROUNDS {
        all.extend(fill_backlog(dir.path(), round, &mut rng).await);
        let gw = Gateway::start(&config_path);
        let threshold = rng.usize(0..BACKLOG) as f64;
        kill_when_pending_at_most(gw, threshold).await;
        if check(dir.path(), &all).await > 0 {
            killed_mid_backlog += 1;
        }
    }
    println!("killed with a backlog left in {killed_mid_backlog} of {ROUNDS} rounds");

    // A last run drains everything and stops gracefully (a kill could
    // lose the last, unflushed, dispatch writes; they would be redone).
    let gw = Gateway::start(&config_path);
    let mut client = Client::new(gw.addr);
    for _ in 0..100_000 {
        let r = client.send("GET", "/metrics", &[], Bytes::new()).await;
        if metric(
            &String::from_utf8_lossy(&r.body),
            "waybill_inbox_pending",
            "",
        ) == 0.0
        {
            break;
        }
    }
    drop(client);
    assert_eq!(gw.terminate(), Some(0));
    assert_eq!(check(dir.path(), &all).await, 0, "the inbox drains to 0");

    // Each shipment's status is what the rule says of its events.
    let store = open(dir.path()).await;
    for s in 0..SHIPMENTS {
        let tn = format!("TN-{s}");
        let mut expect = Timeline::new(1_000);
        expect.apply(StatusEvent::gateway(ShipmentStatus::LabelCreated, 2_000));
        for (id, _, status, at) in all.iter().filter(|e| e.1 == tn) {
            if let Some(st) = ShipmentStatus::parse(status) {
                expect.apply(StatusEvent::carrier(st, *at, "carrier", id));
            }
        }
        let got = store
            .shipment(&format!("shp_{s}").into())
            .await
            .unwrap()
            .unwrap()
            .timeline;
        assert_eq!(got, expect, "shp_{s}");
    }
    close(store).await;
}
