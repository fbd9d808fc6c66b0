//! Shipments (contract 5.1): create one, buy its label, cancel it. Each use
//! case takes what the handler extracted and answers the shipment or label
//! or a [`Refusal`]; the final answer to store with the effect comes from
//! the handler's renderer.

use http::StatusCode;
use serde_json::Value;

use super::labels;
use super::{Ports, Refusal};
use crate::clock::now_ms;
use crate::domain::request::NewShipment;
use crate::domain::shipment::{ShipmentStatus, Timeline};
use crate::downstream::Service;
use crate::store::{CancelAnswer, Completion, ShipmentRecord, StateError};

/// A new shipment for `partner`, not yet stored.
pub fn new_record(partner: &str, request: &NewShipment) -> ShipmentRecord {
    let now = now_ms();
    ShipmentRecord {
        shipment_id: format!("shp_{}", uuid::Uuid::now_v7()),
        partner: partner.to_string(),
        order_id: request.order_id.clone(),
        created_at_ms: now,
        tracking_number: None,
        label: None,
        details: serde_json::to_value(request).unwrap_or(Value::Null),
        timeline: Timeline::new(i64::try_from(now).unwrap_or(i64::MAX)),
        label_intent: None,
    }
}

/// Stores a new shipment with the answer of the request that created it.
pub async fn create(
    ports: Ports<'_>,
    record: ShipmentRecord,
    finalize: &(dyn Fn(&ShipmentRecord) -> Completion + Sync),
) -> Result<ShipmentRecord, Refusal> {
    let completion = finalize(&record);
    ports
        .store
        .create_shipment(record.clone(), Some(completion))
        .await
        .map_err(Refusal::Store)?;
    Ok(record)
}

/// Buys the shipment's label and records it with the request's answer in
/// one write. A shipment cancelled meanwhile gets the label voided again.
pub async fn buy_label(
    ports: Ports<'_>,
    shipment: &ShipmentRecord,
    format: &str,
    finalize: &(dyn Fn(&Value) -> Completion + Sync),
) -> Result<Value, Refusal> {
    // A cancelled shipment cannot get a label, even if it had one (9.15).
    if shipment.timeline.status() == ShipmentStatus::Cancelled {
        return Err(Refusal::InvalidTransition(
            "the shipment is cancelled".into(),
        ));
    }
    if let Some(label) = &shipment.label {
        return Err(Refusal::LabelExists(label_id(label)));
    }
    let sold = labels::purchase(ports, shipment, format).await?;
    // The crash tests kill the process at each step boundary: the process
    // must really die, not one task.
    fail::fail_point!("label-after-carrier", |_| std::process::abort());
    let completion = finalize(&sold.label);
    fail::fail_point!("label-before-commit", |_| std::process::abort());
    match ports
        .store
        .record_label(
            &shipment.shipment_id,
            &sold.tracking_number,
            sold.label.clone(),
            sold.at_ms,
            Some(completion),
        )
        .await
    {
        Ok(_) => Ok(sold.label),
        Err(StateError::InvalidTransition) => {
            // Cancelled while the carrier sold the label: give it back.
            labels::void_unwanted(ports, &sold.label_id).await;
            Err(Refusal::InvalidTransition(
                "the shipment was cancelled".into(),
            ))
        }
        // Another key bought it meanwhile: the shipment has its label.
        Err(StateError::LabelExists(id)) => Err(Refusal::LabelExists(id)),
        // The carrier's tracking number is another shipment's.
        Err(StateError::Conflict(why)) => {
            tracing::error!(why, "the carrier's label cannot be recorded");
            Err(Refusal::Upstream {
                service: Service::Carrier,
                retry_after_secs: 1,
            })
        }
        Err(e) => Err(Refusal::Store(e)),
    }
}

fn label_id(label: &Value) -> String {
    label
        .get("label_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Cancels a shipment that is not moving, voiding its label at the carrier
/// first, also one sold behind an answer that was lost. Already cancelled:
/// the shipment as it is.
pub async fn cancel(
    ports: Ports<'_>,
    shipment: &ShipmentRecord,
    answer: CancelAnswer,
) -> Result<ShipmentRecord, Refusal> {
    let status = shipment.timeline.status();
    if !matches!(
        status,
        ShipmentStatus::Created | ShipmentStatus::LabelCreated | ShipmentStatus::Cancelled
    ) {
        return Err(Refusal::InvalidTransition(format!(
            "a shipment that is {} cannot be cancelled",
            status.as_str()
        )));
    }
    let mut voided = false;
    if status != ShipmentStatus::Cancelled
        && let Some(label_id) = label_to_void(ports, shipment).await?
    {
        match labels::void(ports, &label_id).await {
            Ok(a) if a.status.is_success() || a.status == StatusCode::NOT_FOUND => voided = true,
            Ok(a) => {
                tracing::warn!(status = a.status.as_u16(), "the carrier refused a void");
                return Err(carrier_unavailable(1));
            }
            Err(u) => return Err(carrier_unavailable(u.retry_after_secs)),
        }
    }
    match ports
        .store
        .cancel(&shipment.shipment_id, now_ms(), voided, Some(answer))
        .await
    {
        Ok(rec) => Ok(rec),
        Err(StateError::InvalidTransition) => Err(Refusal::InvalidTransition(
            "the shipment started moving".into(),
        )),
        Err(e) => Err(Refusal::Store(e)),
    }
}

fn carrier_unavailable(retry_after_secs: u64) -> Refusal {
    Refusal::Upstream {
        service: Service::Carrier,
        retry_after_secs,
    }
}

/// The label a cancel must void: the recorded one, or one a purchase may
/// have bought behind a lost answer, which asking again under the same key
/// finds (or buys) so that it is voided like any other.
async fn label_to_void(
    ports: Ports<'_>,
    shipment: &ShipmentRecord,
) -> Result<Option<String>, Refusal> {
    match (&shipment.label, &shipment.label_intent) {
        (Some(label), _) => Ok(Some(label_id(label))),
        (None, Some(intent)) => match labels::ask(ports, &shipment.shipment_id, intent).await {
            Ok(a) if a.status.is_success() => Ok(a
                .body
                .get("label_id")
                .and_then(Value::as_str)
                .map(str::to_string)),
            // The carrier refuses the request: nothing was sold.
            Ok(_) => Ok(None),
            Err(u) => Err(carrier_unavailable(u.retry_after_secs)),
        },
        (None, None) => Ok(None),
    }
}
