//! The PostgreSQL adapter against a real server (GUARANTEES.md: "Nothing stops the gateway"): the
//! machines run PostgreSQL 15 on 127.0.0.1:5432 with a database `test`
//! (`WAYBILL_TEST_DATABASE_URL` overrides). Without one, these tests say
//! they were skipped and why, and pass; `.ci/run` sets
//! `WAYBILL_REQUIRE_POSTGRES` so that CI fails instead. Each test works
//! in a schema of its own, dropped at the end.

use std::sync::Arc;
use waybill::store::prelude::*;

use waybill::store::postgres::PgStore;
use waybill::store::{IngestResult, NewEvent};

use crate::support::acme_claim;
use crate::support::pg::schema;
use waybill::idempotency::IdempotencyKey;

fn event(id: &str, at: u64, retention: u64, hash: u8) -> NewEvent {
    NewEvent {
        source: "carrier".into(),
        event_id: id.into(),
        received_at_ms: at,
        expires_at_ms: at + retention,
        content_hash: [hash; 32],
        dispatch: true,
        event_type: Some("tracking.updated".into()),
        headers: vec![("content-type".into(), "application/json".into())],
        tracking_number: Some("1Z999".into()),
        order_id: None,
        fields: None,
        body: bytes::Bytes::from_static(b"{\"status\":\"in_transit\"}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_when_replicas_start_together() {
    let Some(schema) = schema().await else {
        return;
    };
    let replicas: Vec<Arc<PgStore>> = (0..3).map(|_| Arc::new(schema.store(4))).collect();
    let mut runs = Vec::new();
    for r in &replicas {
        let r = r.clone();
        runs.push(tokio::spawn(async move { r.migrate().await.unwrap() }));
    }
    let mut applied = 0;
    for run in runs {
        applied += run.await.unwrap();
    }
    let latest = waybill::store::postgres::schema_version_of_build();
    assert_eq!(
        applied, latest as usize,
        "each migration is applied by one replica"
    );
    for r in &replicas {
        assert_eq!(r.schema_version().await.unwrap(), latest);
        assert_eq!(r.migrate().await.unwrap(), 0, "nothing left to apply");
    }
}

/// "Processed once" (GUARANTEES.md) across replicas: 40 concurrent copies of one event spread
/// over three replicas of the store give exactly one new event, and every
/// duplicate answers with the first copy's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_copies_over_three_replicas_store_one_event() {
    let Some(schema) = schema().await else {
        return;
    };
    let replicas: Vec<Arc<PgStore>> = (0..3).map(|_| Arc::new(schema.store(4))).collect();
    replicas[0].migrate().await.unwrap();
    let mut copies = Vec::new();
    for i in 0..40u64 {
        let r = replicas[i as usize % 3].clone();
        copies.push(tokio::spawn(async move {
            r.ingest(event("evt-1", 1_000 + i, 3_600_000, 7))
                .await
                .unwrap()
        }));
    }
    let mut accepted = Vec::new();
    let mut firsts = Vec::new();
    for c in copies {
        match c.await.unwrap() {
            IngestResult::Accepted { received_at_ms } => accepted.push(received_at_ms),
            IngestResult::Duplicate {
                first_received_at_ms,
                conflict,
            } => {
                assert!(!conflict);
                firsts.push(first_received_at_ms);
            }
        }
    }
    assert_eq!(accepted.len(), 1, "exactly one copy is new");
    assert_eq!(firsts.len(), 39);
    assert!(firsts.iter().all(|at| *at == accepted[0]));
    let rows: i64 = schema
        .client
        .query_one(&format!("SELECT count(*) FROM {}.events", schema.name), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

/// Within one group commit and across them: a copy in the same group, a
/// copy with other content (a conflict), and a copy after the stored
/// one's retention, which replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_conflicts_and_expired_identities_are_told_apart() {
    let Some(schema) = schema().await else {
        return;
    };
    let store = Arc::new(schema.migrated(4).await);
    // Many at once, so they share groups: a and its copy, b, c.
    let mut tasks = Vec::new();
    for (id, at, hash) in [
        ("a", 10, 1),
        ("a", 11, 1),
        ("b", 12, 2),
        ("a", 13, 9),
        ("c", 14, 3),
    ] {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.ingest(event(id, at, 1_000, hash)).await.unwrap()
        }));
    }
    let answers: Vec<IngestResult> = {
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    };
    let accepted_a: Vec<u64> = answers
        .iter()
        .zip([("a", 1u8), ("a", 1), ("b", 2), ("a", 9), ("c", 3)])
        .filter_map(|(ans, (id, _))| match ans {
            IngestResult::Accepted { received_at_ms } if id == "a" => Some(*received_at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(accepted_a.len(), 1, "{answers:?}");
    assert!(matches!(answers[2], IngestResult::Accepted { .. }));
    assert!(matches!(answers[4], IngestResult::Accepted { .. }));
    let first_a = accepted_a[0];
    // The copy with other content is a conflict; the same content is not.
    let later = store.ingest(event("a", 500, 1_000, 9)).await.unwrap();
    let stored_hash = if first_a == 13 { 9 } else { 1 };
    assert_eq!(
        later,
        IngestResult::Duplicate {
            first_received_at_ms: first_a,
            conflict: stored_hash != 9,
        }
    );
    // Past its retention, a copy is new again and replaces the stored one.
    assert_eq!(
        store.ingest(event("a", 5_000, 1_000, 4)).await.unwrap(),
        IngestResult::Accepted {
            received_at_ms: 5_000
        }
    );
    assert_eq!(
        store.ingest(event("a", 5_001, 1_000, 4)).await.unwrap(),
        IngestResult::Duplicate {
            first_received_at_ms: 5_000,
            conflict: false
        }
    );
}

/// `waybill migrate` on the built binary: applies what is missing, then
/// nothing; a database that does not answer is exit 1, said on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waybill_migrate_applies_the_schema_once() {
    let Some(schema) = schema().await else {
        return;
    };
    let run = |url: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_waybill"))
            .args(["migrate", "--database-url", url])
            .env_remove("WAYBILL_DATABASE_URL")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let latest = waybill::store::postgres::schema_version_of_build();
    let (code, out, err) = run(&schema.url);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "applied {latest} migration(s); the schema is at version {latest}"
        )),
        "{out}"
    );
    let (code, out, _) = run(&schema.url);
    assert_eq!(code, Some(0));
    assert!(out.contains("applied 0 migration(s)"), "{out}");
    let (code, _, err) = run("postgres://nobody@127.0.0.1:1/none");
    assert_eq!(code, Some(1));
    assert!(err.contains("database"), "{err}");
}

