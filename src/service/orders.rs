//! Orders (GUARANTEES.md: "The integrator API"): reserve inventory, charge the payment, create the
//! shipment, buy its label. Each downstream call carries a key derived from
//! the business identity (`reserve:<partner>:<order_id>`,
//! `charge:<partner>:<order_id>`, `label:<shipment_id>`), never the
//! integrator's key, and each step's result is recorded durably before the
//! next step starts, so a crash or a 503 between any two steps leaves an
//! order that the retry resumes where it stopped (`domain::order::Progress`).
//! Money moves once: a charge whose answer was lost is asked for again
//! under the same key and the payment service answers the first charge.
//!
//! After the charge succeeded the request always ends in a 201: the label
//! bought (`CONFIRMED`), or not (`PAYMENT_SUCCESS_PENDING_FULFILLMENT`, and
//! the order joins the fulfilment queue that [`fulfil_due`] works through
//! in the background until the label is bought or the shipment cancelled).

use std::time::Duration;

use super::keyed::{self, Answered, Keyed};
use super::labels::{self, Sold};
use super::ports::{Charge, ChargeRequest, Reservation, Service};
use super::{Ports, Refusal, Render};
use crate::clock::now_ms;
use crate::domain::ids::{OrderId, OrderKey, PartnerName, ShipmentId, TrackingNumber};
use crate::domain::label::LabelFormat;
use crate::domain::order::{OrderFailure, OrderStatus, Step};
use crate::domain::request::{Address, NewOrder, Parcel, ShipmentDetails};
use crate::domain::shipment::ShipmentStatus;
use crate::idempotency::IdempotencyKey;
use crate::store::{
    Completion, NewLabel, OrderCreated, OrderRecord, OrderWrite, ShipmentRecord, StateError,
};

/// Where an order's parcel is sent from, with which carrier and service.
/// An order names no carrier, service or parcel; these are what
/// the carrier is asked for.
const CARRIER: &str = "default";
const SERVICE: &str = "standard";
const PARCEL_GRAMS_PER_UNIT: u64 = 500;

/// The first wait of background fulfilment, doubled per failed attempt up
/// to the last.
const FULFIL_FIRST: Duration = Duration::from_secs(1);
const FULFIL_MAX: Duration = Duration::from_secs(300);

/// How an order request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Confirmed,
    PendingFulfilment,
    PaymentFailed,
    InsufficientStock,
}

/// Renders the final answer of the request, stored with the write that
/// settles the order.
pub type Finalize<'a> = &'a (dyn Fn(Placed, &OrderRecord) -> Completion + Send + Sync);

/// Places an order for `keyed`'s partner, once per key: a retry after a
/// failure resumes it where it stopped.
pub async fn order(
    ports: Ports<'_>,
    keyed: &Keyed,
    request: &NewOrder,
    render: &dyn Render,
) -> Result<Answered<(Placed, OrderRecord)>, Refusal> {
    keyed::run(ports, keyed, &|r| render.refusal(r), async || {
        let finalize =
            |placed: Placed, order: &OrderRecord| keyed.completion(render.placed(placed, order));
        place(ports, &keyed.partner, &keyed.key, request, &finalize).await
    })
    .await
}

/// An order of `partner`, with its shipment once it has one; another
/// partner's does not exist for it.
pub async fn get(
    ports: Ports<'_>,
    partner: &PartnerName,
    id: &OrderId,
) -> Result<(OrderRecord, Option<ShipmentRecord>), Refusal> {
    let order = ports
        .orders
        .order(&OrderKey::new(partner.clone(), id.clone()))
        .await?
        .ok_or(Refusal::NotFound("order"))?;
    let shipment = shipment_of(ports, &order).await?;
    Ok((order, shipment))
}

async fn shipment_of(
    ports: Ports<'_>,
    order: &OrderRecord,
) -> Result<Option<ShipmentRecord>, Refusal> {
    match &order.progress.shipment_id {
        Some(id) => Ok(ports.shipments.shipment(id).await?),
        None => Ok(None),
    }
}

/// A page of `partner`'s orders, newest first, each with its shipment; and
/// how many the partner has.
pub async fn list(
    ports: Ports<'_>,
    partner: &PartnerName,
    skip: usize,
    limit: usize,
) -> Result<(usize, Vec<(OrderRecord, Option<ShipmentRecord>)>), Refusal> {
    let (count, orders) = ports.orders.orders(partner, skip, limit).await?;
    let ids: Vec<ShipmentId> = orders
        .iter()
        .filter_map(|o| o.progress.shipment_id.clone())
        .collect();
    let mut shipments: std::collections::HashMap<ShipmentId, ShipmentRecord> = ports
        .shipments
        .shipments(&ids)
        .await?
        .into_iter()
        .map(|s| (s.shipment_id.clone(), s))
        .collect();
    let page = orders
        .into_iter()
        .map(|order| {
            let shipment = order
                .progress
                .shipment_id
                .as_ref()
                .and_then(|id| shipments.remove(id));
            (order, shipment)
        })
        .collect();
    Ok((count, page))
}

