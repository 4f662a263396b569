//! The decision machine: which backend of a service takes new flows. PURE —
//! no I/O, no clock reads, no tokio — so every rule is a unit test with a
//! fake clock: callers pass `now` (CLOCK_MONOTONIC, the clock
//! `bpf_ktime_get_ns` reads) with every input and carry out the returned
//! [`Effect`]s (write the switch state, log the event).
//!
//! # One backend's health ([`State`])
//! - `Unknown` until verdicts decide: the first pass makes it `Up`, `fall`
//!   consecutive failures make it `Down`, so a start is fast and one lost probe
//!   never fails over. At a fresh start an unknown backend counts as up; after
//!   [`Machine::adopt`] it keeps the up bit the data plane had.
//! - `Up` → `Down` after `fall` consecutive failures; `Down` → `Up` after
//!   `rise` consecutive passes.
//! - A verdict whose probe was sent before the newest verdict already applied
//!   to that backend is stale and ignored (probes overlap).
//! - [`Input::PathDown`] (netlink: link or neighbour gone, a local signal the
//!   network cannot forge) takes the backend down at once (reason `LinkDown`,
//!   detection 0); verdicts of probes sent before it are stale from then on,
//!   and `rise` passes bring it back.
//!
//! # Flap damping ([`FlapDamping`])
//! Every `Up` → `Down` transition is remembered for `window`. When a backend
//! reaches `rise` passes while it has gone down `n > max_flaps` times within
//! the window, it stays `Down` ("held") for `hold × 2^(n − max_flaps − 1)`,
//! capped at `max_hold`, and only then comes up. A failure during the hold
//! cancels it; the next rise is judged again. `window = 0` disables damping.
//!
//! # One service ([`Machine`])
//! A backend is *usable* when up (or unknown with its up bit set), *eligible*
//! when usable and not drained. Without an operator override, traffic
//! (`active`) moves only to a strictly better backend (eligible > usable but
//! drained > down), plus the automatic failback:
//! - The active backend goes down and the other is usable → failover.
//! - Both down → `active` stays; `all_down` Drop/Pass go into [`Desired`].
//!   The first backend usable again takes the traffic (`Recovered`).
//! - Failback `Auto`: an eligible primary that has been `Up` continuously for
//!   `failback_delay` (and, when `gated`, whose latest gate verdict passed for
//!   a probe sent after it came up) takes the traffic back. `Manual`: only an
//!   operator flip returns it; `auto` and `undrain` leave traffic where it is.
//! - Drain is a preference, health is a fact: a drained backend takes no new
//!   flows while the other is eligible, yet a drained up backend still beats a
//!   down one. Draining both keeps `active` where it is.
//! - An override ([`Input::Flip`]) pins `active`. It is refused towards a
//!   down or drained backend unless forced. It ends at its `until`, when the
//!   operator says `auto`, and — unless forced — when its backend goes down
//!   (`OverrideBroken`) or is drained; then automatic control decides again.
//!
//! # Promotion and fencing
//! With a `promote` hook ([`Policy::promote`]), traffic moves to the
//! secondary only once the hook has run for it: where automatic control or
//! an override would move it, the machine emits [`Effect::Promote`] (one
//! promotion at a time, numbered) and keeps `active` until
//! [`Input::Promoted`] answers. Meanwhile a down or fenced active backend
//! makes the service count as all down. A failed promotion moves traffic
//! anyway ([`PromoteFailure::Move`]) or keeps it and tries again after
//! [`PROMOTE_RETRY`] ([`PromoteFailure::Stay`]). A promotion, once started,
//! is never cancelled (it may already have made the standby writable); a
//! move away from the promoted backend forgets it, so the next move there
//! promotes again.
//!
//! With [`Policy::fence`], the decision to move traffic from the primary to
//! the secondary (before any promotion) fences the primary: it counts as
//! down whatever its probes say, is refused as a flip target even with
//! force, and `all_down = keep` drops rather than send to it. The fence is
//! operator intent (persisted) and ends only by [`Input::Unfence`].
//!
//! Due timers (an override's end, a hold's end, the failback delay, a
//! promotion's retry) run at
//! the start of every step; [`Input::Tick`] at [`Machine::next_deadline`]
//! only makes sure a step happens in time. Time never runs backwards: an
//! older `now` counts as the newest seen.
//!
//! Each step emits at most one [`Effect::Write`], only when the desired state
//! differs from the previous one, then its events: one for what happened to
//! traffic or health, plus one for an override that ended on the side, plus
//! notices (flap hold, failback waiting for the gate).
mod backend;
mod service;
#[cfg(test)]
mod tests;

use std::{fmt, ops::Add, time::Duration};

use serde::{Deserialize, Serialize};

pub use backend::{BackendView, Reason, State};
pub use service::{
    Cause, Desired, Effect, Event, GateVerdict, Input, Intent, Machine, Override, Promotion, Refused, Seed,
    View,
};

/// A CLOCK_MONOTONIC timestamp in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_sub(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Nanos {
    type Output = Nanos;

    /// Saturates at `u64::MAX` ns (some 584 years of uptime).
    fn add(self, d: Duration) -> Nanos {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Nanos(self.0.saturating_add(d))
    }
}

