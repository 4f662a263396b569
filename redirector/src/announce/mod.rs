//! Publishing the VIPs this gateway can serve, for a routing daemon to
//! announce (`[announce]`): a host route per VIP in a dedicated kernel
//! table, through a TUN device the daemon owns. BIRD's `kernel` protocol
//! with `learn` imports them and a BGP filter exports them
//! (`docs/operations.md`, "More than one gateway").
//!
//! What the routes follow:
//! - the daemon's decisions: the event loop hands over the set of VIPs to
//!   publish ([`Announcer::want`]) whenever it may have changed;
//! - the daemon's life: its process holds the device's only descriptor, so
//!   if it dies the kernel deletes the device and every route through it
//!   (BIRD withdraws within milliseconds, measured in the lab);
//! - a clean stop keeps them ([`Exit::Keep`]: the device is made
//!   persistent, the data plane keeps forwarding), and the next start takes
//!   the device over with its routes, so a restart does not move flows;
//! - `detach` removes them ([`Exit::Withdraw`]).
//!
//! Netlink calls run on this module's own thread, never on the event loop;
//! a failed change is retried every second.
pub mod routes;
pub mod track;
mod tun;

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use log::{info, warn};
use thiserror::Error;

use crate::{config::AnnounceRoutes, netlink::NetlinkError};
pub use tun::Tun;

/// How often a failed route change is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How often the table is read back and repaired (a route removed or added
/// by hand).
const CHECK: Duration = Duration::from_secs(10);
/// How long [`Announcer::finish`] waits for the thread.
const FINISH: Duration = Duration::from_secs(2);

/// Why the announce device could not be set up.
#[derive(Debug, Error)]
pub enum AnnounceError {
    /// Creating or taking over the TUN device failed.
    #[error("[announce]: TUN device {device:?}: {source}")]
    Device {
        /// The configured device.
        device: String,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// Setting it up or reading its routes failed.
    #[error("[announce]: device {device:?}, table {table}: {source}")]
    Netlink {
        /// The configured device.
        device: String,
        /// The configured table.
        table: u32,
        /// The kernel's answer.
        #[source]
        source: NetlinkError,
    },
}

/// What is published now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// VIPs whose route is in the table.
    pub routes: BTreeSet<IpAddr>,
    /// The last route change that failed (retried every second), if the
    /// table does not match the wish yet.
    pub error: Option<String>,
}

/// How the daemon leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A clean stop: the routes stay (the data plane keeps forwarding) for
    /// the next start to take over.
    Keep,
    /// `detach`: the routes and the device go.
    Withdraw,
}

enum Command {
    Want(BTreeSet<IpAddr>),
    Exit(Exit, mpsc::Sender<()>),
}

