//! One service's machine: which backend is active, failback (auto with delay
//! and gate, or manual), all down, operator overrides and drains, share.
use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    AllDown, Failback, Nanos, PROMOTE_RETRY, Policy, PromoteFailure, Slot, Who,
    backend::{Backend, BackendView, Change, Reason},
    human,
};

/// Something the machine learns: a verdict, a kernel signal, an operator
/// request or the passing of time. Every input comes with `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A health probe's verdict on one backend.
    Probe {
        /// The backend probed.
        slot: Slot,
        /// When the probe was sent: detection time, and older-than-applied verdicts are stale.
        sent: Nanos,
        /// Passed or failed.
        ok: bool,
        /// Why.
        reason: Reason,
        /// Time from send to verdict.
        latency: Duration,
    },
    /// A verdict of the `failback_gate` probe (it judges the primary only).
    Gate {
        /// When the probe was sent.
        sent: Nanos,
        /// Passed or failed.
        ok: bool,
        /// Why.
        reason: Reason,
    },
    /// The kernel (netlink) says the link or neighbour towards the backend is gone.
    PathDown {
        /// The backend behind it.
        slot: Slot,
    },
    /// Operator: pin traffic to a backend.
    Flip {
        /// The backend to pin.
        to: Slot,
        /// The pin ends at this time; `None`: until `auto`.
        until: Option<Nanos>,
        /// Pin even a down or drained backend, and keep the pin when it goes down.
        force: bool,
        /// Who asked.
        who: Who,
        /// Their comment.
        why: Option<String>,
    },
    /// Operator: drop any override, automatic control decides again.
    Auto {
        /// Who asked.
        who: Who,
    },
    /// Operator: drain (no new flows) or undrain a backend.
    Drain {
        /// The backend.
        slot: Slot,
        /// Drain (true) or undrain (false).
        drained: bool,
        /// Who asked.
        who: Who,
        /// Their comment.
        why: Option<String>,
    },
    /// Another service of the group sees `slot` down (`by`: its name) or no
    /// longer (`None`): it counts as down here too.
    Group {
        /// The backend.
        slot: Slot,
        /// The member that sees it down, if any.
        by: Option<String>,
    },
    /// Operator: lift a backend's fence.
    Unfence {
        /// The backend.
        slot: Slot,
        /// Who asked.
        who: Who,
        /// Their comment.
        why: Option<String>,
    },
    /// The `promote` hook started by [`Effect::Promote`] ended.
    Promoted {
        /// The promotion's number, from the effect (an answer to an older one is ignored).
        seq: u64,
        /// Exit status 0.
        ok: bool,
        /// How long the hook ran.
        took: Duration,
        /// What went wrong (exit status, timeout), for a failure.
        detail: String,
    },
    /// Time passed: deliver at [`Machine::next_deadline`].
    Tick,
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write this switch state to the data plane (always differs from the previous one).
    Write(Desired),
    /// Record and log this event.
    Event(Event),
    /// Run the `promote` hook for `event`'s [`Cause::Promoting`] and answer
    /// with [`Input::Promoted`] carrying `seq`.
    Promote {
        /// The promotion's number.
        seq: u64,
        /// The promotion, as its event tells it (service, from, to, why, who).
        event: Event,
    },
}

/// The switch state the data plane should have: one atomic map write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Desired {
    /// Backend new flows go to.
    pub active: Slot,
    /// Per slot ([`Slot::index`]): counts as up.
    pub up: [bool; 2],
    /// Per slot: drained (established flows stay, new ones go elsewhere).
    pub drained: [bool; 2],
    /// `Some(Drop | Pass)` only while both are down and the policy says so; never `Some(Keep)`.
    pub all_down: Option<AllDown>,
    /// Percent of new flows for the secondary while both are up.
    pub share: u8,
}

/// A transition worth telling the operator about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Service name.
    pub service: String,
    /// When it happened.
    pub at: Nanos,
    /// Active backend before.
    pub from: Slot,
    /// Active backend after (equal to `from` when traffic did not move).
    pub to: Slot,
    /// Why.
    pub cause: Cause,
    /// For a backend going down: from the send of the first failed probe of
    /// the streak that took it down to now (zero for a path-down signal).
    pub detection: Option<Duration>,
    /// The operator behind it, if any.
    pub who: Option<Who>,
    /// The operator's comment.
    pub why: Option<String>,
}

