//! Silence in the traffic: a NAT backend that is sent clients' packets and
//! answers none of them for its service's `silence` (a silent drop, a hung
//! server) is probed at once with a short timeout, instead of waiting for
//! the probe timeout meant for its slowest moments.
//!
//! Every [`POLL`] the daemon reads all backends' counters, one system call
//! per map, and per backend notes when requests were first forwarded after
//! the last answer seen. For UDP a request is any packet (`BACKEND_STATS`,
//! which the data plane keeps anyway); for TCP it is a SYN and its answer a
//! SYN-ACK (`HANDSHAKES`, counted on those packets only): the trailing ACK
//! of a closed connection expects no answer. A silence is a hint, never a
//! verdict (a client can send what a healthy server ignores): it asks for
//! confirming probes, once per silence — a one-way flow costs one probe,
//! not one per poll. Only answers end a silence.
use std::time::Duration;

use log::warn;

use super::{Daemon, services::Hint};
use crate::{
    config::Protocol,
    datapath::{Traffic, TrafficReader},
    policy::Nanos,
};

/// The two counters the watch reads.
#[derive(Debug)]
pub(super) struct Readers {
    /// `BACKEND_STATS`: packets each way.
    pub packets: TrafficReader,
    /// `HANDSHAKES`: SYNs and SYN-ACKs.
    pub handshakes: TrafficReader,
}

/// How often the counters are read while some service watches for silence.
pub(super) const POLL: Duration = Duration::from_millis(1);

/// One backend's watch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Quiet {
    /// Counters at the last answer seen.
    rev: u64,
    fwd: u64,
    /// When packets were first seen forwarded after that answer.
    since: Option<Nanos>,
    /// This silence was reported.
    told: bool,
}

impl Quiet {
    /// Updates with the counters read at `now`: whether the silence has
    /// lasted `limit` and is not reported yet (it is then, by the caller).
    fn silent(&mut self, t: Traffic, now: Nanos, limit: Duration) -> bool {
        if t.rev != self.rev || t.fwd < self.fwd {
            // An answer (or counters that went back: a new data plane).
            *self = Quiet {
                rev: t.rev,
                fwd: t.fwd,
                ..Quiet::default()
            };
            return false;
        }
        if t.fwd == self.fwd || self.told {
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.saturating_sub(since) < limit {
            return false;
        }
        self.told = true;
        true
    }
}

impl Daemon {
    /// Whether any service watches for silence (else nothing is polled).
    pub(super) fn watches_silence(&self) -> bool {
        self.traffic.is_some() && self.services.silences().next().is_some()
    }

    /// One look at every watched backend's counters.
    pub(super) fn silence_tick(&mut self) {
        let watched: Vec<(u32, Duration, Protocol)> = self.services.silences().collect();
        let Some(last) = watched.iter().map(|(id, _, _)| *id).max() else {
            return;
        };
        let Some(readers) = self.traffic.as_mut() else {
            return;
        };
        let entries = (last + 1) * 2;
        let read = readers
            .packets
            .read(entries)
            .map(<[Traffic]>::to_vec)
            .and_then(|packets| {
                let handshakes = readers.handshakes.read(entries)?.to_vec();
                Ok((packets, handshakes))
            });
        let (packets, handshakes) = match read {
            Ok(both) => both,
            Err(e) => {
                warn!("reading the backends' traffic counters: {e}; silences are not watched");
                self.traffic = None;
                return;
            }
        };
        let now = Nanos(crate::datapath::monotonic_ns());
        self.quiet.resize(entries as usize, Quiet::default());
        for (id, limit, protocol) in watched {
            let counters = match protocol {
                Protocol::Tcp => &handshakes,
                Protocol::Udp => &packets,
            };
            for slot in 0..2u8 {
                let index = (id * 2 + u32::from(slot)) as usize;
                let (Some(t), Some(q)) = (counters.get(index), self.quiet.get_mut(index)) else {
                    continue;
                };
                if !q.silent(*t, now, limit) {
                    continue;
                }
                let (what, name) = self.services.silent(id, slot);
                let Some(name) = name.map(str::to_owned) else {
                    continue;
                };
                let action = match what {
                    Hint::Probing => "probing",
                    Hint::Pending => "pending",
                    Hint::Skipped => "skipped",
                };
                let backend = if slot == 0 { "primary" } else { "secondary" };
                self.metrics.signal(&name, backend, "silent", action);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(ms: u64) -> Nanos {
        Nanos(ms * 1_000_000)
    }

    fn t(fwd: u64, rev: u64) -> Traffic {
        Traffic { fwd, rev }
    }

    #[test]
    fn a_silence_is_reported_once_after_its_limit_and_ended_by_an_answer() {
        let mut q = Quiet::default();
        assert!(!q.silent(t(10, 10), at(0), 3 * MS));
        // Idle: nothing forwarded, no silence however long.
        assert!(!q.silent(t(10, 10), at(100), 3 * MS));
        // Forwarded, unanswered: counted from the first look that saw it.
        assert!(!q.silent(t(11, 10), at(101), 3 * MS));
        assert!(!q.silent(t(12, 10), at(103), 3 * MS));
        assert!(q.silent(t(13, 10), at(104), 3 * MS));
        // Once per silence (a one-way flow costs one probe).
        assert!(!q.silent(t(20, 10), at(200), 3 * MS));
        // An answer ends it; the next silence is reported again.
        assert!(!q.silent(t(21, 11), at(201), 3 * MS));
        assert!(!q.silent(t(22, 11), at(202), 3 * MS));
        assert!(q.silent(t(23, 11), at(205), 3 * MS));
    }

    #[test]
    fn answers_within_the_limit_never_make_a_silence() {
        let mut q = Quiet::default();
        for ms in 0..1000 {
            // A request every ms, its answer seen by the next look.
            assert!(!q.silent(t(ms + 1, ms), at(ms), MS));
        }
    }

    #[test]
    fn counters_that_go_back_start_afresh() {
        let mut q = Quiet::default();
        assert!(!q.silent(t(100, 50), at(0), MS));
        assert!(!q.silent(t(101, 50), at(1), MS));
        assert!(!q.silent(t(1, 0), at(5), MS));
        assert!(!q.silent(t(1, 0), at(10), MS));
    }
}
