//! The process's allocator: mimalloc, set as the global allocator by the
//! `waybill` binary (`src/main.rs`), and tuned once at start.
//!
//! A webhook's life is a burst of small allocations freed on other
//! threads (the body, its parsed fields, the record, the answer), which
//! glibc serves from shared arenas under a lock and gives back with
//! `malloc_consolidate` passes; mimalloc keeps pages per thread and frees
//! across threads without a lock. Measured side by side, it takes about a
//! quarter less CPU per webhook, for 15 to 20 MiB more resident memory
//! (docs/BENCHMARKS.md: "The allocator, and CPU per request"). What the
//! gateway relies on holds with it:
//!
//! - Memory is given back: freed pages are returned to the system at once
//!   (`purge_delay` 0, not mimalloc's 1 s), in small pieces rather than
//!   transparent huge pages (`allow_thp` 0), so a burst of large bodies
//!   does not stay with the process (GUARANTEES.md: "Hostile traffic",
//!   `bodies_held_before_verification_are_bounded_and_given_back`).
//! - It fits an address-space limit: when the large reservation it
//!   prefers is refused (`ulimit -v`, some container runtimes), it takes
//!   memory from the system in smaller pieces instead of failing, and
//!   glibc, which still serves the C library's own allocations, is held
//!   to two arenas
//!   (`in_512_mib_of_address_space_unverified_bodies_cannot_abort_the_gateway`).
//!   This is why it is mimalloc 3: version 2 holds less under churn, but
//!   gives every allocating thread a 32 MiB segment of address space of
//!   its own, and aborts at start in 512 MiB (docs/BENCHMARKS.md:
//!   "mimalloc 2, and one codegen unit").

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc.h of the pinned libmimalloc-sys
/// (which names only some options): milliseconds before freed memory is
/// returned.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp`: whether arenas may be transparent huge pages.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Applies the settings; called before anything is allocated (an ELF
/// constructor in `src/main.rs`).
pub fn tune() {
    // SAFETY: mi_option_set writes one word of mimalloc's option table;
    // the indices are checked against the defaults the table documents
    // (`the_option_indices_name_the_options_they_mean`).
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
    }
    // What still calls glibc's malloc (the C library itself, on every
    // thread) would get an arena per busy thread, each reserving 64 MiB of
    // address space: under an address-space limit those reservations alone
    // leave too little for threads' stacks. Two arenas suffice for it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocator parameters; called
    // before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The indices are positions in a C enum that the crate does not
    /// export: an index that slipped would silently tune another option.
    /// mimalloc's own defaults (purge delay 1000 ms; huge pages allowed
    /// on Linux; the options around them) pin them to their names.
    #[test]
    fn the_option_indices_name_the_options_they_mean() {
        // SAFETY: mi_option_get only reads the option table.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(get(PURGE_DELAY), 1000, "purge_delay defaults to 1 s");
        assert_eq!(
            PURGE_DELAY,
            libmimalloc_sys::mi_option_use_numa_nodes - 1,
            "purge_delay sits just before use_numa_nodes"
        );
        assert_eq!(get(ALLOW_THP), 1, "transparent huge pages are allowed");
        assert_eq!(get(ALLOW_THP + 1), 0, "minimal_purge_size follows");
    }
}