/// Why an [`Event`] happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// The active backend went down; traffic moved to the other one.
    Failover {
        /// The backend that went down.
        slot: Slot,
        /// Its latest reason.
        reason: Option<Reason>,
    },
    /// Traffic returned to the primary by itself (delay and gate satisfied).
    Failback,
    /// Failback is due but waits for a passing `failback_gate` verdict (a notice, once per up period).
    FailbackGated {
        /// Reason of the latest gate verdict, if any.
        gate: Option<Reason>,
    },
    /// Both backends are down.
    AllDown {
        /// What the data plane does with new traffic now.
        action: AllDown,
    },
    /// A backend is up again after both were down; it has the traffic.
    Recovered {
        /// The backend now active.
        slot: Slot,
    },
    /// An operator pinned traffic.
    ManualFlip {
        /// Pinned even if down or drained, and stays pinned if it goes down.
        force: bool,
        /// End of the pin.
        until: Option<Nanos>,
    },
    /// An override reached its end; automatic control decides again.
    OverrideExpired,
    /// The pinned backend went down and the pin was not forced: automatic control took over.
    OverrideBroken {
        /// The pinned backend.
        slot: Slot,
        /// Its latest reason.
        reason: Option<Reason>,
    },
    /// An operator dropped the override.
    Auto,
    /// A backend was drained (with `who`), or traffic left a drained backend (without).
    Drain {
        /// The drained backend.
        slot: Slot,
    },
    /// A backend was undrained.
    Undrain {
        /// The backend.
        slot: Slot,
    },
    /// A backend's up bit changed without a cause above.
    HealthChange {
        /// The backend.
        slot: Slot,
        /// Up now.
        up: bool,
        /// Its latest reason.
        reason: Option<Reason>,
    },
    /// Flap damping holds a backend down although it passed `rise` probes (a notice).
    FlapHold {
        /// The backend.
        slot: Slot,
        /// End of the hold.
        until: Nanos,
        /// Its `Up` → `Down` transitions within the flap window.
        flaps: u32,
    },
    /// Traffic leaves the primary for the secondary and `fence = true`: the
    /// primary takes no traffic until an operator unfences it.
    Fenced {
        /// The fenced backend.
        slot: Slot,
    },
    /// An operator lifted a fence.
    Unfenced {
        /// The backend.
        slot: Slot,
    },
    /// The `promote` hook runs for `slot` before traffic moves there.
    Promoting {
        /// The backend being promoted.
        slot: Slot,
        /// Why traffic is to move.
        on: Box<Cause>,
    },
    /// The `promote` hook ended; traffic moved (unless `slot` can no longer take it).
    Promoted {
        /// The promoted backend.
        slot: Slot,
        /// How long the hook ran.
        took: Duration,
        /// Set when the hook failed and traffic moved anyway (`on_promote_failure = "move"`).
        failed: Option<String>,
    },
    /// The `promote` hook failed; traffic stays and the hook runs again at `retry`.
    PromoteFailed {
        /// The backend.
        slot: Slot,
        /// How long the hook ran.
        took: Duration,
        /// What went wrong.
        detail: String,
        /// When it runs again.
        retry: Nanos,
    },
    /// A new policy changed the desired state.
    PolicyChange,
    /// The data plane's state (adopted at restart) differed from the machine's; rewritten.
    Resync,
}

fn with_reason(f: &mut fmt::Formatter<'_>, reason: &Option<Reason>) -> fmt::Result {
    match reason {
        Some(reason) => write!(f, " ({reason})"),
        None => Ok(()),
    }
}

impl Cause {
    /// A short snake_case name of the cause (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Failover { .. } => "failover",
            Cause::Failback => "failback",
            Cause::FailbackGated { .. } => "failback_gated",
            Cause::AllDown { .. } => "all_down",
            Cause::Recovered { .. } => "recovered",
            Cause::ManualFlip { .. } => "manual_flip",
            Cause::OverrideExpired => "override_expired",
            Cause::OverrideBroken { .. } => "override_broken",
            Cause::Auto => "auto",
            Cause::Drain { .. } => "drain",
            Cause::Undrain { .. } => "undrain",
            Cause::HealthChange { .. } => "health_change",
            Cause::FlapHold { .. } => "flap_hold",
            Cause::Fenced { .. } => "fenced",
            Cause::Unfenced { .. } => "unfenced",
            Cause::Promoting { .. } => "promoting",
            Cause::Promoted { .. } => "promoted",
            Cause::PromoteFailed { .. } => "promote_failed",
            Cause::PolicyChange => "policy_change",
            Cause::Resync => "resync",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Failover { slot, reason } => {
                write!(f, "failover: {slot} down")?;
                with_reason(f, reason)
            }
            Cause::Failback => f.write_str("failback to the primary"),
            Cause::FailbackGated { gate: Some(gate) } => {
                write!(f, "failback waits for the failback gate (last verdict: {gate})")
            }
            Cause::FailbackGated { gate: None } => {
                f.write_str("failback waits for the failback gate (no verdict yet)")
            }
            Cause::AllDown { action } => write!(f, "both backends down (all_down = {action})"),
            Cause::Recovered { slot } => write!(f, "{slot} up again after both were down"),
            Cause::ManualFlip { force: false, .. } => f.write_str("manual flip"),
            Cause::ManualFlip { force: true, .. } => f.write_str("forced manual flip"),
            Cause::OverrideExpired => f.write_str("override expired"),
            Cause::OverrideBroken { slot, reason } => {
                write!(f, "override ended: pinned {slot} went down")?;
                with_reason(f, reason)
            }
            Cause::Auto => f.write_str("override dropped: automatic control"),
            Cause::Drain { slot } => write!(f, "{slot} drained"),
            Cause::Undrain { slot } => write!(f, "{slot} undrained"),
            Cause::HealthChange { slot, up: true, .. } => write!(f, "{slot} up"),
            Cause::HealthChange {
                slot,
                up: false,
                reason,
            } => {
                write!(f, "{slot} down")?;
                with_reason(f, reason)
            }
            Cause::FlapHold {
                slot,
                until: _,
                flaps,
            } => {
                write!(
                    f,
                    "{slot} held down: it went down {flaps} times within the flap window"
                )
            }
            Cause::Fenced { slot } => write!(f, "{slot} fenced: it takes no traffic until unfenced"),
            Cause::Unfenced { slot } => write!(f, "{slot} unfenced"),
            Cause::Promoting { slot, on } => write!(f, "promoting the {slot} before traffic moves ({on})"),
            Cause::Promoted {
                slot,
                took,
                failed: None,
            } => write!(f, "{slot} promoted in {}", human(*took)),
            Cause::Promoted {
                slot,
                took,
                failed: Some(detail),
            } => write!(
                f,
                "promoting the {slot} failed ({detail}) after {}; traffic moved anyway (on_promote_failure = move)",
                human(*took)
            ),
            Cause::PromoteFailed {
                slot,
                took,
                detail,
                retry: _,
            } => write!(
                f,
                "promoting the {slot} failed ({detail}) after {}; traffic stays, the hook runs again",
                human(*took)
            ),
            Cause::PolicyChange => f.write_str("policy changed"),
            Cause::Resync => f.write_str("data plane state rewritten to match the policy"),
        }
    }
}

