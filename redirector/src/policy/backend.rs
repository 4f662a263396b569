//! One backend's health: unknown → up/down with rise/fall hysteresis, stale
//! verdicts, the trusted path-down signal and flap damping. The verdict's
//! result (pass/fail) is kept apart from its [`Reason`].
use std::{collections::VecDeque, fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::{FlapDamping, Nanos, Policy, Slot};

/// Why a probe passed or failed (kept apart from the verdict, as HAProxy
/// does), or why a backend went down. Probes ([`crate::health`]) report it;
/// the machines judge it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The probe passed.
    Passed,
    /// Connection refused (TCP RST to the SYN, ICMP port unreachable for UDP).
    Refused,
    /// The same refusal of a client's packet, seen in the traffic as
    /// evidence (from the backend's own address and next hop, on a
    /// `backend_interfaces` link): counted like a refused probe.
    RefusedInTraffic,
    /// Connection reset after it was established.
    Reset,
    /// No answer within the probe's timeout.
    Timeout,
    /// ICMP host/network unreachable, or no route.
    Unreachable,
    /// HTTP status outside the accepted ones.
    BadStatus(u16),
    /// An answer that is not the expected one.
    BadReply,
    /// An exec probe exited with this non-zero status.
    Exit(i32),
    /// The probe could not run here (no fd, no buffer, no source address,
    /// a local firewall's EPERM, a missing exec binary …); the text says why.
    /// The gateway's own trouble: never a verdict about the backend.
    Error(String),
    /// No answer, but the prober first looked this long after its deadline:
    /// this host was too busy to tell a silent backend from its own delay.
    /// No verdict.
    Late(Duration),
    /// The kernel reports the link or neighbour towards the backend gone.
    LinkDown,
    /// Set by an operator action.
    Operator,
    /// Down for another service of its group (named), which fails over with it.
    Group(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Passed => f.write_str("passed"),
            Reason::Refused => f.write_str("refused"),
            Reason::RefusedInTraffic => f.write_str("refused (seen in the traffic)"),
            Reason::Reset => f.write_str("reset"),
            Reason::Timeout => f.write_str("timeout"),
            Reason::Unreachable => f.write_str("unreachable"),
            Reason::BadStatus(status) => write!(f, "bad status {status}"),
            Reason::BadReply => f.write_str("bad reply"),
            Reason::Exit(code) => write!(f, "exit status {code}"),
            Reason::Error(e) => write!(f, "error: {e}"),
            Reason::Late(d) => write!(f, "prober late by {:.1} ms", d.as_secs_f64() * 1e3),
            Reason::LinkDown => f.write_str("link down"),
            Reason::Operator => f.write_str("operator"),
            Reason::Group(other) => write!(f, "down for {other} of its group"),
        }
    }
}

impl Reason {
    /// An answer from the network that says "nobody home": refused, reset or
    /// unreachable. Worth confirming at once, because one could be forged
    /// while several in a row are not.
    pub fn is_hard(&self) -> bool {
        matches!(
            self,
            Reason::Refused | Reason::RefusedInTraffic | Reason::Reset | Reason::Unreachable
        )
    }

    /// The probe could not run, or could not judge, on this host: no
    /// verdict about the backend.
    pub fn is_local(&self) -> bool {
        matches!(self, Reason::Error(_) | Reason::Late(_))
    }
}

/// A backend's health state as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No verdict has decided yet.
    Unknown,
    /// Up.
    Up,
    /// Down (possibly held by flap damping).
    Down,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        })
    }
}

/// One backend's health as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// Which backend.
    pub slot: Slot,
    /// Health state.
    pub state: State,
    /// When the current state began.
    pub since: Nanos,
    /// Counts as up in the data plane (up, or unknown with the up bit set).
    pub usable: bool,
    /// Drained by an operator.
    pub drained: bool,
    /// Reason of the latest verdict (or `LinkDown`).
    pub reason: Option<Reason>,
    /// When the latest passing verdict arrived.
    pub last_ok: Option<Nanos>,
    /// Latency of the latest verdict.
    pub latency: Option<Duration>,
    /// Consecutive passes so far.
    pub passes: u32,
    /// Consecutive failures so far.
    pub fails: u32,
    /// Flap damping holds it down until then.
    pub held_until: Option<Nanos>,
    /// `Up` → `Down` transitions within the flap window.
    pub flaps: u32,
}

