//! Properties of the store port, one body for both adapters: whatever
//! tracking events arrive, in whatever order, repeated, and whenever the
//! shipment's label is recorded among them (so that some are parked and
//! unparked), every event is dispatched exactly once and the shipment ends
//! as the ordering rule makes of the whole set. And a differential test:
//! one scenario through every write of the port on both adapters, whose
//! answers, outcome records (reasons included) and records must agree
//! step by step. `tests/support/pg.rs` says where PostgreSQL is and what
//! happens without one.

use std::sync::Arc;
use waybill::store::prelude::*;

use crate::support::{acme_claim, label_for, shipment_record};
use proptest::prelude::*;
use waybill::config::SourceConfig;
use waybill::domain::ids::OrderKey;
use waybill::domain::shipment::{ShipmentStatus, StatusEvent, Timeline};
use waybill::store::{Cancel, DispatchOutcome, NewEvent, Store};
use waybill::webhook::mapping::{Fields, Interpretation, interpret_fields};

const STATUSES: [&str; 5] = [
    "pre_transit",
    "in_transit",
    "out_for_delivery",
    "delivered",
    "held",
];

fn sources() -> Vec<SourceConfig> {
    crate::support::carrier_sources()
}

/// One generated delivery: (status index, day, hour, sent twice).
type Delivery = (usize, u32, u32, bool);

fn deliveries() -> impl Strategy<Value = (Vec<Delivery>, usize)> {
    prop::collection::vec(
        (0..STATUSES.len(), 1u32..28, 0u32..24, any::<bool>()),
        1..24,
    )
    .prop_flat_map(|d| {
        let n = d.len();
        (Just(d), 0..=n)
    })
}

fn fields(tn: &str, d: &Delivery) -> Fields {
    Fields {
        key: tn.into(),
        status: STATUSES[d.0].into(),
        occurred_at: Some(format!("\"2026-11-{:02}T{:02}:00:00Z\"", d.1, d.2)),
    }
}

fn event(case: u64, n: usize, tn: &str, d: &Delivery) -> NewEvent {
    NewEvent {
        source: "carrier".into(),
        event_id: format!("c{case}-e{n}"),
        received_at_ms: 10_000 + n as u64,
        expires_at_ms: u64::MAX / 2,
        content_hash: [n as u8; 32],
        dispatch: true,
        event_type: None,
        headers: vec![],
        tracking_number: Some(tn.into()),
        order_id: None,
        fields: Some(fields(tn, d)),
        // What the fields were read from: unparking reads the body again.
        body: serde_json::json!({"id": format!("c{case}-e{n}"), "t": tn, "s": STATUSES[d.0],
            "at": format!("2026-11-{:02}T{:02}:00:00Z", d.1, d.2)})
        .to_string()
        .into(),
    }
}

/// One case on `store`: the deliveries before `label_at` arrive before the
/// label (parked), the rest after; each repeated delivery twice.
async fn run_case(store: &dyn Store, case: u64, ds: &[Delivery], label_at: usize) {
    let source = &sources()[0];
    let (shipment_id, tn) = (format!("shp-{case}"), format!("TN-{case}"));
    let mut reference = Timeline::new(1_000);
    reference.apply(StatusEvent::gateway(ShipmentStatus::LabelCreated, 2_000));
    for (n, d) in ds.iter().enumerate() {
        if let Interpretation::Tracking { event, .. } =
            interpret_fields(source, &format!("c{case}-e{n}"), 0, &fields(&tn, d))
        {
            reference.apply(event);
        }
    }
    store
        .create_shipment(
            shipment_record(&shipment_id, "acme", &format!("o-{case}"), 1_000),
            None,
        )
        .await
        .unwrap();
    for (n, d) in ds.iter().enumerate() {
        if n == label_at {
            store.settle().await.unwrap();
            store
                .record_label(label_for(&shipment_id, &tn, 2_000), None)
                .await
                .unwrap();
        }
        for _ in 0..(1 + usize::from(d.3)) {
            store.ingest(event(case, n, &tn, d)).await.unwrap();
        }
    }
    if label_at == ds.len() {
        store.settle().await.unwrap();
        store
            .record_label(label_for(&shipment_id, &tn, 2_000), None)
            .await
            .unwrap();
    }
    store.settle().await.unwrap();
    let shipment = store
        .shipment(&shipment_id.as_str().into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shipment.timeline, reference, "case {case}");
    for (n, d) in ds.iter().enumerate() {
        let o = store
            .outcome("carrier", &format!("c{case}-e{n}"))
            .await
            .unwrap()
            .expect("dispatched");
        // A status the map does not name is ignored at once; the others
        // that came before the label were parked, then applied with it.
        let ignored = STATUSES[d.0] == "held";
        let parked_first = n < label_at && !ignored;
        assert_eq!(o.attempts, 1 + u32::from(parked_first), "case {case} e{n}");
        assert_ne!(o.outcome, DispatchOutcome::Parked, "nothing stays parked");
    }
}

