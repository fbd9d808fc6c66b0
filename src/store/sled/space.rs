//! Disk space: the floor below which new writes stop, and the headroom
//! that lets sled write out what it holds when another process takes the
//! rest of the disk (GUARANTEES.md: "Nothing stops the gateway", "Hostile traffic").
//!
//! sled cannot recover in-process from a write that fails, so it must
//! never meet a full disk, and another process can take a disk to zero
//! faster than any check can notice. So:
//! - sled's file keeps `store.min_free_mb` of headroom allocated past its
//!   end (`fallocate` with `FALLOC_FL_KEEP_SIZE`): the file grows into
//!   blocks it already owns, which nobody else can take. A reserve file
//!   deleted on demand would not do: whoever is filling the disk takes the
//!   space back before sled can use it. sled gives the headroom up when
//!   it shortens its file; it is allocated again within `SPACE_WATCH`
//!   while there is room;
//! - below the floor (`Level::Low`), new events, claims and writes are
//!   refused (503). Dispatch and retention go on: they write little, and
//!   retention gives whole segments back;
//! - below half the floor (`Level::Out`) someone else is taking the disk:
//!   dispatch and retention wait too, so that sled's headroom is left for
//!   what it already holds. A write of the store's own that meets a full
//!   disk does the same (its partial write is cut; `segments`);
//! - on open, the headroom an earlier run left is handed back first, so a
//!   restart on a full disk can still open the store.
//!
//! Once the free space is above the floor again, everything resumes, with
//! no restart.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::store::StoreError;

/// sled's file, under the store's directory.
const SLED_FILE: &str = "db";

pub(super) struct Space {
    dir: PathBuf,
    floor: u64,
    level: AtomicU8,
}

/// How much of the disk is left (see the module's opening).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Enough = 0,
    Low = 1,
    Out = 2,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Enough,
            1 => Level::Low,
            _ => Level::Out,
        }
    }
}

/// Whether an I/O error says the disk (or the quota) is full.
pub(super) fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// `fallocate(2)` on `file` from `offset` for `len` bytes, in `mode`.
fn fallocate(file: &std::fs::File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate reads nothing of ours but the descriptor, which
    // `file` keeps open for the call.
    match unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

impl Space {
    /// The space of the store in `dir`, with a floor (and headroom) of
    /// `floor` bytes; 0 turns both off. Call before sled opens: the
    /// headroom an earlier run left is handed back, so that opening can
    /// write on a full disk.
    pub(super) fn open(dir: &Path, floor: u64) -> Space {
        let space = Space {
            dir: dir.to_path_buf(),
            floor,
            level: AtomicU8::new(Level::Enough as u8),
        };
        if floor > 0 {
            space.release_headroom();
            let _ = space.check();
        }
        space
    }

    pub(super) fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Acquire))
    }

    /// Whether new writes are refused now.
    pub(super) fn is_low(&self) -> bool {
        self.level() != Level::Enough
    }

    /// Whether dispatch and retention may write now.
    pub(super) fn allows_upkeep(&self) -> bool {
        self.level() != Level::Out
    }

    /// Free bytes where the store writes, as the file system says.
    pub(super) fn free(&self) -> Option<u64> {
        fs2::available_space(&self.dir).ok()
    }

    /// Whether new writes may go on: one statvfs.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.floor == 0 {
            return Ok(());
        }
        let level = match self.free() {
            Some(free) if free >= self.floor => Level::Enough,
            Some(free) if free >= self.floor / 2 => Level::Low,
            _ => Level::Out,
        };
        self.set(level)
    }

    /// One of the store's own writes met a full disk: every write waits
    /// until the space is back.
    pub(super) fn met_full_disk(&self) {
        self.set(Level::Out).ok();
    }

    /// Allocates sled's headroom past the end of its file again, where
    /// sled gave it up; nothing while the disk is short. Cheap when it is
    /// all there.
    pub(super) fn keep_headroom(&self) {
        if self.floor == 0 || self.is_low() {
            return;
        }
        let grown = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join(SLED_FILE))
            .and_then(|f| {
                let end = f.metadata()?.len();
                fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, end, self.floor)
            });
        match grown {
            Ok(()) => {}
            Err(e) if is_full(&e) => {
                let _ = self.check();
            }
            // A file system without fallocate keeps the floor alone.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => tracing::warn!(error = %e, "sled's disk headroom could not be allocated"),
        }
    }

    /// Gives back the blocks allocated past the end of sled's file.
    fn release_headroom(&self) {
        let released = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join(SLED_FILE))
            // Truncating to its own length frees every block past it
            // (hole punching stops at the end of the file on ext4).
            .and_then(|f| f.set_len(f.metadata()?.len()));
        if let Err(e) = released
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "sled's disk headroom could not be handed back");
        }
    }

    fn set(&self, level: Level) -> Result<(), StoreError> {
        let was = Level::from_u8(self.level.swap(level as u8, Ordering::AcqRel));
        if level != was {
            match level {
                Level::Enough => tracing::warn!("free disk space is back; writes resume"),
                Level::Low => tracing::error!(
                    path = %self.dir.display(),
                    min_free_bytes = self.floor,
                    "free disk space is below store.min_free_mb; writes are refused until it is back"
                ),
                Level::Out => tracing::error!(
                    path = %self.dir.display(),
                    "the disk is full or nearly: dispatch and retention wait too, and sled writes into its headroom"
                ),
            }
        }
        if level == Level::Enough {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "free disk space is below store.min_free_mb".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_floor_of_zero_never_refuses_and_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(SLED_FILE);
        std::fs::write(&db, b"x").unwrap();
        let space = Space::open(dir.path(), 0);
        assert!(space.check().is_ok());
        space.keep_headroom();
        assert!(allocated(&db) < 1 << 20);
    }

    #[test]
    fn headroom_is_allocated_past_the_end_and_handed_back_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(SLED_FILE);
        std::fs::write(&db, vec![1u8; 4096]).unwrap();
        let space = Space::open(dir.path(), 8 << 20);
        assert!(space.check().is_ok());
        space.keep_headroom();
        assert_eq!(
            std::fs::metadata(&db).unwrap().len(),
            4096,
            "the size is kept"
        );
        assert!(allocated(&db) >= 8 << 20, "{}", allocated(&db));
        drop(space);
        let _again = Space::open(dir.path(), 8 << 20);
        assert!(allocated(&db) < 1 << 20, "{}", allocated(&db));
        assert_eq!(
            std::fs::read(&db).unwrap(),
            vec![1u8; 4096],
            "the data is kept"
        );
    }

    #[test]
    fn levels_follow_the_free_space_and_a_full_disk_stops_upkeep() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::open(dir.path(), 1 << 20);
        assert!(space.check().is_ok());
        assert!(space.allows_upkeep());
        space.met_full_disk();
        assert!(space.is_low());
        assert!(!space.allows_upkeep());
        // This disk has room: the next check resumes.
        assert!(space.check().is_ok());
        assert_eq!(space.level(), Level::Enough);
        // A floor larger than any disk: out.
        let huge = Space::open(dir.path(), u64::MAX / 4);
        assert!(huge.check().is_err());
        assert_eq!(huge.level(), Level::Out);
    }
}
