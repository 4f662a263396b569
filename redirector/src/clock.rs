//! The one clock: CLOCK_MONOTONIC in nanoseconds, which the decision
//! machines' inputs, the probes' send times and the kernel's
//! `bpf_ktime_get_(coarse_)ns` all read, shared by every network namespace.

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own;
    // CLOCK_MONOTONIC always exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
