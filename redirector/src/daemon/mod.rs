//! `redirector run`: load, resolve, write, attach, then keep next hops current
//! until SIGINT/SIGTERM. Everything that can fail on bad input (config, DSR
//! topology, interfaces) fails before the program is attached, so a refused
//! start changes nothing on the host.
mod attach;
mod hops;

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};
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

/// How often unresolved next hops are retried and idle flows swept.
const RETRY: Duration = Duration::from_secs(1);
const SWEEP: Duration = Duration::from_secs(10);
/// Flow entries idle this long are removed (a UDP flow is not pinned forever).
const FLOW_IDLE: Duration = Duration::from_secs(120);

/// Runs the daemon with the configuration at `path`.
pub fn run(path: &Path) -> Result<()> {
    let cfg = Config::from_file(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> Result<()> {
    let sizes = Sizes { max_services: cfg.gateway.max_services, flow_entries: cfg.gateway.flow_table_size };
    let mut dp = Datapath::load(sizes).context("loading the XDP program")?;
    let mut ifindexes = Vec::new();
    for name in &cfg.gateway.interfaces {
        let i = netlink::ifindex(name).with_context(|| format!("interface {name}"))?;
        if let Some(id) = netlink::xdp_prog_id(i).with_context(|| format!("interface {name}"))? {
            bail!(
                "interface {name} already has an XDP program attached (id {id}); \
                 detach it first (e.g. `ip link set dev {name} xdp off`) or remove {name} from [gateway] interfaces"
            );
        }
        ifindexes.push(i);
    }

    let mut hops = Hops::default();
    for (id, svc) in cfg.services.iter().enumerate() {
        let id = u32::try_from(id).context("too many services")?;
        if svc.mode == Mode::Dsr {
            for be in [&svc.primary, &svc.secondary] {
                let route = netlink::route_get(be.addr).with_context(|| format!("service {:?}", svc.name))?;
                if let Some(gw) = route.gateway {
                    bail!(
                        "service {:?}: mode = \"dsr\" needs backend {} on a directly attached link, \
                         but the route to it goes via {gw}; use mode = \"nat\" or fix the route",
                        svc.name,
                        be.addr
                    );
                }
            }
        }
        let resolved = [
            hops.backend(&mut dp, id, 0, svc.primary.addr),
            hops.backend(&mut dp, id, 1, svc.secondary.addr),
        ];
        dp.set_service(id, svc, resolved, both_up(redirector_common::SLOT_PRIMARY))
            .with_context(|| format!("writing service {:?}", svc.name))?;
        info!(
            "service {}: {} {}:{} {} → primary {} secondary {} (active: primary)",
            svc.name, svc.protocol, svc.vip, svc.port, svc.mode, svc.primary, svc.secondary
        );
    }
    for addr in netlink::local_addrs().context("listing local addresses")? {
        dp.add_local_addr(addr)?;
    }
    for &i in &ifindexes {
        dp.add_egress(i)?;
    }

    let mut monitor = netlink::Monitor::new().context("subscribing to route/link/neighbour changes")?;
    let _links = attach::attach_all(&mut dp, &cfg.gateway.interfaces, &ifindexes, cfg.gateway.xdp_mode)?;
    info!("attached to {}; forwarding", cfg.gateway.interfaces.join(", "));

    // SAFETY: the ring buffer owns its fd, and AsyncFd owns the ring buffer
    // for as long as it is registered.
    let mut requests =
        unsafe { AsyncFd::register(dp.take_hop_requests()?) }.context("watching next-hop requests")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut retry = tokio::time::interval(RETRY);
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            changed = monitor.changed() => {
                if let Err(e) = changed {
                    warn!("netlink monitor: {e}");
                }
                hops.refresh_all(&mut dp)?;
            }
            guard = requests.readable_mut() => {
                let mut guard = guard.context("next-hop request ring")?;
                let ring = guard.get_inner_mut();
                let mut clients = Vec::new();
                while let Some(item) = aya::maps::RingBuf::next(ring) {
                    if let Ok(a) = bytemuck::try_pod_read_unaligned::<redirector_common::Addr>(&item) {
                        clients.push(a);
                    }
                }
                guard.clear_ready();
                for a in clients {
                    hops.client(&mut dp, a.addr)?;
                }
            }
            _ = retry.tick() => hops.retry(&mut dp)?,
            _ = sweep.tick() => {
                let n = dp.sweep_flows(FLOW_IDLE)?;
                if n > 0 {
                    log::debug!("swept {n} idle flow entries");
                }
            }
        }
    }
    info!("stopping: detaching XDP programs");
    Ok(())
}