impl fmt::Display for Event {
    /// One log line: `web: primary → secondary: failover: primary down (timeout); detected in 12 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.service)?;
        if self.from != self.to {
            write!(f, "{} → {}: ", self.from, self.to)?;
        }
        write!(f, "{}", self.cause)?;
        match self.cause {
            Cause::ManualFlip {
                until: Some(until), ..
            } => write!(f, " for {}", human(until.saturating_sub(self.at)))?,
            Cause::FlapHold { until, .. } => write!(f, " for {}", human(until.saturating_sub(self.at)))?,
            Cause::PromoteFailed { retry, .. } => write!(f, " in {}", human(retry.saturating_sub(self.at)))?,
            Cause::Fenced { slot } => write!(f, " (`redirector unfence {} {slot}`)", self.service)?,
            _ => {}
        }
        if self.from == self.to {
            write!(f, " (active: {})", self.to)?;
        }
        if let Some(detection) = self.detection {
            write!(f, "; detected in {}", human(detection))?;
        }
        if let Some(who) = &self.who {
            write!(f, "; by {who}")?;
        }
        if let Some(why) = &self.why {
            write!(f, ": {why}")?;
        }
        Ok(())
    }
}

/// An operator request the machine will not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A flip towards a backend that is down, without force.
    #[error(
        "{slot} is down ({}); use --force to pin it anyway",
        down_detail(reason.as_ref(), *down_for, *held_for)
    )]
    BackendDown {
        /// The backend.
        slot: Slot,
        /// Its latest reason (`None`: no verdict since a restart).
        reason: Option<Reason>,
        /// How long it has been down.
        down_for: Duration,
        /// Time left of a flap-damping hold.
        held_for: Option<Duration>,
    },
    /// A flip towards a drained backend, without force.
    #[error("{slot} is drained; undrain it first, or use --force to pin it anyway")]
    Drained {
        /// The backend.
        slot: Slot,
    },
    /// A flip towards a fenced backend (force does not lift a fence).
    #[error("{slot} is fenced; `redirector unfence SERVICE {slot}` once it may take traffic again")]
    Fenced {
        /// The backend.
        slot: Slot,
    },
    /// A flip whose end is not in the future.
    #[error("the override would have ended {} ago; give an --until in the future", human(*ago))]
    UntilPast {
        /// How far in the past the end is.
        ago: Duration,
    },
}

fn down_detail(reason: Option<&Reason>, down_for: Duration, held_for: Option<Duration>) -> String {
    match (held_for, reason) {
        (Some(held), _) => format!("held down for flapping, {} left", human(held)),
        (None, Some(reason)) => format!("{reason} since {}", human(down_for)),
        (None, None) => format!("no verdict yet, since {}", human(down_for)),
    }
}

/// An operator's pin of the active backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The pinned backend.
    pub to: Slot,
    /// End of the pin (CLOCK_MONOTONIC: convert for a state file that must survive a reboot).
    pub until: Option<Nanos>,
    /// Pinned even if down or drained, and stays when it goes down or is drained.
    pub force: bool,
    /// Who pinned it.
    pub who: Who,
    /// Their comment.
    pub why: Option<String>,
    /// When it was pinned.
    pub at: Nanos,
}

/// What the operator asked for: what the daemon persists. Compare
/// [`Machine::intent`] after each step to know when to save it (an override
/// also ends by itself: expiry, broken).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The override, if any (`override` is a Rust keyword).
    #[serde(rename = "override")]
    pub pin: Option<Override>,
    /// Per slot: drained.
    pub drained: [bool; 2],
    /// Per slot: fenced (counts as down until unfenced).
    #[serde(default, skip_serializing_if = "is_unfenced")]
    pub fenced: [bool; 2],
}

fn is_unfenced(fenced: &[bool; 2]) -> bool {
    fenced == &[false; 2]
}

/// Where a promotion stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Promotion {
    /// The hook runs.
    Running {
        /// The backend being promoted.
        slot: Slot,
        /// Its number.
        seq: u64,
        /// When it started.
        since: Nanos,
    },
    /// The hook failed; it runs again at `retry`.
    Failed {
        /// The backend.
        slot: Slot,
        /// When it runs again.
        retry: Nanos,
        /// What went wrong.
        detail: String,
    },
    /// Promoted (or moved anyway): traffic may go there until it leaves.
    Done {
        /// The promoted backend.
        slot: Slot,
    },
}

