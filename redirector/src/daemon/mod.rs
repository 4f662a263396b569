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
    config::{Config, Mode},
    datapath::{Datapath, Sizes, both_up},
    netlink,
};
use hops::Hops;

/// How often unresolved next hops are retried.
const RETRY: Duration = Duration::from_secs(1);
/// How often idle flow entries are swept.
const SWEEP: Duration = Duration::from_secs(10);
/// Flow entries idle this long are removed (a UDP flow is not pinned forever).
const FLOW_IDLE: Duration = Duration::from_secs(120);

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
    services: u32,
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
        let services = u32::try_from(cfg.services.len()).context("too many services")?;
        let mut hops = Hops::default();
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
                hops.backend(&mut dp, id, 0, svc.primary.addr),
                hops.backend(&mut dp, id, 1, svc.secondary.addr),
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
        let monitor = netlink::Monitor::new().context("subscribing to route/link/neighbour changes")?;
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
            services,
            monitor,
            requests,
            logger,
        })
    }

    /// Keeps next hops current until `shutdown` completes; returns the data
    /// plane (still attached until it is dropped) so callers can read counters.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Datapath> {
        let mut retry = tokio::time::interval(RETRY);
        let mut sweep = tokio::time::interval(SWEEP);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                changed = self.monitor.changed() => {
                    let changes = changed.unwrap_or_else(|e| {
                        warn!("netlink monitor: {e}");
                        netlink::Changes { full: true, neighbours: Vec::new() }
                    });
                    self.hops.apply(&mut self.dp, &changes)?;
                }
                guard = self.requests.readable_mut() => {
                    let mut guard = guard.context("next-hop request ring")?;
                    let mut clients = Vec::new();
                    while let Some(item) = RingBuf::next(guard.get_inner_mut()) {
                        if let Ok(a) = bytemuck::try_pod_read_unaligned::<redirector_common::Addr>(&item) {
                            clients.push(a);
                        }
                    }
                    guard.clear_ready();
                    self.hops.clients(&mut self.dp, clients.into_iter().map(|a| a.addr))?;
                }
                guard = self.logger.readable_mut() => {
                    let mut guard = guard.context("program log ring")?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = retry.tick() => self.hops.retry(&mut self.dp)?,
                _ = sweep.tick() => {
                    let n = self.dp.sweep_flows(FLOW_IDLE, self.services)?;
                    if n > 0 {
                        debug!("swept {n} idle flow entries");
                    }
                }
            }
        }
        Ok(self.dp)
    }
}