/// Health state with the data each state needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Undecided; `up` is the up bit the data plane has (true at a fresh start).
    Unknown {
        up: bool,
    },
    Up,
    /// `held_until`: `rise` passes reached, but flap damping holds it down.
    Down {
        held_until: Option<Nanos>,
    },
}

/// The current run of equal verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streak {
    None,
    Passing(u32),
    /// `first_sent`: when the run's first failed probe was sent (detection time).
    Failing {
        count: u32,
        first_sent: Nanos,
    },
}

/// What one input did to a backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// A stale verdict, ignored.
    Stale,
    /// Applied; the state did not change.
    Same,
    /// Came up.
    Up,
    /// Went down; `detection` runs from the first failed probe's send.
    Down { detection: Duration },
    /// Reached `rise` but flap damping holds it down until `until`.
    Held { until: Nanos, flaps: u32 },
}

/// Remembered transitions are bounded even with a zero hold; far more than
/// any doubling needs.
const MAX_FLAPS_KEPT: usize = 1024;

/// One backend's health.
#[derive(Debug, Clone)]
pub(super) struct Backend {
    health: Health,
    since: Nanos,
    reason: Option<Reason>,
    last_ok: Option<Nanos>,
    latency: Option<Duration>,
    /// Send time of the newest verdict applied: older ones are stale.
    newest_sent: Option<Nanos>,
    streak: Streak,
    /// Times of `Up` → `Down` transitions within the flap window, oldest first.
    flaps: VecDeque<Nanos>,
    /// The down episode (its `since`) whose hold was reported: a backend that
    /// keeps flapping while held is told once, not on every rise.
    hold_told: Option<Nanos>,
}

impl Backend {
    /// An undecided backend whose data-plane up bit is `up`.
    pub(super) fn unknown(now: Nanos, up: bool) -> Backend {
        Self::adopted(now, up, Vec::new())
    }

    /// An undecided backend of an adopted data plane, with its flap history
    /// (the `Up` → `Down` times a previous daemon saw). One the data plane
    /// had down must pass `rise` probes, and flap damping, like any down
    /// backend: a restart is no shortcut back into traffic.
    pub(super) fn adopted(now: Nanos, up: bool, flaps: Vec<Nanos>) -> Backend {
        let mut flaps = VecDeque::from(flaps);
        while flaps.len() > MAX_FLAPS_KEPT {
            flaps.pop_front();
        }
        Backend {
            health: Health::Unknown { up },
            since: now,
            reason: None,
            last_ok: None,
            latency: None,
            newest_sent: None,
            streak: Streak::None,
            flaps,
            hold_told: None,
        }
    }

    /// Times of its `Up` → `Down` transitions still remembered (to persist).
    pub(super) fn flap_times(&self) -> Vec<Nanos> {
        self.flaps.iter().copied().collect()
    }

    /// Counts as up in the data plane.
    pub(super) fn usable(&self) -> bool {
        matches!(self.health, Health::Up | Health::Unknown { up: true })
    }

    /// It has had a verdict (it is not unknown).
    pub(super) fn known(&self) -> bool {
        !matches!(self.health, Health::Unknown { .. })
    }

    /// When it came up, if it is `Up` (unknown does not count for failback).
    pub(super) fn up_since(&self) -> Option<Nanos> {
        match self.health {
            Health::Up => Some(self.since),
            _ => None,
        }
    }

    /// End of a flap-damping hold.
    pub(super) fn held_until(&self) -> Option<Nanos> {
        match self.health {
            Health::Down { held_until } => held_until,
            _ => None,
        }
    }

