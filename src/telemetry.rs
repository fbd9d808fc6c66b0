//! Logging set-up and every metric name in one place.
//!
//! The Prometheus recorder is process-global: it is installed once, and
//! every server started in the same process (the API tests start many)
//! shares it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Constants and `ALL`, the list of every one of them in order: a name
/// added is listed by construction.
macro_rules! names {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        $($(#[$doc])* pub const $name: &str = $value;)*
        /// Every name above (the dashboard, the alert rules and the series
        /// exported at 0 are checked against it).
        pub const ALL: &[&str] = &[$($name),*];
    };
}

pub mod metric {
    names! {
        HTTP_REQUESTS = "waybill_http_requests_total",
        HTTP_DURATION = "waybill_http_request_duration_seconds",
        HTTP_IN_FLIGHT = "waybill_http_requests_in_flight",
        WEBHOOKS = "waybill_webhooks_total",
        INBOX_PENDING = "waybill_inbox_pending",
        DISPATCH = "waybill_dispatch_total",
        IDEMPOTENCY = "waybill_idempotency_total",
        DOWNSTREAM = "waybill_downstream_requests_total",
        CIRCUIT_OPEN = "waybill_circuit_open",
        STORE_GROUP_SIZE = "waybill_store_commit_group_size",
        /// The store's durable flush, under the name operators know.
        STORE_FLUSH_SECONDS = "waybill_flush_duration_seconds",
        INBOX_OLDEST_AGE = "waybill_inbox_oldest_age_seconds",
        SOURCE_LAST_ACCEPTED = "waybill_source_last_accepted_timestamp_seconds",
        BUILD_INFO = "waybill_build_info",
        SWEPT = "waybill_retention_swept_total",
        COMPONENT_UP = "waybill_component_up",
        STORE_SIZE = "waybill_store_size_bytes",
        CONFIG_RELOADS = "waybill_config_reloads_total",
        PARKED = "waybill_parked_events",
        DEAD = "waybill_dead_events",
        VOIDS_OWED = "waybill_label_voids_owed",
        RECONCILE = "waybill_reconcile_discrepancies",
        STORE_FREE = "waybill_store_free_bytes",
        UNREADABLE = "waybill_store_unreadable_records_total",
    }
}

/// Webhook outcomes, the label values of `waybill_webhooks_total`.
pub mod outcome {
    names! {
        ACCEPTED = "accepted",
        DUPLICATE = "duplicate",
        DUPLICATE_CONFLICT = "duplicate_conflict",
        INVALID_SIGNATURE = "invalid_signature",
        STALE_TIMESTAMP = "stale_timestamp",
        INVALID_PAYLOAD = "invalid_payload",
        RATE_LIMITED = "rate_limited",
        TOO_LARGE = "too_large",
        UNAVAILABLE = "unavailable",
    }
}

/// The series of every counter family whose labels come from the config
/// or a fixed set, at 0 (an existing series keeps its value): a counter
/// that appeared only at its first increment would show `increase` and
/// `rate` nothing, and its first occurrence would page nobody. Called at
/// start and after each reload, for sources a reload adds; the HTTP layer
/// and the downstream client export their own families the same way
/// (`app::export_from_zero` calls all three).
pub fn export_from_zero(sources: &[crate::config::SourceConfig]) {
    for result in ["ok", "rejected"] {
        metrics::counter!(metric::CONFIG_RELOADS, "result" => result).increment(0);
    }
    for source in sources {
        for o in outcome::ALL {
            metrics::counter!(metric::WEBHOOKS, "source" => source.name.clone(), "outcome" => *o)
                .increment(0);
        }
        if source.kind != crate::config::SourceKind::StoreOnly {
            for o in crate::store::DispatchOutcome::COUNTED {
                metrics::counter!(metric::DISPATCH, "source" => source.name.clone(), "outcome" => o.as_str())
                    .increment(0);
            }
        }
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether the Prometheus recorder is installed: before, the `metrics`
/// macros hand out handles that record nothing, and a handle kept from
/// then would stay one.
pub fn recorder_installed() -> bool {
    HANDLE.get().is_some()
}

/// Installs the Prometheus recorder on first call; later calls return the
/// same handle.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(metric::HTTP_DURATION.into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(metric::STORE_FLUSH_SECONDS.into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(metric::STORE_GROUP_SIZE.into()),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                            2048.0,
                        ],
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            metrics::describe_counter!(
                metric::HTTP_REQUESTS,
                "HTTP requests by route template, method and status"
            );
            metrics::describe_histogram!(
                metric::HTTP_DURATION,
                "HTTP request latency by route template"
            );
            metrics::describe_counter!(
                metric::WEBHOOKS,
                "Webhook deliveries by source and outcome"
            );
            metrics::describe_gauge!(
                metric::INBOX_PENDING,
                "Accepted events waiting for the state machine"
            );
            metrics::describe_histogram!(metric::STORE_GROUP_SIZE, "Requests per group commit");
            metrics::describe_histogram!(
                metric::STORE_FLUSH_SECONDS,
                "Time of one store flush (fsync)"
            );
            metrics::describe_counter!(metric::SWEPT, "Events forgotten after their retention");
            metrics::describe_gauge!(
                metric::INBOX_OLDEST_AGE,
                "Age of the oldest event waiting for the state machine, 0 when none waits"
            );
            metrics::describe_gauge!(
                metric::SOURCE_LAST_ACCEPTED,
                "When each source last had an event accepted (unix seconds)"
            );
            metrics::describe_gauge!(
                metric::PARKED,
                "Events parked until their shipment or order exists"
            );
            metrics::describe_gauge!(
                metric::DEAD,
                "Events in the dead letter now, waiting for an operator"
            );
            metrics::describe_gauge!(
                metric::RECONCILE,
                "Discrepancies the last background reconciliation found, by kind"
            );
            metrics::describe_gauge!(
                metric::VOIDS_OWED,
                "Label voids cancels owe and the carrier has not confirmed yet"
            );
            metrics::describe_gauge!(metric::STORE_SIZE, "Bytes the store takes on disk");
            metrics::describe_gauge!(
                metric::STORE_FREE,
                "Free bytes on the store's file system (below store.min_free_mb writes stop)"
            );
            metrics::describe_gauge!(
                metric::COMPONENT_UP,
                "1 while a background component runs and beats, else 0"
            );
            metrics::describe_counter!(
                metric::CONFIG_RELOADS,
                "Config reloads (SIGHUP) by result: ok or rejected"
            );
            metrics::describe_counter!(
                metric::UNREADABLE,
                "Stored records met that could not be read (corruption): each failed its operation"
            );
            // A counter of rare events is there from the start at 0: one
            // that appears at its first increment shows `increase` nothing,
            // and its first occurrence would page nobody.
            metrics::counter!(metric::UNREADABLE).absolute(0);
            metrics::describe_gauge!(
                metric::HTTP_IN_FLIGHT,
                "HTTP requests being served now, counted once their body has arrived"
            );
            metrics::describe_counter!(
                metric::DISPATCH,
                "Events dispatched to the state machine, by source and outcome (parked and dead counted once, when an event becomes so)"
            );
            metrics::describe_counter!(
                metric::IDEMPOTENCY,
                "Idempotent /v1 writes by endpoint and outcome: executed, replayed, conflict, in_progress"
            );
            metrics::describe_counter!(
                metric::DOWNSTREAM,
                "Calls to the carrier, payments and inventory services, by service and outcome"
            );
            metrics::describe_gauge!(
                metric::CIRCUIT_OPEN,
                "1 while a downstream service's circuit breaker is open (calls refused), else 0"
            );
            process().describe();
            metrics::describe_gauge!(metric::BUILD_INFO, "1, labelled with the version");
            metrics::gauge!(metric::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// The process's own figures under their standard names
/// (`process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_cpu_seconds_total`, `process_threads`, ...), read from /proc.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Reads the process figures now: called before each scrape's render.
pub fn collect_process() {
    process().collect();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// One flat JSON object per line on stdout, or human-readable lines.
/// `RUST_LOG` overrides the default `info` filter.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
