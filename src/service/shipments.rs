//! Shipments (GUARANTEES.md: "The integrator API"): create one, buy its label, cancel it, read it.
//! Each write runs under its idempotency key (`keyed`) and answers the
//! shipment or label or a [`Refusal`]; the answer stored with the effect
//! is worded by the caller's [`Render`].

use super::keyed::{self, Answered, Keyed};
use super::labels;
use super::ports::Service;
use super::{Ports, Refusal, Render};
use crate::clock::now_ms;
use crate::domain::ids::{LabelId, OrderId, PartnerName, ShipmentId};
use crate::domain::label::{Label, LabelFormat, LabelVoid};
use crate::domain::request::{NewShipment, ShipmentDetails};
use crate::domain::shipment::ShipmentStatus;
use crate::store::{Cancel, CancelAnswer, Completion, NewLabel, ShipmentRecord, StateError};

/// A shipment id minted here: `shp_` and a UUIDv7, so ids sort by time.
pub fn mint_id() -> ShipmentId {
    ShipmentId::from(format!("shp_{}", uuid::Uuid::now_v7()))
}

/// A new shipment, not yet stored.
pub fn new_shipment(
    partner: &PartnerName,
    order_id: &OrderId,
    details: ShipmentDetails,
) -> ShipmentRecord {
    ShipmentRecord::new(
        mint_id(),
        partner.clone(),
        order_id.clone(),
        details,
        now_ms(),
    )
}

/// A new shipment for `partner` as the integrator asked for it.
pub fn new_record(partner: &PartnerName, request: &NewShipment) -> ShipmentRecord {
    new_shipment(partner, &request.order_id, request.details.clone())
}

/// Creates a shipment for `keyed`'s partner, once per key.
pub async fn create(
    ports: Ports<'_>,
    keyed: &Keyed,
    request: &NewShipment,
    render: &dyn Render,
) -> Result<Answered<ShipmentRecord>, Refusal> {
    keyed::run(ports, keyed, &|r| render.refusal(r), async || {
        let record = new_record(&keyed.partner, request);
        let completion = keyed.completion(render.created(&record));
        ports
            .shipments
            .create_shipment(record.clone(), Some(completion))
            .await?;
        Ok(record)
    })
    .await
}

/// The shipment `id` of `partner`; another partner's does not exist for it.
pub async fn own(
    ports: Ports<'_>,
    partner: &PartnerName,
    id: &ShipmentId,
) -> Result<ShipmentRecord, Refusal> {
    match ports.shipments.shipment(id).await? {
        Some(rec) if &rec.partner == partner => Ok(rec),
        _ => Err(Refusal::NotFound("shipment")),
    }
}

/// Buys the label of `keyed`'s partner's shipment `id`, once per key.
pub async fn label(
    ports: Ports<'_>,
    keyed: &Keyed,
    id: &ShipmentId,
    format: LabelFormat,
    render: &dyn Render,
) -> Result<Answered<Label>, Refusal> {
    let shipment = own(ports, &keyed.partner, id).await?;
    keyed::run(ports, keyed, &|r| render.refusal(r), async || {
        // The crash tests kill the process at each step boundary: the
        // process must really die, not one task.
        fail::fail_point!("label-after-claim", |_| std::process::abort());
        buy_label(ports, &shipment, format, &|l| {
            keyed.completion(render.label(l))
        })
        .await
    })
    .await
}

/// Cancels `keyed`'s partner's shipment `id`, once per key.
pub async fn cancel_keyed(
    ports: Ports<'_>,
    keyed: &Keyed,
    id: &ShipmentId,
    render: &dyn Render,
) -> Result<Answered<ShipmentRecord>, Refusal> {
    let shipment = own(ports, &keyed.partner, id).await?;
    let answer = CancelAnswer {
        partner: keyed.partner.clone(),
        key: keyed.key.clone(),
        fingerprint: keyed.fingerprint,
        expires_at_ms: keyed.expires_at_ms(),
        render: render.cancelled(),
    };
    keyed::run(ports, keyed, &|r| render.refusal(r), async || {
        cancel(ports, &shipment, answer).await
    })
    .await
}

