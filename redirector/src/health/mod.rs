//! Health probing: one probe of one backend ([`probe`]) and the [`Scheduler`]
//! that runs every target's probes within one global budget.
//!
//! Nothing here decides up or down. Probes report an [`Outcome`] (result kept
//! apart from its [`Reason`]); the decision machine judges the stream of
//! [`Report`]s. Everything runs on the caller's tokio runtime (a current-thread
//! one is enough; it needs the IO, time and, for exec probes, process drivers:
//! `enable_all`): sockets are non-blocking, exec probes use `tokio::process`,
//! no thread ever blocks. ICMP probes need CAP_NET_RAW.

mod exec;
mod http;
mod icmp;
mod probe;
mod scheduler;
mod sock;
mod tcp;
mod udp;

pub use probe::{Outcome, Reason, probe};
pub use scheduler::{
    MIN_INTERVAL, Report, Scheduler, SchedulerError, Target, TargetId, budget_floor, effective_interval,
};

/// Now on CLOCK_MONOTONIC, in nanoseconds: the clock the decision machine and
/// the kernel (`bpf_ktime_get_ns`) use, shared by every network namespace.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own;
    // CLOCK_MONOTONIC always exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // Both fields are non-negative for CLOCK_MONOTONIC.
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
