//! waybill: a webhook ingestion, deduplication and idempotency gateway for
//! shipping integrations. ARCHITECTURE.md draws the map; in short:
//!
//! The pure core does no I/O:
//! - [`domain`]: the shipment and order state machines, the requests that
//!   make them, their ids and labels.
//! - [`idempotency`]: idempotency keys, request fingerprints, what a known
//!   key gets.
//! - [`json`]: strict JSON, refusing an object that repeats a name.
//! - [`clock`]: times as the API writes them, range-checked.
//! - in [`webhook`]: the signature schemes, canonical JSON, a delivery's
//!   identity and the mapping of its fields.
//!
//! The use cases, on ports:
//! - [`webhook::ingest`]: a delivery, verified, limited and stored.
//! - [`service`]: the integrator API's and the operator's use cases, on the
//!   store's roles and the typed carrier, payments and inventory ports.
//!
//! The edges:
//! - [`store`]: the port (one trait per role), the orchestration of its
//!   writes written once (`store::core`), and the sled and PostgreSQL
//!   adapters.
//! - [`downstream`]: the carrier, payments and inventory over HTTP(S), with
//!   retries and breakers.
//! - [`http`]: the hyper server, the bounds on what a client can take, and
//!   the only place that chooses status codes (`http::error`).
//! - [`config`], [`live`]: the TOML file, and the config in force with what
//!   is built from it.
//! - [`partners`], [`ratelimit`]: integrator keys, and the GCRA limits of
//!   sources, partners and admin sign-ins.
//! - [`app`]: the process: start, serve, reload, drain; shared by the
//!   binary and the tests. [`health`]: supervision (crash-only).
//! - [`telemetry`]: logging and every metric name. [`alloc`]: the
//!   allocator's settings. [`tls`]: the one TLS stack, for every
//!   connection waybill opens. [`trace`]: the W3C trace context a
//!   request carries to its log line and its downstream calls; [`otlp`]:
//!   its spans, exported to an OpenTelemetry collector.
//! - [`tools`]: the subcommands other than `serve`, and the simulator.

pub mod alloc;
pub mod app;
pub mod clock;
pub mod config;
pub mod domain;
pub mod downstream;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod json;
pub mod live;
pub mod otlp;
pub mod partners;
pub mod ratelimit;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tools;
pub mod trace;
pub mod webhook;
