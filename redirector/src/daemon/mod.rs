//! `redirector run`: load (or adopt) the pinned data plane, resolve, write,
//! attach; then probe both backends of every service, decide, and flip
//! switch states until SIGINT/SIGTERM. The data plane is pinned in bpffs and
//! keeps forwarding on the last decision after the daemon stops or dies; only
//! `redirector detach` removes it.
//!
//! Everything that can fail on bad input (config, pins, DSR topology,
//! interfaces) fails before the program is attached, so a refused start
//! changes nothing on the host.
//!
//! One event loop (one thread) owns every decision: probe reports, link
//! carrier events, deadlines and operator requests go into the per-service
//! machines, whose effects are written by the one owner of `SWITCH`
//! ([`apply::Switches`]). Nothing on this loop waits on netlink or disk:
//! next-hop resolution runs on its own thread ([`resolver`]), the flow sweep
//! and state-file writes on blocking threads.
mod apply;
mod attach;
mod control;
mod hops;
mod persist;
mod reload;
mod resolver;
mod services;

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use log::{debug, info, warn};
use redirector_common::{SLOT_PRIMARY, SWITCH_DROP, SWITCH_PASS, SwitchState};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config::{Config, Mode},
    control::{proto::Response, server::Server},
    datapath::{Datapath, PinDir, Sizes, Swept, monotonic_ns},
    health,
    lock::InstanceLock,
    netlink,
    policy::{AllDown, Desired, Effect, Event, Intent, Nanos, Seed, Slot},
    state::State,
};
use apply::Switches;
use attach::Held;
use hops::Hops;
use persist::{Ack, Saver};
use resolver::{EgressUpdate, Resolver};
use services::Services;

/// How often idle flow entries are swept.
const SWEEP: Duration = Duration::from_secs(10);
/// How often every switch state is compared with the decision.
const RECONCILE: Duration = Duration::from_secs(1);
/// Transitions kept for `redirector events`.
const EVENT_LOG: usize = 1024;

/// Runs the daemon with the configuration at `path` until SIGINT/SIGTERM.
pub fn run(path: &Path) -> Result<()> {
    // The documented unit reloads with `kill -HUP`, whose default action
    // ends the process: ignored (also by `main`, earlier) until the handler
    // below takes it over.
    // SAFETY: signal(2) with SIG_IGN installs no code of ours.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let cfg = Config::from_file(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // Before the (slow) start: a SIGHUP meanwhile must not kill the
        // daemon; it is kept and reloads once the start is done.
        let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut daemon = Daemon::start(cfg, Some(path.to_path_buf())).await?;
        daemon.hup = Some(hup);
        // systemd (Type=notify): started once it forwards and probes; the
        // loop pings the watchdog.
        daemon.notifier = crate::notify::Notifier::from_env();
        if let Some(n) = &daemon.notifier {
            n.send(&format!("READY=1\nMAINPID={}", std::process::id()));
        }
        let stop = daemon
            .run(async {
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
            })
            .await?;
        match stop.detached {
            true => info!("detached: program, links and pins removed"),
            false => info!(
                "stopped; the data plane keeps forwarding on the last decision (pinned in {}); \
                 `redirector detach` removes it",
                stop.pins.dir().display()
            ),
        }
        Ok(())
    })
}

/// What [`Daemon::run`] leaves behind.
pub struct Stopped {
    /// The data plane (its pinned maps stay; this handle is for counters).
    pub dp: Datapath,
    /// Where it is pinned.
    pub pins: PinDir,
    /// An operator asked for `detach`: program, links and pins are gone.
    pub detached: bool,
}

