//! Silence in the traffic: a NAT backend that is sent clients' requests and
//! answers none of them for its service's `silence` (a silent drop, a hung
//! server) is probed at once with a short timeout, instead of waiting for
//! the probe timeout meant for its slowest moments.
//!
//! The data plane raises two flags per backend (`SEEN`): a request was
//! forwarded (a UDP packet, a TCP SYN: a closed connection's last ACK
//! expects no answer), an answer came back (a UDP reply, a SYN-ACK); it
//! stores a flag only when it is clear. Every [`POLL`] the daemon takes and
//! clears them all through a memory mapping (no system call) and notes,
//! per backend, when requests were first seen after the last answer. A
//! silence is a hint, never a verdict (a client can send what a healthy
//! server ignores): it asks for confirming probes, once per silence — a
//! one-way flow costs one probe, not one per look. Only answers end a
//! silence.
use std::time::Duration;

use super::{Daemon, services::Hint};
use crate::policy::Nanos;

/// How often the flags are taken while some service watches for silence.
pub(super) const POLL: Duration = Duration::from_millis(1);

/// One backend's watch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Quiet {
    /// When requests were first seen after the last answer.
    since: Option<Nanos>,
    /// This silence was reported.
    told: bool,
    /// `since` is the look that saw requests with an answer: kept only if
    /// the next look sees requests again (continuous traffic), else those
    /// requests count as the answered ones.
    tentative: bool,
}

impl Quiet {
    /// Updates with the flags taken at `now`: whether the silence has lasted
    /// `limit` and is not reported yet (it is then, by the caller).
    fn silent(&mut self, (asked, answered): (bool, bool), now: Nanos, limit: Duration) -> bool {
        if answered {
            // Requests asked in the same look may be the unanswered ones
            // (sent after the answer): under continuous traffic a silence
            // counts from this look, one look sooner. Only a hint: at worst
            // a confirming probe, never a verdict.
            *self = Quiet {
                since: asked.then_some(now),
                told: false,
                tentative: true,
            };
            return false;
        }
        if std::mem::take(&mut self.tentative) && !asked {
            // No request since: those seen with the answer were answered.
            self.since = None;
            return false;
        }
        if self.told || (!asked && self.since.is_none()) {
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
    /// Whether any service watches for silence (else nothing is looked at).
    pub(super) fn watches_silence(&self) -> bool {
        self.seen.is_some() && self.services.silences().next().is_some()
    }

    /// One look at every watched backend's flags.
    pub(super) fn silence_tick(&mut self) {
        let Some(seen) = self.seen.as_ref() else {
            return;
        };
        let now = Nanos(crate::datapath::monotonic_ns());
        let watched: Vec<(u32, Duration)> = self.services.silences().collect();
        let mut silent = Vec::new();
        for (id, limit) in watched {
            for slot in 0..2u8 {
                let index = id * 2 + u32::from(slot);
                let Some(flags) = seen.take(index) else {
                    continue;
                };
                let i = index as usize;
                if self.quiet.len() <= i {
                    self.quiet.resize(i + 1, Quiet::default());
                }
                if self.quiet.get_mut(i).is_some_and(|q| q.silent(flags, now, limit)) {
                    silent.push((id, slot));
                }
            }
        }
        for (id, slot) in silent {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(ms: u64) -> Nanos {
        Nanos(ms * 1_000_000)
    }

    const ASKED: (bool, bool) = (true, false);
    const BOTH: (bool, bool) = (true, true);
    const IDLE: (bool, bool) = (false, false);

    #[test]
    fn a_silence_is_reported_once_after_its_limit_and_ended_by_an_answer() {
        let mut q = Quiet::default();
        // Idle: nothing forwarded, no silence however long.
        assert!(!q.silent(IDLE, at(0), 3 * MS));
        assert!(!q.silent(IDLE, at(100), 3 * MS));
        // Requests, unanswered: counted from the first look that saw them.
        assert!(!q.silent(ASKED, at(101), 3 * MS));
        assert!(!q.silent(ASKED, at(103), 3 * MS));
        // No more requests either: still unanswered.
        assert!(q.silent(IDLE, at(104), 3 * MS));
        // Once per silence (a one-way flow costs one probe).
        assert!(!q.silent(ASKED, at(200), 3 * MS));
        // An answer ends it; the next silence is reported again, counted
        // from the look that saw requests with the answer.
        assert!(!q.silent(BOTH, at(201), 3 * MS));
        assert!(!q.silent(ASKED, at(202), 3 * MS));
        assert!(q.silent(ASKED, at(204), 3 * MS));
        // Requests with an answer, then none: nothing is silent (one TCP
        // connection at a time: its SYN and SYN-ACK in one look).
        assert!(!q.silent(BOTH, at(250), 3 * MS));
        for ms in 251..260 {
            assert!(!q.silent(IDLE, at(ms), 3 * MS));
        }
        // An answer without requests starts nothing.
        assert!(!q.silent(BOTH, at(300), 3 * MS));
        assert!(!q.silent((false, true), at(301), 3 * MS));
        assert!(!q.silent(ASKED, at(302), 3 * MS));
        assert!(!q.silent(ASKED, at(304), 3 * MS));
        assert!(q.silent(ASKED, at(305), 3 * MS));
    }

    #[test]
    fn answers_within_the_limit_never_make_a_silence() {
        let mut q = Quiet::default();
        for ms in 0..1000 {
            // Requests every ms, answered within the next look.
            let flags = if ms % 2 == 0 { BOTH } else { ASKED };
            assert!(!q.silent(flags, at(ms), 3 * MS));
        }
    }
}