/// Places an order, or resumes the one this key placed before.
async fn place(
    ports: Ports<'_>,
    partner: &PartnerName,
    key: &IdempotencyKey,
    request: &NewOrder,
    finalize: Finalize<'_>,
) -> Result<(Placed, OrderRecord), Refusal> {
    let record = OrderRecord::new(partner.clone(), key.clone(), request.clone(), now_ms());
    let mut order = match ports.orders.create_order(record).await? {
        OrderCreated::Created(o) => o,
        OrderCreated::Existing(o) if &o.key == key => o,
        OrderCreated::Existing(_) => return Err(Refusal::OrderExists),
    };
    loop {
        match order.progress.next(order.status) {
            Step::Reserve => order = reserve(ports, order, finalize).await?,
            Step::Charge => order = charge(ports, order).await?,
            Step::Release => order = release(ports, order, finalize).await?,
            Step::Fulfil => order = fulfil(ports, order, finalize).await?,
            Step::Finished => return Ok((settled(&order), order)),
        }
    }
}

fn settled(order: &OrderRecord) -> Placed {
    match (order.status, order.failure_reason) {
        (OrderStatus::Failure, Some(OrderFailure::InsufficientStock)) => Placed::InsufficientStock,
        (OrderStatus::Failure, _) => Placed::PaymentFailed,
        (OrderStatus::Confirmed, _) => Placed::Confirmed,
        _ => Placed::PendingFulfilment,
    }
}

async fn reserve(
    ports: Ports<'_>,
    mut order: OrderRecord,
    finalize: Finalize<'_>,
) -> Result<OrderRecord, Refusal> {
    let reservation = ports
        .inventory
        .reserve(&order.partner, &order.order_id, &order.request.items)
        .await
        .map_err(|f| Refusal::upstream(Service::Inventory, f))?;
    fail::fail_point!("order-after-reserve", |_| std::process::abort());
    match reservation {
        Reservation::Reserved { reservation_id } => {
            order.progress.reservation_id = Some(reservation_id);
            Ok(ports.orders.write_order(OrderWrite::of(order)).await?)
        }
        Reservation::OutOfStock => {
            // Nothing was reserved: the order fails, and that is final.
            order.status = OrderStatus::Failure;
            order.failure_reason = Some(OrderFailure::InsufficientStock);
            answer(ports, order, Placed::InsufficientStock, finalize).await
        }
    }
}

async fn charge(ports: Ports<'_>, mut order: OrderRecord) -> Result<OrderRecord, Refusal> {
    let charge = ports
        .payments
        .charge(ChargeRequest {
            partner: &order.partner,
            order_id: &order.order_id,
            amount_cents: order.request.amount_cents,
            currency: &order.request.currency,
            customer_id: &order.request.customer_id,
        })
        .await
        .map_err(|f| Refusal::upstream(Service::Payments, f))?;
    fail::fail_point!("order-after-charge", |_| std::process::abort());
    match charge {
        Charge::Paid { transaction_id } => {
            // The charge and the shipment it pays for are one write: no
            // charge is ever recorded without its order's shipment.
            let shipment = order_shipment(&order);
            order.progress.transaction_id = Some(transaction_id);
            order.progress.shipment_id = Some(shipment.shipment_id.clone());
            let order = ports
                .orders
                .write_order(OrderWrite::of(order).with_shipment(shipment))
                .await?;
            fail::fail_point!("order-after-charge-recorded", |_| std::process::abort());
            Ok(order)
        }
        Charge::Declined => {
            order.progress.declined = true;
            Ok(ports.orders.write_order(OrderWrite::of(order)).await?)
        }
    }
}

/// A declined order gives its reservation back, then fails.
async fn release(
    ports: Ports<'_>,
    mut order: OrderRecord,
    finalize: Finalize<'_>,
) -> Result<OrderRecord, Refusal> {
    // `Progress::next` releases only what was reserved; nothing reserved
    // is nothing to give back.
    if let Some(reservation) = &order.progress.reservation_id {
        ports
            .inventory
            .release(&order.partner, &order.order_id, reservation)
            .await
            .map_err(|f| Refusal::upstream(Service::Inventory, f))?;
    }
    order.progress.released = true;
    order.status = OrderStatus::Failure;
    order.failure_reason = Some(OrderFailure::PaymentFailed);
    answer(ports, order, Placed::PaymentFailed, finalize).await
}

