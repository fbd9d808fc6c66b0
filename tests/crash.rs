//! "Durable before acknowledged", "Processed once" (GUARANTEES.md) under
//! `kill -9`: the built binary takes concurrent
//! deliveries, is killed at a random moment, and every delivery it
//! acknowledged must be remembered (re-sending answers duplicate with the
//! same first_received_at) and, being an accepted type, be in the inbox or
//! dispatched exactly once.
//! Repeated on the same data directory, so recovery of a recovered store is
//! covered too; every other round the newest payload segment is also given
//! a torn tail, which the next open must cut without losing anything
//! acknowledged. Every other pair of rounds sled flushes, and so cleans its
//! log, at the fastest `store.index_flush`, so that the kill can land while
//! its cleaner moves pages.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use waybill::store::prelude::*;

use support::*;
use tokio::sync::Mutex;
use waybill::webhook::signature::SchemeKind;

const SECRET: &str = "whsec_Y3Jhc2gtdGVzdC1rZXktMDAwMDAwMDAwMDA=";
const ITERATIONS: usize = 20;
const WORKERS: usize = 8;

/// The gateway's config; with `fast_cleaning`, sled flushes every 10 ms.
fn write_config(dir: &Path, fast_cleaning: bool) -> std::path::PathBuf {
    let carrier = config::tracking_source(
        "carrier",
        config::Shape::StandardWebhooks,
        SECRET,
        &[("IN_TRANSIT", "IN_TRANSIT")],
    );
    let store = if fast_cleaning {
        "index_flush = \"10ms\""
    } else {
        ""
    };
    config::write(dir, "", store, &carrier)
}

fn body(id: &str) -> Vec<u8> {
    format!(r#"{{"type":"tracking.updated","data":{{"tracking_number":"T-{id}","status":"IN_TRANSIT"}},"pad":"{}"}}"#, "x".repeat(600))
        .into_bytes()
}

fn deliver_headers(id: &str) -> Vec<(String, String)> {
    signed(SchemeKind::StandardWebhooks, SECRET, &body(id), now(), id)
}

/// Appends a torn record to the newest segment: a header promising more
/// bytes than follow, or a whole record whose checksum is wrong.
fn tear_newest_segment(dir: &Path, rng: &mut fastrand::Rng) {
    use std::io::Write;
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment");
    let mut junk = Vec::new();
    if rng.bool() {
        junk.extend_from_slice(&4096u32.to_be_bytes());
        junk.extend_from_slice(&[7u8; 4]);
        junk.extend(std::iter::repeat_n(0xAB, rng.usize(0..100)));
    } else {
        junk.extend_from_slice(&16u32.to_be_bytes());
        junk.extend_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
        junk.extend_from_slice(&[0x55; 16]);
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap()
        .write_all(&junk)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let seed = fastrand::u64(..);
    println!("crash test seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    // id -> received_at of the acknowledgement
    let mut acked: HashMap<String, String> = HashMap::new();

    for iteration in 0..ITERATIONS {
        // Rounds 2 and 3 of every four (one with a torn segment, one
        // without) rewrite the same file with fast cleaning.
        let config = write_config(dir.path(), iteration % 4 >= 2);
        let gw = Gateway::start(&config);
        let addr = gw.addr;
        let (done, mut progress) = tokio::sync::watch::channel(0usize);
        let done = Arc::new(done);
        let got: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let done = done.clone();
            let got = got.clone();
            workers.push(tokio::spawn(async move {
                let mut client = Client::new(addr);
                for n in 0.. {
                    // Every fourth delivery repeats an earlier id of this worker.
                    let k = if n % 4 == 3 { n - 2 } else { n };
                    let id = format!("crash-{iteration}-{w}-{k}");
                    let Ok(r) = client
                        .try_send(
                            "POST",
                            "/webhooks/carrier",
                            &deliver_headers(&id),
                            body(&id),
                        )
                        .await
                    else {
                        return;
                    };
                    let j = r.json();
                    let at = match r.status.as_u16() {
                        202 => j["received_at"].as_str().unwrap().to_string(),
                        200 => j["first_received_at"].as_str().unwrap().to_string(),
                        s => panic!("unexpected {s}: {j}"),
                    };
                    got.lock().await.push((id, at));
                    done.send_modify(|c| *c += 1);
                }
            }));
        }
        let kill_after = rng.usize(20..600);
        tokio::time::timeout(
            Duration::from_secs(60),
            progress.wait_for(|c| *c >= kill_after),
        )
        .await
        .expect("the gateway answers under load")
        .unwrap();
        gw.kill9();
        for w in workers {
            w.await.unwrap();
        }
        for (id, at) in got.lock().await.drain(..) {
            if let Some(prev) = acked.insert(id.clone(), at.clone()) {
                assert_eq!(
                    prev, at,
                    "{id} was acknowledged with two different first times"
                );
            }
        }

        // Every other round, the newest payload segment also gets a torn
        // record at its end, as a crash in the middle of a write (or power
        // loss before its sync) could leave: it must be cut on open and
        // never served.
        if iteration % 2 == 1 {
            tear_newest_segment(&dir.path().join("data").join("segments"), &mut rng);
        }
        // Straight from the store the killed process left behind.
        let store = open_store(&dir.path().join("data")).await;
        let inbox = store.inbox().unwrap();
        let inbox_ids: HashSet<&str> = inbox.iter().map(|(_, _, id)| id.as_str()).collect();
        assert_eq!(
            inbox_ids.len(),
            inbox.len(),
            "an event is in the inbox twice"
        );
        for id in acked.keys() {
            assert!(
                store.knows("carrier", id).unwrap(),
                "iteration {iteration}: acknowledged {id} forgotten"
            );
            // Either still waiting in the inbox, or dispatched exactly once
            // (no shipment has these tracking numbers: parked).
            let outcome = store.outcome("carrier", id).await.unwrap();
            match (inbox_ids.contains(id.as_str()), outcome) {
                (true, None) => {}
                (false, Some(o)) => {
                    assert_eq!(o.outcome, waybill::store::DispatchOutcome::Parked, "{id}");
                    assert_eq!(o.attempts, 1, "{id} dispatched {} times", o.attempts);
                }
                (in_inbox, o) => {
                    panic!("iteration {iteration}: {id} in inbox: {in_inbox}, outcome {o:?}")
                }
            }
        }
        assert_eq!(store.inbox_pending().await.unwrap() as usize, inbox.len());
        // Nothing half-written, acknowledged or not.
        assert_whole(&store);
        tokio::task::spawn_blocking(move || drop(store))
            .await
            .unwrap();
    }
    assert!(
        acked.len() >= ITERATIONS * 10,
        "too little load to mean anything: {}",
        acked.len()
    );

    // A restarted gateway, on the default config, answers every
    // acknowledged id as a duplicate, with the first copy's time.
    let config = write_config(dir.path(), false);
    let gw = Gateway::start(&config);
    let mut client = Client::new(gw.addr);
    for (id, at) in &acked {
        let r = client
            .send("POST", "/webhooks/carrier", &deliver_headers(id), body(id))
            .await;
        assert_eq!(r.status, 200, "{id}: {:?}", r.body);
        assert_eq!(r.json()["first_received_at"], at.as_str(), "{id}");
    }
    gw.kill9();
}