    /// Reason of the latest verdict.
    pub(super) fn reason(&self) -> Option<&Reason> {
        self.reason.as_ref()
    }

    /// When the current state began.
    pub(super) fn since(&self) -> Nanos {
        self.since
    }

    /// Applies a probe verdict.
    pub(super) fn verdict(
        &mut self,
        now: Nanos,
        sent: Nanos,
        ok: bool,
        reason: Reason,
        latency: Duration,
        policy: &Policy,
    ) -> Change {
        if self.newest_sent.is_some_and(|newest| sent < newest) {
            return Change::Stale;
        }
        self.newest_sent = Some(sent);
        self.reason = Some(reason);
        self.latency = Some(latency);
        if ok {
            self.last_ok = Some(now);
            let passes = match self.streak {
                Streak::Passing(n) => n.saturating_add(1),
                _ => 1,
            };
            self.streak = Streak::Passing(passes);
            match self.health {
                Health::Unknown { up: true } => self.enter(Health::Up, now),
                Health::Down { held_until: None } | Health::Unknown { up: false }
                    if passes >= policy.rise_n() =>
                {
                    match self.hold(now, &policy.flap) {
                        Some((until, flaps)) => {
                            // Still down: `since` keeps the time it went down.
                            self.health = Health::Down {
                                held_until: Some(until),
                            };
                            if self.hold_told == Some(self.since) {
                                // Held again in the same episode (it failed
                                // during the hold, then rose): status shows it.
                                Change::Same
                            } else {
                                self.hold_told = Some(self.since);
                                Change::Held { until, flaps }
                            }
                        }
                        None => self.enter(Health::Up, now),
                    }
                }
                Health::Up | Health::Down { .. } | Health::Unknown { up: false } => Change::Same,
            }
        } else {
            let (count, first_sent) = match self.streak {
                Streak::Failing { count, first_sent } => (count.saturating_add(1), first_sent),
                _ => (1, sent),
            };
            self.streak = Streak::Failing { count, first_sent };
            match self.health {
                Health::Up | Health::Unknown { .. } if count >= policy.fall_n() => {
                    self.go_down(now, &policy.flap);
                    Change::Down {
                        detection: now.saturating_sub(first_sent),
                    }
                }
                Health::Down { held_until: Some(_) } => {
                    // A failure during the hold: it has to rise again.
                    self.health = Health::Down { held_until: None };
                    Change::Same
                }
                Health::Up | Health::Unknown { .. } | Health::Down { held_until: None } => Change::Same,
            }
        }
    }

    /// The kernel says the path to the backend is gone: down at once.
    pub(super) fn path_down(&mut self, now: Nanos, flap: &FlapDamping) -> Change {
        // Probes sent before the path went away prove nothing about it now.
        self.newest_sent = Some(self.newest_sent.map_or(now, |newest| newest.max(now)));
        self.reason = Some(Reason::LinkDown);
        self.streak = Streak::None;
        match self.health {
            Health::Up | Health::Unknown { .. } => {
                self.go_down(now, flap);
                Change::Down {
                    detection: Duration::ZERO,
                }
            }
            Health::Down { .. } => {
                self.health = Health::Down { held_until: None };
                Change::Same
            }
        }
    }

    /// Ends a flap-damping hold that is over.
    pub(super) fn timers(&mut self, now: Nanos) -> Change {
        match self.health {
            Health::Down {
                held_until: Some(until),
            } if until <= now => self.enter(Health::Up, now),
            _ => Change::Same,
        }
    }

    /// What `status` shows.
    pub(super) fn view(&self, slot: Slot, drained: bool, now: Nanos, flap: &FlapDamping) -> BackendView {
        let (passes, fails) = match self.streak {
            Streak::None => (0, 0),
            Streak::Passing(n) => (n, 0),
            Streak::Failing { count, .. } => (0, count),
        };
        let flaps = self
            .flaps
            .iter()
            .filter(|&&t| now.saturating_sub(t) < flap.window)
            .count();
        BackendView {
            slot,
            state: match self.health {
                Health::Unknown { .. } => State::Unknown,
                Health::Up => State::Up,
                Health::Down { .. } => State::Down,
            },
            since: self.since,
            usable: self.usable(),
            drained,
            reason: self.reason.clone(),
            last_ok: self.last_ok,
            latency: self.latency,
            passes,
            fails,
            held_until: self.held_until(),
            flaps: u32::try_from(flaps).unwrap_or(u32::MAX),
        }
    }

