//! The use cases against scripted carrier, payments and inventory
//! services and an embedded store in a temporary directory: every
//! refusal a label purchase, a cancel and an order can meet, what each
//! leaves behind, and what a retry then does. No process, no network.

use crate::store::prelude::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::keyed::{Answered, Keyed};
use super::ports::{
    Books, Carrier, Charge, ChargeRequest, Entry, Failure, Inventory, LabelSold, Page, PageAt,
    Payments, Reservation, Service,
};
use super::{Placed, Ports, Refusal, Render, StoredAnswer, orders, reconcile, shipments};
use crate::clock::now_ms;
use crate::domain::ids::{LabelId, OrderId, OrderKey, PartnerName, ReservationId, ShipmentId};
use crate::domain::label::{Label, LabelFormat, LabelRequest, LabelVoid};
use crate::domain::order::{OrderFailure, OrderStatus};
use crate::domain::request::{Item, NewOrder, NewShipment, ShipmentDetails};
use crate::domain::shipment::ShipmentStatus;
use crate::store::{Cancel, Claim, OrderRecord, ShipmentRecord, SledStore};

/// A call the services saw, with the identity it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Buy(ShipmentId),
    Void(LabelId),
    Reserve(OrderId),
    Charge(OrderId),
    Release(String),
}

type Script<T> = Mutex<VecDeque<T>>;

/// Carrier, payments and inventory that answer what the test scripted,
/// in order, and fail the test on a call nobody scripted.
#[derive(Default)]
struct Services {
    buys: Script<Result<LabelSold, Failure>>,
    voids: Script<Result<(), Failure>>,
    reserves: Script<Result<Reservation, Failure>>,
    charges: Script<Result<Charge, Failure>>,
    releases: Script<Result<(), Failure>>,
    calls: Mutex<Vec<Call>>,
    /// Cancelled in the store while the carrier sells its label.
    cancelled_during_buy: Mutex<Option<(Arc<SledStore>, ShipmentId)>>,
}

fn next<T>(script: &Script<T>, call: Call, calls: &Mutex<Vec<Call>>) -> T {
    calls.lock().unwrap().push(call.clone());
    let answer = script.lock().unwrap().pop_front();
    answer.unwrap_or_else(|| panic!("unscripted call {call:?}"))
}

impl Services {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn script<T>(script: &Script<T>, answers: impl IntoIterator<Item = T>) {
        script.lock().unwrap().extend(answers);
    }
}

#[async_trait]
impl Carrier for Services {
    async fn buy_label(&self, request: &LabelRequest) -> Result<LabelSold, Failure> {
        let answer = next(
            &self.buys,
            Call::Buy(request.shipment_id.clone()),
            &self.calls,
        );
        let cancel = self.cancelled_during_buy.lock().unwrap().take();
        if let Some((store, id)) = cancel {
            store.cancel(Cancel::at(id, 1)).await.unwrap();
        }
        answer
    }

    async fn void_label(&self, label_id: &LabelId) -> Result<(), Failure> {
        next(&self.voids, Call::Void(label_id.clone()), &self.calls)
    }
}

#[async_trait]
impl Payments for Services {
    async fn charge(&self, request: ChargeRequest<'_>) -> Result<Charge, Failure> {
        next(
            &self.charges,
            Call::Charge(request.order_id.clone()),
            &self.calls,
        )
    }
}

#[async_trait]
impl Inventory for Services {
    async fn reserve(
        &self,
        _: &PartnerName,
        order_id: &OrderId,
        _: &[Item],
    ) -> Result<Reservation, Failure> {
        next(&self.reserves, Call::Reserve(order_id.clone()), &self.calls)
    }

    async fn release(
        &self,
        _: &PartnerName,
        _: &OrderId,
        reservation_id: &ReservationId,
    ) -> Result<(), Failure> {
        next(
            &self.releases,
            Call::Release(reservation_id.to_string()),
            &self.calls,
        )
    }
}

const UNAVAILABLE: Failure = Failure::Unavailable {
    retry_after_secs: 7,
};
const REFUSED: Failure = Failure::Refused { status: 400 };
const MALFORMED: Failure = Failure::Malformed {
    missing: "label_id",
};

fn sold(n: u32) -> Result<LabelSold, Failure> {
    Ok(LabelSold {
        label_id: format!("lbl-{n}").into(),
        tracking_number: format!("TN-{n}").into(),
        carrier: Some("ups".into()),
    })
}

