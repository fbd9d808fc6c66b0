//! Per-source (and later per-partner) rate limits on governor's GCRA.
//!
//! Generic over governor's `Clock` so tests move time by hand instead of
//! sleeping.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::RateLimit;

pub struct Limiter<C: Clock = DefaultClock> {
    inner: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl Limiter<DefaultClock> {
    pub fn new(limit: RateLimit) -> Self {
        Limiter::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    pub fn with_clock(limit: RateLimit, clock: C) -> Self {
        let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Limiter {
            inner: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes one cell, or says how many whole seconds to wait: the
    /// limiter's real wait rounded up, at least 1 (contract 7).
    pub fn check(&self) -> Result<(), u64> {
        match self.inner.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(secs.max(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn burst_then_refusal_with_the_real_wait_rounded_up() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(
            RateLimit {
                per_second: 2,
                burst: 3,
            },
            clock.clone(),
        );
        for _ in 0..3 {
            assert_eq!(l.check(), Ok(()));
        }
        // One cell comes back every 500 ms: a wait under a second rounds to 1.
        assert_eq!(l.check(), Err(1));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(), Ok(()));
        assert_eq!(l.check(), Err(1));
    }

    #[test]
    fn the_wait_counts_down_to_the_next_cell() {
        let clock = FakeRelativeClock::default();
        // One per second with no burst beyond it: after the cell is used the
        // wait is the full second, and 1 ms before it ends it is still 1.
        let l = Limiter::with_clock(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            clock.clone(),
        );
        assert_eq!(l.check(), Ok(()));
        assert_eq!(l.check(), Err(1));
        clock.advance(Duration::from_millis(999));
        assert_eq!(l.check(), Err(1));
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.check(), Ok(()));
    }
}
