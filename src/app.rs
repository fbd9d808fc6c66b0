//! `run(config, listener, shutdown)`: open the store, start the background
//! work, serve until told to stop, drain, flush. The binary and the tests
//! call the same function; only the binary binds real ports and signals.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::clock::now_ms;
use crate::config::{Config, ConfigErrors};
use crate::health::{Component, Health};
use crate::http::Stop;
pub use crate::live::Live;
use crate::store::{Store, StoreError};
use crate::telemetry::{self, metric};

/// The housekeeping task's tick: it wakes idle components so they beat,
/// and publishes their health.
const TICK: Duration = Duration::from_secs(1);
/// Every how many ticks the metrics upkeep runs.
const UPKEEP_EVERY: u32 = 5;
/// Retention sweeps in small slices: each slice is one message to the
/// writer, so intake's group commits run between them, and one sweep
/// takes at most `SWEEP_SLICES` of them, so a burst of expiries is spread
/// over sweeps rather than stalling intake. A slice of 256 holds the
/// writer for a few milliseconds; one of 2,000 held it long enough to be
/// a webhook's tail latency.
const SWEEP_BATCH: usize = 256;
const SWEEP_SLICES: usize = 200;
/// How soon the event sweep looks again after one that forgot something.
/// Under steady expiry a sweep every 20 ms takes one slice of a couple of
/// hundred events; one every second took thousands back to back, and
/// intake's group commits queued behind them: with a 10 s retention at
/// 6,300/s intake's p99 was about four times longer (docs/BENCHMARKS.md,
/// "Retention cadence"). While nothing expires the delay doubles up to
/// `TICK`, so an idle gateway does not wake for it.
const SWEEP_SOON: Duration = Duration::from_millis(20);

/// The delay before the next event sweep, after one that waited `last`
/// and forgot `swept` events.
fn next_sweep_delay(last: Duration, swept: usize) -> Duration {
    if swept > 0 {
        SWEEP_SOON
    } else {
        last.saturating_mul(2).clamp(SWEEP_SOON, TICK)
    }
}
/// Orders one fulfilment round tries at most, and how long a round may
/// take (each try may wait for the carrier) before it counts as stuck.
const FULFIL_BATCH: usize = 100;
const FULFILMENT_STALL: Duration = Duration::from_secs(600);
/// Housekeeping may go this long without a beat before it counts as stuck.
const HOUSEKEEPING_STALL: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {} component stopped", .0.as_str())]
    ComponentFailed(Component),
}

/// How a reload went (GUARANTEES.md: "Reload").
#[derive(Debug)]
pub enum Reload {
    /// In force; the keys listed changed but take a restart, and were kept.
    Applied { needs_restart: Vec<&'static str> },
    /// The file was refused as a whole; the running config is kept.
    Rejected(ConfigErrors),
}

/// The process: the HTTP layer's state, and the lifecycle around it.
pub type App = crate::http::State;

impl App {
    /// Puts a freshly loaded config in force for every request that starts
    /// from now on, or refuses it whole (GUARANTEES.md: "Reload"). Sources, secrets,
    /// status maps, partners, keys, rate limits, the admin token and the
    /// downstream change together; `[server]` and `[store]` keep their
    /// running values, and the keys that differ are reported.
    pub fn reload(&self, loaded: Result<Config, ConfigErrors>) -> Reload {
        let mut config = match loaded {
            Ok(config) => config,
            Err(errors) => {
                for issue in &errors.0 {
                    tracing::error!(key = %issue.key, why = %issue.why, "invalid config; reload refused, running config kept");
                }
                metrics::counter!(metric::CONFIG_RELOADS, "result" => "rejected").increment(1);
                return Reload::Rejected(errors);
            }
        };
        let old = self.live();
        let needs_restart = old.config.needs_restart(&config);
        for key in &needs_restart {
            tracing::warn!(
                key,
                "changed in the config file; takes effect only after a restart"
            );
        }
        config.server = self.server.clone();
        config.store = self.store_config.clone();
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let live = Live::build(config, &self.store, Some(&old));
        self.store.set_sources(live.config.sources.clone());
        export_from_zero(&live.config.sources);
        tracing::info!(
            sources = live.config.sources.len(),
            partners = live.config.partners.len(),
            "config reloaded"
        );
        self.set_live(live);
        metrics::counter!(metric::CONFIG_RELOADS, "result" => "ok").increment(1);
        Reload::Applied { needs_restart }
    }
}
impl App {
    /// Opens the store and starts the state machine, which first applies
    /// whatever the inbox still holds.
    pub async fn start(config: Config) -> Result<Arc<App>, StoreError> {
        let metrics = telemetry::metrics_handle();
        export_from_zero(&config.sources);
        let health = Health::new();
        let store =
            crate::store::open(&config.store, health.clone(), config.sources.clone()).await?;
        let live = Live::build(config, &store, None);
        Ok(Arc::new(App::new(live, store, metrics, health)))
    }

