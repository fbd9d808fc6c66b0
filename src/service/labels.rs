//! A shipment's label at the carrier. The carrier's idempotency key is the
//! shipment's (`label:<shipment_id>`), whatever the integrator's key, so a
//! retry after a lost answer gets the first label back; and the request is
//! recorded before it is sent, so that a label whose answer was lost can
//! still be found (a retry sends the same request, a cancel asks for it
//! and voids it).

use http::Method;
use serde_json::Value;

use super::{Ports, Refusal};
use crate::clock::{now_ms, rfc3339_ms};
use crate::domain::ids::{LabelId, ShipmentId, TrackingNumber};
use crate::domain::label::{Label, LabelFormat, LabelRequest};
use crate::downstream::{Answer, Service, Unavailable};
use crate::store::{ShipmentRecord, StateError};

/// A label the carrier sold, not yet recorded.
#[derive(Debug, Clone)]
pub struct Sold {
    pub label: Label,
    pub at_ms: u64,
}

/// Records the purchase intent, then buys the label of `shipment`.
pub async fn purchase(
    ports: Ports<'_>,
    shipment: &ShipmentRecord,
    format: LabelFormat,
) -> Result<Sold, Refusal> {
    let request = LabelRequest::new(&shipment.shipment_id, &shipment.details, format);
    let request = match ports
        .store
        .record_intent(&shipment.shipment_id, request)
        .await
    {
        Ok(r) => r,
        Err(StateError::InvalidTransition) => {
            return Err(Refusal::InvalidTransition(
                "the shipment is cancelled".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let answer = match ask(ports, &shipment.shipment_id, &request).await {
        Ok(a) if a.status.is_success() => a,
        Ok(a) => {
            tracing::warn!(status = a.status.as_u16(), "the carrier refused a label");
            return Err(carrier(1));
        }
        Err(u) => {
            return Err(carrier(u.retry_after_secs));
        }
    };
    let (Some(label_id), Some(tracking_number)) = (
        answer.body.get("label_id").and_then(Value::as_str),
        answer.body.get("tracking_number").and_then(Value::as_str),
    ) else {
        tracing::error!("the carrier's label answer lacks label_id or tracking_number");
        return Err(carrier(1));
    };
    let at_ms = now_ms();
    let carrier = answer
        .body
        .get("carrier")
        .and_then(Value::as_str)
        .unwrap_or(&request.carrier)
        .to_string();
    Ok(Sold {
        label: Label {
            label_id: LabelId::from(label_id),
            shipment_id: shipment.shipment_id.clone(),
            tracking_number: TrackingNumber::from(tracking_number),
            carrier: Some(carrier),
            format: request.format,
            created_at: rfc3339_ms(at_ms),
        },
        at_ms,
    })
}

fn carrier(retry_after_secs: u64) -> Refusal {
    Refusal::Upstream {
        service: Service::Carrier,
        retry_after_secs,
    }
}

/// Asks the carrier for a shipment's label under the shipment's key: buys
/// it, or gets back the one bought before under that key.
pub async fn ask(
    ports: Ports<'_>,
    shipment_id: &ShipmentId,
    request: &LabelRequest,
) -> Result<Answer, Unavailable> {
    let body = serde_json::to_value(request).unwrap_or(Value::Null);
    ports
        .downstream
        .call(
            Service::Carrier,
            Method::POST,
            "/carrier/labels",
            &format!("label:{shipment_id}"),
            Some(&body),
        )
        .await
}

/// Voids a label at the carrier. The carrier's key is the label's, so a
/// retried void is one void.
pub async fn void(ports: Ports<'_>, label_id: &LabelId) -> Result<Answer, Unavailable> {
    ports
        .downstream
        .call(
            Service::Carrier,
            Method::POST,
            &format!("/carrier/labels/{label_id}/void"),
            &format!("void:{label_id}"),
            None,
        )
        .await
}

/// Gives back a label sold for a shipment that was cancelled meanwhile.
pub async fn void_unwanted(ports: Ports<'_>, label_id: &LabelId) {
    if let Err(u) = void(ports, label_id).await {
        tracing::error!(
            label_id = %label_id,
            retry_after = u.retry_after_secs,
            "a label bought for a cancelled shipment could not be voided"
        );
    }
}
