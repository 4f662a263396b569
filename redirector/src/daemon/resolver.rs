//! Next-hop resolution on its own thread. Resolving makes blocking netlink
//! round trips (up to a 5 s timeout each) and a route change can mean many of
//! them; none of that may delay a probe verdict or a failover, so it runs
//! here, on its own single-threaded runtime, with its own map handles
//! ([`HopMaps`]). It tells the decision loop only which interface each
//! backend leaves through (to map carrier events to backends).
//!
//! Link/address/route changes are coalesced over [`RESYNC_WINDOW`]; neighbour
//! changes are applied one by one as they come.
use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use log::{info, warn};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::hops::Hops;
use crate::{datapath::HopMaps, netlink};

/// How often unresolved next hops are retried.
const RETRY: Duration = Duration::from_secs(1);
/// Link/address/route changes within this window cause one refresh.
const RESYNC_WINDOW: Duration = Duration::from_millis(100);

/// (service id, slot) → egress ifindex (0: unresolved).
pub type EgressUpdate = ((u32, u8), u32);

/// Handle on the resolver thread; stops it when dropped.
pub struct Resolver {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    commands: mpsc::UnboundedSender<Command>,
}

/// Changes of the backend set (reloads), applied in order.
pub enum Command {
    /// Keep this backend's hop current (its entry is written already).
    Track {
        /// Service id.
        id: u32,
        /// 0 primary, 1 secondary.
        slot: u8,
        /// Its address.
        addr: std::net::IpAddr,
    },
    /// Forget a removed service's backends.
    Untrack {
        /// Service id.
        id: u32,
    },
}

impl Resolver {
    /// Sends a command to the resolver thread (ignored if it stopped).
    pub fn send(&self, c: Command) {
        let _ = self.commands.send(c);
    }
}

/// A resolver thread that has subscribed to netlink changes and waits for
/// the start-up state ([`Subscribed::run`]).
pub struct Subscribed {
    go: std::sync::mpsc::SyncSender<Start>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

struct Start {
    hops: Hops,
    maps: HopMaps,
    requests: RingBuf<MapData>,
    egress: mpsc::UnboundedSender<EgressUpdate>,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Resolver {
    /// Starts the thread and subscribes to route/link/neighbour changes before
    /// returning, so nothing that changes while the caller reads the start-up
    /// state goes unseen. The thread inherits the caller's network namespace.
    pub fn subscribe() -> Result<Subscribed> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel::<Start>(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("resolver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e).context("starting the resolver's runtime"));
                        return;
                    }
                };
                rt.block_on(async move {
                    let monitor = match netlink::Monitor::new() {
                        Ok(m) => m,
                        Err(e) => {
                            let _ =
                                ready_tx.send(Err(e).context("subscribing to route/link/neighbour changes"));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    // The caller sends the start-up state, or drops the sender (refused start).
                    let Ok(start) = go_rx.recv() else { return };
                    if let Err(e) = run(monitor, start, stop_rx).await {
                        warn!("next-hop resolver stopped: {e:#}; next hops are no longer kept current");
                    }
                });
            })
            .context("spawning the resolver thread")?;
        ready_rx.recv().context("resolver thread ended")??;
        Ok(Subscribed {
            go: go_tx,
            stop: stop_tx,
            thread,
        })
    }
}

impl Subscribed {
    /// Hands the resolver the start-up state; it keeps it current from now on
    /// and reports egress changes on the returned channel (the start-up ones
    /// first).
    pub fn run(
        self,
        mut hops: Hops,
        maps: HopMaps,
        requests: RingBuf<MapData>,
    ) -> Result<(Resolver, mpsc::UnboundedReceiver<EgressUpdate>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        for e in hops.take_egress_changes() {
            let _ = tx.send(e);
        }
        self.go
            .send(Start {
                hops,
                maps,
                requests,
                egress: tx,
                commands,
            })
            .ok()
            .context("the resolver thread ended before start")?;
        Ok((
            Resolver {
                stop: Some(self.stop),
                thread: Some(self.thread),
                commands: commands_tx,
            },
            rx,
        ))
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("the resolver thread panicked");
        }
    }
}

async fn run(
    mut monitor: netlink::Monitor,
    start: Start,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let Start {
        mut hops,
        mut maps,
        requests,
        egress,
        mut commands,
    } = start;
    // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring buffer
    // for as long as it is registered.
    let mut requests = unsafe { AsyncFd::register(requests) }.context("watching next-hop requests")?;
    let mut retry = tokio::time::interval(RETRY);
    let resync = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(resync);
    let mut resync_armed = false;
    loop {
        let full = tokio::select! {
            _ = &mut stop => break,
            Some(c) = commands.recv() => match c {
                Command::Track { id, slot, addr } => failed("resolving a new backend", hops.track(&mut maps, id, slot, addr)),
                Command::Untrack { id } => {
                    hops.untrack(id);
                    false
                }
            },
            changed = monitor.changed() => match changed {
                Ok(c) => {
                    let mut full = c.full;
                    if !c.neighbours.is_empty() {
                        let r = hops.neighbours_changed(&mut maps, &c.neighbours);
                        full |= failed("applying neighbour changes", r);
                    }
                    full
                }
                Err(e) => {
                    warn!("netlink monitor: {e}");
                    true
                }
            },
            guard = requests.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        // Nothing here may stop the resolver: say so, back off, go on.
                        warn!("next-hop request ring: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut clients = Vec::new();
                while let Some(item) = RingBuf::next(guard.get_inner_mut()) {
                    if let Ok(a) = bytemuck::try_pod_read_unaligned::<redirector_common::Addr>(&item) {
                        clients.push(a.addr);
                    }
                }
                guard.clear_ready();
                failed("resolving clients", hops.clients(&mut maps, clients))
            }
            () = &mut resync, if resync_armed => {
                resync_armed = false;
                failed("refreshing next hops", hops.refresh_all(&mut maps))
            }
            _ = retry.tick() => failed("retrying unresolved next hops", hops.retry(&mut maps)),
        };
        for e in hops.take_egress_changes() {
            // The decision loop is gone only while the daemon stops.
            let _ = egress.send(e);
        }
        if full && !resync_armed {
            resync.as_mut().reset(tokio::time::Instant::now() + RESYNC_WINDOW);
            resync_armed = true;
        }
    }
    info!("next-hop resolver stopped");
    Ok(())
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
