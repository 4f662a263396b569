//! What the maps hold is compared with what the daemon decided and what the
//! configuration says, and repaired: a failed write is retried, an external
//! writer undone, a removed pin pinned again. Each repair is logged and
//! counted by map (`redirector_drift_total{map}`).
//!
//! The work is spread over ten ticks a second, so no tick holds the loop
//! long (at 1024 services a whole pass costs ~12 ms, `cargo xtask bench
//! datapath`): every map is compared once a second — switch states and pins
//! on one tick, a tenth of the services' entries on each, one keyed map on
//! three others — and the allow/deny tries every 10 s.
use log::warn;

use super::{Daemon, resolver::Command};
use crate::{
    config::Service,
    datapath::{Drift, Keyed},
};

/// Ticks per pass (one pass a second at [`super::RECONCILE`] = 100 ms).
const TICKS: u32 = 10;
/// The allow/deny tries (up to 65,536 entries) are walked every this many
/// passes.
const ACL_EVERY: u32 = 10;

impl Daemon {
    pub(super) fn reconcile(&mut self) {
        let tick = self.reconcile_ticks % TICKS;
        self.reconcile_ticks = self.reconcile_ticks.wrapping_add(1);
        // First verdicts that changed no decision, and services gone.
        self.announce();
        // Groups changed by a reload (a member added, removed, restarted).
        if tick == 0 {
            let effects = self
                .services
                .sync_groups(crate::policy::Nanos(crate::datapath::monotonic_ns()));
            if !effects.is_empty() {
                self.apply(effects);
            }
        }
        if tick == 0 {
            match self.switches.reconcile(&mut self.dp) {
                Ok(repaired) if !repaired.is_empty() => {
                    warn!("switch state of service ids {repaired:?} differed from the decision: rewritten");
                    self.metrics.drift("SWITCH", repaired.len());
                }
                Ok(_) => {}
                Err(e) => warn!("reconciling switch states: {e:#}"),
            }
            self.check_pins();
        }
        let running: Vec<(u32, &Service)> = self.services.iter().map(|(id, s)| (id, &s.cfg)).collect();
        let slice: Vec<(u32, &Service)> = running
            .iter()
            .enumerate()
            .filter(|(i, _)| u32::try_from(*i).is_ok_and(|i| i % TICKS == tick))
            .map(|(_, s)| *s)
            .collect();
        let mut found = vec![self.dp.reconcile_services(&slice)];
        let keyed = match tick {
            2 => Some(Keyed::Services),
            5 => Some(Keyed::Reverse),
            8 => Some(Keyed::Vips),
            _ => None,
        };
        if let Some(map) = keyed {
            found.push(self.dp.reconcile_keys(map, &running));
        }
        if tick == 7 && (self.reconcile_ticks / TICKS).is_multiple_of(ACL_EVERY) {
            found.push(self.dp.reconcile_acl(&running));
        }
        for d in found {
            match d {
                Ok(d) => self.count_drift(&d),
                Err(e) => warn!("reconciling the maps with the configuration: {e:#}"),
            }
        }
    }

    fn count_drift(&mut self, d: &Drift) {
        if d.is_empty() {
            return;
        }
        warn!(
            "map entries differed from the configuration and were repaired: {}",
            d.repaired
                .iter()
                .map(|(m, n)| format!("{m} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for &(map, n) in &d.repaired {
            self.metrics.drift(map, n);
        }
        for &(id, slot) in &d.rehop {
            if let Some((_, svc)) = self.services.iter().find(|(i, _)| *i == id) {
                let addr = if slot == 0 {
                    svc.cfg.primary.addr
                } else {
                    svc.cfg.secondary.addr
                };
                self.resolver.send(Command::Track { id, slot, addr });
            }
        }
    }
}
