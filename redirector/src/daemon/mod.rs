//! The daemon: `redirector run`. This file is the map: which thread does
//! what, the order of a start and of a reload, and the one event loop.
//!
//! # Threads
//! | thread | runs | talks to the loop by |
//! |---|---|---|
//! | main (`current_thread` tokio runtime) | the event loop below: every decision, switch-state write, operator request, reload apply, status and metrics rendering; the control socket and metrics endpoint tasks | owns [`Daemon`] |
//! | `redirector-probes` (own runtime) | the probe [`health::Scheduler`] and every probe | `reports` channel |
//! | `redirector-resolver` | next hops: neighbour/route/address changes, the program's hop requests, writes of `BACKENDS` next hops and `CLIENTS` | `egress_updates` channel, [`resolver::Command`]s |
//! | tokio blocking pool | state-file writes ([`persist::Saver`], in generation order), the idle-flow sweep, a reload's next-hop resolution | join handles / channels back to the loop |
//!
//! The data plane itself runs in the kernel and keeps forwarding on the last
//! decision while the daemon is stopped, restarting or dead.
//!
//! # A start ([`Daemon::start`], [`start`])
//! 1. metrics port bound; instance lock (state dir, socket, bpffs dir);
//! 2. prepare (nothing pinned or attached changes; any error refuses the
//!    start): other versions' pins refused, adopted pins checked, control
//!    socket bound, state file read, resolver and link monitor subscribed,
//!    ids assigned, interfaces and attach plans resolved, DSR routes checked,
//!    programs loaded and verified;
//! 3. commit: paths installed, `icmp_echo`, services the pins forward
//!    differently removed, each service written (adopted or fresh), XDP
//!    attached last (traffic only meets complete maps);
//! 4. host: links no longer configured detached, neighbour entries kept,
//!    state file saved, resolver and prober threads started; then `READY=1`.
//!
//! # A reload ([`reload`], SIGHUP or `redirector reload`)
//! 1. plan on the loop, touching nothing: parse, diff by name, ids on a copy
//!    of the state, capacities (services, prefix tries);
//! 2. next hops of new backends resolved on a blocking thread (no neighbour
//!    entries created);
//! 3. apply on the loop, each step recorded for undo; a failing step rolls
//!    every earlier one back; then retired services cleared, state saved.
//!
//! # The loop ([`Daemon::run`])
//! One thread owns every decision: probe reports, carrier events, deadlines
//! and operator requests go into the per-service machines ([`services`]);
//! their effects are written in [`decide`]; hints the data plane sees in
//! the traffic ([`signals`]) ask for a confirming probe. Every second [`reconcile`]
//! compares the maps the config determines with the intent; [`host`] handles
//! the ground moving (interfaces, pins); [`sweep`] expires idle flows.
//! Nothing on this loop waits on netlink or disk.
mod announce;
mod apply;
mod attach;
mod decide;
mod hops;
mod host;
mod persist;
mod reconcile;
mod reload;
mod requests;
mod resolver;
mod services;
mod signals;
mod silence;
mod start;
mod sweep;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config::Config,
    control::{proto::Response, server::Server},
    datapath::{Datapath, PinDir, monotonic_ns},
    health,
    lock::InstanceLock,
    netlink,
    policy::{Event, Nanos},
    state::State,
};
use apply::Switches;
use attach::Held;
use persist::Saver;
use resolver::{EgressUpdate, Resolver};
use services::Services;

/// How often idle flow entries are swept.
const SWEEP: Duration = Duration::from_secs(10);
/// A reconciliation tick: every map the config determines is compared with
/// the intent once a second, the work spread over ten ticks.
const RECONCILE: Duration = Duration::from_millis(100);
/// Transitions kept for `redirector events`.
const EVENT_LOG: usize = 1024;

