//! Effects of decisions, on the event loop: switch-state writes (the one
//! writer of `SWITCH` is [`Switches`](super::apply::Switches)), events for
//! the log, followers, metrics and `redirector events`, and the state file
//! (intents, flap history), saved in order off the loop.
use log::{info, warn};

use super::{Daemon, EVENT_LOG, persist::Ack, requests};
use crate::{control::proto::Response, policy::Effect};

impl Daemon {
    /// Writes decisions and records events. A failed write is logged; the
    /// machine's next write for that service carries the whole state again.
    pub(super) fn apply(&mut self, effects: Vec<(u32, Effect)>) {
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
                Effect::Event(ev) => {
                    info!("{ev}");
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

    /// Writes the state file off the loop ([`Saver`]).
    pub(super) fn persist(&mut self) {
        self.saver.save(self.state.clone(), None);
    }
}
