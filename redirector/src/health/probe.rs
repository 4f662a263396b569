//! One probe of one backend, whatever its kind, and what it found.
use std::{fmt, net::SocketAddr, time::Duration};

use tokio::time::Instant;

use super::{exec, http, icmp, tcp, udp};
use crate::config::ProbeKind;

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

/// Why a probe passed or failed (kept apart from the verdict, as HAProxy does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The probe passed.
    Passed,
    /// Connection refused (TCP RST to the SYN, or ICMP port unreachable).
    Refused,
    /// Connection reset after it was established.
    Reset,
    /// No answer within the timeout.
    Timeout,
    /// ICMP host/network unreachable, or no route.
    Unreachable,
    /// HTTP status not in the accepted list.
    BadStatus(u16),
    /// An answer that is not the expected one (UDP payload, garbled HTTP).
    BadReply,
    /// An exec probe exited non-zero (`128 + N` when killed by signal N).
    Exit(i32),
    /// The probe could not run here (no fd, no buffer, no source address,
    /// a local firewall's EPERM, a missing exec binary …); the text says why.
    /// The gateway's own trouble: never a verdict about the backend.
    Error(String),
    /// No answer, but the prober first looked this long after its deadline:
    /// this host was too busy to tell a silent backend from its own delay.
    /// No verdict.
    Late(Duration),
}

impl Reason {
    /// An answer from the network that says "nobody home": refused, reset or
    /// unreachable. Worth confirming at once, because one could be forged
    /// while several in a row are not.
    pub fn is_hard(&self) -> bool {
        matches!(self, Reason::Refused | Reason::Reset | Reason::Unreachable)
    }

    /// The probe could not run, or could not judge, on this host: no
    /// verdict about the backend.
    pub fn is_local(&self) -> bool {
        matches!(self, Reason::Error(_) | Reason::Late(_))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Passed => f.write_str("passed"),
            Reason::Refused => f.write_str("connection refused"),
            Reason::Reset => f.write_str("connection reset"),
            Reason::Timeout => f.write_str("timeout"),
            Reason::Unreachable => f.write_str("unreachable"),
            Reason::BadStatus(code) => write!(f, "bad status {code}"),
            Reason::BadReply => f.write_str("bad reply"),
            Reason::Exit(code) => write!(f, "exit status {code}"),
            Reason::Error(text) => write!(f, "error: {text}"),
            Reason::Late(d) => write!(f, "prober late by {:.1} ms", d.as_secs_f64() * 1e3),
        }
    }
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
        assert_eq!(Reason::Refused.to_string(), "connection refused");
    }
}