/// Stored answers that say what they answer, for comparing replays.
struct Words;

impl Render for Words {
    fn created(&self, shipment: &ShipmentRecord) -> StoredAnswer {
        answer(201, format!("created {}", shipment.shipment_id))
    }

    fn label(&self, label: &Label) -> StoredAnswer {
        answer(201, format!("label {}", label.label_id))
    }

    fn placed(&self, placed: Placed, order: &OrderRecord) -> StoredAnswer {
        answer(201, format!("{placed:?} {}", order.order_id))
    }

    fn refusal(&self, refusal: &Refusal) -> StoredAnswer {
        answer(409, format!("refused: {refusal}"))
    }

    fn cancelled(&self) -> fn(&ShipmentRecord) -> StoredAnswer {
        |shipment| answer(200, format!("cancelled {}", shipment.shipment_id))
    }
}

fn answer(status: u16, body: String) -> StoredAnswer {
    StoredAnswer { status, body }
}

struct World {
    store: Arc<SledStore>,
    services: Services,
    _dir: tempfile::TempDir,
}

impl World {
    /// Whether no order waits for background fulfilment, now or ever.
    async fn queue_is_empty(&self) -> bool {
        let due = self.store.due_fulfilments(u64::MAX / 2, 10).await;
        due.unwrap().is_empty()
    }

    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&crate::store::sled::test_config(dir.path())).unwrap();
        store.start_dispatcher(Vec::new()).unwrap();
        World {
            store: Arc::new(store),
            services: Services::default(),
            _dir: dir,
        }
    }

    fn ports(&self) -> Ports<'_> {
        Ports {
            keys: self.store.as_ref(),
            shipments: self.store.as_ref(),
            orders: self.store.as_ref(),
            carrier: &self.services,
            payments: &self.services,
            inventory: &self.services,
        }
    }

    async fn shipment(&self, id: &ShipmentId) -> ShipmentRecord {
        self.store.shipment(id).await.unwrap().unwrap()
    }

    /// A shipment of partner `acme`, created through its use case.
    /// A shipment whose label purchase met `failure` (its request
    /// recorded, no label), then cancelled: at once, owing the void.
    async fn cancelled_after(&self, failure: Failure) -> ShipmentId {
        let id = self.new_shipment().await;
        Services::script(&self.services.buys, [Err(failure)]);
        refused(self.label("k", &id).await);
        let cancelled = ran(self.cancel("c", &id).await);
        assert_eq!(cancelled.timeline.status(), ShipmentStatus::Cancelled);
        id
    }

    async fn new_shipment(&self) -> ShipmentId {
        let request = NewShipment {
            order_id: "o-1".into(),
            details: ShipmentDetails::example("ups"),
        };
        match shipments::create(self.ports(), &keyed(&next_key()), &request, &Words).await {
            Ok(Answered::Ran(rec)) => rec.shipment_id,
            other => panic!("{other:?}"),
        }
    }

    /// A new shipment whose label `lbl-1` was bought under key `key`.
    async fn labelled_shipment(&self, key: &str) -> ShipmentId {
        let id = self.new_shipment().await;
        Services::script(&self.services.buys, [sold(1)]);
        ran(self.label(key, &id).await);
        id
    }

    async fn label(&self, key: &str, id: &ShipmentId) -> Result<Answered<Label>, Refusal> {
        shipments::label(self.ports(), &keyed(key), id, LabelFormat::Pdf, &Words).await
    }

    async fn cancel(
        &self,
        key: &str,
        id: &ShipmentId,
    ) -> Result<Answered<ShipmentRecord>, Refusal> {
        shipments::cancel_keyed(self.ports(), &keyed(key), id, &Words).await
    }

    async fn order(&self, key: &str, id: &str) -> Result<Answered<(Placed, OrderRecord)>, Refusal> {
        orders::order(self.ports(), &keyed(key), &NewOrder::example(id), &Words).await
    }

    async fn stored_order(&self, id: &str) -> OrderRecord {
        self.store
            .order(&OrderKey::new("acme".into(), id.into()))
            .await
            .unwrap()
            .unwrap()
    }
}

fn next_key() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "setup-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Key `key` of partner `acme`, for one request (the fingerprint is the
/// key's: the same key is the same request).
fn keyed(key: &str) -> Keyed {
    Keyed {
        partner: "acme".into(),
        key: key.try_into().unwrap(),
        fingerprint: crate::idempotency::fingerprint("POST", key, None),
        lease: Duration::from_secs(60),
        retention: Duration::from_secs(3600),
    }
}

