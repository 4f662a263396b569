//! The data plane seen from userspace: loads the XDP object with the
//! configured map sizes and writes services, switch states, next hops and
//! counters. One method per kind of write; nothing here decides anything.
use std::net::IpAddr;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp},
};
use redirector_common::{
    Addr, Backend as KBackend, BackendStats, Counter, Endpoint, FlowKey, FlowValue, Ip, NextHop,
    PORT_BACKEND, PORT_SERVICE, ReverseInfo, SLOT_PRIMARY, SLOT_SECONDARY, SWITCH_PINNED, ServiceInfo,
    SwitchState, ip_from_bytes, ip_to_bytes, names, programs,
};
use thiserror::Error;

use crate::config::{Mode, Service};

/// Errors from loading or writing the data plane.
#[derive(Debug, Error)]
pub enum DatapathError {
    /// The object failed to load (verifier log included by aya).
    #[error("loading the XDP object")]
    Load(#[from] aya::EbpfError),
    /// The object lacks a map or program this version expects.
    #[error("the XDP object has no {kind} named {name}")]
    Missing {
        /// "map" or "program".
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: MapError,
    },
    /// Program load or attach failed.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The kernel refused an egress interface for redirects.
    #[error("egress interface {ifindex}: {source}")]
    Egress {
        /// The interface.
        ifindex: u32,
        /// The kernel's answer.
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    /// The program's log ring could not be opened.
    #[error("program log: {source}")]
    Logger {
        /// aya-log's error.
        #[source]
        source: aya_log::Error,
    },
    /// A service id beyond the configured maximum.
    #[error("service id {id} exceeds max_services {max}")]
    ServiceId {
        /// The id.
        id: u32,
        /// The configured maximum.
        max: u32,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Services (≥ 1024).
    pub max_services: u32,
    /// Flow-table entries (LRU).
    pub flow_entries: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            max_services: redirector_common::DEFAULT_MAX_SERVICES,
            flow_entries: redirector_common::DEFAULT_FLOW_ENTRIES,
        }
    }
}

/// The form every key uses ([`Ip`]): IPv4 is IPv4-mapped.
pub fn addr16(addr: IpAddr) -> Ip {
    match addr {
        IpAddr::V4(a) => ip_from_bytes(a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => ip_from_bytes(a.octets()),
    }
}

/// Loaded data plane.
pub struct Datapath {
    ebpf: Ebpf,
    sizes: Sizes,
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

impl Datapath {
    /// Loads the embedded object with `sizes` (program not yet attached).
    pub fn load(sizes: Sizes) -> Result<Self> {
        Self::load_bytes(crate::EBPF_OBJECT, sizes)
    }

    /// Loads `object` (tests and benchmarks pass the same embedded bytes).
    pub fn load_bytes(object: &[u8], sizes: Sizes) -> Result<Self> {
        let services = sizes.max_services;
        // aya-log statements below the process's log level are skipped in the
        // kernel before any formatting: off the hot path unless asked for.
        let log_level: u8 = match log::max_level() {
            log::LevelFilter::Off => 0,
            log::LevelFilter::Error => 1,
            log::LevelFilter::Warn => 2,
            log::LevelFilter::Info => 3,
            log::LevelFilter::Debug => 4,
            log::LevelFilter::Trace => 5,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries(names::SERVICES, services)
            .map_max_entries(names::SWITCH, services)
            .map_max_entries(names::BACKENDS, services * 2)
            .map_max_entries(names::REVERSE, services * 2)
            .map_max_entries(names::BACKEND_STATS, services * 2)
            .map_max_entries(names::FLOWS, sizes.flow_entries)
            .load(object)?;
        let prog: &mut Xdp = ebpf
            .program_mut(programs::REDIRECTOR)
            .ok_or(DatapathError::Missing {
                kind: "program",
                name: programs::REDIRECTOR,
            })?
            .try_into()?;
        prog.load()?;
        Ok(Datapath { ebpf, sizes })
    }

    /// The loaded XDP program (attach it, or test-run it).
    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(programs::REDIRECTOR)
            .ok_or(DatapathError::Missing {
                kind: "program",
                name: programs::REDIRECTOR,
            })?
            .try_into()?)
    }

    /// Sizes the maps were created with.
    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::Missing { kind: "map", name })
    }

