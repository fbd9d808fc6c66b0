//! A shipment's status as a pure function of the *set* of status events it
//! has received (GUARANTEES.md: "Dispatch"): carriers deliver late, twice and out of order,
//! and the answer must not depend on how they did.
//!
//! The rule: if the set holds a terminal event, the terminal event with the
//! greatest key wins; otherwise the event with the greatest key wins. The
//! key is (carrier before gateway, occurred_at, rank): the gateway's own
//! events rank below every carrier event whatever their times, so a
//! carrier's clock never loses to ours, and among terminal events a
//! carrier's beats the gateway's cancel.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// In rank order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    Created,
    LabelCreated,
    InTransit,
    OutForDelivery,
    Delivered,
    Exception,
    Returned,
    Cancelled,
}

impl ShipmentStatus {
    pub const ALL: [ShipmentStatus; 8] = [
        ShipmentStatus::Created,
        ShipmentStatus::LabelCreated,
        ShipmentStatus::InTransit,
        ShipmentStatus::OutForDelivery,
        ShipmentStatus::Delivered,
        ShipmentStatus::Exception,
        ShipmentStatus::Returned,
        ShipmentStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ShipmentStatus::Delivered
                | ShipmentStatus::Exception
                | ShipmentStatus::Returned
                | ShipmentStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShipmentStatus::Created => "CREATED",
            ShipmentStatus::LabelCreated => "LABEL_CREATED",
            ShipmentStatus::InTransit => "IN_TRANSIT",
            ShipmentStatus::OutForDelivery => "OUT_FOR_DELIVERY",
            ShipmentStatus::Delivered => "DELIVERED",
            ShipmentStatus::Exception => "EXCEPTION",
            ShipmentStatus::Returned => "RETURNED",
            ShipmentStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<ShipmentStatus> {
        ShipmentStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The source name of the gateway's own events.
pub const GATEWAY: &str = "waybill";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatusEvent {
    pub status: ShipmentStatus,
    /// Milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
    pub source: String,
    /// None for the gateway's own events.
    pub event_id: Option<String>,
}

impl StatusEvent {
    pub fn carrier(
        status: ShipmentStatus,
        occurred_at_ms: i64,
        source: &str,
        event_id: &str,
    ) -> StatusEvent {
        StatusEvent {
            status,
            occurred_at_ms,
            source: source.to_string(),
            event_id: Some(event_id.to_string()),
        }
    }

    pub fn gateway(status: ShipmentStatus, occurred_at_ms: i64) -> StatusEvent {
        StatusEvent {
            status,
            occurred_at_ms,
            source: GATEWAY.to_string(),
            event_id: None,
        }
    }

    pub fn is_gateway(&self) -> bool {
        self.event_id.is_none()
    }

    /// The winner's key: carrier over gateway, then time, then rank.
    fn precedence(&self) -> (bool, i64, ShipmentStatus) {
        (!self.is_gateway(), self.occurred_at_ms, self.status)
    }

    /// Order of carrier events in the history, made total so that the
    /// history is the same for every arrival order.
    fn history_order(&self, other: &StatusEvent) -> Ordering {
        (
            self.occurred_at_ms,
            self.status,
            &self.source,
            &self.event_id,
        )
            .cmp(&(
                other.occurred_at_ms,
                other.status,
                &other.source,
                &other.event_id,
            ))
    }
}

/// The status the rule gives a set of events; `Created` for none.
pub fn status_of<'a>(events: impl IntoIterator<Item = &'a StatusEvent> + Clone) -> ShipmentStatus {
    let best = |terminal_only: bool| {
        events
            .clone()
            .into_iter()
            .filter(|e| !terminal_only || e.status.is_terminal())
            .max_by_key(|e| e.precedence())
            .map(|e| e.status)
    };
    best(true)
        .or_else(|| best(false))
        .unwrap_or(ShipmentStatus::Created)
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The status changed.
    Applied,
    /// The event joined the history (or was already in it); status unchanged.
    Stale,
}

/// Carrier events a shipment keeps at most. A busy tracking number (a
/// carrier that resends its scans, or a hostile sender with a valid
/// secret) must not make every later event cost more to apply, store and
/// show.
pub const MAX_CARRIER_EVENTS: usize = 100;

/// The status events of one shipment: the gateway's own in the order they
/// happened, and the carrier events it keeps.
///
/// The carrier events kept are a function of the set received, so they too
/// are independent of arrival order: the `MAX_CARRIER_EVENTS` greatest in
/// history order, plus the greatest terminal event, which decides the
/// status whenever there is one. Both can be computed from what was kept
/// plus the new event, so nothing that was dropped is ever needed again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    gateway: Vec<StatusEvent>,
    carrier: Vec<StatusEvent>,
}

impl Timeline {
    pub fn new(created_at_ms: i64) -> Timeline {
        Timeline {
            gateway: vec![StatusEvent::gateway(ShipmentStatus::Created, created_at_ms)],
            carrier: Vec::new(),
        }
    }

