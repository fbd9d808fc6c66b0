//! The operator's use cases on stored events (GUARANTEES.md: "Operations",
//! "Admin in bulk"): search, show one, redeliver one, redeliver every parked or
//! dead event that matches. Searches run one at a time and read a bounded slice
//! of the index per call; a bulk redelivery pages through its matches, then
//! keeps a bounded number of redeliveries in flight and tallies what they did.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Refusal;
use crate::domain::ids::ShipmentId;
use crate::store::{
    Dispatch, EventFilter, Events, OutcomeRecord, Search, ShipmentRecord, Shipments, StateError,
    StoreError, StoredEvent,
};

/// Index entries one search reads at most: a search that matches nothing
/// on a large store ends after this many, saying it is incomplete.
pub const MAX_SCAN: usize = 100_000;

/// Redeliveries queued to dispatch at once: the sled state machine serves
/// what waits as one round with one flush, so a batch costs a few
/// flushes, not one per event.
const BULK_IN_FLIGHT: usize = 64;

/// Searches run one at a time: on two cores, a second concurrent scan
/// would only take the other core from intake.
static SEARCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Waits for the turn to search; the semaphore is never closed.
async fn search_turn() -> tokio::sync::SemaphorePermit<'static> {
    match SEARCHES.acquire().await {
        Ok(turn) => turn,
        Err(_) => std::future::pending().await,
    }
}

/// One page of the events that match, newest first, read in turn.
pub async fn search(
    events: &dyn Events,
    filter: &EventFilter,
    limit: usize,
) -> Result<Search, Refusal> {
    let _turn = search_turn().await;
    Ok(events.search(filter, limit, MAX_SCAN).await?)
}

/// An event with what dispatch did with it.
pub async fn show(
    events: &dyn Events,
    source: &str,
    event_id: &str,
) -> Result<(StoredEvent, Option<OutcomeRecord>), Refusal> {
    let event = events
        .event(source, event_id)
        .await?
        .ok_or(Refusal::NotFound("event"))?;
    let outcome = events.outcome(source, event_id).await?;
    Ok((event, outcome))
}

/// A shipment by id, whichever partner's: what an event applied to.
pub async fn shipment(
    shipments: &dyn Shipments,
    id: &ShipmentId,
) -> Result<ShipmentRecord, Refusal> {
    shipments
        .shipment(id)
        .await?
        .ok_or(Refusal::NotFound("shipment"))
}

/// Dispatches a parked or dead event again, with the config in force.
pub async fn redeliver(
    dispatch: &dyn Dispatch,
    source: &str,
    event_id: &str,
) -> Result<OutcomeRecord, Refusal> {
    dispatch
        .redeliver(source, event_id)
        .await
        .map_err(|e| match e {
            StateError::NotFound => Refusal::NotFound("event"),
            StateError::NotRedeliverable(why) => Refusal::NotRedeliverable(why),
            other => other.into(),
        })
}

/// What a bulk redelivery asks for.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// Which events; its outcome is parked or dead.
    pub filter: EventFilter,
    /// How many at most, newest first.
    pub limit: usize,
    /// Count the matches, redeliver nothing.
    pub dry_run: bool,
}

/// What a bulk redelivery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BulkReport {
    pub matched: usize,
    pub redelivered: u64,
    /// Redelivered or forgotten by someone else since the search.
    pub skipped: u64,
    /// The new outcomes, by name.
    pub outcomes: BTreeMap<&'static str, u64>,
}

/// Redelivers every event that matches `bulk`, up to its limit. A store
/// failure stops it (what was redelivered stays redelivered).
pub async fn redeliver_all(
    events: &dyn Events,
    dispatch: Arc<dyn Dispatch>,
    bulk: &Bulk,
) -> Result<BulkReport, Refusal> {
    let matched = matches(events, bulk).await?;
    let mut report = BulkReport {
        matched: matched.len(),
        ..BulkReport::default()
    };
    if bulk.dry_run {
        return Ok(report);
    }
    let mut running = tokio::task::JoinSet::new();
    let mut names = matched.into_iter();
    loop {
        while running.len() < BULK_IN_FLIGHT {
            let Some((source, id)) = names.next() else {
                break;
            };
            let dispatch = dispatch.clone();
            running.spawn(async move { dispatch.redeliver(&source, &id).await });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let done = match done {
            Ok(done) => done,
            // A redelivery that panicked is this request's panic.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StateError::Store(StoreError::Unavailable(e.to_string()))),
        };
        match done {
            Ok(out) => {
                report.redelivered += 1;
                *report.outcomes.entry(out.outcome.as_str()).or_default() += 1;
            }
            Err(StateError::NotFound | StateError::NotRedeliverable(_)) => report.skipped += 1,
            Err(e) => {
                tracing::warn!(error = %e, redelivered = report.redelivered, "bulk redelivery stopped");
                return Err(e.into());
            }
        }
    }
    tracing::info!(
        matched = report.matched,
        redelivered = report.redelivered,
        skipped = report.skipped,
        "bulk redelivery"
    );
    Ok(report)
}

/// The events a bulk redelivery works on, paged through in turn.
async fn matches(events: &dyn Events, bulk: &Bulk) -> Result<Vec<(String, String)>, Refusal> {
    let _turn = search_turn().await;
    let mut matched = Vec::new();
    let mut filter = bulk.filter.clone();
    loop {
        let want = bulk.limit.saturating_sub(matched.len());
        let found = events.search(&filter, want, MAX_SCAN).await?;
        matched.extend(
            found
                .events
                .into_iter()
                .map(|(ev, _)| (ev.source, ev.event_id)),
        );
        match found.next_before {
            Some(seq) if matched.len() < bulk.limit => filter.before_seq = Some(seq),
            _ => return Ok(matched),
        }
    }
}