    fn map_ref(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or(DatapathError::Missing { kind: "map", name })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, K, V>> {
        HashMap::try_from(self.map(name)?).map_err(map_err(name))
    }

    fn array<V: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, V>> {
        Array::try_from(self.map(name)?).map_err(map_err(name))
    }

    /// Writes service `id` completely. Backends, switch state and reverse
    /// entries go first and the service key last, so the program never sees a
    /// half-written service. `hops` are the backends' next hops (primary,
    /// secondary); `state` the initial switch state.
    pub fn set_service(
        &mut self,
        id: u32,
        svc: &Service,
        hops: [NextHop; 2],
        state: SwitchState,
    ) -> Result<()> {
        if id >= self.sizes.max_services {
            return Err(DatapathError::ServiceId {
                id,
                max: self.sizes.max_services,
            });
        }
        let vip = addr16(svc.vip);
        let proto = svc.protocol.number();
        let backends = [
            (SLOT_PRIMARY, &svc.primary, hops[0]),
            (SLOT_SECONDARY, &svc.secondary, hops[1]),
        ];
        for (slot, be, hop) in backends {
            let kb = KBackend {
                addr: addr16(be.addr),
                port_be: be.port.map_or(0, u16::to_be),
                _pad: 0,
                hop,
            };
            self.array::<KBackend>(names::BACKENDS)?
                .set(id * 2 + u32::from(slot), kb, 0)
                .map_err(map_err(names::BACKENDS))?;
            if svc.mode == Mode::Nat {
                self.add_port_flag(be.port.unwrap_or(svc.port), PORT_BACKEND)?;
                let key = Endpoint {
                    addr: addr16(be.addr),
                    port_be: be.port.unwrap_or(svc.port).to_be(),
                    proto,
                    _pad: 0,
                };
                let info = ReverseInfo {
                    service: id,
                    vip,
                    port_be: svc.port.to_be(),
                    slot,
                    _pad: 0,
                };
                self.hash::<Endpoint, ReverseInfo>(names::REVERSE)?
                    .insert(key, info, 0)
                    .map_err(map_err(names::REVERSE))?;
            }
        }
        self.set_switch(id, state)?;
        self.add_port_flag(svc.port, PORT_SERVICE)?;
        let key = Endpoint {
            addr: vip,
            port_be: svc.port.to_be(),
            proto,
            _pad: 0,
        };
        let mode = match svc.mode {
            Mode::Nat => redirector_common::Mode::Nat,
            Mode::Dsr => redirector_common::Mode::Dsr,
        };
        let info = ServiceInfo {
            id,
            mode: mode as u8,
            _pad: [0; 3],
        };
        self.hash::<Endpoint, ServiceInfo>(names::SERVICES)?
            .insert(key, info, 0)
            .map_err(map_err(names::SERVICES))
    }

    /// Marks `port` as used (a superset filter: bits are never cleared while running).
    fn add_port_flag(&mut self, port: u16, flag: u8) -> Result<()> {
        let mut arr = self.array::<u8>(names::PORTS)?;
        let old = arr.get(&u32::from(port), 0).map_err(map_err(names::PORTS))?;
        arr.set(u32::from(port), old | flag, 0)
            .map_err(map_err(names::PORTS))
    }

    /// One atomic write: the service's active backend and up/drained bits.
    pub fn set_switch(&mut self, id: u32, state: SwitchState) -> Result<()> {
        self.array::<SwitchState>(names::SWITCH)?
            .set(id, state, 0)
            .map_err(map_err(names::SWITCH))
    }

    /// Reads the switch state of service `id`.
    pub fn switch(&self, id: u32) -> Result<SwitchState> {
        Array::<_, SwitchState>::try_from(self.map_ref(names::SWITCH)?)
            .map_err(map_err(names::SWITCH))?
            .get(&id, 0)
            .map_err(map_err(names::SWITCH))
    }

    /// Replaces the next hop of one backend (keeps its address and port).
    pub fn set_backend_hop(&mut self, id: u32, slot: u8, hop: NextHop) -> Result<()> {
        let index = id * 2 + u32::from(slot & 1);
        let mut arr = self.array::<KBackend>(names::BACKENDS)?;
        let mut be = arr.get(&index, 0).map_err(map_err(names::BACKENDS))?;
        be.hop = hop;
        arr.set(index, be, 0).map_err(map_err(names::BACKENDS))
    }

    /// Caches the next hop toward a client (NAT replies).
    pub fn set_client_hop(&mut self, client: IpAddr, hop: NextHop) -> Result<()> {
        self.hash::<Addr, NextHop>(names::CLIENT_HOPS)?
            .insert(Addr { addr: addr16(client) }, hop, 0)
            .map_err(map_err(names::CLIENT_HOPS))
    }

    /// Forgets the cached next hop toward a client (route or neighbour changed).
    pub fn remove_client_hop(&mut self, client: IpAddr) -> Result<()> {
        match self
            .hash::<Addr, NextHop>(names::CLIENT_HOPS)?
            .remove(&Addr { addr: addr16(client) })
        {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err(names::CLIENT_HOPS)(e)),
        }
    }

