//! Crash-only supervision of the background components (GUARANTEES.md: "Nothing
//! stops the gateway").
//!
//! Every long-lived thread or task holds an [`Alive`] for as long as it
//! runs. When one ends (it returned, or it panicked and unwound) outside an
//! orderly stop, its `Drop` marks the component down: `/readyz` turns 503,
//! `waybill_component_up{component}` goes to 0, an ERROR is logged and
//! [`Health::failed`] resolves, upon which the server drains, flushes what
//! it can and the process exits non-zero, so its supervisor restarts it on
//! the same data. A half-alive gateway that answers `/healthz` while its
//! inbox no longer drains is worse than a restart.
//!
//! A component that is alive but stuck is caught by its heartbeat: each
//! beats as it goes round its loop (idle ones are woken to beat), and one
//! that has not beaten for its `stall_after` makes `/readyz` 503 without
//! ending the process; it may yet come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;
use crate::telemetry::metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The writer and flusher threads: intake's group commit.
    Store,
    /// The state-machine thread.
    Dispatcher,
    /// Background fulfilment of paid orders without a label.
    Fulfilment,
    /// The retention sweeps and the metrics upkeep.
    Retention,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Store,
        Component::Dispatcher,
        Component::Fulfilment,
        Component::Retention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Store => "store",
            Component::Dispatcher => "dispatcher",
            Component::Fulfilment => "fulfilment",
            Component::Retention => "retention",
        }
    }

    fn slot(self) -> usize {
        match self {
            Component::Store => 0,
            Component::Dispatcher => 1,
            Component::Fulfilment => 2,
            Component::Retention => 3,
        }
    }
}

const NOT_STARTED: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

#[derive(Default)]
struct Part {
    state: AtomicU8,
    /// Threads of this component alive now (the store has two).
    holders: AtomicU64,
    last_beat_ms: AtomicU64,
    stall_after_ms: AtomicU64,
}

#[derive(Default)]
pub struct Health {
    parts: [Part; 4],
    stopping: AtomicBool,
    failed: tokio::sync::Notify,
    first_failure: std::sync::OnceLock<Component>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    fn part(&self, c: Component) -> &Part {
        // `slot` is below the array's length for every component.
        #[allow(clippy::indexing_slicing)]
        &self.parts[c.slot()]
    }

