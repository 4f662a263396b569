//! Idle flow entries expire: the table is walked on a blocking thread (a
//! large table takes a while); only the unpinning of services left without
//! flow entries comes back to the loop.
use std::{collections::HashMap, time::Duration};

use log::{debug, warn};
use redirector_common::SwitchState;

use super::Daemon;
use crate::datapath::Swept;

/// A sweep in progress.
pub(super) struct Sweeping {
    /// The services pinned (flows kept) when the sweep started.
    pub seen: HashMap<u32, SwitchState>,
    pub task: tokio::task::JoinHandle<Swept>,
}

impl Daemon {
    /// Starts a sweep if any service keeps flow entries.
    pub(super) fn begin_sweep(&mut self) -> Option<Sweeping> {
        let seen = self.switches.pinned();
        if seen.is_empty() {
            return None;
        }
        match self.dp.flow_table() {
            Ok(mut table) => {
                let g = &self.cfg.gateway;
                let idle = self.services.flow_idle(
                    Duration::from_secs(g.tcp_flow_idle.into()),
                    Duration::from_secs(g.udp_flow_idle.into()),
                );
                let task = tokio::task::spawn_blocking(move || table.sweep(&idle));
                Some(Sweeping { seen, task })
            }
            Err(e) => {
                warn!("sweeping idle flow entries: {e:#}");
                None
            }
        }
    }

    /// A sweep is done: services pinned before it that have no entry left
    /// are unpinned.
    pub(super) fn end_sweep(
        &mut self,
        seen: HashMap<u32, SwitchState>,
        done: Result<Swept, tokio::task::JoinError>,
    ) {
        match done {
            Ok(swept) => {
                self.flow_entries = u64::try_from(swept.kept).ok();
                if swept.removed > 0 {
                    debug!("swept {} idle flow entries", swept.removed);
                }
                match self.switches.unpin(&mut self.dp, &seen, &swept.live) {
                    Ok(ids) if !ids.is_empty() => debug!("services {ids:?}: no flow entries left"),
                    Ok(_) => {}
                    Err(e) => warn!("unpinning services: {e:#}"),
                }
            }
            Err(e) => warn!("flow sweep task: {e}"),
        }
    }
}
