//! The config in force and what is built from it that requests use,
//! replaced as one by a reload.

use std::sync::Arc;

use crate::config::Config;
use crate::downstream::Downstream;
use crate::partners::Partners;
use crate::store::Store;
use crate::webhook::ingest::Ingest;

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

impl Live {
    /// Builds what requests use from `config`; what `previous` built is
    /// kept where its config is unchanged (limiters, breakers).
    pub fn build(config: Config, store: &Arc<dyn Store>, previous: Option<&Live>) -> Live {
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