fn carrier_source() -> std::collections::HashMap<String, waybill::config::SourceConfig> {
    crate::support::carrier_sources()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect()
}

fn shipment(id: &str) -> waybill::store::ShipmentRecord {
    crate::support::shipment_record(id, "acme", &format!("o-{id}"), 1_000)
}

/// "Applied once" (GUARANTEES.md) with three dispatchers: a backlog of 600 tracking events
/// over 20 shipments (and some for tracking numbers nobody has), drained
/// by three replicas at once, each claiming with SKIP LOCKED. Every event
/// is dispatched exactly once, and every shipment holds what the ordering
/// rule makes of its events, whichever replica applied which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drained_by_three_dispatchers_is_applied_exactly_once() {
    let Some(schema) = schema().await else {
        return;
    };
    let sources = carrier_source();
    let replicas: Vec<Arc<PgStore>> = (0..3).map(|_| Arc::new(schema.store(4))).collect();
    replicas[0].migrate().await.unwrap();
    for r in &replicas {
        r.set_sources(sources.values().cloned().collect());
    }
    for i in 0..20 {
        let id = format!("shp_{i}");
        replicas[0]
            .create_shipment(shipment(&id), None)
            .await
            .unwrap();
        replicas[0]
            .record_label(
                crate::support::label_for(&id, &format!("TN-{i}"), 1_000),
                None,
            )
            .await
            .unwrap();
    }
    let statuses = [
        "pre_transit",
        "in_transit",
        "out_for_delivery",
        "delivered",
        "held",
    ];
    let mut rng = fastrand::Rng::with_seed(12);
    let mut reference: std::collections::HashMap<String, waybill::domain::shipment::Timeline> = (0
        ..20)
        .map(|i| {
            // As recording the label leaves it.
            let mut t = waybill::domain::shipment::Timeline::new(1_000);
            t.apply(waybill::domain::shipment::StatusEvent::gateway(
                waybill::domain::shipment::ShipmentStatus::LabelCreated,
                1_000,
            ));
            (format!("TN-{i}"), t)
        })
        .collect();
    let mut parked = 0;
    for n in 0..600u64 {
        let tn = format!("TN-{}", rng.usize(0..23));
        let status = statuses[rng.usize(0..statuses.len())];
        let at = format!(
            "\"2026-11-{:02}T{:02}:00:00Z\"",
            rng.u32(1..28),
            rng.u32(0..24)
        );
        let fields = waybill::webhook::mapping::Fields {
            key: tn.clone(),
            status: status.into(),
            occurred_at: Some(at),
        };
        let id = format!("e{n}");
        if let waybill::webhook::mapping::Interpretation::Tracking { event, .. } =
            waybill::webhook::mapping::interpret_fields(
                &sources["carrier"],
                &id,
                2_000 + n,
                &fields,
            )
        {
            match reference.get_mut(&tn) {
                Some(t) => {
                    t.apply(event);
                }
                None => parked += 1,
            }
        }
        let mut ev = event(&id, 2_000 + n, 3_600_000, 1);
        ev.tracking_number = Some(tn);
        ev.fields = Some(fields);
        assert!(matches!(
            replicas[(n % 3) as usize].ingest(ev).await.unwrap(),
            IngestResult::Accepted { .. }
        ));
    }

    let mut drains = Vec::new();
    for r in &replicas {
        let r = r.clone();
        drains.push(tokio::spawn(async move {
            let mut mine = 0;
            loop {
                let n = r.dispatch(25).await.unwrap();
                if n == 0 {
                    return mine;
                }
                mine += n;
            }
        }));
    }
    let mut total = 0;
    for d in drains {
        total += d.await.unwrap();
    }
    assert_eq!(total, 600, "each event dispatched once, by one replica");
    let q = |sql: &str| schema.q(sql);
    let row = schema
        .client
        .query_one(
            &q("SELECT count(*) FILTER (WHERE o.record IS NULL),
                       count(*) FILTER (WHERE (o.record->>'attempts')::int IS DISTINCT FROM 1),
                       count(*) FILTER (WHERE o.record->>'outcome' = 'parked')
                FROM events e LEFT JOIN outcomes o ON o.seq = e.seq"),
            &[],
        )
        .await
        .unwrap();
    let (pending, not_once, parked_rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((pending, not_once), (0, 0));
    assert_eq!(parked_rows, parked);
    for i in 0..20 {
        let rec = replicas[i % 3]
            .shipment(&format!("shp_{i}").into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rec.timeline,
            reference[&format!("TN-{i}")],
            "shp_{i} holds what the rule makes of its events"
        );
    }
    // Nothing is left for a second pass.
    assert_eq!(replicas[0].dispatch(25).await.unwrap(), 0);
    let o = replicas[1].outcome("carrier", "e0").await.unwrap().unwrap();
    assert_eq!(o.attempts, 1);
}

/// A database that is down fails the intake at once; one that accepts
/// connections and never answers fails it at the deadline instead of
/// holding the request. Nothing hangs, and nothing is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_or_silent_fails_the_intake_instead_of_holding_it() {
    // Down: nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = PgStore::connect(
        &format!("postgres://x@127.0.0.1:{port}/none"),
        &[],
        2,
        waybill::health::Health::new(),
    )
    .unwrap();
    assert!(down.ingest(event("d", 1, 10, 1)).await.is_err());

    // Silent: accepts, reads, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (c, _) = silent.accept().await.unwrap();
            conns.push(c);
        }
    });
    let store = PgStore::connect(
        &format!("postgres://x@{addr}/none"),
        &[],
        2,
        waybill::health::Health::new(),
    )
    .unwrap();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.ingest(event("s", 1, 10, 1)),
    )
    .await
    .expect("the intake answers within its deadline");
    assert!(answer.is_err(), "{answer:?}");
    held.abort();
}