/// The thread that keeps the announce table equal to the wish.
pub struct Announcer {
    cfg: AnnounceRoutes,
    adopted: BTreeSet<IpAddr>,
    tx: mpsc::Sender<Command>,
    published: Arc<Mutex<Published>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Announcer {
    /// Creates (or takes over) the device, sets it up and reads what a
    /// stopped daemon left published; nothing changes until the first
    /// [`Announcer::want`].
    pub fn start(cfg: &AnnounceRoutes) -> Result<Announcer, AnnounceError> {
        let tun = Tun::open(&cfg.device).map_err(|source| AnnounceError::Device {
            device: cfg.device.clone(),
            source,
        })?;
        let netlink = |source| AnnounceError::Netlink {
            device: cfg.device.clone(),
            table: cfg.table,
            source,
        };
        routes::link_up(tun.ifindex).map_err(netlink)?;
        let adopted = routes::list(cfg.table, tun.ifindex).map_err(netlink)?;
        if !adopted.is_empty() {
            info!(
                "[announce]: took over device {} with {} route(s) in table {}",
                cfg.device,
                adopted.len(),
                cfg.table
            );
        }
        let published = Arc::new(Mutex::new(Published {
            routes: adopted.clone(),
            error: None,
        }));
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("redirector-announce".into())
            .spawn({
                let published = Arc::clone(&published);
                let (table, have) = (cfg.table, adopted.clone());
                move || run(&tun, table, have, &rx, &published)
            })
            .map_err(|source| AnnounceError::Device {
                device: cfg.device.clone(),
                source,
            })?;
        Ok(Announcer {
            cfg: cfg.clone(),
            adopted,
            tx,
            published,
            thread: Some(thread),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &AnnounceRoutes {
        &self.cfg
    }

    /// What was published when it started (a stopped daemon's routes).
    pub fn adopted(&self) -> &BTreeSet<IpAddr> {
        &self.adopted
    }

    /// Publishes exactly `vips` (as soon as the thread gets to it).
    pub fn want(&self, vips: BTreeSet<IpAddr>) {
        // A gone thread means a gone device: nothing left to change.
        let _ = self.tx.send(Command::Want(vips));
    }

    /// What is published now.
    pub fn published(&self) -> Published {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Leaves as `exit` says, waiting (briefly) for the thread to do it.
    pub fn finish(mut self, exit: Exit) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Command::Exit(exit, done)).is_ok() && wait.recv_timeout(FINISH).is_err() {
            warn!("[announce]: the announce thread did not finish in {FINISH:?}");
        }
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// Removes a persistent announce device that a stopped daemon left, with
/// its routes (offline `detach`). Only a TUN device is touched: taking it
/// over fails for any other kind of interface.
pub fn remove_left(device: &str) -> Result<bool, AnnounceError> {
    if crate::netlink::ifindex(device).is_err() {
        return Ok(false);
    }
    // Taken over non-persistent: it goes when the handle drops.
    Tun::open(device).map_err(|source| AnnounceError::Device {
        device: device.to_owned(),
        source,
    })?;
    Ok(true)
}

fn run(
    tun: &Tun,
    table: u32,
    mut have: BTreeSet<IpAddr>,
    rx: &mpsc::Receiver<Command>,
    published: &Mutex<Published>,
) {
    // Nothing is changed before the first wish: a restarted daemon keeps
    // what its predecessor published until it has decided.
    let mut want: Option<BTreeSet<IpAddr>> = None;
    loop {
        let settled = want.as_ref().is_none_or(|w| *w == have);
        let cmd = rx.recv_timeout(if settled { CHECK } else { RETRY });
        match cmd {
            Ok(Command::Want(w)) => {
                // Only the newest wish matters.
                let mut w = w;
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Command::Want(n) => w = n,
                        Command::Exit(exit, done) => return leave(tun, table, &have, exit, &done, published),
                    }
                }
                want = Some(w);
            }
            Ok(Command::Exit(exit, done)) => return leave(tun, table, &have, exit, &done, published),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if settled && want.is_some() {
                    match routes::list(table, tun.ifindex) {
                        Ok(found) if found != have => {
                            warn!(
                                "[announce]: table {table} on {} held {found:?}, not {have:?}: repaired",
                                tun.name
                            );
                            have = found;
                        }
                        Ok(_) => {}
                        Err(e) => warn!("[announce]: reading table {table}: {e}"),
                    }
                }
            }
            // The daemon dropped its handle without a clean stop: the
            // device goes with this thread's descriptor.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if let Some(w) = &want {
            let error = sync(tun, table, &mut have, w);
            let mut p = published.lock().unwrap_or_else(PoisonError::into_inner);
            p.routes.clone_from(&have);
            p.error = error;
        }
    }
}

/// Adds and removes routes until `have` is `want`; the first error (each
/// route is tried) is returned for the status.
fn sync(tun: &Tun, table: u32, have: &mut BTreeSet<IpAddr>, want: &BTreeSet<IpAddr>) -> Option<String> {
    let mut error = None;
    for &vip in have.clone().difference(want) {
        match routes::remove(table, tun.ifindex, vip) {
            Ok(()) => {
                info!("[announce]: withdrawn {vip} (table {table}, device {})", tun.name);
                have.remove(&vip);
            }
            Err(e) => {
                warn!("[announce]: withdrawing {vip}: {e}");
                error.get_or_insert_with(|| format!("withdrawing {vip}: {e}"));
            }
        }
    }
    for &vip in want.difference(&have.clone()) {
        match routes::add(table, tun.ifindex, vip) {
            Ok(()) => {
                info!("[announce]: announced {vip} (table {table}, device {})", tun.name);
                have.insert(vip);
            }
            Err(e) => {
                warn!("[announce]: announcing {vip}: {e}");
                error.get_or_insert_with(|| format!("announcing {vip}: {e}"));
            }
        }
    }
    error
}

fn leave(
    tun: &Tun,
    table: u32,
    have: &BTreeSet<IpAddr>,
    exit: Exit,
    done: &mpsc::Sender<()>,
    published: &Mutex<Published>,
) {
    match exit {
        Exit::Keep => match tun.persist(true) {
            Ok(()) => info!(
                "[announce]: {} route(s) stay published on {} for the next start",
                have.len(),
                tun.name
            ),
            Err(e) => warn!(
                "[announce]: keeping device {} after the stop: {e}; its routes go now",
                tun.name
            ),
        },
        Exit::Withdraw => {
            // The device goes with the descriptor; removing the routes first
            // withdraws them even if something else holds the device.
            let mut left = have.clone();
            sync(tun, table, &mut left, &BTreeSet::new());
            published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .routes
                .clear();
        }
    }
    let _ = done.send(());
}