    pub fn status(&self) -> ShipmentStatus {
        status_of(self.gateway.iter().chain(self.carrier.iter()))
    }

    pub fn apply(&mut self, event: StatusEvent) -> Applied {
        self.apply_keeping(event, MAX_CARRIER_EVENTS)
    }

    fn apply_keeping(&mut self, event: StatusEvent, keep: usize) -> Applied {
        let before = self.status();
        let list = if event.is_gateway() {
            &mut self.gateway
        } else {
            &mut self.carrier
        };
        if list.contains(&event) {
            return Applied::Stale;
        }
        if event.is_gateway() {
            list.push(event);
        } else {
            // Kept sorted, so the stored form, like the status, does not
            // depend on arrival order.
            let at = list.partition_point(|e| e.history_order(&event) == Ordering::Less);
            list.insert(at, event);
            self.trim(keep);
        }
        if self.status() == before {
            Applied::Stale
        } else {
            Applied::Applied
        }
    }

    /// Drops the least carrier events beyond `keep`, never the greatest
    /// terminal one.
    fn trim(&mut self, keep: usize) {
        let excess = self.carrier.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let terminal = self
            .carrier
            .iter()
            .filter(|e| e.status.is_terminal())
            .max_by(|a, b| a.history_order(b))
            .cloned();
        let kept_from = self.carrier.len() - keep;
        let mut index = 0;
        self.carrier.retain(|e| {
            let keep_it = index >= kept_from || Some(e) == terminal.as_ref();
            index += 1;
            keep_it
        });
    }

    /// The gateway's events first, in the order they happened, then the
    /// carrier's by (occurred_at, rank).
    pub fn history(&self) -> impl Iterator<Item = &StatusEvent> {
        self.gateway.iter().chain(self.carrier.iter())
    }

    pub fn has(&self, status: ShipmentStatus) -> bool {
        self.history().any(|e| e.status == status)
    }
}

#[cfg(test)]
mod tests {
    use super::ShipmentStatus::*;
    use super::*;
    use proptest::prelude::*;

    fn carrier(status: ShipmentStatus, at: i64, id: &str) -> StatusEvent {
        StatusEvent::carrier(status, at, "c", id)
    }

    /// Every ordered pair of carrier statuses, the second arriving later but
    /// occurring either later or earlier: the table of what wins.
    #[test]
    fn every_status_pair() {
        for a in ShipmentStatus::ALL {
            for b in ShipmentStatus::ALL {
                for (at_a, at_b) in [(1, 2), (2, 1), (1, 1)] {
                    let mut t = Timeline::new(0);
                    t.apply(carrier(a, at_a, "a"));
                    t.apply(carrier(b, at_b, "b"));
                    let expect = match (a.is_terminal(), b.is_terminal()) {
                        (true, false) => a,
                        (false, true) => b,
                        _ if at_a != at_b => {
                            if at_a > at_b {
                                a
                            } else {
                                b
                            }
                        }
                        _ => a.max(b),
                    };
                    assert_eq!(t.status(), expect, "{a:?}@{at_a} then {b:?}@{at_b}");
                }
            }
        }
    }

    #[test]
    fn gateway_events_rank_below_carrier_events_whatever_their_times() {
        let mut t = Timeline::new(1_000_000);
        t.apply(StatusEvent::gateway(LabelCreated, 2_000_000));
        assert_eq!(t.status(), LabelCreated);
        // A carrier event stamped long before our own still wins.
        assert_eq!(t.apply(carrier(InTransit, 5, "x")), Applied::Applied);
        assert_eq!(t.status(), InTransit);
        // A carrier's LABEL_CREATED also beats ours.
        let mut t = Timeline::new(10);
        t.apply(StatusEvent::gateway(LabelCreated, 20));
        t.apply(carrier(LabelCreated, 1, "l"));
        assert_eq!(t.status(), LabelCreated);
    }

    #[test]
    fn a_carriers_terminal_event_beats_the_gateways_cancel() {
        let mut t = Timeline::new(0);
        t.apply(StatusEvent::gateway(Cancelled, 100));
        assert_eq!(t.status(), Cancelled);
        t.apply(carrier(InTransit, 200, "i"));
        assert_eq!(
            t.status(),
            Cancelled,
            "a non-terminal event does not undo a cancel"
        );
        t.apply(carrier(Returned, 50, "r"));
        assert_eq!(t.status(), Returned);
    }