    /// Marks an address as the gateway's own (replies to it are not translated).
    pub fn add_local_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.hash::<Addr, u8>(names::LOCAL_ADDRS)?
            .insert(Addr { addr: addr16(addr) }, 1, 0)
            .map_err(map_err(names::LOCAL_ADDRS))
    }

    /// Forgets a local address (it was removed from the host).
    pub fn remove_local_addr(&mut self, addr: IpAddr) -> Result<()> {
        match self
            .hash::<Addr, u8>(names::LOCAL_ADDRS)?
            .remove(&Addr { addr: addr16(addr) })
        {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err(names::LOCAL_ADDRS)(e)),
        }
    }

    /// Allows redirects to `ifindex` (must exist in the caller's network namespace).
    pub fn add_egress(&mut self, ifindex: u32) -> Result<()> {
        DevMapHash::try_from(self.map(names::EGRESS)?)
            .map_err(map_err(names::EGRESS))?
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DatapathError::Egress { ifindex, source: e })
    }

    /// Global counters summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize]> {
        let arr = PerCpuArray::<_, u64>::try_from(self.map_ref(names::COUNTERS)?)
            .map_err(map_err(names::COUNTERS))?;
        let mut out = [0u64; Counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            *slot = arr.get(&idx, 0).map_err(map_err(names::COUNTERS))?.iter().sum();
        }
        Ok(out)
    }

    /// Traffic counters of one backend summed over CPUs.
    pub fn backend_stats(&self, id: u32, slot: u8) -> Result<BackendStats> {
        let arr = PerCpuArray::<_, BackendStats>::try_from(self.map_ref(names::BACKEND_STATS)?)
            .map_err(map_err(names::BACKEND_STATS))?;
        let per_cpu = arr
            .get(&(id * 2 + u32::from(slot & 1)), 0)
            .map_err(map_err(names::BACKEND_STATS))?;
        Ok(per_cpu.iter().fold(BackendStats::default(), |a, s| BackendStats {
            fwd_packets: a.fwd_packets + s.fwd_packets,
            fwd_bytes: a.fwd_bytes + s.fwd_bytes,
            rev_packets: a.rev_packets + s.rev_packets,
            rev_bytes: a.rev_bytes + s.rev_bytes,
        }))
    }

    /// The flow entry of a client's flow, if one was written.
    pub fn flow(&self, client: IpAddr, port: u16, service: u32) -> Result<Option<FlowValue>> {
        let map = HashMap::<_, FlowKey, FlowValue>::try_from(self.map_ref(names::FLOWS)?)
            .map_err(map_err(names::FLOWS))?;
        let key = FlowKey {
            addr: addr16(client),
            port_be: port.to_be(),
            _pad: 0,
            service,
        };
        match map.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::FLOWS)(e)),
        }
    }

    /// Starts forwarding the program's aya-log records to the `log` crate.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|source| DatapathError::Logger { source })
    }

    /// Takes the ring buffer of client addresses whose next hop the program
    /// could not find (the daemon resolves them).
    pub fn take_hop_requests(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::HOP_REQUESTS)
            .ok_or(DatapathError::Missing {
                kind: "map",
                name: names::HOP_REQUESTS,
            })?;
        RingBuf::try_from(map).map_err(map_err(names::HOP_REQUESTS))
    }

    /// Clients with a cached next hop.
    pub fn client_hop_keys(&self) -> Result<Vec<IpAddr>> {
        let map = HashMap::<_, Addr, NextHop>::try_from(self.map_ref(names::CLIENT_HOPS)?)
            .map_err(map_err(names::CLIENT_HOPS))?;
        Ok(map
            .keys()
            .filter_map(std::result::Result::ok)
            .map(|a| from16(a.addr))
            .collect())
    }

    /// Is any of the first `services` services pinned (flow entries may exist)?
    pub fn any_pinned(&self, services: u32) -> Result<bool> {
        for id in 0..services {
            if self.switch(id)?.pinned() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A second handle on the flow table, for walking it away from the
    /// caller's thread (the walk costs two syscalls per entry).
    pub fn flow_table(&self) -> Result<FlowTable> {
        let map = self.map_ref(names::FLOWS)?;
        let id = match map {
            aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data) => {
                data.info().map_err(map_err(names::FLOWS))?.id()
            }
            _ => {
                return Err(DatapathError::Missing {
                    kind: "map",
                    name: names::FLOWS,
                });
            }
        };
        let data = MapData::from_id(id).map_err(map_err(names::FLOWS))?;
        let map = HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_err(names::FLOWS))?;
        Ok(FlowTable { map })
    }

    /// Clears [`SWITCH_PINNED`] for services whose primary is active and that
    /// have no flow entry left (`live` lists services that still have some),
    /// so their packets skip the flow table again.
    pub fn unpin_idle(&mut self, services: u32, live: &std::collections::HashSet<u32>) -> Result<()> {
        for id in 0..services {
            let mut st = self.switch(id)?;
            if st.pinned() && st.active == SLOT_PRIMARY && !live.contains(&id) {
                st.flags &= !SWITCH_PINNED;
                self.set_switch(id, st)?;
            }
        }
        Ok(())
    }

    /// [`FlowTable::sweep`] then [`Datapath::unpin_idle`], on the caller's
    /// thread. Returns entries removed.
    pub fn sweep_flows(&mut self, idle: &[std::time::Duration]) -> Result<usize> {
        let services = u32::try_from(idle.len()).unwrap_or(u32::MAX);
        if !self.any_pinned(services)? {
            return Ok(0);
        }
        let swept = self.flow_table()?.sweep(idle);
        self.unpin_idle(services, &swept.live)?;
        Ok(swept.removed)
    }

    /// Number of flow entries (walks the table; for tests and status).
    pub fn flow_count(&self) -> Result<usize> {
        let map = HashMap::<_, FlowKey, FlowValue>::try_from(self.map_ref(names::FLOWS)?)
            .map_err(map_err(names::FLOWS))?;
        Ok(map.keys().filter(std::result::Result::is_ok).count())
    }
}

