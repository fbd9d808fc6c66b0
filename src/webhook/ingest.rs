//! The webhook use case: verify, rate-limit, examine, remember (GUARANTEES.md:
//! "Order of checks", from the signature on). Knows no HTTP status codes: it
//! answers with an `Outcome` or a `Refusal`, and `http::webhooks` maps those.
//! Verification is a step of its own (`Ingest::verify` gives a `Verified`,
//! which `Ingest::accept` takes), so the edge can let go of what it held for an
//! unverified body the moment the sender is known.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;

use crate::config::{Config, SourceConfig};
use crate::domain::field::FieldIssue;
use crate::ratelimit::{Limited, Limiter, Standing};
use crate::store::{IngestResult, Intake, NewEvent, StoreError};
use crate::webhook::identity;
use crate::webhook::signature::Rejection;

/// A source ready to take deliveries: its config, HMAC keys and limiter.
pub struct Source {
    pub config: SourceConfig,
    keys: Vec<Vec<u8>>,
    /// Shared with the source's previous incarnation when a reload left
    /// its limit alone, so a reload never hands a sender a fresh burst.
    limiter: Option<Arc<Limiter>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        event_id: String,
        received_at_ms: u64,
    },
    Duplicate {
        event_id: String,
        first_received_at_ms: u64,
        conflict: bool,
    },
}

#[derive(Debug)]
pub enum Refusal {
    Signature(Rejection),
    RateLimited(Limited),
    InvalidPayload(Vec<FieldIssue>),
    Unavailable(StoreError),
}

pub struct Ingest {
    sources: HashMap<String, Arc<Source>>,
    store: Arc<dyn Intake>,
}

impl Ingest {
    /// The sources of `config`; those of `previous` (the config being
    /// replaced by a reload) keep their limiter's state where their limit
    /// is unchanged.
    pub fn new(config: &Config, store: Arc<dyn Intake>, previous: Option<&Ingest>) -> Ingest {
        let sources = config
            .sources
            .iter()
            .map(|s| {
                let keys = s
                    .secrets
                    .iter()
                    .filter_map(|k| s.scheme.key_from_secret(k.expose()).ok())
                    .collect();
                let kept = previous
                    .and_then(|p| p.sources.get(&s.name))
                    .filter(|old| old.config.rate_limit == s.rate_limit)
                    .and_then(|old| old.limiter.clone());
                let source = Source {
                    config: s.clone(),
                    keys,
                    limiter: kept.or_else(|| s.rate_limit.map(|l| Arc::new(Limiter::new(l)))),
                };
                (s.name.clone(), Arc::new(source))
            })
            .collect();
        Ingest { sources, store }
    }

    pub fn source(&self, name: &str) -> Option<Arc<Source>> {
        self.sources.get(name).cloned()
    }

    /// Checks the signature of one delivery of `body` from `source`, whose
    /// size the caller has already bounded. Only a delivery that passes
    /// can be accepted.
    pub fn verify<'s>(
        &self,
        source: &'s Source,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Verified<'s>, Refusal> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let verified = source
            .config
            .scheme
            .verify(headers, &body, &source.keys, now.as_secs() as i64)
            .map_err(Refusal::Signature)?;
        Ok(Verified {
            source,
            event_id: verified.event_id,
            received_at_ms: now.as_millis() as u64,
            body,
        })
    }

    /// Rate-limits a verified delivery: where its source's limit stands
    /// (None without one). After the signature, so forged traffic never
    /// spends a sender's quota.
    pub fn limit(&self, delivery: &Verified<'_>) -> Result<Option<Standing>, Refusal> {
        delivery
            .source
            .limiter
            .as_ref()
            .map(|limiter| limiter.check().map_err(Refusal::RateLimited))
            .transpose()
    }

    /// Examines and remembers a verified delivery its limit let through.
    pub async fn accept(
        &self,
        delivery: Verified<'_>,
        headers: &HeaderMap,
    ) -> Result<Outcome, Refusal> {
        let Verified {
            source,
            event_id,
            received_at_ms,
            body,
        } = delivery;
        let examined =
            identity::examine(&source.config, event_id, &body).map_err(Refusal::InvalidPayload)?;
        let retention_ms = source.config.identity_retention().as_millis() as u64;
        let event = NewEvent {
            source: source.config.name.clone(),
            event_id: examined.event_id.clone(),
            received_at_ms,
            expires_at_ms: received_at_ms.saturating_add(retention_ms),
            content_hash: examined.content_hash,
            dispatch: examined.dispatch,
            event_type: examined.event_type,
            headers: stored_headers(source, headers),
            tracking_number: examined.tracking_number,
            order_id: examined.order_id,
            fields: examined.fields,
            body,
        };
        match self
            .store
            .ingest(event)
            .await
            .map_err(Refusal::Unavailable)?
        {
            IngestResult::Accepted { received_at_ms } => Ok(Outcome::Accepted {
                event_id: examined.event_id,
                received_at_ms,
            }),
            IngestResult::Duplicate {
                first_received_at_ms,
                conflict,
            } => Ok(Outcome::Duplicate {
                event_id: examined.event_id,
                first_received_at_ms,
                conflict,
            }),
        }
    }
}

/// A delivery whose signature verified, from `Ingest::verify`: the only
/// way to `Ingest::accept`, so unverified bytes never reach the store.
pub struct Verified<'s> {
    source: &'s Source,
    /// The id the verified headers carried, where the scheme has one.
    event_id: Option<String>,
    received_at_ms: u64,
    body: Bytes,
}

/// The headers kept with an event for the admin API: signature values and
/// credentials never reach the disk.
fn stored_headers(source: &Source, headers: &HeaderMap) -> Vec<(String, String)> {
    let redacted = source.config.scheme.signature_headers();
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            let value = if redacted.contains(&name) || name == "authorization" || name == "cookie" {
                "[redacted]".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.to_string(), value)
        })
        .collect()
}
