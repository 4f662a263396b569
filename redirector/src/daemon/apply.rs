//! The only writer of `SWITCH`. Every write goes through [`Switches`]: it
//! turns a decision into the 8-byte [`SwitchState`], bumps `generation`, and
//! makes the one atomic map write. The flow sweep's "clear the pinned flag"
//! is a read-modify-write that only lands if the generation is still the one
//! the sweep started from, so a failover that happens meanwhile is never
//! undone.
//!
//! What [`Switches`] remembers is what the map must hold, written or not: a
//! write that failed, or a map changed by another writer, is repaired by
//! [`Switches::reconcile`], which the loop runs every second.
use std::collections::{HashMap, HashSet};

use redirector_common::{SLOT_PRIMARY, SLOT_SECONDARY, SWITCH_DROP, SWITCH_PASS, SWITCH_PINNED, SwitchState};

use crate::{
    datapath::{Datapath, DatapathError, unpinned},
    policy::{AllDown, Desired, Slot},
};

/// The switch states the map must hold (written, adopted, or still to be
/// written after a failure), by service id.
#[derive(Default)]
pub struct Switches {
    last: HashMap<u32, SwitchState>,
}

fn slot_byte(s: Slot) -> u8 {
    match s {
        Slot::Primary => SLOT_PRIMARY,
        Slot::Secondary => SLOT_SECONDARY,
    }
}

fn bits(b: [bool; 2]) -> u8 {
    u8::from(b[0]) | (u8::from(b[1]) << 1)
}

impl Switches {
    /// Remembers a state found in the map (a pinned data plane being
    /// adopted), so the next write continues its generation and keeps its
    /// pinned flag.
    pub fn adopt(&mut self, id: u32, st: SwitchState) {
        self.last.insert(id, st);
    }

    /// Clears the state of a removed service (its id may be given to
    /// another service later, which must start from nothing).
    pub fn reset(&mut self, dp: &mut Datapath, id: u32) -> Result<(), DatapathError> {
        dp.set_switch(id, bytemuck::Zeroable::zeroed())?;
        self.last.remove(&id);
        Ok(())
    }

    /// Writes the decision `d` for service `id`. Flow entries may exist once
    /// traffic could have been pinned (the secondary active, a drained
    /// primary, load sharing), so [`SWITCH_PINNED`] is set in that same write
    /// and only a sweep clears it.
    pub fn write(&mut self, dp: &mut Datapath, id: u32, d: &Desired) -> Result<SwitchState, DatapathError> {
        let prev = self.last.get(&id).copied();
        let active = slot_byte(d.active);
        let mut flags = prev.map_or(0, |p| p.flags & SWITCH_PINNED);
        if active != SLOT_PRIMARY || d.share > 0 || d.drained[0] {
            flags |= SWITCH_PINNED;
        }
        flags |= match d.all_down {
            Some(AllDown::Drop) => SWITCH_DROP,
            Some(AllDown::Pass) => SWITCH_PASS,
            Some(AllDown::Keep) | None => 0,
        };
        let st = SwitchState {
            active,
            up: bits(d.up),
            drained: bits(d.drained),
            flags,
            share: d.share.min(100),
            _pad: 0,
            generation: prev.map_or(1, |p| p.generation.wrapping_add(1)),
        };
        // The decision is what the map must hold, even if this write fails.
        self.last.insert(id, st);
        dp.set_switch(id, st)?;
        Ok(st)
    }

    /// Compares every service's map entry with the decision and rewrites
    /// the ones that differ (a failed write, another writer), with a new
    /// generation. Returns the services repaired.
    pub fn reconcile(&mut self, dp: &mut Datapath) -> Result<Vec<u32>, DatapathError> {
        let mut repaired = Vec::new();
        for (&id, want) in &mut self.last {
            if dp.switch(id)? == *want {
                continue;
            }
            want.generation = want.generation.wrapping_add(1);
            dp.set_switch(id, *want)?;
            repaired.push(id);
        }
        repaired.sort_unstable();
        Ok(repaired)
    }

    /// The states a flow sweep starts from (only pinned services matter).
    pub fn pinned(&self) -> HashMap<u32, SwitchState> {
        self.last
            .iter()
            .filter(|(_, st)| st.pinned())
            .map(|(id, st)| (*id, *st))
            .collect()
    }

    /// After a sweep that started from `seen` and found entries only for the
    /// services in `live`: clears the pinned flag where allowed, unless the
    /// state changed since (a newer generation wins). Returns services unpinned.
    pub fn unpin(
        &mut self,
        dp: &mut Datapath,
        seen: &HashMap<u32, SwitchState>,
        live: &HashSet<u32>,
    ) -> Result<Vec<u32>, DatapathError> {
        let mut done = Vec::new();
        for (&id, &st) in seen {
            if self.last.get(&id) != Some(&st) {
                continue;
            }
            if let Some(next) = unpinned(st, live, id) {
                dp.set_switch(id, next)?;
                self.last.insert(id, next);
                done.push(id);
            }
        }
        Ok(done)
    }
}
