//! The configured services at run time: each one's decision machine, its
//! probe targets, and the bookkeeping that routes probe reports, deadlines
//! and operator requests to the right machine. Pure plumbing: decisions are
//! the machines', writes the switch owner's.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::SocketAddr,
    time::Duration,
};

use crate::{
    config::{Protocol, Service},
    health::{self, Report, Scheduler, Target, TargetId},
    policy::{self, Effect, Input, Intent, Machine, Nanos, Policy, Refused, Seed, Slot},
};

/// When the gateway is suspected rather than its backends: more than
/// `most`/`of` of all backends (at least `min_backends`) failing within
/// `window`. Backends do not fail in step; a gateway whose own probes are
/// dropped (a local firewall, its uplink gone) sees all of them fail at once.
pub struct Suspect {
    /// Failures this close together count as one moment.
    pub window: Duration,
    /// Numerator of the share of backends.
    pub most: usize,
    /// Denominator of the share of backends.
    pub of: usize,
    /// Fewer backends than this never make the gateway suspect.
    pub min_backends: usize,
}

/// More than two thirds of at least 4 backends within 250 ms.
pub const GATEWAY_SUSPECT: Suspect = Suspect {
    window: Duration::from_millis(250),
    most: 2,
    of: 3,
    min_backends: 4,
};

/// What a probe target judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probed {
    Backend(Slot),
    Gate,
}

fn target_id(id: u32, what: Probed) -> TargetId {
    let k = match what {
        Probed::Backend(s) => s.index() as u64,
        Probed::Gate => 2,
    };
    TargetId(u64::from(id) * 4 + k)
}

impl Probed {
    fn index(self) -> usize {
        match self {
            Probed::Backend(s) => s.index(),
            Probed::Gate => 2,
        }
    }
}

fn from_target(t: TargetId) -> Option<(u32, Probed)> {
    let id = u32::try_from(t.0 / 4).ok()?;
    let what = match t.0 % 4 {
        0 => Probed::Backend(Slot::Primary),
        1 => Probed::Backend(Slot::Secondary),
        2 => Probed::Gate,
        _ => return None,
    };
    Some((id, what))
}

/// The machine's policy from a service's configuration.
pub fn policy_of(svc: &Service) -> Policy {
    let f = &svc.failover;
    Policy {
        rise: svc.health.rise,
        fall: svc.health.fall,
        failback: f.failback,
        failback_delay: f.failback_delay,
        all_down: f.all_down,
        share: f.share,
        gated: f.failback_gate.is_some(),
        flap: policy::FlapDamping {
            hold: f.flap_hold,
            max_hold: f.flap_hold * 12,
            ..policy::FlapDamping::default()
        },
        promote: f.promote.as_ref().map(|_| f.on_promote_failure),
        fence: f.fence,
    }
}

/// Where a backend is probed: its own address and the port it serves on
/// (a DSR backend too: its own address, not the VIP it also holds).
fn probe_addr(svc: &Service, slot: Slot) -> SocketAddr {
    let be = match slot {
        Slot::Primary => &svc.primary,
        Slot::Secondary => &svc.secondary,
    };
    SocketAddr::new(be.addr, be.port.unwrap_or(svc.port))
}

/// One service at run time.
pub struct Svc {
    /// Its configuration.
    pub cfg: Service,
    /// Its decisions.
    pub machine: Machine,
    /// Why the probes of the primary, the secondary and the gate cannot
    /// run on this host, while they cannot (no verdict meanwhile).
    pub local_error: [Option<health::Reason>; 3],
}

