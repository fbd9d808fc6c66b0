//! The records both adapters keep: what dispatch did with an event, a
//! shipment, an order, and a stored event's metadata. Stored as JSON (the
//! sled adapter's values, the PostgreSQL adapter's JSONB columns), except
//! `EventMeta`, which each adapter lays out its own way.

use serde::{Deserialize, Serialize};

use crate::domain::ids::{LabelId, OrderId, OrderKey, PartnerName, ShipmentId, TrackingNumber};
use crate::domain::label::{Label, LabelRequest, LabelVoid};
use crate::domain::order::OrderFailure;
use crate::domain::request::{NewOrder, ShipmentDetails};
use crate::domain::shipment::{Applied, ShipmentStatus, StatusEvent};
use crate::idempotency::IdempotencyKey;

/// Everything about a stored event except its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    pub received_at_ms: u64,
    pub event_type: Option<String>,
    /// Whether the event was put in the inbox for the state machine.
    pub dispatch: bool,
    pub headers: Vec<(String, String)>,
    pub tracking_number: Option<String>,
    pub order_id: Option<String>,
}

/// What dispatch did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchOutcome {
    Applied,
    Stale,
    Ignored,
    Parked,
    Dead,
    /// Taken out of the inbox without dispatch: its type is no longer
    /// accepted under the current config. Not a dispatch outcome metric.
    Stored,
}

impl DispatchOutcome {
    /// The outcomes `waybill_dispatch_total` counts (`Stored` is not a
    /// dispatch).
    pub const COUNTED: [DispatchOutcome; 5] = [
        DispatchOutcome::Applied,
        DispatchOutcome::Stale,
        DispatchOutcome::Ignored,
        DispatchOutcome::Parked,
        DispatchOutcome::Dead,
    ];

    const ALL: [DispatchOutcome; 6] = [
        DispatchOutcome::Applied,
        DispatchOutcome::Stale,
        DispatchOutcome::Ignored,
        DispatchOutcome::Parked,
        DispatchOutcome::Dead,
        DispatchOutcome::Stored,
    ];

    /// Its byte in a binary arrival.
    pub(crate) fn code(self) -> u8 {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0) as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<DispatchOutcome> {
        Self::ALL.get(usize::from(code)).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DispatchOutcome::Applied => "applied",
            DispatchOutcome::Stale => "stale",
            DispatchOutcome::Ignored => "ignored",
            DispatchOutcome::Parked => "parked",
            DispatchOutcome::Dead => "dead",
            DispatchOutcome::Stored => "stored",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub outcome: DispatchOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment_id: Option<ShipmentId>,
    /// How many times dispatch ran for this event: 1 unless redelivered.
    pub attempts: u32,
    pub at_ms: u64,
}

/// A shipment as stored. `details` holds what the integrator sent (carrier,
/// service, addresses, parcels); the status lives in `timeline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipmentRecord {
    pub shipment_id: ShipmentId,
    pub partner: PartnerName,
    pub order_id: OrderId,
    pub created_at_ms: u64,
    pub tracking_number: Option<TrackingNumber>,
    pub label: Option<Label>,
    pub details: ShipmentDetails,
    pub timeline: crate::domain::shipment::Timeline,
    /// The carrier request of a label purchase under way, recorded durably
    /// before the carrier is called: if its answer is lost, a retry sends
    /// the same request under the same key, and a cancel can still find
    /// the label through that key and void it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_intent: Option<LabelRequest>,
    /// The void a cancel owes, or how it was settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_void: Option<LabelVoid>,
}

/// An order as stored: what the integrator asked for, how far its flow
/// got, and its payment history. `status` is the order's own status; the
/// one shown follows its shipment (`domain::order::follow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: OrderId,
    pub partner: PartnerName,
    /// The idempotency key that created it: the same order id under
    /// another key is `ORDER_EXISTS`.
    pub key: IdempotencyKey,
    pub created_at_ms: u64,
    /// The request, as parsed.
    pub request: NewOrder,
    pub status: crate::domain::order::OrderStatus,
    pub progress: crate::domain::order::Progress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<OrderFailure>,
    #[serde(default)]
    pub payments: crate::domain::order::PaymentHistory,
    /// When background fulfilment is next due, while it waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfil_due_ms: Option<u64>,
    #[serde(default)]
    pub fulfil_attempts: u32,
}

