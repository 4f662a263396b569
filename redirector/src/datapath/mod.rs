//! The data plane seen from userspace: loads the XDP object with the
//! configured map sizes and writes services, switch states, next hops and
//! counters. One method per kind of write; nothing here decides anything.
use std::net::IpAddr;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, ProgramArray, RingBuf,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{ProgramError, Xdp},
};
use redirector_common::{
    AclKey, Addr, Backend as KBackend, BackendStats, Counter, Endpoint, FLOW_WAYS, FlowKey, FlowSettings, Ip,
    NextHop, PORT_BACKEND, PORT_SERVICE, ReverseInfo, SLOT_PRIMARY, SWITCH_PINNED, ServiceInfo, ServiceVip,
    SwitchState, VIP_ECHO_ANSWER, ip_from_bytes, ip_to_bytes, names, programs,
};
use thiserror::Error;

mod expect;
mod flows;
mod hop_maps;
mod migrate;
mod mmap;
mod pin;
mod reconcile;
mod seen;
mod service_index;
pub use flows::{FlowTable, Swept};
pub use hop_maps::HopMaps;
use hop_maps::absent_ok;
pub use migrate::Migration;
pub use pin::{PinDir, PinError};
pub use reconcile::{Drift, Keyed};
pub use seen::SeenMap;

use crate::config::{Mode, Prefix, Service};

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
    /// A map's fd could not be duplicated.
    #[error("map {map}: duplicating its fd: {source}")]
    Dup {
        /// Map name.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// No random bytes for the flow tables' hash key.
    #[error("reading random bytes for the flow tables' hash key: {0}")]
    Random(#[source] std::io::Error),
    /// An allow/deny trie refused a prefix (full).
    #[error(
        "map {map}: writing a prefix (at most {limit} prefixes per list, all services together): {source}"
    )]
    Acl {
        /// Map name.
        map: &'static str,
        /// Its capacity.
        limit: u32,
        /// The kernel's answer.
        #[source]
        source: MapError,
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

impl Sizes {
    /// Buckets of `FLOWS` ([`FLOW_WAYS`] entries each).
    pub fn flow_buckets(&self) -> u32 {
        self.flow_entries.div_ceil(FLOW_WAYS as u32).max(1)
    }

    /// Buckets of `DIRECT`, the direct flows' entries: as many as `EMBRYOS`.
    pub fn direct_buckets(&self) -> u32 {
        self.embryo_buckets()
    }

    /// Buckets of `EMBRYOS`, the SYN entries: a fixed share of the flow table.
    pub fn embryo_buckets(&self) -> u32 {
        (self.flow_entries / redirector_common::EMBRYO_SHARE)
            .div_ceil(FLOW_WAYS as u32)
            .max(16)
    }
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            max_services: redirector_common::DEFAULT_MAX_SERVICES,
            flow_entries: redirector_common::DEFAULT_FLOW_ENTRIES,
        }
    }
}

/// The capacity `sizes` gives map `name`; `None`: as the object declares it.
pub fn max_entries(name: &str, sizes: Sizes) -> Option<u32> {
    let services = sizes.max_services;
    match name {
        names::SERVICES | names::SWITCH => Some(services),
        names::BACKENDS | names::REVERSE | names::BACKEND_STATS | names::SIGNAL_LAST | names::SEEN => {
            Some(services * 2)
        }
        names::REFUSED | names::SERVICE_VIPS => Some(services),
        names::FLOWS => Some(sizes.flow_buckets()),
        names::EMBRYOS => Some(sizes.embryo_buckets()),
        names::DIRECT => Some(sizes.direct_buckets()),
        _ => None,
    }
}