/// What a restarted daemon finds: the data plane's switch state and the
/// saved operator intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// The pinned data plane's switch state (what traffic does right now).
    pub desired: Desired,
    /// The operator intent from the state file. Its drains win over the data
    /// plane's drained bits (a difference is written at the first step).
    pub intent: Intent,
    /// Each backend's flap history from the state file (`Up` → `Down` times).
    #[serde(default)]
    pub flaps: [Vec<Nanos>; 2],
}

/// The latest `failback_gate` verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// When the gate probe was sent.
    pub sent: Nanos,
    /// Passed.
    pub ok: bool,
    /// Why.
    pub reason: Reason,
    /// When the verdict arrived.
    pub at: Nanos,
}

/// Everything `status` shows about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Service name.
    pub service: String,
    /// The newest `now` the machine has seen.
    pub at: Nanos,
    /// The switch state last written (what the data plane does).
    pub desired: Desired,
    /// Both backends, by [`Slot::index`].
    pub backends: [BackendView; 2],
    /// Override and drains.
    pub intent: Intent,
    /// The policy in force.
    pub policy: Policy,
    /// The latest gate verdict.
    pub gate: Option<GateVerdict>,
    /// When an automatic failback is (or was) due, while one is pending.
    pub failback_at: Option<Nanos>,
    /// The failback is due but the gate has not passed since the primary came up.
    pub waiting_for_gate: bool,
    /// When the next [`Input::Tick`] is due.
    pub next_deadline: Option<Nanos>,
    /// The latest promotion, while it matters.
    pub promotion: Option<Promotion>,
}

/// An operator request applied in this step.
struct Op {
    cause: Cause,
    who: Who,
    why: Option<String>,
}

/// What one step did, to choose its events.
struct Step {
    from: Slot,
    usable_before: [bool; 2],
    /// Per slot: went down in this step, with its detection time.
    detection: [Option<Duration>; 2],
    held: Vec<(Slot, Nanos, u32)>,
    expired: bool,
    op: Option<Op>,
    policy: bool,
    /// A promotion started in this step (its number and target).
    promote: Option<(u64, Slot)>,
    /// A promotion ended in this step: what to tell.
    promoted: Option<Cause>,
    /// Fences and failed promotions, told after the headline.
    notices: Vec<Cause>,
}

/// One service's decision machine.
#[derive(Debug, Clone)]
pub struct Machine {
    name: String,
    policy: Policy,
    backends: [Backend; 2],
    active: Slot,
    pin: Option<Override>,
    drained: [bool; 2],
    gate: Option<GateVerdict>,
    /// The primary's up-since for which "failback waits for the gate" was told.
    gate_noted: Option<Nanos>,
    /// Per slot: fenced (operator intent: only an unfence lifts it).
    fenced: [bool; 2],
    promotion: Option<Promotion>,
    /// The last promotion's number.
    promotions: u64,
    /// Traffic waits for a promotion to move.
    holding: bool,
    /// Per slot: down for this member of the group.
    group: [Option<String>; 2],
    /// Per slot: when the group last saw it up again (failback waits for
    /// its delay from then too, so the group returns together).
    group_up: [Option<Nanos>; 2],
    /// The last switch state written (or found at adoption).
    written: Desired,
    /// The newest `now` seen: time never runs backwards inside the machine.
    now: Nanos,
}

impl Machine {
    /// A fresh start: both backends unknown (counted up), the primary active.
    /// The caller writes [`Machine::desired`] once.
    pub fn new(name: String, policy: Policy, now: Nanos) -> Machine {
        let mut machine = Machine {
            name,
            policy,
            backends: [Backend::unknown(now, true), Backend::unknown(now, true)],
            active: Slot::Primary,
            pin: None,
            drained: [false; 2],
            gate: None,
            gate_noted: None,
            fenced: [false; 2],
            promotion: None,
            promotions: 0,
            holding: false,
            group: [None, None],
            group_up: [None; 2],
            written: Desired {
                active: Slot::Primary,
                up: [true; 2],
                drained: [false; 2],
                all_down: None,
                share: 0,
            },
            now,
        };
        machine.written = machine.desired();
        machine
    }

    /// A restart: seeded from what the pinned data plane does right now and
    /// the saved operator intent. Writes nothing: both backends are unknown
    /// with the up bits found, so the first verdicts confirming the current
    /// state change nothing, and failback counts its delay from the primary's
    /// first pass.
    pub fn adopt(name: String, policy: Policy, now: Nanos, seed: Seed) -> Machine {
        let up = seed.desired.up;
        let [f0, f1] = seed.flaps;
        Machine {
            name,
            policy,
            backends: [Backend::adopted(now, up[0], f0), Backend::adopted(now, up[1], f1)],
            active: seed.desired.active,
            pin: seed.intent.pin,
            drained: seed.intent.drained,
            gate: None,
            gate_noted: None,
            fenced: seed.intent.fenced,
            promotion: None,
            promotions: 0,
            holding: false,
            group: [None, None],
            group_up: [None; 2],
            written: seed.desired,
            now,
        }
    }

