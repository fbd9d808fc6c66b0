//! The order and shipment state machines, the requests that make them,
//! and the ids they name: pure and synchronous. No I/O, no clock, no
//! async; callers pass times in.

pub mod field;
pub mod ids;
pub mod label;
pub mod order;
pub mod request;
pub mod shipment;
