//! One probe of one backend, whatever its kind, and what it found.
use std::{net::SocketAddr, time::Duration};

use tokio::time::Instant;

use super::{dns, exec, http, icmp, tcp, udp};
use crate::config::ProbeKind;
pub use crate::policy::Reason;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The probe passed.
    pub ok: bool,
    /// Why it passed or failed.
    pub reason: Reason,
    /// From sending the probe to its verdict.
    pub latency: Duration,
}

impl Outcome {
    /// The outcome of a probe that started at `start` and ends now.
    pub(super) fn finish(result: Result<(), Reason>, start: Instant) -> Outcome {
        let latency = start.elapsed();
        match result {
            Ok(()) => Outcome {
                ok: true,
                reason: Reason::Passed,
                latency,
            },
            Err(reason) => Outcome {
                ok: false,
                reason,
                latency,
            },
        }
    }
}

/// Probes `target` once with `kind`; no answer within `timeout` is a
/// [`Reason::Timeout`]. Never blocks a thread. For `Icmp` only the address of
/// `target` counts.
pub async fn probe(kind: &ProbeKind, target: SocketAddr, timeout: Duration) -> Outcome {
    match kind {
        ProbeKind::Tcp => tcp::probe(target, timeout).await,
        ProbeKind::Http { path, expect } => http::probe(target, path, expect, timeout).await,
        ProbeKind::Udp { send, expect } => udp::probe(target, send, expect.as_deref(), timeout).await,
        ProbeKind::Dns { name, qtype, rcodes } => match dns::encode_name(name) {
            Ok(wire) => dns::probe(target, &wire, *qtype, *rcodes, timeout).await,
            Err(e) => Outcome::finish(Err(Reason::Error(format!("query {name:?}: {e}"))), Instant::now()),
        },
        ProbeKind::Icmp => icmp::probe(target.ip(), timeout).await,
        ProbeKind::Exec { command } => exec::probe(command, target, timeout).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_reasons_are_answers_that_say_nobody_is_home() {
        for r in [Reason::Refused, Reason::Reset, Reason::Unreachable] {
            assert!(r.is_hard(), "{r}");
        }
        for r in [
            Reason::Passed,
            Reason::Timeout,
            Reason::BadStatus(503),
            Reason::BadReply,
            Reason::Exit(1),
            Reason::Error("x".into()),
        ] {
            assert!(!r.is_hard(), "{r}");
        }
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(Reason::BadStatus(503).to_string(), "bad status 503");
        assert_eq!(Reason::Exit(137).to_string(), "exit status 137");
        assert_eq!(Reason::Refused.to_string(), "refused");
        assert_eq!(
            Reason::Late(Duration::from_micros(7500)).to_string(),
            "prober late by 7.5 ms"
        );
    }
}
