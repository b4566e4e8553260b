//! Keeping glibc's allocator from holding on to what the node freed.
//!
//! glibc keeps freed memory for reuse in the arena of the thread that
//! freed it, gives contending threads arenas of their own (up to eight per
//! core), and returns a page to the system only from the top of a heap. A
//! node that churns connections for hours, with blocking threads that come
//! and go, frees plenty in every arena between allocations that live on.
//! In a 10-minute soak (2,300 connections, about 150,000 churned) RSS kept
//! climbing after warm-up while the live heap did not (heaptrack, over a
//! 4-minute soak with 1,300 connections: 12 to 14 MiB through the whole
//! load, not rising, and 81 KiB left at exit). So the
//! node caps the arenas at one per core ([`limit_arenas`]) and gives wholly
//! free pages back every [`TRIM_EVERY`] ([`start_trimming`]); the same soak
//! then levels off after its first four minutes, within 35.9 to 38.8 MiB
//! to the tenth (BENCHMARKS.md, "Long runs"). Other allocators and platforms have nothing to do here.

use std::time::Duration;

/// How often freed memory is given back.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Caps glibc's malloc arenas at one per core, before any thread starts.
///
/// glibc gives threads that contend for an arena new ones, up to eight
/// per core, and a thread keeps allocating from the arena it was given. A
/// node's blocking threads come and go (passes, store reads, sweeps), so
/// over a long run its allocations spread over more and more arenas, each
/// keeping what was freed in it for its own threads: RSS kept creeping up
/// in a soak while the live heap stayed flat. One arena per core is as
/// many as can be busy at once.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // from `main` before the runtime starts any thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Starts giving freed memory back to the system every [`TRIM_EVERY`], for
/// as long as the runtime runs. The allocator is the process's, so once per
/// process, however many nodes it starts (tests start many).
pub(super) fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            drop(tokio::spawn(async {
                let mut tick = tokio::time::interval(TRIM_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    // A walk over every arena can take milliseconds on a big
                    // heap; on a runtime thread every task queued behind it would
                    // wait that long. (A thread that allocates from the arena being
                    // walked waits for its lock either way.)
                    let _ = tokio::task::spawn_blocking(|| {
                        // SAFETY: malloc_trim only releases memory the allocator
                        // holds free; it takes each arena's lock, so it is safe
                        // to call from any thread at any time.
                        unsafe { libc::malloc_trim(0) }
                    })
                    .await;
                }
            }))
        });
    }
}
