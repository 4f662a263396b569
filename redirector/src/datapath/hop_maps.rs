//! The maps next-hop resolution writes, on their own handles (duplicated
//! fds) so the resolver runs on its own thread and never holds up the
//! decision loop. After start-up the resolver is the only writer of these
//! maps' hop fields.
//!
//! `BACKENDS` entries have two writers: the decision loop writes whole
//! entries (a service added or restarted, possibly under an id a retired
//! service had), the resolver only their hops. A hop update is a
//! read-modify-write under the lock the loop's writes take too, and lands
//! only if the entry still holds the address the resolver resolved: a
//! tracking that a reload made stale never writes an old backend's next hop
//! (or, read back, its address) over a new one.
use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData, MapError};
use redirector_common::{Addr, Backend as KBackend, IngressMac, NextHop, ingress_slot, names};

use super::{DatapathError, addr16, from16, map_err};

type Result<T> = std::result::Result<T, DatapathError>;

/// `BACKENDS`, `CLIENT_HOPS` and `LOCAL_ADDRS`.
pub struct HopMaps {
    pub(super) backends: Array<MapData, KBackend>,
    /// Shared with the [`super::Datapath`] that made these handles.
    pub(super) backends_lock: std::sync::Arc<std::sync::Mutex<()>>,
    pub(super) client_hops: HashMap<MapData, Addr, NextHop>,
    pub(super) local_addrs: HashMap<MapData, Addr, u8>,
    pub(super) ingress_macs: Array<MapData, IngressMac>,
}

/// A removal of a key that is already gone is not an error.
pub(super) fn absent_ok(map: &'static str, r: std::result::Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(map)(e)),
    }
}

impl HopMaps {
    /// Records `mac` as interface `ifindex`'s: frames arriving there for
    /// another MAC go to the stack untouched.
    pub fn set_ingress_mac(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<()> {
        self.ingress_macs
            .set(ingress_slot(ifindex), IngressMac::new(ifindex, mac), 0)
            .map_err(map_err(names::INGRESS_MACS))
    }

    /// Replaces the next hop of one backend, resolved for `addr` (keeps its
    /// address and port). Returns false, writing nothing, when the entry no
    /// longer holds `addr`: the id belongs to another backend now.
    pub fn set_backend_hop(&mut self, id: u32, slot: u8, addr: IpAddr, hop: NextHop) -> Result<bool> {
        let index = id * 2 + u32::from(slot & 1);
        let _held = self
            .backends_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut be = self.backends.get(&index, 0).map_err(map_err(names::BACKENDS))?;
        if be.addr != addr16(addr) {
            return Ok(false);
        }
        // Test builds: widen the window a racing writer would need.
        crate::fault::delay("HOP_WRITE");
        be.hop = hop;
        self.backends
            .set(index, be, 0)
            .map_err(map_err(names::BACKENDS))?;
        Ok(true)
    }

    /// Caches the next hop toward a client (NAT replies).
    pub fn set_client_hop(&mut self, client: IpAddr, hop: NextHop) -> Result<()> {
        self.client_hops
            .insert(Addr { addr: addr16(client) }, hop, 0)
            .map_err(map_err(names::CLIENT_HOPS))
    }

    /// Forgets the cached next hop toward a client (route or neighbour changed).
    pub fn remove_client_hop(&mut self, client: IpAddr) -> Result<()> {
        let r = self.client_hops.remove(&Addr { addr: addr16(client) });
        absent_ok(names::CLIENT_HOPS, r)
    }

    /// Clients with a cached next hop.
    pub fn client_hop_keys(&self) -> Vec<IpAddr> {
        self.client_hops
            .keys()
            .filter_map(std::result::Result::ok)
            .map(|a| from16(a.addr))
            .collect()
    }

    /// Marks an address as the gateway's own (replies to it are not translated).
    pub fn add_local_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.local_addrs
            .insert(Addr { addr: addr16(addr) }, 1, 0)
            .map_err(map_err(names::LOCAL_ADDRS))
    }

    /// Forgets a local address (it was removed from the host).
    pub fn remove_local_addr(&mut self, addr: IpAddr) -> Result<()> {
        let r = self.local_addrs.remove(&Addr { addr: addr16(addr) });
        absent_ok(names::LOCAL_ADDRS, r)
    }
}