/// That `result` is a refusal for `service` being unavailable, to be
/// retried after `retry_after_secs`.
fn assert_upstream<T: std::fmt::Debug>(
    result: Result<Answered<T>, Refusal>,
    service: Service,
    retry_after_secs: u64,
) {
    let refusal = refused(result);
    assert!(
        matches!(&refusal, Refusal::Upstream { service: s, retry_after_secs: a }
            if *s == service && *a == retry_after_secs),
        "{refusal:?}"
    );
}

fn ran<T: std::fmt::Debug>(result: Result<Answered<T>, Refusal>) -> T {
    match result {
        Ok(Answered::Ran(done)) => done,
        other => panic!("expected a run, got {other:?}"),
    }
}

fn refused<T: std::fmt::Debug>(result: Result<Answered<T>, Refusal>) -> Refusal {
    match result {
        Err(refusal) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn replayed<T: std::fmt::Debug>(result: Result<Answered<T>, Refusal>) -> StoredAnswer {
    match result {
        Ok(Answered::Replayed(stored)) => stored,
        other => panic!("expected a replay, got {other:?}"),
    }
}

// Labels.

#[tokio::test]
async fn a_label_is_bought_once_and_its_answer_replayed() {
    let w = World::new();
    let id = w.new_shipment().await;
    Services::script(&w.services.buys, [sold(1)]);
    let label = ran(w.label("k", &id).await);
    assert_eq!(label.tracking_number, "TN-1");
    let stored = replayed(w.label("k", &id).await);
    assert_eq!(stored, answer(201, "label lbl-1".into()));
    assert_eq!(w.services.calls(), [Call::Buy(id.clone())]);
    let shipment = w.shipment(&id).await;
    assert_eq!(shipment.timeline.status(), ShipmentStatus::LabelCreated);
}

#[tokio::test]
async fn a_carrier_that_fails_leaves_the_intent_and_gives_the_key_back() {
    let w = World::new();
    let id = w.new_shipment().await;
    for (failure, retry_after) in [(UNAVAILABLE, 7), (REFUSED, 1), (MALFORMED, 1)] {
        Services::script(&w.services.buys, [Err(failure)]);
        assert_upstream(w.label("k", &id).await, Service::Carrier, retry_after);
        let shipment = w.shipment(&id).await;
        assert!(shipment.label.is_none());
        assert!(
            shipment.label_intent.is_some(),
            "the request is recorded first"
        );
    }
    // The key was given back each time: the retry runs, and sends the
    // recorded request again under the shipment's key.
    Services::script(&w.services.buys, [sold(1)]);
    ran(w.label("k", &id).await);
    assert_eq!(w.services.calls(), vec![Call::Buy(id.clone()); 4]);
}

#[tokio::test]
async fn a_cancelled_shipment_gets_no_label_and_the_refusal_is_final() {
    let w = World::new();
    let id = w.new_shipment().await;
    ran(w.cancel("c", &id).await);
    let refusal = refused(w.label("k", &id).await);
    assert!(
        matches!(refusal, Refusal::InvalidTransition(_)),
        "{refusal:?}"
    );
    let stored = replayed(w.label("k", &id).await);
    assert_eq!(stored.status, 409);
    assert!(w.services.calls().is_empty(), "{:?}", w.services.calls());
}

#[tokio::test]
async fn a_second_label_under_another_key_is_refused_with_the_first() {
    let w = World::new();
    let id = w.labelled_shipment("k1").await;
    let refusal = refused(w.label("k2", &id).await);
    assert!(
        matches!(&refusal, Refusal::LabelExists(l) if l == "lbl-1"),
        "{refusal:?}"
    );
    assert_eq!(w.services.calls().len(), 1);
}

#[tokio::test]
async fn a_label_sold_for_a_shipment_cancelled_meanwhile_is_voided() {
    let w = World::new();
    let id = w.new_shipment().await;
    *w.services.cancelled_during_buy.lock().unwrap() = Some((w.store.clone(), id.clone()));
    Services::script(&w.services.buys, [sold(1)]);
    Services::script(&w.services.voids, [Ok(())]);
    let refusal = refused(w.label("k", &id).await);
    assert!(
        matches!(refusal, Refusal::InvalidTransition(_)),
        "{refusal:?}"
    );
    assert_eq!(
        w.services.calls(),
        [Call::Buy(id.clone()), Call::Void("lbl-1".into())]
    );
    let shipment = w.shipment(&id).await;
    assert_eq!(shipment.timeline.status(), ShipmentStatus::Cancelled);
    assert!(shipment.label.is_none());
}

#[tokio::test]
async fn a_tracking_number_of_another_shipment_is_not_recorded() {
    let w = World::new();
    let first = w.new_shipment().await;
    let second = w.new_shipment().await;
    Services::script(&w.services.buys, [sold(1), sold(1)]);
    ran(w.label("k1", &first).await);
    assert_upstream(w.label("k2", &second).await, Service::Carrier, 1);
    assert!(w.shipment(&second).await.label.is_none());
}

#[tokio::test]
async fn keys_in_use_or_used_for_another_request_are_refused() {
    let w = World::new();
    let id = w.new_shipment().await;
    let other = w.new_shipment().await;
    Services::script(&w.services.buys, [sold(1)]);
    ran(w.label("k", &id).await);
    // The same key for another request (another shipment's path).
    let mut again = keyed("k");
    again.fingerprint = crate::idempotency::fingerprint("POST", "elsewhere", None);
    let refusal =
        refused(shipments::label(w.ports(), &again, &other, LabelFormat::Pdf, &Words).await);
    assert!(matches!(refusal, Refusal::KeyConflict), "{refusal:?}");
    // A key claimed by a request still running.
    let running = keyed("running");
    w.store
        .claim(&Claim {
            lease: Duration::from_secs(60),
            ..running.claim()
        })
        .await
        .unwrap();
    let refusal = refused(w.label("running", &other).await);
    assert!(matches!(refusal, Refusal::KeyInProgress), "{refusal:?}");
    assert_eq!(w.services.calls().len(), 1);
}

#[tokio::test]
async fn another_partners_shipment_does_not_exist() {
    let w = World::new();
    let id = w.new_shipment().await;
    let mut stranger = keyed("k");
    stranger.partner = "globex".into();
    let refusal =
        refused(shipments::label(w.ports(), &stranger, &id, LabelFormat::Pdf, &Words).await);
    assert!(
        matches!(refusal, Refusal::NotFound("shipment")),
        "{refusal:?}"
    );
    let refusal = refused(shipments::cancel_keyed(w.ports(), &stranger, &id, &Words).await);
    assert!(
        matches!(refusal, Refusal::NotFound("shipment")),
        "{refusal:?}"
    );
    assert!(w.services.calls().is_empty());
}

// Cancel.

#[tokio::test]
async fn a_cancel_voids_the_label_first_and_changes_nothing_when_it_cannot() {
    let w = World::new();
    let id = w.labelled_shipment("k").await;
    for (failure, retry_after) in [(UNAVAILABLE, 7), (REFUSED, 1)] {
        Services::script(&w.services.voids, [Err(failure)]);
        assert_upstream(w.cancel("c", &id).await, Service::Carrier, retry_after);
        let shipment = w.shipment(&id).await;
        assert_eq!(shipment.timeline.status(), ShipmentStatus::LabelCreated);
    }
    Services::script(&w.services.voids, [Ok(())]);
    let cancelled = ran(w.cancel("c", &id).await);
    assert_eq!(cancelled.timeline.status(), ShipmentStatus::Cancelled);
    let stored = replayed(w.cancel("c", &id).await);
    assert_eq!(stored, answer(200, format!("cancelled {id}")));
    assert_eq!(w.services.calls()[1..], vec![Call::Void("lbl-1".into()); 3]);
}

/// Settles every owed void due an hour after `at_ms`; that time.
async fn settle_later(w: &World, at_ms: u64) -> u64 {
    let at_ms = at_ms + 3_600_000;
    shipments::settle_owed_voids(w.ports(), at_ms, 10)
        .await
        .unwrap();
    at_ms
}

#[tokio::test]
async fn a_cancel_behind_a_lost_label_answer_is_at_once_and_owes_the_void() {
    let w = World::new();
    // The purchase's answer was lost: only its intent is recorded. The
    // carrier is away, and the cancel does not wait for it.
    let id = w.cancelled_after(UNAVAILABLE).await;
    let owed = w.shipment(&id).await.label_void;
    assert!(
        matches!(owed, Some(LabelVoid::Owed { attempts: 0, .. })),
        "{owed:?}"
    );
    assert_eq!(w.services.calls(), [Call::Buy(id.clone())]);
    assert_eq!(w.store.voids_owed().await.unwrap(), 1);
    // Still away when the void is due: owed again, later.
    Services::script(&w.services.buys, [Err(UNAVAILABLE)]);
    let t = settle_later(&w, now_ms()).await;
    let owed = w.shipment(&id).await.label_void;
    assert!(
        matches!(owed, Some(LabelVoid::Owed { attempts: 1, due_ms }) if due_ms > t),
        "{owed:?}"
    );
    // Nothing is due before then.
    shipments::settle_owed_voids(w.ports(), t, 10)
        .await
        .unwrap();
    // Back, it answers the label it sold under the shipment's key; the
    // void fails once, then is made.
    Services::script(&w.services.buys, [sold(4), sold(4)]);
    Services::script(&w.services.voids, [Err(UNAVAILABLE), Ok(())]);
    let t = settle_later(&w, t).await;
    assert!(matches!(
        w.shipment(&id).await.label_void,
        Some(LabelVoid::Owed { attempts: 2, .. })
    ));
    let t = settle_later(&w, t).await;
    let settled = w.shipment(&id).await;
    assert!(
        matches!(&settled.label_void, Some(LabelVoid::Voided { label_id, .. }) if *label_id == "lbl-4"),
        "{:?}",
        settled.label_void
    );
    assert_eq!(w.store.voids_owed().await.unwrap(), 0);
    // Settled: never asked again, and a replay of the cancel is its answer.
    settle_later(&w, t).await;
    assert_eq!(
        replayed(w.cancel("c", &id).await),
        answer(200, format!("cancelled {id}"))
    );
    assert_eq!(
        w.services.calls(),
        [
            Call::Buy(id.clone()),
            Call::Buy(id.clone()),
            Call::Buy(id.clone()),
            Call::Void("lbl-4".into()),
            Call::Buy(id.clone()),
            Call::Void("lbl-4".into()),
        ]
    );
}

#[tokio::test]
async fn a_cancel_whose_intent_the_carrier_refuses_has_nothing_to_void() {
    let w = World::new();
    let id = w.cancelled_after(REFUSED).await;
    // Asked under the shipment's key, the carrier refuses the request
    // again: it sold nothing.
    Services::script(&w.services.buys, [Err(REFUSED)]);
    settle_later(&w, now_ms()).await;
    assert!(matches!(
        w.shipment(&id).await.label_void,
        Some(LabelVoid::NothingSold { .. })
    ));
    assert_eq!(
        w.services.calls(),
        [Call::Buy(id.clone()), Call::Buy(id.clone())]
    );
}

/// A cancelled shipment with no label and no label request owes nothing.
#[tokio::test]
async fn a_cancel_with_no_label_asked_for_owes_no_void() {
    let w = World::new();
    let id = w.new_shipment().await;
    let cancelled = ran(w.cancel("c", &id).await);
    assert_eq!(cancelled.label_void, None);
    assert_eq!(w.store.voids_owed().await.unwrap(), 0);
    settle_later(&w, now_ms()).await;
    assert!(w.services.calls().is_empty());
}

#[tokio::test]
async fn a_moving_shipment_refuses_a_cancel_for_good() {
    let w = World::new();
    let id = w.new_shipment().await;
    let mut shipment = w.shipment(&id).await;
    shipment
        .timeline
        .apply(crate::domain::shipment::StatusEvent::carrier(
            ShipmentStatus::InTransit,
            5_000,
            "c",
            "e1",
        ));
    // Moving shipments come from carrier events; this one is written as
    // dispatch would leave it.
    let moving = ShipmentRecord {
        shipment_id: "moving".into(),
        ..shipment
    };
    w.store.create_shipment(moving, None).await.unwrap();
    let refusal = refused(w.cancel("c", &"moving".into()).await);
    assert!(
        matches!(refusal, Refusal::InvalidTransition(_)),
        "{refusal:?}"
    );
    assert_eq!(replayed(w.cancel("c", &"moving".into()).await).status, 409);
    assert!(w.services.calls().is_empty());
}

#[tokio::test]
async fn cancelling_a_cancelled_shipment_answers_it_as_it_is() {
    let w = World::new();
    let id = w.new_shipment().await;
    let first = ran(w.cancel("c1", &id).await);
    let second = ran(w.cancel("c2", &id).await);
    assert_eq!(first.timeline, second.timeline);
    assert!(w.services.calls().is_empty());
}

// Orders.

fn reserved(n: u32) -> Result<Reservation, Failure> {
    Ok(Reservation::Reserved {
        reservation_id: format!("res-{n}").into(),
    })
}

fn paid() -> Result<Charge, Failure> {
    Ok(Charge::Paid {
        transaction_id: "txn-1".into(),
    })
}

#[tokio::test]
async fn an_order_reserves_charges_and_buys_its_label() {
    let w = World::new();
    Services::script(&w.services.reserves, [reserved(1)]);
    Services::script(&w.services.charges, [paid()]);
    Services::script(&w.services.buys, [sold(1)]);
    let (placed, order) = ran(w.order("k", "o-1").await);
    assert_eq!(placed, Placed::Confirmed);
    assert_eq!(order.status, OrderStatus::Confirmed);
    let shipment_id = order.progress.shipment_id.clone().unwrap();
    assert_eq!(
        w.services.calls(),
        [
            Call::Reserve("o-1".into()),
            Call::Charge("o-1".into()),
            Call::Buy(shipment_id)
        ]
    );
    assert_eq!(
        replayed(w.order("k", "o-1").await),
        answer(201, "Confirmed o-1".into())
    );
}

#[tokio::test]
async fn an_order_out_of_stock_fails_for_good_without_a_charge() {
    let w = World::new();
    Services::script(&w.services.reserves, [Ok(Reservation::OutOfStock)]);
    let (placed, order) = ran(w.order("k", "o-1").await);
    assert_eq!(placed, Placed::InsufficientStock);
    assert_eq!(order.failure_reason, Some(OrderFailure::InsufficientStock));
    assert_eq!(
        replayed(w.order("k", "o-1").await),
        answer(201, "InsufficientStock o-1".into())
    );
    assert_eq!(w.services.calls(), [Call::Reserve("o-1".into())]);
}

#[tokio::test]
async fn an_inventory_that_fails_leaves_the_order_pending_for_the_retry() {
    let w = World::new();
    let malformed = Failure::Malformed {
        missing: "reservation_id",
    };
    for (failure, retry_after) in [(UNAVAILABLE, 7), (REFUSED, 1), (malformed, 1)] {
        Services::script(&w.services.reserves, [Err(failure)]);
        assert_upstream(w.order("k", "o-1").await, Service::Inventory, retry_after);
        let order = w.stored_order("o-1").await;
        assert_eq!(order.status, OrderStatus::Pending);
        assert_eq!(order.progress.reservation_id, None);
    }
    Services::script(&w.services.reserves, [reserved(1)]);
    Services::script(&w.services.charges, [paid()]);
    Services::script(&w.services.buys, [sold(1)]);
    assert_eq!(ran(w.order("k", "o-1").await).0, Placed::Confirmed);
}

#[tokio::test]
async fn a_payment_service_that_fails_resumes_at_the_charge() {
    let w = World::new();
    Services::script(&w.services.reserves, [reserved(1)]);
    Services::script(&w.services.charges, [Err(UNAVAILABLE), Err(REFUSED)]);
    assert_upstream(w.order("k", "o-1").await, Service::Payments, 7);
    assert_upstream(w.order("k", "o-1").await, Service::Payments, 1);
    let order = w.stored_order("o-1").await;
    assert_eq!(
        order.progress.reservation_id,
        Some(ReservationId::from("res-1"))
    );
    assert_eq!(order.progress.transaction_id, None);
    assert_eq!(
        order.progress.shipment_id, None,
        "no shipment without a charge"
    );
    Services::script(&w.services.charges, [paid()]);
    Services::script(&w.services.buys, [sold(1)]);
    assert_eq!(ran(w.order("k", "o-1").await).0, Placed::Confirmed);
    // Reserved once: the retries resumed after it.
    let reserves = w
        .services
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Reserve(_)))
        .count();
    assert_eq!(reserves, 1);
}