/// The shipment an order's charge pays for.
fn order_shipment(order: &OrderRecord) -> ShipmentRecord {
    let units: u64 = order.request.items.iter().map(|i| i.quantity).sum();
    let details = ShipmentDetails {
        carrier: CARRIER.into(),
        service: SERVICE.into(),
        from: ship_from(),
        to: order.request.ship_to.clone(),
        parcels: vec![Parcel {
            weight_grams: units.max(1).saturating_mul(PARCEL_GRAMS_PER_UNIT),
            length_cm: 30,
            width_cm: 20,
            height_cm: 10,
        }],
        reference: None,
    };
    super::shipments::new_shipment(&order.partner, &order.order_id, details)
}

fn ship_from() -> Address {
    Address {
        name: "waybill fulfilment".into(),
        street1: "1 Dock Road".into(),
        street2: None,
        city: "Hamburg".into(),
        state: None,
        postal_code: "20457".into(),
        country: "DE".into(),
        phone: None,
    }
}

/// Buys the label of a paid order's shipment. Bought: `CONFIRMED`. Not
/// bought: `PAYMENT_SUCCESS_PENDING_FULFILLMENT`, queued for background
/// fulfilment. Either way the request is answered 201.
async fn fulfil(
    ports: Ports<'_>,
    mut order: OrderRecord,
    finalize: Finalize<'_>,
) -> Result<OrderRecord, Refusal> {
    fail::fail_point!("order-after-shipment", |_| std::process::abort());
    let bought = buy(ports, &order).await?;
    fail::fail_point!("order-after-label", |_| std::process::abort());
    let placed = match bought {
        Bought::Label(sold) => {
            order.status = OrderStatus::Confirmed;
            order.progress.tracking_number = Some(sold.label.tracking_number.clone());
            let completion = finalize(Placed::Confirmed, &order);
            return record(ports, order, sold, Some(completion), None).await;
        }
        Bought::Already(tracking_number) => {
            order.status = OrderStatus::Confirmed;
            order.progress.tracking_number = tracking_number;
            Placed::Confirmed
        }
        Bought::Cancelled => {
            // The integrator cancelled the shipment: nothing to fulfil,
            // and the order follows its shipment (CANCELLED).
            order.status = OrderStatus::PaymentSuccessPendingFulfillment;
            Placed::PendingFulfilment
        }
        Bought::NotNow => {
            order.status = OrderStatus::PaymentSuccessPendingFulfillment;
            order.fulfil_attempts = 1;
            order.fulfil_due_ms = Some(due(1));
            Placed::PendingFulfilment
        }
    };
    answer(ports, order, placed, finalize).await
}

/// Writes `order` with its final answer, `placed`.
async fn answer(
    ports: Ports<'_>,
    order: OrderRecord,
    placed: Placed,
    finalize: Finalize<'_>,
) -> Result<OrderRecord, Refusal> {
    let completion = finalize(placed, &order);
    Ok(ports
        .orders
        .write_order(OrderWrite::of(order).answered(completion))
        .await?)
}

enum Bought {
    Label(Sold),
    /// The shipment has its label already (bought through the label
    /// endpoint, or by an earlier attempt), with this tracking number.
    Already(Option<TrackingNumber>),
    Cancelled,
    /// The carrier could not sell it now.
    NotNow,
}

async fn buy(ports: Ports<'_>, order: &OrderRecord) -> Result<Bought, Refusal> {
    let Some(shipment_id) = &order.progress.shipment_id else {
        return Err(Refusal::NotFound("shipment"));
    };
    let Some(shipment) = ports
        .shipments
        .shipment(shipment_id)
        .await
        .map_err(StateError::from)?
    else {
        return Err(Refusal::NotFound("shipment"));
    };
    if shipment.timeline.status() == ShipmentStatus::Cancelled {
        return Ok(Bought::Cancelled);
    }
    if shipment.label.is_some() {
        return Ok(Bought::Already(shipment.tracking_number));
    }
    match labels::purchase(ports, &shipment, LabelFormat::Pdf).await {
        Ok(sold) => Ok(Bought::Label(sold)),
        Err(Refusal::InvalidTransition(_)) => Ok(Bought::Cancelled),
        Err(Refusal::Store(e)) => Err(Refusal::Store(e)),
        Err(_) => Ok(Bought::NotNow),
    }
}

