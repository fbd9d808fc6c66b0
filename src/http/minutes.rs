//! Webhook answers per minute over the last hour, for the console's rates
//! and chart: what an operator opening it at 3 a.m. needs at once, without
//! a Prometheus. The counters in `/metrics` stay the exact record; these
//! may miss a few answers at a minute's turn, when one thread clears a
//! slot while another counts into it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Minutes kept.
pub const MINUTES: u64 = 60;

/// What became of a delivery, as the console groups it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Duplicate,
    /// A forged or stale signature.
    InvalidSignature,
    /// Anything else refused: a bad payload, a conflict, a limit.
    Refused,
}

impl Answer {
    /// The group of a `waybill_webhooks_total` outcome.
    pub fn of(outcome: &str) -> Answer {
        use crate::telemetry::outcome as o;
        match outcome {
            o::ACCEPTED => Answer::Accepted,
            o::DUPLICATE => Answer::Duplicate,
            o::INVALID_SIGNATURE | o::STALE_TIMESTAMP => Answer::InvalidSignature,
            _ => Answer::Refused,
        }
    }
}

/// One minute's counts, by `Answer` in its order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Its first millisecond (unix).
    pub start_ms: u64,
    pub counts: [u64; 4],
}

#[derive(Default)]
struct Slot {
    /// The minute (unix minutes) its counts are of.
    minute: AtomicU64,
    counts: [AtomicU64; 4],
}

/// A ring of the last `MINUTES` minutes; lock-free, so counting costs a
/// request one atomic add.
pub struct PerMinute {
    slots: Vec<Slot>,
}

impl Default for PerMinute {
    fn default() -> PerMinute {
        PerMinute {
            slots: (0..MINUTES).map(|_| Slot::default()).collect(),
        }
    }
}

impl PerMinute {
    pub fn record(&self, answer: Answer, now_ms: u64) {
        let minute = now_ms / 60_000;
        let Some(slot) = self.slots.get((minute % MINUTES) as usize) else {
            return;
        };
        let seen = slot.minute.load(Ordering::Acquire);
        if seen != minute
            && slot
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &slot.counts {
                c.store(0, Ordering::Release);
            }
        }
        if let Some(c) = slot.counts.get(answer as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The last `MINUTES` minutes, oldest first; the last is the minute of
    /// `now_ms`, still counting.
    pub fn last_hour(&self, now_ms: u64) -> Vec<Minute> {
        let now = now_ms / 60_000;
        (now.saturating_sub(MINUTES - 1)..=now)
            .map(|minute| {
                let mut out = Minute {
                    start_ms: minute * 60_000,
                    counts: [0; 4],
                };
                if let Some(slot) = self.slots.get((minute % MINUTES) as usize)
                    && slot.minute.load(Ordering::Acquire) == minute
                {
                    for (o, c) in out.counts.iter_mut().zip(&slot.counts) {
                        *o = c.load(Ordering::Relaxed);
                    }
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A whole minute.
    const T0: u64 = 1_764_000_000_000;

    #[test]
    fn counts_land_in_their_minute_and_an_hour_later_the_slot_starts_over() {
        let m = PerMinute::default();
        m.record(Answer::Accepted, T0);
        m.record(Answer::Accepted, T0 + 59_999);
        m.record(Answer::Duplicate, T0 + 60_000);
        m.record(Answer::of("stale_timestamp"), T0 + 60_001);
        m.record(Answer::of("rate_limited"), T0 + 60_002);
        let hour = m.last_hour(T0 + 60_000);
        assert_eq!(hour.len(), MINUTES as usize);
        assert_eq!(
            hour[58],
            Minute {
                start_ms: T0,
                counts: [2, 0, 0, 0]
            }
        );
        assert_eq!(hour[59].counts, [0, 1, 1, 1]);
        assert!(hour[..58].iter().all(|m| m.counts == [0; 4]));
        // The same slot, an hour on: the old minute's counts are gone, not
        // added to.
        let later = T0 + MINUTES * 60_000;
        m.record(Answer::Refused, later);
        let hour = m.last_hour(later);
        assert_eq!(hour[59].counts, [0, 0, 0, 1]);
        assert_eq!(hour[59].start_ms, later);
        // Seen from two hours on, nothing of it is recent.
        let hour = m.last_hour(later + 2 * MINUTES * 60_000);
        assert!(hour.iter().all(|m| m.counts == [0; 4]));
    }

    #[test]
    fn counting_from_many_threads_loses_nothing_within_a_minute() {
        let m = std::sync::Arc::new(PerMinute::default());
        // The minute's first count claims the slot; the race at that turn
        // is the documented one.
        m.record(Answer::Accepted, T0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        m.record(Answer::Accepted, T0 + i % 60_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.last_hour(T0)[59].counts[0], 40_001);
    }
}