#[tokio::test]
async fn a_declined_charge_releases_the_reservation_then_fails() {
    let w = World::new();
    Services::script(&w.services.reserves, [reserved(1)]);
    Services::script(&w.services.charges, [Ok(Charge::Declined)]);
    // The release fails first: the decline is recorded, the key given back.
    Services::script(&w.services.releases, [Err(UNAVAILABLE)]);
    assert_upstream(w.order("k", "o-1").await, Service::Inventory, 7);
    let order = w.stored_order("o-1").await;
    assert!(order.progress.declined);
    assert!(!order.progress.released);
    // The retry releases, without charging again.
    Services::script(&w.services.releases, [Ok(())]);
    let (placed, order) = ran(w.order("k", "o-1").await);
    assert_eq!(placed, Placed::PaymentFailed);
    assert_eq!(order.failure_reason, Some(OrderFailure::PaymentFailed));
    assert_eq!(
        w.services.calls(),
        [
            Call::Reserve("o-1".into()),
            Call::Charge("o-1".into()),
            Call::Release("res-1".into()),
            Call::Release("res-1".into())
        ]
    );
}

#[tokio::test]
async fn a_paid_order_whose_label_cannot_be_bought_waits_for_fulfilment() {
    let w = World::new();
    Services::script(&w.services.reserves, [reserved(1)]);
    Services::script(&w.services.charges, [paid()]);
    Services::script(&w.services.buys, [Err(UNAVAILABLE)]);
    let (placed, order) = ran(w.order("k", "o-1").await);
    assert_eq!(placed, Placed::PendingFulfilment);
    assert_eq!(order.status, OrderStatus::PaymentSuccessPendingFulfillment);
    let due = order.fulfil_due_ms.unwrap();
    // Still failing in the background: the wait grows.
    Services::script(&w.services.buys, [Err(REFUSED)]);
    assert_eq!(orders::fulfil_due(w.ports(), due, 10).await.unwrap(), 0);
    let waiting = w.stored_order("o-1").await;
    assert_eq!(waiting.fulfil_attempts, 2);
    let later = waiting.fulfil_due_ms.unwrap();
    assert!(later > due);
    // Then the carrier sells it: confirmed, out of the queue.
    Services::script(&w.services.buys, [sold(1)]);
    assert_eq!(orders::fulfil_due(w.ports(), later, 10).await.unwrap(), 1);
    let confirmed = w.stored_order("o-1").await;
    assert_eq!(confirmed.status, OrderStatus::Confirmed);
    assert_eq!(confirmed.fulfil_due_ms, None);
    assert!(w.queue_is_empty().await);
}

