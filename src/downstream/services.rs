//! The use cases' service ports over HTTP: each call's path, key and body,
//! and what each status of its answer means.

use async_trait::async_trait;
use http::{Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, PercentEncode, utf8_percent_encode};
use serde_json::{Value, json};

use super::{Answer, Downstream, Service, Unavailable};
use crate::clock::rfc3339_ms;
use crate::domain::ids::{LabelId, OrderId, PartnerName, ReservationId};
use crate::domain::label::LabelRequest;
use crate::domain::request::Item;
use crate::service::ports::{
    Books, Carrier, Charge, ChargeRequest, Entry, Failure, Inventory, LabelSold, Page, PageAt,
    Payments, Reservation,
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

/// What a path segment may hold as it is: RFC 3986's unreserved
/// characters. An id a service minted is its own to choose; encoded, a `/`,
/// `?` or space in it stays inside its segment instead of naming another
/// resource or failing the request.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn segment(id: &str) -> PercentEncode<'_> {
    utf8_percent_encode(id, SEGMENT)
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
impl Downstream {
    /// POSTs `body` to `path` of `service` under `key`: what a success made
    /// (its id `field`, given to `made`); `none` when the service answered
    /// that status (no charge, no stock); else a refusal.
    async fn make<T>(
        &self,
        (service, path, key, body): (Service, &str, &str, &Value),
        (field, made): (&'static str, impl FnOnce(String) -> T),
        (status, none): (StatusCode, T),
    ) -> Result<T, Failure> {
        let answer = self
            .call(service, Method::POST, path, key, Some(body))
            .await?;
        match answer.status {
            s if s.is_success() => Ok(made(text(&answer, field)?.into())),
            s if s == status => Ok(none),
            _ => Err(refused(&answer)),
        }
    }
}

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
        self.void_under(label_id, &format!("void:{label_id}")).await
    }

    async fn void_label_again(&self, label_id: &LabelId, again: &str) -> Result<(), Failure> {
        self.void_under(label_id, &format!("void:{label_id}:{again}"))
            .await
    }
}

impl Downstream {
    async fn void_under(&self, label_id: &LabelId, key: &str) -> Result<(), Failure> {
        let path = format!("/carrier/labels/{}/void", segment(label_id.as_str()));
        self.end((Service::Carrier, Method::POST), &path, key).await
    }

    /// Ends something at `service` (a void, a release): done, also when
    /// the service does not know it; else a refusal.
    async fn end(
        &self,
        (service, method): (Service, Method),
        path: &str,
        key: &str,
    ) -> Result<(), Failure> {
        let answer = self.call(service, method, path, key, None).await?;
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
        let call = (Service::Payments, "/payments/charges", key.as_str(), &body);
        self.make(
            call,
            ("transaction_id", |id| Charge::Paid {
                transaction_id: id.into(),
            }),
            (StatusCode::PAYMENT_REQUIRED, Charge::Declined),
        )
        .await
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
        let key = format!("reserve:{partner}:{order_id}");
        let body = json!({ "items": items });
        self.make(
            (Service::Inventory, "/inventory/reservations", &key, &body),
            ("reservation_id", |id| Reservation::Reserved {
                reservation_id: id.into(),
            }),
            (StatusCode::UNPROCESSABLE_ENTITY, Reservation::OutOfStock),
        )
        .await
    }

    async fn release(
        &self,
        partner: &PartnerName,
        order_id: &OrderId,
        reservation_id: &ReservationId,
    ) -> Result<(), Failure> {
        let path = format!(
            "/inventory/reservations/{}",
            segment(reservation_id.as_str())
        );
        let key = format!("release:{partner}:{order_id}");
        self.end((Service::Inventory, Method::DELETE), &path, &key)
            .await
    }
}

#[async_trait]
impl Books for Downstream {
    /// `GET /carrier/labels`, `/payments/charges` or
    /// `/inventory/reservations` with `created_after`, `limit` and
    /// `cursor`, answered `{"data": [...], "next_cursor"}`.
    async fn page(&self, at: PageAt<'_>) -> Result<Page, Failure> {
        let PageAt {
            service,
            since_ms,
            cursor,
        } = at;
        let (path, id, active) = match service {
            Service::Carrier => ("/carrier/labels", "label_id", Some("voided")),
            Service::Payments => ("/payments/charges", "transaction_id", None),
            Service::Inventory => (
                "/inventory/reservations",
                "reservation_id",
                Some("released"),
            ),
        };
        let path = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", "500");
            if let Some(ms) = since_ms {
                query.append_pair("created_after", &rfc3339_ms(ms));
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
            format!("{path}?{}", query.finish())
        };
        let answer = self
            .call(service, Method::GET, &path, "books", None)
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        let rows = answer
            .body
            .get("data")
            .and_then(Value::as_array)
            .ok_or(Failure::Malformed { missing: "data" })?;
        let entries = rows
            .iter()
            .map(|row| {
                let text = |f: &str| row.get(f).and_then(Value::as_str).map(str::to_string);
                Ok(Entry {
                    id: text(id).ok_or(Failure::Malformed { missing: "an id" })?,
                    key: text("idempotency_key"),
                    // Ended when its flag says so: voided, released.
                    active: active.is_none_or(|flag| row.get(flag) != Some(&Value::Bool(true))),
                    amount: row
                        .get("amount_cents")
                        .and_then(Value::as_i64)
                        .zip(text("currency")),
                })
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        Ok(Page {
            entries,
            next: answer
                .body
                .get("next_cursor")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DownstreamConfig;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A service on loopback that answers every request `200 {}` and
    /// tells the request line of each.
    async fn recording() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head);
                    let _ = tx.send(line.lines().next().unwrap_or_default().to_string());
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await;
                });
            }
        });
        (base, rx)
    }

    /// An id comes from the service that minted it and goes back in a
    /// path: whatever it holds, it names that one resource, and a plain id
    /// goes as it is.
    #[tokio::test]
    async fn an_id_a_service_minted_stays_inside_its_path_segment() {
        let (base_url, mut seen) = recording().await;
        let d = Downstream::new(&DownstreamConfig {
            base_url,
            ca_certs: Vec::new(),
            timeout: Duration::from_secs(10),
            max_attempts: 1,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        });
        d.void_label(&LabelId::from("lbl_1/../../payments/charges?x=1 é"))
            .await
            .unwrap();
        assert_eq!(
            seen.recv().await.unwrap(),
            "POST /carrier/labels/lbl_1%2F..%2F..%2Fpayments%2Fcharges%3Fx%3D1%20%C3%A9/void HTTP/1.1"
        );
        d.release(
            &PartnerName::from("acme"),
            &OrderId::from("o-1"),
            &ReservationId::from("res-1.a~b_C"),
        )
        .await
        .unwrap();
        assert_eq!(
            seen.recv().await.unwrap(),
            "DELETE /inventory/reservations/res-1.a~b_C HTTP/1.1"
        );
    }
}