/// Idempotency keys shared by replicas: a claim holds the key against
/// every process until its lease ends, and then any process may resume
/// it; a final answer is replayed by all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_every_replica_until_its_lease_ends() {
    use waybill::idempotency::Decision;
    let Some(schema) = schema().await else {
        return;
    };
    let a = schema.store(2);
    let b = schema.store(2);
    a.migrate().await.unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let acme = "acme".into();
    let (k1, k2): (IdempotencyKey, IdempotencyKey) =
        ("k1".try_into().unwrap(), "k2".try_into().unwrap());
    let fp = waybill::idempotency::fingerprint("POST", "/a", None);
    let other = waybill::idempotency::fingerprint("POST", "/b", None);
    assert_eq!(
        a.claim(&acme_claim("k1", fp, hour)).await.unwrap(),
        Decision::Run
    );
    assert_eq!(
        b.claim(&acme_claim("k1", fp, hour)).await.unwrap(),
        Decision::InProgress
    );
    assert_eq!(
        a.claim(&acme_claim("k1", fp, hour)).await.unwrap(),
        Decision::InProgress
    );
    assert_eq!(
        b.claim(&acme_claim("k1", other, hour)).await.unwrap(),
        Decision::Conflict
    );
    // Another process cannot release it; its owner can.
    b.release(&acme, &k1).await;
    assert_eq!(
        b.claim(&acme_claim("k1", fp, hour)).await.unwrap(),
        Decision::InProgress
    );
    a.release(&acme, &k1).await;
    assert_eq!(
        b.claim(&acme_claim("k1", fp, hour)).await.unwrap(),
        Decision::Run
    );
    // A claim whose lease has ended (its process died) is resumed.
    assert_eq!(
        a.claim(&acme_claim("k2", fp, std::time::Duration::ZERO))
            .await
            .unwrap(),
        Decision::Run
    );
    assert_eq!(
        b.claim(&acme_claim("k2", fp, hour)).await.unwrap(),
        Decision::Run
    );
    assert_eq!(
        a.claim(&acme_claim("k2", fp, hour)).await.unwrap(),
        Decision::InProgress
    );
    // The final answer, written by one, is replayed by the other.
    b.finish(waybill::store::Completion {
        partner: acme.clone(),
        key: k2.clone(),
        record: waybill::idempotency::Record::Done {
            fingerprint: fp,
            status: 201,
            body: "{}".into(),
            expires_at_ms: u64::MAX / 2,
        },
    })
    .await
    .unwrap();
    assert_eq!(
        a.claim(&acme_claim("k2", fp, hour)).await.unwrap(),
        Decision::Replay {
            status: 201,
            body: "{}".into()
        }
    );
}