#[tokio::test]
async fn a_waiting_order_whose_shipment_is_cancelled_leaves_the_queue() {
    let w = World::new();
    Services::script(&w.services.reserves, [reserved(1)]);
    Services::script(&w.services.charges, [paid()]);
    Services::script(&w.services.buys, [Err(UNAVAILABLE), Err(REFUSED)]);
    let (_, order) = ran(w.order("k", "o-1").await);
    let shipment_id = order.progress.shipment_id.clone().unwrap();
    // The integrator cancels the shipment; its intent is asked about and
    // refused, so there is nothing to void.
    ran(w.cancel("c", &shipment_id).await);
    let due = order.fulfil_due_ms.unwrap();
    assert_eq!(orders::fulfil_due(w.ports(), due, 10).await.unwrap(), 0);
    let dropped = w.stored_order("o-1").await;
    assert_eq!(dropped.fulfil_due_ms, None);
    assert!(w.queue_is_empty().await);
    let (read, shipment) = orders::get(w.ports(), &"acme".into(), &"o-1".into())
        .await
        .unwrap();
    assert_eq!(
        crate::domain::order::follow(read.status, shipment.unwrap().timeline.status()),
        OrderStatus::Cancelled
    );
}

#[tokio::test]
async fn an_order_id_taken_under_another_key_is_refused_for_good() {
    let w = World::new();
    Services::script(&w.services.reserves, [Ok(Reservation::OutOfStock)]);
    ran(w.order("k1", "o-1").await);
    let refusal = refused(w.order("k2", "o-1").await);
    assert!(matches!(refusal, Refusal::OrderExists), "{refusal:?}");
    assert_eq!(replayed(w.order("k2", "o-1").await).status, 409);
    assert_eq!(w.services.calls().len(), 1);
}