/// Runs the daemon with the configuration at `path` until SIGINT/SIGTERM.
pub fn run(path: &Path) -> Result<()> {
    // The documented unit reloads with `kill -HUP`, whose default action
    // ends the process: ignored (also by `main`, earlier) until the handler
    // below takes it over.
    // SAFETY: signal(2) with SIG_IGN installs no code of ours.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let cfg = Config::from_file(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // Before the (slow) start: a SIGHUP meanwhile must not kill the
        // daemon; it is kept and reloads once the start is done.
        let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut daemon = Daemon::start(cfg, Some(path.to_path_buf())).await?;
        daemon.hup = Some(hup);
        // systemd (Type=notify): started once it forwards and probes; the
        // loop pings the watchdog.
        daemon.notifier = crate::notify::Notifier::from_env();
        if let Some(n) = &daemon.notifier {
            n.send(&format!("READY=1\nMAINPID={}", std::process::id()));
        }
        let stop = daemon
            .run(async {
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
            })
            .await?;
        match stop.detached {
            true => info!("detached: program, links and pins removed"),
            false => info!(
                "stopped; the data plane keeps forwarding on the last decision (pinned in {}); \
                 `redirector detach` removes it",
                stop.pins.dir().display()
            ),
        }
        Ok(())
    })
}

/// What [`Daemon::run`] leaves behind.
pub struct Stopped {
    /// The data plane (its pinned maps stay; this handle is for counters).
    pub dp: Datapath,
    /// Where it is pinned.
    pub pins: PinDir,
    /// An operator asked for `detach`: program, links and pins are gone.
    pub detached: bool,
}

/// A running data plane and the control plane that drives it.
pub struct Daemon {
    dp: Datapath,
    pins: PinDir,
    /// The XDP links, held open (and pinned) for the daemon's lifetime.
    links: Vec<Held>,
    switches: Switches,
    services: Services,
    /// Where each backend's traffic leaves, to map carrier events to backends.
    egress: HashMap<(u32, u8), u32>,
    egress_updates: mpsc::UnboundedReceiver<EgressUpdate>,
    /// Carrier changes, parsed on this loop without further queries.
    links_monitor: netlink::Monitor,
    reports: mpsc::Receiver<health::Report>,
    requests: mpsc::Receiver<crate::control::server::Incoming>,
    _server: Server,
    logger: AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Hints in the traffic that a backend failed ([`signals`]).
    signals: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    events: VecDeque<Event>,
    followers: Vec<mpsc::Sender<Response>>,
    /// Stops the resolver thread when dropped.
    resolver: Resolver,
    /// The configured interfaces (redirect targets).
    ifindexes: Vec<u32>,
    /// Reloads whose next hops are resolved, back from their blocking thread.
    reloads: (
        mpsc::UnboundedSender<reload::Pending>,
        mpsc::UnboundedReceiver<reload::Pending>,
    ),
    reloading: bool,
    state: State,
    /// Writes of the state file, in order.
    saver: Saver,
    cfg: Config,
    /// The file SIGHUP reloads (none when started from a parsed config).
    config_path: Option<PathBuf>,
    metrics: crate::metrics::Metrics,
    /// Scrape requests from the metrics endpoint.
    scrapes: mpsc::Receiver<crate::metrics::Scrape>,
    _metrics_server: Option<crate::metrics::Server>,
    /// Flow entries counted by the last sweep.
    flow_entries: Option<u64>,
    /// One daemon per pin directory, state directory and socket.
    _lock: InstanceLock,
    /// SIGHUP, when installed before the start (else `run` installs it).
    hup: Option<tokio::signal::unix::Signal>,
    /// systemd's notification socket, if it gave one.
    notifier: Option<crate::notify::Notifier>,
    /// Configured interfaces reported gone or renamed.
    moved_interfaces: HashSet<String>,
    /// Reconciliation ticks so far (the work is spread over them).
    reconcile_ticks: u32,
    /// The silence watch's flags, memory-mapped ([`silence`]); `None` when
    /// they could not be mapped (silences are then not watched).
    seen: Option<crate::datapath::SeenMap>,
    /// Per `BACKENDS` index, the silence watch.
    quiet: Vec<silence::Quiet>,
    /// The VIPs published for the routing daemon (`[announce]`).
    announcing: announce::Announcing,
    /// Transition hooks (`promote`, `notify`) and their ends.
    hooks: crate::hooks::Runner,
    hook_ends: mpsc::UnboundedReceiver<crate::hooks::Finished>,
}