/// Background fulfilment shared by replicas: a due order is taken by one
/// process at a time, and when that process dies without writing the
/// order, another takes it once the claim runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_fulfilment_is_taken_by_one_replica_and_passes_on_when_it_dies() {
    let Some(schema) = schema().await else {
        return;
    };
    let a = schema.store(2);
    let b = schema.store(2);
    a.migrate().await.unwrap();
    let order = |id: &str| waybill::store::OrderRecord {
        status: waybill::domain::order::OrderStatus::PaymentSuccessPendingFulfillment,
        fulfil_due_ms: Some(1_000),
        fulfil_attempts: 1,
        ..waybill::store::OrderRecord::new(
            "acme".into(),
            format!("k-{id}").try_into().unwrap(),
            waybill::domain::request::NewOrder::example(id),
            1,
        )
    };
    for id in ["o1", "o2"] {
        a.create_order(order(id)).await.unwrap();
        a.write_order(waybill::store::OrderWrite {
            order: order(id),
            new_shipment: None,
            label: None,
            completion: None,
            unschedule: None,
        })
        .await
        .unwrap();
    }
    let now = 5_000;
    let taken = a.due_fulfilments(now, 1).await.unwrap();
    assert_eq!(taken, vec![(1_000, "acme".into(), "o1".into())]);
    // B gets the other one, not A's.
    let other = b.due_fulfilments(now, 10).await.unwrap();
    assert_eq!(other, vec![(1_000, "acme".into(), "o2".into())]);
    assert!(b.due_fulfilments(now, 10).await.unwrap().is_empty());
    // A dies with o1 taken: once the claim runs out, B takes it.
    drop(a);
    let later = now + 3_600_000;
    let resumed = b.due_fulfilments(later, 10).await.unwrap();
    assert!(
        resumed.contains(&(1_000, "acme".into(), "o1".into())),
        "{resumed:?}"
    );
}