    fn enter(&mut self, health: Health, now: Nanos) -> Change {
        self.health = health;
        self.since = now;
        match health {
            Health::Up => Change::Up,
            Health::Unknown { .. } | Health::Down { .. } => Change::Same,
        }
    }

    fn go_down(&mut self, now: Nanos, flap: &FlapDamping) {
        if self.health == Health::Up {
            self.forget_flaps(now, flap.window);
            self.flaps.push_back(now);
            if self.flaps.len() > MAX_FLAPS_KEPT {
                self.flaps.pop_front();
            }
        }
        self.enter(Health::Down { held_until: None }, now);
    }

    /// The hold due now, and the flap count behind it; `None` if not damped.
    fn hold(&mut self, now: Nanos, flap: &FlapDamping) -> Option<(Nanos, u32)> {
        self.forget_flaps(now, flap.window);
        let flaps = u32::try_from(self.flaps.len()).unwrap_or(u32::MAX);
        let excess = flaps.checked_sub(flap.max_flaps).filter(|&e| e > 0)?;
        let factor = 1u32.checked_shl(excess - 1).unwrap_or(u32::MAX);
        let hold = flap
            .hold
            .checked_mul(factor)
            .unwrap_or(flap.max_hold)
            .min(flap.max_hold);
        (!hold.is_zero()).then(|| (now + hold, flaps))
    }

