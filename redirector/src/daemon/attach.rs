//! Attaching to the configured interfaces through pinned XDP links, so the
//! program stays attached when the daemon stops or dies.
//!
//! - An interface whose link is pinned (a previous run) gets the new program
//!   swapped into that link: one atomic `bpf_link_update`, no gap.
//! - Otherwise the program is attached (driver mode, or skb mode when the
//!   driver has no native XDP and the setting is `auto`) and its link pinned.
//! - An attachment that fell back to netlink (kernels without XDP links)
//!   cannot be pinned; that is said loudly: on that interface the program is
//!   detached when the daemon exits.
use anyhow::{Context as _, Result, bail};
use aya::programs::{
    XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};
use log::{info, warn};

use crate::{
    config::XdpModeSetting,
    datapath::{Datapath, PinDir},
    netlink,
};

/// What happens on one interface.
pub enum Plan {
    /// Swap the program into this pinned link.
    Adopt(FdLink),
    /// Attach afresh and pin the link.
    Fresh,
}

/// A link kept open for the daemon's lifetime.
pub enum Held {
    /// Pinned: outlives the daemon. `None` only if pinning it again failed
    /// (the link is then gone).
    Pinned {
        /// The interface.
        name: String,
        /// The link.
        link: Option<FdLink>,
    },
    /// Not pinnable (netlink attachment): detached when dropped.
    Unpinned(#[expect(dead_code, reason = "held for its lifetime")] XdpLink),
}

impl Held {
    /// Pins the link again if its pin was removed under the running daemon
    /// (else the program would leave the interface when the daemon exits).
    /// `None` when there was nothing to do.
    pub fn repin(&mut self, pins: &PinDir) -> Option<(String, Result<()>)> {
        let Held::Pinned { name, link } = self else {
            return None;
        };
        let path = pins.link(name);
        if path.exists() || link.is_none() {
            return None;
        }
        let fd = link.take()?;
        let r = std::fs::create_dir_all(pins.dir())
            .map_err(anyhow::Error::from)
            .and_then(|()| fd.pin(&path).map_err(anyhow::Error::from))
            .map(|pinned| *link = Some(FdLink::from(pinned)));
        Some((
            name.clone(),
            r.with_context(|| format!("pinning the XDP link on {name} again")),
        ))
    }
}

/// Decides, before anything is written, what to do on each interface:
/// refuses an interface that carries an XDP program that is not ours.
pub fn plan(pins: &PinDir, names: &[String], ifindexes: &[u32]) -> Result<Vec<Plan>> {
    let mut plans = Vec::new();
    for (name, &ifindex) in names.iter().zip(ifindexes) {
        let attached = netlink::xdp_prog_id(ifindex).with_context(|| format!("interface {name}"))?;
        let path = pins.link(name);
        let pinned = if path.exists() {
            match PinnedLink::from_pin(&path) {
                Ok(l) => {
                    let link = FdLink::from(l);
                    let prog = link.info().map(|i| i.program_id()).ok();
                    Some((link, prog))
                }
                Err(e) => {
                    warn!("{}: unreadable link pin ({e}); attaching afresh", path.display());
                    None
                }
            }
        } else {
            None
        };
        match (attached, pinned) {
            (Some(a), Some((link, Some(p)))) if a == p => {
                info!("{name}: adopting the pinned XDP link (program id {a})");
                plans.push(Plan::Adopt(link));
            }
            (Some(id), _) => bail!(
                "interface {name} already has an XDP program attached (id {id}) that is not this data \
                 plane's (no matching link pin in {}); detach it first (e.g. `ip link set dev {name} xdp off`) \
                 or remove {name} from [gateway] interfaces",
                pins.dir().display()
            ),
            (None, stale) => {
                if stale.is_some() {
                    // The link's interface went away (or was detached by hand).
                    warn!("{name}: the pinned link no longer holds the interface; attaching afresh");
                    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                }
                plans.push(Plan::Fresh);
            }
        }
    }
    Ok(plans)
}

/// After a successful attach: links pinned for interfaces no longer
/// configured are unpinned, which detaches them (no process holds them).
pub fn detach_unconfigured(pins: &PinDir, names: &[String]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(pins.dir()) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ifname) = name.strip_prefix("link_")
            && !names.iter().any(|n| n == ifname)
        {
            info!("{ifname}: no longer configured; detaching the data plane from it");
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Attaches the program to every interface per `plans`; all or nothing (on
/// error the fresh links attached so far are detached when dropped).
pub fn attach_all(
    dp: &mut Datapath,
    pins: &PinDir,
    names: &[String],
    ifindexes: &[u32],
    plans: Vec<Plan>,
    mode: XdpModeSetting,
) -> Result<Vec<Held>> {
    let prog = dp.program()?;
    let mut held = Vec::new();
    for ((name, &ifindex), plan) in names.iter().zip(ifindexes).zip(plans) {
        let id: XdpLinkId = match plan {
            Plan::Adopt(link) => {
                let link = XdpLink::try_from(link).with_context(|| format!("{name}: pinned link"))?;
                prog.attach_to_link(link)
                    .with_context(|| format!("{name}: swapping the program into the pinned link"))?
            }
            Plan::Fresh => attach_one(prog, name, ifindex, mode)?,
        };
        let link = prog.take_link(id)?;
        match FdLink::try_from(link) {
            Ok(fd) => {
                let path = pins.link(name);
                if !path.exists() {
                    // pin() consumes the link; reopen the pin to keep a handle.
                    fd.pin(&path)
                        .with_context(|| format!("{name}: pinning the XDP link at {}", path.display()))?;
                    let l =
                        PinnedLink::from_pin(&path).with_context(|| format!("{name}: reopening its pin"))?;
                    held.push(Held::Pinned {
                        name: name.clone(),
                        link: Some(FdLink::from(l)),
                    });
                } else {
                    held.push(Held::Pinned {
                        name: name.clone(),
                        link: Some(fd),
                    });
                }
            }
            Err(LinkError::InvalidLink) => {
                warn!(
                    "{name}: the kernel attached XDP through netlink, which cannot be pinned: on {name} the \
                     data plane stops when the daemon exits"
                );
                // The conversion consumed (and so detached) the netlink link; only
                // kernels without XDP links (< 5.9) get here, once, at start.
                let id = attach_one(prog, name, ifindex, mode)?;
                held.push(Held::Unpinned(prog.take_link(id)?));
            }
            Err(e) => return Err(e).with_context(|| format!("{name}: XDP link")),
        }
    }
    if held.len() != names.len() {
        bail!("attached to {} of {} interfaces", held.len(), names.len());
    }
    Ok(held)
}

fn attach_one(
    prog: &mut aya::programs::Xdp,
    name: &str,
    ifindex: u32,
    mode: XdpModeSetting,
) -> Result<XdpLinkId> {
    Ok(match mode {
        XdpModeSetting::Driver => prog
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .with_context(|| format!("attaching to {name} in driver mode"))?,
        XdpModeSetting::Skb => prog
            .attach_to_if_index(ifindex, XdpMode::Skb)
            .with_context(|| format!("attaching to {name} in skb mode"))?,
        XdpModeSetting::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(l) => {
                info!("{name}: XDP attached in driver mode");
                l
            }
            Err(e) => {
                warn!(
                    "{name}: driver mode unavailable ({e}); falling back to skb (generic) mode. \
                     Slower, and traffic sent by local sockets on this host through {name} may carry \
                     partial (offloaded) checksums that a rewrite cannot fix"
                );
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .with_context(|| format!("attaching to {name} in skb mode"))?
            }
        },
    })
}
