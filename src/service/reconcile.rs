//! Books that balance (GUARANTEES.md: "Books that balance"): the carrier's
//! labels, the payment service's charges and the inventory's reservations,
//! each matched to waybill's records by the key waybill made it under
//! (`label:<shipment_id>`, `charge:<partner>:<order_id>`,
//! `reserve:<partner>:<order_id>`). What does not match is a discrepancy of
//! a named kind; `fix` repairs what is safe (voids a label nobody owns or
//! whose shipment is cancelled, releases a reservation with no order) and
//! never refunds: charges are reported only. `waybill reconcile` and the
//! background pass (`[reconcile] interval`) both run `reconcile`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ports::{Books, Entry, Failure, PageAt, Service};
use super::{Ports, Refusal};
use crate::domain::ids::{LabelId, OrderId, OrderKey, PartnerName, ReservationId, ShipmentId};
use crate::domain::label::LabelVoid;
use crate::domain::order::OrderStatus;
use crate::domain::shipment::ShipmentStatus;

/// What does not balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A charge whose order waybill does not have.
    ChargeWithoutOrder,
    /// A charge whose amount or currency is not its order's.
    AmountMismatch,
    /// An active label whose shipment waybill does not have.
    LabelWithoutShipment,
    /// An active label of a shipment that is cancelled, with no void under
    /// way.
    LabelActiveOnCancelledShipment,
    /// A reservation held for an order waybill does not have.
    ReservationWithoutOrder,
    /// A reservation still held for an order that failed.
    ReservationOfFailedOrder,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::ChargeWithoutOrder,
        Kind::AmountMismatch,
        Kind::LabelWithoutShipment,
        Kind::LabelActiveOnCancelledShipment,
        Kind::ReservationWithoutOrder,
        Kind::ReservationOfFailedOrder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ChargeWithoutOrder => "charge_without_order",
            Kind::AmountMismatch => "amount_mismatch",
            Kind::LabelWithoutShipment => "label_without_shipment",
            Kind::LabelActiveOnCancelledShipment => "label_active_on_cancelled_shipment",
            Kind::ReservationWithoutOrder => "reservation_without_order",
            Kind::ReservationOfFailedOrder => "reservation_of_failed_order",
        }
    }
}

/// One discrepancy: its kind, the ids on both sides, what differs. Its
/// JSON is the line `waybill reconcile` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    pub kind: Kind,
    pub service: Service,
    /// The label's, charge's or reservation's id at the service.
    pub service_id: String,
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner: Option<PartnerName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<OrderId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipment_id: Option<ShipmentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differs: Option<String>,
    /// Repaired by this run (`fix`).
    pub fixed: bool,
}

/// What a pass found, and how much it read.
#[derive(Debug, Default)]
pub struct Report {
    pub discrepancies: Vec<Discrepancy>,
    /// Records read at the services.
    pub checked: usize,
}

impl Report {
    /// How many of each kind, every kind named.
    pub fn counts(&self) -> BTreeMap<Kind, u64> {
        let mut counts: BTreeMap<Kind, u64> = Kind::ALL.iter().map(|k| (*k, 0)).collect();
        for d in &self.discrepancies {
            *counts.entry(d.kind).or_default() += 1;
        }
        counts
    }
}

