//! API tests against the real server on 127.0.0.1:0, one binary for all.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod dispatch;
mod fuzz;
mod helpers;
mod hostile;
mod labels;
mod openapi;
mod ops;
mod orders;
mod reload;
mod signatures;
mod strict;
mod transport;
mod v1;
mod webhooks;