impl Daemon {
    /// Loads (or adopts) the data plane, resolves, writes every service and
    /// attaches. Must run inside a tokio runtime (monitors, ring buffers,
    /// probes and the control socket register with it).
    pub async fn start(cfg: Config, config_path: Option<PathBuf>) -> Result<Daemon> {
        // The metrics endpoint first: a busy port refuses the start before
        // anything is written (or a pin directory created).
        let (scrape_tx, scrapes) = mpsc::channel(4);
        let metrics = start::MetricsEndpoint {
            server: match cfg.control.metrics {
                Some(addr) => Some(crate::metrics::Server::bind(addr, scrape_tx).await?),
                None => None,
            },
            scrapes,
        };
        let pins = PinDir::new(&cfg.control.bpffs_dir);
        // One daemon per data plane, before anything is read or written.
        let lock = start::instance_lock(&cfg.control, &pins)?;
        // An older version's data plane is taken over, not refused: its
        // matching pins move here before anything is loaded.
        let sizes = crate::datapath::Sizes {
            max_services: cfg.gateway.max_services,
            flow_entries: cfg.gateway.flow_table_size,
        };
        let migration = Datapath::plan_migration(&pins, sizes)?;
        // Anything pinned is adopted (and checked), never removed by a
        // refused start: even what is left of a data plane may be forwarding.
        let adopting = pins.anything();
        let started = start::prepare(cfg, config_path, pins.clone(), adopting, lock, metrics, migration)
            .and_then(start::Prepared::commit);
        // A refused first start leaves nothing behind; an adopted data plane
        // keeps forwarding as it did.
        if started.is_err()
            && !adopting
            && let Err(r) = pins.remove()
        {
            warn!("removing the pins of the refused start: {r:#}");
        }
        started
    }

