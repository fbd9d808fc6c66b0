//! The bound on request bodies held before their sender is verified
//! (`server.max_unverified_mb`; GUARANTEES.md: "Hostile traffic").
//!
//! A body is read whole before its signature or API key can be checked,
//! and a slow sender's body does not count against `max_in_flight` (it
//! takes a slot only once it has arrived). So without this bound, memory
//! is `max_connections` × `max_body_bytes`: gigabytes, for anyone who can
//! open connections. Each body reserves its size here before it is read
//! (its declared length, or chunk by chunk when it has none) and gives it
//! back once its sender is verified or the request ends; a body that
//! would pass the bound is refused before it is read.
//!
//! Bodies above `SMALL_BODY` may take only `large_share` of the bound, so
//! the ordinary webhook of a few kilobytes always finds room while large
//! ones fill theirs.

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies up to this size draw on the whole bound; larger ones only on
/// their share.
pub const SMALL_BODY: u64 = 64 * 1024;

/// Permits count KiB, so that any configured bound fits a permit count.
const UNIT: u64 = 1024;

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// The part of `total` that large bodies may hold together: three quarters.
pub fn large_share(total: u64) -> u64 {
    total / 4 * 3
}

pub struct Unverified {
    all: std::sync::Arc<Semaphore>,
    large: std::sync::Arc<Semaphore>,
}

/// Bytes reserved for one body; given back when dropped.
pub struct Hold {
    bytes: u64,
    all: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
}

impl Unverified {
    pub fn new(total_bytes: u64) -> Unverified {
        Unverified {
            all: std::sync::Arc::new(Semaphore::new(units(total_bytes) as usize)),
            large: std::sync::Arc::new(Semaphore::new(units(large_share(total_bytes)) as usize)),
        }
    }

    /// Reserves room for a body of `bytes`; None when the bound has none.
    pub fn reserve(&self, bytes: u64) -> Option<Hold> {
        let mut hold = Hold {
            bytes: 0,
            all: None,
            large: None,
        };
        self.grow(&mut hold, bytes).then_some(hold)
    }

    /// Widens `hold` to cover `bytes` in all (a body without a declared
    /// length, arriving); false, leaving it as it was, when the bound has
    /// no room.
    pub fn grow(&self, hold: &mut Hold, bytes: u64) -> bool {
        if bytes <= hold.bytes {
            return true;
        }
        let more = units(bytes) - units(hold.bytes);
        // What a large body holds of the large share: all of it, counted
        // from the moment it passes the small size.
        let large_more = if bytes > SMALL_BODY {
            units(bytes) - hold.large.as_ref().map_or(0, |p| p.num_permits() as u32)
        } else {
            0
        };
        let large = match large_more {
            0 => None,
            n => match self.large.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(_) => return false,
            },
        };
        let all = match more {
            0 => None,
            n => match self.all.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                // `large` drops here, given back.
                Err(_) => return false,
            },
        };
        merge(&mut hold.large, large);
        merge(&mut hold.all, all);
        hold.bytes = bytes;
        true
    }

    /// KiB free in the whole bound (for tests and the log).
    pub fn available_kib(&self) -> usize {
        self.all.available_permits()
    }
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, more: Option<OwnedSemaphorePermit>) {
    match (into.as_mut(), more) {
        (Some(p), Some(m)) => p.merge(m),
        (None, Some(m)) => *into = Some(m),
        (_, None) => {}
    }
}

impl Hold {
    /// A hold of nothing, for a body whose sender is already verified.
    pub fn none() -> Hold {
        Hold {
            bytes: 0,
            all: None,
            large: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn large_bodies_leave_the_small_share_free() {
        let b = Unverified::new(4 * MIB);
        let mut large = Vec::new();
        while let Some(h) = b.reserve(MIB) {
            large.push(h);
        }
        assert_eq!(large.len(), 3, "three quarters of 4 MiB");
        // The last quarter is for small bodies only.
        let small: Vec<_> = (0..16).map_while(|_| b.reserve(SMALL_BODY)).collect();
        assert_eq!(small.len(), 16);
        assert!(b.reserve(1).is_none(), "all of it held");
        drop(large);
        assert!(b.reserve(MIB).is_some(), "given back when dropped");
    }

    #[test]
    fn a_body_without_a_length_grows_into_the_large_share() {
        let b = Unverified::new(4 * MIB);
        let mut hold = b.reserve(0).unwrap();
        for size in (1..=48).map(|n| n * 64 * 1024) {
            assert!(b.grow(&mut hold, size), "{size}");
        }
        assert_eq!(hold.bytes, 3 * MIB);
        assert!(!b.grow(&mut hold, 3 * MIB + 1), "past the large share");
        assert_eq!(hold.bytes, 3 * MIB, "unchanged by a refused growth");
        // Small bodies still fit beside it.
        assert!(b.reserve(SMALL_BODY).is_some());
        drop(hold);
        assert_eq!(b.available_kib(), 4096);
        assert!(b.reserve(3 * MIB).is_some());
    }

    #[test]
    fn a_refused_reservation_takes_nothing() {
        let b = Unverified::new(4 * MIB);
        let _big = b.reserve(3 * MIB).unwrap();
        assert!(b.reserve(MIB).is_none());
        assert_eq!(b.available_kib(), 1024);
        assert!(b.reserve(SMALL_BODY).is_some());
    }
}
