//! The host changing under the running daemon: interfaces deleted, renamed
//! or re-created, pins removed, carriers lost. Each has a defined outcome
//! (docs/reliability.md, "the ground moves").
use anyhow::{Result, bail};
use log::warn;

use super::Daemon;
use crate::{datapath::monotonic_ns, netlink, policy::Nanos};

impl Daemon {
    /// The configured interfaces after link changes. One deleted or renamed
    /// is reported (its traffic goes on, or stops, with the interface; the
    /// program follows the ifindex); one re-created under its name (a new
    /// ifindex) ends the daemon, for its supervisor's restart to attach to it.
    pub(super) fn interfaces_moved(&mut self, links: &[(u32, bool)]) -> Result<()> {
        let touched = links.iter().any(|&(i, up)| !up || !self.ifindexes.contains(&i));
        if !touched {
            return Ok(());
        }
        for (name, &ifindex) in self.cfg.gateway.interfaces.iter().zip(&self.ifindexes) {
            let now = netlink::ifindex(name).ok();
            if now == Some(ifindex) {
                self.moved_interfaces.remove(name);
                continue;
            }
            if let Some(new) = now {
                bail!(
                    "interface {name} was re-created (ifindex {ifindex} → {new}); exiting so the supervisor \
                     restarts the daemon, which attaches to it (the other interfaces forward meanwhile)"
                );
            }
            if self.moved_interfaces.insert(name.clone()) {
                match netlink::ifname(ifindex) {
                    Some(other) => warn!(
                        "interface {name} was renamed to {other}: forwarding goes on (the program follows the \
                         interface), but a restart refuses the configuration until [gateway] interfaces names \
                         {other}"
                    ),
                    None => warn!(
                        "interface {name} is gone: nothing is forwarded through it; if it comes back, the daemon \
                         exits for its supervisor to restart it and attach"
                    ),
                }
            }
        }
        Ok(())
    }

    /// Pins removed under the running daemon are pinned again from its own
    /// handles (maps and XDP links), so the data plane still outlives it and
    /// the next start adopts the same maps.
    pub(super) fn check_pins(&mut self) {
        for (name, r) in self.dp.repin_missing(&self.pins) {
            match r {
                Ok(()) => warn!("the pin of map {name} was removed under the running daemon: pinned again"),
                Err(e) => warn!("the pin of map {name} was removed and pinning it again failed: {e}"),
            }
            self.metrics.drift("pin", 1);
        }
        for held in &mut self.links {
            match held.repin(&self.pins) {
                Some((name, Ok(()))) => {
                    warn!(
                        "the pin of the XDP link on {name} was removed under the running daemon: pinned again"
                    );
                }
                Some((name, Err(e))) => {
                    warn!("{e:#}: XDP is off {name} now; restart the daemon to attach it again")
                }
                None => continue,
            }
            self.metrics.drift("pin", 1);
        }
    }

    /// Carrier changes: a backend whose egress link lost its carrier is down
    /// now (the kernel says so; nothing from the network can forge it). A link
    /// that came back gets its backends probed at once.
    pub(super) fn carrier(&mut self, links: &[(u32, bool)]) {
        let now = Nanos(monotonic_ns());
        for &(ifindex, up) in links {
            let behind: Vec<(u32, u8)> = self
                .egress
                .iter()
                .filter(|(_, i)| **i == ifindex)
                .map(|(k, _)| *k)
                .collect();
            for (id, slot) in behind {
                if up {
                    self.services.probe_now(id, slot);
                } else {
                    let effects = self.services.path_down(id, slot, now);
                    self.apply(effects);
                }
            }
        }
    }
}