#[tokio::test]
async fn another_partners_order_does_not_exist() {
    let w = World::new();
    Services::script(&w.services.reserves, [Ok(Reservation::OutOfStock)]);
    ran(w.order("k", "o-1").await);
    let refusal = orders::get(w.ports(), &"globex".into(), &"o-1".into())
        .await
        .unwrap_err();
    assert!(matches!(refusal, Refusal::NotFound("order")), "{refusal:?}");
}

// Reconciliation.

/// Books that list what the test put in them, two entries a page.
#[derive(Default)]
struct Ledger {
    pages: Mutex<Vec<(Service, Option<String>)>>,
    entries: Vec<(Service, Entry)>,
    /// The service whose books cannot be read.
    down: Option<Service>,
}

#[async_trait]
impl Books for Ledger {
    async fn page(&self, at: PageAt<'_>) -> Result<Page, Failure> {
        let (service, cursor) = (at.service, at.cursor);
        self.pages
            .lock()
            .unwrap()
            .push((service, cursor.map(str::to_string)));
        if self.down == Some(service) {
            return Err(UNAVAILABLE);
        }
        let all: Vec<Entry> = self
            .entries
            .iter()
            .filter(|(s, _)| *s == service)
            .map(|(_, e)| e.clone())
            .collect();
        let from: usize = cursor.map_or(0, |c| c.parse().unwrap());
        let to = (from + 2).min(all.len());
        Ok(Page {
            entries: all[from..to].to_vec(),
            next: (to < all.len()).then(|| to.to_string()),
        })
    }
}

