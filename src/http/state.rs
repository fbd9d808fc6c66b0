//! What the HTTP layer serves from: the config in force (swapped whole by
//! a reload), the store, the bounds on what clients hold, readiness. The
//! process (`app`) builds it and runs the background work around it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{ServerConfig, StoreConfig};
use crate::health::Health;
use crate::live::Live;
use crate::store::Store;

/// Built once per process; every request holds it for its duration.
pub struct State {
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
    pub unverified: super::Unverified,
    /// Failed admin authentications per client.
    pub admin_failures: super::AuthFailures,
    /// Webhook answers per minute, for the console.
    pub minutes: super::minutes::PerMinute,
    pub draining: AtomicBool,
}

impl State {
    /// The state of a process that serves `live` from `store`.
    pub fn new(
        live: Live,
        store: Arc<dyn Store>,
        metrics: PrometheusHandle,
        health: Arc<Health>,
    ) -> State {
        let server = live.config.server.clone();
        State {
            store_config: live.config.store.clone(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(server.max_in_flight)),
            unverified: super::Unverified::new(server.max_unverified_bytes),
            server,
            live: ArcSwap::from_pointee(live),
            store,
            metrics,
            health,
            admin_failures: Default::default(),
            minutes: Default::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// The config in force now, with what is built from it.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Puts `live` in force for every request that starts from now on.
    pub fn set_live(&self, live: Live) {
        self.live.store(Arc::new(live));
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

    /// Ready for traffic: the store answers, every background component
    /// beats, and the process is not draining.
    pub fn is_ready(&self) -> bool {
        self.store.is_ready()
            && self.health.is_ready()
            && !self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}
