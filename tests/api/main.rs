//! API tests against the real server on 127.0.0.1:0, one binary for all;
//! and with them the tests that need no process of their own: the store
//! adapters' properties and records, the simulator, the subcommands, TLS
//! downstreams, and the documents checked against the code. The tests that
//! kill, starve or time a process, or read the process-wide metrics
//! recorder, keep binaries of their own.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod cli;
mod dispatch;
mod docs;
mod events_cli;
mod fuzz;
mod helpers;
mod hostile;
mod labels;
mod openapi;
mod operator_files;
mod ops;
mod orders;
mod postgres_adapter;
mod records;
mod reload;
mod signatures;
mod simulator;
mod store_properties;
mod strict;
mod tls;
mod transport;
mod v1;
mod webhooks;
