//! Which VIPs the gateway publishes for the routing daemon (`[announce]`,
//! [`crate::announce`]): a VIP is published while the data plane is
//! attached, the daemon runs, and at least one of its services can be
//! served ([`Machine::servable`](crate::policy::Machine::servable)), unless
//! an operator withdrew them all.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use log::info;

use super::Daemon;
use crate::{
    announce::Announcer,
    control::proto::{AnnounceStatus, VipStatus},
    state::Withdrawal,
};

/// Where one VIP stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A service of it can be served.
    Serve,
    /// No service of it has had a verdict yet.
    Undecided,
    /// Every service of it drops or passes its traffic (all backends down).
    Cannot,
}

/// The announce side of the daemon.
#[derive(Debug, Default)]
pub(super) struct Announcing {
    /// The thread that writes the routes; `None` without `[announce]`.
    pub announcer: Option<Announcer>,
    /// VIPs that can be served, by the latest verdicts (undecided ones keep
    /// their last membership, from the adopted routes at a restart).
    servable: BTreeSet<IpAddr>,
    /// What was last handed to the thread.
    sent: Option<BTreeSet<IpAddr>>,
}

impl Announcing {
    /// With `announcer` running; what it found published counts as
    /// servable until verdicts say otherwise.
    pub fn new(announcer: Option<Announcer>) -> Announcing {
        let servable = announcer
            .as_ref()
            .map(|a| a.adopted().clone())
            .unwrap_or_default();
        Announcing {
            announcer,
            servable,
            sent: None,
        }
    }
}

impl Daemon {
    fn verdicts(&self) -> BTreeMap<IpAddr, Verdict> {
        let mut by_vip = BTreeMap::new();
        for (_, svc) in self.services.iter() {
            let v = match svc.machine.servable() {
                Some(true) => Verdict::Serve,
                Some(false) => Verdict::Cannot,
                None => Verdict::Undecided,
            };
            by_vip
                .entry(svc.cfg.vip)
                .and_modify(|best: &mut Verdict| {
                    *best = match (*best, v) {
                        (Verdict::Serve, _) | (_, Verdict::Serve) => Verdict::Serve,
                        (Verdict::Undecided, _) | (_, Verdict::Undecided) => Verdict::Undecided,
                        _ => Verdict::Cannot,
                    };
                })
                .or_insert(v);
        }
        by_vip
    }

    /// Recomputes the VIPs to publish and hands them to the announce thread
    /// when they changed. Cheap: one pass over the services, no syscall.
    pub(super) fn announce(&mut self) {
        if self.announcing.announcer.is_none() {
            return;
        }
        let verdicts = self.verdicts();
        let servable = &mut self.announcing.servable;
        // A VIP no service has any more goes.
        servable.retain(|vip| verdicts.contains_key(vip));
        for (vip, v) in verdicts {
            match v {
                Verdict::Serve => {
                    servable.insert(vip);
                }
                Verdict::Cannot => {
                    servable.remove(&vip);
                }
                Verdict::Undecided => {}
            }
        }
        let want = match self.state.withdrawn {
            Some(_) => BTreeSet::new(),
            None => servable.clone(),
        };
        if self.announcing.sent.as_ref() != Some(&want)
            && let Some(a) = &self.announcing.announcer
        {
            a.want(want.clone());
            self.announcing.sent = Some(want);
        }
    }

    /// `redirector announce` (`on`) / `withdraw`: the operator's intent,
    /// saved by the caller. Returns the answer.
    pub(super) fn set_announcing(
        &mut self,
        on: bool,
        who: String,
        why: Option<String>,
    ) -> Result<String, String> {
        let Some(a) = &self.announcing.announcer else {
            return Err("nothing is announced: the configuration has no [announce] table".into());
        };
        let device = a.config().device.clone();
        if on {
            if self.state.withdrawn.take().is_none() {
                return Ok("already announcing every servable VIP".into());
            }
            info!(
                "operator {who}: announce{}",
                why.map(|w| format!(": {w:?}")).unwrap_or_default()
            );
        } else {
            if self.state.withdrawn.is_some() {
                return Ok("already withdrawn".into());
            }
            info!(
                "operator {who}: withdraw{}",
                why.as_ref().map(|w| format!(": {w:?}")).unwrap_or_default()
            );
            self.state.withdrawn = Some(Withdrawal {
                who,
                why,
                unix_ms: super::unix_ms(),
            });
        }
        self.announce();
        Ok(if on {
            format!("announcing every servable VIP again (routes on {device})")
        } else {
            format!(
                "every VIP withdrawn (routes on {device} removed); the data plane keeps forwarding what \
                 still arrives; `redirector announce` undoes it"
            )
        })
    }

    /// `[announce]` for `status`.
    pub(super) fn announce_status(&self) -> Option<AnnounceStatus> {
        let a = self.announcing.announcer.as_ref()?;
        let published = a.published();
        let verdicts = self.verdicts();
        let vips = verdicts
            .iter()
            .map(|(vip, v)| {
                let why = match (self.state.withdrawn.is_some(), v) {
                    (true, _) => "withdrawn by an operator",
                    (false, Verdict::Serve) => "servable",
                    (false, Verdict::Undecided) => "no verdict yet",
                    (false, Verdict::Cannot) => "every service of it is all down (all_down drop or pass)",
                };
                VipStatus {
                    vip: vip.to_string(),
                    published: published.routes.contains(vip),
                    why: why.into(),
                }
            })
            .collect();
        Some(AnnounceStatus {
            device: a.config().device.clone(),
            table: a.config().table,
            withdrawn: self.state.withdrawn.as_ref().map(|w| {
                let mut s = format!("withdrawn by {}", w.who);
                if let Some(why) = &w.why {
                    s.push_str(&format!(": {why:?}"));
                }
                s
            }),
            vips,
            error: published.error,
        })
    }
}
