//! SIGHUP / `redirector reload`: parse the file again, diff by service name,
//! apply. A service's name is its identity:
//! - unchanged services are not touched (no flow lost, no probe state reset,
//!   whatever their order in the file);
//! - a change of health or failover settings only gives the machine its new
//!   policy (health state kept; probing restarts if the checks changed);
//! - a change of VIP, port, protocol, mode or backends starts that service over
//!   under a fresh id (its key is republished atomically, then the old id's
//!   entries are cleared);
//! - added and removed services take effect.
//!
//! An invalid file is refused with its error and the running configuration
//! stays. `[gateway]` and the control paths cannot change under a running data
//! plane (map sizes, interfaces, sockets): a reload that changes them is
//! refused and says to restart (restarts are lossless).
//!
//! New backends' next hops are resolved on a blocking thread (netlink), then
//! the loop finishes the reload: nothing slow runs on the decision loop.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};
use redirector_common::NextHop;
use tokio::sync::mpsc;

use super::{Daemon, hops::Hops, resolver::Command};
use crate::{
    config::{Config, Service},
    control::proto::Response,
    datapath::monotonic_ns,
    policy::Nanos,
};

/// A reload waiting for its next hops.
pub struct Pending {
    cfg: Config,
    /// Services to (re)create: name → resolved hops (primary, secondary).
    hops: HashMap<String, [NextHop; 2]>,
    reply: Option<mpsc::Sender<Response>>,
}

/// Do two configurations of a service describe the same forwarding?
fn same_identity(a: &Service, b: &Service) -> bool {
    a.vip == b.vip
        && a.port == b.port
        && a.protocol == b.protocol
        && a.mode == b.mode
        && a.primary == b.primary
        && a.secondary == b.secondary
}

fn gateway_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (g, n) = (&old.gateway, &new.gateway);
    let mut v = Vec::new();
    if g.interfaces != n.interfaces {
        v.push("[gateway] interfaces");
    }
    if g.xdp_mode != n.xdp_mode {
        v.push("[gateway] xdp_mode");
    }
    if g.flow_table_size != n.flow_table_size {
        v.push("[gateway] flow_table_size");
    }
    if g.max_services != n.max_services {
        v.push("[gateway] max_services");
    }
    let (c, m) = (&old.control, &new.control);
    if c.socket != m.socket
        || c.state_dir != m.state_dir
        || c.bpffs_dir != m.bpffs_dir
        || c.metrics != m.metrics
    {
        v.push("[control] socket/state_dir/bpffs_dir/metrics");
    }
    v
}

impl Daemon {
    /// Starts a reload: parses and checks the file; resolves the next hops
    /// of new backends off the loop; the answer goes to `reply` (if any).
    pub(super) fn begin_reload(&mut self, reply: Option<mpsc::Sender<Response>>) {
        let answer = |reply: &Option<mpsc::Sender<Response>>, r: Response| {
            if let Some(t) = reply {
                let _ = t.try_send(r);
            }
        };
        match self.prepare_reload() {
            Ok(cfg) => {
                if self.reloading {
                    let message = "a reload is already in progress; try again".to_owned();
                    answer(&reply, Response::Error { message });
                    return;
                }
                self.reloading = true;
                let wanted: Vec<(String, [IpAddr; 2])> = cfg
                    .services
                    .iter()
                    .filter(|s| {
                        self.services
                            .id(&s.name)
                            .and_then(|id| self.services.iter().find(|(i, _)| *i == id))
                            .is_none_or(|(_, old)| !same_identity(&old.cfg, s))
                    })
                    .map(|s| (s.name.clone(), [s.primary.addr, s.secondary.addr]))
                    .collect();
                let interfaces = self.ifindexes.clone();
                let tx = self.reloads.0.clone();
                tokio::task::spawn_blocking(move || {
                    let mut hops = Hops::new(interfaces);
                    hops.commit();
                    let resolved = wanted
                        .into_iter()
                        .map(|(name, [p, s])| {
                            (name, [hops.backend(u32::MAX, 0, p), hops.backend(u32::MAX, 1, s)])
                        })
                        .collect();
                    let _ = tx.send(Pending {
                        cfg,
                        hops: resolved,
                        reply,
                    });
                });
            }
            Err(e) => {
                warn!("reload refused, running configuration unchanged: {e:#}");
                answer(
                    &reply,
                    Response::Error {
                        message: format!("reload refused, running configuration unchanged: {e:#}"),
                    },
                );
            }
        }
    }