/// An owned handle on the flow table (see [`Datapath::flow_table`]).
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, FlowValue>,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Entries removed.
    pub removed: usize,
    /// Services that still have entries.
    pub live: std::collections::HashSet<u32>,
}

impl FlowTable {
    /// Removes entries idle longer than their service's `idle[id]` (services
    /// beyond `idle` count as idle). An entry the program refreshed since the
    /// walk saw it is kept.
    pub fn sweep(&mut self, idle: &[std::time::Duration]) -> Swept {
        let now = monotonic_ns();
        let limit = |service: u32| {
            idle.get(service as usize)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let stale_at = |k: &FlowKey, v: &FlowValue| now.saturating_sub(v.last_seen_ns) > limit(k.service);
        let mut swept = Swept::default();
        let mut stale = Vec::new();
        for (k, v) in self.map.iter().filter_map(std::result::Result::ok) {
            if stale_at(&k, &v) {
                stale.push(k);
            } else {
                swept.live.insert(k.service);
            }
        }
        for k in stale {
            match self.map.get(&k, 0) {
                Ok(v) if !stale_at(&k, &v) => {
                    swept.live.insert(k.service);
                }
                Ok(_) => {
                    if self.map.remove(&k).is_ok() {
                        swept.removed += 1;
                    }
                }
                Err(_) => {}
            }
        }
        swept
    }
}

/// An [`Ip`] back to an address.
pub fn from16(ip: Ip) -> IpAddr {
    std::net::Ipv6Addr::from(ip_to_bytes(ip)).to_canonical()
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_coarse_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The switch state of a service with both backends up and `active` selected.
/// Flow entries may only be written while the secondary is active, so that is
/// when the state must carry [`SWITCH_PINNED`].
pub fn both_up(active: u8) -> SwitchState {
    let flags = if active == SLOT_PRIMARY { 0 } else { SWITCH_PINNED };
    SwitchState {
        active,
        up: 0b11,
        drained: 0,
        flags,
        generation: 0,
    }
}