    /// Serves until `shutdown` resolves or a background component fails,
    /// drains, and closes the store. A component failure is an error, so
    /// the process exits non-zero and its supervisor restarts it.
    pub async fn serve(
        self: Arc<App>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.serve_with_ops(listener, None, shutdown).await
    }

    /// `serve`, with the operational routes also on `ops`
    /// (`server.ops_listen`), outside the public connection cap.
    pub async fn serve_with_ops(
        self: Arc<App>,
        listener: TcpListener,
        ops: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let inbox_pending = self.store.inbox_pending().await.unwrap_or(-1);
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            ops_listen = ops.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
            inbox_pending,
            "waybill serving"
        );
        let housekeeping = tokio::spawn(housekeeping(self.clone()));
        let fulfilment = tokio::spawn(fulfilment(self.clone()));
        let reconciliation = self
            .live()
            .config
            .reconcile_every
            .map(|every| tokio::spawn(reconciliation(self.clone(), every)));
        let health = self.health.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown => Stop::Requested,
                _ = health.failed() => Stop::Failed,
            }
        };
        let stopped = crate::http::serve(listener, ops, self.clone(), stop).await;
        self.health.stopping();
        housekeeping.abort();
        fulfilment.abort();
        if let Some(r) = &reconciliation {
            r.abort();
        }
        // Wait for them to be gone: they hold the store.
        let _ = housekeeping.await;
        let _ = fulfilment.await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        match (stopped, self.health.failure()) {
            (Stop::Failed, Some(c)) => {
                tracing::error!(
                    component = c.as_str(),
                    "store flushed; exiting with an error"
                );
                Err(ServeError::ComponentFailed(c))
            }
            _ => {
                tracing::info!("store flushed; stopped");
                Ok(())
            }
        }
    }
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    App::start(config).await?.serve(listener, shutdown).await
}

/// The periodic work, on one task: wake idle components so their
/// heartbeats show they are alive, publish component health, fold the
/// Prometheus histograms (the recorder otherwise keeps every sample until
/// a scrape: an unscraped gateway would grow by a few bytes per request,
/// forever), and sweep what retention let go of: stored answers every
/// tick, events at their own cadence (`next_sweep_delay`).
async fn housekeeping(app: Arc<App>) {
    let alive = app.health.enter(Component::Retention, HOUSEKEEPING_STALL);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep_delay = SWEEP_SOON;
    let sweep_at = tokio::time::sleep(SWEEP_SOON);
    tokio::pin!(sweep_at);
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut sweep_at => {
                alive.beat();
                let swept = sweep_events(app.store.as_ref(), &alive).await;
                sweep_delay = next_sweep_delay(sweep_delay, swept);
                sweep_at.as_mut().reset(tokio::time::Instant::now() + sweep_delay);
                continue;
            }
        }
        alive.beat();
        app.store.ping();
        app.health.publish_all();
        if n.is_multiple_of(UPKEEP_EVERY) {
            app.metrics.run_upkeep();
            let store = app.store.clone();
            if let Ok((size, free)) =
                tokio::task::spawn_blocking(move || (store.size_bytes(), store.free_bytes())).await
            {
                metrics::gauge!(metric::STORE_SIZE).set(size as f64);
                if let Some(free) = free {
                    metrics::gauge!(metric::STORE_FREE).set(free as f64);
                }
            }
        }
        sweep_idempotency(app.store.as_ref(), &alive).await;
        n = n.wrapping_add(1);
    }
}