/// Every service, by id.
#[derive(Default)]
pub struct Services {
    by_id: BTreeMap<u32, Svc>,
    by_name: HashMap<String, u32>,
    scheduler: Option<Scheduler>,
    /// (deadline, service id); stale entries are skipped when popped.
    deadlines: BinaryHeap<Reverse<(Nanos, u32)>>,
    /// Each backend's latest verdict (service id, slot) → (when, passed),
    /// for the gateway-suspect guard.
    verdicts: HashMap<(u32, usize), (Nanos, bool)>,
    /// Backends a data-path signal asked to confirm (service id, slot) →
    /// when, until the verdict of a probe sent since says whether it did.
    hinted: HashMap<(u32, usize), Nanos>,
}

/// What became of a data-path signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// The backend is probed now; its verdict confirms or dismisses it.
    Probing,
    /// A probe it asked for is still to report.
    Pending,
    /// The backend already counts as down (or the service is gone): nothing to do.
    Skipped,
}

/// Effects of one step, tagged with their service id.
pub type Tagged = Vec<(u32, Effect)>;

impl Services {
    /// Adds a service with a fresh machine (or one seeded from a pinned data
    /// plane and saved intent) and returns it. Probing starts with
    /// [`Services::start_probing`] (or at once if it already runs).
    pub fn add(&mut self, id: u32, cfg: Service, seed: Option<Seed>, now: Nanos) -> &Machine {
        let policy = policy_of(&cfg);
        let machine = match seed {
            Some(seed) => Machine::adopt(cfg.name.clone(), policy, now, seed),
            None => Machine::new(cfg.name.clone(), policy, now),
        };
        self.insert(id, cfg, machine)
    }

    /// A reload restarted the service `old_id` (an address changed) as
    /// `id`: its new machine keeps the health and intent of the backends
    /// whose address stayed ([`Machine::carry_over`]). Returns it.
    pub fn restart(&mut self, old_id: u32, id: u32, cfg: Service, now: Nanos) -> &Machine {
        let Some(old) = self.by_id.get(&old_id) else {
            return self.add(id, cfg, None, now);
        };
        let was = [&old.cfg.primary, &old.cfg.secondary];
        let from =
            [&cfg.primary, &cfg.secondary].map(|be| Slot::ALL.into_iter().find(|s| was[s.index()] == be));
        let machine = old.machine.carry_over(policy_of(&cfg), now, from);
        self.insert(id, cfg, machine)
    }

    /// Registers service `id` with its machine and starts probing it.
    fn insert(&mut self, id: u32, cfg: Service, machine: Machine) -> &Machine {
        self.by_name.insert(cfg.name.clone(), id);
        if let Some(s) = &self.scheduler {
            set_targets(s, id, &cfg);
        }
        let svc = self
            .by_id
            .entry(id)
            .insert_entry(Svc {
                cfg,
                machine,
                local_error: Default::default(),
            })
            .into_mut();
        &svc.machine
    }

    /// Makes `name` name service `id` again (a failed reload's undo, after
    /// the restarted copy under another id was removed).
    pub fn point(&mut self, name: &str, id: u32) {
        if self.by_id.contains_key(&id) {
            self.by_name.insert(name.to_owned(), id);
        }
    }

    /// Removes a service: its machine and its probe targets.
    pub fn remove(&mut self, id: u32) -> Option<Svc> {
        let svc = self.by_id.remove(&id)?;
        self.verdicts.retain(|(i, _), _| *i != id);
        self.hinted.retain(|(i, _), _| *i != id);
        // A restarted service's name already names its new id.
        if self.by_name.get(&svc.cfg.name) == Some(&id) {
            self.by_name.remove(&svc.cfg.name);
        }
        if let Some(s) = &self.scheduler {
            for what in [
                Probed::Backend(Slot::Primary),
                Probed::Backend(Slot::Secondary),
                Probed::Gate,
            ] {
                s.remove(target_id(id, what));
            }
        }
        Some(svc)
    }