/// Reads every record the services made after `since_ms` (all without it)
/// and matches each to waybill's; with `fix`, repairs what is safe.
pub async fn reconcile(
    ports: Ports<'_>,
    books: &dyn Books,
    since_ms: Option<u64>,
    fix: bool,
) -> Result<Report, Refusal> {
    let mut report = Report::default();
    for service in [Service::Carrier, Service::Payments, Service::Inventory] {
        let mut cursor: Option<String> = None;
        loop {
            let at = PageAt {
                service,
                since_ms,
                cursor: cursor.as_deref(),
            };
            let page = books
                .page(at)
                .await
                .map_err(|f| Refusal::upstream(service, f))?;
            report.checked += page.entries.len();
            for entry in &page.entries {
                if let Some(d) = check(ports, service, entry).await? {
                    let fixed = fix && repair(ports, &d).await;
                    report.discrepancies.push(Discrepancy { fixed, ..d });
                }
            }
            match page.next {
                Some(next) if page.entries.is_empty() || Some(&next) == cursor.as_ref() => break,
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    Ok(report)
}

/// `<prefix><partner>:<order_id>`, split.
fn order_key(key: Option<&str>, prefix: &str) -> Option<OrderKey> {
    let (partner, order_id) = key?.strip_prefix(prefix)?.split_once(':')?;
    Some(OrderKey::new(partner.into(), order_id.into()))
}

async fn check(
    ports: Ports<'_>,
    service: Service,
    entry: &Entry,
) -> Result<Option<Discrepancy>, Refusal> {
    let found = |kind| Discrepancy {
        kind,
        service,
        service_id: entry.id.clone(),
        key: entry.key.clone(),
        partner: None,
        order_id: None,
        shipment_id: None,
        differs: None,
        fixed: false,
    };
    if !entry.active {
        return Ok(None);
    }
    match service {
        Service::Carrier => {
            let Some(id) = entry.key.as_deref().and_then(|k| k.strip_prefix("label:")) else {
                return Ok(Some(found(Kind::LabelWithoutShipment)));
            };
            let id = ShipmentId::from(id);
            let shipment = ports.shipments.shipment(&id).await?;
            let d = match shipment {
                None => found(Kind::LabelWithoutShipment),
                Some(s)
                    if s.timeline.status() == ShipmentStatus::Cancelled
                        && !matches!(s.label_void, Some(LabelVoid::Owed { .. })) =>
                {
                    Discrepancy {
                        partner: Some(s.partner.clone()),
                        order_id: Some(s.order_id.clone()),
                        ..found(Kind::LabelActiveOnCancelledShipment)
                    }
                }
                Some(_) => return Ok(None),
            };
            Ok(Some(Discrepancy {
                shipment_id: Some(id),
                ..d
            }))
        }
        Service::Payments => {
            let Some(key) = order_key(entry.key.as_deref(), "charge:") else {
                return Ok(Some(found(Kind::ChargeWithoutOrder)));
            };
            let order = ports.orders.order(&key).await?;
            let d = match (order, &entry.amount) {
                (None, _) => found(Kind::ChargeWithoutOrder),
                (Some(o), Some((cents, currency)))
                    if i64::try_from(o.request.amount_cents).ok() != Some(*cents)
                        || o.request.currency != *currency =>
                {
                    Discrepancy {
                        differs: Some(format!(
                            "{cents} {currency} at the payment service, {} {} in the order",
                            o.request.amount_cents, o.request.currency
                        )),
                        ..found(Kind::AmountMismatch)
                    }
                }
                (Some(_), _) => return Ok(None),
            };
            Ok(Some(Discrepancy {
                partner: Some(key.partner),
                order_id: Some(key.order_id),
                ..d
            }))
        }
        Service::Inventory => {
            let Some(key) = order_key(entry.key.as_deref(), "reserve:") else {
                return Ok(Some(found(Kind::ReservationWithoutOrder)));
            };
            let d = match ports.orders.order(&key).await? {
                None => found(Kind::ReservationWithoutOrder),
                Some(o) if o.status == OrderStatus::Failure => {
                    found(Kind::ReservationOfFailedOrder)
                }
                Some(_) => return Ok(None),
            };
            Ok(Some(Discrepancy {
                partner: Some(key.partner),
                order_id: Some(key.order_id),
                ..d
            }))
        }
    }
}

/// Repairs `d` when that is safe: voids the label, releases the
/// reservation. Whether it was repaired; a charge never is.
async fn repair(ports: Ports<'_>, d: &Discrepancy) -> bool {
    let done: Result<(), Failure> = match d.kind {
        Kind::LabelWithoutShipment | Kind::LabelActiveOnCancelledShipment => {
            // Its first void's key may have been used already.
            let again = format!("reconcile-{}", crate::clock::now_ms());
            ports
                .carrier
                .void_label_again(&LabelId::from(d.service_id.as_str()), &again)
                .await
        }
        Kind::ReservationWithoutOrder | Kind::ReservationOfFailedOrder => {
            match (&d.partner, &d.order_id) {
                (Some(partner), Some(order_id)) => {
                    ports
                        .inventory
                        .release(
                            partner,
                            order_id,
                            &ReservationId::from(d.service_id.as_str()),
                        )
                        .await
                }
                // Made outside waybill's keys: no key to release it under.
                _ => return false,
            }
        }
        Kind::ChargeWithoutOrder | Kind::AmountMismatch => return false,
    };
    match done {
        Ok(()) => true,
        Err(failure) => {
            tracing::warn!(kind = d.kind.as_str(), service_id = %d.service_id, ?failure, "a discrepancy could not be repaired");
            false
        }
    }
}