    fn prepare_reload(&self) -> Result<Config> {
        let Some(path) = &self.config_path else {
            bail!("this daemon was started without a configuration file");
        };
        let cfg = Config::from_file(path)?;
        let changed = gateway_changes(&self.cfg, &cfg);
        if !changed.is_empty() {
            bail!(
                "{} changed; these need a restart of the daemon (lossless: the data plane is adopted), \
                 e.g. `systemctl restart redirector`",
                changed.join(", ")
            );
        }
        Ok(cfg)
    }

    /// Applies a reload whose next hops are resolved.
    pub(super) fn finish_reload(&mut self, p: Pending) {
        self.reloading = false;
        let r = self.apply_reload(p.cfg, &p.hops);
        let response = match r {
            Ok(summary) => {
                info!("reloaded: {summary}");
                Response::Done {
                    message: format!("reloaded: {summary}"),
                }
            }
            Err(e) => {
                warn!("reload failed: {e:#}");
                Response::Error {
                    message: format!("reload failed: {e:#}"),
                }
            }
        };
        if let Some(t) = p.reply {
            let _ = t.try_send(response);
        }
    }

    fn apply_reload(&mut self, cfg: Config, hops: &HashMap<String, [NextHop; 2]>) -> Result<String> {
        let now = Nanos(monotonic_ns());
        let old: HashMap<String, (u32, Service)> = self
            .services
            .iter()
            .map(|(id, s)| (s.cfg.name.clone(), (id, s.cfg.clone())))
            .collect();
        // Services that start over lose their id; their old ids are not handed
        // out again in this reload (their entries are cleared after).
        let mut retired: Vec<(String, u32)> = Vec::new();
        for s in &cfg.services {
            if let Some((id, o)) = old.get(&s.name)
                && !same_identity(o, s)
            {
                retired.push((s.name.clone(), *id));
                self.state.ids.remove(&s.name);
                self.state.intents.remove(&s.name);
            }
        }
        let avoid: BTreeSet<u32> = retired.iter().map(|(_, id)| *id).collect();
        let assignment = self
            .state
            .assign_avoiding(
                cfg.services.iter().map(|s| s.name.as_str()),
                cfg.gateway.max_services,
                &avoid,
            )
            .context("allocating service ids")?;
        retired.extend(assignment.removed.iter().cloned());
        let (mut added, mut restarted, mut updated, mut unchanged) = (0, 0, 0, 0);
        for s in &cfg.services {
            let Some(&id) = self.state.ids.get(&s.name) else {
                bail!("service {:?} has no id", s.name);
            };
            match old.get(&s.name) {
                Some((old_id, o)) if *old_id == id => {
                    if o == s {
                        unchanged += 1;
                    } else {
                        let effects = self.services.update(id, s.clone(), now);
                        self.apply(effects);
                        updated += 1;
                    }
                }
                before => {
                    let resolved = hops.get(&s.name).copied().context("next hops of a new service")?;
                    self.dp
                        .set_backends(id, s, resolved)
                        .with_context(|| format!("writing service {:?}", s.name))?;
                    let machine = self.services.add(id, s.clone(), None, now);
                    let desired = machine.desired();
                    self.switches
                        .write(&mut self.dp, id, &desired)
                        .with_context(|| format!("writing service {:?}", s.name))?;
                    // The key last: for a restarted service with the same VIP,
                    // this one write moves it to its new id.
                    self.dp
                        .publish_service(id, s)
                        .with_context(|| format!("writing service {:?}", s.name))?;
                    for (slot, be) in [(0u8, &s.primary), (1, &s.secondary)] {
                        self.resolver.send(Command::Track {
                            id,
                            slot,
                            addr: be.addr,
                        });
                    }
                    if before.is_some() {
                        restarted += 1;
                    } else {
                        added += 1;
                    }
                    info!(
                        "service {} (id {id}): {} {}",
                        s.name,
                        if before.is_some() { "restarted" } else { "added" },
                        s.mode
                    );
                }
            }
        }
        let removed = assignment.removed.len();
        for (name, id) in retired {
            self.services.remove(id);
            if !self.state.ids.contains_key(&name) {
                self.metrics.remove_service(&name);
            }
            self.resolver.send(Command::Untrack { id });
            self.dp
                .remove_service(id)
                .with_context(|| format!("removing service {name:?}"))?;
            self.switches.reset(&mut self.dp, id)?;
        }
        self.services.set_budget(cfg.control.probe_budget);
        self.cfg = cfg;
        self.persist();
        Ok(format!(
            "{added} added, {removed} removed, {restarted} restarted (addresses changed), {updated} updated \
             (policy), {unchanged} unchanged"
        ))
    }
}