fn entry(id: &str, key: Option<&str>, active: bool) -> Entry {
    Entry {
        id: id.into(),
        key: key.map(str::to_string),
        active,
        amount: None,
    }
}

#[tokio::test]
async fn reconciliation_pages_through_the_books_and_spares_a_void_under_way() {
    let w = World::new();
    let live = w.new_shipment().await;
    // Cancelled while its label request had no answer: the void is owed.
    let owing = w.cancelled_after(UNAVAILABLE).await;
    let books = Ledger {
        entries: vec![
            (
                Service::Carrier,
                entry("l-live", Some(&format!("label:{live}")), true),
            ),
            (
                Service::Carrier,
                entry("l-owing", Some(&format!("label:{owing}")), true),
            ),
            (
                Service::Carrier,
                entry("l-void", Some("label:shp_gone"), false),
            ),
            (
                Service::Carrier,
                entry("l-ghost", Some("label:shp_gone"), true),
            ),
            (Service::Carrier, entry("l-bare", None, true)),
            (Service::Inventory, entry("r-bare", None, true)),
        ],
        ..Ledger::default()
    };
    Services::script(&w.services.voids, [Ok(()), Ok(())]);
    let report = reconcile::reconcile(w.ports(), &books, None, true)
        .await
        .unwrap();
    assert_eq!(report.checked, 6);
    let found: Vec<(&str, &str, bool)> = report
        .discrepancies
        .iter()
        .map(|d| (d.kind.as_str(), d.service_id.as_str(), d.fixed))
        .collect();
    // Both label ghosts voided; a reservation made without a key cannot
    // be released under one, and is only reported.
    assert_eq!(
        found,
        [
            ("label_without_shipment", "l-ghost", true),
            ("label_without_shipment", "l-bare", true),
            ("reservation_without_order", "r-bare", false),
        ]
    );
    assert_eq!(
        books.pages.lock().unwrap().clone(),
        [
            (Service::Carrier, None),
            (Service::Carrier, Some("2".into())),
            (Service::Carrier, Some("4".into())),
            (Service::Payments, None),
            (Service::Inventory, None),
        ]
    );
    assert_eq!(
        w.services.calls()[1..],
        [Call::Void("l-ghost".into()), Call::Void("l-bare".into())]
    );
}

