//! Per-source (and later per-partner) rate limits on governor's GCRA.
//!
//! Generic over governor's `Clock` so tests move time by hand instead of
//! sleeping.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::RateLimit;

pub struct Limiter<C: Clock = DefaultClock> {
    inner: RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
    clock: C,
    limit: RateLimit,
}

/// Where a limit stands after a request, as the IETF `RateLimit-Policy`
/// and `RateLimit` headers say it (draft-ietf-httpapi-ratelimit-headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Requests the limit allows at once, and the seconds it takes to
    /// allow them all again from none.
    pub quota: u32,
    pub window_secs: u64,
    /// Requests left now, and the seconds until the whole quota is back.
    pub remaining: u32,
    pub reset_secs: u64,
}

impl Standing {
    /// The two headers, for the limit called `policy` ("source",
    /// "partner").
    pub fn headers(&self, policy: &str) -> [(&'static str, String); 2] {
        [
            (
                "ratelimit-policy",
                format!("\"{policy}\";q={};w={}", self.quota, self.window_secs),
            ),
            (
                "ratelimit",
                format!("\"{policy}\";r={};t={}", self.remaining, self.reset_secs),
            ),
        ]
    }
}

/// A request the limit refused: when to try again, and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
    pub standing: Standing,
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
            inner: RateLimiter::direct_with_clock(quota, clock.clone()).with_middleware(),
            clock,
            limit: RateLimit {
                per_second: per_second.get(),
                burst: burst.get(),
            },
        }
    }

    /// Where the limit stands with `remaining` requests left: the whole
    /// quota is back once the missing ones have come back, one every
    /// 1/per_second seconds.
    fn standing(&self, remaining: u32) -> Standing {
        let per_second = u64::from(self.limit.per_second.max(1));
        let quota = self.limit.burst;
        let missing = u64::from(quota.saturating_sub(remaining));
        Standing {
            quota,
            window_secs: u64::from(quota).div_ceil(per_second).max(1),
            remaining,
            reset_secs: missing.div_ceil(per_second),
        }
    }

    /// Takes one cell and says where the limit stands, or says how many
    /// whole seconds to wait: the limiter's real wait rounded up, at least
    /// 1 (GUARANTEES.md: "Errors").
    pub fn check(&self) -> Result<Standing, Limited> {
        match self.inner.check() {
            Ok(snapshot) => Ok(self.standing(snapshot.remaining_burst_capacity())),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(Limited {
                    retry_after_secs: secs.max(1),
                    standing: self.standing(0),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    /// A limiter of `per_second` and `burst` on a clock the test moves.
    fn limiter(per_second: u32, burst: u32) -> (FakeRelativeClock, Limiter<FakeRelativeClock>) {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit { per_second, burst };
        (clock.clone(), Limiter::with_clock(limit, clock))
    }

    /// Requests left after one more, or the wait it was refused with.
    fn take<C: Clock + Clone>(l: &Limiter<C>) -> Result<u32, u64> {
        l.check()
            .map(|s| s.remaining)
            .map_err(|l| l.retry_after_secs)
    }

    #[test]
    fn burst_then_refusal_with_the_real_wait_rounded_up() {
        let (clock, l) = limiter(2, 3);
        for left in [2, 1, 0] {
            assert_eq!(take(&l), Ok(left));
        }
        // One cell comes back every 500 ms: a wait under a second rounds to 1.
        assert_eq!(take(&l), Err(1));
        clock.advance(Duration::from_millis(500));
        assert_eq!(take(&l), Ok(0));
        assert_eq!(take(&l), Err(1));
    }

    #[test]
    fn the_standing_says_the_quota_what_is_left_and_when_it_is_whole_again() {
        let (clock, l) = limiter(2, 3);
        let first = l.check().unwrap();
        assert_eq!(
            first,
            Standing {
                quota: 3,
                window_secs: 2,
                remaining: 2,
                reset_secs: 1,
            }
        );
        assert_eq!(
            first.headers("source"),
            [
                ("ratelimit-policy", "\"source\";q=3;w=2".to_string()),
                ("ratelimit", "\"source\";r=2;t=1".to_string()),
            ]
        );
        l.check().unwrap();
        let last = l.check().unwrap();
        assert_eq!((last.remaining, last.reset_secs), (0, 2));
        let refused = l.check().unwrap_err();
        assert_eq!(refused.standing.remaining, 0);
        assert_eq!(refused.retry_after_secs, 1);
        // A second later two cells are back.
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.check().unwrap().remaining, 1);
    }

    #[test]
    fn the_wait_counts_down_to_the_next_cell() {
        // One per second with no burst beyond it: after the cell is used the
        // wait is the full second, and 1 ms before it ends it is still 1.
        let (clock, l) = limiter(1, 1);
        assert_eq!(take(&l), Ok(0));
        assert_eq!(take(&l), Err(1));
        clock.advance(Duration::from_millis(999));
        assert_eq!(take(&l), Err(1));
        clock.advance(Duration::from_millis(1));
        assert_eq!(take(&l), Ok(0));
    }
}

/// Failed authentications per client (GUARANTEES.md: "Hostile traffic"): at most `burst`
/// failures, then one more every `interval`, each client apart. GCRA by
/// hand rather than governor's keyed limiter, because the question asked
/// before a request is checked is "may this client try?", which must not
/// use up a try the way governor's `check` does.
///
/// Pure: the caller passes the time. Bounded: beyond `MAX_CLIENTS`, the
/// clients whose failures have all worn off are forgotten first.
pub struct Failures<K> {
    interval: std::time::Duration,
    burst: u32,
    /// Each client's theoretical arrival time: when its debt of failures
    /// is paid off.
    paid_at: std::collections::HashMap<K, std::time::Instant>,
}

/// Clients tracked at most; past that, a new client is tracked only once
/// room is made by forgetting those with nothing owed.
const MAX_CLIENTS: usize = 100_000;

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Recorded; the client may try again.
    Counted,
    /// This failure used the last try: the client waits this long.
    Blocked(std::time::Duration),
}

impl<K: std::hash::Hash + Eq + Clone> Failures<K> {
    pub fn new(burst: u32, per: std::time::Duration) -> Failures<K> {
        let burst = burst.max(1);
        Failures {
            interval: per / burst,
            burst,
            paid_at: std::collections::HashMap::new(),
        }
    }

    /// How long `client` must wait before it may try again; None when it
    /// may now.
    pub fn blocked(&self, client: &K, now: std::time::Instant) -> Option<std::time::Duration> {
        let paid_at = *self.paid_at.get(client)?;
        let allowed_debt = self.interval * (self.burst - 1);
        let debt = paid_at.saturating_duration_since(now);
        (debt > allowed_debt).then(|| debt - allowed_debt)
    }

    /// Records a failed try by `client`.
    pub fn fail(&mut self, client: &K, now: std::time::Instant) -> Failed {
        if self.paid_at.len() >= MAX_CLIENTS && !self.paid_at.contains_key(client) {
            self.paid_at.retain(|_, paid_at| *paid_at > now);
            if self.paid_at.len() >= MAX_CLIENTS {
                return Failed::Counted;
            }
        }
        let paid_at = self.paid_at.entry(client.clone()).or_insert(now);
        *paid_at = (*paid_at).max(now) + self.interval;
        match self.blocked(client, now) {
            Some(wait) => Failed::Blocked(wait),
            None => Failed::Counted,
        }
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn ten_failures_a_minute_then_one_every_six_seconds() {
        let mut f = Failures::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..9 {
            assert_eq!(f.fail(&"a", t0), Failed::Counted);
            assert_eq!(f.blocked(&"a", t0), None);
        }
        assert_eq!(f.fail(&"a", t0), Failed::Blocked(Duration::from_secs(6)));
        assert_eq!(f.blocked(&"a", t0), Some(Duration::from_secs(6)));
        // Another client is not held back by this one.
        assert_eq!(f.blocked(&"b", t0), None);
        assert_eq!(f.fail(&"b", t0), Failed::Counted);
        // Waiting pays the debt down: one more try after six seconds.
        let later = t0 + Duration::from_secs(6);
        assert_eq!(f.blocked(&"a", later), None);
        assert_eq!(f.fail(&"a", later), Failed::Blocked(Duration::from_secs(6)));
        // A minute of quiet forgives everything.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(f.blocked(&"a", much_later), None);
        for _ in 0..9 {
            assert_eq!(f.fail(&"a", much_later), Failed::Counted);
        }
    }

    #[test]
    fn the_table_of_clients_stays_bounded() {
        let mut f = Failures::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS {
            f.fail(&i, t0);
        }
        // Full of clients that still owe: a new one is not tracked.
        assert_eq!(f.fail(&usize::MAX, t0), Failed::Counted);
        assert_eq!(f.paid_at.len(), MAX_CLIENTS);
        // Once their debts are paid they make room.
        let later = t0 + Duration::from_secs(7);
        f.fail(&usize::MAX, later);
        assert_eq!(f.paid_at.len(), 1);
    }
}
