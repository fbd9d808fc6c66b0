//! `run(config, listener, shutdown)`: open the store, start the background
//! work, serve until told to stop, drain, flush. The binary and the tests
//! call the same function; only the binary binds real ports and signals.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::clock::now_ms;
use crate::config::Config;
use crate::downstream::Downstream;
use crate::ingest::Ingest;
use crate::partners::Partners;
use crate::store::{Store, StoreError};
use crate::telemetry::{self, metric};

/// How often expired identities are looked for, and how many one pass forgets.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const SWEEP_BATCH: usize = 10_000;

pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub ingest: Ingest,
    pub partners: Partners,
    pub downstream: Downstream,
    pub metrics: PrometheusHandle,
    pub draining: AtomicBool,
}

impl App {
    pub fn is_ready(&self) -> bool {
        self.store.is_ready() && !self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl App {
    /// Opens the store and starts the state machine, which first applies
    /// whatever the inbox still holds.
    pub async fn start(config: Config) -> Result<Arc<App>, StoreError> {
        let metrics = telemetry::metrics_handle();
        let store_cfg = config.store.clone();
        let sources = config.sources.clone();
        let store = tokio::task::spawn_blocking(move || {
            let store = Store::open(&store_cfg)?;
            store.start_dispatcher(sources)?;
            Ok::<_, StoreError>(store)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        let store = Arc::new(store);
        let ingest = Ingest::new(&config, store.clone());
        let partners = Partners::new(&config.partners);
        let downstream = Downstream::new(&config.downstream);
        Ok(Arc::new(App {
            config: Arc::new(config),
            store,
            ingest,
            partners,
            downstream,
            metrics,
            draining: AtomicBool::new(false),
        }))
    }

    /// Serves until `shutdown` resolves, drains, and closes the store.
    pub async fn serve(
        self: Arc<App>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StoreError> {
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            inbox_pending = self.store.inbox_pending(),
            "waybill serving"
        );
        let sweeper = tokio::spawn(sweep_loop(self.store.clone()));
        let upkeep = tokio::spawn(metrics_upkeep(self.metrics.clone()));
        crate::http::serve(listener, self.clone(), shutdown).await;
        sweeper.abort();
        upkeep.abort();
        // Wait for them to be gone: they hold the store.
        let _ = sweeper.await;
        let _ = upkeep.await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        tracing::info!("store flushed; stopped");
        Ok(())
    }
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    App::start(config).await?.serve(listener, shutdown).await
}

/// The Prometheus recorder keeps every histogram sample until it is folded
/// into the buckets, which otherwise happens only on a scrape: without this
/// an unscraped gateway would grow by a few bytes per request, forever.
async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

async fn sweep_loop(store: Arc<Store>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        loop {
            match store.sweep_expired(now_ms(), SWEEP_BATCH).await {
                Ok(0) => break,
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
        loop {
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
}
