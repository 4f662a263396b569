//! `redirector run`: load, resolve, write, attach, then keep next hops current
//! until SIGINT/SIGTERM. Everything that can fail on bad input (config, DSR
//! topology, interfaces) fails before the program is attached, so a refused
//! start changes nothing on the host.
mod attach;
mod hops;

use std::{future::Future, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use log::{debug, info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::{Config, Mode, Protocol},
    datapath::{Datapath, Sizes, both_up},
    netlink,
};
use hops::Hops;

/// How often unresolved next hops are retried.
const RETRY: Duration = Duration::from_secs(1);
/// How often idle flow entries are swept.
const SWEEP: Duration = Duration::from_secs(10);
/// Link/address/route changes within this window cause one refresh.
const RESYNC_WINDOW: Duration = Duration::from_millis(100);

/// Runs the daemon with the configuration at `path` until SIGINT/SIGTERM.
pub fn run(path: &Path) -> Result<()> {
    let cfg = Config::from_file(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let daemon = Daemon::start(cfg)?;
        daemon
            .run(async {
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
            })
            .await?;
        info!("stopped: XDP programs detached");
        Ok(())
    })
}

/// A running data plane and the state that keeps it current.
pub struct Daemon {
    dp: Datapath,
    hops: Hops,
    /// Idle time after which a flow entry is removed, per service id.
    flow_idle: Vec<Duration>,
    monitor: netlink::Monitor,
    requests: AsyncFd<RingBuf<MapData>>,
    logger: AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Daemon {
    /// Loads, resolves, writes every service and attaches. Must run inside a
    /// tokio runtime (the netlink monitor and ring buffer register with it).
    pub fn start(cfg: Config) -> Result<Daemon> {
        let sizes = Sizes {
            max_services: cfg.gateway.max_services,
            flow_entries: cfg.gateway.flow_table_size,
        };
        // Subscribe before reading any state, so no change between the reads
        // below and the event loop goes unseen.
        let monitor = netlink::Monitor::new().context("subscribing to route/link/neighbour changes")?;
        let mut dp = Datapath::load(sizes).context("loading the XDP program")?;
        let mut ifindexes = Vec::new();
        for name in &cfg.gateway.interfaces {
            let i = netlink::ifindex(name).with_context(|| format!("interface {name}"))?;
            if let Some(id) = netlink::xdp_prog_id(i).with_context(|| format!("interface {name}"))? {
                bail!(
                    "interface {name} already has an XDP program attached (id {id}); detach it first \
                     (e.g. `ip link set dev {name} xdp off`) or remove {name} from [gateway] interfaces"
                );
            }
            ifindexes.push(i);
        }
        let mut hops = Hops::new(ifindexes.iter().copied());
        let flow_idle: Vec<Duration> = cfg
            .services
            .iter()
            .map(|s| match s.protocol {
                Protocol::Tcp => Duration::from_secs(cfg.gateway.tcp_flow_idle.into()),
                Protocol::Udp => Duration::from_secs(cfg.gateway.udp_flow_idle.into()),
            })
            .collect();
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
        hops.sync_locals(&mut dp).context("listing local addresses")?;
        for &i in &ifindexes {
            dp.add_egress(i)?;
        }
        for (id, svc) in (0u32..).zip(&cfg.services) {
            let resolved = [
                hops.backend(id, 0, svc.primary.addr),
                hops.backend(id, 1, svc.secondary.addr),
            ];
            dp.set_service(id, svc, resolved, both_up(redirector_common::SLOT_PRIMARY))
                .with_context(|| format!("writing service {:?}", svc.name))?;
            info!(
                "service {}: {} {} {} → primary {} secondary {} (active: primary)",
                svc.name,
                svc.protocol,
                std::net::SocketAddr::new(svc.vip, svc.port),
                svc.mode,
                svc.primary,
                svc.secondary
            );
        }
        // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring buffer
        // for as long as it is registered.
        let requests =
            unsafe { AsyncFd::register(dp.take_hop_requests()?) }.context("watching next-hop requests")?;
        // SAFETY: as above, for the program's log ring.
        let logger = unsafe { AsyncFd::register(dp.take_logger()?) }.context("watching the program log")?;
        // Attach last: traffic only ever meets complete maps.
        attach::attach_all(&mut dp, &cfg.gateway.interfaces, &ifindexes, cfg.gateway.xdp_mode)?;
        info!("attached to {}; forwarding", cfg.gateway.interfaces.join(", "));
        Ok(Daemon {
            dp,
            hops,
            flow_idle,
            monitor,
            requests,
            logger,
        })
    }

    /// Keeps next hops current until `shutdown` completes; returns the data
    /// plane (still attached until it is dropped) so callers can read counters.
    ///
    /// Nothing in here stops the daemon (which would detach the data plane):
    /// a failed step is logged and a full resynchronisation is scheduled.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Datapath> {
        let mut retry = tokio::time::interval(RETRY);
        let mut sweep = tokio::time::interval(SWEEP);
        // Link/address/route changes arrive in bursts (and constantly on a
        // routing-daemon host): coalesce them into one refresh per window.
        let resync = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(resync, shutdown);
        let mut resync_armed = false;
        let mut sweeping: Option<tokio::task::JoinHandle<crate::datapath::Swept>> = None;
        loop {
            let mut full = false;
            tokio::select! {
                () = &mut shutdown => break,
                changed = self.monitor.changed() => match changed {
                    Ok(c) => {
                        full = c.full;
                        if !c.neighbours.is_empty() {
                            let r = self.hops.neighbours_changed(&mut self.dp, &c.neighbours);
                            full |= failed("applying neighbour changes", r);
                        }
                    }
                    Err(e) => {
                        warn!("netlink monitor: {e}");
                        full = true;
                    }
                },
                guard = self.requests.readable_mut() => {
                    let mut guard = guard.context("next-hop request ring")?;
                    let mut clients = Vec::new();
                    while let Some(item) = RingBuf::next(guard.get_inner_mut()) {
                        if let Ok(a) = bytemuck::try_pod_read_unaligned::<redirector_common::Addr>(&item) {
                            clients.push(a.addr);
                        }
                    }
                    guard.clear_ready();
                    let r = self.hops.clients(&mut self.dp, clients);
                    full = failed("resolving clients", r);
                }
                guard = self.logger.readable_mut() => {
                    let mut guard = guard.context("program log ring")?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                () = &mut resync, if resync_armed => {
                    resync_armed = false;
                    let r = self.hops.refresh_all(&mut self.dp);
                    full = failed("refreshing next hops", r);
                }
                _ = retry.tick() => {
                    let r = self.hops.retry(&mut self.dp);
                    full = failed("retrying unresolved next hops", r);
                }
                _ = sweep.tick(), if sweeping.is_none() => {
                    // Walking a large table takes a while: do it on a blocking
                    // thread; only the unpinning comes back to this loop.
                    match self.dp.any_pinned(self.services()).and_then(|p| {
                        if p { self.dp.flow_table().map(Some) } else { Ok(None) }
                    }) {
                        Ok(Some(mut table)) => {
                            let idle = self.flow_idle.clone();
                            sweeping = Some(tokio::task::spawn_blocking(move || table.sweep(&idle)));
                        }
                        Ok(None) => {}
                        Err(e) => warn!("sweeping idle flow entries: {e:#}"),
                    }
                }
                done = async {
                    match sweeping.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                }, if sweeping.is_some() => {
                    sweeping = None;
                    match done {
                        Ok(swept) => {
                            if swept.removed > 0 {
                                debug!("swept {} idle flow entries", swept.removed);
                            }
                            if let Err(e) = self.dp.unpin_idle(self.services(), &swept.live) {
                                warn!("unpinning services: {e:#}");
                            }
                        }
                        Err(e) => warn!("flow sweep task: {e}"),
                    }
                }
            }
            if full && !resync_armed {
                resync.as_mut().reset(tokio::time::Instant::now() + RESYNC_WINDOW);
                resync_armed = true;
            }
        }
        Ok(self.dp)
    }
}

impl Daemon {
    fn services(&self) -> u32 {
        u32::try_from(self.flow_idle.len()).unwrap_or(u32::MAX)
    }
}

/// Logs a failed step; true if it failed (the caller schedules a resync).
fn failed(what: &str, r: Result<()>) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => {
            warn!("{what}: {e:#}; resynchronising");
            true
        }
    }
}
