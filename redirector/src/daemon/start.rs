//! A start in two phases. [`prepare`] does everything that can refuse the
//! start and touches nothing pinned or attached: versions and pins checked,
//! socket bound, ids assigned, interfaces and link plans resolved, DSR
//! topology checked, the programs loaded and verified. [`Prepared::commit`]
//! then writes: this build's paths, the maps (services no longer configured
//! as pinned removed, every service written or adopted), attach last; and
//! only then changes the host (neighbour entries, state file) and starts the
//! threads.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use log::{debug, info, warn};
use redirector_common::{SLOT_PRIMARY, SWITCH_DROP, SWITCH_PASS, SwitchState};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::{
    Daemon, EVENT_LOG, announce::Announcing, apply::Switches, attach, hops::Hops, persist::Saver, resolver,
    services::Services,
};
use crate::{
    announce::{
        Announcer,
        track::{self, TrackFile},
    },
    config::{Config, IcmpEcho, Mode, Service},
    control::server::{Incoming, Server},
    datapath::{Datapath, Migration, PinDir, Sizes, monotonic_ns},
    health,
    lock::InstanceLock,
    netlink,
    policy::{AllDown, Desired, Intent, Nanos, Seed, Slot},
    state::{Announced, Assignment, State},
};

/// The metrics endpoint, bound before anything else (a busy port refuses
/// the start before a pin directory is created).
pub(super) struct MetricsEndpoint {
    pub server: Option<crate::metrics::Server>,
    pub scrapes: mpsc::Receiver<crate::metrics::Scrape>,
}

/// Everything [`prepare`] checked and opened; nothing pinned or attached is
/// changed yet.
pub(super) struct Prepared {
    cfg: Config,
    config_path: Option<PathBuf>,
    pins: PinDir,
    /// A data plane is pinned: adopt it (its maps are reused, its forwarding
    /// kept for services configured as before).
    adopting: bool,
    lock: InstanceLock,
    metrics: MetricsEndpoint,
    server: Server,
    requests: mpsc::Receiver<Incoming>,
    state: State,
    assignment: Assignment,
    /// `[announce]`'s thread, the device taken over or created.
    announcer: Option<Announcer>,
    /// `[announce] track_file`, with what a previous run left in it.
    tracker: Option<TrackFile>,
    resolver: resolver::Subscribed,
    links_monitor: netlink::Monitor,
    ifindexes: Vec<u32>,
    plans: Vec<attach::Plan>,
    /// Loaded and verified; the pinned maps reused but not written.
    dp: Datapath,
    /// An older version's data plane being taken over.
    migration: Option<Migration>,
}

/// Phase one: every check that can refuse the start.
pub(super) fn prepare(
    cfg: Config,
    config_path: Option<PathBuf>,
    pins: PinDir,
    adopting: bool,
    lock: InstanceLock,
    metrics: MetricsEndpoint,
    migration: Option<Migration>,
) -> Result<Prepared> {
    let sizes = Sizes {
        max_services: cfg.gateway.max_services,
        flow_entries: cfg.gateway.flow_table_size,
    };
    refuse_other_versions(&pins, migration.is_some())?;
    if adopting {
        pins.check(crate::EBPF_OBJECT, sizes)?;
    }
    // The socket first: a second daemon must be refused before it touches anything.
    let (request_tx, requests) = mpsc::channel(64);
    let server = Server::spawn(&cfg.control.socket, request_tx)?;
    let mut state = State::load(&cfg.control.state_dir)?;
    let announcer = start_announcer(&cfg, &mut state)?;
    let tracker = start_tracker(&cfg, &mut state);
    // Subscribe before reading any state, so no change between the reads
    // below and the event loops goes unseen.
    let resolver = resolver::Resolver::subscribe()?;
    let links_monitor = netlink::Monitor::links().context("subscribing to link changes")?;
    let assignment = state
        .assign(
            cfg.services.iter().map(|s| s.name.as_str()),
            cfg.gateway.max_services,
        )
        .context("allocating service ids")?;
    let mut ifindexes = Vec::new();
    for name in &cfg.gateway.interfaces {
        ifindexes.push(netlink::ifindex(name).with_context(|| format!("interface {name}"))?);
    }
    let plans = attach::plan(&pins, &cfg.gateway.interfaces, &ifindexes)?;
    check_dsr(&cfg)?;
    // Load and verify the programs: the pinned maps are reused but not
    // written, the running program still tail-calls its own paths.
    let dp = Datapath::load_pinned(sizes, &pins).context("loading the XDP program")?;
    Ok(Prepared {
        cfg,
        config_path,
        pins,
        adopting,
        lock,
        metrics,
        server,
        requests,
        state,
        assignment,
        announcer,
        tracker,
        resolver,
        links_monitor,
        ifindexes,
        plans,
        dp,
        migration,
    })
}