/// One of a service's two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// The backend traffic belongs to.
    Primary,
    /// The standby.
    Secondary,
}

impl Slot {
    /// Both slots, in index order.
    pub const ALL: [Slot; 2] = [Slot::Primary, Slot::Secondary];

    /// 0 for the primary, 1 for the secondary (as in the data plane's maps).
    pub const fn index(self) -> usize {
        match self {
            Slot::Primary => 0,
            Slot::Secondary => 1,
        }
    }

    /// The other slot.
    pub const fn other(self) -> Slot {
        match self {
            Slot::Primary => Slot::Secondary,
            Slot::Secondary => Slot::Primary,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::Primary => "primary",
            Slot::Secondary => "secondary",
        })
    }
}

/// Whether traffic returns to the primary by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// After `failback_delay` of continuous primary health (and the gate, if any).
    #[default]
    Auto,
    /// Only when an operator flips it back.
    Manual,
}

/// What happens to new traffic when both backends are down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllDown {
    /// Keep sending to the last active backend.
    #[default]
    Keep,
    /// Drop the service's packets in XDP.
    Drop,
    /// Hand them to the kernel stack untouched.
    Pass,
}

impl fmt::Display for AllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllDown::Keep => "keep",
            AllDown::Drop => "drop",
            AllDown::Pass => "pass",
        })
    }
}

/// What a failed or timed-out `promote` hook does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromoteFailure {
    /// Traffic stays where it is (the service counts as all down while its
    /// active backend is down or fenced) and the hook runs again after
    /// [`PROMOTE_RETRY`].
    #[default]
    Stay,
    /// Traffic moves anyway.
    Move,
}

impl fmt::Display for PromoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PromoteFailure::Stay => "stay",
            PromoteFailure::Move => "move",
        })
    }
}

/// How long after a failed promotion it is tried again (`on_promote_failure = "stay"`).
pub const PROMOTE_RETRY: Duration = Duration::from_secs(2);

/// Flap damping (see the module docs for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlapDamping {
    /// How long an `Up` → `Down` transition counts; zero disables damping.
    pub window: Duration,
    /// Transitions within `window` tolerated without a hold.
    pub max_flaps: u32,
    /// Hold for the first transition beyond `max_flaps`; doubles per further one.
    pub hold: Duration,
    /// Upper bound of a hold.
    pub max_hold: Duration,
}

impl Default for FlapDamping {
    /// 60 s window, 3 flaps tolerated, then 5 s doubling up to 60 s: a backend
    /// that went down a fourth time within a minute waits 5 s before taking
    /// traffic again, a fifth time 10 s, and so on.
    fn default() -> Self {
        FlapDamping {
            window: Duration::from_secs(60),
            max_flaps: 3,
            hold: Duration::from_secs(5),
            max_hold: Duration::from_secs(60),
        }
    }
}

/// One service's policy. The machine's own type; the daemon maps the
/// configuration onto it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Consecutive passes that bring a down backend up (0 counts as 1).
    pub rise: u32,
    /// Consecutive failures that take an up or unknown backend down (0 counts as 1).
    pub fall: u32,
    /// Whether traffic returns to the primary by itself.
    pub failback: Failback,
    /// Continuous primary health required before an automatic failback.
    pub failback_delay: Duration,
    /// Both backends down.
    pub all_down: AllDown,
    /// Percent of new flows for the secondary while both are up (above 100 counts as 100);
    /// only copied into [`Desired`], the data plane applies it.
    pub share: u8,
    /// A `failback_gate` probe exists: automatic failback also waits for its pass.
    pub gated: bool,
    /// Flap damping.
    pub flap: FlapDamping,
    /// A `promote` hook exists: traffic moves to the secondary only once it
    /// has run (see the module docs); what its failure does.
    #[serde(default)]
    pub promote: Option<PromoteFailure>,
    /// Traffic leaving the primary for the secondary fences the primary:
    /// it counts as down until an operator unfences it.
    #[serde(default)]
    pub fence: bool,
}

impl Default for Policy {
    /// The configuration's defaults: rise 3, fall 2, automatic failback after
    /// 1 s, keep on all down, no share, no gate, default flap damping, no
    /// promotion, no fence.
    fn default() -> Self {
        Policy {
            rise: 3,
            fall: 2,
            failback: Failback::Auto,
            failback_delay: Duration::from_secs(1),
            all_down: AllDown::Keep,
            share: 0,
            gated: false,
            flap: FlapDamping::default(),
            promote: None,
            fence: false,
        }
    }
}

impl Policy {
    fn rise_n(&self) -> u32 {
        self.rise.max(1)
    }

    fn fall_n(&self) -> u32 {
        self.fall.max(1)
    }

    fn share_pct(&self) -> u8 {
        self.share.min(100)
    }
}

/// The operator behind a request: the login uid behind sudo, resolved by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Who {
    /// Login uid.
    pub uid: u32,
    /// User name, when it resolves.
    pub name: Option<String>,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// "3.2 s", "15 ms", "250 µs": for messages an operator reads.
fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} µs", d.as_micros())
    }
}