impl ShipmentRecord {
    /// A shipment as created: no label, its timeline at `created`.
    pub fn new(
        shipment_id: ShipmentId,
        partner: PartnerName,
        order_id: OrderId,
        details: ShipmentDetails,
        created_at_ms: u64,
    ) -> ShipmentRecord {
        ShipmentRecord {
            shipment_id,
            partner,
            order_id,
            created_at_ms,
            tracking_number: None,
            label: None,
            details,
            timeline: crate::domain::shipment::Timeline::new(
                i64::try_from(created_at_ms).unwrap_or(i64::MAX),
            ),
            label_intent: None,
            label_void: None,
        }
    }
}

impl OrderRecord {
    /// How the store finds this order.
    pub fn key(&self) -> OrderKey {
        OrderKey::new(self.partner.clone(), self.order_id.clone())
    }

    /// An order as placed: pending, nothing done yet.
    pub fn new(
        partner: PartnerName,
        key: IdempotencyKey,
        request: NewOrder,
        created_at_ms: u64,
    ) -> OrderRecord {
        OrderRecord {
            order_id: request.order_id.clone(),
            partner,
            key,
            created_at_ms,
            request,
            status: crate::domain::order::OrderStatus::Pending,
            progress: Default::default(),
            failure_reason: None,
            payments: Default::default(),
            fulfil_due_ms: None,
            fulfil_attempts: 0,
        }
    }
}

/// The rules of a shipment's own writes, shared by both adapters: each
/// changes the record in place or refuses, and the adapter stores it.
impl ShipmentRecord {
    /// Records the carrier request of a label purchase about to be sent,
    /// unless one is recorded already: then that one is the request to
    /// send, so the carrier sees the same body under the same key. Whether
    /// the record changed is the second value.
    pub fn intend_label(
        &mut self,
        request: LabelRequest,
    ) -> Result<(LabelRequest, bool), super::StateError> {
        if self.timeline.status() == ShipmentStatus::Cancelled {
            return Err(super::StateError::InvalidTransition);
        }
        if let Some(existing) = &self.label_intent {
            return Ok((existing.clone(), false));
        }
        self.label_intent = Some(request.clone());
        Ok((request, true))
    }

    /// Gives the shipment its label, its tracking number and the gateway's
    /// LABEL_CREATED. Recording happens once per shipment: a second
    /// purchase, also one that got the same label through the carrier's
    /// business key, was made under another idempotency key and is
    /// answered LABEL_EXISTS.
    pub fn give_label(&mut self, label: Label, at_ms: u64) -> Result<(), super::StateError> {
        if self.timeline.status() == ShipmentStatus::Cancelled {
            return Err(super::StateError::InvalidTransition);
        }
        if self.label.is_some() || self.tracking_number.is_some() {
            let existing = self
                .label
                .as_ref()
                .map_or_else(|| LabelId::from(""), |l| l.label_id.clone());
            return Err(super::StateError::LabelExists(existing));
        }
        self.tracking_number = Some(label.tracking_number.clone());
        self.label = Some(label);
        self.label_intent = None;
        self.timeline.apply(StatusEvent::gateway(
            ShipmentStatus::LabelCreated,
            clamp_ms(at_ms),
        ));
        Ok(())
    }

    /// Cancels a shipment that is not moving: the gateway's CANCELLED joins
    /// its timeline. Already cancelled: nothing changes. Moving or done:
    /// `InvalidTransition`, unless the label was already voided for this
    /// cancel: then the cancel has happened at the carrier and is recorded.
    ///
    /// A cancel that voided nothing while the shipment has a label, or an
    /// unresolved label request (a label may have been sold behind a lost
    /// answer), owes the void, due at once.
    pub fn cancel(&mut self, at_ms: u64, voided: bool) -> Result<(), super::StateError> {
        let status = self.timeline.status();
        if status != ShipmentStatus::Cancelled
            && !voided
            && self.label_void.is_none()
            && (self.label.is_some() || self.label_intent.is_some())
        {
            // Checked below that the cancel may happen; set only then.
            let owed = LabelVoid::Owed {
                attempts: 0,
                due_ms: at_ms,
            };
            self.cancel_only(status, at_ms, voided)?;
            self.label_void = Some(owed);
            return Ok(());
        }
        self.cancel_only(status, at_ms, voided)
    }

    /// Settles the void this shipment owes with `outcome` (done, or owed
    /// again later): the queue entry to take out, due then. None when no
    /// void is owed (another process settled it): nothing changes.
    pub fn settle_void(&mut self, outcome: LabelVoid) -> Option<u64> {
        let Some(LabelVoid::Owed { due_ms, .. }) = self.label_void else {
            return None;
        };
        self.label_void = Some(outcome);
        Some(due_ms)
    }