/// Takes over (or creates) the `[announce]` device; a device a clean stop
/// left under another name or table is removed first, with its routes.
fn start_announcer(cfg: &Config, state: &mut State) -> Result<Option<Announcer>> {
    let routes = cfg.announce.as_ref().and_then(|a| a.routes.as_ref());
    let now = routes.map(|a| Announced {
        device: a.device.clone(),
        table: a.table,
    });
    if let Some(old) = &state.announced
        && now.as_ref() != Some(old)
    {
        match crate::announce::remove_left(&old.device) {
            Ok(true) => info!(
                "[announce]: removed device {} (table {}) of the previous configuration",
                old.device, old.table
            ),
            Ok(false) => {}
            Err(e) => warn!("[announce]: removing the previous device: {e}"),
        }
    }
    let announcer = routes.map(Announcer::start).transpose()?;
    state.announced = now;
    Ok(announcer)
}

/// Opens `[announce] track_file`; a file a previous run kept under another
/// path is told FAULT (nothing keeps it any more).
fn start_tracker(cfg: &Config, state: &mut State) -> Option<TrackFile> {
    let now = cfg.announce.as_ref().and_then(|a| a.track_file.clone());
    if let Some(old) = &state.track_file
        && now.as_ref() != Some(old)
    {
        match track::write(old, track::FAULT) {
            Ok(()) => info!(
                "[announce]: track file {} of the previous configuration now says {} (FAULT)",
                old.display(),
                track::FAULT
            ),
            Err(e) => warn!(
                "[announce]: writing the previous track file {}: {e}",
                old.display()
            ),
        }
    }
    state.track_file.clone_from(&now);
    now.as_deref().map(TrackFile::open)
}

/// A newer version's data plane, or several, is refused (an older one is
/// being taken over when `migrating`).
fn refuse_other_versions(pins: &PinDir, migrating: bool) -> Result<()> {
    let others = pins.other_versions();
    if migrating && others.len() == 1 {
        return Ok(());
    }
    if let Some(other) = others.first() {
        bail!(
            "{} holds the data plane of another redirector version; this version pins into {}. Upgrade \
             procedure (docs/operations.md): stop the old daemon, run the old version's `redirector \
             detach` (or remove {} if nothing uses it), then start this version",
            other.display(),
            pins.dir().display(),
            other.display()
        );
    }
    Ok(())
}

/// A DSR backend must be on a directly attached link (its frame is sent to
/// its MAC with the VIP unchanged).
fn check_dsr(cfg: &Config) -> Result<()> {
    for svc in cfg.services.iter().filter(|s| s.mode == Mode::Dsr) {
        for be in [&svc.primary, &svc.secondary] {
            let route = netlink::route_get(be.addr).with_context(|| format!("service {:?}", svc.name))?;
            if let Some(gw) = route.gateway {
                bail!(
                    "service {:?}: mode = \"dsr\" needs backend {} on a directly attached link, but the \
                     route to it goes via {gw}; use mode = \"nat\" or fix the route",
                    svc.name,
                    be.addr
                );
            }
        }
    }
    Ok(())
}