/// Records a bought label with the order's step. A shipment cancelled
/// meanwhile gets its label voided, and the order stays paid and
/// unfulfilled (it follows its shipment to CANCELLED).
async fn record(
    ports: Ports<'_>,
    mut order: OrderRecord,
    sold: Sold,
    completion: Option<Completion>,
    unschedule: Option<u64>,
) -> Result<OrderRecord, Refusal> {
    let label = NewLabel {
        label: sold.label.clone(),
        at_ms: sold.at_ms,
    };
    let confirmed = order.clone();
    let step = OrderWrite {
        label: Some(label),
        completion: completion.clone(),
        unschedule,
        ..OrderWrite::of(confirmed)
    };
    match ports.orders.write_order(step).await {
        Ok(o) => Ok(o),
        Err(StateError::InvalidTransition) => {
            labels::void_unwanted(ports, &sold.label.label_id).await;
            order.status = OrderStatus::PaymentSuccessPendingFulfillment;
            order.fulfil_due_ms = None;
            Ok(ports
                .orders
                .write_order(OrderWrite {
                    completion,
                    unschedule,
                    ..OrderWrite::of(order)
                })
                .await?)
        }
        Err(StateError::LabelExists(_)) => Ok(ports
            .orders
            .write_order(OrderWrite {
                completion,
                unschedule,
                ..OrderWrite::of(order)
            })
            .await?),
        Err(e) => Err(e.into()),
    }
}

/// When the attempt after `attempts` failed ones is due.
fn due(attempts: u32) -> u64 {
    let wait = FULFIL_FIRST
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(FULFIL_MAX);
    now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// Background fulfilment: tries once to buy the label of every order due
/// at `now_ms` (at most `limit`), confirming it, rescheduling it with a
/// longer wait, or dropping it when its shipment was cancelled. How many
/// it confirmed.
pub async fn fulfil_due(ports: Ports<'_>, now_ms: u64, limit: usize) -> Result<usize, Refusal> {
    let mut confirmed = 0;
    for (due_at, partner, order_id) in ports.orders.due_fulfilments(now_ms, limit).await? {
        let key = OrderKey::new(partner, order_id);
        let Some(mut order) = ports.orders.order(&key).await? else {
            continue;
        };
        let waiting = order.status == OrderStatus::PaymentSuccessPendingFulfillment
            && order.fulfil_due_ms == Some(due_at);
        if !waiting {
            // A stale entry: the order moved on.
            ports
                .orders
                .write_order(OrderWrite::of(order).leaving_queue(due_at))
                .await?;
            continue;
        }
        let bought = match buy(ports, &order).await {
            Ok(b) => b,
            Err(Refusal::Store(e)) => return Err(Refusal::Store(e)),
            Err(_) => Bought::NotNow,
        };
        match bought {
            Bought::Label(sold) => {
                order.status = OrderStatus::Confirmed;
                order.fulfil_due_ms = None;
                order.progress.tracking_number = Some(sold.label.tracking_number.clone());
                match record(ports, order, sold, None, Some(due_at)).await {
                    Ok(o) if o.status == OrderStatus::Confirmed => {
                        confirmed += 1;
                        tracing::info!(order_id = %o.order_id, partner = %o.partner, "order fulfilled in the background");
                    }
                    Ok(_) => {}
                    Err(Refusal::Store(e)) => return Err(Refusal::Store(e)),
                    Err(_) => {}
                }
            }
            Bought::Already(tracking_number) => {
                order.status = OrderStatus::Confirmed;
                order.fulfil_due_ms = None;
                order.progress.tracking_number = tracking_number;
                ports
                    .orders
                    .write_order(OrderWrite::of(order).leaving_queue(due_at))
                    .await?;
                confirmed += 1;
            }
            Bought::Cancelled => {
                order.fulfil_due_ms = None;
                ports
                    .orders
                    .write_order(OrderWrite::of(order).leaving_queue(due_at))
                    .await?;
            }
            Bought::NotNow => {
                order.fulfil_attempts = order.fulfil_attempts.saturating_add(1);
                order.fulfil_due_ms = Some(due(order.fulfil_attempts));
                ports
                    .orders
                    .write_order(OrderWrite::of(order).leaving_queue(due_at))
                    .await?;
            }
        }
    }
    Ok(confirmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_waits_double_up_to_five_minutes() {
        let now = now_ms();
        let wait = |attempts| due(attempts).saturating_sub(now);
        assert!((1_000..2_000).contains(&wait(1)));
        assert!((2_000..3_000).contains(&wait(2)));
        assert!((8_000..9_000).contains(&wait(4)));
        assert!((300_000..301_000).contains(&wait(30)));
    }
}