/// Loads an XDP program. The verifier gives up with EAGAIN when a signal
/// is pending for the loading thread, and verifying the options path takes
/// ~1.5 s: a `kill -HUP` during a start (queued by the daemon's handler)
/// made the start fail. The asynchronous signals are blocked on this thread
/// while it loads (they stay pending, or another thread takes them; none is
/// lost), and an EAGAIN is still retried.
fn load_xdp(prog: &mut Xdp) -> std::result::Result<(), ProgramError> {
    let _held = SignalsHeld::new();
    let mut tries = 0;
    loop {
        match prog.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

/// The asynchronous signals blocked on the calling thread until dropped.
struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
        // pthread_sigmask only changes this thread's mask.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            for sig in [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGCHLD,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGALRM,
                libc::SIGPIPE,
            ] {
                libc::sigaddset(&mut block, sig);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
            SignalsHeld(old)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new` on the same thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
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
    /// `VIPS` flags every published VIP gets (`icmp_echo`).
    vip_flags: u8,
    /// Held by every writer of `BACKENDS` entries (this handle and the
    /// resolver's [`HopMaps`]), so the resolver's read-modify-write of a
    /// hop never interleaves with a whole entry written here.
    backends_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// The published `SERVICES` keys by `SERVICE_INDEX` slot.
    by_slot: service_index::BySlot,
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

impl Datapath {
    /// Loads the embedded object with `sizes` (program not yet attached),
    /// with fresh maps that live as long as this value (tests, benchmarks).
    pub fn load(sizes: Sizes) -> Result<Self> {
        Self::load_ablated(sizes, 0)
    }

    /// [`Datapath::load`] with the optional parts of the paths in `ablate`
    /// (`redirector_common::ablate` bits) switched off: for the benchmarks'
    /// per-feature ablation, never the daemon.
    pub fn load_ablated(sizes: Sizes, ablate: u32) -> Result<Self> {
        let mut dp = Self::load_object(crate::EBPF_OBJECT, sizes, None, ablate)?;
        dp.install_paths()?;
        Ok(dp)
    }

    /// Loads and verifies the embedded object with its state maps pinned in
    /// `pins`: existing pins are reused (call [`PinDir::check`] first),
    /// missing ones created and pinned. The pinned program array is not
    /// written yet: a running data plane still tail-calls its own paths
    /// until [`Datapath::install_paths`], the start's commit.
    pub fn load_pinned(sizes: Sizes, pins: &PinDir) -> Result<Self> {
        Self::load_bytes(crate::EBPF_OBJECT, sizes, Some(pins))
    }

    /// Puts this build's paths (ICMP, fragments, options) in `PATHS`, where
    /// the attached program tail-calls them (a pinned array keeps them there
    /// after the daemon exits).
    pub fn install_paths(&mut self) -> Result<()> {
        for (name, index) in programs::PATHS {
            let path: &mut Xdp = self
                .ebpf
                .program_mut(name)
                .ok_or(DatapathError::Missing {
                    kind: "program",
                    name,
                })?
                .try_into()?;
            let fd = path.fd()?.try_clone().map_err(ProgramError::from)?;
            let map = self.ebpf.map_mut(names::PATHS).ok_or(DatapathError::Missing {
                kind: "map",
                name: names::PATHS,
            })?;
            ProgramArray::try_from(map)
                .map_err(map_err(names::PATHS))?
                .set(index, &fd, 0)
                .map_err(map_err(names::PATHS))?;
        }
        Ok(())
    }

    /// Loads `object` (tests and benchmarks pass the same embedded bytes).
    pub fn load_bytes(object: &[u8], sizes: Sizes, pins: Option<&PinDir>) -> Result<Self> {
        Self::load_object(object, sizes, pins, 0)
    }

    fn load_object(object: &[u8], sizes: Sizes, pins: Option<&PinDir>, ablate: u32) -> Result<Self> {
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
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &log_level, true);
        loader.override_global("ABLATE", &ablate, true);
        for name in names::PINNED {
            if let Some(n) = max_entries(name, sizes) {
                loader.map_max_entries(name, n);
            }
            if let Some(pins) = pins {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        for name in [names::SIGNAL_LAST, names::SEEN] {
            if let Some(n) = max_entries(name, sizes) {
                loader.map_max_entries(name, n);
            }
        }
        let mut ebpf = loader.load(object)?;
        let prog: &mut Xdp = ebpf
            .program_mut(programs::REDIRECTOR)
            .ok_or(DatapathError::Missing {
                kind: "program",
                name: programs::REDIRECTOR,
            })?
            .try_into()?;
        load_xdp(prog)?;
        // The paths it tail-calls: loaded and verified now, installed in
        // `PATHS` by `install_paths` before the program can run.
        for (name, _) in programs::PATHS {
            let path: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Missing {
                    kind: "program",
                    name,
                })?
                .try_into()?;
            load_xdp(path)?;
        }
        let mut dp = Datapath {
            ebpf,
            sizes,
            vip_flags: VIP_ECHO_ANSWER,
            backends_lock: std::sync::Arc::default(),
            by_slot: service_index::BySlot::new(),
        };
        dp.init_flow_settings()?;
        dp.mirror_published()?;
        Ok(dp)
    }

    /// Writes the flow tables' hash key and sizes before the program can run;
    /// pinned settings (a restart) are kept, so entries stay findable.
    fn init_flow_settings(&mut self) -> Result<()> {
        let sizes = self.sizes;
        let mut want = FlowSettings {
            seed: 0,
            flow_buckets: sizes.flow_buckets(),
            embryo_buckets: sizes.embryo_buckets(),
            direct_buckets: sizes.direct_buckets(),
            frag_buckets: redirector_common::FRAG_BUCKETS,
        };
        let mut arr = self.array::<FlowSettings>(names::FLOW_SETTINGS)?;
        let old = arr.get(&0, 0).map_err(map_err(names::FLOW_SETTINGS))?;
        if (FlowSettings { seed: 0, ..old }) == want {
            return Ok(());
        }
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most 8 bytes into `seed`.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if n != 8 {
            return Err(DatapathError::Random(std::io::Error::last_os_error()));
        }
        want.seed = u64::from_ne_bytes(seed);
        arr.set(0, want, 0).map_err(map_err(names::FLOW_SETTINGS))
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

    /// Writes service `id` completely with the switch state `state` (tests
    /// and tools; the daemon writes the switch state through its owner, between
    /// [`Datapath::set_backends`] and [`Datapath::publish_service`]).
    pub fn set_service(
        &mut self,
        id: u32,
        svc: &Service,
        hops: [NextHop; 2],
        state: SwitchState,
    ) -> Result<()> {
        self.set_backends(id, svc, hops)?;
        self.set_switch(id, state)?;
        self.publish_service(id, svc)
    }

    /// Writes the backends of service `id`, for NAT their reverse entries,
    /// and its allow/deny prefixes. `hops` are the backends' next hops (primary, secondary).
    /// The program does not see the service until [`Datapath::publish_service`].
    pub fn set_backends(&mut self, id: u32, svc: &Service, hops: [NextHop; 2]) -> Result<()> {
        if id >= self.sizes.max_services {
            return Err(DatapathError::ServiceId {
                id,
                max: self.sizes.max_services,
            });
        }
        for (slot, be) in expect::backends(svc) {
            let kb = KBackend {
                addr: addr16(be.addr),
                port_be: be.port.map_or(0, u16::to_be),
                _pad: 0,
                hop: hops[usize::from(slot & 1)],
            };
            {
                let lock = std::sync::Arc::clone(&self.backends_lock);
                let _held = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                self.array::<KBackend>(names::BACKENDS)?
                    .set(id * 2 + u32::from(slot), kb, 0)
                    .map_err(map_err(names::BACKENDS))?;
            }
            if svc.mode == Mode::Nat {
                self.array::<u8>(names::BACKEND_ADDRS)?
                    .set(redirector_common::addr_bucket(&addr16(be.addr)), 1, 0)
                    .map_err(map_err(names::BACKEND_ADDRS))?;
                let (key, mut info) = expect::reverse(id, svc, slot, be);
                let mut reverse = self.hash::<Endpoint, ReverseInfo>(names::REVERSE)?;
                // Keep what the program learnt: clients of this endpoint that
                // talk to it directly (their replies are not translated).
                if let Ok(old) = reverse.get(&key, 0)
                    && (old.service, old.slot) == (id, slot)
                {
                    info.direct = old.direct;
                }
                reverse.insert(key, info, 0).map_err(map_err(names::REVERSE))?;
            }
        }
        for (port, flag) in expect::port_flags(svc)
            .into_iter()
            .filter(|&(_, f)| f == PORT_BACKEND)
        {
            self.add_port_flag(port, flag)?;
        }
        self.set_acl(id, &svc.allow, &svc.deny)
    }

    /// Makes the `ALLOW`/`DENY` tries hold exactly these prefixes for
    /// service `id`: new entries first, then stale ones removed, so a change
    /// never opens a moment with neither list. The program consults a list
    /// only once [`Datapath::publish_service`] sets its flag.
    pub fn set_acl(&mut self, id: u32, allow: &[Prefix], deny: &[Prefix]) -> Result<()> {
        self.write_acl(id, allow, deny, true)
    }

    /// Adds these prefixes to service `id`'s tries, removing nothing: the
    /// first step of a change whose flags [`Datapath::publish_service`] then
    /// sets, before [`Datapath::set_acl`] removes the stale entries (an
    /// emptied list's flag is cleared before its entries go, so no moment
    /// refuses everyone).
    pub fn add_acl(&mut self, id: u32, allow: &[Prefix], deny: &[Prefix]) -> Result<()> {
        self.write_acl(id, allow, deny, false)
    }

    fn write_acl(&mut self, id: u32, allow: &[Prefix], deny: &[Prefix], remove_stale: bool) -> Result<()> {
        for (name, prefixes) in [(names::ALLOW, allow), (names::DENY, deny)] {
            let want: std::collections::HashSet<(u32, AclKey)> =
                prefixes.iter().map(|p| acl_key(id, p)).collect();
            let mut trie = LpmTrie::<_, AclKey, u8>::try_from(self.map(name)?).map_err(map_err(name))?;
            // The trie walk is the slow part: only when stale entries go.
            let have: Vec<(u32, AclKey)> = if remove_stale {
                trie.keys()
                    .filter_map(std::result::Result::ok)
                    .map(|k| (k.prefix_len(), k.data()))
                    .filter(|(_, k)| k.service_be == id.to_be())
                    .collect()
            } else {
                Vec::new()
            };
            for &(len, key) in &want {
                trie.insert(&LpmKey::new(len, key), 1, 0)
                    .map_err(|source| DatapathError::Acl {
                        map: name,
                        limit: redirector_common::DEFAULT_ACL_ENTRIES,
                        source,
                    })?;
            }
            for (len, key) in have {
                if !want.contains(&(len, key)) {
                    absent_ok(name, trie.remove(&LpmKey::new(len, key)))?;
                }
            }
        }
        Ok(())
    }

    /// Packets refused by service `id`'s allow/deny lists, summed over CPUs.
    pub fn refused(&self, id: u32) -> Result<u64> {
        let arr = PerCpuArray::<_, u64>::try_from(self.map_ref(names::REFUSED)?)
            .map_err(map_err(names::REFUSED))?;
        Ok(arr.get(&id, 0).map_err(map_err(names::REFUSED))?.iter().sum())
    }

    /// Writes the service key last, so the program never sees a half-written
    /// service (backends and switch state are already there).
    pub fn publish_service(&mut self, id: u32, svc: &Service) -> Result<()> {
        self.add_port_flag(svc.port, PORT_SERVICE)?;
        let (key, info) = expect::service(id, svc);
        self.array::<ServiceVip>(names::SERVICE_VIPS)?
            .set(id, expect::service_vip(svc), 0)
            .map_err(map_err(names::SERVICE_VIPS))?;
        let flags = self.vip_flags;
        self.hash::<Addr, u8>(names::VIPS)?
            .insert(Addr { addr: key.addr }, flags, 0)
            .map_err(map_err(names::VIPS))?;
        self.hash::<Endpoint, ServiceInfo>(names::SERVICES)?
            .insert(key, info, 0)
            .map_err(map_err(names::SERVICES))?;
        self.index_published(key, info)
    }

    /// Answer ICMP echo to VIPs in XDP (`true`) or pass it to the stack:
    /// applies to every VIP, published now or later.
    pub fn set_icmp_echo(&mut self, answer: bool) -> Result<()> {
        self.vip_flags = if answer { VIP_ECHO_ANSWER } else { 0 };
        let flags = self.vip_flags;
        let mut vips = self.hash::<Addr, u8>(names::VIPS)?;
        let all: Vec<Addr> = vips.keys().filter_map(std::result::Result::ok).collect();
        for vip in all {
            vips.insert(vip, flags, 0).map_err(map_err(names::VIPS))?;
        }
        Ok(())
    }

    /// Every published service: (VIP, port, protocol) key and its id and mode.
    pub fn published(&self) -> Result<Vec<(Endpoint, ServiceInfo)>> {
        let map = HashMap::<_, Endpoint, ServiceInfo>::try_from(self.map_ref(names::SERVICES)?)
            .map_err(map_err(names::SERVICES))?;
        Ok(map.iter().filter_map(std::result::Result::ok).collect())
    }

    /// Removes service `id` from the data plane: its key first (no new packet
    /// maps to it), then its reverse entries and flow entries, so the id can
    /// be given to another service without inheriting anything. Its switch
    /// state is the caller's (the switch owner) to reset.
    pub fn remove_service(&mut self, id: u32) -> Result<()> {
        let keys: Vec<Endpoint> = self
            .published()?
            .into_iter()
            .filter(|(_, info)| info.id == id)
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            self.index_unpublishing(k)?;
            absent_ok(
                names::SERVICES,
                self.hash::<Endpoint, ServiceInfo>(names::SERVICES)?.remove(k),
            )?;
            self.index_unpublished(k)?;
        }
        // A VIP no other service uses any more is no VIP (ICMP echo).
        let still: std::collections::HashSet<Ip> =
            self.published()?.into_iter().map(|(k, _)| k.addr).collect();
        let mut vips = self.hash::<Addr, u8>(names::VIPS)?;
        for k in keys.iter().filter(|k| !still.contains(&k.addr)) {
            absent_ok(names::VIPS, vips.remove(&Addr { addr: k.addr }))?;
        }
        let mut reverse = self.hash::<Endpoint, ReverseInfo>(names::REVERSE)?;
        let stale: Vec<Endpoint> = reverse
            .iter()
            .filter_map(std::result::Result::ok)
            .filter(|(_, r)| r.service == id)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            absent_ok(names::REVERSE, reverse.remove(&k))?;
        }
        self.flow_table()?.clear_service(id);
        self.set_acl(id, &[], &[])
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

    /// The `BACKENDS` entry of service `id`'s backend `slot`.
    pub fn backend_entry(&self, id: u32, slot: u8) -> Result<KBackend> {
        Array::<_, KBackend>::try_from(self.map_ref(names::BACKENDS)?)
            .map_err(map_err(names::BACKENDS))?
            .get(&(id * 2 + u32::from(slot & 1)), 0)
            .map_err(map_err(names::BACKENDS))
    }

    /// Reads the switch state of service `id`.
    pub fn switch(&self, id: u32) -> Result<SwitchState> {
        Array::<_, SwitchState>::try_from(self.map_ref(names::SWITCH)?)
            .map_err(map_err(names::SWITCH))?
            .get(&id, 0)
            .map_err(map_err(names::SWITCH))
    }

    /// Allows redirects to `ifindex` (must exist in the caller's network namespace).
    pub fn add_egress(&mut self, ifindex: u32) -> Result<()> {
        DevMapHash::try_from(self.map(names::EGRESS)?)
            .map_err(map_err(names::EGRESS))?
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DatapathError::Egress { ifindex, source: e })
    }

    /// Marks `ifindex` as facing backends only: a failure signal arriving
    /// there from a backend's own hop is evidence, not a hint.
    pub fn add_backend_iface(&mut self, ifindex: u32) -> Result<()> {
        HashMap::<_, u32, u8>::try_from(self.map(names::BACKEND_IFACES)?)
            .map_err(map_err(names::BACKEND_IFACES))?
            .insert(ifindex, 1, 0)
            .map_err(map_err(names::BACKEND_IFACES))
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

    /// One global counter per CPU (tests: which CPU took which path).
    pub fn counter_per_cpu(&self, c: Counter) -> Result<Vec<u64>> {
        let arr = PerCpuArray::<_, u64>::try_from(self.map_ref(names::COUNTERS)?)
            .map_err(map_err(names::COUNTERS))?;
        Ok(arr
            .get(&(c as u32), 0)
            .map_err(map_err(names::COUNTERS))?
            .iter()
            .copied()
            .collect())
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

    /// Map `name`'s kernel object.
    pub(super) fn map_data(&self, name: &'static str) -> Result<&MapData> {
        use aya::maps::Map;
        match self.map_ref(name)? {
            Map::Array(m) | Map::PerCpuArray(m) | Map::HashMap(m) | Map::LruHashMap(m) => Ok(m),
            _ => Err(DatapathError::Missing {
                kind: "array or hash map",
                name,
            }),
        }
    }

    /// Takes over an older version's data plane pinned beside this one's,
    /// before the load (see [`migrate`]).
    pub fn plan_migration(pins: &PinDir, sizes: Sizes) -> std::result::Result<Option<Migration>, PinError> {
        migrate::plan(pins, crate::EBPF_OBJECT, sizes)
    }

    /// The silence watch's flags (`SEEN`), memory-mapped.
    pub fn seen_map(&self) -> Result<SeenMap> {
        let map = self.map_data(names::SEEN)?;
        let entries = map.info().map_err(map_err(names::SEEN))?.max_entries();
        std::os::fd::AsFd::as_fd(map.fd())
            .try_clone_to_owned()
            .and_then(|fd| SeenMap::new(fd, entries))
            .map_err(|source| DatapathError::Dup {
                map: names::SEEN,
                source,
            })
    }

    /// The backend slot a client's flow is pinned to, if an entry was written.
    pub fn flow(&self, client: IpAddr, port: u16, service: u32) -> Result<Option<u8>> {
        Ok(self.flow_table()?.flow(&flow_key(client, port, service)))
    }

    /// The backend slot of the SYN entry of a client's TCP flow whose
    /// handshake has not completed.
    pub fn embryo(&self, client: IpAddr, port: u16, service: u32) -> Result<Option<u8>> {
        Ok(self.flow_table()?.embryo(&flow_key(client, port, service)))
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

    /// Takes the ring buffer of data-path signals ([`redirector_common::Signal`]).
    pub fn take_signals(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::SIGNALS).ok_or(DatapathError::Missing {
            kind: "map",
            name: names::SIGNALS,
        })?;
        RingBuf::try_from(map).map_err(map_err(names::SIGNALS))
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
        let settings = Array::<_, FlowSettings>::try_from(self.map_ref(names::FLOW_SETTINGS)?)
            .map_err(map_err(names::FLOW_SETTINGS))?
            .get(&0, 0)
            .map_err(map_err(names::FLOW_SETTINGS))?;
        let fd = |name: &'static str| -> Result<std::os::fd::OwnedFd> {
            let data = match self.map_ref(name)? {
                aya::maps::Map::Array(d) => d,
                _ => return Err(DatapathError::Missing { kind: "map", name }),
            };
            std::os::fd::AsFd::as_fd(data.fd())
                .try_clone_to_owned()
                .map_err(|source| DatapathError::Dup { map: name, source })
        };
        FlowTable::new(
            [fd(names::FLOWS)?, fd(names::EMBRYOS)?, fd(names::DIRECT)?],
            settings,
        )
        .map_err(|source| DatapathError::Dup {
            map: names::FLOWS,
            source,
        })
    }

    /// A second handle on map `name`: its fd duplicated, which needs no
    /// privilege beyond holding the fd (reopening by id would need CAP_SYS_ADMIN).
    /// Pins again, from this handle, every map whose pin was removed while
    /// the data plane runs (the maps live on: the program and this handle
    /// hold them), so the next start adopts them instead of starting afresh.
    /// Returns each map re-pinned and how it went. Maps handed out (the ring
    /// buffers) are skipped.
    pub fn repin_missing(&self, pins: &PinDir) -> Vec<(&'static str, std::result::Result<(), String>)> {
        let mut done = Vec::new();
        for name in names::PINNED {
            let path = pins.map(name);
            if path.exists() {
                continue;
            }
            let Some(map) = self.ebpf.map(name) else {
                continue;
            };
            let pinned = std::fs::create_dir_all(pins.dir())
                .map_err(|e| e.to_string())
                .and_then(|()| map.pin(&path).map_err(|e| e.to_string()));
            done.push((name, pinned));
        }
        done
    }

    fn dup(&self, name: &'static str) -> Result<MapData> {
        use aya::maps::Map;
        let data = match self.map_ref(name)? {
            Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) => d,
            _ => return Err(DatapathError::Missing { kind: "map", name }),
        };
        let fd = std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(|source| DatapathError::Dup { map: name, source })?;
        MapData::from_fd(fd).map_err(map_err(name))
    }

    /// Handles on the maps next-hop resolution writes, for the resolver thread.
    pub fn hop_maps(&self) -> Result<HopMaps> {
        let backends = Array::try_from(aya::maps::Map::Array(self.dup(names::BACKENDS)?))
            .map_err(map_err(names::BACKENDS))?;
        let client_hops = HashMap::try_from(aya::maps::Map::LruHashMap(self.dup(names::CLIENT_HOPS)?))
            .map_err(map_err(names::CLIENT_HOPS))?;
        let local_addrs = HashMap::try_from(aya::maps::Map::HashMap(self.dup(names::LOCAL_ADDRS)?))
            .map_err(map_err(names::LOCAL_ADDRS))?;
        let ingress_macs = Array::try_from(aya::maps::Map::Array(self.dup(names::INGRESS_MACS)?))
            .map_err(map_err(names::INGRESS_MACS))?;
        Ok(HopMaps {
            backends,
            backends_lock: std::sync::Arc::clone(&self.backends_lock),
            client_hops,
            local_addrs,
            ingress_macs,
        })
    }

    /// [`FlowTable::sweep`], then clears [`SWITCH_PINNED`] of services whose
    /// primary is active and that have no entry left, on the caller's thread.
    /// For tests and tools: the daemon sweeps through its switch-state owner.
    pub fn sweep_flows(&mut self, idle: &[std::time::Duration]) -> Result<usize> {
        let services = u32::try_from(idle.len()).unwrap_or(u32::MAX);
        let seen: Vec<SwitchState> = (0..services).map(|id| self.switch(id)).collect::<Result<_>>()?;
        if !seen.iter().any(SwitchState::pinned) {
            return Ok(0);
        }
        let swept = self.flow_table()?.sweep(idle);
        for (id, st) in (0u32..).zip(seen) {
            if let Some(next) = unpinned(st, &swept.live, id)
                && self.switch(id)? == st
            {
                self.set_switch(id, next)?;
            }
        }
        Ok(swept.removed)
    }

    /// Number of flow entries (walks the table; for tests and status).
    pub fn flow_count(&self) -> Result<usize> {
        Ok(self.flow_table()?.count())
    }
}

/// The trie key (prefix length, data) of a prefix of service `id`.
fn acl_key(id: u32, p: &Prefix) -> (u32, AclKey) {
    let (addr, len) = p.mapped();
    (
        32 + u32::from(len),
        AclKey {
            service_be: id.to_be(),
            addr: ip_from_bytes(addr),
        },
    )
}

/// The key of a client's flow to service `service`.
pub fn flow_key(client: IpAddr, port: u16, service: u32) -> FlowKey {
    FlowKey {
        addr: addr16(client),
        port_be: port.to_be(),
        _pad: 0,
        service,
    }
}

/// An [`Ip`] back to an address.
pub fn from16(ip: Ip) -> IpAddr {
    std::net::Ipv6Addr::from(ip_to_bytes(ip)).to_canonical()
}

pub use crate::clock::monotonic_ns;

/// The state that clears [`SWITCH_PINNED`] of `st` (generation bumped), if a
/// sweep that saw `st` may: the primary is active, no load sharing writes
/// entries, and the sweep found none of service `id`'s entries left.
pub fn unpinned(st: SwitchState, live: &std::collections::HashSet<u32>, id: u32) -> Option<SwitchState> {
    (st.pinned() && st.active == SLOT_PRIMARY && st.share == 0 && !live.contains(&id)).then(|| SwitchState {
        flags: st.flags & !SWITCH_PINNED,
        generation: st.generation.wrapping_add(1),
        ..st
    })
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
        share: 0,
        _pad: 0,
        generation: 0,
    }
}
