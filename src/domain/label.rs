//! A shipment's label: what is asked of the carrier, and what it sold.
//! Pure. Each serialises to the JSON the records and the API have always
//! held.

use serde::{Deserialize, Serialize};

use super::ids::{LabelId, ShipmentId, TrackingNumber};
use super::request::{Address, Parcel, ShipmentDetails};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LabelFormat {
    #[default]
    #[serde(rename = "PDF")]
    Pdf,
    #[serde(rename = "ZPL")]
    Zpl,
}

impl LabelFormat {
    pub fn parse(s: &str) -> Option<LabelFormat> {
        match s {
            "PDF" => Some(LabelFormat::Pdf),
            "ZPL" => Some(LabelFormat::Zpl),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LabelFormat::Pdf => "PDF",
            LabelFormat::Zpl => "ZPL",
        }
    }
}

/// A label the carrier sold, as recorded on its shipment and answered
/// (GUARANTEES.md: "The integrator API").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub label_id: LabelId,
    pub shipment_id: ShipmentId,
    pub tracking_number: TrackingNumber,
    /// The carrier's name for itself, else the shipment's carrier.
    pub carrier: Option<String>,
    pub format: LabelFormat,
    /// RFC 3339, when it was recorded.
    pub created_at: String,
}

impl Label {
    /// The label `label_id` with tracking number `tracking_number` for
    /// `shipment_id`, recorded at `created_at` (RFC 3339).
    pub fn new(
        label_id: impl Into<LabelId>,
        shipment_id: &ShipmentId,
        tracking_number: impl Into<TrackingNumber>,
        created_at: String,
    ) -> Label {
        Label {
            label_id: label_id.into(),
            shipment_id: shipment_id.clone(),
            tracking_number: tracking_number.into(),
            carrier: None,
            format: LabelFormat::Pdf,
            created_at,
        }
    }
}

/// The carrier request of a label purchase: recorded on the shipment
/// before it is sent, so that a retry sends the same body under the same
/// key and a cancel can still find what a lost answer sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRequest {
    pub shipment_id: ShipmentId,
    pub carrier: String,
    pub service: String,
    pub from: Address,
    pub to: Address,
    pub parcels: Vec<Parcel>,
    pub format: LabelFormat,
}

impl LabelRequest {
    /// The request for `shipment`'s label in `format`.
    pub fn new(shipment_id: &ShipmentId, details: &ShipmentDetails, format: LabelFormat) -> Self {
        LabelRequest {
            shipment_id: shipment_id.clone(),
            carrier: details.carrier.clone(),
            service: details.service.clone(),
            from: details.from.clone(),
            to: details.to.clone(),
            parcels: details.parcels.clone(),
            format,
        }
    }
}

/// The void a cancel owes when it could not make it at once (GUARANTEES.md:
/// "Labels are voided, never waited on"): a shipment cancelled while a label
/// request was unresolved, or with a label it did not void, until the
/// gateway knows the carrier holds no active label for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LabelVoid {
    /// Still owed: the carrier is asked again at `due_ms`, the `attempts`
    /// before having failed.
    Owed { attempts: u32, due_ms: u64 },
    /// The label the carrier held under the request's key, voided.
    Voided { label_id: LabelId, at_ms: u64 },
    /// The carrier refused the request under its key: it sold nothing.
    NothingSold { at_ms: u64 },
}

impl LabelVoid {
    /// When an owed void is next tried after its `attempts`-th failure:
    /// 1 s, doubling, to 5 minutes.
    pub fn retry(attempts: u32, now_ms: u64) -> LabelVoid {
        let doublings = attempts.saturating_sub(1).min(9);
        let wait_ms = (1_000u64 << doublings).min(300_000);
        LabelVoid::Owed {
            attempts,
            due_ms: now_ms.saturating_add(wait_ms),
        }
    }

    pub fn due_ms(&self) -> Option<u64> {
        match self {
            LabelVoid::Owed { due_ms, .. } => Some(*due_ms),
            _ => None,
        }
    }
}
