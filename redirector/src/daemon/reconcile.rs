//! Every second, what the maps hold is compared with what the daemon decided
//! and what the configuration says, and repaired: a failed write is retried,
//! an external writer undone, a removed pin pinned again. Each repair is
//! logged and counted by map (`redirector_drift_total{map}`).
use log::warn;

use super::{Daemon, resolver::Command};
use crate::{config::Service, datapath::Drift};

/// The allow/deny tries (up to 65,536 entries) are walked every this many
/// reconciliations: a full walk takes tens of milliseconds on the loop.
const ACL_EVERY: u32 = 10;

impl Daemon {
    pub(super) fn reconcile(&mut self) {
        match self.switches.reconcile(&mut self.dp) {
            Ok(repaired) if !repaired.is_empty() => {
                warn!("switch state of service ids {repaired:?} differed from the decision: rewritten");
                self.metrics.drift("SWITCH", repaired.len());
            }
            Ok(_) => {}
            Err(e) => warn!("reconciling switch states: {e:#}"),
        }
        let running: Vec<(u32, &Service)> = self.services.iter().map(|(id, s)| (id, &s.cfg)).collect();
        let drift = self.dp.reconcile(&running);
        self.reconciled_acl = (self.reconciled_acl + 1) % ACL_EVERY;
        let acl = (self.reconciled_acl == 0).then(|| self.dp.reconcile_acl(&running));
        for d in std::iter::once(drift).chain(acl) {
            match d {
                Ok(d) => self.count_drift(&d),
                Err(e) => warn!("reconciling the maps with the configuration: {e:#}"),
            }
        }
        self.check_pins();
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
