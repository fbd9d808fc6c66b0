//! The use cases' service ports over HTTP: each call's path, key and body,
//! and what each status of its answer means.

use async_trait::async_trait;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Answer, Downstream, Service, Unavailable};
use crate::domain::ids::{LabelId, OrderId, PartnerName};
use crate::domain::label::LabelRequest;
use crate::domain::request::Item;
use crate::service::ports::{
    Carrier, Charge, ChargeRequest, Failure, Inventory, LabelSold, Payments, Reservation,
};

impl From<Unavailable> for Failure {
    fn from(u: Unavailable) -> Self {
        Failure::Unavailable {
            retry_after_secs: u.retry_after_secs,
        }
    }
}

fn refused(answer: &Answer) -> Failure {
    Failure::Refused {
        status: answer.status.as_u16(),
    }
}

/// A text field a success must carry.
fn text<'a>(answer: &'a Answer, field: &'static str) -> Result<&'a str, Failure> {
    answer
        .body
        .get(field)
        .and_then(Value::as_str)
        .ok_or(Failure::Malformed { missing: field })
}

/// Done, or already undone: a 404 means the service does not know it.
fn done_or_unknown(answer: &Answer) -> Result<(), Failure> {
    if answer.status.is_success() || answer.status == StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(refused(answer))
    }
}

#[async_trait]
impl Carrier for Downstream {
    async fn buy_label(&self, request: &LabelRequest) -> Result<LabelSold, Failure> {
        let body = serde_json::to_value(request).map_err(|_| Failure::Malformed {
            missing: "a label request that serialises",
        })?;
        let key = format!("label:{}", request.shipment_id);
        let answer = self
            .call(
                Service::Carrier,
                Method::POST,
                "/carrier/labels",
                &key,
                Some(&body),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        Ok(LabelSold {
            label_id: text(&answer, "label_id")?.into(),
            tracking_number: text(&answer, "tracking_number")?.into(),
            carrier: text(&answer, "carrier").ok().map(String::from),
        })
    }

    async fn void_label(&self, label_id: &LabelId) -> Result<(), Failure> {
        let answer = self
            .call(
                Service::Carrier,
                Method::POST,
                &format!("/carrier/labels/{label_id}/void"),
                &format!("void:{label_id}"),
                None,
            )
            .await?;
        done_or_unknown(&answer)
    }
}

#[async_trait]
impl Payments for Downstream {
    async fn charge(&self, request: ChargeRequest<'_>) -> Result<Charge, Failure> {
        let body = json!({
            "amount_cents": request.amount_cents,
            "currency": request.currency,
            "customer_id": request.customer_id,
        });
        let key = format!("charge:{}:{}", request.partner, request.order_id);
        let answer = self
            .call(
                Service::Payments,
                Method::POST,
                "/payments/charges",
                &key,
                Some(&body),
            )
            .await?;
        match answer.status {
            s if s.is_success() => Ok(Charge::Paid {
                transaction_id: text(&answer, "transaction_id")?.into(),
            }),
            StatusCode::PAYMENT_REQUIRED => Ok(Charge::Declined),
            _ => Err(refused(&answer)),
        }
    }
}

#[async_trait]
impl Inventory for Downstream {
    async fn reserve(
        &self,
        partner: &PartnerName,
        order_id: &OrderId,
        items: &[Item],
    ) -> Result<Reservation, Failure> {
        let answer = self
            .call(
                Service::Inventory,
                Method::POST,
                "/inventory/reservations",
                &format!("reserve:{partner}:{order_id}"),
                Some(&json!({ "items": items })),
            )
            .await?;
        match answer.status {
            s if s.is_success() => Ok(Reservation::Reserved {
                reservation_id: text(&answer, "reservation_id")?.into(),
            }),
            StatusCode::UNPROCESSABLE_ENTITY => Ok(Reservation::OutOfStock),
            _ => Err(refused(&answer)),
        }
    }

    async fn release(
        &self,
        partner: &PartnerName,
        order_id: &OrderId,
        reservation_id: &str,
    ) -> Result<(), Failure> {
        let answer = self
            .call(
                Service::Inventory,
                Method::DELETE,
                &format!("/inventory/reservations/{reservation_id}"),
                &format!("release:{partner}:{order_id}"),
                None,
            )
            .await?;
        done_or_unknown(&answer)
    }
}