    /// Probes, decides and writes until `shutdown` completes (or an operator
    /// detaches). The data plane stays pinned and attached unless detached.
    ///
    /// Nothing in here stops the daemon: a failed step is logged and the loop
    /// goes on.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Stopped> {
        let mut sweep = tokio::time::interval(SWEEP);
        // The watchdog is fed by this loop: a wedged loop stops feeding it.
        let mut watchdog = self
            .notifier
            .as_ref()
            .and_then(crate::notify::Notifier::ping_every)
            .map(tokio::time::interval);
        let mut reconcile = tokio::time::interval(RECONCILE);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut silence = tokio::time::interval(silence::POLL);
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut hup = match self.hup.take() {
            Some(h) => h,
            None => signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        };
        tokio::pin!(shutdown);
        let mut sweeping: Option<sweep::Sweeping> = None;
        // Test builds only: the loop blocks its thread now and then, as
        // control work or a starved CPU would (issue 10, fault 1).
        let mut stall = crate::fault::stall().map(|(len, every)| {
            let first = tokio::time::Instant::now() + every;
            (len, tokio::time::interval_at(first, every))
        });
        let mut detached = false;
        loop {
            let deadline = self.services.next_deadline();
            let wake = async {
                match deadline {
                    Some(at) => {
                        let now = monotonic_ns();
                        tokio::time::sleep(Duration::from_nanos(at.0.saturating_sub(now))).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                report = self.reports.recv() => {
                    // The prober's thread is gone: without verdicts nothing
                    // fails over. Exit for the supervisor to restart us (the
                    // data plane keeps forwarding meanwhile).
                    let Some(report) = report else {
                        bail!("{}", stopped("the prober"));
                    };
                    let mut effects = self.services.report(report, &mut self.metrics);
                    // Take what else is queued: one pass, in arrival order.
                    while let Ok(r) = self.reports.try_recv() {
                        effects.extend(self.services.report(r, &mut self.metrics));
                    }
                    self.apply(effects);
                }
                scrape = self.scrapes.recv(), if self._metrics_server.is_some() => {
                    let Some(scrape) = scrape else {
                        bail!("{}", stopped("the metrics endpoint"));
                    };
                    let text = self.metrics.render(&self.live());
                    let _ = scrape.reply.send(text);
                }
                changed = self.links_monitor.changed() => match changed {
                    Ok(c) => {
                        self.interfaces_moved(&c.links)?;
                        self.carrier(&c.links);
                    }
                    Err(e) => warn!("link monitor: {e}"),
                },
                () = wake => {
                    let effects = self.services.tick(Nanos(monotonic_ns()));
                    self.apply(effects);
                }
                incoming = self.requests.recv() => {
                    let Some(incoming) = incoming else {
                        bail!("{}", stopped("the control socket"));
                    };
                    if let Some(reply) = self.request(incoming) {
                        detached = true;
                        // Let the answer reach the operator before the runtime goes.
                        let _ = tokio::time::timeout(Duration::from_secs(1), reply.closed()).await;
                        break;
                    }
                }
                update = self.egress_updates.recv() => {
                    let Some((key, ifindex)) = update else {
                        bail!("{}", stopped("the next-hop resolver"));
                    };
                    if ifindex == 0 {
                        self.egress.remove(&key);
                    } else {
                        self.egress.insert(key, ifindex);
                    }
                }
                got = signals::read(&mut self.signals) => self.signals_in(got),
                Some(done) = self.hook_ends.recv() => self.hook_finished(done),
                guard = self.logger.readable_mut() => match guard {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(e) => warn!("program log ring: {e}"),
                },
                _ = async {
                    match stall.as_mut() {
                        Some((_, every)) => every.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((len, _)) = &stall {
                        std::thread::sleep(*len);
                    }
                }
                _ = async {
                    match watchdog.as_mut() {
                        Some(every) => every.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(n) = &self.notifier {
                        n.send("WATCHDOG=1");
                    }
                }
                _ = reconcile.tick() => self.reconcile(),
                _ = silence.tick(), if self.watches_silence() => self.silence_tick(),
                _ = hup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    self.begin_reload(None);
                }
                Some(pending) = self.reloads.1.recv() => self.finish_reload(pending),
                _ = sweep.tick(), if sweeping.is_none() => sweeping = self.begin_sweep(),
                done = async {
                    match sweeping.as_mut() {
                        Some(s) => (&mut s.task).await,
                        None => std::future::pending().await,
                    }
                }, if sweeping.is_some() => {
                    if let Some(s) = sweeping.take() {
                        self.end_sweep(s.seen, done);
                    }
                }
            }
        }
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1");
        }
        // A clean stop leaves the VIPs published (the data plane keeps
        // forwarding); a detach withdraws them.
        if detached {
            self.track_detached();
        }
        if let Some(a) = self.announcing.announcer.take() {
            a.finish(if detached {
                crate::announce::Exit::Withdraw
            } else {
                crate::announce::Exit::Keep
            });
        }
        if !detached {
            self.state.intents = self.services.intents();
            self.state.stopped_unix_ms = Some(unix_ms());
            if let Err(e) = self.saver.save_now(&self.state) {
                warn!("saving the state file: {e}");
            }
        }
        Ok(Stopped {
            dp: self.dp,
            pins: self.pins,
            detached,
        })
    }
}

/// Why the daemon exits when one of its own tasks or threads ended: it
/// cannot do its job without it, and a supervisor's restart brings it back
/// (the pinned data plane forwards meanwhile).
fn stopped(what: &str) -> String {
    format!(
        "{what} stopped unexpectedly; exiting so the supervisor restarts the daemon (the data plane keeps \
         forwarding on the last decision meanwhile)"
    )
}

/// Wall-clock ms since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