    /// A reload restarted the service (an address changed): the new
    /// machine keeps what is still true of the old one. `from[i]` is the old
    /// slot whose backend (address and port) the new slot `i` has, if any:
    /// such a backend keeps its health (state, counters, flap history) and
    /// its drain, and an override that names it stays; a new address starts
    /// unknown. The caller writes [`Machine::desired`] once.
    pub fn carry_over(&self, policy: Policy, now: Nanos, from: [Option<Slot>; 2]) -> Machine {
        let mut m = Machine::new(self.name.clone(), policy, now.max(self.now));
        for slot in Slot::ALL {
            if let Some(old) = from[slot.index()] {
                m.backends[slot.index()] = self.backends[old.index()].clone();
                m.drained[slot.index()] = self.drained[old.index()];
                m.fenced[slot.index()] = self.fenced[old.index()];
            }
        }
        let new_slot = |old: Slot| Slot::ALL.into_iter().find(|s| from[s.index()] == Some(old));
        m.pin = self.pin.clone().and_then(|o| {
            let to = new_slot(o.to)?;
            Some(Override { to, ..o })
        });
        m.active = match &m.pin {
            Some(o) => o.to,
            None => {
                m.active = new_slot(self.active).unwrap_or(Slot::Primary);
                m.choose()
            }
        };
        m.written = m.desired();
        m
    }

    /// Service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The switch state the machine wants now (equal to the last write after every step).
    pub fn desired(&self) -> Desired {
        // Waiting for a promotion with nowhere to send traffic counts as all down.
        let all_down = self.both_down() || (self.holding && !self.usable(self.active));
        let action = match self.policy.all_down {
            // Keeping traffic on a fenced backend is what the fence forbids.
            AllDown::Keep if self.fenced[self.active.index()] => Some(AllDown::Drop),
            AllDown::Keep => None,
            other => Some(other),
        };
        Desired {
            active: self.active,
            up: Slot::ALL.map(|slot| self.usable(slot)),
            drained: self.drained,
            all_down: action.filter(|_| all_down),
            share: self.policy.share_pct(),
        }
    }

    fn both_down(&self) -> bool {
        !self.usable(Slot::Primary) && !self.usable(Slot::Secondary)
    }

    /// Whether this gateway can serve the service, for announcing its VIP:
    /// `Some(false)` while `all_down` drops or passes its traffic,
    /// `Some(true)` once a backend has had a verdict otherwise, `None`
    /// before any (a fresh start has not probed yet; an adopted one keeps
    /// what its predecessor announced until it has).
    pub fn servable(&self) -> Option<bool> {
        // A promotion in progress is every gateway's wait, not this one's fault.
        if self.both_down() && self.desired().all_down.is_some() {
            return Some(false);
        }
        self.backends.iter().any(Backend::known).then_some(true)
    }

    /// Each backend's flap history, to persist (empty when none).
    pub fn flaps(&self) -> [Vec<Nanos>; 2] {
        [self.backends[0].flap_times(), self.backends[1].flap_times()]
    }

    /// The operator intent to persist.
    pub fn intent(&self) -> Intent {
        Intent {
            pin: self.pin.clone(),
            drained: self.drained,
            fenced: self.fenced,
        }
    }

    /// Applies one input at `now`. A refused request changes nothing.
    pub fn step(&mut self, now: Nanos, input: Input) -> Result<Vec<Effect>, Refused> {
        if matches!(input, Input::Flip { .. }) {
            // Timers run before the request is judged; a refusal must undo them too.
            let mut next = self.clone();
            let effects = next.apply(now, input)?;
            *self = next;
            Ok(effects)
        } else {
            self.apply(now, input)
        }
    }

