//! A shipment's label at the carrier. The carrier's idempotency key is the
//! shipment's (`label:<shipment_id>`), whatever the integrator's key, so a
//! retry after a lost answer gets the first label back; and the request is
//! recorded before it is sent, so that a label whose answer was lost can
//! still be found (a retry sends the same request, a cancel asks for it
//! and voids it).

use super::ports::{Failure, Service};
use super::{Ports, Refusal};
use crate::clock::{now_ms, rfc3339_ms};
use crate::domain::ids::LabelId;
use crate::domain::label::{Label, LabelFormat, LabelRequest};
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
        .shipments
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
    let sold = ports
        .carrier
        .buy_label(&request)
        .await
        .map_err(|f| Refusal::upstream(Service::Carrier, f))?;
    let at_ms = now_ms();
    Ok(Sold {
        label: Label {
            label_id: sold.label_id,
            shipment_id: shipment.shipment_id.clone(),
            tracking_number: sold.tracking_number,
            carrier: Some(sold.carrier.unwrap_or(request.carrier)),
            format: request.format,
            created_at: rfc3339_ms(at_ms),
        },
        at_ms,
    })
}

/// The label a purchase recorded in `intent` may have bought behind a lost
/// answer: asking again under the shipment's key finds it (or buys it, to
/// be voided like any other). None when the carrier refuses the request:
/// nothing was sold.
pub async fn behind_intent(
    ports: Ports<'_>,
    intent: &LabelRequest,
) -> Result<Option<LabelId>, Refusal> {
    match ports.carrier.buy_label(intent).await {
        Ok(sold) => Ok(Some(sold.label_id)),
        Err(Failure::Refused { .. } | Failure::Malformed { .. }) => Ok(None),
        Err(f @ Failure::Unavailable { .. }) => Err(Refusal::upstream(Service::Carrier, f)),
    }
}

/// Gives back a label sold for a shipment that was cancelled meanwhile.
pub async fn void_unwanted(ports: Ports<'_>, label_id: &LabelId) {
    if let Err(failure) = ports.carrier.void_label(label_id).await {
        tracing::error!(
            label_id = %label_id,
            ?failure,
            "a label bought for a cancelled shipment could not be voided"
        );
    }
}