    fn cancel_only(
        &mut self,
        status: ShipmentStatus,
        at_ms: u64,
        voided: bool,
    ) -> Result<(), super::StateError> {
        match status {
            ShipmentStatus::Cancelled => {}
            ShipmentStatus::Created | ShipmentStatus::LabelCreated => {
                self.timeline.apply(StatusEvent::gateway(
                    ShipmentStatus::Cancelled,
                    clamp_ms(at_ms),
                ));
            }
            _ if voided => {
                self.timeline.apply(StatusEvent::gateway(
                    ShipmentStatus::Cancelled,
                    clamp_ms(at_ms),
                ));
            }
            _ => return Err(super::StateError::InvalidTransition),
        }
        Ok(())
    }
}

/// What a parked event waits for: the record its key (a tracking number
/// or an order id) names, which does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Shipment,
    Order,
}

impl Waiting {
    pub const ALL: [Waiting; 2] = [Waiting::Shipment, Waiting::Order];

    /// The parked outcome's reason, as searches and the admin API show it.
    pub fn reason(self, key: &str) -> String {
        match self {
            Waiting::Shipment => format!("no shipment has tracking number {key} yet"),
            Waiting::Order => format!("no order {key} yet"),
        }
    }
}

impl OutcomeRecord {
    /// The outcome of one dispatch of an event dispatched `attempts` times
    /// before, to be filled in: dead until shown otherwise.
    pub fn attempt(attempts: u32) -> OutcomeRecord {
        OutcomeRecord {
            outcome: DispatchOutcome::Dead,
            reason: None,
            shipment_id: None,
            attempts: attempts.saturating_add(1),
            at_ms: crate::clock::now_ms(),
        }
    }

    /// No shipment has the event's tracking number yet.
    pub fn park_for_tracking(&mut self, tracking_number: &str) {
        self.outcome = DispatchOutcome::Parked;
        self.reason = Some(Waiting::Shipment.reason(tracking_number));
    }

    /// No order has the event's order id yet.
    pub fn park_for_order(&mut self, order_id: &str) {
        self.outcome = DispatchOutcome::Parked;
        self.reason = Some(Waiting::Order.reason(order_id));
    }

    /// What a parked event waits for, when its reason is the one that
    /// wait gives for `key` (the event's tracking number or order id): a
    /// store may then keep the wait alone and give the reason back from
    /// the key.
    pub fn waiting_for(&self, key: &str) -> Option<Waiting> {
        let reason = self.reason.as_deref()?;
        if self.outcome != DispatchOutcome::Parked {
            return None;
        }
        Waiting::ALL.into_iter().find(|w| w.reason(key) == reason)
    }

    /// Applies a tracking event to its shipment.
    pub fn apply_tracking(&mut self, shipment: &mut ShipmentRecord, event: StatusEvent) {
        self.outcome = match shipment.timeline.apply(event) {
            Applied::Applied => DispatchOutcome::Applied,
            Applied::Stale => DispatchOutcome::Stale,
        };
        self.shipment_id = Some(shipment.shipment_id.clone());
    }

    /// Applies a payment event to every order with its id (partners
    /// choose order ids independently): applied when it changed an
    /// order's payment status, stale when it only joined the history.
    pub fn apply_payment<'a>(
        &mut self,
        orders: impl IntoIterator<Item = &'a mut OrderRecord>,
        event: &crate::domain::order::PaymentEvent,
    ) {
        self.outcome = DispatchOutcome::Stale;
        for order in orders {
            let before = order.payments.status();
            order.payments.add(event.clone());
            if order.payments.status() != before {
                self.outcome = DispatchOutcome::Applied;
            }
        }
    }

    /// The outcomes that need nothing but the interpretation: ignored,
    /// dead, or stored without dispatch. False for the others.
    pub fn settle_plain(
        &mut self,
        interpretation: &crate::webhook::mapping::Interpretation,
    ) -> bool {
        use crate::webhook::mapping::Interpretation;
        match interpretation {
            Interpretation::Ignored { reason } => {
                self.outcome = DispatchOutcome::Ignored;
                self.reason = Some(reason.clone());
            }
            Interpretation::Dead { reason } => self.reason = Some(reason.clone()),
            Interpretation::NotDispatched => self.outcome = DispatchOutcome::Stored,
            Interpretation::Tracking { .. } | Interpretation::Payment { .. } => return false,
        }
        true
    }
}

/// A time in milliseconds as the timeline keeps it.
fn clamp_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}
