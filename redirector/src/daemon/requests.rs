//! Operator requests, handled on the event loop: every override and drain is
//! an input to the service's machine like any probe verdict, so manual and
//! automatic decisions can never race.
use std::time::Duration;

use log::info;
use tokio::sync::mpsc;

use super::{Daemon, persist::Ack};
use crate::{
    control::{
        proto::{BackendStatus, EventRecord, Request, Response, ServiceStatus, Status},
        server::{Incoming, Peer},
    },
    datapath::monotonic_ns,
    policy::{Event, Input, Nanos, Promotion, Slot, State, Who},
};

/// Wall-clock time of a CLOCK_MONOTONIC instant.
fn unix_ms_of(at: Nanos) -> u64 {
    let ago = Duration::from_nanos(monotonic_ns().saturating_sub(at.0));
    super::unix_ms().saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
}

/// An event as the CLI shows it.
pub fn record(e: &Event) -> EventRecord {
    EventRecord {
        unix_ms: unix_ms_of(e.at),
        service: e.service.clone(),
        from: e.from,
        to: e.to,
        cause: e.cause.to_string(),
        detection_ms: e.detection.map(|d| d.as_secs_f64() * 1e3),
        who: e.who.as_ref().map(ToString::to_string),
        why: e.why.clone(),
    }
}

fn who(p: &Peer) -> Who {
    Who {
        uid: p.login_uid,
        name: p.name.clone(),
    }
}

impl Daemon {
    /// Handles one request. A detach is carried out here; its reply channel
    /// comes back so the loop can end once the answer is written.
    pub(super) fn request(&mut self, incoming: Incoming) -> Option<mpsc::Sender<Response>> {
        let Incoming { request, peer, reply } = incoming;
        let now = Nanos(monotonic_ns());
        let answer = |r: Response| {
            // The CLI may have gone; nothing to do about it.
            let _ = reply.try_send(r);
        };
        // Applied at once; answered once the state file holding it is on disk.
        let operator = |daemon: &mut Daemon, service: &str, input: Input, done: String| match daemon
            .services
            .operator(service, now, input)
        {
            Ok(effects) => {
                info!("operator {}: {done}", who(&peer));
                let ack = Ack {
                    reply: reply.clone(),
                    response: Response::Done { message: done },
                };
                daemon.apply_acked(effects, ack);
            }
            Err(e) => answer(Response::Error {
                message: e.to_string(),
            }),
        };
        match request {
            Request::Status => answer(Response::Status(self.status())),
            Request::Flip {
                service,
                to,
                for_ms,
                force,
                reason,
            } => {
                let until = for_ms.map(|ms| now + Duration::from_millis(ms));
                let done = format!(
                    "{service}: pinned to the {to}{}",
                    for_ms.map_or(" until `redirector auto`".to_owned(), |ms| format!(
                        " for {}",
                        humanize(Duration::from_millis(ms))
                    ))
                );
                let input = Input::Flip {
                    to,
                    until,
                    force,
                    who: who(&peer),
                    why: reason,
                };
                operator(self, &service, input, done);
            }
            Request::Auto { service, .. } => {
                let done = format!("{service}: automatic control");
                operator(self, &service, Input::Auto { who: who(&peer) }, done);
            }
            Request::Drain {
                service,
                slot,
                drained,
                reason,
            } => {
                let done = format!(
                    "{service}: {slot} {}",
                    if drained { "drained" } else { "undrained" }
                );
                let input = Input::Drain {
                    slot,
                    drained,
                    who: who(&peer),
                    why: reason,
                };
                operator(self, &service, input, done);
            }
            Request::Unfence {
                service,
                slot,
                reason,
            } => {
                let done = format!("{service}: {slot} unfenced");
                let input = Input::Unfence {
                    slot,
                    who: who(&peer),
                    why: reason,
                };
                operator(self, &service, input, done);
            }
            Request::Events { follow } => {
                // The backlog can exceed the connection's queue: a task sends it
                // at the reader's pace, then the end marker.
                let backlog: Vec<_> = self.events.iter().map(record).collect();
                if follow {
                    self.followers.push(reply.clone());
                }
                tokio::spawn(async move {
                    for r in backlog {
                        if reply.send(Response::Event(r)).await.is_err() {
                            return;
                        }
                    }
                    let _ = reply.send(Response::End).await;
                });
            }
            Request::Reload => self.begin_reload(Some(reply)),
            Request::Announce { on, reason } => match self.set_announcing(on, who(&peer).to_string(), reason)
            {
                Ok(message) => {
                    let ack = Ack {
                        reply: reply.clone(),
                        response: Response::Done { message },
                    };
                    self.saver.save(self.state.clone(), Some(ack));
                }
                Err(message) => answer(Response::Error { message }),
            },
            Request::Detach => {
                info!("operator {}: detach", who(&peer));
                // Unpinned links detach once the last fd (ours) closes.
                self.links.clear();
                let r = match self.pins.remove() {
                    Ok(()) => Response::Done {
                        message: format!(
                            "detached: the XDP program, its links and the pins in {} are removed; the daemon stops",
                            self.pins.dir().display()
                        ),
                    },
                    Err(e) => Response::Error {
                        message: format!("detach: {e:#}; the daemon stops, remove what is left by hand"),
                    },
                };
                answer(r);
                return Some(reply);
            }
        }
        None
    }