/// A running data plane and the control plane that drives it.
pub struct Daemon {
    dp: Datapath,
    pins: PinDir,
    /// The XDP links, held open (and pinned) for the daemon's lifetime.
    links: Vec<Held>,
    switches: Switches,
    services: Services,
    /// Where each backend's traffic leaves, to map carrier events to backends.
    egress: HashMap<(u32, u8), u32>,
    egress_updates: mpsc::UnboundedReceiver<EgressUpdate>,
    /// Carrier changes, parsed on this loop without further queries.
    links_monitor: netlink::Monitor,
    reports: mpsc::Receiver<health::Report>,
    requests: mpsc::Receiver<crate::control::server::Incoming>,
    _server: Server,
    logger: AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>,
    events: VecDeque<Event>,
    followers: Vec<mpsc::Sender<Response>>,
    /// Stops the resolver thread when dropped.
    resolver: Resolver,
    /// The configured interfaces (redirect targets).
    ifindexes: Vec<u32>,
    /// Reloads whose next hops are resolved, back from their blocking thread.
    reloads: (
        mpsc::UnboundedSender<reload::Pending>,
        mpsc::UnboundedReceiver<reload::Pending>,
    ),
    reloading: bool,
    state: State,
    /// Writes of the state file, in order.
    saver: Saver,
    cfg: Config,
    /// The file SIGHUP reloads (none when started from a parsed config).
    config_path: Option<PathBuf>,
    metrics: crate::metrics::Metrics,
    /// Scrape requests from the metrics endpoint.
    scrapes: mpsc::Receiver<crate::metrics::Scrape>,
    _metrics_server: Option<crate::metrics::Server>,
    /// Flow entries counted by the last sweep.
    flow_entries: Option<u64>,
    /// One daemon per pin directory, state directory and socket.
    _lock: InstanceLock,
    /// SIGHUP, when installed before the start (else `run` installs it).
    hup: Option<tokio::signal::unix::Signal>,
    /// systemd's notification socket, if it gave one.
    notifier: Option<crate::notify::Notifier>,
    /// Configured interfaces reported gone or renamed.
    moved_interfaces: std::collections::HashSet<String>,
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

impl Daemon {
    /// Loads (or adopts) the data plane, resolves, writes every service and
    /// attaches. Must run inside a tokio runtime (monitors, ring buffers,
    /// probes and the control socket register with it).
    pub async fn start(cfg: Config, config_path: Option<PathBuf>) -> Result<Daemon> {
        // The metrics endpoint first: a busy port refuses the start before
        // anything is written (or a pin directory created).
        let (scrape_tx, scrapes) = mpsc::channel(4);
        let metrics_server = match cfg.control.metrics {
            Some(addr) => Some(crate::metrics::Server::bind(addr, scrape_tx).await?),
            None => None,
        };
        let pins = PinDir::new(&cfg.control.bpffs_dir);
        // One daemon per data plane, before anything is read or written.
        let lock = instance_lock(&cfg.control, &pins)?;
        // Anything pinned is adopted (and checked), never removed by a
        // refused start: even what is left of a data plane may be forwarding.
        let adopting = pins.anything();
        match Self::start_with(cfg, config_path, pins.clone(), adopting, lock) {
            Ok(mut d) => {
                d.scrapes = scrapes;
                d._metrics_server = metrics_server;
                Ok(d)
            }
            Err(e) => {
                // A refused first start leaves nothing behind; an adopted data
                // plane keeps forwarding as it did.
                if !adopting && let Err(r) = pins.remove() {
                    warn!("removing the pins of the refused start: {r:#}");
                }
                Err(e)
            }
        }
    }

