//! `waybill reconcile [--since TIME] [--fix] [--config PATH]`: the books of
//! the carrier, the payment service and the inventory against the store's
//! records (`service::reconcile`), one JSON line per discrepancy on stdout
//! and a summary on stderr. Exit 0 when everything balances, 1 when
//! anything does not (repaired or not), 2 for usage, config or store
//! errors and a service that cannot be read.
//!
//! It opens the store itself: PostgreSQL beside running replicas; sled only
//! while no gateway holds it (the background pass, `[reconcile] interval`,
//! is the way to reconcile a running embedded store).

use std::path::Path;

use crate::config::Config;
use crate::downstream::Downstream;
use crate::service::Ports;
use crate::service::reconcile::{Report, reconcile};

/// Runs one pass; the exit code.
pub async fn run(config: Option<&Path>, since: Option<&str>, fix: bool) -> u8 {
    let (config, _) = match Config::load(config) {
        Ok(c) => c,
        Err(errors) => {
            super::cli::print_errors(&errors);
            return 2;
        }
    };
    let since_ms = match since.map(crate::clock::parse_rfc3339_ms) {
        None => None,
        Some(Some(ms)) => Some(ms),
        Some(None) => {
            eprintln!("error: --since must be an RFC 3339 time, like 2026-11-30T08:00:00Z");
            return 2;
        }
    };
    let store = match crate::store::open_to_read(&config.store).await {
        Ok(store) => store,
        Err(why) => {
            eprintln!("error: cannot open the store: {why}");
            return 2;
        }
    };
    let downstream = Downstream::new(&config.downstream);
    let ports = Ports {
        keys: store.as_ref(),
        shipments: store.as_ref(),
        orders: store.as_ref(),
        carrier: &downstream,
        payments: &downstream,
        inventory: &downstream,
    };
    match reconcile(ports, &downstream, since_ms, fix).await {
        Ok(report) => print(&report),
        Err(refusal) => {
            eprintln!("error: {refusal}");
            2
        }
    }
}

fn print(report: &Report) -> u8 {
    let mut out = Vec::new();
    for d in &report.discrepancies {
        if serde_json::to_writer(&mut out, d).is_err() {
            return 2;
        }
        out.push(b'\n');
    }
    if super::cli::emit(&out).is_err() {
        return 2;
    }
    let fixed = report.discrepancies.iter().filter(|d| d.fixed).count();
    eprintln!(
        "{} records checked, {} discrepancies, {fixed} repaired",
        report.checked,
        report.discrepancies.len()
    );
    u8::from(!report.discrepancies.is_empty())
}
