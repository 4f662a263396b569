//! Effects of decisions, on the event loop: switch-state writes (the one
//! writer of `SWITCH` is [`Switches`](super::apply::Switches)), events for
//! the log, followers, metrics and `redirector events`, and the state file
//! (intents, flap history), saved in order off the loop; hooks started
//! (`promote` when the machine asks, `notify` after each event) and their
//! ends fed back.
use log::{info, warn};

use super::{Daemon, EVENT_LOG, persist::Ack, requests};
use crate::{
    control::proto::Response,
    hooks::{self, Finished, Kind},
    policy::{Effect, Event, Input, Nanos},
};

impl Daemon {
    /// Writes decisions and records events. A failed write is logged; the
    /// machine's next write for that service carries the whole state again.
    pub(super) fn apply(&mut self, mut effects: Vec<(u32, Effect)>) {
        // A member of a group that saw a backend change tells the others
        // (after every decision while groups exist: a timer or a batch may
        // have changed a member's health without an effect of its own).
        if !effects.is_empty() && self.services.has_groups() {
            effects.extend(self.services.sync_groups(Nanos(crate::datapath::monotonic_ns())));
        }
        // A written decision may change what can be served; a first verdict
        // that changes nothing waits for the reconcile tick.
        let wrote = effects.iter().any(|(_, e)| matches!(e, Effect::Write(_)));
        if self.record(effects) {
            self.persist();
        }
        if wrote {
            self.announce();
        }
    }

    /// [`Daemon::apply`] for an operator's action: `ack` is answered once
    /// the state holding the action is on disk.
    pub(super) fn apply_acked(&mut self, effects: Vec<(u32, Effect)>, ack: Ack) {
        self.record(effects);
        self.announce();
        self.saver.save(self.state.clone(), Some(ack));
    }

    /// Writes decisions, records events and intents; true when the state
    /// file must be written.
    fn record(&mut self, effects: Vec<(u32, Effect)>) -> bool {
        let mut persist = false;
        for (id, effect) in effects {
            match effect {
                Effect::Write(d) => {
                    if let Err(e) = self.switches.write(&mut self.dp, id, &d) {
                        warn!("service id {id}: writing the switch state: {e:#}");
                    }
                }
                Effect::Promote { seq, event } => self.promote(id, seq, &event),
                Effect::Event(ev) => {
                    info!("{ev}");
                    self.notify(id, &ev);
                    self.metrics
                        .transition(&ev.service, ev.cause.kind(), ev.detection);
                    let record = requests::record(&ev);
                    self.followers
                        .retain(|f| f.try_send(Response::Event(record.clone())).is_ok() || !f.is_closed());
                    if ev.from != ev.to {
                        self.state.last.insert(ev.service.clone(), record);
                    }
                    // Health changes move flap history: kept across restarts.
                    persist = true;
                    if self.events.len() == EVENT_LOG {
                        self.events.pop_front();
                    }
                    self.events.push_back(ev);
                }
            }
        }
        if persist {
            self.state.flaps = self.services.flaps();
        }
        let intents = self.services.intents();
        if intents != self.state.intents {
            self.state.intents = intents;
            persist = true;
        }
        persist
    }

    /// Starts the `promote` hook the machine of service `id` asked for.
    fn promote(&mut self, id: u32, seq: u64, event: &Event) {
        let Some(svc) = self.services.get(id) else {
            return;
        };
        let kind = Kind::Promote { seq };
        match &svc.cfg.failover.promote {
            Some(hook) => {
                let env = hooks::env(kind, event, &svc.cfg, requests::record(event).unix_ms);
                self.hooks.start(id, &svc.cfg.name, kind, hook, env);
            }
            // A machine asks only when the hook is configured; answer anyway
            // so traffic never waits for nothing.
            None => self.hook_finished(Finished {
                id,
                service: svc.cfg.name.clone(),
                kind,
                ended: crate::process::Ended::Exit(0),
                took: std::time::Duration::ZERO,
            }),
        }
    }

    /// Starts the service's `notify` hook for `event`, if it has one.
    fn notify(&mut self, id: u32, event: &Event) {
        let Some(svc) = self.services.get(id) else {
            return;
        };
        let Some(hook) = &svc.cfg.failover.notify else {
            return;
        };
        let env = hooks::env(Kind::Notify, event, &svc.cfg, requests::record(event).unix_ms);
        if !self.hooks.start(id, &svc.cfg.name, Kind::Notify, hook, env) {
            warn!(
                "{}: notify skipped: {} notifications already wait",
                svc.cfg.name,
                hooks::NOTIFIES_WAITING
            );
            self.metrics.hook(&event.service, "notify", "skipped", None);
        }
    }

    /// A hook ended: logged and counted; a promotion's end goes to its machine.
    pub(super) fn hook_finished(&mut self, done: Finished) {
        let Finished {
            id,
            service,
            kind,
            ended,
            took,
        } = done;
        self.metrics
            .hook(&service, kind.name(), ended.result(), Some(took));
        let line = format!("{service}: {} hook: {ended} after {took:.1?}", kind.name());
        if ended.ok() {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        if let Kind::Promote { seq } = kind {
            let input = Input::Promoted {
                seq,
                ok: ended.ok(),
                took,
                detail: ended.to_string(),
            };
            let now = Nanos(crate::datapath::monotonic_ns());
            let effects = self.services.input(id, now, input);
            self.apply(effects);
        }
    }

    /// Writes the state file off the loop ([`Saver`]).
    pub(super) fn persist(&mut self) {
        self.saver.save(self.state.clone(), None);
    }
}