    fn forget_flaps(&mut self, now: Nanos, window: Duration) {
        while self
            .flaps
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= window)
        {
            self.flaps.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn policy() -> Policy {
        Policy {
            rise: 3,
            fall: 2,
            ..Policy::default()
        }
    }

    fn pass(b: &mut Backend, at_ms: u64) -> Change {
        let t = Nanos(at_ms * MS);
        b.verdict(t, t, true, Reason::Passed, Duration::ZERO, &policy())
    }

    fn fail(b: &mut Backend, at_ms: u64) -> Change {
        let t = Nanos(at_ms * MS);
        b.verdict(t, t, false, Reason::Timeout, Duration::ZERO, &policy())
    }

    fn state(b: &Backend, now_ms: u64) -> State {
        b.view(Slot::Primary, false, Nanos(now_ms * MS), &policy().flap)
            .state
    }

    #[test]
    fn unknown_is_usable_and_up_on_first_pass() {
        let mut b = Backend::unknown(Nanos(0), true);
        assert!(b.usable());
        assert_eq!(b.up_since(), None, "unknown does not count for failback");
        assert_eq!(pass(&mut b, 1), Change::Up);
        assert_eq!(state(&b, 1), State::Up);
        assert_eq!(b.up_since(), Some(Nanos(MS)));
    }

    #[test]
    fn unknown_goes_down_after_fall_failures_not_one() {
        let mut b = Backend::unknown(Nanos(0), true);
        assert_eq!(fail(&mut b, 1), Change::Same);
        assert!(b.usable(), "one lost probe never takes it down");
        assert_eq!(
            fail(&mut b, 2),
            Change::Down {
                detection: Duration::from_millis(1)
            }
        );
        assert!(!b.usable());
    }

    #[test]
    fn rise_and_fall_hysteresis() {
        let mut b = Backend::unknown(Nanos(0), true);
        pass(&mut b, 1);
        // A pass between failures restarts the count.
        assert_eq!(fail(&mut b, 2), Change::Same);
        assert_eq!(pass(&mut b, 3), Change::Same);
        assert_eq!(fail(&mut b, 4), Change::Same);
        assert_eq!(
            fail(&mut b, 5),
            Change::Down {
                detection: Duration::from_millis(1)
            }
        );
        assert_eq!(b.since(), Nanos(5 * MS));
        assert_eq!(pass(&mut b, 6), Change::Same);
        assert_eq!(pass(&mut b, 7), Change::Same);
        assert_eq!(fail(&mut b, 8), Change::Same);
        assert_eq!(pass(&mut b, 9), Change::Same);
        assert_eq!(pass(&mut b, 10), Change::Same);
        let v = b.view(Slot::Primary, false, Nanos(10 * MS), &policy().flap);
        assert_eq!((v.state, v.passes, v.fails), (State::Down, 2, 0));
        assert_eq!(pass(&mut b, 11), Change::Up);
        assert_eq!(b.last_ok, Some(Nanos(11 * MS)));
    }

    #[test]
    fn stale_verdict_is_ignored() {
        let p = policy();
        let mut b = Backend::unknown(Nanos(0), true);
        assert_eq!(
            b.verdict(Nanos(20), Nanos(10), true, Reason::Passed, Duration::ZERO, &p),
            Change::Up
        );
        // Sent at 5, answered after the one sent at 10: ignored.
        let stale = b.verdict(Nanos(30), Nanos(5), false, Reason::Timeout, Duration::ZERO, &p);
        assert_eq!(stale, Change::Stale);
        assert_eq!(b.reason(), Some(&Reason::Passed));
        let v = b.view(Slot::Primary, false, Nanos(30), &p.flap);
        assert_eq!((v.passes, v.fails), (1, 0));
    }

    #[test]
    fn path_down_is_immediate_and_older_probes_are_stale() {
        let p = policy();
        let mut b = Backend::unknown(Nanos(0), true);
        pass(&mut b, 1);
        assert_eq!(
            b.path_down(Nanos(10 * MS), &p.flap),
            Change::Down {
                detection: Duration::ZERO
            }
        );
        assert_eq!(b.reason(), Some(&Reason::LinkDown));
        // Sent before the link went away.
        let t = Nanos(9 * MS);
        assert_eq!(
            b.verdict(Nanos(11 * MS), t, true, Reason::Passed, Duration::ZERO, &p),
            Change::Stale
        );
        assert_eq!(pass(&mut b, 12), Change::Same);
        assert_eq!(pass(&mut b, 13), Change::Same);
        assert_eq!(pass(&mut b, 14), Change::Up);
    }

    #[test]
    fn flap_hold_doubles_and_is_capped() {
        let flap = FlapDamping {
            window: Duration::from_secs(60),
            max_flaps: 1,
            hold: Duration::from_secs(5),
            max_hold: Duration::from_secs(12),
        };
        let mut b = Backend::unknown(Nanos(0), true);
        let mut holds = Vec::new();
        for i in 1..=4u64 {
            let t = Nanos(i * 1_000_000_000);
            b.enter(Health::Up, t);
            b.go_down(t, &flap);
            holds.push(b.hold(t, &flap).map(|(until, n)| (until.saturating_sub(t), n)));
        }
        assert_eq!(
            holds,
            [
                None,
                Some((Duration::from_secs(5), 2)),
                Some((Duration::from_secs(10), 3)),
                Some((Duration::from_secs(12), 4)),
            ]
        );
        // Old transitions leave the window.
        let late = Nanos(4_000_000_000) + Duration::from_secs(60);
        assert_eq!(b.hold(late, &flap), None);
        assert!(b.flaps.is_empty());
    }

    #[test]
    fn zero_window_disables_damping() {
        let flap = FlapDamping {
            window: Duration::ZERO,
            max_flaps: 0,
            ..FlapDamping::default()
        };
        let mut b = Backend::unknown(Nanos(0), true);
        b.enter(Health::Up, Nanos(1));
        b.go_down(Nanos(1), &flap);
        assert_eq!(b.hold(Nanos(1), &flap), None);
        assert!(b.flaps.is_empty());
    }
}
