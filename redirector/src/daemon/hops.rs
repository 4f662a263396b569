//! Keeps every next hop the program uses current: backends (written into
//! their `BACKENDS` entries) and clients of NAT replies (`CLIENT_HOPS`). Both
//! come from the kernel's own route and neighbour tables via netlink — no
//! per-packet FIB lookup. Backends' neighbours are handed to the kernel to keep
//! resolved ahead of time; until a next hop resolves, the program hands its
//! packets to the stack.
//!
//! A neighbour change re-resolves only what goes through that neighbour; a
//! link, address or route change re-resolves every backend and drops the
//! client cache (clients are re-resolved on their next reply).
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anyhow::Result;
use log::{info, warn};
use redirector_common::{Ip, NextHop};

use crate::{
    datapath::{Datapath, from16},
    netlink::{self, Changes, Resolution},
};

/// Upper bound on clients waiting for a neighbour (the rest retry on their next miss).
const MAX_PENDING: usize = 4096;

const UNRESOLVED: NextHop = NextHop {
    ifindex: 0,
    dst_mac: [0; 6],
    src_mac: [0; 6],
};

/// A neighbour: (ifindex, address).
type Neighbour = (u32, IpAddr);

/// One resolution: the hop to write and the neighbour it depends on.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Resolved {
    hop: NextHop,
    via: Option<Neighbour>,
}

#[derive(Default)]
pub struct Hops {
    /// (service id, slot) → (address, current resolution).
    backends: HashMap<(u32, u8), (IpAddr, Resolved)>,
    /// Clients with a hop in `CLIENT_HOPS` → the neighbour it depends on.
    clients: HashMap<IpAddr, Neighbour>,
    /// Clients whose neighbour is not resolved yet.
    pending: HashSet<IpAddr>,
    /// Egress interfaces already allowed in the redirect map.
    egress: HashSet<u32>,
    /// The gateway's own addresses, mirrored into `LOCAL_ADDRS`.
    locals: HashSet<IpAddr>,
    /// Backend neighbours already handed to the kernel to keep resolved.
    kept: HashSet<Neighbour>,
}

impl Hops {
    /// Resolves `addr` now. Never fails: an address without a route or
    /// neighbour yields an unresolved hop, logged, retried later. For backends
    /// (`keep`), the neighbour is also handed to the kernel to keep resolved
    /// ahead of time, so it never goes stale between packets.
    fn resolve(&mut self, dp: &mut Datapath, addr: IpAddr, keep: bool) -> Resolved {
        match netlink::resolve(addr) {
            Ok(Resolution::Resolved { hop: h, neighbour }) => {
                let via = Some((h.ifindex, neighbour));
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
                    return Resolved { hop: UNRESOLVED, via };
                }
                let hop = NextHop {
                    ifindex: h.ifindex,
                    dst_mac: h.dst_mac,
                    src_mac: h.src_mac,
                };
                Resolved { hop, via }
            }
            Ok(Resolution::NoNeighbour { ifindex, neighbour }) => {
                if let Err(e) = netlink::neighbour_keep_resolved(ifindex, neighbour) {
                    warn!("asking the kernel to resolve {neighbour}: {e}");
                }
                Resolved {
                    hop: UNRESOLVED,
                    via: Some((ifindex, neighbour)),
                }
            }
            Err(e) => {
                warn!("next hop of {addr}: {e}");
                Resolved {
                    hop: UNRESOLVED,
                    via: None,
                }
            }
        }
    }

    /// Resolves a backend's hop at start-up and remembers it.
    pub fn backend(&mut self, dp: &mut Datapath, id: u32, slot: u8, addr: IpAddr) -> NextHop {
        let r = self.resolve(dp, addr, true);
        if r.hop.ifindex == 0 {
            warn!(
                "backend {addr}: next hop not resolved yet; its packets go through the kernel stack until it is"
            );
        }
        self.backends.insert((id, slot), (addr, r));
        r.hop
    }

    /// NAT replies met clients without a cached hop: resolve them (each once).
    pub fn clients(&mut self, dp: &mut Datapath, addrs: impl IntoIterator<Item = Ip>) -> Result<()> {
        let unique: HashSet<IpAddr> = addrs.into_iter().map(from16).collect();
        for addr in unique {
            self.client(dp, addr)?;
        }
        Ok(())
    }

    fn client(&mut self, dp: &mut Datapath, addr: IpAddr) -> Result<()> {
        if self.locals.contains(&addr) {
            return Ok(());
        }
        let r = self.resolve(dp, addr, false);
        match (r.hop.ifindex, r.via) {
            (0, _) | (_, None) => {
                self.clients.remove(&addr);
                dp.remove_client_hop(addr)?;
                if self.pending.len() < MAX_PENDING {
                    self.pending.insert(addr);
                }
            }
            (_, Some(via)) => {
                self.pending.remove(&addr);
                dp.set_client_hop(addr, r.hop)?;
                self.clients.insert(addr, via);
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
            self.clients.remove(&a);
        }
        for &a in self.locals.difference(&now) {
            dp.remove_local_addr(a)?;
        }
        self.locals = now;
        Ok(())
    }

    /// Re-resolves the backends selected by `which` and writes what changed.
    fn refresh_backends(&mut self, dp: &mut Datapath, which: impl Fn(&Resolved) -> bool) -> Result<()> {
        let keys: Vec<_> = self
            .backends
            .iter()
            .filter(|(_, (_, r))| which(r))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(&(addr, old)) = self.backends.get(&key) else {
                continue;
            };
            let new = self.resolve(dp, addr, true);
            if new.hop != old.hop {
                dp.set_backend_hop(key.0, key.1, new.hop)?;
                info!(
                    "backend {addr}: next hop {} → {}",
                    describe(&old.hop),
                    describe(&new.hop)
                );
            }
            self.backends.insert(key, (addr, new));
        }
        Ok(())
    }

    /// Applies a batch of netlink changes.
    pub fn apply(&mut self, dp: &mut Datapath, changes: &Changes) -> Result<()> {
        if changes.full {
            self.sync_locals(dp)?;
            self.refresh_backends(dp, |_| true)?;
            // Dropping is cheaper than re-resolving a large cache; each client
            // is resolved again on its next reply.
            for addr in dp.client_hop_keys()? {
                dp.remove_client_hop(addr)?;
            }
            self.clients.clear();
            return self.retry_pending(dp);
        }
        let touched: HashSet<Neighbour> = changes.neighbours.iter().copied().collect();
        self.refresh_backends(dp, |r| {
            r.hop.ifindex == 0 || r.via.is_some_and(|v| touched.contains(&v))
        })?;
        let clients: Vec<IpAddr> = self
            .clients
            .iter()
            .filter(|(_, v)| touched.contains(v))
            .map(|(a, _)| *a)
            .collect();
        for addr in clients {
            self.client(dp, addr)?;
        }
        self.retry_pending(dp)
    }

    fn retry_pending(&mut self, dp: &mut Datapath) -> Result<()> {
        let pending: Vec<_> = self.pending.drain().collect();
        for addr in pending {
            self.client(dp, addr)?;
        }
        Ok(())
    }

    /// Periodic retry of whatever is still unresolved.
    pub fn retry(&mut self, dp: &mut Datapath) -> Result<()> {
        self.refresh_backends(dp, |r| r.hop.ifindex == 0)?;
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