    fn start_with(
        cfg: Config,
        config_path: Option<PathBuf>,
        pins: PinDir,
        adopting: bool,
        lock: InstanceLock,
    ) -> Result<Daemon> {
        let sizes = Sizes {
            max_services: cfg.gateway.max_services,
            flow_entries: cfg.gateway.flow_table_size,
        };
        if let Some(other) = pins.other_versions().first() {
            bail!(
                "{} holds the data plane of another redirector version; this version pins into {}. Upgrade \
                 procedure (docs/operations.md): stop the old daemon, run the old version's `redirector \
                 detach` (or remove {} if nothing uses it), then start this version",
                other.display(),
                pins.dir().display(),
                other.display()
            );
        }
        if adopting {
            pins.check(crate::EBPF_OBJECT, sizes)?;
        }
        // The socket first: a second daemon must be refused before it touches anything.
        let (request_tx, requests) = mpsc::channel(64);
        let server = Server::spawn(&cfg.control.socket, request_tx)?;
        let mut state = State::load(&cfg.control.state_dir)?;
        // Subscribe before reading any state, so no change between the reads
        // below and the event loops goes unseen.
        let resolver = Resolver::subscribe()?;
        let links_monitor = netlink::Monitor::links().context("subscribing to link changes")?;
        // Everything that can refuse the start, before anything pinned or
        // attached is touched: ids, interfaces, links to adopt, DSR topology.
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
        for svc in cfg.services.iter().filter(|s| s.mode == Mode::Dsr) {
            for be in [&svc.primary, &svc.secondary] {
                let route = netlink::route_get(be.addr).with_context(|| format!("service {:?}", svc.name))?;
                if let Some(gw) = route.gateway {
                    bail!(
                        "service {:?}: mode = \"dsr\" needs backend {} on a directly attached link, but \
                         the route to it goes via {gw}; use mode = \"nat\" or fix the route",
                        svc.name,
                        be.addr
                    );
                }
            }
        }
        // Load and verify the programs: the pinned maps are reused but not
        // written, the running program still tail-calls its own paths.
        let mut dp = Datapath::load_pinned(sizes, &pins).context("loading the XDP program")?;
        // Committed from here: this build's paths, then the maps, attach last.
        dp.install_paths().context("installing the program's paths")?;
        dp.set_icmp_echo(cfg.gateway.icmp_echo == crate::config::IcmpEcho::Answer)
            .context("writing icmp_echo")?;
        // Services the pinned data plane already carries, by id: what it
        // forwards them as (key, mode, backends), to compare with the config.
        let published: HashMap<u32, Forwarding> = if adopting {
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
            by_id
        } else {
            HashMap::new()
        };
        let mut hops = Hops::new(ifindexes.iter().copied());
        let mut hop_maps = dp.hop_maps()?;
        hops.sync_locals(&mut hop_maps)
            .context("listing local addresses")?;
        for &i in &ifindexes {
            dp.add_egress(i)?;
        }
        let mut switches = Switches::default();
        // Services that are gone, whose id now means another service, or that
        // the config forwards differently (VIP, port, protocol, mode, backends:
        // the identity a reload uses): their flows and reverse-NAT entries go.
        let current: HashMap<u32, &str> = state.ids.iter().map(|(n, i)| (*i, n.as_str())).collect();
        for (&id, pinned) in &published {
            let same = current
                .get(&id)
                .and_then(|n| cfg.services.iter().find(|s| s.name == *n))
                .is_some_and(|s| Forwarding::of(s) == *pinned);
            if !same {
                info!("removing service id {id} from the pinned data plane (no longer configured as before)");
                dp.remove_service(id)?;
                switches.reset(&mut dp, id)?;
            }
        }
        for (name, id) in &assignment.removed {
            debug!("service {name} (id {id}) removed");
        }
        let now = Nanos(monotonic_ns());
        let mut services = Services::default();
        for svc in &cfg.services {
            let Some(&id) = state.ids.get(&svc.name) else {
                bail!("service {:?} has no id (state file)", svc.name);
            };
            let resolved = [
                hops.backend(id, 0, svc.primary.addr),
                hops.backend(id, 1, svc.secondary.addr),
            ];
            let mut intent = state.intents.get(&svc.name).cloned().unwrap_or_default();
            if !adopting {
                // No pins: a fresh boot, whose monotonic clock says nothing about a
                // saved expiry. Untimed overrides and drains stand.
                intent.pin = intent.pin.filter(|o| o.until.is_none());
            }
            let pinned = published
                .get(&id)
                .filter(|f| **f == Forwarding::of(svc))
                .map(|_| dp.switch(id))
                .transpose()?;
            dp.set_backends(id, svc, resolved)
                .with_context(|| format!("writing service {:?}", svc.name))?;
            match pinned {
                // Adopted: traffic goes on exactly as it does; nothing is
                // written before the probes' first verdicts.
                Some(st) => {
                    switches.adopt(id, st);
                    services.add(
                        id,
                        svc.clone(),
                        Some(Seed {
                            desired: desired_of(st),
                            intent,
                            // Same boot (the pins survived): the monotonic
                            // flap times are still meaningful.
                            flaps: state.flaps.get(&svc.name).cloned().unwrap_or_default(),
                        }),
                        now,
                    );
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
                    let machine = services.add(id, svc.clone(), seed, now);
                    switches
                        .write(&mut dp, id, &machine.desired())
                        .with_context(|| format!("writing service {:?}", svc.name))?;
                }
            }
            dp.publish_service(id, svc)
                .with_context(|| format!("writing service {:?}", svc.name))?;
            info!(
                "service {} (id {id}{}): {} {} {} → primary {} secondary {}; {} probes every {:?}",
                svc.name,
                if pinned.is_some() { ", adopted" } else { "" },
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
        // SAFETY: the logger owns its fd and AsyncFd owns the logger for as
        // long as it is registered.
        let logger = unsafe { AsyncFd::register(dp.take_logger()?) }.context("watching the program log")?;
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
        Ok(Daemon {
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
            scrapes: mpsc::channel(1).1,
            _metrics_server: None,
            flow_entries: None,
            _lock: lock,
            hup: None,
            notifier: None,
            moved_interfaces: std::collections::HashSet::new(),
        })
    }

    /// Probes, decides and writes until `shutdown` completes (or an operator
    /// detaches). The data plane stays pinned and attached unless detached.
    ///
    /// Nothing in here stops the daemon: a failed step is logged and the loop
    /// goes on.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Stopped> {
        let mut sweep = tokio::time::interval(SWEEP);
        // The watchdog is fed by this loop: a wedged loop stops feeding it.
        let mut watchdog = self
            .notifier
            .as_ref()
            .and_then(crate::notify::Notifier::ping_every)
            .map(tokio::time::interval);
        let mut reconcile = tokio::time::interval(RECONCILE);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hup = match self.hup.take() {
            Some(h) => h,
            None => signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        };
        tokio::pin!(shutdown);
        let mut sweeping: Option<(HashMap<u32, SwitchState>, tokio::task::JoinHandle<Swept>)> = None;
        // Test builds only: the loop blocks its thread now and then, as
        // control work or a starved CPU would (issue 10, fault 1).
        let mut stall = crate::fault::stall().map(|(len, every)| {
            let first = tokio::time::Instant::now() + every;
            (len, tokio::time::interval_at(first, every))
        });
        let mut detached = false;
        loop {
            let deadline = self.services.next_deadline();
            let wake = async {
                match deadline {
                    Some(at) => {
                        let now = monotonic_ns();
                        tokio::time::sleep(Duration::from_nanos(at.0.saturating_sub(now))).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                report = self.reports.recv() => {
                    // The prober's thread is gone: without verdicts nothing
                    // fails over. Exit for the supervisor to restart us (the
                    // data plane keeps forwarding meanwhile).
                    let Some(report) = report else {
                        bail!("{}", stopped("the prober"));
                    };
                    let mut effects = self.services.report(report, &mut self.metrics);
                    // Take what else is queued: one pass, in arrival order.
                    while let Ok(r) = self.reports.try_recv() {
                        effects.extend(self.services.report(r, &mut self.metrics));
                    }
                    self.apply(effects);
                }
                scrape = self.scrapes.recv(), if self._metrics_server.is_some() => {
                    let Some(scrape) = scrape else {
                        bail!("{}", stopped("the metrics endpoint"));
                    };
                    let text = self.metrics.render(&self.live());
                    let _ = scrape.reply.send(text);
                }
                changed = self.links_monitor.changed() => match changed {
                    Ok(c) => {
                        self.interfaces_moved(&c.links)?;
                        self.carrier(&c.links);
                    }
                    Err(e) => warn!("link monitor: {e}"),
                },
                () = wake => {
                    let effects = self.services.tick(Nanos(monotonic_ns()));
                    self.apply(effects);
                }
                incoming = self.requests.recv() => {
                    let Some(incoming) = incoming else {
                        bail!("{}", stopped("the control socket"));
                    };
                    if let Some(reply) = self.request(incoming) {
                        detached = true;
                        // Let the answer reach the operator before the runtime goes.
                        let _ = tokio::time::timeout(Duration::from_secs(1), reply.closed()).await;
                        break;
                    }
                }
                update = self.egress_updates.recv() => {
                    let Some((key, ifindex)) = update else {
                        bail!("{}", stopped("the next-hop resolver"));
                    };
                    if ifindex == 0 {
                        self.egress.remove(&key);
                    } else {
                        self.egress.insert(key, ifindex);
                    }
                }
                guard = self.logger.readable_mut() => match guard {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(e) => warn!("program log ring: {e}"),
                },
                _ = async {
                    match stall.as_mut() {
                        Some((_, every)) => every.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((len, _)) = &stall {
                        std::thread::sleep(*len);
                    }
                }
                _ = async {
                    match watchdog.as_mut() {
                        Some(every) => every.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(n) = &self.notifier {
                        n.send("WATCHDOG=1");
                    }
                }
                _ = reconcile.tick() => {
                    match self.switches.reconcile(&mut self.dp) {
                        Ok(repaired) if !repaired.is_empty() => {
                            warn!("switch state of service ids {repaired:?} differed from the decision: rewritten");
                            self.metrics.drift(repaired.len());
                        }
                        Ok(_) => {}
                        Err(e) => warn!("reconciling switch states: {e:#}"),
                    }
                    self.check_pins();
                }
                _ = hup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    self.begin_reload(None);
                }
                Some(pending) = self.reloads.1.recv() => self.finish_reload(pending),
                _ = sweep.tick(), if sweeping.is_none() => {
                    // Walking a large table takes a while: do it on a blocking
                    // thread; only the unpinning comes back to this loop.
                    let seen = self.switches.pinned();
                    if !seen.is_empty() {
                        match self.dp.flow_table() {
                            Ok(mut table) => {
                                let g = &self.cfg.gateway;
                                let idle = self.services.flow_idle(
                                    Duration::from_secs(g.tcp_flow_idle.into()),
                                    Duration::from_secs(g.udp_flow_idle.into()),
                                );
                                sweeping = Some((seen, tokio::task::spawn_blocking(move || table.sweep(&idle))));
                            }
                            Err(e) => warn!("sweeping idle flow entries: {e:#}"),
                        }
                    }
                }
                done = async {
                    match sweeping.as_mut() {
                        Some((_, task)) => task.await,
                        None => std::future::pending().await,
                    }
                }, if sweeping.is_some() => {
                    let seen = sweeping.take().map(|(s, _)| s).unwrap_or_default();
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
        }
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1");
        }
        if !detached {
            self.state.intents = self.services.intents();
            self.state.stopped_unix_ms = Some(unix_ms());
            if let Err(e) = self.saver.save_now(&self.state) {
                warn!("saving the state file: {e}");
            }
        }
        Ok(Stopped {
            dp: self.dp,
            pins: self.pins,
            detached,
        })
    }

    /// Writes decisions and records events. A failed write is logged; the
    /// machine's next write for that service carries the whole state again.
    fn apply(&mut self, effects: Vec<(u32, Effect)>) {
        if self.record(effects) {
            self.persist();
        }
    }

    /// [`Daemon::apply`] for an operator's action: `ack` is answered once
    /// the state holding the action is on disk.
    fn apply_acked(&mut self, effects: Vec<(u32, Effect)>, ack: Ack) {
        self.record(effects);
        self.saver.save(self.state.clone(), Some(ack));
    }

    /// Writes decisions, records events and intents; true when the state
    /// file must be written.
    fn record(&mut self, effects: Vec<(u32, Effect)>) -> bool {
        let mut persist = false;
        for (id, effect) in effects {
            match effect {
                Effect::Write(d) => {
                    if let Err(e) = self.switches.write(&mut self.dp, id, &d) {
                        warn!("service id {id}: writing the switch state: {e:#}");
                    }
                }
                Effect::Event(ev) => {
                    info!("{ev}");
                    self.metrics
                        .transition(&ev.service, ev.cause.kind(), ev.detection);
                    let record = control::record(&ev);
                    self.followers
                        .retain(|f| f.try_send(Response::Event(record.clone())).is_ok() || !f.is_closed());
                    if ev.from != ev.to {
                        self.state.last.insert(ev.service.clone(), record);
                    }
                    // Health changes move flap history: kept across restarts.
                    persist = true;
                    if self.events.len() == EVENT_LOG {
                        self.events.pop_front();
                    }
                    self.events.push_back(ev);
                }
            }
        }
        if persist {
            self.state.flaps = self.services.flaps();
        }
        let intents = self.services.intents();
        if intents != self.state.intents {
            self.state.intents = intents;
            persist = true;
        }
        persist
    }

    /// Writes the state file off the loop ([`Saver`]).
    fn persist(&mut self) {
        self.saver.save(self.state.clone(), None);
    }

    /// The configured interfaces after link changes. One deleted or renamed
    /// is reported (its traffic goes on, or stops, with the interface; the
    /// program follows the ifindex); one re-created under its name (a new
    /// ifindex) ends the daemon, for its supervisor's restart to attach to it.
    fn interfaces_moved(&mut self, links: &[(u32, bool)]) -> Result<()> {
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
    fn check_pins(&mut self) {
        for (name, r) in self.dp.repin_missing(&self.pins) {
            match r {
                Ok(()) => warn!("the pin of map {name} was removed under the running daemon: pinned again"),
                Err(e) => warn!("the pin of map {name} was removed and pinning it again failed: {e}"),
            }
            self.metrics.drift(1);
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
            self.metrics.drift(1);
        }
    }

    /// Carrier changes: a backend whose egress link lost its carrier is down
    /// now (the kernel says so; nothing from the network can forge it). A link
    /// that came back gets its backends probed at once.
    fn carrier(&mut self, links: &[(u32, bool)]) {
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

/// Why the daemon exits when one of its own tasks or threads ended: it
/// cannot do its job without it, and a supervisor's restart brings it back
/// (the pinned data plane forwards meanwhile).
fn stopped(what: &str) -> String {
    format!(
        "{what} stopped unexpectedly; exiting so the supervisor restarts the daemon (the data plane keeps \
         forwarding on the last decision meanwhile)"
    )
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
    fn of(s: &crate::config::Service) -> Forwarding {
        let be = |b: &crate::config::Backend| (crate::datapath::addr16(b.addr), b.port.map_or(0, u16::to_be));
        Forwarding {
            key: service_key(s),
            mode: match s.mode {
                Mode::Nat => redirector_common::Mode::Nat as u8,
                Mode::Dsr => redirector_common::Mode::Dsr as u8,
            },
            backends: [be(&s.primary), be(&s.secondary)],
        }
    }
}

/// The SERVICES key of a configured service.
fn service_key(s: &crate::config::Service) -> redirector_common::Endpoint {
    redirector_common::Endpoint {
        addr: crate::datapath::addr16(s.vip),
        port_be: s.port.to_be(),
        proto: s.protocol.number(),
        _pad: 0,
    }
}

/// Wall-clock ms since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