fn check(store: Arc<dyn Store>, runtime: &tokio::runtime::Runtime) {
    let cases = std::sync::atomic::AtomicU64::new(0);
    proptest!(ProptestConfig::with_cases(24), |((ds, label_at) in deliveries())| {
        let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(run_case(store.as_ref(), case, &ds, label_at));
    });
    let closing = store.clone();
    runtime
        .block_on(async { tokio::task::spawn_blocking(move || closing.close()).await })
        .unwrap()
        .unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn any_arrival_order_and_label_time_give_the_rules_shipment_on_sled() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(async {
        let store = crate::support::open_store(dir.path()).await;
        store.start_dispatcher(sources()).unwrap();
        store
    });
    check(store, &runtime);
}

#[test]
fn any_arrival_order_and_label_time_give_the_rules_shipment_on_postgres() {
    let runtime = runtime();
    let Some((store, _schema)) = runtime.block_on(async {
        let schema = crate::support::pg::schema().await?;
        let store = schema.store(4);
        store.migrate().await.unwrap();
        store.start_dispatcher(sources()).unwrap();
        Some((store, schema))
    }) else {
        return;
    };
    check(Arc::new(store), &runtime);
}

/// The sources of the differential scenario: tracking and payments, and
/// after a reload (`reloaded`), `held` mapped and the payment source gone.
pub(crate) fn scenario_sources(reloaded: bool) -> Vec<SourceConfig> {
    let pay = if reloaded {
        ""
    } else {
        r#"
        [[sources]]
        name = "pay"
        kind = "payment"
        secrets = ["s"]
        signature = { scheme = "github" }
        event_id = "/id"
        [sources.mapping]
        order_id = "/o"
        status = "/s"
        occurred_at = "/at"
        [sources.mapping.status_map]
        succeeded = "SUCCEEDED"
        refunded = "REFUNDED"
        "#
    };
    let mut statuses = vec![
        ("in_transit", "IN_TRANSIT"),
        ("out_for_delivery", "OUT_FOR_DELIVERY"),
    ];
    if reloaded {
        statuses.push(("held", "EXCEPTION"));
    }
    let toml = crate::support::config::tracking_source(
        "carrier",
        crate::support::config::Shape::Github,
        "s",
        &statuses,
    ) + pay;
    waybill::config::Config::parse(&toml, &waybill::config::ProcessEnv)
        .unwrap()
        .sources
}

/// A delivery of `source` as intake stores it: the body, and the fields
/// the source's mapping reads from it.
fn delivery(source: &str, id: &str, n: u64, body: serde_json::Value) -> NewEvent {
    let sources = scenario_sources(false);
    let config = sources.iter().find(|s| s.name == source).unwrap();
    let fields = waybill::webhook::mapping::extract(config, &body).unwrap();
    NewEvent {
        source: source.into(),
        event_id: id.into(),
        received_at_ms: 10_000 + n,
        expires_at_ms: u64::MAX / 2,
        content_hash: [n as u8; 32],
        dispatch: true,
        event_type: None,
        headers: vec![],
        tracking_number: (source == "carrier").then(|| fields.key.clone()),
        order_id: (source == "pay").then(|| fields.key.clone()),
        fields: Some(fields),
        body: body.to_string().into(),
    }
}