impl Prepared {
    /// Phase two: writes this build's paths and the maps, attaches, then
    /// changes the host and starts the resolver and the prober. An error
    /// here leaves an adopted data plane forwarding (maps partly rewritten
    /// are rewritten by the next start).
    pub(super) fn commit(self) -> Result<Daemon> {
        let Prepared {
            cfg,
            config_path,
            pins,
            adopting,
            lock,
            metrics,
            server,
            requests,
            mut state,
            assignment,
            announcer,
            tracker,
            resolver,
            links_monitor,
            ifindexes,
            plans,
            mut dp,
            migration,
        } = self;
        dp.install_paths().context("installing the program's paths")?;
        dp.set_icmp_echo(cfg.gateway.icmp_echo == IcmpEcho::Answer)
            .context("writing icmp_echo")?;
        let published = if adopting { published(&dp)? } else { HashMap::new() };
        let mut hops = Hops::new(ifindexes.iter().copied());
        let mut hop_maps = dp.hop_maps()?;
        hops.sync_locals(&mut hop_maps)
            .context("listing local addresses")?;
        for &i in &ifindexes {
            dp.add_egress(i)?;
        }
        for (name, &i) in cfg.gateway.interfaces.iter().zip(&ifindexes) {
            if cfg.gateway.backend_interfaces.contains(name) {
                dp.add_backend_iface(i)?;
            }
        }
        let mut switches = Switches::default();
        remove_unmatched(&mut dp, &mut switches, &state, &cfg, &published)?;
        for (name, id) in &assignment.removed {
            debug!("service {name} (id {id}) removed");
        }
        let now = Nanos(monotonic_ns());
        let mut services = Services::default();
        for svc in &cfg.services {
            let Some(&id) = state.ids.get(&svc.name) else {
                bail!("service {:?} has no id (state file)", svc.name);
            };
            let mut w = Writing {
                dp: &mut dp,
                hops: &mut hops,
                switches: &mut switches,
                services: &mut services,
            };
            let adopted = w.service(id, svc, &state, adopting, published.get(&id), now)?;
            info!(
                "service {} (id {id}{}): {} {} {} → primary {} secondary {}; {} probes every {:?}",
                svc.name,
                if adopted { ", adopted" } else { "" },
                svc.protocol,
                std::net::SocketAddr::new(svc.vip, svc.port),
                svc.mode,
                svc.primary,
                svc.secondary,
                svc.health.kind.as_str(),
                svc.health.interval,
            );
        }
        let hop_requests: RingBuf<MapData> = dp.take_hop_requests()?;
        // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring buffer
        // for as long as it is registered.
        let signals =
            unsafe { AsyncFd::register(dp.take_signals()?) }.context("watching the data plane's signals")?;
        let seen = dp
            .seen_map()
            .map_err(|e| warn!("{e}: silences in the traffic are not watched"))
            .ok();
        // SAFETY: the logger owns its fd and AsyncFd owns the logger for as
        // long as it is registered.
        let logger = unsafe { AsyncFd::register(dp.take_logger()?) }.context("watching the program log")?;
        if let Some(m) = migration {
            let from = m.version();
            m.finish(&dp)
                .with_context(|| format!("taking over version {from}'s data plane"))?;
            info!("took over version {from}'s data plane: flows, next hops and counters carried over");
        }
        // Attach last: traffic only ever meets complete maps.
        let links = attach::attach_all(
            &mut dp,
            &pins,
            &cfg.gateway.interfaces,
            &ifindexes,
            plans,
            cfg.gateway.xdp_mode,
        )?;
        info!(
            "attached to {}; forwarding (pinned in {})",
            cfg.gateway.interfaces.join(", "),
            pins.dir().display()
        );
        // Committed: from here on the host may change (neighbour entries, state file).
        if let Err(e) = attach::detach_unconfigured(&pins, &cfg.gateway.interfaces) {
            warn!("detaching from interfaces no longer configured: {e:#}");
        }
        hops.commit();
        let (resolver, egress_updates) = resolver.run(hops, hop_maps, hop_requests)?;
        state.stopped_unix_ms = None;
        let mut saver = Saver::new(cfg.control.state_dir.clone());
        if let Err(e) = saver.save_now(&state) {
            warn!("saving the state file: {e}; service ids may change on the next start");
        }
        let (report_tx, reports) = mpsc::channel(4096);
        services.start_probing(
            health::Scheduler::spawn_thread(cfg.control.probe_budget, report_tx)
                .context("starting the prober")?,
        );
        let vips = cfg.services.iter().map(|s| s.vip).collect();
        let (hooks, hook_ends) = crate::hooks::Runner::new();
        let mut daemon = Daemon {
            dp,
            pins,
            links,
            switches,
            services,
            egress: HashMap::new(),
            egress_updates,
            links_monitor,
            reports,
            requests,
            _server: server,
            logger,
            signals,
            events: VecDeque::with_capacity(EVENT_LOG),
            followers: Vec::new(),
            resolver,
            ifindexes,
            reloads: mpsc::unbounded_channel(),
            reloading: false,
            state,
            saver,
            cfg,
            config_path,
            metrics: crate::metrics::Metrics::new(),
            scrapes: metrics.scrapes,
            _metrics_server: metrics.server,
            flow_entries: None,
            _lock: lock,
            hup: None,
            notifier: None,
            moved_interfaces: HashSet::new(),
            reconcile_ticks: 0,
            seen,
            quiet: Vec::new(),
            announcing: Announcing::new(announcer, tracker, &vips),
            hooks,
            hook_ends,
        };
        daemon.announce();
        Ok(daemon)
    }
}