    /// A reload changed a service's health or failover settings but not its
    /// addresses: the machine keeps its state under the new policy; probing
    /// restarts only if the checks changed.
    pub fn update(&mut self, id: u32, cfg: Service, now: Nanos) -> Tagged {
        let Some(svc) = self.by_id.get_mut(&id) else {
            return Vec::new();
        };
        let checks_changed =
            svc.cfg.health != cfg.health || svc.cfg.failover.failback_gate != cfg.failover.failback_gate;
        let effects = svc.machine.set_policy(policy_of(&cfg), now);
        if checks_changed && let Some(s) = &self.scheduler {
            set_targets(s, id, &cfg);
        }
        svc.cfg = cfg;
        if let Some(d) = svc.machine.next_deadline() {
            self.deadlines.push(Reverse((d, id)));
        }
        effects.into_iter().map(|e| (id, e)).collect()
    }

    /// Changes the probing budget.
    pub fn set_budget(&self, budget: u32) {
        if let Some(s) = &self.scheduler {
            s.set_budget(budget);
        }
    }

    /// Starts probing every service.
    pub fn start_probing(&mut self, scheduler: Scheduler) {
        for (id, svc) in &self.by_id {
            set_targets(&scheduler, *id, &svc.cfg);
        }
        self.scheduler = Some(scheduler);
    }

