//! Which VIPs the gateway publishes for the routing daemon (`[announce]`,
//! [`crate::announce`]): a VIP is published while the data plane is
//! attached, the daemon runs, and at least one of its services can be
//! served ([`Machine::servable`](crate::policy::Machine::servable)), unless
//! an operator withdrew them all. The track file for keepalived counts the
//! VIPs that cannot be served ([`crate::announce::track`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use log::{info, warn};

use super::Daemon;
use crate::{
    announce::{
        Announcer,
        track::{self, TrackFile},
    },
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
    /// The thread that writes the routes; `None` without `[announce] table`.
    pub announcer: Option<Announcer>,
    /// The file keepalived reads; `None` without `[announce] track_file`.
    pub tracker: Option<TrackFile>,
    /// VIPs that can be served, by the latest verdicts (undecided ones keep
    /// their last membership, from the adopted routes at a restart).
    servable: BTreeSet<IpAddr>,
    /// What was last handed to the thread.
    sent: Option<BTreeSet<IpAddr>>,
}

impl Announcing {
    /// With `announcer` and `tracker` running, for a configuration with
    /// `vips`: what a stopped daemon left published counts as servable
    /// until verdicts say otherwise (its routes; without routes, a track
    /// file that said every VIP could be served).
    pub fn new(
        announcer: Option<Announcer>,
        tracker: Option<TrackFile>,
        vips: &BTreeSet<IpAddr>,
    ) -> Announcing {
        let servable = match (&announcer, &tracker) {
            (Some(a), _) => a.adopted().clone(),
            (None, Some(t)) if t.last() == Some(0) => vips.clone(),
            _ => BTreeSet::new(),
        };
        Announcing {
            announcer,
            tracker,
            servable,
            sent: None,
        }
    }

    /// Whether anything is published at all.
    fn any(&self) -> bool {
        self.announcer.is_some() || self.tracker.is_some()
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
        if !self.announcing.any() {
            return;
        }
        let verdicts = self.verdicts();
        let undecided = verdicts.values().any(|v| *v == Verdict::Undecided);
        let vips = verdicts.len();
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
        let unservable = vips.saturating_sub(self.announcing.servable.len());
        if let Some(t) = &mut self.announcing.tracker
            // A restart keeps what its predecessor wrote until every VIP
            // has a verdict.
            && !(undecided && t.last().is_some())
        {
            let value = track::value(unservable, self.state.withdrawn.is_some());
            match t.set(value) {
                Ok(true) => info!("[announce]: track file {} now {value}", t.path().display()),
                Ok(false) => {}
                Err(e) => warn!("[announce]: writing track file {}: {e}", t.path().display()),
            }
        }
        if self.announcing.sent.as_ref() != Some(&want)
            && let Some(a) = &self.announcing.announcer
        {
            a.want(want.clone());
            self.announcing.sent = Some(want);
        }
    }

    /// On `detach`: the track file says this gateway forwards nothing.
    pub(super) fn track_detached(&mut self) {
        if let Some(t) = &mut self.announcing.tracker
            && let Err(e) = t.set(track::FAULT)
        {
            warn!("[announce]: writing track file {}: {e}", t.path().display());
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
        if !self.announcing.any() {
            return Err(
                "nothing is announced: the configuration has no [announce] table (table or track_file)"
                    .into(),
            );
        }
        let mut how = Vec::new();
        if let Some(a) = &self.announcing.announcer {
            how.push(format!("routes on {}", a.config().device));
        }
        if let Some(t) = &self.announcing.tracker {
            how.push(format!("track file {}", t.path().display()));
        }
        let how = how.join(", ");
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
            format!("announcing every servable VIP again ({how})")
        } else {
            format!(
                "every VIP withdrawn ({how}: routes removed, track file {}); the data plane keeps \
                 forwarding what still arrives; `redirector announce` undoes it",
                track::FAULT
            )
        })
    }

    /// `[announce]` for `status`.
    pub(super) fn announce_status(&self) -> Option<AnnounceStatus> {
        if !self.announcing.any() {
            return None;
        }
        let published = self.announcing.announcer.as_ref().map(Announcer::published);
        let verdicts = self.verdicts();
        let withdrawn = self.state.withdrawn.is_some();
        let vips = verdicts
            .iter()
            .map(|(vip, v)| {
                let why = match (withdrawn, v) {
                    (true, _) => "withdrawn by an operator",
                    (false, Verdict::Serve) => "servable",
                    (false, Verdict::Undecided) => "no verdict yet",
                    (false, Verdict::Cannot) => "every service of it is all down (all_down drop or pass)",
                };
                VipStatus {
                    vip: vip.to_string(),
                    published: match &published {
                        Some(p) => p.routes.contains(vip),
                        None => !withdrawn && self.announcing.servable.contains(vip),
                    },
                    why: why.into(),
                }
            })
            .collect();
        let routes = self.announcing.announcer.as_ref().map(Announcer::config);
        Some(AnnounceStatus {
            device: routes.map(|r| r.device.clone()),
            table: routes.map(|r| r.table),
            track_file: self
                .announcing
                .tracker
                .as_ref()
                .map(|t| (t.path().display().to_string(), t.last())),
            withdrawn: self.state.withdrawn.as_ref().map(|w| {
                let mut s = format!("withdrawn by {}", w.who);
                if let Some(why) = &w.why {
                    s.push_str(&format!(": {why:?}"));
                }
                s
            }),
            vips,
            error: published.and_then(|p| p.error),
        })
    }
}
