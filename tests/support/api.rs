//! The integrator API as one partner calls it: a method per operation,
//! each answering the raw response for the test to inspect.

use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::Value;

use super::{Client, Resp};

pub struct Api {
    pub addr: SocketAddr,
    pub api_key: String,
}

impl Api {
    /// Partner `acme`, with its key `acme-key`.
    pub fn acme(addr: SocketAddr) -> Api {
        Api::with_key(addr, "acme-key")
    }

    pub fn with_key(addr: SocketAddr, api_key: &str) -> Api {
        Api {
            addr,
            api_key: api_key.into(),
        }
    }

    /// The headers of a write under idempotency key `key`.
    pub fn write_headers(&self, key: &str) -> Vec<(String, String)> {
        vec![
            ("Authorization".into(), format!("Bearer {}", self.api_key)),
            ("Content-Type".into(), "application/json".into()),
            ("Idempotency-Key".into(), key.into()),
        ]
    }

    async fn write(&self, path: &str, key: &str, body: impl Into<Bytes>) -> Resp {
        Client::new(self.addr)
            .send("POST", path, &self.write_headers(key), body)
            .await
    }

    async fn read(&self, path: &str) -> Resp {
        let auth = [("Authorization".into(), format!("Bearer {}", self.api_key))];
        Client::new(self.addr)
            .send("GET", path, &auth, Bytes::new())
            .await
    }

    pub async fn create_shipment(&self, key: &str, body: &Value) -> Resp {
        self.write("/v1/shipments", key, body.to_string()).await
    }

    /// Buys shipment `id`'s label; `body` as sent (`{"format": ...}`).
    pub async fn buy_label(&self, id: &str, key: &str, body: &str) -> Resp {
        self.write(&format!("/v1/shipments/{id}/label"), key, body.to_string())
            .await
    }

    pub async fn cancel(&self, id: &str, key: &str) -> Resp {
        self.write(&format!("/v1/shipments/{id}/cancel"), key, "")
            .await
    }

    pub async fn place_order(&self, key: &str, body: &Value) -> Resp {
        self.write("/v1/orders", key, body.to_string()).await
    }

    pub async fn shipment(&self, id: &str) -> Resp {
        self.read(&format!("/v1/shipments/{id}")).await
    }

    pub async fn order(&self, id: &str) -> Resp {
        self.read(&format!("/v1/orders/{id}")).await
    }
}
