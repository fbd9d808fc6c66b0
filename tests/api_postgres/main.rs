//! The API suite of `tests/api` on the PostgreSQL adapter: the same test
//! bodies, the same files, with every app in a schema of its own on the
//! test database (`tests/support/pg.rs` says where, and what happens
//! without one).

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../support/mod.rs"]
mod support;

#[path = "../api/admin.rs"]
mod admin;
#[path = "../api/dispatch.rs"]
mod dispatch;
#[path = "../api/fuzz.rs"]
mod fuzz;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/labels.rs"]
mod labels;
#[path = "../api/openapi.rs"]
mod openapi;
#[path = "../api/ops.rs"]
mod ops;
#[path = "../api/orders.rs"]
mod orders;
#[path = "../api/reload.rs"]
mod reload;
#[path = "../api/signatures.rs"]
mod signatures;
#[path = "../api/strict.rs"]
mod strict;
#[path = "../api/transport.rs"]
mod transport;
#[path = "../api/v1.rs"]
mod v1;
#[path = "../api/webhooks.rs"]
mod webhooks;
