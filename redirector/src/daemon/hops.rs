//! Keeps every next hop the program uses current: backends (written into
//! their `BACKENDS` entries) and clients of NAT replies (`CLIENT_HOPS`). Both
//! come from the kernel's own route and neighbour tables via netlink — no
//! per-packet FIB lookup. Unresolved neighbours are asked to be kept resolved
//! ahead of time and retried; until then the program hands packets to the stack.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anyhow::Result;
use log::{info, warn};
use redirector_common::NextHop;

use crate::{
    datapath::Datapath,
    netlink::{self, Resolution},
};

/// Upper bound on clients waiting for a neighbour (the rest retry on their next miss).
const MAX_PENDING: usize = 4096;

const UNRESOLVED: NextHop = NextHop {
    ifindex: 0,
    dst_mac: [0; 6],
    src_mac: [0; 6],
};

#[derive(Default)]
pub struct Hops {
    /// (service id, slot) → (address, hop currently written).
    backends: HashMap<(u32, u8), (IpAddr, NextHop)>,
    /// Clients whose neighbour is not resolved yet.
    pending: HashSet<IpAddr>,
    /// Egress interfaces already allowed in the redirect map.
    egress: HashSet<u32>,
    /// The gateway's own addresses, mirrored into `LOCAL_ADDRS`.
    locals: HashSet<IpAddr>,
    /// Backend neighbours already handed to the kernel to keep resolved.
    kept: HashSet<(u32, IpAddr)>,
}

impl Hops {
    /// Resolves `addr` now. Never fails: an address without a route or
    /// neighbour yields an unresolved hop, logged, retried later. For backends
    /// (`keep`), the neighbour is also handed to the kernel to keep resolved
    /// ahead of time, so it never goes stale between packets.
    fn resolve(&mut self, dp: &mut Datapath, addr: IpAddr, keep: bool) -> NextHop {
        match netlink::resolve(addr) {
            Ok(Resolution::Resolved { hop: h, neighbour }) => {
                if keep
                    && self.kept.insert((h.ifindex, neighbour))
                    && let Err(e) = netlink::neighbour_keep_resolved(h.ifindex, neighbour)
                {
                    warn!("asking the kernel to keep {neighbour} resolved: {e}");
                    self.kept.remove(&(h.ifindex, neighbour));
                }
                if self.egress.insert(h.ifindex)
                    && let Err(e) = dp.add_egress(h.ifindex)
                {
                    warn!("next hop of {addr}: {e:#}");
                    self.egress.remove(&h.ifindex);
                    return UNRESOLVED;
                }
                NextHop {
                    ifindex: h.ifindex,
                    dst_mac: h.dst_mac,
                    src_mac: h.src_mac,
                }
            }
            Ok(Resolution::NoNeighbour { ifindex, neighbour }) => {
                if let Err(e) = netlink::neighbour_keep_resolved(ifindex, neighbour) {
                    warn!("asking the kernel to resolve {neighbour}: {e}");
                }
                UNRESOLVED
            }
            Err(e) => {
                warn!("next hop of {addr}: {e}");
                UNRESOLVED
            }
        }
    }

    /// Resolves a backend's hop at start-up and remembers it.
    pub fn backend(&mut self, dp: &mut Datapath, id: u32, slot: u8, addr: IpAddr) -> NextHop {
        let hop = self.resolve(dp, addr, true);
        if hop.ifindex == 0 {
            warn!(
                "backend {addr}: next hop not resolved yet; its packets go through the kernel stack until it is"
            );
        }
        self.backends.insert((id, slot), (addr, hop));
        hop
    }

    /// A NAT reply met an unknown client: resolve it.
    pub fn client(&mut self, dp: &mut Datapath, addr: redirector_common::Ip) -> Result<()> {
        let addr = crate::datapath::from16(addr);
        if self.locals.contains(&addr) {
            return Ok(());
        }
        let hop = self.resolve(dp, addr, false);
        if hop.ifindex != 0 {
            self.pending.remove(&addr);
            dp.set_client_hop(addr, hop)?;
        } else if self.pending.len() < MAX_PENDING {
            self.pending.insert(addr);
        }
        Ok(())
    }

    fn refresh_backends(&mut self, dp: &mut Datapath, only_unresolved: bool) -> Result<()> {
        let keys: Vec<_> = self.backends.keys().copied().collect();
        for key in keys {
            let Some(&(addr, old)) = self.backends.get(&key) else {
                continue;
            };
            if only_unresolved && old.ifindex != 0 {
                continue;
            }
            let new = self.resolve(dp, addr, true);
            if new != old {
                dp.set_backend_hop(key.0, key.1, new)?;
                self.backends.insert(key, (addr, new));
                info!("backend {addr}: next hop {} → {}", describe(&old), describe(&new));
            }
        }
        Ok(())
    }

    /// Mirrors the gateway's own addresses into `LOCAL_ADDRS`: replies to
    /// them (health probes) must never be translated.
    pub fn sync_locals(&mut self, dp: &mut Datapath) -> Result<()> {
        let now: HashSet<IpAddr> = netlink::local_addrs()?.into_iter().collect();
        for &a in now.difference(&self.locals) {
            dp.add_local_addr(a)?;
            dp.remove_client_hop(a)?;
        }
        for &a in self.locals.difference(&now) {
            dp.remove_local_addr(a)?;
        }
        self.locals = now;
        Ok(())
    }

    /// Something changed in routes, links, addresses or neighbours:
    /// re-resolve every backend and every cached client.
    pub fn refresh_all(&mut self, dp: &mut Datapath) -> Result<()> {
        self.sync_locals(dp)?;
        self.refresh_backends(dp, false)?;
        for addr in dp.client_hop_keys()? {
            let hop = self.resolve(dp, addr, false);
            if hop.ifindex == 0 {
                dp.remove_client_hop(addr)?;
            } else {
                dp.set_client_hop(addr, hop)?;
            }
        }
        self.retry_pending(dp)
    }

    fn retry_pending(&mut self, dp: &mut Datapath) -> Result<()> {
        let pending: Vec<_> = self.pending.drain().collect();
        for addr in pending {
            self.client(dp, crate::datapath::addr16(addr))?;
        }
        Ok(())
    }

    /// Periodic retry of whatever is still unresolved.
    pub fn retry(&mut self, dp: &mut Datapath) -> Result<()> {
        self.refresh_backends(dp, true)?;
        self.retry_pending(dp)
    }
}

fn describe(h: &NextHop) -> String {
    if h.ifindex == 0 {
        return "unresolved".into();
    }
    let m = h.dst_mac;
    format!(
        "ifindex {} via {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h.ifindex, m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
