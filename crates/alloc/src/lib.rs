//! The memory allocator of ikukantai's binaries.
//!
//! Linking this crate makes jemalloc the process's global allocator: fewer resident pages per
//! idle connection than glibc's malloc and fewer instructions per proxied request
//! (docs/benchmarks.md, "Gateway memory"). [`release_freed`] gives memory the process has freed
//! back to the operating system; the gateway calls it when requests pile up in an activator
//! queue (see `ikukantai_dataplane::gateway::MemoryRelease`).

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Gives the memory this process has freed, but jemalloc still holds, back to the operating
/// system: the calling thread's cache of freed blocks goes back to its arenas, and every arena
/// returns its unused pages (`madvise`). A freed block that stays cached is handed to the next
/// allocation of its size, which keeps the block's pages resident even if that allocation never
/// writes to them.
///
/// Costs a few system calls (about 18 µs measured, docs/benchmarks.md); for slow paths only.
pub fn release_freed() {
    // Both are jemalloc "void" controls: no old value to read, no new value to write.
    mallctl_void(c"thread.tcache.flush");
    // 4096 is MALLCTL_ARENAS_ALL: every arena, as a freed block goes back to the arena that
    // allocated it, which need not be this thread's.
    mallctl_void(c"arena.4096.purge");
}

/// Runs the jemalloc control `name`, which takes and returns no value. Failures (a control this
/// jemalloc does not know, a thread cache that is disabled) leave memory as it was, which is all
/// a caller could do about them.
#[expect(unsafe_code, reason = "jemalloc's control interface is a C function")]
fn mallctl_void(name: &std::ffi::CStr) {
    // SAFETY: `name` is NUL-terminated; a void control reads and writes nothing, so null old and
    // new value pointers with a zero new length are what it expects.
    let _ = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anonymous resident memory of this process, in KiB.
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn freed_memory_goes_back_to_the_system() {
        // 64 MiB in 8 KiB blocks, each written, then freed: jemalloc keeps the pages (its
        // thread cache and its arenas' dirty pages decay over seconds, not at once).
        let blocks: Vec<Vec<u8>> = (0..8192).map(|_| vec![1u8; 8192]).collect();
        drop(std::hint::black_box(blocks));
        let before = rss_anon_kib();
        release_freed();
        let after = rss_anon_kib();
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "resident memory went from {before} KiB to {after} KiB"
        );
    }
}