/// A shipment record that cannot be read sends the event for it to the
/// dead letter, saying so, and dispatch goes on with the others; once the
/// record is repaired, a redelivery applies the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_shipment_sends_its_event_to_the_dead_letter_not_dispatch_down() {
    let Some(schema) = schema().await else {
        return;
    };
    let store = schema.migrated(2).await;
    store
        .start_dispatcher(crate::support::carrier_sources())
        .unwrap();
    store.create_shipment(shipment("s1"), None).await.unwrap();
    store
        .record_label(crate::support::label_for("s1", "TN-1", 1_000), None)
        .await
        .unwrap();
    let table = format!("{}.shipments", schema.name);
    let good: String = schema
        .client
        .query_one(
            &format!("SELECT record::text FROM {table} WHERE shipment_id = 's1'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    schema
        .client
        .execute(
            &format!("UPDATE {table} SET record = '{{\"x\": 1}}' WHERE shipment_id = 's1'"),
            &[],
        )
        .await
        .unwrap();
    for (n, (id, tn)) in [("late", "TN-1"), ("other", "TN-9")]
        .into_iter()
        .enumerate()
    {
        let body = serde_json::json!({"id": id, "t": tn, "s": "in_transit"});
        store
            .ingest(NewEvent {
                event_id: id.into(),
                tracking_number: Some(tn.into()),
                fields: Some(waybill::webhook::mapping::Fields {
                    key: tn.into(),
                    status: "in_transit".into(),
                    occurred_at: None,
                }),
                body: body.to_string().into(),
                ..event(id, 2_000 + n as u64, 3_600_000, n as u8)
            })
            .await
            .unwrap();
    }
    store.settle().await.unwrap();
    let dead = store.outcome("carrier", "late").await.unwrap().unwrap();
    let reason = dead.reason.clone().unwrap_or_default();
    assert_eq!(dead.outcome, waybill::store::DispatchOutcome::Dead);
    assert!(
        reason.starts_with("the shipment s1") && reason.ends_with("cannot be read"),
        "{dead:?}"
    );
    let other = store.outcome("carrier", "other").await.unwrap().unwrap();
    assert_eq!(other.outcome, waybill::store::DispatchOutcome::Parked);
    schema
        .client
        .execute(
            &format!("UPDATE {table} SET record = $1::text::jsonb WHERE shipment_id = 's1'"),
            &[&good],
        )
        .await
        .unwrap();
    let again = store.redeliver("carrier", "late").await.unwrap();
    assert_eq!(
        again.outcome,
        waybill::store::DispatchOutcome::Applied,
        "{again:?}"
    );
    assert_eq!(again.shipment_id, Some("s1".into()));
}

/// "Replicas on PostgreSQL" (GUARANTEES.md): an event one replica stores is
/// dispatched by another that hears of it, not by its poll: with the poll
/// set to an hour, the other replica's dispatcher still applies it, also
/// after its listening connection was cut. Its
/// poll stays the fallback when it does not hear (`wake_on_notify(false)`
/// is what the benchmark compares).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_by_one_replica_wakes_another_replicas_dispatcher() {
    let Some(schema) = schema().await else {
        return;
    };
    let intake = schema.store(2);
    intake.migrate().await.unwrap();
    let dispatcher = schema.store(2);
    dispatcher.poll_every(std::time::Duration::from_secs(3600));
    dispatcher.start_dispatcher(Vec::new()).unwrap();
    // Its first pass ran and found nothing: from here only a wake moves it.
    dispatcher.settle().await.unwrap();
    for i in 0..3 {
        let id = format!("woken-{i}");
        let ev = event(&id, waybill::clock::now_ms(), 60_000, i);
        intake.ingest(ev).await.unwrap();
        let dispatched = crate::support::eventually(10, async || {
            intake.outcome("carrier", &id).await.unwrap().is_some()
        })
        .await;
        assert!(dispatched, "{id} was dispatched by the other replica");
    }
    // The listening connections drop (a database restart, a proxy's idle
    // cut): each listener connects again by itself, and a notice after
    // that wakes the dispatcher, which then takes whatever waited meanwhile.
    let cut = schema
        .client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query = 'LISTEN waybill_inbox' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(cut >= 1, "a listening connection was cut");
    let mut sent = 0u8;
    let woken = crate::support::eventually(10, async || {
        sent += 1;
        let id = format!("after-cut-{sent}");
        let ev = event(&id, waybill::clock::now_ms(), 60_000, sent);
        intake.ingest(ev).await.unwrap();
        intake
            .outcome("carrier", "after-cut-1")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(woken, "the listener came back and woke the dispatcher");
    dispatcher.close().unwrap();
    intake.close().unwrap();
}

/// A copy that replaces an expired one takes the stored copy's queue
/// entry and outcome with it: the new copy waits for dispatch whatever the
/// old one's state, and no entry of the old one is left behind. The sweep
/// takes an event's outcome with it, and leaves an event that waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_or_swept_event_leaves_no_queue_entry_or_outcome_behind() {
    let Some(schema) = schema().await else {
        return;
    };
    let store = schema.migrated(2).await;
    store.set_sources(crate::support::carrier_sources());
    let accepted = |at| IngestResult::Accepted { received_at_ms: at };
    // Replaced while it waits.
    assert_eq!(
        store.ingest(event("a", 10, 1_000, 1)).await.unwrap(),
        accepted(10)
    );
    assert_eq!(
        store.ingest(event("a", 5_000, 1_000, 2)).await.unwrap(),
        accepted(5_000)
    );
    assert_eq!(schema.count("SELECT count(*) FROM events").await, 1);
    assert_eq!(schema.count("SELECT count(*) FROM inbox").await, 1);
    assert_eq!(
        schema
            .count("SELECT count(*) FROM inbox i JOIN events e ON e.seq = i.seq")
            .await,
        1,
        "the queue entry is the new copy's"
    );
    // Replaced once dispatched.
    assert_eq!(store.dispatch(25).await.unwrap(), 1);
    assert!(store.outcome("carrier", "a").await.unwrap().is_some());
    assert_eq!(
        store.ingest(event("a", 9_000, 1_000, 3)).await.unwrap(),
        accepted(9_000)
    );
    assert_eq!(
        store.outcome("carrier", "a").await.unwrap(),
        None,
        "the new copy waits"
    );
    assert_eq!(store.inbox_pending().await.unwrap(), 1);
    assert_eq!(schema.count("SELECT count(*) FROM outcomes").await, 0);
    // The sweep leaves it while it waits, and takes it with its outcome
    // once dispatched.
    assert_eq!(store.sweep_expired(20_000, 100).await.unwrap(), 0);
    assert_eq!(store.dispatch(25).await.unwrap(), 1);
    assert_eq!(schema.count("SELECT count(*) FROM outcomes").await, 1);
    assert_eq!(store.sweep_expired(20_000, 100).await.unwrap(), 1);
    assert_eq!(schema.count("SELECT count(*) FROM events").await, 0);
    assert_eq!(schema.count("SELECT count(*) FROM outcomes").await, 0);
}

/// A body is stored packed when that makes it smaller, and reads back as
/// it came either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_read_back_as_they_came_packed_or_not() {
    let Some(schema) = schema().await else {
        return;
    };
    let store = schema.migrated(2).await;
    let repetitive = format!("{{\"pad\":\"{}\"}}", "x".repeat(4_000));
    let random: String = (0..4_000).map(|_| fastrand::alphanumeric()).collect();
    for (id, body) in [
        ("repetitive", repetitive),
        ("random", random),
        ("short", "{}".into()),
    ] {
        store
            .ingest(NewEvent {
                body: body.clone().into(),
                ..event(id, 1_000, 3_600_000, 1)
            })
            .await
            .unwrap();
        let read = store.event("carrier", id).await.unwrap().unwrap();
        assert_eq!(read.body, body.as_bytes(), "{id}");
    }
    let packed: Vec<(String, bool, i32)> = schema
        .client
        .query(
            &schema.q("SELECT event_id, body_lz4, length(body) FROM events ORDER BY seq"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(packed[0].1 && packed[0].2 < 200, "{packed:?}");
    assert!(!packed[1].1 && !packed[2].1, "{packed:?}");
}

/// A stored copy whose times cannot be read is no absent or expired one,
/// as on sled (`writer.rs`): a copy of it is answered with an error and
/// does not replace it, and the events that share its group are answered
/// as if it were not there. Read back, it is an unreadable record, not an
/// event that arrived in 1970.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_copy_with_unreadable_times_is_neither_replaced_nor_read_as_1970() {
    let Some(schema) = schema().await else {
        return;
    };
    let store = Arc::new(schema.migrated(2).await);
    assert_eq!(
        store.ingest(event("a", 1_000, 3_600_000, 1)).await.unwrap(),
        IngestResult::Accepted {
            received_at_ms: 1_000
        }
    );
    schema
        .execute("UPDATE events SET expires_at_ms = -1 WHERE event_id = 'a'")
        .await;
    let tracked = |id, at, hash| NewEvent {
        fields: Some(waybill::webhook::mapping::Fields {
            key: "1Z999".into(),
            status: "in_transit".into(),
            occurred_at: None,
        }),
        ..event(id, at, 3_600_000, hash)
    };
    let (copy, other) = tokio::join!(
        store.ingest(event("a", 2_000, 3_600_000, 2)),
        store.ingest(tracked("b", 2_000, 3)),
    );
    assert!(
        matches!(copy, Err(waybill::store::StoreError::Corrupt(_))),
        "{copy:?}"
    );
    assert_eq!(
        other.unwrap(),
        IngestResult::Accepted {
            received_at_ms: 2_000
        }
    );
    let kept: Vec<(i64, i64)> = schema
        .client
        .query(
            &schema.q("SELECT received_at_ms, expires_at_ms FROM events WHERE event_id = 'a'"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kept, [(1_000, -1)], "the stored copy is left as it was");

    schema
        .execute("UPDATE events SET received_at_ms = -5 WHERE event_id = 'b'")
        .await;
    let read = store.event("carrier", "b").await;
    assert!(
        matches!(read, Err(waybill::store::StoreError::Corrupt(_))),
        "{read:?}"
    );
    // Dispatch does not apply it as of 1970 either: it goes to the dead
    // letter saying why, and the rest of its pass goes on.
    store.set_sources(crate::support::carrier_sources());
    store.ingest(tracked("c", 3_000, 4)).await.unwrap();
    // One whose sequence number was changed below zero, in its row and
    // its queue entry, can take no outcome: it waits, counted as pending,
    // and does not hold up the rest.
    store.ingest(tracked("d", 3_001, 5)).await.unwrap();
    schema
        .execute(
            "WITH moved AS (UPDATE events SET seq = -7 WHERE event_id = 'd' RETURNING 1)
             UPDATE inbox SET seq = -7 WHERE seq = (SELECT MAX(seq) FROM inbox)",
        )
        .await;
    assert_eq!(store.dispatch(25).await.unwrap(), 3, "a, b and c");
    assert_eq!(store.inbox_pending().await.unwrap(), 1, "d waits");
    let dead = store.outcome("carrier", "b").await.unwrap().unwrap();
    assert_eq!(dead.outcome, waybill::store::DispatchOutcome::Dead);
    assert_eq!(
        dead.reason.as_deref(),
        Some("the arrival time stored at intake cannot be read")
    );
    let parked = store.outcome("carrier", "c").await.unwrap().unwrap();
    assert_eq!(parked.outcome, waybill::store::DispatchOutcome::Parked);
}

/// Migration 6 moves each event's outcome, and its place in the queue, out
/// of the event's row. A database at version 5 with an event in each state
/// reads the same after it and dispatches what waited; a build from before
/// it can no longer store an event that no dispatcher would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_to_the_outcome_table_keeps_every_event_in_its_state() {
    use waybill::store::{DispatchOutcome, EventFilter, OutcomeRecord};
    let Some(schema) = schema().await else {
        return;
    };
    let store = schema.store(2);
    store.set_sources(crate::support::carrier_sources());
    assert_eq!(store.migrate_to(5).await.unwrap(), 5);
    let outcome = |outcome| OutcomeRecord {
        outcome,
        reason: None,
        shipment_id: None,
        attempts: 1,
        at_ms: 2_000,
    };
    // How a build at version 5 stored events, and its outcomes.
    let v5_insert = "INSERT INTO events (source, event_id, received_at_ms, expires_at_ms,
             content_hash, dispatch, event_type, tracking_number, headers, fields, body,
             outcome, attempts)
         VALUES ('carrier', $1, 1000, 9000000000000, '\\x00', $2, 'tracking.updated', $1,
             '[]', $3::text::jsonb, '\\x7b7d', $4::text::jsonb, $5)";
    for (id, queued, recorded) in [
        ("pending", true, None),
        ("parked", true, Some(outcome(DispatchOutcome::Parked))),
        ("dead", true, Some(outcome(DispatchOutcome::Dead))),
        ("stored", false, None),
    ] {
        let fields = serde_json::to_string(&waybill::webhook::mapping::Fields {
            key: id.into(),
            status: "in_transit".into(),
            occurred_at: None,
        })
        .unwrap();
        let attempts = i32::from(recorded.is_some());
        let recorded = recorded.map(|o| serde_json::to_string(&o).unwrap());
        schema
            .client
            .execute(
                &schema.q(v5_insert),
                &[&id, &queued, &fields, &recorded, &attempts],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store.migrate().await.unwrap(),
        1,
        "only migration 6 was missing"
    );
    assert_eq!(store.inbox_pending().await.unwrap(), 1);
    assert_eq!(store.parked().await.unwrap(), 1);
    assert_eq!(store.dead().await.unwrap(), 1);
    assert_eq!(
        store.outcome("carrier", "parked").await.unwrap(),
        Some(outcome(DispatchOutcome::Parked))
    );
    for state in ["pending", "parked", "dead", "stored"] {
        let found = store
            .search(
                &EventFilter {
                    outcome: Some(state.into()),
                    ..EventFilter::default()
                },
                10,
                1_000,
            )
            .await
            .unwrap();
        let ids: Vec<&str> = found
            .events
            .iter()
            .map(|(e, _)| e.event_id.as_str())
            .collect();
        assert_eq!(ids, [state], "the {state} event keeps its state");
    }
    // Bodies stored before the migration read as they were; one marked
    // packed that does not unpack is an unreadable record, not an empty
    // body.
    let stored = store.event("carrier", "stored").await.unwrap().unwrap();
    assert_eq!(stored.body, b"{}");
    schema
        .execute("UPDATE events SET body_lz4 = true WHERE event_id = 'stored'")
        .await;
    let unreadable = store.event("carrier", "stored").await.unwrap_err();
    assert!(
        matches!(unreadable, waybill::store::StoreError::Corrupt(_)),
        "{unreadable:?}"
    );
    // A build at version 5 fails its intake instead of storing an event
    // outside the queue.
    let old_build = schema.q(
        "INSERT INTO events (source, event_id, received_at_ms, expires_at_ms, content_hash,
             dispatch, headers, body)
         VALUES ('carrier', 'late', 1, 2, '\\x00', true, '[]', '\\x00')",
    );
    let refused = schema.client.batch_execute(&old_build).await.unwrap_err();
    assert!(format!("{refused:?}").contains("dispatch"), "{refused:?}");
    // What waited is dispatched once, and waits no more.
    assert_eq!(store.dispatch(25).await.unwrap(), 1);
    assert_eq!(store.dispatch(25).await.unwrap(), 0);
    assert_eq!(store.inbox_pending().await.unwrap(), 0);
    let done = store.outcome("carrier", "pending").await.unwrap().unwrap();
    assert_eq!((done.outcome, done.attempts), (DispatchOutcome::Parked, 1));
}