/// Background fulfilment: every tick, the paid orders whose label is due for
/// another try (GUARANTEES.md: "Orders follow their shipment"), and the
/// label voids cancels owe that are due (GUARANTEES.md: "Labels are voided,
/// never waited on"). Both queues are in the store, so they survive
/// restarts.
async fn fulfilment(app: Arc<App>) {
    let alive = app.health.enter(Component::Fulfilment, FULFILMENT_STALL);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        alive.beat();
        let live = app.live();
        if let Err(e) =
            crate::service::orders::fulfil_due(app.ports(&live), now_ms(), FULFIL_BATCH).await
        {
            tracing::warn!(error = %e, "background fulfilment failed; trying again");
        }
        if let Err(e) =
            crate::service::shipments::settle_owed_voids(app.ports(&live), now_ms(), FULFIL_BATCH)
                .await
        {
            tracing::warn!(error = %e, "settling owed label voids failed; trying again");
        }
    }
}

/// The background reconciliation (GUARANTEES.md: "Books that balance"):
/// every `every`, from start, the services' books against the store's
/// records. The counts by kind go to `waybill_reconcile_discrepancies`,
/// each discrepancy to a WARN line; nothing is repaired (`waybill
/// reconcile --fix` is the operator's).
async fn reconciliation(app: Arc<App>, every: Duration) {
    use crate::service::reconcile::{Kind, reconcile};
    for kind in Kind::ALL {
        metrics::gauge!(metric::RECONCILE, "kind" => kind.as_str()).set(0.0);
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = app.live();
        match reconcile(app.ports(&live), live.downstream.as_ref(), None, false).await {
            Ok(report) => {
                for (kind, n) in report.counts() {
                    metrics::gauge!(metric::RECONCILE, "kind" => kind.as_str()).set(n as f64);
                }
                for d in &report.discrepancies {
                    let line = serde_json::to_string(d).unwrap_or_default();
                    tracing::warn!(discrepancy = %line, "the books do not balance");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation failed; trying again at the next interval");
            }
        }
    }
}

/// Forgets the events whose retention has ended, a slice at a time;
/// returns how many.
async fn sweep_events(store: &dyn Store, alive: &crate::health::Alive) -> usize {
    let mut total = 0;
    for _ in 0..SWEEP_SLICES {
        alive.beat();
        match store.sweep_expired(now_ms(), SWEEP_BATCH).await {
            Ok(n) => {
                metrics::counter!(metric::SWEPT).increment(n as u64);
                total += n;
                if n < SWEEP_BATCH {
                    break;
                }
                tracing::debug!(swept = n, "retention sweep");
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed");
                break;
            }
        }
    }
    total
}

async fn sweep_idempotency(store: &dyn Store, alive: &crate::health::Alive) {
    for _ in 0..SWEEP_SLICES {
        alive.beat();
        match store.sweep_idempotency(now_ms(), SWEEP_BATCH).await {
            Ok(0) => break,
            Ok(n) => tracing::debug!(swept = n, "idempotency retention sweep"),
            Err(e) => {
                tracing::warn!(error = %e, "idempotency retention sweep failed");
                break;
            }
        }
    }
}

/// Every counter family whose labels come from the config or a fixed set,
/// at 0 (`telemetry::export_from_zero`), wherever its counts are kept.
fn export_from_zero(sources: &[crate::config::SourceConfig]) {
    telemetry::export_from_zero(sources);
    crate::http::export_from_zero();
    crate::downstream::export_from_zero();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_sweep_comes_soon_while_events_expire_and_backs_off_while_none_do() {
        // Busy: a sweep that forgot something is followed soon, whatever
        // the delay before it.
        assert_eq!(next_sweep_delay(SWEEP_SOON, 1), SWEEP_SOON);
        assert_eq!(next_sweep_delay(TICK, 5_000), SWEEP_SOON);
        // Idle: the delay doubles, up to the housekeeping tick, and stays.
        let mut delay = SWEEP_SOON;
        let mut delays = Vec::new();
        for _ in 0..8 {
            delay = next_sweep_delay(delay, 0);
            delays.push(delay.as_millis());
        }
        assert_eq!(delays, [40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // And back to busy at once when events expire again.
        assert_eq!(next_sweep_delay(delay, 3), SWEEP_SOON);
    }
}
