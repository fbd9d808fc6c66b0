//! What the process asks of glibc's allocator, set once at start.
//!
//! - Arenas: glibc gives busy threads arenas of their own, up to eight per
//!   core, and each reserves 64 MiB of address space. A gateway's threads
//!   mostly wait, and under an address-space limit (`ulimit -v`, some
//!   container runtimes) those reservations alone come near the limit, so
//!   that a burst of requests aborts the process on a failed allocation.
//!   Two arenas keep two cores' worth of threads apart.
//! - Large blocks: glibc serves a block above its mmap threshold with a
//!   mapping of its own, returned to the system when freed, but raises the
//!   threshold to the size of every such block freed, after which bodies
//!   of that size come from the arenas and their memory stays with the
//!   process. A fixed threshold keeps request bodies in mappings of their
//!   own, so the memory a burst of large bodies took is given back when
//!   they go (GUARANTEES.md: "Hostile traffic").

/// Applies the settings; call before the runtime starts its threads.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; called
    // before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
