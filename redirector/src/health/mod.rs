//! Health probing: one probe of one backend ([`probe`]) and the [`Scheduler`]
//! that runs every target's probes within one global budget.
//!
//! Nothing here decides up or down. Probes report an [`Outcome`] (result kept
//! apart from its [`Reason`]); the decision machine judges the stream of
//! [`Report`]s. Everything runs on the caller's tokio runtime (a current-thread
//! one is enough; it needs the IO, time and, for exec probes, process drivers:
//! `enable_all`): sockets are non-blocking, exec probes use `tokio::process`,
//! no thread ever blocks. ICMP probes need CAP_NET_RAW.

pub mod dns;
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

pub use crate::clock::monotonic_ns;