#[tokio::test]
async fn a_repair_that_fails_is_reported_unrepaired() {
    let w = World::new();
    let books = Ledger {
        entries: vec![(
            Service::Carrier,
            entry("l-ghost", Some("label:shp_gone"), true),
        )],
        ..Ledger::default()
    };
    Services::script(&w.services.voids, [Err(UNAVAILABLE)]);
    let report = reconcile::reconcile(w.ports(), &books, None, true)
        .await
        .unwrap();
    assert!(!report.discrepancies[0].fixed);
    // Without --fix, nothing is called.
    let report = reconcile::reconcile(w.ports(), &books, None, false)
        .await
        .unwrap();
    assert_eq!(report.discrepancies.len(), 1);
    assert_eq!(w.services.calls(), [Call::Void("l-ghost".into())]);
}

/// Books that cannot be read end the pass with the service's refusal
/// (`waybill reconcile` exits 2): a pass never says "balanced" over books
/// it did not read.
#[tokio::test]
async fn books_that_cannot_be_read_end_the_pass_with_the_services_refusal() {
    let w = World::new();
    let books = Ledger {
        down: Some(Service::Payments),
        ..Ledger::default()
    };
    let refusal = reconcile::reconcile(w.ports(), &books, None, true)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refusal,
            Refusal::Upstream {
                service: Service::Payments,
                retry_after_secs: 7
            }
        ),
        "{refusal:?}"
    );
    assert!(w.services.calls().is_empty());
}