    fn status(&self) -> Status {
        let now = Nanos(monotonic_ns());
        let mut services = Vec::new();
        for (id, svc) in self.services.iter() {
            let view = svc.machine.view();
            let cfg = &svc.cfg;
            let backends = Slot::ALL
                .iter()
                .map(|&slot| {
                    let b = &view.backends[slot.index()];
                    let be = match slot {
                        Slot::Primary => &cfg.primary,
                        Slot::Secondary => &cfg.secondary,
                    };
                    let stats = self
                        .dp
                        .backend_stats(id, u8::try_from(slot.index()).unwrap_or(0))
                        .unwrap_or_default();
                    BackendStatus {
                        slot,
                        address: be.to_string(),
                        health: match b.state {
                            State::Up => "up",
                            State::Down => "down",
                            State::Unknown => "unknown",
                        }
                        .into(),
                        since_s: Some(now.saturating_sub(b.since).as_secs_f64()),
                        reason: b.reason.as_ref().map(ToString::to_string),
                        local_error: svc.local_error[slot.index()].as_ref().map(ToString::to_string),
                        drained: view.desired.drained[slot.index()],
                        fenced: view.intent.fenced[slot.index()],
                        group_down: svc.machine.group_down(slot).map(str::to_owned),
                        probe_interval_ms: self
                            .services
                            .probe_interval(id, slot)
                            .map(|d| d.as_secs_f64() * 1e3),
                        packets: stats.fwd_packets,
                        bytes: stats.fwd_bytes,
                        reply_packets: stats.rev_packets,
                        reply_bytes: stats.rev_bytes,
                    }
                })
                .collect();
            let override_ = view.intent.pin.as_ref().map(|o| {
                let mut s = format!("pinned to the {} by {}", o.to, o.who);
                if let Some(u) = o.until {
                    s.push_str(&format!(", {} left", humanize(u.saturating_sub(now))));
                }
                if o.force {
                    s.push_str(", forced");
                }
                if let Some(w) = &o.why {
                    s.push_str(&format!(": {w:?}"));
                }
                s
            });
            services.push(ServiceStatus {
                name: cfg.name.clone(),
                id,
                address: format!(
                    "{}/{}",
                    std::net::SocketAddr::new(cfg.vip, cfg.port),
                    cfg.protocol
                ),
                mode: cfg.mode.to_string(),
                active: view.desired.active,
                all_down: view.desired.all_down.map(|a| format!("{a:?}").to_lowercase()),
                share: view.desired.share,
                override_,
                promotion: view.promotion.as_ref().and_then(|p| match p {
                    Promotion::Running { slot, since, .. } => Some(format!(
                        "promoting the {slot} for {} (traffic waits)",
                        humanize(now.saturating_sub(*since))
                    )),
                    Promotion::Failed { slot, retry, detail } => Some(format!(
                        "promoting the {slot} failed ({detail}); again in {}",
                        humanize(retry.saturating_sub(now))
                    )),
                    Promotion::Done { .. } => None,
                }),
                backends,
                last: self
                    .events
                    .iter()
                    .rev()
                    .find(|e| e.service == cfg.name && e.from != e.to)
                    .map(record)
                    .or_else(|| self.state.last.get(&cfg.name).cloned()),
                flows: None,
            });
        }
        Status {
            pid: Some(std::process::id()),
            version: env!("CARGO_PKG_VERSION").into(),
            pins: self.pins.dir().display().to_string(),
            note: None,
            services,
            announce: self.announce_status(),
        }
    }
}

impl Daemon {
    /// What the metrics read at scrape time.
    pub(super) fn live(&self) -> crate::metrics::Live {
        use crate::metrics::{Live, LiveBackend, LiveService};
        let services = self
            .services
            .iter()
            .map(|(id, svc)| {
                let view = svc.machine.view();
                let backend = |slot: Slot| {
                    let b = &view.backends[slot.index()];
                    let stats = self
                        .dp
                        .backend_stats(id, u8::try_from(slot.index()).unwrap_or(0))
                        .unwrap_or_default();
                    LiveBackend {
                        role: if slot == Slot::Primary {
                            "primary"
                        } else {
                            "secondary"
                        },
                        address: match slot {
                            Slot::Primary => svc.cfg.primary.to_string(),
                            Slot::Secondary => svc.cfg.secondary.to_string(),
                        },
                        health: match b.state {
                            State::Up => "up",
                            State::Down => "down",
                            State::Unknown => "unknown",
                        },
                        drained: view.desired.drained[slot.index()],
                        packets: stats.fwd_packets,
                        bytes: stats.fwd_bytes,
                        reply_packets: stats.rev_packets,
                        reply_bytes: stats.rev_bytes,
                    }
                };
                LiveService {
                    name: svc.cfg.name.clone(),
                    active: if view.desired.active == Slot::Primary {
                        "primary"
                    } else {
                        "secondary"
                    },
                    all_down: !view.desired.up[0] && !view.desired.up[1],
                    overridden: view.intent.pin.is_some(),
                    refused: self.dp.refused(id).unwrap_or_default(),
                    backends: [backend(Slot::Primary), backend(Slot::Secondary)],
                }
            })
            .collect();
        let datapath = match self.dp.counters() {
            Ok(c) => redirector_common::Counter::ALL
                .iter()
                .map(|k| (k.name(), c[*k as usize]))
                .collect(),
            Err(_) => Vec::new(),
        };
        Live {
            services,
            datapath,
            flow_entries: self.flow_entries,
            probe_rate: self.services.probe_rate(),
            probe_budget: self.services.budget(),
        }
    }
}

fn humanize(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min", d.as_secs() / 60)
    }
}
