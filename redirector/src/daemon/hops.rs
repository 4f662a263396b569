//! Keeps every next hop the program uses current: backends (written into
//! their `BACKENDS` entries) and clients of NAT replies (`CLIENT_HOPS`). Both
//! come from the kernel's own route and neighbour tables via netlink — no
//! per-packet FIB lookup. Until a next hop resolves, the program hands its
//! packets to the kernel stack, which resolves and delivers them.
//!
//! - Backends' neighbours are handed to the kernel to keep resolved ahead of
//!   time (managed entries); clients' are not (there can be any number).
//! - Only the configured interfaces are redirect targets: a next hop out of
//!   any other interface stays unresolved (the stack forwards those packets)
//!   rather than being redirected to a device that may not transmit XDP frames.
//! - A neighbour change costs one query: backends behind it are re-resolved,
//!   clients behind it get the new MAC (or are dropped from the cache if the
//!   neighbour is gone). Links, addresses and routes changing re-resolve every
//!   backend and drop the client cache (clients resolve again on their next reply).
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anyhow::Result;
use log::{debug, info, warn};
use redirector_common::{DEFAULT_CLIENT_HOPS, Ip, NextHop};

use crate::{
    datapath::{HopMaps, from16},
    netlink::{self, Resolution},
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

/// Next hops of backends and clients, and what they depend on.
pub struct Hops {
    /// Configured interfaces: the only redirect targets.
    allowed: HashSet<u32>,
    /// (service id, slot) → (address, current resolution).
    backends: HashMap<(u32, u8), (IpAddr, Resolved)>,
    /// Clients with a hop in `CLIENT_HOPS` → the neighbour it goes through.
    clients: HashMap<IpAddr, Neighbour>,
    /// Neighbours of cached clients → the hop they were written with.
    client_neighbours: HashMap<Neighbour, NextHop>,
    /// Clients whose neighbour is not resolved yet.
    pending: HashSet<IpAddr>,
    /// The gateway's own addresses, mirrored into `LOCAL_ADDRS`.
    locals: HashSet<IpAddr>,
    /// Backend neighbours already handed to the kernel to keep resolved.
    kept: HashSet<Neighbour>,
    /// Addresses already warned about (one line per cause, not per packet).
    warned: HashSet<IpAddr>,
    /// Neighbours to keep resolved once the start is committed (`None` after).
    deferred: Option<Vec<Neighbour>>,
    /// Backends whose egress interface changed since [`Hops::take_egress_changes`].
    egress_changed: Vec<((u32, u8), u32)>,
    /// The MAC written to `INGRESS_MACS` per configured interface.
    macs: HashMap<u32, [u8; 6]>,
    /// Interfaces said to share an `INGRESS_MACS` slot.
    warned_slots: HashSet<u32>,
}

impl Hops {
    /// Next hops may only leave through `allowed` (the configured interfaces).
    pub fn new(allowed: impl IntoIterator<Item = u32>) -> Hops {
        Hops {
            allowed: allowed.into_iter().collect(),
            backends: HashMap::new(),
            clients: HashMap::new(),
            client_neighbours: HashMap::new(),
            pending: HashSet::new(),
            locals: HashSet::new(),
            kept: HashSet::new(),
            warned: HashSet::new(),
            deferred: Some(Vec::new()),
            egress_changed: Vec::new(),
            macs: HashMap::new(),
            warned_slots: HashSet::new(),
        }
    }

    /// Hands a backend's neighbour to the kernel to keep resolved (a managed
    /// entry) — or, before [`Hops::commit`], remembers it: a start that is
    /// refused later must leave the host's neighbour table as it found it.
    fn keep_resolved(&mut self, n: Neighbour) {
        if let Some(deferred) = &mut self.deferred {
            deferred.push(n);
            return;
        }
        match netlink::neighbour_keep_resolved(n.0, n.1) {
            Ok(()) => {
                self.kept.insert(n);
            }
            Err(e) => warn!("asking the kernel to keep {} resolved: {e}", n.1),
        }
    }

    /// The start succeeded: from now on neighbour entries are written.
    pub fn commit(&mut self) {
        for n in self.deferred.take().unwrap_or_default() {
            self.keep_resolved(n);
        }
    }

    fn warn_once(&mut self, addr: IpAddr, msg: impl FnOnce() -> String) {
        if self.warned.insert(addr) {
            warn!("{}", msg());
        }
    }

    /// Resolves `addr` now. Never fails: an address without a route or
    /// neighbour, or reached through an interface that is not configured,
    /// yields an unresolved hop (logged once), retried later. For backends
    /// (`keep`) the neighbour is handed to the kernel to keep resolved.
    fn resolve(&mut self, addr: IpAddr, keep: bool) -> Resolved {
        match netlink::resolve(addr) {
            Ok(Resolution::Resolved { hop: h, neighbour }) => {
                let via = Some((h.ifindex, neighbour));
                if !self.allowed.contains(&h.ifindex) {
                    self.warn_once(addr, || {
                        format!(
                            "next hop of {addr} leaves through ifindex {}, which is not in [gateway] \
                             interfaces: the kernel stack forwards that traffic",
                            h.ifindex
                        )
                    });
                    return Resolved {
                        hop: UNRESOLVED,
                        via: None,
                    };
                }
                if keep && !self.kept.contains(&(h.ifindex, neighbour)) {
                    self.keep_resolved((h.ifindex, neighbour));
                }
                self.warned.remove(&addr);
                let hop = NextHop {
                    ifindex: h.ifindex,
                    dst_mac: h.dst_mac,
                    src_mac: h.src_mac,
                };
                Resolved { hop, via }
            }
            Ok(Resolution::NoNeighbour { ifindex, neighbour }) => {
                // Clients: the stack resolves the neighbour while delivering
                // the packet it was handed; backends are kept resolved.
                if keep {
                    self.keep_resolved((ifindex, neighbour));
                }
                Resolved {
                    hop: UNRESOLVED,
                    via: Some((ifindex, neighbour)),
                }
            }
            Err(e) => {
                self.warn_once(addr, || format!("next hop of {addr}: {e}"));
                Resolved {
                    hop: UNRESOLVED,
                    via: None,
                }
            }
        }
    }

    /// Resolves a backend's hop at start-up and remembers it.
    pub fn backend(&mut self, id: u32, slot: u8, addr: IpAddr) -> NextHop {
        let r = self.resolve(addr, true);
        if r.hop.ifindex == 0 {
            warn!(
                "backend {addr}: next hop not resolved yet; its packets go through the kernel stack until it is"
            );
        }
        self.backends.insert((id, slot), (addr, r));
        self.egress_changed.push(((id, slot), r.hop.ifindex));
        r.hop
    }

    /// A backend added by a reload (its entry is already written with the hop
    /// resolved then): keep it current from now on.
    pub fn track(&mut self, dp: &mut HopMaps, id: u32, slot: u8, addr: IpAddr) -> Result<()> {
        let r = self.resolve(addr, true);
        if !dp.set_backend_hop(id, slot, addr, r.hop)? {
            debug!("backend {addr} (service id {id}): its entry is another backend's now; not tracked");
            return Ok(());
        }
        self.backends.insert((id, slot), (addr, r));
        self.egress_changed.push(((id, slot), r.hop.ifindex));
        Ok(())
    }

    /// A service removed by a reload: stop keeping its backends current.
    pub fn untrack(&mut self, id: u32) {
        for slot in [0, 1] {
            if self.backends.remove(&(id, slot)).is_some() {
                self.egress_changed.push(((id, slot), 0));
            }
        }
    }

    /// (service id, slot) → egress ifindex (0: unresolved) of every backend
    /// whose egress changed since the last call: the decision loop maps link
    /// carrier events to the backends behind them.
    pub fn take_egress_changes(&mut self) -> Vec<((u32, u8), u32)> {
        std::mem::take(&mut self.egress_changed)
    }

    /// NAT replies met clients without a cached hop: resolve them (each once).
    pub fn clients(&mut self, dp: &mut HopMaps, addrs: impl IntoIterator<Item = Ip>) -> Result<()> {
        let unique: HashSet<IpAddr> = addrs.into_iter().map(from16).collect();
        // The program asks again on every reply until a hop is cached; clients
        // already waiting are retried on the timer, not on every request.
        let fresh: Vec<IpAddr> = unique.into_iter().filter(|a| !self.pending.contains(a)).collect();
        for addr in fresh {
            self.client(dp, addr)?;
        }
        Ok(())
    }

    fn client(&mut self, dp: &mut HopMaps, addr: IpAddr) -> Result<()> {
        if self.locals.contains(&addr) {
            return Ok(());
        }
        if self.clients.len() >= DEFAULT_CLIENT_HOPS as usize {
            // The kernel's LRU evicted some of ours: forget what it no longer has.
            let live: HashSet<IpAddr> = dp.client_hop_keys().into_iter().collect();
            self.clients.retain(|a, _| live.contains(a));
            let used: HashSet<Neighbour> = self.clients.values().copied().collect();
            self.client_neighbours.retain(|n, _| used.contains(n));
        }
        let r = self.resolve(addr, false);
        match r.via {
            Some(via) if r.hop.ifindex != 0 => {
                self.pending.remove(&addr);
                dp.set_client_hop(addr, r.hop)?;
                self.clients.insert(addr, via);
                self.client_neighbours.insert(via, r.hop);
            }
            _ => {
                if self.clients.remove(&addr).is_some() {
                    dp.remove_client_hop(addr)?;
                }
                if self.pending.len() < MAX_PENDING {
                    self.pending.insert(addr);
                }
            }
        }
        Ok(())
    }

    /// Mirrors the gateway's own addresses into `LOCAL_ADDRS`: replies to
    /// them (health probes) must never be translated. Link-local addresses
    /// are left out: no NAT client is ever reached through one.
    pub fn sync_locals(&mut self, dp: &mut HopMaps) -> Result<()> {
        self.sync_ingress(dp);
        let now: HashSet<IpAddr> = netlink::local_addrs()?
            .into_iter()
            .filter(|a| !is_link_local(a))
            .collect();
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

    /// Mirrors each configured interface's MAC into `INGRESS_MACS`: frames
    /// addressed to another MAC are another host's. Two interfaces in one
    /// slot are both left unchecked (said once); an interface whose MAC
    /// cannot be read keeps its entry.
    fn sync_ingress(&mut self, dp: &mut HopMaps) {
        let mut by_slot: HashMap<u32, Vec<u32>> = HashMap::new();
        for &i in &self.allowed {
            by_slot
                .entry(redirector_common::ingress_slot(i))
                .or_default()
                .push(i);
        }
        for (slot, ifs) in by_slot {
            if let [ifindex] = ifs[..] {
                match netlink::link_mac(ifindex) {
                    Ok(mac) if self.macs.get(&ifindex) != Some(&mac) => {
                        if let Err(e) = dp.set_ingress_mac(ifindex, mac) {
                            warn!("writing the MAC of ifindex {ifindex}: {e}");
                            continue;
                        }
                        self.macs.insert(ifindex, mac);
                    }
                    Ok(_) => {}
                    Err(e) => warn!("reading the MAC of ifindex {ifindex}: {e}"),
                }
            } else if ifs.iter().any(|i| !self.warned_slots.contains(i)) {
                warn!(
                    "interfaces {ifs:?} share slot {slot} of INGRESS_MACS: frames to other hosts' MACs are \
                     not told apart on them"
                );
                self.warned_slots.extend(ifs);
            }
        }
    }

    /// Re-resolves the backends selected by `which` and writes what changed.
    fn refresh_backends(&mut self, dp: &mut HopMaps, which: impl Fn(&Resolved) -> bool) -> Result<()> {
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
            let new = self.resolve(addr, true);
            if new.hop.ifindex != old.hop.ifindex {
                self.egress_changed.push((key, new.hop.ifindex));
            }
            if new.hop != old.hop {
                if !dp.set_backend_hop(key.0, key.1, addr, new.hop)? {
                    // A reload gave the id to another backend; its Untrack is on the way.
                    self.backends.remove(&key);
                    continue;
                }
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

    /// Links, addresses or routes changed (or change messages were lost).
    pub fn refresh_all(&mut self, dp: &mut HopMaps) -> Result<()> {
        self.sync_locals(dp)?;
        self.refresh_backends(dp, |_| true)?;
        // Routes to clients may have changed: drop the cache; each client is
        // resolved again on its next reply.
        for addr in dp.client_hop_keys() {
            dp.remove_client_hop(addr)?;
        }
        self.clients.clear();
        self.client_neighbours.clear();
        self.retry_pending(dp)
    }

    /// Neighbour entries changed.
    pub fn neighbours_changed(&mut self, dp: &mut HopMaps, changed: &[Neighbour]) -> Result<()> {
        let touched: HashSet<Neighbour> = changed.iter().copied().collect();
        self.refresh_backends(dp, |r| {
            r.hop.ifindex == 0 || r.via.is_some_and(|v| touched.contains(&v))
        })?;
        for n in touched {
            let Some(&old) = self.client_neighbours.get(&n) else {
                continue;
            };
            let mac = netlink::neighbour(n.0, n.1).unwrap_or_else(|e| {
                warn!("neighbour {} on ifindex {}: {e}", n.1, n.0);
                None
            });
            let behind: Vec<IpAddr> = self
                .clients
                .iter()
                .filter(|(_, v)| **v == n)
                .map(|(a, _)| *a)
                .collect();
            match mac {
                Some(mac) if mac == old.dst_mac => {}
                Some(mac) => {
                    let hop = NextHop { dst_mac: mac, ..old };
                    for a in behind {
                        dp.set_client_hop(a, hop)?;
                    }
                    self.client_neighbours.insert(n, hop);
                }
                None => {
                    for a in behind {
                        dp.remove_client_hop(a)?;
                        self.clients.remove(&a);
                    }
                    self.client_neighbours.remove(&n);
                }
            }
        }
        self.retry_pending(dp)
    }

    fn retry_pending(&mut self, dp: &mut HopMaps) -> Result<()> {
        let pending: Vec<_> = self.pending.drain().collect();
        for addr in pending {
            self.client(dp, addr)?;
        }
        Ok(())
    }

    /// Periodic retry of whatever is still unresolved.
    pub fn retry(&mut self, dp: &mut HopMaps) -> Result<()> {
        self.refresh_backends(dp, |r| r.hop.ifindex == 0)?;
        self.retry_pending(dp)
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
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