    /// When [`Input::Tick`] must be delivered next: an override's end, a flap
    /// hold's end or a failback delay's end. `None`: nothing pending.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let failback = self.failback_due().filter(|&due| due > self.now);
        let holds = self.backends.iter().filter_map(Backend::held_until);
        let until = self.pin.as_ref().and_then(|pin| pin.until);
        let retry = match &self.promotion {
            Some(Promotion::Failed { retry, .. }) if self.holding => Some(*retry),
            _ => None,
        };
        holds.chain(until).chain(failback).chain(retry).min()
    }

    /// Everything `status` shows.
    pub fn view(&self) -> View {
        let failback_at = self.failback_due();
        View {
            service: self.name.clone(),
            at: self.now,
            desired: self.written,
            backends: Slot::ALL.map(|slot| {
                self.backends[slot.index()].view(
                    slot,
                    self.drained[slot.index()],
                    self.now,
                    &self.policy.flap,
                )
            }),
            intent: self.intent(),
            policy: self.policy.clone(),
            gate: self.gate.clone(),
            failback_at,
            waiting_for_gate: failback_at.is_some_and(|due| due <= self.now) && !self.gate_ok(),
            next_deadline: self.next_deadline(),
            promotion: self.promotion.clone(),
        }
    }

    /// A reload with the same backends: health, intent and active backend
    /// stay; the new policy may change the desired state at once.
    pub fn set_policy(&mut self, policy: Policy, now: Nanos) -> Vec<Effect> {
        let mut step = self.begin(now);
        self.policy = policy;
        step.policy = true;
        self.settle(step)
    }

    fn apply(&mut self, now: Nanos, input: Input) -> Result<Vec<Effect>, Refused> {
        let mut step = self.begin(now);
        match input {
            Input::Probe {
                slot,
                sent,
                ok,
                reason,
                latency,
            } => {
                let change =
                    self.backends[slot.index()].verdict(self.now, sent, ok, reason, latency, &self.policy);
                note(&mut step, slot, change);
            }
            Input::Gate { sent, ok, reason } => {
                if self.gate.as_ref().is_none_or(|gate| sent >= gate.sent) {
                    self.gate = Some(GateVerdict {
                        sent,
                        ok,
                        reason,
                        at: self.now,
                    });
                }
            }
            Input::PathDown { slot } => {
                let change = self.backends[slot.index()].path_down(self.now, &self.policy.flap);
                note(&mut step, slot, change);
            }
            Input::Flip {
                to,
                until,
                force,
                who,
                why,
            } => {
                self.check_flip(to, until, force)?;
                self.pin = Some(Override {
                    to,
                    until,
                    force,
                    who: who.clone(),
                    why: why.clone(),
                    at: self.now,
                });
                step.op = Some(Op {
                    cause: Cause::ManualFlip { force, until },
                    who,
                    why,
                });
            }
            Input::Auto { who } => {
                if self.pin.take().is_some() {
                    step.op = Some(Op {
                        cause: Cause::Auto,
                        who,
                        why: None,
                    });
                }
            }
            Input::Drain {
                slot,
                drained,
                who,
                why,
            } => {
                if self.drained[slot.index()] != drained {
                    self.drained[slot.index()] = drained;
                    // Draining the pinned backend ends a pin that was not forced.
                    if drained && self.pin.as_ref().is_some_and(|pin| pin.to == slot && !pin.force) {
                        self.pin = None;
                    }
                    let cause = if drained {
                        Cause::Drain { slot }
                    } else {
                        Cause::Undrain { slot }
                    };
                    step.op = Some(Op { cause, who, why });
                }
            }
            Input::Group { slot, by } => {
                if by.is_none() && self.group[slot.index()].is_some() {
                    self.group_up[slot.index()] = Some(self.now);
                }
                self.group[slot.index()] = by;
            }
            Input::Unfence { slot, who, why } => {
                if std::mem::take(&mut self.fenced[slot.index()]) {
                    step.op = Some(Op {
                        cause: Cause::Unfenced { slot },
                        who,
                        why,
                    });
                }
            }
            Input::Promoted {
                seq,
                ok,
                took,
                detail,
            } => self.promoted(&mut step, seq, ok, took, detail),
            Input::Tick => {}
        }
        Ok(self.settle(step))
    }

    /// Advances time: snapshot for the events, then the timers that are due.
    fn begin(&mut self, now: Nanos) -> Step {
        self.now = self.now.max(now);
        let mut step = Step {
            from: self.active,
            usable_before: Slot::ALL.map(|slot| self.usable(slot)),
            detection: [None; 2],
            held: Vec::new(),
            expired: false,
            op: None,
            policy: false,
            promote: None,
            promoted: None,
            notices: Vec::new(),
        };
        for slot in Slot::ALL {
            let change = self.backends[slot.index()].timers(self.now);
            note(&mut step, slot, change);
        }
        if self
            .pin
            .as_ref()
            .is_some_and(|pin| pin.until.is_some_and(|until| until <= self.now))
        {
            self.pin = None;
            step.expired = true;
        }
        step
    }

    /// Decides `active` after a step's changes and says what happened.
    fn settle(&mut self, mut step: Step) -> Vec<Effect> {
        let mut broken = None;
        if let Some(pin) = &self.pin
            && !pin.force
            && !self.usable(pin.to)
        {
            broken = Some(pin.to);
            self.pin = None;
        }
        let target = match &self.pin {
            Some(pin) => pin.to,
            None => self.choose(),
        };
        self.active = self.admit(target, &mut step);

        let mut effects = Vec::new();
        let desired = self.desired();
        let wrote = desired != self.written;
        if wrote {
            self.written = desired;
            effects.push(Effect::Write(desired));
        }

        let mut told = Vec::new();
        // Who caused a promotion started in this step.
        let mut by = (None, None);
        let promoted = step.promoted.take();
        match step.op.take() {
            // Operator requests never take a backend down: nothing outranks them.
            Some(op) => {
                by = (Some(op.who.clone()), op.why.clone());
                told.push((op.cause, Some(op.who), op.why));
            }
            // Traffic moved because a promotion ended: that is the news.
            None if promoted.is_some() && self.active != step.from => {
                told.extend(promoted.map(|cause| (cause, None, None)));
            }
            None => {
                told.extend(
                    self.headline(&mut step, &mut broken, wrote)
                        .map(|cause| (cause, None, None)),
                );
                told.extend(promoted.map(|cause| (cause, None, None)));
            }
        }
        told.extend(step.notices.drain(..).map(|cause| (cause, None, None)));
        if let Some((_, slot)) = step.promote {
            let on = Box::new(self.move_cause(step.from, told.first().map(|(c, _, _)| c)));
            told.push((Cause::Promoting { slot, on }, by.0, by.1));
        }
        // An override that ended on the side still changed the intent.
        if let Some(slot) = broken {
            told.push((
                Cause::OverrideBroken {
                    slot,
                    reason: self.reason(slot),
                },
                None,
                None,
            ));
        }
        if step.expired {
            told.push((Cause::OverrideExpired, None, None));
        }
        for &(slot, until, flaps) in &step.held {
            told.push((Cause::FlapHold { slot, until, flaps }, None, None));
        }
        if let Some(since) = self.backends[Slot::Primary.index()].up_since()
            && self.failback_due().is_some_and(|due| due <= self.now)
            && !self.gate_ok()
            && self.gate_noted != Some(since)
        {
            self.gate_noted = Some(since);
            let gate = self.gate.as_ref().map(|gate| gate.reason.clone());
            told.push((Cause::FailbackGated { gate }, None, None));
        }

        effects.extend(told.into_iter().map(|(cause, who, why)| {
            Effect::Event(Event {
                service: self.name.clone(),
                at: self.now,
                from: step.from,
                to: self.active,
                detection: detection(&cause, &step),
                cause,
                who,
                why,
            })
        }));
        if let Some((seq, _)) = step.promote
            && let Some(Effect::Event(event)) = effects.last()
        {
            let event = event.clone();
            effects.push(Effect::Promote { seq, event });
        }
        effects
    }

    /// Where traffic goes now that automatic control or an override wants
    /// it at `target`: there, unless a promotion must run first (then it
    /// stays, and the promotion starts if none is under way). A move from
    /// the primary fences it when the policy says so.
    fn admit(&mut self, target: Slot, step: &mut Step) -> Slot {
        let from = self.active;
        self.holding = false;
        if target == from {
            // Nothing moves: a failed promotion is no longer wanted, one
            // done for a backend traffic left is forgotten.
            if matches!(&self.promotion, Some(Promotion::Failed { .. }))
                || matches!(&self.promotion, Some(Promotion::Done { slot }) if *slot != from)
            {
                self.promotion = None;
            }
            return target;
        }
        if self.policy.fence && from == Slot::Primary && !self.fenced[from.index()] {
            self.fenced[from.index()] = true;
            step.notices.push(Cause::Fenced { slot: from });
        }
        if target == Slot::Primary || self.policy.promote.is_none() {
            if !matches!(&self.promotion, Some(Promotion::Running { .. })) {
                self.promotion = None;
            }
            return target;
        }
        match &self.promotion {
            Some(Promotion::Done { slot }) if *slot == target => return target,
            Some(Promotion::Running { .. }) => {}
            Some(Promotion::Failed { retry, .. }) if *retry > self.now => {}
            _ => {
                self.promotions += 1;
                self.promotion = Some(Promotion::Running {
                    slot: target,
                    seq: self.promotions,
                    since: self.now,
                });
                step.promote = Some((self.promotions, target));
            }
        }
        self.holding = true;
        from
    }

    /// The `promote` hook's answer.
    fn promoted(&mut self, step: &mut Step, seq: u64, ok: bool, took: Duration, detail: String) {
        let Some(Promotion::Running {
            slot, seq: running, ..
        }) = self.promotion
        else {
            return;
        };
        if running != seq {
            return;
        }
        if ok || self.policy.promote == Some(PromoteFailure::Move) {
            self.promotion = Some(Promotion::Done { slot });
            step.promoted = Some(Cause::Promoted {
                slot,
                took,
                failed: (!ok).then_some(detail),
            });
        } else {
            let retry = self.now + PROMOTE_RETRY;
            self.promotion = Some(Promotion::Failed {
                slot,
                retry,
                detail: detail.clone(),
            });
            step.notices.push(Cause::PromoteFailed {
                slot,
                took,
                detail,
                retry,
            });
        }
    }

    /// Why traffic is to leave `from`, for a promotion's event: the
    /// operator's request or the step's headline when it says, else what
    /// `from` is.
    fn move_cause(&self, from: Slot, told: Option<&Cause>) -> Cause {
        match told {
            Some(
                c @ (Cause::ManualFlip { .. }
                | Cause::Drain { .. }
                | Cause::Auto
                | Cause::OverrideExpired
                | Cause::OverrideBroken { .. }
                | Cause::Recovered { .. }),
            ) => c.clone(),
            _ if !self.backends[from.index()].usable() => Cause::Failover {
                slot: from,
                reason: self.reason(from),
            },
            _ if self.drained[from.index()] => Cause::Drain { slot: from },
            _ => Cause::Failover {
                slot: from,
                reason: self.reason(from),
            },
        }
    }

    /// The cause of what an automatic step did: to traffic, else to the
    /// override, else to health. Takes the override's end it reports.
    fn headline(&self, step: &mut Step, broken: &mut Option<Slot>, wrote: bool) -> Option<Cause> {
        let from = step.from;
        let usable = Slot::ALL.map(|slot| self.usable(slot));
        let all_down_before = !step.usable_before[0] && !step.usable_before[1];
        let all_down = !usable[0] && !usable[1];
        let changed = Slot::ALL
            .into_iter()
            .find(|slot| usable[slot.index()] != step.usable_before[slot.index()]);
        if let Some(slot) = broken.take_if(|_| self.active != from || !all_down || all_down_before) {
            return Some(Cause::OverrideBroken {
                slot,
                reason: self.reason(slot),
            });
        }
        if std::mem::take(&mut step.expired) {
            return Some(Cause::OverrideExpired);
        }
        let cause = if all_down_before && !all_down {
            Cause::Recovered { slot: self.active }
        } else if self.active != from {
            if !usable[from.index()] {
                Cause::Failover {
                    slot: from,
                    reason: self.reason(from),
                }
            } else if self.drained[from.index()] {
                Cause::Drain { slot: from }
            } else {
                // Automatic control leaves an eligible backend only to fail back.
                Cause::Failback
            }
        } else if all_down && !all_down_before {
            Cause::AllDown {
                action: self.policy.all_down,
            }
        } else if let Some(slot) = changed {
            Cause::HealthChange {
                slot,
                up: usable[slot.index()],
                reason: self.reason(slot),
            }
        } else if wrote {
            if step.policy {
                Cause::PolicyChange
            } else {
                Cause::Resync
            }
        } else {
            return None;
        };
        Some(cause)
    }

    fn reason(&self, slot: Slot) -> Option<Reason> {
        match &self.group[slot.index()] {
            Some(by) if self.backends[slot.index()].usable() => Some(Reason::Group(by.clone())),
            _ => self.backends[slot.index()].reason().cloned(),
        }
    }

    /// Automatic control: move only to a strictly better backend, or fail back.
    fn choose(&self) -> Slot {
        let current = self.active;
        let other = current.other();
        if self.rank(other) > self.rank(current) {
            return other;
        }
        let failback = self.failback_due().is_some_and(|due| due <= self.now) && self.gate_ok();
        if failback { Slot::Primary } else { current }
    }

    /// Eligible (usable, not drained) 2 > usable but drained 1 > down 0.
    fn rank(&self, slot: Slot) -> u8 {
        match (self.usable(slot), self.drained[slot.index()]) {
            (true, false) => 2,
            (true, true) => 1,
            (false, _) => 0,
        }
    }

    fn usable(&self, slot: Slot) -> bool {
        self.backends[slot.index()].usable()
            && !self.fenced[slot.index()]
            && self.group[slot.index()].is_none()
    }

    /// Whether this service's own verdicts count `slot` down (what the other
    /// members of its group follow; their view of it is not passed on).
    pub fn own_down(&self, slot: Slot) -> bool {
        !self.backends[slot.index()].usable()
    }

    /// The member of the group `slot` is down for, per [`Input::Group`].
    pub fn group_down(&self, slot: Slot) -> Option<&str> {
        self.group[slot.index()].as_deref()
    }

    /// When an automatic failback is due (the gate aside), while one is pending.
    fn failback_due(&self) -> Option<Nanos> {
        let pending = self.policy.failback == Failback::Auto
            && self.pin.is_none()
            && self.active == Slot::Secondary
            && !self.drained[Slot::Primary.index()]
            // Fenced or down for its group: its own health is not enough.
            && self.usable(Slot::Primary);
        if !pending {
            return None;
        }
        let since = self.backends[Slot::Primary.index()].up_since()?;
        let since = since.max(self.group_up[Slot::Primary.index()].unwrap_or_default());
        Some(since + self.policy.failback_delay)
    }

    /// The gate, if any, passed for a probe sent after the primary came up.
    fn gate_ok(&self) -> bool {
        if !self.policy.gated {
            return true;
        }
        let Some(since) = self.backends[Slot::Primary.index()].up_since() else {
            return false;
        };
        self.gate
            .as_ref()
            .is_some_and(|gate| gate.ok && gate.sent >= since)
    }

    fn check_flip(&self, to: Slot, until: Option<Nanos>, force: bool) -> Result<(), Refused> {
        if let Some(until) = until
            && until <= self.now
        {
            return Err(Refused::UntilPast {
                ago: self.now.saturating_sub(until),
            });
        }
        if self.fenced[to.index()] {
            return Err(Refused::Fenced { slot: to });
        }
        if force {
            return Ok(());
        }
        let backend = &self.backends[to.index()];
        if !backend.usable() || self.group[to.index()].is_some() {
            return Err(Refused::BackendDown {
                slot: to,
                reason: self.reason(to),
                down_for: self.now.saturating_sub(backend.since()),
                held_for: backend.held_until().map(|until| until.saturating_sub(self.now)),
            });
        }
        if self.drained[to.index()] {
            return Err(Refused::Drained { slot: to });
        }
        Ok(())
    }
}

/// For an event about a backend going down in this step: its detection time.
fn detection(cause: &Cause, step: &Step) -> Option<Duration> {
    match cause {
        Cause::Failover { slot, .. }
        | Cause::OverrideBroken { slot, .. }
        | Cause::HealthChange { slot, up: false, .. } => step.detection[slot.index()],
        // One input takes at most one backend down.
        Cause::AllDown { .. } | Cause::Promoting { .. } => step.detection.into_iter().flatten().next(),
        _ => None,
    }
}

fn note(step: &mut Step, slot: Slot, change: Change) {
    match change {
        Change::Down { detection } => step.detection[slot.index()] = Some(detection),
        Change::Held { until, flaps } => step.held.push((slot, until, flaps)),
        Change::Stale | Change::Same | Change::Up => {}
    }
}