/// Buys the shipment's label and records it with the request's answer in
/// one write. A shipment cancelled meanwhile gets the label voided again.
async fn buy_label(
    ports: Ports<'_>,
    shipment: &ShipmentRecord,
    format: LabelFormat,
    finalize: &(dyn Fn(&Label) -> Completion + Sync),
) -> Result<Label, Refusal> {
    // A cancelled shipment cannot get a label, even if it had one (9.15).
    if shipment.timeline.status() == ShipmentStatus::Cancelled {
        return Err(Refusal::InvalidTransition(
            "the shipment is cancelled".into(),
        ));
    }
    if let Some(label) = &shipment.label {
        return Err(Refusal::LabelExists(label.label_id.clone()));
    }
    let sold = labels::purchase(ports, shipment, format).await?;
    // The crash tests kill the process at each step boundary: the process
    // must really die, not one task.
    fail::fail_point!("label-after-carrier", |_| std::process::abort());
    let completion = finalize(&sold.label);
    fail::fail_point!("label-before-commit", |_| std::process::abort());
    match ports
        .shipments
        .record_label(
            NewLabel {
                label: sold.label.clone(),
                at_ms: sold.at_ms,
            },
            Some(completion),
        )
        .await
    {
        Ok(_) => Ok(sold.label),
        Err(StateError::InvalidTransition) => {
            // Cancelled while the carrier sold the label: give it back.
            labels::void_unwanted(ports, &sold.label.label_id).await;
            Err(Refusal::InvalidTransition(
                "the shipment was cancelled".into(),
            ))
        }
        // Another key bought it meanwhile: the shipment has its label.
        Err(StateError::LabelExists(id)) => Err(Refusal::LabelExists(id)),
        // The carrier's tracking number is another shipment's.
        Err(e @ StateError::TrackingNumberTaken { .. }) => {
            tracing::error!(error = %e, "the carrier's label cannot be recorded");
            Err(Refusal::Upstream {
                service: Service::Carrier,
                retry_after_secs: 1,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Cancels a shipment that is not moving, voiding its label at the carrier
/// first, also one sold behind an answer that was lost. Already cancelled:
/// the shipment as it is.
async fn cancel(
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
    // A recorded label is voided first: a failure is the answer (503). A
    // label request with no answer recorded is not waited on: the cancel
    // owes its void, which the background settles (`settle_owed_voids`).
    let mut voided = false;
    if status != ShipmentStatus::Cancelled
        && let Some(label) = &shipment.label
    {
        ports
            .carrier
            .void_label(&label.label_id)
            .await
            .map_err(|f| Refusal::upstream(Service::Carrier, f))?;
        voided = true;
    }
    match ports
        .shipments
        .cancel(Cancel {
            shipment_id: shipment.shipment_id.clone(),
            at_ms: now_ms(),
            voided,
            answer: Some(answer),
        })
        .await
    {
        Ok(rec) => Ok(rec),
        Err(StateError::InvalidTransition) => Err(Refusal::InvalidTransition(
            "the shipment started moving".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Settles the label voids cancels owe that are due at `now_ms`, at most
/// `limit` (GUARANTEES.md: "Labels are voided, never waited on"): each
/// shipment's label, or the one its request may have bought behind a lost
/// answer, is asked of the carrier under the request's key and voided; a
/// carrier that cannot answer is asked again later, with backoff. How many
/// were due.
pub async fn settle_owed_voids(
    ports: Ports<'_>,
    now_ms: u64,
    limit: usize,
) -> Result<usize, Refusal> {
    let due = ports.shipments.due_voids(now_ms, limit).await?;
    for id in &due {
        let Some(shipment) = ports.shipments.shipment(id).await? else {
            continue;
        };
        let Some(LabelVoid::Owed { attempts, .. }) = shipment.label_void else {
            continue;
        };
        let again = |why: String| {
            tracing::warn!(shipment_id = %id, attempts = attempts + 1, why = %why, "an owed label void could not be made yet; trying again later");
            LabelVoid::retry(attempts.saturating_add(1), now_ms)
        };
        let outcome = match label_to_void(ports, &shipment).await {
            Ok(None) => LabelVoid::NothingSold { at_ms: now_ms },
            Ok(Some(label_id)) => match ports.carrier.void_label(&label_id).await {
                Ok(()) => {
                    tracing::info!(shipment_id = %id, label_id = %label_id, "an owed label void was made");
                    LabelVoid::Voided {
                        label_id,
                        at_ms: now_ms,
                    }
                }
                Err(failure) => again(format!("{failure:?}")),
            },
            Err(refusal) => again(format!("{refusal:?}")),
        };
        ports.shipments.settle_void(id, outcome).await?;
    }
    Ok(due.len())
}

/// The label a cancel must void: the recorded one, or one a purchase may
/// have bought behind a lost answer, which asking again under the same key
/// finds (or buys) so that it is voided like any other.
async fn label_to_void(
    ports: Ports<'_>,
    shipment: &ShipmentRecord,
) -> Result<Option<LabelId>, Refusal> {
    match (&shipment.label, &shipment.label_intent) {
        (Some(label), _) => Ok(Some(label.label_id.clone())),
        (None, Some(intent)) => labels::behind_intent(ports, intent).await,
        (None, None) => Ok(None),
    }
}
