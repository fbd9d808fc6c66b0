//! The order and shipment state machines, the requests that make them,
//! and the ids they name: pure and synchronous. No I/O, no clock, no
//! async; callers pass times in.

pub mod field;
pub mod ids;
pub mod label;
pub mod order;
pub mod request;
pub mod shipment;

/// The arrival orders a property test of a history tries: the events with
/// some of them repeated (`repeats` index into them), then four shuffles of
/// that list.
#[cfg(test)]
fn arrival_orders<E: Clone>(events: &[E], repeats: &[usize], seed: u64) -> Vec<Vec<E>> {
    let mut arrivals = events.to_vec();
    for r in repeats {
        arrivals.push(events[r % events.len()].clone());
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut orders = vec![arrivals.clone()];
    for _ in 0..4 {
        rng.shuffle(&mut arrivals);
        orders.push(arrivals.clone());
    }
    orders
}
