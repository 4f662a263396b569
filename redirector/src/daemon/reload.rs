//! SIGHUP / `redirector reload`: parse the file again, diff by service name,
//! apply. A service's name is its identity:
//! - unchanged services are not touched (no flow lost, no probe state reset,
//!   whatever their order in the file);
//! - a change of health or failover settings, or of the `allow` / `deny`
//!   lists, only gives the service its new policy (id and health state kept;
//!   probing restarts if the checks changed; [`Diff::prefixes_changed`] names
//!   the services whose prefix tries are to be rewritten);
//! - a change of VIP, port, protocol, mode or backends starts that service over
//!   under a fresh id (its key is republished atomically, then the old id's
//!   entries are cleared);
//! - added and removed services take effect.
//!
//! An invalid file is refused with its error and the running configuration
//! stays. `[gateway]` and the control paths cannot change under a running data
//! plane (map sizes, interfaces, sockets): a reload that changes them is
//! refused and says to restart (restarts are lossless). The exceptions are
//! values the data plane reads per packet or per sweep: the flow idle times
//! and `icmp_echo` ([`Diff::icmp_echo`]).
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
    config::{Config, IcmpEcho, Service},
    control::proto::Response,
    datapath::monotonic_ns,
    policy::Nanos,
};

/// A reload waiting for its next hops.
pub struct Pending {
    plan: Plan,
    /// Services to (re)create: name → resolved hops (primary, secondary).
    hops: HashMap<String, [NextHop; 2]>,
    reply: Option<mpsc::Sender<Response>>,
}

/// What a reload changes, by service name; a function of the running and the
/// new configuration alone. Services are listed in file order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Services new in the file.
    pub added: Vec<String>,
    /// Services gone from the file (in the running file's order).
    pub removed: Vec<String>,
    /// Services whose vip, port, protocol, mode or backends changed: they
    /// start over under a fresh id.
    pub restarted: Vec<String>,
    /// Services forwarded as before whose policy changed (health, failover,
    /// allow, deny): same id, health state kept.
    pub updated: Vec<String>,
    /// The services of `updated` whose `allow` or `deny` list changed: the
    /// prefix tries of their (kept) id are to be rewritten. Added and
    /// restarted services have theirs written with the rest of the service.
    pub prefixes_changed: Vec<String>,
    /// The new `[gateway] icmp_echo`, when it changed: one value the data
    /// plane reads per packet, so no restart.
    pub icmp_echo: Option<IcmpEcho>,
    /// Keys that cannot change under a running data plane; a reload that
    /// changes one is refused.
    pub needs_restart: Vec<&'static str>,
}