fn tracking(id: &str, n: u64, tn: &str, status: &str, at: serde_json::Value) -> NewEvent {
    delivery(
        "carrier",
        id,
        n,
        serde_json::json!({"id": id, "t": tn, "s": status, "at": at}),
    )
}

pub(crate) fn payment(
    id: &str,
    n: u64,
    order_id: &str,
    status: &str,
    at: serde_json::Value,
) -> NewEvent {
    delivery(
        "pay",
        id,
        n,
        serde_json::json!({"id": id, "o": order_id, "s": status, "at": at}),
    )
}

/// An outcome without the time it was recorded, which differs by run.
fn timeless(outcome: Option<waybill::store::OutcomeRecord>) -> String {
    format!(
        "{:?}",
        outcome.map(|o| waybill::store::OutcomeRecord { at_ms: 0, ..o })
    )
}

/// The scenario of the differential test on `store`: every write of the
/// port, each in the states where it succeeds and where it refuses, with
/// events that are applied, parked and unparked, ignored, dead, redelivered
/// under a reloaded config and left behind by a removed source. Returns
/// what each step answered and, at the end, every outcome record and the
/// shipments and order as they are left.
async fn differential_trace(store: &dyn Store) -> Vec<String> {
    use waybill::domain::order::OrderStatus;
    use waybill::domain::request::NewOrder;
    use waybill::idempotency::{Record, fingerprint};
    use waybill::store::{Completion, OrderCreated, OrderRecord, OrderWrite};

    let mut trace = Vec::new();
    let mut step = |name: &str, result: String| trace.push(format!("{name}: {result}"));
    let label = |shipment: &str, tn: &str, at: u64| label_for(shipment, tn, at);
    use serde_json::json;
    let events = [
        tracking("t1", 1, "TN-1", "in_transit", json!("2026-11-02T10:00:00Z")),
        tracking("t2", 2, "TN-1", "held", json!("2026-11-02T11:00:00Z")),
        tracking("t3", 3, "TN-1", "in_transit", json!("yesterday")),
        tracking(
            "t4",
            4,
            "TN-1",
            "out_for_delivery",
            json!("2026-11-03T08:00:00Z"),
        ),
        tracking("t5", 5, "TN-7", "in_transit", json!("2026-11-02T12:00:00Z")),
        payment("p1", 6, "o-9", "succeeded", json!(1_796_500_000)),
        payment("p2", 7, "o-9", "refunded", json!(1_796_600_000)),
        // Milliseconds where seconds belong.
        payment("p3", 8, "o-9", "refunded", json!(1_796_600_000_000u64)),
        tracking("t6", 9, "TN-1", "held", json!("2026-11-03T09:00:00Z")),
    ];

    for id in ["s1", "s2"] {
        let created = store
            .create_shipment(shipment_record(id, "acme", &format!("o-{id}"), 1_000), None)
            .await;
        step(&format!("create {id}"), format!("{created:?}"));
    }
    let again = store
        .create_shipment(shipment_record("s1", "acme", "o-x", 1_000), None)
        .await;
    step("create s1 again", format!("{again:?}"));
    // Before any label: t1 parks; t2 is not in the map; t3's time is not
    // a time; t5 parks for a tracking number nobody has.
    for event in [&events[0], &events[1], &events[2], &events[4], &events[0]] {
        let result = store.ingest(event.clone()).await.map(|r| match r {
            waybill::store::IngestResult::Accepted { .. } => "accepted",
            waybill::store::IngestResult::Duplicate { .. } => "duplicate",
        });
        step(&format!("ingest {}", event.event_id), format!("{result:?}"));
    }
    store.settle().await.unwrap();
    let recorded = store.record_label(label("s1", "TN-1", 2_000), None).await;
    step("label s1", format!("{recorded:?}"));
    let taken = store.record_label(label("s2", "TN-1", 2_000), None).await;
    step("label s2 with s1's number", format!("{taken:?}"));
    let second = store.record_label(label("s1", "TN-9", 2_000), None).await;
    step("second label s1", format!("{second:?}"));
    store.ingest(events[3].clone()).await.unwrap();
    store.settle().await.unwrap();
    let moving = store.cancel(Cancel::at("s1".into(), 3_000)).await;
    step("cancel moving s1", format!("{moving:?}"));
    let cancelled = store.cancel(Cancel::at("s2".into(), 3_000)).await;
    step("cancel s2", format!("{cancelled:?}"));
    let late = store.record_label(label("s2", "TN-2", 4_000), None).await;
    step("label cancelled s2", format!("{late:?}"));
    let once_more = store.cancel(Cancel::at("s2".into(), 5_000)).await;
    step("cancel s2 again", format!("{once_more:?}"));

    // A payment for an order not yet there parks, and is applied with it.
    store.ingest(events[5].clone()).await.unwrap();
    store.settle().await.unwrap();
    let key = |k: &str| waybill::idempotency::IdempotencyKey::try_from(k).unwrap();
    let order = OrderRecord::new("acme".into(), key("ko"), NewOrder::example("o-9"), 6_000);
    let created = store.create_order(order.clone()).await;
    step("create o-9", format!("{created:?}"));
    let other = OrderRecord::new("acme".into(), key("ko2"), NewOrder::example("o-9"), 6_500);
    let existing = store.create_order(other).await;
    step("create o-9 again", format!("{existing:?}"));
    store.ingest(events[6].clone()).await.unwrap();
    store.ingest(events[7].clone()).await.unwrap();
    store.settle().await.unwrap();
    assert!(
        matches!(created, Ok(OrderCreated::Created(_))),
        "{created:?}"
    );
    let mut order = store
        .order(&OrderKey::new("acme".into(), "o-9".into()))
        .await
        .unwrap()
        .unwrap();
    order.status = OrderStatus::PaymentSuccessPendingFulfillment;
    order.progress.shipment_id = Some("s3".into());
    order.fulfil_due_ms = Some(7_000);
    let written = store
        .write_order(OrderWrite {
            order: order.clone(),
            new_shipment: Some(shipment_record("s3", "acme", "o-9", 6_000)),
            label: None,
            completion: None,
            unschedule: None,
        })
        .await;
    step("o-9 charged", format!("{written:?}"));
    let due = store.due_fulfilments(8_000, 10).await;
    step("due", format!("{due:?}"));
    let details = waybill::domain::request::ShipmentDetails::example("ups");
    for format in [
        waybill::domain::label::LabelFormat::Zpl,
        waybill::domain::label::LabelFormat::Pdf,
    ] {
        let request = waybill::domain::label::LabelRequest::new(&"s3".into(), &details, format);
        let intent = store.record_intent(&"s3".into(), request).await;
        step("intent s3", format!("{intent:?}"));
    }
    let mut confirmed = store
        .order(&OrderKey::new("acme".into(), "o-9".into()))
        .await
        .unwrap()
        .unwrap();
    confirmed.status = OrderStatus::Confirmed;
    confirmed.fulfil_due_ms = None;
    let fp = fingerprint("POST", "/v1/orders", None);
    let completion = |k: &str| Completion {
        partner: "acme".into(),
        key: key(k),
        record: Record::Done {
            fingerprint: fp,
            status: 201,
            body: "{}".into(),
            expires_at_ms: u64::MAX / 4,
        },
    };
    let written = store
        .write_order(OrderWrite {
            order: confirmed,
            new_shipment: None,
            label: Some(label("s3", "TN-3", 9_000)),
            completion: Some(completion("ko")),
            unschedule: Some(7_000),
        })
        .await;
    step("o-9 confirmed", format!("{written:?}"));
    let due = store.due_fulfilments(20_000, 10).await;
    step("due after", format!("{due:?}"));

    // A shipment cancelled with a label request unanswered owes its void:
    // queued, owed again later, then settled once; a second settlement
    // changes nothing.
    store
        .create_shipment(shipment_record("s4", "acme", "o-s4", 1_000), None)
        .await
        .unwrap();
    let request = waybill::domain::label::LabelRequest::new(
        &"s4".into(),
        &details,
        waybill::domain::label::LabelFormat::Pdf,
    );
    store.record_intent(&"s4".into(), request).await.unwrap();
    let owing = store.cancel(Cancel::at("s4".into(), 10_000)).await;
    step("cancel s4 with a label asked for", format!("{owing:?}"));
    step("voids owed", format!("{:?}", store.voids_owed().await));
    step(
        "voids due before",
        format!("{:?}", store.due_voids(9_999, 10).await),
    );
    step(
        "voids due",
        format!("{:?}", store.due_voids(10_000, 10).await),
    );
    use waybill::domain::label::LabelVoid;
    let later = store
        .settle_void(&"s4".into(), LabelVoid::retry(1, 10_000))
        .await;
    step("void owed again", format!("{later:?}"));
    step(
        "voids due then",
        format!("{:?}", store.due_voids(10_500, 10).await),
    );
    let voided = LabelVoid::Voided {
        label_id: "lbl-s4".into(),
        at_ms: 12_000,
    };
    let settled = store.settle_void(&"s4".into(), voided.clone()).await;
    step("void settled", format!("{settled:?}"));
    let twice = store.settle_void(&"s4".into(), voided).await;
    step("void settled again", format!("{twice:?}"));
    step(
        "voids owed after",
        format!("{:?}", store.voids_owed().await),
    );
    step(
        "voids due after",
        format!("{:?}", store.due_voids(u64::MAX / 4, 10).await),
    );

    // Keys: a final answer replays, another request under it conflicts, a
    // claim holds until released.
    let hour = std::time::Duration::from_secs(3600);
    let other_fp = fingerprint("POST", "/v1/shipments", None);
    for (name, k, f) in [
        ("claim ko", "ko", fp),
        ("claim ko, other request", "ko", other_fp),
        ("claim k2", "k2", fp),
        ("claim k2 again", "k2", fp),
    ] {
        let decision = store.claim(&acme_claim(k, f, hour)).await;
        step(name, format!("{decision:?}"));
    }
    store.release(&"acme".into(), &key("k2")).await;
    let decision = store.claim(&acme_claim("k2", fp, hour)).await;
    step("claim k2 released", format!("{decision:?}"));
    let finished = store.finish(completion("k2")).await;
    step("finish k2", format!("{finished:?}"));

    // A reload maps `held` and drops the payment source: redelivery reads
    // each event again under it, and new events are read with it.
    let dead = store.outcome("pay", "p3").await.unwrap();
    step("outcome p3 before the reload", timeless(dead));
    store.set_sources(scenario_sources(true));
    store.ingest(events[8].clone()).await.unwrap();
    store.settle().await.unwrap();
    for (source, id) in [
        ("carrier", "t2"),
        ("carrier", "t3"),
        ("pay", "p3"),
        ("carrier", "t5"),
        ("carrier", "nope"),
    ] {
        let again = store.redeliver(source, id).await.map(|o| timeless(Some(o)));
        step(&format!("redeliver {id}"), format!("{again:?}"));
    }
    store.settle().await.unwrap();

    for event in &events {
        let outcome = store.outcome(&event.source, &event.event_id).await.unwrap();
        step(&format!("outcome {}", event.event_id), timeless(outcome));
    }
    for id in ["s1", "s2", "s3"] {
        let shipment = store.shipment(&id.into()).await.unwrap();
        step(&format!("shipment {id}"), format!("{shipment:?}"));
    }
    let order = store
        .order(&OrderKey::new("acme".into(), "o-9".into()))
        .await
        .unwrap();
    step("order o-9", format!("{order:?}"));
    let ids = ["s3".into(), "nope".into(), "s1".into()];
    let mut found = store.shipments(&ids).await.unwrap();
    found.sort_by(|a, b| a.shipment_id.as_str().cmp(b.shipment_id.as_str()));
    let found: Vec<_> = found.iter().map(|s| s.shipment_id.as_str()).collect();
    step("shipments s3, nope, s1", format!("{found:?}"));

    // A new copy of an identity whose first copy expired takes its place,
    // in the searches by tracking number too.
    let mut first = tracking(
        "r1",
        20,
        "TN-8",
        "in_transit",
        json!("2026-11-04T10:00:00Z"),
    );
    first.expires_at_ms = first.received_at_ms + 1;
    let again = tracking(
        "r1",
        21,
        "TN-9",
        "in_transit",
        json!("2026-11-04T11:00:00Z"),
    );
    for (name, event) in [("r1", first), ("r1 again", again)] {
        let result = store.ingest(event).await.map(|r| match r {
            waybill::store::IngestResult::Accepted { .. } => "accepted",
            waybill::store::IngestResult::Duplicate { .. } => "duplicate",
        });
        step(name, format!("{result:?}"));
    }
    for tn in ["TN-8", "TN-9"] {
        let filter = waybill::store::EventFilter {
            tracking_number: Some(tn.into()),
            ..Default::default()
        };
        let found = store.search(&filter, 10, 100).await.unwrap();
        let found: Vec<_> = (found.events.iter())
            .map(|(e, _)| (e.event_id.clone(), e.meta.received_at_ms))
            .collect();
        step(&format!("events under {tn}"), format!("{found:?}"));
    }
    // A search in arrival order lists the identity once, while the
    // expired copy's arrival may still wait for retention.
    let by_source = waybill::store::EventFilter {
        source: Some("carrier".into()),
        ..Default::default()
    };
    let found = store.search(&by_source, 100, 1000).await.unwrap();
    let r1 = (found.events.iter())
        .filter(|(e, _)| e.event_id == "r1")
        .map(|(e, _)| e.meta.received_at_ms)
        .collect::<Vec<_>>();
    step("r1 in a search of its source", format!("{r1:?}"));
    trace
}

