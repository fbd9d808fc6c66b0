//! Order status as it follows its shipment (GUARANTEES.md: "Orders follow their
//! shipment"), and payment events kept in an order's payment history. Pure.

use serde::{Deserialize, Serialize};

use super::ids::{ReservationId, ShipmentId, TrackingNumber, TransactionId};
use super::shipment::ShipmentStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    PaymentSuccessPendingFulfillment,
    Failure,
    Shipped,
    Delivered,
    Returned,
    Cancelled,
}

/// The order's status given its own fulfilment status and its shipment's.
/// A `CONFIRMED` order follows the shipment; cancelling the shipment of an
/// order still waiting for fulfilment cancels the order; otherwise the
/// order's own status stands.
pub fn follow(order: OrderStatus, shipment: ShipmentStatus) -> OrderStatus {
    use OrderStatus as O;
    use ShipmentStatus as S;
    match order {
        O::Confirmed => match shipment {
            S::Created | S::LabelCreated => O::Confirmed,
            S::InTransit | S::OutForDelivery | S::Exception => O::Shipped,
            S::Delivered => O::Delivered,
            S::Returned => O::Returned,
            S::Cancelled => O::Cancelled,
        },
        O::PaymentSuccessPendingFulfillment if shipment == S::Cancelled => O::Cancelled,
        other => other,
    }
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::PaymentSuccessPendingFulfillment => "PAYMENT_SUCCESS_PENDING_FULFILLMENT",
            OrderStatus::Failure => "FAILURE",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Delivered => "DELIVERED",
            OrderStatus::Returned => "RETURNED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }
}

/// Why an order failed: its final answer (402 or 422) says the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderFailure {
    /// The inventory could not reserve the items.
    InsufficientStock,
    /// The payment service declined the charge.
    PaymentFailed,
}

impl OrderFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderFailure::InsufficientStock => "INSUFFICIENT_STOCK",
            OrderFailure::PaymentFailed => "PAYMENT_FAILED",
        }
    }
}

/// How far an order's flow got. Each field is recorded durably before the
/// step that depends on it, so a crash between any two steps leaves an
/// order that `next` resumes (GUARANTEES.md: "No partial state").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<ReservationId>,
    /// The charge was declined: the reservation must be released before
    /// the order fails.
    #[serde(default)]
    pub declined: bool,
    #[serde(default)]
    pub released: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<TransactionId>,
    /// Created in the same write that records the charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment_id: Option<ShipmentId>,
    /// The label's, once bought.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<TrackingNumber>,
}

/// The step an order's flow takes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Reserve,
    Charge,
    /// Give the reservation of a declined order back.
    Release,
    /// Buy the shipment's label.
    Fulfil,
    /// Nothing left for the request to do.
    Finished,
}

impl Progress {
    pub fn next(&self, status: OrderStatus) -> Step {
        if status != OrderStatus::Pending {
            return Step::Finished;
        }
        match self {
            Progress {
                reservation_id: None,
                ..
            } => Step::Reserve,
            Progress {
                declined: true,
                released: false,
                ..
            } => Step::Release,
            Progress { declined: true, .. } => Step::Finished,
            Progress {
                transaction_id: None,
                ..
            } => Step::Charge,
            _ => Step::Fulfil,
        }
    }
}

/// In rank order: at one instant, a later status in this list wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Succeeded,
    Failed,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Succeeded => "SUCCEEDED",
            PaymentStatus::Failed => "FAILED",
            PaymentStatus::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<PaymentStatus> {
        match s {
            "SUCCEEDED" => Some(PaymentStatus::Succeeded),
            "FAILED" => Some(PaymentStatus::Failed),
            "REFUNDED" => Some(PaymentStatus::Refunded),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub status: PaymentStatus,
    pub occurred_at_ms: i64,
    pub source: String,
    pub event_id: String,
}

/// Payment events an order keeps at most.
pub const MAX_PAYMENT_EVENTS: usize = 100;

/// An order's payment events: a set, sorted by time, so arrival order does
/// not matter. They never change fulfilment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentHistory {
    events: Vec<PaymentEvent>,
}

impl PaymentHistory {
    /// Adds an event; false when it was already there.
    pub fn add(&mut self, event: PaymentEvent) -> bool {
        self.add_keeping(event, MAX_PAYMENT_EVENTS)
    }

    /// Adds an event and keeps at most `keep` of the greatest, plus the
    /// greatest refund, which decides the status whenever there is one.
    /// Like a shipment's timeline, what is kept is a function of the set
    /// received, so it does not depend on arrival order.
    fn add_keeping(&mut self, event: PaymentEvent, keep: usize) -> bool {
        if self.events.contains(&event) {
            return false;
        }
        // Total over every field, so the order of the set (and the status,
        // its last event's) does not depend on arrival order.
        let key = |e: &PaymentEvent| {
            (
                e.occurred_at_ms,
                e.status,
                e.source.clone(),
                e.event_id.clone(),
            )
        };
        let at = self.events.partition_point(|e| key(e) < key(&event));
        self.events.insert(at, event);
        if self.events.len() > keep {
            let refund = self
                .events
                .iter()
                .rev()
                .find(|e| e.status == PaymentStatus::Refunded)
                .cloned();
            let kept_from = self.events.len() - keep;
            let mut index = 0;
            self.events.retain(|e| {
                let kept = index >= kept_from || Some(e) == refund.as_ref();
                index += 1;
                kept
            });
        }
        true
    }