/// What an adopted data plane forwards, by service id.
fn published(dp: &Datapath) -> Result<HashMap<u32, Forwarding>> {
    let mut by_id = HashMap::new();
    for (key, info) in dp.published()? {
        let backends = [dp.backend_entry(info.id, 0)?, dp.backend_entry(info.id, 1)?];
        by_id.insert(
            info.id,
            Forwarding {
                key,
                mode: info.mode,
                backends: backends.map(|b| (b.addr, b.port_be)),
            },
        );
    }
    Ok(by_id)
}

/// Removes from the pinned data plane the services that are gone, whose id
/// now means another service, or that the config forwards differently (the
/// identity a reload uses): their flows and reverse-NAT entries go.
fn remove_unmatched(
    dp: &mut Datapath,
    switches: &mut Switches,
    state: &State,
    cfg: &Config,
    published: &HashMap<u32, Forwarding>,
) -> Result<()> {
    let current: HashMap<u32, &str> = state.ids.iter().map(|(n, i)| (*i, n.as_str())).collect();
    for (&id, pinned) in published {
        let same = current
            .get(&id)
            .and_then(|n| cfg.services.iter().find(|s| s.name == *n))
            .is_some_and(|s| Forwarding::of(s) == *pinned);
        if !same {
            info!("removing service id {id} from the pinned data plane (no longer configured as before)");
            dp.remove_service(id)?;
            switches.reset(dp, id)?;
        }
    }
    Ok(())
}

/// What writing one service at start touches.
struct Writing<'a> {
    dp: &'a mut Datapath,
    hops: &'a mut Hops,
    switches: &'a mut Switches,
    services: &'a mut Services,
}