/// The one list of scenarios on both adapters, compared step by step:
/// every answer, every outcome record with its reason, every record left.
#[test]
fn both_adapters_answer_every_step_of_the_scenario_alike() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sled_trace = runtime.block_on(async {
        let store = crate::support::open_store(dir.path()).await;
        store.start_dispatcher(scenario_sources(false)).unwrap();
        let trace = differential_trace(store.as_ref()).await;
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap()
            .unwrap();
        trace
    });
    // The scenario reaches what it is meant to, so that agreeing means
    // something.
    let all = sled_trace.join("\n");
    for expected in [
        "events under TN-8: []",
        "events under TN-9: [(\"r1\", 10021)]",
        "create s1 again: Err(ShipmentExists",
        "label s2 with s1's number: Err(TrackingNumberTaken",
        "second label s1: Err(LabelExists",
        "cancel moving s1: Err(InvalidTransition)",
        "label cancelled s2: Err(InvalidTransition)",
        "create o-9 again: Ok(Existing",
        "claim ko: Ok(Replay",
        "claim ko, other request: Ok(Conflict)",
        "claim k2 again: Ok(InProgress)",
        "claim k2 released: Ok(Run)",
        "outcome t1: Some(OutcomeRecord { outcome: Applied",
        "outcome t3: Some(OutcomeRecord { outcome: Dead, reason: Some(\"/at is neither",
        "outcome t5: Some(OutcomeRecord { outcome: Parked",
        "outcome p1: Some(OutcomeRecord { outcome: Applied",
        "outcome p3 before the reload: Some(OutcomeRecord { outcome: Dead, reason: Some(\"/at is outside",
        "outcome t6: Some(OutcomeRecord { outcome: Applied",
        "redeliver t2: Err(NotRedeliverable",
        "redeliver t3: Ok(\"Some(OutcomeRecord { outcome: Dead",
        "redeliver p3: Ok(\"Some(OutcomeRecord { outcome: Dead, reason: Some(\\\"source pay is no longer",
        "redeliver t5: Ok(\"Some(OutcomeRecord { outcome: Parked",
        "redeliver nope: Err(NotFound)",
        "o-9 confirmed: Ok(",
        "due after: Ok([])",
        "shipments s3, nope, s1: [\"s1\", \"s3\"]",
    ] {
        assert!(all.contains(expected), "{expected}\n{all}");
    }
    let Some(pg_trace) = runtime.block_on(async {
        let schema = crate::support::pg::schema().await?;
        let store = schema.store(4);
        store.migrate().await.unwrap();
        store.start_dispatcher(scenario_sources(false)).unwrap();
        Some(differential_trace(&store).await)
    }) else {
        return;
    };
    for (sled, pg) in sled_trace.iter().zip(&pg_trace) {
        assert_eq!(sled, pg, "sled and PostgreSQL part at this step");
    }
    assert_eq!(sled_trace.len(), pg_trace.len());
}
