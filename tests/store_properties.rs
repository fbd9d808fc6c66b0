//! Properties of the store port, one body for both adapters: whatever
//! tracking events arrive, in whatever order, repeated, and whenever the
//! shipment's label is recorded among them (so that some are parked and
//! unparked), every event is dispatched exactly once and the shipment ends
//! as the ordering rule makes of the whole set. `tests/support/pg.rs` says
//! where PostgreSQL is and what happens without one.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;

use proptest::prelude::*;
use support::{label_for, shipment_record};
use waybill::config::SourceConfig;
use waybill::domain::shipment::{ShipmentStatus, StatusEvent, Timeline};
use waybill::mapping::{Fields, Interpretation, interpret_fields};
use waybill::store::{DispatchOutcome, NewEvent, Store};

const STATUSES: [&str; 5] = [
    "pre_transit",
    "in_transit",
    "out_for_delivery",
    "delivered",
    "held",
];

fn sources() -> Vec<SourceConfig> {
    support::carrier_sources()
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
                .record_label(label_for(&shipment_id, &tn, 2_000), 2_000, None)
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
            .record_label(label_for(&shipment_id, &tn, 2_000), 2_000, None)
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
        let store = support::open_store(dir.path()).await;
        store.start_dispatcher(sources()).unwrap();
        store
    });
    check(store, &runtime);
}

#[test]
fn any_arrival_order_and_label_time_give_the_rules_shipment_on_postgres() {
    let runtime = runtime();
    let Some((store, _schema)) = runtime.block_on(async {
        let schema = support::pg::schema().await?;
        let store = schema.store(4);
        store.migrate().await.unwrap();
        store.start_dispatcher(sources()).unwrap();
        Some((store, schema))
    }) else {
        return;
    };
    check(Arc::new(store), &runtime);
}