/// Compares the running configuration with a new one.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let before: HashMap<&str, &Service> = old.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let after: BTreeSet<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
    let mut d = Diff {
        removed: old
            .services
            .iter()
            .filter(|s| !after.contains(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect(),
        icmp_echo: Some(new.gateway.icmp_echo).filter(|&e| e != old.gateway.icmp_echo),
        needs_restart: gateway_changes(old, new),
        ..Diff::default()
    };
    for s in &new.services {
        let name = s.name.clone();
        match before.get(s.name.as_str()) {
            None => d.added.push(name),
            Some(o) if !same_identity(o, s) => d.restarted.push(name),
            Some(o) if *o != s => {
                if o.allow != s.allow || o.deny != s.deny {
                    d.prefixes_changed.push(name.clone());
                }
                d.updated.push(name);
            }
            Some(_) => {}
        }
    }
    d
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
    if g.backend_interfaces != n.backend_interfaces {
        v.push("[gateway] backend_interfaces");
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
    if old.announce != new.announce {
        v.push("[announce]");
    }
    v
}

impl Daemon {
    /// Starts a reload: parses the file and plans everything against the
    /// running state, touching nothing; resolves the next hops of new
    /// backends off the loop (no neighbour entry is created for a reload
    /// that may yet be refused); the answer goes to `reply` (if any).
    pub(super) fn begin_reload(&mut self, reply: Option<mpsc::Sender<Response>>) {
        let answer = |reply: &Option<mpsc::Sender<Response>>, r: Response| {
            if let Some(t) = reply {
                let _ = t.try_send(r);
            }
        };
        if self.reloading {
            let message = "a reload is already in progress; try again".to_owned();
            answer(&reply, Response::Error { message });
            return;
        }
        match self.plan_reload() {
            Ok(plan) => {
                self.reloading = true;
                let wanted: Vec<(String, [IpAddr; 2])> = plan
                    .cfg
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
                    // Not committed: the resolver keeps the neighbours of the
                    // backends it is told to track, once the reload applied.
                    let mut hops = Hops::new(interfaces);
                    let resolved = wanted
                        .into_iter()
                        .map(|(name, [p, s])| {
                            (name, [hops.backend(u32::MAX, 0, p), hops.backend(u32::MAX, 1, s)])
                        })
                        .collect();
                    let _ = tx.send(Pending {
                        plan,
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

    /// Everything a reload will do, checked against the running state
    /// without changing anything: the file, what changes, the service ids
    /// (restarted services need a fresh id while their old one is cleared),
    /// the capacity of the prefix tries at the reload's peak.
    fn plan_reload(&self) -> Result<Plan> {
        let Some(path) = &self.config_path else {
            bail!("this daemon was started without a configuration file");
        };
        let cfg = Config::from_file(path)?;
        let diff = diff(&self.cfg, &cfg);
        if !diff.needs_restart.is_empty() {
            bail!(
                "{} changed; these need a restart of the daemon (lossless: the data plane is adopted), \
                 e.g. `systemctl restart redirector`",
                diff.needs_restart.join(", ")
            );
        }
        let running: HashMap<&str, (u32, &Service)> = self
            .services
            .iter()
            .map(|(id, s)| (s.cfg.name.as_str(), (id, &s.cfg)))
            .collect();
        let mut state = self.state.clone();
        // Services that start over lose their id; the old ones are not handed
        // out again in this reload (their entries are cleared after it).
        let mut retired: Vec<(String, u32)> = Vec::new();
        for s in &cfg.services {
            if let Some(&(id, o)) = running.get(s.name.as_str())
                && !same_identity(o, s)
            {
                retired.push((s.name.clone(), id));
                state.ids.remove(&s.name);
            }
        }
        let avoid: BTreeSet<u32> = retired.iter().map(|(_, id)| *id).collect();
        let assignment = state
            .assign_avoiding(
                cfg.services.iter().map(|s| s.name.as_str()),
                cfg.gateway.max_services,
                &avoid,
            )
            .with_context(|| {
                format!(
                    "allocating service ids ({} restarted service(s) need a fresh id while their old one is \
                     cleared)",
                    avoid.len()
                )
            })?;
        retired.extend(assignment.removed.iter().cloned());
        // Prefix tries: new entries go in before stale ones go out, so the
        // peak is what is there now plus what the reload adds.
        for (list, cap) in [
            ("allow", redirector_common::DEFAULT_ACL_ENTRIES),
            ("deny", redirector_common::DEFAULT_ACL_ENTRIES),
        ] {
            let of = |s: &Service| {
                if list == "allow" {
                    s.allow.clone()
                } else {
                    s.deny.clone()
                }
            };
            let now: usize = self.cfg.services.iter().map(|s| of(s).len()).sum();
            let added: usize = cfg
                .services
                .iter()
                .map(|s| match running.get(s.name.as_str()) {
                    Some(&(id, o)) if state.ids.get(&s.name) == Some(&id) => {
                        let old = of(o);
                        of(s).iter().filter(|p| !old.contains(p)).count()
                    }
                    _ => of(s).len(),
                })
                .sum();
            if !u32::try_from(now + added).is_ok_and(|n| n <= cap) {
                bail!(
                    "the {list} lists would need {} entries at once while reloading ({now} now, {added} added \
                     before the old ones go); the data plane holds {cap}: reload in two steps, or restart \
                     (lossless)",
                    now + added
                );
            }
        }
        Ok(Plan {
            cfg,
            diff,
            state,
            retired,
        })
    }

    /// Applies a reload whose next hops are resolved: all of it, or, if a
    /// step fails, none of it (the steps done are undone in reverse).
    pub(super) fn finish_reload(&mut self, p: Pending) {
        self.reloading = false;
        let r = self.apply_reload(p.plan, &p.hops);
        let response = match r {
            Ok(summary) => {
                info!("reloaded: {summary}");
                Response::Done {
                    message: format!("reloaded: {summary}"),
                }
            }
            Err(e) => {
                warn!("reload failed and undone, running configuration unchanged: {e:#}");
                Response::Error {
                    message: format!("reload failed and undone, running configuration unchanged: {e:#}"),
                }
            }
        };
        if let Some(t) = p.reply {
            let _ = t.try_send(response);
        }
    }

    fn apply_reload(&mut self, plan: Plan, hops: &HashMap<String, [NextHop; 2]>) -> Result<String> {
        let mut undo = Vec::new();
        if let Err(e) = self.apply_steps(&plan, hops, &mut undo) {
            self.roll_back(undo);
            return Err(e);
        }
        // Committed. The retired services go; their map entries are cleared
        // (a failure is logged: the id stays out of use until a later
        // reload or restart clears it).
        for (name, id) in &plan.retired {
            self.services.remove(*id);
            if !plan.state.ids.contains_key(name) {
                self.metrics.remove_service(name);
            }
            self.resolver.send(Command::Untrack { id: *id });
            if let Err(e) = self
                .dp
                .remove_service(*id)
                .and_then(|()| self.switches.reset(&mut self.dp, *id))
            {
                warn!("clearing the entries of service {name:?} (id {id}): {e:#}");
            }
        }
        if let Some(echo) = plan.diff.icmp_echo
            && let Err(e) = self.dp.set_icmp_echo(echo == IcmpEcho::Answer)
        {
            warn!("writing icmp_echo: {e:#}");
        }
        self.services.set_budget(plan.cfg.control.probe_budget);
        let summary = summary(&plan.diff, plan.cfg.services.len());
        self.state
            .last
            .retain(|name, _| plan.state.ids.contains_key(name));
        self.state.ids = plan.state.ids;
        self.state.intents = self.services.intents();
        self.state.flaps = self.services.flaps();
        self.cfg = plan.cfg;
        self.announce();
        self.persist();
        Ok(summary)
    }

    /// The reload's steps for every service, in file order, each recorded in
    /// `undo` before it can leave a trace.
    fn apply_steps(
        &mut self,
        plan: &Plan,
        hops: &HashMap<String, [NextHop; 2]>,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let now = Nanos(monotonic_ns());
        let old: HashMap<String, (u32, Service)> = self
            .services
            .iter()
            .map(|(id, s)| (s.cfg.name.clone(), (id, s.cfg.clone())))
            .collect();
        for s in &plan.cfg.services {
            // Test builds: a map write that fails mid-reload.
            if crate::fault::fail("RELOAD_STEP") {
                bail!("writing service {:?}: fault injected", s.name);
            }
            let Some(&id) = plan.state.ids.get(&s.name) else {
                bail!("service {:?} has no id", s.name);
            };
            match old.get(&s.name) {
                Some((old_id, o)) if *old_id == id => {
                    if o == s {
                        continue;
                    }
                    undo.push(Undo::Updated { id, old: o.clone() });
                    let effects = self.services.update(id, s.clone(), now);
                    self.apply(effects);
                    if o.allow != s.allow || o.deny != s.deny {
                        // New entries, then the flags, then stale entries out:
                        // an emptied allow list never refuses everyone.
                        self.dp
                            .add_acl(id, &s.allow, &s.deny)
                            .and_then(|()| self.dp.publish_service(id, s))
                            .and_then(|()| self.dp.set_acl(id, &s.allow, &s.deny))
                            .with_context(|| format!("writing the allow/deny lists of {:?}", s.name))?;
                    }
                }
                before => {
                    let resolved = hops.get(&s.name).copied().context("next hops of a new service")?;
                    undo.push(Undo::Added {
                        id,
                        name: s.name.clone(),
                        was: before.map(|(old_id, _)| *old_id),
                    });
                    self.dp
                        .set_backends(id, s, resolved)
                        .with_context(|| format!("writing service {:?}", s.name))?;
                    let machine = match before {
                        // Health and intent of the backends that stayed go on.
                        Some((old_id, _)) => self.services.restart(*old_id, id, s.clone(), now),
                        None => self.services.add(id, s.clone(), None, now),
                    };
                    let desired = machine.desired();
                    self.switches
                        .write(&mut self.dp, id, &desired)
                        .with_context(|| format!("writing service {:?}", s.name))?;
                    // The key last: for a restarted service with the same VIP,
                    // this one write moves it to its new id.
                    if let Some((old_id, o)) = before {
                        undo.push(Undo::Republish {
                            id: *old_id,
                            svc: o.clone(),
                        });
                    }
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
                    info!(
                        "service {} (id {id}): {} {}",
                        s.name,
                        if before.is_some() { "restarted" } else { "added" },
                        s.mode
                    );
                }
            }
        }
        Ok(())
    }

    /// Undoes a failed reload's steps, newest first. Each undo writes what
    /// the running configuration had; a failure here is logged (the switch
    /// states' reconciliation and a later reload repair what is left).
    fn roll_back(&mut self, undo: Vec<Undo>) {
        let now = Nanos(monotonic_ns());
        for step in undo.into_iter().rev() {
            let r = match step {
                Undo::Updated { id, old } => {
                    let effects = self.services.update(id, old.clone(), now);
                    self.apply(effects);
                    self.dp
                        .add_acl(id, &old.allow, &old.deny)
                        .and_then(|()| self.dp.publish_service(id, &old))
                        .and_then(|()| self.dp.set_acl(id, &old.allow, &old.deny))
                }
                Undo::Republish { id, svc } => self.dp.publish_service(id, &svc),
                Undo::Added { id, name, was } => {
                    self.services.remove(id);
                    if let Some(old_id) = was {
                        self.services.point(&name, old_id);
                    }
                    self.resolver.send(Command::Untrack { id });
                    self.dp
                        .remove_service(id)
                        .and_then(|()| self.switches.reset(&mut self.dp, id))
                }
            };
            if let Err(e) = r {
                warn!("undoing a failed reload: {e:#}");
            }
        }
    }
}

/// A reload planned against the running state; nothing is touched yet.
pub struct Plan {
    cfg: Config,
    diff: Diff,
    /// The state file's ids once applied (new names and restarted services
    /// with their ids, removed names dropped).
    state: crate::state::State,
    /// Services that start over or go, with the id they had.
    retired: Vec<(String, u32)>,
}

/// One applied step of a reload, and how to take it back.
enum Undo {
    /// A service's policy changed (same id): give back the old one.
    Updated { id: u32, old: Service },
    /// A service added, or restarted under a new id (`was`: its old id).
    Added { id: u32, name: String, was: Option<u32> },
    /// A restarted service's key moved to its new id: back to `id`.
    Republish { id: u32, svc: Service },
}

/// One line for the log and the operator: counts, then the data-plane
/// settings that changed.
fn summary(d: &Diff, services: usize) -> String {
    let unchanged = services.saturating_sub(d.added.len() + d.restarted.len() + d.updated.len());
    let mut line = format!(
        "{} added, {} removed, {} restarted (addresses changed), {} updated (policy), {unchanged} unchanged",
        d.added.len(),
        d.removed.len(),
        d.restarted.len(),
        d.updated.len()
    );
    if !d.prefixes_changed.is_empty() {
        line.push_str(&format!(
            "; allow/deny changed: {}",
            d.prefixes_changed.join(", ")
        ));
    }
    if let Some(echo) = d.icmp_echo {
        line.push_str(&format!("; icmp_echo now \"{echo}\""));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "[gateway]\ninterfaces = [\"eth0\"]\n";

    fn cfg(gateway_extra: &str, services: &[(&str, &str)]) -> Config {
        let mut text = format!("{GATEWAY}{gateway_extra}");
        for (i, (name, extra)) in services.iter().enumerate() {
            text.push_str(&format!(
                "[[service]]\nname = \"{name}\"\nvip = \"198.18.100.1\"\nport = {}\nprotocol = \"tcp\"\n\
                 primary = \"198.18.2.{}\"\nsecondary = \"198.18.3.{}\"\n{extra}",
                80 + i,
                i + 2,
                i + 2
            ));
        }
        match Config::from_str_named(&text, "test.toml") {
            Ok(cfg) => cfg,
            Err(e) => panic!("{e}\n{text}"),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nothing_changed() {
        let a = cfg("", &[("web", "allow = [\"198.18.1.0/24\"]\n")]);
        assert_eq!(diff(&a, &a.clone()), Diff::default());
        assert_eq!(
            summary(&Diff::default(), 1),
            "0 added, 0 removed, 0 restarted (addresses changed), 0 updated (policy), 1 unchanged"
        );
    }

    #[test]
    fn allow_and_deny_are_policy() {
        let old = cfg(
            "",
            &[("web", "allow = [\"198.18.1.0/24\"]\n"), ("dns", ""), ("ssh", "")],
        );
        let new = cfg(
            "",
            &[
                ("web", "allow = [\"198.18.1.0/24\", \"198.18.7.0/24\"]\n"),
                ("dns", "deny = [\"198.18.9.9\"]\n"),
                ("ssh", "[service.health]\nrise = 5\n"),
            ],
        );
        let d = diff(&old, &new);
        assert_eq!(
            d,
            Diff {
                updated: names(&["web", "dns", "ssh"]),
                prefixes_changed: names(&["web", "dns"]),
                ..Diff::default()
            }
        );
        assert_eq!(
            summary(&d, 3),
            "0 added, 0 removed, 0 restarted (addresses changed), 3 updated (policy), 0 unchanged; \
             allow/deny changed: web, dns"
        );
        // The same prefixes in another order are another list (tries are
        // rewritten, harmlessly).
        let a = cfg("", &[("web", "deny = [\"198.18.1.0/24\", \"198.18.2.0/24\"]\n")]);
        let b = cfg("", &[("web", "deny = [\"198.18.2.0/24\", \"198.18.1.0/24\"]\n")]);
        assert_eq!(diff(&a, &b).prefixes_changed, names(&["web"]));
    }

    #[test]
    fn restarted_added_removed() {
        let old = cfg("", &[("web", ""), ("old", "")]);
        // "web" moves to the second position: port 81, so it starts over; its
        // allow list changing too does not make it a policy change.
        let new = cfg("", &[("new", ""), ("web", "allow = [\"198.18.1.0/24\"]\n")]);
        let d = diff(&old, &new);
        assert_eq!(
            d,
            Diff {
                added: names(&["new"]),
                removed: names(&["old"]),
                restarted: names(&["web"]),
                ..Diff::default()
            }
        );
    }

    #[test]
    fn icmp_echo_is_reloadable_the_rest_of_gateway_is_not() {
        let old = cfg("", &[("web", "")]);
        let new = cfg("icmp_echo = \"pass\"\n", &[("web", "")]);
        let d = diff(&old, &new);
        assert_eq!(
            d,
            Diff {
                icmp_echo: Some(IcmpEcho::Pass),
                ..Diff::default()
            }
        );
        assert!(summary(&d, 1).ends_with("; icmp_echo now \"pass\""));
        assert_eq!(diff(&new, &old).icmp_echo, Some(IcmpEcho::Answer));
        // Written out, the default is no change.
        let same = cfg("icmp_echo = \"answer\"\n", &[("web", "")]);
        assert_eq!(diff(&old, &same), Diff::default());

        let d = diff(
            &old,
            &cfg("xdp_mode = \"skb\"\nicmp_echo = \"pass\"\n", &[("web", "")]),
        );
        assert_eq!(d.needs_restart, ["[gateway] xdp_mode"]);
    }
}
