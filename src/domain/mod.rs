//! The order and shipment state machines: pure and synchronous. No I/O, no
//! clock, no async; callers pass times in.

pub mod ids;
pub mod label;
pub mod order;
pub mod request;
pub mod shipment;
