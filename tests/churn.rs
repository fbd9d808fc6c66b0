//! "Disk" (GUARANTEES.md): under a steady load with retention R, disk use levels off.
//! The store is driven directly with synthetic times (no waiting): rounds
//! of new events, each remembered for a few rounds, a dispatch pass and a
//! retention sweep per round; the bytes on disk are read after each.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use bytes::Bytes;
use waybill::store::prelude::*;
use waybill::store::{NewEvent, SledStore};

const ROUNDS: u64 = 60;
const PER_ROUND: usize = 300;
/// Rounds an event is remembered: the live data is this many rounds.
const RETENTION_ROUNDS: u64 = 4;
const ROUND_MS: u64 = 1_000;

fn event(n: u64, at_ms: u64) -> NewEvent {
    // About 1 KB of carrier JSON, as varied as real payloads are.
    let body = format!(
        r#"{{"id":"ev-{n}","object":"Event","description":"tracker.updated","result":{{"tracking_code":"EZ{n:010}","status":"in_transit","carrier":"USPS","tracking_details":[{{"message":"Arrived at facility {n}","datetime":"2026-11-20T12:{:02}:00Z","city":"CITY{}","zip":"{:05}"}}],"signed_by":null,"weight":{}.5,"est_delivery_date":"2026-11-2{}T00:00:00Z","pad":"{}"}}}}"#,
        n % 60,
        n % 97,
        n % 99_991,
        n % 1000,
        n % 9,
        "lorem ipsum dolor sit amet ".repeat(25)
    );
    NewEvent {
        source: "churn".into(),
        event_id: format!("ev-{n}"),
        received_at_ms: at_ms,
        expires_at_ms: at_ms + RETENTION_ROUNDS * ROUND_MS,
        content_hash: [(n % 251) as u8; 32],
        dispatch: false,
        event_type: Some("tracker.updated".into()),
        headers: vec![("user-agent".into(), "carrier/1.0".into())],
        tracking_number: Some(format!("EZ{n:010}")),
        order_id: None,
        fields: None,
        body: Bytes::from(body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_use_levels_off_under_steady_churn() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::store_config(dir.path());
    cfg.segment_bytes = 256 * 1024;
    let store = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || SledStore::open(&cfg).unwrap())
            .await
            .unwrap(),
    );
    store.start_dispatcher(Vec::new()).unwrap();
    let mut sizes = Vec::new();
    let mut live_payload = 0u64;
    let mut n = 0u64;
    for round in 0..ROUNDS {
        let at = round * ROUND_MS;
        let mut tasks = Vec::new();
        for _ in 0..PER_ROUND {
            let store = store.clone();
            let ev = event(n, at);
            if round >= ROUNDS - RETENTION_ROUNDS {
                live_payload += ev.body.len() as u64;
            }
            n += 1;
            tasks.push(tokio::spawn(async move { store.ingest(ev).await.unwrap() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.settle().await.unwrap();
        while store.sweep_expired(at, 10_000).await.unwrap() > 0 {}
        let s = store.clone();
        sizes.push(
            tokio::task::spawn_blocking(move || s.size_bytes())
                .await
                .unwrap(),
        );
    }
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "disk by round (MiB): {:?}; live payload at the end {:.2} MiB",
        sizes
            .iter()
            .map(|b| format!("{:.2}", mb(*b)))
            .collect::<Vec<_>>(),
        mb(live_payload)
    );
    // Levelled off: the last third is no larger than the middle third,
    // give or take a segment; growing without bound would be 1.5x here.
    let third = sizes.len() / 3;
    let middle = sizes[third..2 * third].iter().max().unwrap();
    let last = sizes[2 * third..].iter().max().unwrap();
    assert!(
        *last as f64 <= *middle as f64 * 1.15,
        "still growing: middle third at most {:.2} MiB, last third {:.2} MiB",
        mb(*middle),
        mb(*last)
    );
    support::assert_whole(&store);
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.close().unwrap())
        .await
        .unwrap();
}