    pub fn events(&self) -> &[PaymentEvent] {
        &self.events
    }

    /// `REFUNDED` once any refund is in; else the latest event's status.
    pub fn status(&self) -> Option<PaymentStatus> {
        if self
            .events
            .iter()
            .any(|e| e.status == PaymentStatus::Refunded)
        {
            return Some(PaymentStatus::Refunded);
        }
        self.events.last().map(|e| e.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_order_follows_its_shipment() {
        use OrderStatus as O;
        use ShipmentStatus as S;
        let table = [
            (S::Created, O::Confirmed),
            (S::LabelCreated, O::Confirmed),
            (S::InTransit, O::Shipped),
            (S::OutForDelivery, O::Shipped),
            (S::Exception, O::Shipped),
            (S::Delivered, O::Delivered),
            (S::Returned, O::Returned),
            (S::Cancelled, O::Cancelled),
        ];
        for (shipment, expect) in table {
            assert_eq!(follow(O::Confirmed, shipment), expect, "{shipment:?}");
        }
    }

    #[test]
    fn other_orders_keep_their_status_except_a_pending_fulfilment_cancel() {
        use OrderStatus as O;
        for s in ShipmentStatus::ALL {
            for o in [O::Pending, O::Failure] {
                assert_eq!(follow(o, s), o);
            }
            let expect = if s == ShipmentStatus::Cancelled {
                O::Cancelled
            } else {
                O::PaymentSuccessPendingFulfillment
            };
            assert_eq!(follow(O::PaymentSuccessPendingFulfillment, s), expect);
        }
    }

    #[test]
    fn an_order_resumes_from_the_step_it_reached() {
        use OrderStatus as O;
        let mut p = Progress::default();
        assert_eq!(p.next(O::Pending), Step::Reserve);
        p.reservation_id = Some("r".into());
        assert_eq!(p.next(O::Pending), Step::Charge);
        let mut declined = p.clone();
        declined.declined = true;
        assert_eq!(declined.next(O::Pending), Step::Release);
        declined.released = true;
        assert_eq!(declined.next(O::Pending), Step::Finished);
        assert_eq!(declined.next(O::Failure), Step::Finished);
        p.transaction_id = Some("t".into());
        p.shipment_id = Some("s".into());
        assert_eq!(p.next(O::Pending), Step::Fulfil);
        for done in [
            O::Confirmed,
            O::PaymentSuccessPendingFulfillment,
            O::Failure,
        ] {
            assert_eq!(p.next(done), Step::Finished);
        }
    }

    fn payment_event() -> impl proptest::strategy::Strategy<Value = PaymentEvent> {
        use proptest::prelude::*;
        (0usize..3, 0i64..20, 0u8..2, 0u32..50).prop_map(|(s, at, src, id)| PaymentEvent {
            status: [
                PaymentStatus::Succeeded,
                PaymentStatus::Failed,
                PaymentStatus::Refunded,
            ][s],
            occurred_at_ms: at,
            source: ["stripe", "adyen"][src as usize].to_string(),
            event_id: format!("p{id}"),
        })
    }

    proptest::proptest! {
        /// For random sets of payment events with random repetitions,
        /// every arrival order gives the same history and payment status.
        #[test]
        fn payment_history_is_independent_of_arrival_order(
            events in proptest::collection::vec(payment_event(), 1..12),
            repeats in proptest::collection::vec(0usize..12, 0..8),
            seed in proptest::prelude::any::<u64>(),
        ) {
            // Kept small, a history is still a function of the set, and
            // its status the whole set's.
            let build = |order: &[PaymentEvent], keep: usize| {
                let mut h = PaymentHistory::default();
                for e in order {
                    h.add_keeping(e.clone(), keep);
                }
                h
            };
            let orders = crate::domain::arrival_orders(&events, &repeats, seed);
            let reference = build(&orders[0], MAX_PAYMENT_EVENTS);
            let small_reference = build(&orders[0], 3);
            for order in &orders[1..] {
                let h = build(order, MAX_PAYMENT_EVENTS);
                proptest::prop_assert_eq!(h.status(), reference.status());
                proptest::prop_assert_eq!(&h, &reference);
                let k = build(order, 3);
                proptest::prop_assert_eq!(&k, &small_reference);
                proptest::prop_assert_eq!(k.status(), reference.status());
                proptest::prop_assert!(k.events().len() <= 4);
            }
        }
    }

    #[test]
    fn payment_history_is_a_sorted_set_and_refunds_stick() {
        let ev = |s, at, id: &str| PaymentEvent {
            status: s,
            occurred_at_ms: at,
            source: "stripe".into(),
            event_id: id.into(),
        };
        let mut a = PaymentHistory::default();
        let mut b = PaymentHistory::default();
        let events = [
            ev(PaymentStatus::Succeeded, 10, "1"),
            ev(PaymentStatus::Refunded, 30, "3"),
            ev(PaymentStatus::Succeeded, 40, "4"),
        ];
        for e in &events {
            assert!(a.add(e.clone()));
        }
        for e in events.iter().rev() {
            b.add(e.clone());
        }
        assert!(!a.add(events[0].clone()));
        assert_eq!(a, b);
        assert_eq!(a.status(), Some(PaymentStatus::Refunded));
        assert_eq!(PaymentHistory::default().status(), None);
    }
}