    /// Marks `c` up until the returned guard is dropped; `stall_after` is
    /// how long it may go without a heartbeat before it counts as stuck.
    pub fn enter(self: &Arc<Self>, c: Component, stall_after: Duration) -> Alive {
        let part = self.part(c);
        part.holders.fetch_add(1, Ordering::AcqRel);
        part.stall_after_ms.store(
            u64::try_from(stall_after.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        part.last_beat_ms.store(now_ms(), Ordering::Relaxed);
        // A component that went down stays down: the process is on its way out.
        let _ = part
            .state
            .compare_exchange(NOT_STARTED, UP, Ordering::AcqRel, Ordering::Acquire);
        self.publish(c);
        Alive {
            health: self.clone(),
            component: c,
        }
    }

    /// Says that `c` is making progress.
    pub fn beat(&self, c: Component) {
        self.part(c).last_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// From now on components end because they were told to: their ends
    /// are not failures.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether every component started so far is up and beating.
    pub fn is_ready(&self) -> bool {
        let now = now_ms();
        Component::ALL.iter().all(|c| self.component_ready(*c, now))
    }

    fn component_ready(&self, c: Component, now: u64) -> bool {
        let part = self.part(c);
        match part.state.load(Ordering::Acquire) {
            NOT_STARTED => true,
            UP => {
                let last = part.last_beat_ms.load(Ordering::Relaxed);
                now.saturating_sub(last) <= part.stall_after_ms.load(Ordering::Relaxed)
            }
            _ => false,
        }
    }

    /// Sets `waybill_component_up` for every started component.
    pub fn publish_all(&self) {
        for c in Component::ALL {
            if self.part(c).state.load(Ordering::Acquire) != NOT_STARTED {
                self.publish(c);
            }
        }
    }

    fn publish(&self, c: Component) {
        let up = self.component_ready(c, now_ms());
        metrics::gauge!(metric::COMPONENT_UP, "component" => c.as_str()).set(if up {
            1.0
        } else {
            0.0
        });
    }

    /// The first component that went down, once one has.
    pub fn failure(&self) -> Option<Component> {
        self.first_failure.get().copied()
    }

    /// Resolves when a component goes down outside an orderly stop.
    pub async fn failed(&self) -> Component {
        loop {
            let notified = self.failed.notified();
            if let Some(c) = self.failure() {
                return c;
            }
            notified.await;
        }
    }

    fn went_down(&self, c: Component) {
        let part = self.part(c);
        let left = part
            .holders
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        part.state.store(DOWN, Ordering::Release);
        self.publish(c);
        let panicked = std::thread::panicking();
        tracing::error!(
            component = c.as_str(),
            panicked,
            threads_left = left,
            "a background component stopped; the process will exit so that it is restarted"
        );
        let _ = self.first_failure.set(c);
        self.failed.notify_waiters();
    }
}

/// Held by a running component; see the module's documentation.
pub struct Alive {
    health: Arc<Health>,
    component: Component,
}

impl Alive {
    pub fn beat(&self) {
        self.health.beat(self.component);
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.health.went_down(self.component);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_that_ends_outside_a_stop_is_down_and_reported() {
        let h = Health::new();
        assert!(h.is_ready(), "nothing started yet");
        let store = h.enter(Component::Store, Duration::from_secs(60));
        let dispatcher = h.enter(Component::Dispatcher, Duration::from_secs(60));
        assert!(h.is_ready());
        assert_eq!(h.failure(), None);
        drop(dispatcher);
        assert!(!h.is_ready());
        assert_eq!(h.failure(), Some(Component::Dispatcher));
        // Down stays down, also if it is entered again.
        let _again = h.enter(Component::Dispatcher, Duration::from_secs(60));
        assert!(!h.is_ready());
        drop(store);
        assert_eq!(h.failure(), Some(Component::Dispatcher), "the first one");
    }

    #[test]
    fn a_panic_in_a_component_thread_marks_it_down() {
        let h = Health::new();
        let h2 = h.clone();
        let joined = std::thread::spawn(move || {
            let _alive = h2.enter(Component::Retention, Duration::from_secs(60));
            let parsed: Result<u8, _> = "not a number".parse::<u8>();
            #[allow(clippy::unwrap_used)]
            let _ = parsed.unwrap();
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(h.failure(), Some(Component::Retention));
        assert!(!h.is_ready());
    }

    #[test]
    fn ends_during_an_orderly_stop_are_not_failures() {
        let h = Health::new();
        let alive = h.enter(Component::Store, Duration::from_secs(60));
        h.stopping();
        drop(alive);
        assert_eq!(h.failure(), None);
    }

    #[test]
    fn a_component_without_a_heartbeat_is_not_ready_until_it_beats() {
        let h = Health::new();
        let alive = h.enter(Component::Store, Duration::ZERO);
        // Pretend the last beat was long ago.
        h.part(Component::Store)
            .last_beat_ms
            .store(now_ms().saturating_sub(5_000), Ordering::Relaxed);
        assert!(!h.is_ready());
        alive.beat();
        assert!(h.is_ready());
        assert_eq!(h.failure(), None, "stuck is not stopped");
    }

    #[tokio::test]
    async fn failed_resolves_when_a_component_goes_down() {
        let h = Health::new();
        let alive = h.enter(Component::Dispatcher, Duration::from_secs(60));
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.failed().await })
        };
        tokio::task::yield_now().await;
        drop(alive);
        assert_eq!(waiter.await.unwrap(), Component::Dispatcher);
        // And at once for a late waiter.
        assert_eq!(h.failed().await, Component::Dispatcher);
    }
}
