//! "Dispatch" (GUARANTEES.md) through the API: tracking deliveries reach shipments by the
//! ordering rule, however they arrive; unmapped statuses are ignored;
//! unknown tracking numbers are parked until their label is recorded.

use serde_json::json;
use waybill::domain::shipment::ShipmentStatus;
use waybill::store::DispatchOutcome;
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

async fn status(app: &TestApp, shipment_id: &str) -> ShipmentStatus {
    app.app
        .store
        .shipment(&shipment_id.into())
        .await
        .unwrap()
        .unwrap()
        .timeline
        .status()
}

#[tokio::test]
async fn shuffled_and_repeated_tracking_updates_give_the_rules_status() {
    let app = spawn_app().await;
    // The same updates in several arrival orders, with repeats: the final
    // status and history are the same each time.
    let updates = [
        ("u1", "pre_transit", "2026-11-20T08:00:00Z"),
        ("u2", "in_transit", "2026-11-20T10:00:00Z"),
        ("u3", "out_for_delivery", "2026-11-21T07:00:00Z"),
        ("u4", "delivered", "2026-11-21T15:00:00Z"),
        // A scan that arrives after delivery, stamped later: not terminal, so it loses.
        ("u5", "in_transit", "2026-11-22T09:00:00Z"),
    ];
    let orders: [&[usize]; 3] = [
        &[0, 1, 2, 3, 4],
        &[4, 3, 3, 0, 2, 1, 4],
        &[2, 4, 0, 1, 1, 3],
    ];
    let mut histories = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        let (sid, tn) = (format!("shp_shuffle_{n}"), format!("TN-SHUFFLE-{n}"));
        shipment_with_label(&app, &sid, &tn).await;
        for &i in order.iter() {
            let (id, st, at) = updates[i];
            let r = send_tracking(&app, &format!("{id}-{n}"), &tn, st, at).await;
            assert!(r.status == 202 || r.status == 200, "{:?}", r.body);
        }
        app.settle().await;
        assert_eq!(
            status(&app, &sid).await,
            ShipmentStatus::Delivered,
            "order {order:?}"
        );
        let rec = app
            .app
            .store
            .shipment(&sid.as_str().into())
            .await
            .unwrap()
            .unwrap();
        let h: Vec<(ShipmentStatus, i64, Option<String>)> = rec
            .timeline
            .history()
            .filter(|e| !e.is_gateway())
            .map(|e| {
                (
                    e.status,
                    e.occurred_at_ms,
                    e.event_id
                        .clone()
                        .map(|i| i.split('-').next().unwrap().to_string()),
                )
            })
            .collect();
        assert_eq!(
            rec.timeline.history().filter(|e| e.is_gateway()).count(),
            2,
            "CREATED and LABEL_CREATED"
        );
        histories.push(h);
    }
    assert_eq!(histories[0], histories[1]);
    assert_eq!(histories[0], histories[2]);
    // The five carrier events, each once, in time order.
    assert_eq!(histories[0].len(), 5);
    assert!(histories[0].windows(2).all(|w| w[0].1 <= w[1].1));
}

#[tokio::test]
async fn a_status_missing_from_the_map_is_ignored() {
    let app = spawn_app().await;
    shipment_with_label(&app, "shp_ignored", "TN-IGN").await;
    assert_eq!(
        send_tracking(
            &app,
            "ign-1",
            "TN-IGN",
            "held_at_customs",
            "2026-11-20T08:00:00Z"
        )
        .await
        .status,
        202
    );
    app.settle().await;
    let o = app.app.store.outcome("ep", "ign-1").await.unwrap().unwrap();
    assert_eq!(o.outcome, DispatchOutcome::Ignored);
    assert_eq!(
        status(&app, "shp_ignored").await,
        ShipmentStatus::LabelCreated
    );
    assert_eq!(
        app.app
            .store
            .shipment(&"shp_ignored".into())
            .await
            .unwrap()
            .unwrap()
            .timeline
            .history()
            .count(),
        2
    );
}