    /// The id of service `name`.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Every service, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Svc)> {
        self.by_id.iter().map(|(id, s)| (*id, s))
    }

    /// Effective probe interval of a backend.
    pub fn probe_interval(&self, id: u32, slot: Slot) -> Option<Duration> {
        self.scheduler
            .as_ref()?
            .effective_interval(target_id(id, Probed::Backend(slot)))
    }

    fn step(&mut self, id: u32, now: Nanos, input: Input) -> Result<Tagged, Refused> {
        let Some(svc) = self.by_id.get_mut(&id) else {
            return Ok(Vec::new());
        };
        let effects = svc.machine.step(now, input)?;
        if let Some(d) = svc.machine.next_deadline() {
            self.deadlines.push(Reverse((d, id)));
        }
        Ok(effects.into_iter().map(|e| (id, e)).collect())
    }

    /// A probe report (recorded in `metrics`, then judged).
    ///
    /// A probe that could not run on this host (no fd, a local firewall, a
    /// missing command …) says nothing about the backend: it is reported
    /// (log, status, metric) and never reaches the machine, so the gateway's
    /// own trouble cannot fail every service over.
    ///
    /// When most backends fail at the same moment, the gateway is suspected,
    /// not the backends ([`GATEWAY_SUSPECT`]): such failures are handled like
    /// the gateway's own trouble (no verdict), and counted.
    pub fn report(&mut self, r: Report, metrics: &mut crate::metrics::Metrics) -> Tagged {
        let Some((id, what)) = from_target(r.id) else {
            return Vec::new();
        };
        let mut r = r;
        let now = Nanos(health::monotonic_ns());
        let mut local = r.outcome.reason.is_local();
        if let Probed::Backend(slot) = what {
            // The gateway's own trouble counts as failing here: it is the
            // strongest sign that the gateway, not the backends, is at fault.
            self.verdicts.insert((id, slot.index()), (now, r.outcome.ok));
            if !local
                && !r.outcome.ok
                && let Some((failing, total)) = self.gateway_suspect(now)
            {
                metrics.gateway_suspect();
                r.outcome.reason = health::Reason::Error(format!(
                    "{failing} of {total} backends failed within {} ms: suspecting this gateway, not the \
                     backends",
                    GATEWAY_SUSPECT.window.as_millis()
                ));
                local = true;
            }
        }
        let Some(svc) = self.by_id.get_mut(&id) else {
            return Vec::new();
        };
        if let Probed::Backend(slot) = what
            && !local
            && self
                .hinted
                .get(&(id, slot.index()))
                .is_some_and(|at| r.sent >= at.0)
        {
            self.hinted.remove(&(id, slot.index()));
            metrics.signal_checked(
                &svc.cfg.name,
                &slot.to_string(),
                if r.outcome.ok { "dismissed" } else { "confirmed" },
            );
        }
        if let Probed::Backend(slot) = what {
            metrics.probe(
                &svc.cfg.name,
                &slot.to_string(),
                svc.cfg.health.kind.as_str(),
                match (local, r.outcome.ok) {
                    (true, _) => "local",
                    (false, true) => "pass",
                    (false, false) => "fail",
                },
                &r.outcome.reason.to_string(),
                r.outcome.latency,
            );
        }
        let probed = match what {
            Probed::Backend(slot) => slot.to_string(),
            Probed::Gate => "failback gate".to_owned(),
        };
        let last = &mut svc.local_error[what.index()];
        if local {
            // Once per kind of trouble (a stalled host makes many late probes
            // at once, each late by another amount).
            let same = last.as_ref().is_some_and(|l| match (l, &r.outcome.reason) {
                (health::Reason::Late(_), health::Reason::Late(_)) => true,
                (a, b) => a == b,
            });
            if !same {
                log::warn!(
                    "service {}: the {probed}'s probe cannot run on this host ({}): the gateway's own \
                     trouble, not counted against the backend; no verdict until it runs again",
                    svc.cfg.name,
                    r.outcome.reason
                );
            }
            *last = Some(r.outcome.reason);
            return Vec::new();
        }
        if last.take().is_some() {
            log::info!("service {}: the {probed}'s probe runs again", svc.cfg.name);
        }
        let sent = Nanos(r.sent);
        let ok = r.outcome.ok;
        let why = r.outcome.reason;
        let input = match what {
            Probed::Backend(slot) => Input::Probe {
                slot,
                sent,
                ok,
                reason: why,
                latency: r.outcome.latency,
            },
            Probed::Gate => Input::Gate {
                sent,
                ok,
                reason: why,
            },
        };
        // Probe inputs are never refused.
        self.step(id, now, input).unwrap_or_default()
    }

    /// (backends whose latest verdict is a failure within the window, all
    /// backends) when that is most of them.
    fn gateway_suspect(&self, now: Nanos) -> Option<(usize, usize)> {
        let total = self.by_id.len() * 2;
        if total < GATEWAY_SUSPECT.min_backends {
            return None;
        }
        let failing = self
            .verdicts
            .values()
            .filter(|(at, ok)| !ok && now.saturating_sub(*at) <= GATEWAY_SUSPECT.window)
            .count();
        (failing * GATEWAY_SUSPECT.of > total * GATEWAY_SUSPECT.most).then_some((failing, total))
    }

    /// The kernel says the path to a backend is gone.
    pub fn path_down(&mut self, id: u32, slot: u8, now: Nanos) -> Tagged {
        let slot = if slot == 0 { Slot::Primary } else { Slot::Secondary };
        self.step(id, now, Input::PathDown { slot }).unwrap_or_default()
    }

    /// A data-path signal about a backend (a closed port's RST, an
    /// unreachable): a hint, never a verdict. A backend that counts as up
    /// is probed at once; the probe's verdict decides, as any other.
    pub fn hint(&mut self, id: u32, slot: u8) -> (Hint, Option<&str>) {
        self.ask(id, slot, false)
    }

    /// The traffic to a backend went unanswered for its `silence`: a hint,
    /// confirmed by probes with a short timeout
    /// ([`crate::health::Scheduler::confirm_now`]).
    pub fn silent(&mut self, id: u32, slot: u8) -> (Hint, Option<&str>) {
        self.ask(id, slot, true)
    }

    /// Services watched for silence: (id, their `silence`).
    pub fn silences(&self) -> impl Iterator<Item = (u32, Duration)> + '_ {
        self.by_id
            .iter()
            .filter_map(|(&id, s)| s.cfg.health.silence.map(|t| (id, t)))
    }

    fn ask(&mut self, id: u32, slot: u8, confirm: bool) -> (Hint, Option<&str>) {
        let slot = if slot == 0 { Slot::Primary } else { Slot::Secondary };
        let Some(svc) = self.by_id.get(&id) else {
            return (Hint::Skipped, None);
        };
        let name = Some(svc.cfg.name.as_str());
        if !svc.machine.desired().up[slot.index()] {
            return (Hint::Skipped, name);
        }
        // One confirmation at a time, for as long as a probe can take; a
        // later hint asks again (the verdict may have come from a probe sent
        // before the first hint).
        let now = Nanos(health::monotonic_ns());
        let wait = svc.cfg.health.timeout * 2;
        if self
            .hinted
            .get(&(id, slot.index()))
            .is_some_and(|at| now.saturating_sub(*at) < wait)
        {
            return (Hint::Pending, name);
        }
        self.hinted.insert((id, slot.index()), now);
        if let Some(s) = &self.scheduler {
            let target = target_id(id, Probed::Backend(slot));
            if confirm {
                s.confirm_now(target);
            } else {
                s.probe_now(target);
            }
        }
        (Hint::Probing, name)
    }

    /// Evidence in the traffic that a backend refused a client (see
    /// [`super::signals`]): a failed verdict, as a refused probe is, for a
    /// backend that counts as up. The caller also asks for a confirming probe.
    pub fn evidence(&mut self, id: u32, slot: u8, now: Nanos) -> Option<Tagged> {
        let slot = if slot == 0 { Slot::Primary } else { Slot::Secondary };
        let svc = self.by_id.get(&id)?;
        if !svc.machine.desired().up[slot.index()] {
            return None;
        }
        let input = Input::Probe {
            slot,
            sent: now,
            ok: false,
            reason: health::Reason::RefusedInTraffic,
            latency: Duration::ZERO,
        };
        // Probe inputs are never refused.
        Some(self.step(id, now, input).unwrap_or_default())
    }

    /// Probes a backend now (its link came back).
    pub fn probe_now(&self, id: u32, slot: u8) {
        let slot = if slot == 0 { Slot::Primary } else { Slot::Secondary };
        if let Some(s) = &self.scheduler {
            s.probe_now(target_id(id, Probed::Backend(slot)));
        }
    }

    /// Whether any service belongs to a group.
    pub fn has_groups(&self) -> bool {
        self.by_id.values().any(|s| s.cfg.failover.group.is_some())
    }

    /// Makes each member of a group see a backend down when another member's
    /// own verdicts take it down, and up again when none does
    /// ([`Input::Group`]); returns what the members did about it.
    pub fn sync_groups(&mut self, now: Nanos) -> Tagged {
        let mut members: BTreeMap<&str, Vec<(u32, &str)>> = BTreeMap::new();
        for (id, s) in &self.by_id {
            if let Some(g) = &s.cfg.failover.group {
                members.entry(g).or_default().push((*id, &s.cfg.name));
            }
        }
        let mut inputs = Vec::new();
        for list in members.values() {
            for slot in Slot::ALL {
                let down: Vec<(u32, &str)> = list
                    .iter()
                    .copied()
                    .filter(|(id, _)| self.by_id[id].machine.own_down(slot))
                    .collect();
                for &(id, _) in list {
                    let want = down
                        .iter()
                        .find(|(other, _)| *other != id)
                        .map(|(_, n)| (*n).to_owned());
                    if self.by_id[&id].machine.group_down(slot) != want.as_deref() {
                        inputs.push((id, Input::Group { slot, by: want }));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (id, input) in inputs {
            out.extend(self.step(id, now, input).unwrap_or_default());
        }
        out
    }

    /// Service `id`.
    pub fn get(&self, id: u32) -> Option<&Svc> {
        self.by_id.get(&id)
    }

    /// An input that cannot be refused (a hook's answer) for service `id`.
    pub fn input(&mut self, id: u32, now: Nanos, input: Input) -> Tagged {
        self.step(id, now, input).unwrap_or_default()
    }

    /// An operator request for service `name`.
    pub fn operator(&mut self, name: &str, now: Nanos, input: Input) -> Result<Tagged, OperatorError> {
        let id = self
            .id(name)
            .ok_or_else(|| OperatorError::Unknown(name.to_owned()))?;
        self.step(id, now, input).map_err(OperatorError::Refused)
    }

    /// The earliest pending deadline of any machine.
    pub fn next_deadline(&mut self) -> Option<Nanos> {
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            let current = self.by_id.get(&id).and_then(|s| s.machine.next_deadline());
            if current == Some(at) {
                return Some(at);
            }
            self.deadlines.pop();
            if let Some(c) = current {
                self.deadlines.push(Reverse((c, id)));
            }
        }
        None
    }

    /// Delivers `Tick` to every machine whose deadline has come.
    pub fn tick(&mut self, now: Nanos) -> Tagged {
        let mut out = Vec::new();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let due = self
                .by_id
                .get(&id)
                .and_then(|s| s.machine.next_deadline())
                .is_some_and(|d| d <= now);
            if due {
                out.extend(self.step(id, now, Input::Tick).unwrap_or_default());
            }
        }
        out
    }

    /// Per service id, the idle time after which its flow entries go.
    pub fn flow_idle(&self, tcp: Duration, udp: Duration) -> Vec<Duration> {
        let len = self.by_id.keys().next_back().map_or(0, |m| *m as usize + 1);
        let mut idle = vec![Duration::ZERO; len];
        for (id, s) in &self.by_id {
            idle[*id as usize] = match s.cfg.protocol {
                Protocol::Tcp => tcp,
                Protocol::Udp => udp,
            };
        }
        idle
    }

    /// Probes per second being spent over all backends.
    pub fn probe_rate(&self) -> f64 {
        self.by_id
            .keys()
            .flat_map(|&id| Slot::ALL.map(|slot| self.probe_interval(id, slot)))
            .flatten()
            .filter(|d| !d.is_zero())
            .map(|d| 1.0 / d.as_secs_f64())
            .sum()
    }

    /// The probing budget.
    pub fn budget(&self) -> u32 {
        self.scheduler.as_ref().map_or(0, Scheduler::budget)
    }

    /// Flap history of every service that has some.
    pub fn flaps(&self) -> BTreeMap<String, [Vec<Nanos>; 2]> {
        self.by_id
            .values()
            .map(|s| (s.cfg.name.clone(), s.machine.flaps()))
            .filter(|(_, f)| f.iter().any(|v| !v.is_empty()))
            .collect()
    }

    /// Operator intent of every service that has one.
    pub fn intents(&self) -> BTreeMap<String, Intent> {
        self.by_id
            .values()
            .map(|s| (s.cfg.name.clone(), s.machine.intent()))
            .filter(|(_, i)| *i != Intent::default())
            .collect()
    }
}

/// Why an operator request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No such service.
    #[error("unknown service {0:?} (see `redirector status`)")]
    Unknown(String),
    /// The machine refused.
    #[error(transparent)]
    Refused(Refused),
}

fn set_targets(s: &Scheduler, id: u32, cfg: &Service) {
    for slot in Slot::ALL {
        s.set(
            target_id(id, Probed::Backend(slot)),
            Target {
                addr: probe_addr(cfg, slot),
                check: cfg.health.clone(),
            },
        );
    }
    match &cfg.failover.failback_gate {
        Some(gate) => s.set(
            target_id(id, Probed::Gate),
            Target {
                addr: probe_addr(cfg, Slot::Primary),
                check: gate.clone(),
            },
        ),
        None => s.remove(target_id(id, Probed::Gate)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ids_round_trip() {
        for id in [0u32, 1, 1023, 65535] {
            for what in [
                Probed::Backend(Slot::Primary),
                Probed::Backend(Slot::Secondary),
                Probed::Gate,
            ] {
                assert_eq!(from_target(target_id(id, what)), Some((id, what)));
            }
        }
    }
}
