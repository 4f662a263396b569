//! Attaching to the configured interfaces: driver mode, or skb mode when the
//! driver has no native XDP (`auto`), with a log line saying which.
use anyhow::{Context as _, Result, bail};
use aya::programs::{XdpMode, xdp::XdpLinkId};
use log::{info, warn};

use crate::{config::XdpModeSetting, datapath::Datapath};

/// Attaches the program to every interface; all or nothing (on error the
/// links attached so far are detached when the program is dropped).
pub fn attach_all(
    dp: &mut Datapath,
    names: &[String],
    ifindexes: &[u32],
    mode: XdpModeSetting,
) -> Result<Vec<XdpLinkId>> {
    let prog = dp.program()?;
    let mut links = Vec::new();
    for (name, &ifindex) in names.iter().zip(ifindexes) {
        let link = match mode {
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
        };
        links.push(link);
    }
    if links.len() != names.len() {
        bail!("attached to {} of {} interfaces", links.len(), names.len());
    }
    Ok(links)
}