    #[test]
    fn outcomes_are_applied_or_stale() {
        let mut t = Timeline::new(0);
        assert_eq!(t.apply(carrier(InTransit, 10, "1")), Applied::Applied);
        // Late and lower: joins the history only.
        assert_eq!(t.apply(carrier(LabelCreated, 5, "2")), Applied::Stale);
        // The same event again changes nothing.
        assert_eq!(t.apply(carrier(LabelCreated, 5, "2")), Applied::Stale);
        assert_eq!(t.history().count(), 3);
        assert_eq!(t.apply(carrier(Delivered, 20, "3")), Applied::Applied);
        // After a terminal event, a later non-terminal one is stale.
        assert_eq!(t.apply(carrier(OutForDelivery, 30, "4")), Applied::Stale);
        assert_eq!(t.status(), Delivered);
    }

    #[test]
    fn history_lists_gateway_events_first_then_carrier_events_by_time_and_rank() {
        let mut t = Timeline::new(100);
        t.apply(carrier(Delivered, 50, "d"));
        t.apply(StatusEvent::gateway(LabelCreated, 200));
        t.apply(carrier(InTransit, 10, "i"));
        t.apply(carrier(OutForDelivery, 10, "o"));
        let h: Vec<(ShipmentStatus, i64)> =
            t.history().map(|e| (e.status, e.occurred_at_ms)).collect();
        assert_eq!(
            h,
            [
                (Created, 100),
                (LabelCreated, 200),
                (InTransit, 10),
                (OutForDelivery, 10),
                (Delivered, 50)
            ]
        );
    }

    #[test]
    fn statuses_round_trip_their_names() {
        for s in ShipmentStatus::ALL {
            assert_eq!(ShipmentStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(ShipmentStatus::parse("in_transit"), None);
    }

    #[test]
    fn a_busy_tracking_number_keeps_a_bounded_history_and_the_right_status() {
        let mut t = Timeline::new(0);
        t.apply(carrier(Delivered, 5, "d"));
        for i in 0..(3 * MAX_CARRIER_EVENTS as i64) {
            t.apply(carrier(InTransit, 10 + i, &format!("e{i}")));
        }
        // The early DELIVERED is far below the last hundred but still decides.
        assert_eq!(t.status(), Delivered);
        assert_eq!(t.history().count(), 1 + MAX_CARRIER_EVENTS + 1);
        assert!(t.has(Delivered));
        // The newest events are the ones kept.
        let last = t.history().last().unwrap();
        assert_eq!(last.occurred_at_ms, 10 + 3 * MAX_CARRIER_EVENTS as i64 - 1);
    }

    fn carrier_event() -> impl Strategy<Value = StatusEvent> {
        (0usize..7, 0i64..20, 0u8..3, 0u32..1000).prop_map(|(s, at, src, id)| {
            StatusEvent::carrier(
                ShipmentStatus::ALL[s],
                at,
                ["ups", "fedex", "dhl"][src as usize],
                &format!("e{id}"),
            )
        })
    }

    proptest! {
        /// For random sets of events with random repetitions, every arrival
        /// order gives the same status and the same history.
        #[test]
        fn final_state_is_independent_of_arrival_order(
            events in prop::collection::vec(carrier_event(), 1..12),
            repeats in prop::collection::vec(0usize..12, 0..8),
            seed in any::<u64>(),
            cancel in any::<bool>(),
        ) {
            // Also with a history kept small, so the events dropped are
            // exercised too: status and history still do not depend on the
            // order, and the status is the one of the whole set.
            let build = |order: &[StatusEvent], keep: usize| {
                let mut t = Timeline::new(0);
                t.apply(StatusEvent::gateway(LabelCreated, 1));
                if cancel {
                    t.apply(StatusEvent::gateway(Cancelled, 2));
                }
                for e in order {
                    t.apply_keeping(e.clone(), keep);
                }
                t
            };
            let orders = crate::domain::arrival_orders(&events, &repeats, seed);
            let reference = build(&orders[0], MAX_CARRIER_EVENTS);
            let small_reference = build(&orders[0], 3);
            for order in &orders[1..] {
                let t = build(order, MAX_CARRIER_EVENTS);
                prop_assert_eq!(t.status(), reference.status());
                prop_assert_eq!(t.history().collect::<Vec<_>>(), reference.history().collect::<Vec<_>>());
                prop_assert_eq!(&t, &reference);
                let k = build(order, 3);
                prop_assert_eq!(&k, &small_reference);
                prop_assert_eq!(k.status(), reference.status());
                prop_assert!(k.carrier.len() <= 4);
            }
        }
    }
}