impl Writing<'_> {
    /// Writes one service's backends and key and gives it a machine: adopted
    /// (its pinned switch state and saved flap history kept, nothing written
    /// before the probes' first verdicts) when the pinned data plane forwards
    /// it as configured, else fresh (seeded with saved intent). True when
    /// adopted.
    fn service(
        &mut self,
        id: u32,
        svc: &Service,
        state: &State,
        adopting: bool,
        pinned: Option<&Forwarding>,
        now: Nanos,
    ) -> Result<bool> {
        let resolved = [
            self.hops.backend(id, 0, svc.primary.addr),
            self.hops.backend(id, 1, svc.secondary.addr),
        ];
        let mut intent = state.intents.get(&svc.name).cloned().unwrap_or_default();
        if !adopting {
            // No pins: a fresh boot, whose monotonic clock says nothing about a
            // saved expiry. Untimed overrides and drains stand.
            intent.pin = intent.pin.filter(|o| o.until.is_none());
        }
        let pinned = pinned
            .filter(|f| **f == Forwarding::of(svc))
            .map(|_| self.dp.switch(id))
            .transpose()?;
        let writing = || format!("writing service {:?}", svc.name);
        self.dp.set_backends(id, svc, resolved).with_context(writing)?;
        match pinned {
            Some(st) => {
                self.switches.adopt(id, st);
                let seed = Seed {
                    desired: desired_of(st),
                    intent,
                    // Same boot (the pins survived): the monotonic flap
                    // times are still meaningful.
                    flaps: state.flaps.get(&svc.name).cloned().unwrap_or_default(),
                };
                self.services.add(id, svc.clone(), Some(seed), now);
            }
            None => {
                let seed = (intent != Intent::default()).then_some(Seed {
                    desired: Desired {
                        active: Slot::Primary,
                        up: [true; 2],
                        drained: [false; 2],
                        all_down: None,
                        share: svc.failover.share,
                    },
                    intent,
                    flaps: Default::default(),
                });
                let machine = self.services.add(id, svc.clone(), seed, now);
                self.switches
                    .write(self.dp, id, &machine.desired())
                    .with_context(writing)?;
            }
        }
        self.dp.publish_service(id, svc).with_context(writing)?;
        Ok(pinned.is_some())
    }
}

/// The decision a pinned switch state stands for.
fn desired_of(st: SwitchState) -> Desired {
    let bit = |b: u8, s: Slot| b & (1 << s.index()) != 0;
    Desired {
        active: if st.active == SLOT_PRIMARY {
            Slot::Primary
        } else {
            Slot::Secondary
        },
        up: Slot::ALL.map(|s| bit(st.up, s)),
        drained: Slot::ALL.map(|s| bit(st.drained, s)),
        all_down: if st.flags & SWITCH_DROP != 0 {
            Some(AllDown::Drop)
        } else if st.flags & SWITCH_PASS != 0 {
            Some(AllDown::Pass)
        } else {
            None
        },
        share: st.share,
    }
}

/// Takes the instance lock on the state directory (created, mode 0700, if
/// missing) and the control socket, then prepares the pin directory (bpffs
/// mounted if missing) and locks it too.
pub fn instance_lock(ctl: &crate::config::Control, pins: &PinDir) -> Result<InstanceLock> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctl.state_dir)
        .with_context(|| format!("creating the state directory {}", ctl.state_dir.display()))?;
    if let Some(dir) = ctl.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let socket_lock = crate::lock::socket_lock(&ctl.socket);
    let mut lock = InstanceLock::acquire(&[&ctl.state_dir], &[&socket_lock])?;
    pins.prepare()?;
    lock.extend(InstanceLock::acquire(&[&ctl.bpffs_dir], &[])?);
    Ok(lock)
}

/// How a service is forwarded: what a pinned data plane must match for a
/// restart to adopt the service's id, switch state and flows.
#[derive(Debug, PartialEq, Eq)]
struct Forwarding {
    key: redirector_common::Endpoint,
    mode: u8,
    /// (address, remapped port in network order or 0) per slot.
    backends: [(redirector_common::Ip, u16); 2],
}

impl Forwarding {
    fn of(s: &Service) -> Forwarding {
        let be = |b: &crate::config::Backend| (crate::datapath::addr16(b.addr), b.port.map_or(0, u16::to_be));
        Forwarding {
            key: redirector_common::Endpoint {
                addr: crate::datapath::addr16(s.vip),
                port_be: s.port.to_be(),
                proto: s.protocol.number(),
                _pad: 0,
            },
            mode: match s.mode {
                Mode::Nat => redirector_common::Mode::Nat as u8,
                Mode::Dsr => redirector_common::Mode::Dsr as u8,
            },
            backends: [be(&s.primary), be(&s.secondary)],
        }
    }
}
