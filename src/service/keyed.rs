//! The life of an idempotent write (GUARANTEES.md: "Idempotency keys"): claim the key, or say
//! what the request gets instead (the stored answer, a conflict, "in
//! progress"); run the operation; store its final answer with its effect,
//! or a final refusal on its own, or give the key back so the retry runs.
//! One place for every `/v1` write.

use std::time::Duration;

use super::{Ports, Refusal};
use crate::clock::now_ms;
use crate::domain::ids::PartnerName;
pub use crate::idempotency::StoredAnswer;
use crate::idempotency::{self, Decision, Fingerprint, IdempotencyKey};
use crate::store::{Claim, Completion};

/// One idempotent write: whose, under which key, for which request.
#[derive(Debug, Clone)]
pub struct Keyed {
    pub partner: PartnerName,
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    /// How long a claim holds the key before another request may resume it.
    pub lease: Duration,
    /// How long the final answer is kept.
    pub retention: Duration,
}

/// What an idempotent write answers.
#[derive(Debug)]
pub enum Answered<T> {
    /// It ran now: what it did (its answer was stored with it).
    Ran(T),
    /// The key was answered before: that answer.
    Replayed(StoredAnswer),
}

impl Keyed {
    /// The record that stores `answer` under this key, for `retention`.
    pub fn completion(&self, answer: StoredAnswer) -> Completion {
        Completion {
            partner: self.partner.clone(),
            key: self.key.clone(),
            record: idempotency::Record::Done {
                fingerprint: self.fingerprint,
                status: answer.status,
                body: answer.body,
                expires_at_ms: self.expires_at_ms(),
            },
        }
    }

    /// This write's claim on its key.
    pub fn claim(&self) -> Claim {
        Claim {
            partner: self.partner.clone(),
            key: self.key.clone(),
            fingerprint: self.fingerprint,
            lease: self.lease,
        }
    }

    pub fn expires_at_ms(&self) -> u64 {
        now_ms().saturating_add(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Runs `operation` under `keyed`'s key, once: a replay answers the stored
/// answer; a conflict or a claim in progress is refused. A refusal that is
/// final is stored under the key, worded by `refused`; any other gives the
/// key back, so the retry runs (and resumes) the operation.
pub async fn run<T>(
    ports: Ports<'_>,
    keyed: &Keyed,
    refused: &(dyn Fn(&Refusal) -> StoredAnswer + Sync),
    operation: impl AsyncFnOnce() -> Result<T, Refusal>,
) -> Result<Answered<T>, Refusal> {
    let decision = ports.keys.claim(&keyed.claim()).await?;
    match decision {
        Decision::Replay { status, body } => {
            return Ok(Answered::Replayed(StoredAnswer { status, body }));
        }
        Decision::Conflict => return Err(Refusal::KeyConflict),
        Decision::InProgress => return Err(Refusal::KeyInProgress),
        Decision::Run => {}
    }
    match operation().await {
        Ok(done) => Ok(Answered::Ran(done)),
        Err(refusal) if refusal.is_final() => {
            let stored = ports.keys.finish(keyed.completion(refused(&refusal))).await;
            if let Err(e) = stored {
                ports.keys.release(&keyed.partner, &keyed.key).await;
                return Err(e.into());
            }
            Err(refusal)
        }
        Err(refusal) => {
            ports.keys.release(&keyed.partner, &keyed.key).await;
            Err(refusal)
        }
    }
}
