//! waybill: a webhook ingestion, deduplication and idempotency gateway for
//! shipping integrations.
//!
//! The pure core does no I/O:
//! - [`signature`]: the signature schemes; raw bytes and headers in,
//!   `Verified` or a reason out.
//! - [`canonical`]: RFC 8785 canonical JSON, with exact integers.
//! - [`json`]: strict JSON, refusing an object that repeats a name.
//! - [`identity`]: what a delivery is (event id, type, content hash, whether
//!   it is dispatched), or which fields are wrong.
//!
//! Around it, the edges:
//! - [`config`]: the TOML file, secret references, validation of every key.
//! - [`ratelimit`]: per-source limits on governor.
//! - [`store`]: the only module that knows sled; group commit and retention.
//! - [`ingest`]: the webhook use case, tying the above together.
//! - [`http`]: the hyper server, the bounds on what a client can take, and the only place that
//!   chooses status codes (`http::error`).
//! - [`app`]: `run(config, listener, shutdown)`, shared by binary and tests.
//! - [`cli`]: the subcommands other than `serve`.
//! - [`health`]: supervision of the background components (crash-only).
//! - [`simulator`]: `waybill simulate`, the fake carrier, payments and
//!   inventory services, with fault injection and a ledger.
//! - [`telemetry`]: logging set-up and every metric name.

pub mod admin_client;
pub mod alloc;
pub mod app;
pub mod canonical;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod downstream;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod identity;
pub mod ingest;
pub mod json;
pub mod mapping;
pub mod partners;
pub mod ratelimit;
pub mod service;
pub mod signature;
pub mod simulator;
pub mod store;
pub mod telemetry;