#[tokio::test]
async fn an_unknown_tracking_number_is_parked_then_applied_when_its_label_is_recorded() {
    let app = spawn_app().await;
    send_tracking(
        &app,
        "park-1",
        "TN-LATER",
        "in_transit",
        "2026-11-20T10:00:00Z",
    )
    .await;
    send_tracking(
        &app,
        "park-2",
        "TN-LATER",
        "pre_transit",
        "2026-11-20T08:00:00Z",
    )
    .await;
    app.settle().await;
    for id in ["park-1", "park-2"] {
        assert_eq!(app.outcome_of("ep", id).await, DispatchOutcome::Parked);
    }

    shipment_with_label(&app, "shp_later", "TN-LATER").await;
    // Applied in the same write as the label: no waiting.
    assert_eq!(status(&app, "shp_later").await, ShipmentStatus::InTransit);
    let o1 = app
        .app
        .store
        .outcome("ep", "park-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o1.shipment_id, Some("shp_later".into()));
    assert!(matches!(
        o1.outcome,
        DispatchOutcome::Applied | DispatchOutcome::Stale
    ));
    // A later update goes straight to the shipment.
    send_tracking(
        &app,
        "park-3",
        "TN-LATER",
        "delivered",
        "2026-11-21T10:00:00Z",
    )
    .await;
    app.settle().await;
    assert_eq!(status(&app, "shp_later").await, ShipmentStatus::Delivered);
}

/// `waybill_parked_events` follows every way into and out of parking:
/// dispatch parks, a label unparks, a restart remembers, retention forgets.
#[tokio::test]
async fn the_parked_count_follows_parking_unparking_restarts_and_retention() {
    let app = spawn_app().await;
    assert_eq!(app.app.store.parked().await.unwrap(), 0);
    let at = "2026-11-20T10:00:00Z";
    for (id, tn) in [
        ("pk-1", "TN-PK-A"),
        ("pk-2", "TN-PK-A"),
        ("pk-3", "TN-PK-B"),
    ] {
        assert_eq!(
            send_tracking(&app, id, tn, "in_transit", at).await.status,
            202
        );
    }
    app.settle().await;
    assert_eq!(app.app.store.parked().await.unwrap(), 3);
    let m = app.metrics().await;
    assert!(m.contains("\nwaybill_parked_events "), "{m}");

    shipment_with_label(&app, "shp_pk_a", "TN-PK-A").await;
    assert_eq!(
        app.app.store.parked().await.unwrap(),
        1,
        "both events of TN-PK-A unparked"
    );
    // A redelivery that parks it again leaves the count where it was.
    assert_eq!(
        app.admin_post("/admin/events/ep/pk-3/redeliver")
            .await
            .status,
        200
    );
    assert_eq!(app.app.store.parked().await.unwrap(), 1);

    let app = app.restart().await;
    assert_eq!(
        app.app.store.parked().await.unwrap(),
        1,
        "kept in the store"
    );

    // Retention forgets the parked event (and the others) at a far later time.
    let later = waybill::clock::now_ms() + 400 * 86_400_000;
    while app.app.store.sweep_expired(later, 256).await.unwrap() > 0 {}
    assert!(app.app.store.outcome("ep", "pk-3").await.unwrap().is_none());
    assert_eq!(app.app.store.parked().await.unwrap(), 0);
    let app = app.restart().await;
    assert_eq!(app.app.store.parked().await.unwrap(), 0);
}

#[tokio::test]
async fn payment_events_wait_for_their_order() {
    let app = spawn_app().await;
    let body =
        json!({"id": "pay-1", "type": "payment_intent.succeeded", "data": {"order_id": "ord-9"}})
            .to_string();
    let h = signed(SchemeKind::Github, GH_SECRET, body.as_bytes(), 0, "x");
    let h: Vec<_> = h
        .into_iter()
        .filter(|(k, _)| k != "X-GitHub-Delivery")
        .collect();
    assert_eq!(app.webhook("pay", &h, body.as_bytes()).await.status, 202);
    app.settle().await;
    let o = app
        .app
        .store
        .outcome("pay", "pay-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.outcome, DispatchOutcome::Parked);
    assert!(o.reason.unwrap().contains("ord-9"));
}
