//! `run(config, listener, shutdown)`: open the store, start the background
//! work, serve until told to stop, drain, flush. The binary and the tests
//! call the same function; only the binary binds real ports and signals.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::clock::now_ms;
use crate::config::{Config, ConfigErrors, ServerConfig, StoreConfig};
use crate::downstream::Downstream;
use crate::health::{Component, Health};
use crate::http::Stop;
use crate::ingest::Ingest;
use crate::partners::Partners;
use crate::store::{Store, StoreError};
use crate::telemetry::{self, metric};

/// The housekeeping task's tick: it wakes idle components so they beat,
/// and publishes their health.
const TICK: Duration = Duration::from_secs(1);
/// Every how many ticks the metrics upkeep runs; the retention sweeps run
/// every tick.
const UPKEEP_EVERY: u32 = 5;
/// Retention sweeps in small slices: each slice is one message to the
/// writer, so intake's group commits run between them, and a tick takes
/// at most `SWEEP_SLICES` of them (51,200 expiries a second), so a burst
/// of expiries is spread over ticks rather than stalling intake. A slice
/// of 256 holds the writer for a few milliseconds; one of 2,000 held it
/// long enough to be a webhook's tail latency.
const SWEEP_BATCH: usize = 256;
const SWEEP_SLICES: usize = 200;
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

/// What a reload replaces as one: the config and everything built from
/// it that requests use. A request takes the current one as it starts and
/// keeps it to its end, so it runs under one config from first check to
/// answer, and requests in flight during a reload finish under the old.
pub struct Live {
    /// The running config. Its `[server]` and `[store]` are always those
    /// the process started with: they take a restart to change.
    pub config: Config,
    pub ingest: Ingest,
    pub partners: Partners,
    /// Shared with the previous `Live` when `[downstream]` is unchanged,
    /// so its breakers keep their state across a reload.
    pub downstream: Arc<Downstream>,
}

/// How a reload went (contract 10.5).
#[derive(Debug)]
pub enum Reload {
    /// In force; the keys listed changed but take a restart, and were kept.
    Applied { needs_restart: Vec<&'static str> },
    /// The file was refused as a whole; the running config is kept.
    Rejected(ConfigErrors),
}

pub struct App {
    live: ArcSwap<Live>,
    /// `[server]` and `[store]` as the process started with them; a reload
    /// keeps them (`Config::needs_restart`).
    pub server: ServerConfig,
    pub store_config: StoreConfig,
    pub store: Arc<dyn Store>,
    pub metrics: PrometheusHandle,
    pub health: Arc<Health>,
    /// Requests past their body and not yet answered (`max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Bodies read and not yet verified (`max_unverified_mb`).
    pub unverified: crate::http::Unverified,
    /// Failed admin authentications per client.
    pub admin_failures: crate::http::AuthFailures,
    pub draining: AtomicBool,
}

impl App {
    /// The config in force now, with what is built from it.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// What the use cases work with, under the config `live`.
    pub fn ports<'a>(&'a self, live: &'a Live) -> crate::service::Ports<'a> {
        crate::service::Ports {
            keys: self.store.as_ref(),
            shipments: self.store.as_ref(),
            orders: self.store.as_ref(),
            carrier: live.downstream.as_ref(),
            payments: live.downstream.as_ref(),
            inventory: live.downstream.as_ref(),
        }
    }

    /// Puts a freshly loaded config in force for every request that starts
    /// from now on, or refuses it whole (contract 10.5). Sources, secrets,
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
        tracing::info!(
            sources = live.config.sources.len(),
            partners = live.config.partners.len(),
            "config reloaded"
        );
        self.live.store(Arc::new(live));
        metrics::counter!(metric::CONFIG_RELOADS, "result" => "ok").increment(1);
        Reload::Applied { needs_restart }
    }

    pub fn is_ready(&self) -> bool {
        self.store.is_ready()
            && self.health.is_ready()
            && !self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl App {
    /// Opens the store and starts the state machine, which first applies
    /// whatever the inbox still holds.
    pub async fn start(config: Config) -> Result<Arc<App>, StoreError> {
        let metrics = telemetry::metrics_handle();
        let health = Health::new();
        let store =
            crate::store::open(&config.store, health.clone(), config.sources.clone()).await?;
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.server.max_in_flight));
        let unverified = crate::http::Unverified::new(config.server.max_unverified_bytes);
        let live = Live::build(config, &store, None);
        Ok(Arc::new(App {
            server: live.config.server.clone(),
            store_config: live.config.store.clone(),
            live: ArcSwap::from_pointee(live),
            store,
            metrics,
            health,
            in_flight,
            unverified,
            admin_failures: Default::default(),
            draining: AtomicBool::new(false),
        }))
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

impl Live {
    /// Builds what requests use from `config`; what `previous` built is
    /// kept where its config is unchanged (limiters, breakers).
    fn build(config: Config, store: &Arc<dyn Store>, previous: Option<&Live>) -> Live {
        let ingest = Ingest::new(&config, store.clone(), previous.map(|p| &p.ingest));
        let partners = Partners::new(&config.partners, previous.map(|p| &p.partners));
        let downstream = match previous {
            Some(p) if p.config.downstream == config.downstream => p.downstream.clone(),
            _ => Arc::new(Downstream::new(&config.downstream)),
        };
        Live {
            config,
            ingest,
            partners,
            downstream,
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
/// forever), and sweep what retention let go of.
async fn housekeeping(app: Arc<App>) {
    let alive = app.health.enter(Component::Retention, HOUSEKEEPING_STALL);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u32.. {
        tick.tick().await;
        alive.beat();
        app.store.ping();
        app.health.publish_all();
        if n % UPKEEP_EVERY == 0 {
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
        sweep(app.store.as_ref(), &alive).await;
    }
}

/// Background fulfilment: every tick, the paid orders whose label is due
/// for another try (contract 9.6). The queue is in the store, so it
/// survives restarts.
async fn fulfilment(app: Arc<App>) {
    let alive = app.health.enter(Component::Fulfilment, FULFILMENT_STALL);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        alive.beat();
        if let Err(e) =
            crate::service::orders::fulfil_due(app.ports(&app.live()), now_ms(), FULFIL_BATCH).await
        {
            tracing::warn!(error = %e, "background fulfilment failed; trying again");
        }
    }
}

async fn sweep(store: &dyn Store, alive: &crate::health::Alive) {
    for _ in 0..SWEEP_SLICES {
        alive.beat();
        match store.sweep_expired(now_ms(), SWEEP_BATCH).await {
            Ok(n) if n < SWEEP_BATCH => {
                metrics::counter!(metric::SWEPT).increment(n as u64);
                break;
            }
            Ok(n) => {
                metrics::counter!(metric::SWEPT).increment(n as u64);
                tracing::debug!(swept = n, "retention sweep");
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed");
                break;
            }
        }
    }
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