/// A build older than the database's schema refuses it, before it takes
/// any traffic, rather than reading and writing tables it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_older_than_the_schema_refuses_to_run_on_it() {
    let Some(schema) = schema().await else {
        return;
    };
    let store = schema.migrated(2).await;
    let newer = waybill::store::postgres::schema_version_of_build() + 1;
    schema
        .client
        .execute(
            &format!(
                "INSERT INTO {}.waybill_migrations (version, name) VALUES ($1, 'newer')",
                schema.name
            ),
            &[&newer],
        )
        .await
        .unwrap();
    let refused = store.migrate().await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!(
            "schema is at version {newer}, newer than this build's"
        )),
        "{refused}"
    );
}

/// A redelivery that waited for another transaction holding the event
/// reads the outcome that transaction left, not the one it saw before
/// waiting: an event applied meanwhile is not redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_that_waited_for_the_event_reads_the_outcome_left_for_it() {
    let Some(schema) = schema().await else {
        return;
    };
    let store = Arc::new(schema.migrated(2).await);
    store.set_sources(crate::support::carrier_sources());
    let parked = NewEvent {
        fields: Some(waybill::webhook::mapping::Fields {
            key: "TN-NONE".into(),
            status: "in_transit".into(),
            occurred_at: None,
        }),
        tracking_number: Some("TN-NONE".into()),
        ..event("d", 1_000, 3_600_000, 1)
    };
    store.ingest(parked).await.unwrap();
    assert_eq!(store.dispatch(25).await.unwrap(), 1);
    let before = store.outcome("carrier", "d").await.unwrap().unwrap();
    assert_eq!(before.outcome, waybill::store::DispatchOutcome::Parked);

    // Another transaction holds the event and applies it.
    let (mut holder, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute(
        "SELECT 1 FROM events WHERE event_id = 'd' FOR UPDATE;
         UPDATE outcomes SET record = jsonb_set(record, '{outcome}', '\"applied\"')",
    )
    .await
    .unwrap();
    let redelivery = {
        let store = store.clone();
        tokio::spawn(async move { store.redeliver("carrier", "d").await })
    };
    // Until the redelivery waits for that lock.
    let mut waiting = 0;
    for _ in 0..500 {
        waiting = schema
            .count(
                "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE OF e%'",
            )
            .await;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(waiting, 1, "the redelivery waits for the event");
    tx.commit().await.unwrap();
    let answer = redelivery.await.unwrap();
    assert!(
        matches!(answer, Err(waybill::store::StateError::NotRedeliverable(_))),
        "{answer:?}"
    );
    let after = store.outcome("carrier", "d").await.unwrap().unwrap();
    assert_eq!(
        (after.outcome, after.attempts),
        (waybill::store::DispatchOutcome::Applied, 1)
    );
}

/// Dispatch reads every order a pass names in one statement: an order
/// that cannot be read sends only its own payment to the dead letter, and
/// the payment for a readable order in the same pass is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_order_read_ahead_dead_letters_only_its_own_payment() {
    use crate::store_properties::{payment, scenario_sources};
    use waybill::domain::request::NewOrder;
    use waybill::store::{DispatchOutcome, OrderRecord};
    let Some(schema) = schema().await else {
        return;
    };
    let store = schema.migrated(2).await;
    store.set_sources(scenario_sources(false));
    for (n, id) in ["o-good", "o-bad"].into_iter().enumerate() {
        let key = IdempotencyKey::try_from(format!("k-{id}").as_str()).unwrap();
        let order = OrderRecord::new("acme".into(), key, NewOrder::example(id), 1_000 + n as u64);
        store.create_order(order).await.unwrap();
    }
    schema
        .execute("UPDATE orders SET record = '{\"x\": 1}' WHERE order_id = 'o-bad'")
        .await;
    let at = serde_json::json!(1_796_500_000);
    store
        .ingest(payment("p-bad", 1, "o-bad", "succeeded", at.clone()))
        .await
        .unwrap();
    store
        .ingest(payment("p-good", 2, "o-good", "succeeded", at))
        .await
        .unwrap();
    assert_eq!(store.dispatch(25).await.unwrap(), 2, "one pass takes both");
    let bad = store.outcome("pay", "p-bad").await.unwrap().unwrap();
    assert_eq!(bad.outcome, DispatchOutcome::Dead);
    assert!(
        bad.reason
            .as_deref()
            .is_some_and(|r| r.ends_with("cannot be read")),
        "{bad:?}"
    );
    let good = store.outcome("pay", "p-good").await.unwrap().unwrap();
    assert_eq!(good.outcome, DispatchOutcome::Applied, "{good:?}");
}
