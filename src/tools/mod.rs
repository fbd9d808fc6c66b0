//! The subcommands other than `serve`: `check-config`, `sign` and `verify`
//! (`cli`), the admin API from the shell (`admin_client`), the services'
//! books against the store (`reconcile`), and the simulated carrier,
//! payments and inventory (`simulator`).

pub mod admin_client;
pub mod cli;
pub mod reconcile;
pub mod simulator;
