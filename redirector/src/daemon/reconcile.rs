//! Every second, what the maps hold is compared with what the daemon
//! decided, and repaired: a failed write is retried, an external writer
//! undone, a removed pin pinned again. Each repair is logged and counted
//! (`redirector_switch_drift_total`).
use log::warn;

use super::Daemon;

impl Daemon {
    pub(super) fn reconcile(&mut self) {
        match self.switches.reconcile(&mut self.dp) {
            Ok(repaired) if !repaired.is_empty() => {
                warn!("switch state of service ids {repaired:?} differed from the decision: rewritten");
                self.metrics.drift(repaired.len());
            }
            Ok(_) => {}
            Err(e) => warn!("reconciling switch states: {e:#}"),
        }
        self.check_pins();
    }
}
