//! The probe scheduler: every target's probes, within one global budget.
//!
//! - **Budget.** All targets share `budget` probes per second. A target's
//!   effective interval is `max(its interval, floor)`, where the floor is the
//!   smallest one that keeps the sum of all targets' rates within the budget
//!   ([`budget_floor`]; with equal intervals it is `n_targets / budget`). Slow
//!   targets (an exec probe every second) thus leave their unused share to the
//!   fast ones.
//! - **Phases.** A new (or replaced) target's first probe takes the next free
//!   slot of a `1 / budget` grid, so targets added together start spread out,
//!   and afterwards each keeps its phase: probes never come faster than the
//!   budget rate in a burst. Ticks missed while the daemon was starved are
//!   skipped, not caught up.
//! - **Overlap.** A probe starts every interval even while earlier ones still
//!   wait for their timeout (a silent drop is seen in about timeout + interval),
//!   up to `ceil(timeout / interval) + 1` in flight per target.
//! - **Hard failures are confirmed at once.** After a refused/reset/unreachable
//!   answer the target is probed again immediately, at most `fall − 1` times in
//!   a row (the count restarts after a pass): `fall` hard failures arrive within
//!   a millisecond, one forged RST meets a passing re-probe, and a backend that
//!   stays down costs one probe per interval.
//! - **Confirming a silence.** [`Scheduler::confirm_now`] (the traffic went
//!   unanswered) probes at once with a short timeout — four times the
//!   slowest of the target's last passing probes, at least
//!   [`CONFIRM_FLOOR`], at most its `timeout` — and re-probes the same way
//!   after a failure, `fall − 1` times: a backend that stopped answering is
//!   judged in a few of its own round trips instead of a timeout meant for
//!   its slowest moments, and one that answers meets a passing probe.
//! - **Down cadence.** A target whose last `fall` verdicts all failed is
//!   probed every `down_interval` (HAProxy's `downinter`) until one passes;
//!   then its own cadence resumes at once, so `rise` passes come at the
//!   usual pace. Forced probes (a carrier back) still go out at once.
//!
//! The scheduler only reports; it never decides up or down.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::mpsc,
    task::{self, AbortHandle, JoinError, JoinSet},
    time::Instant,
};

use super::{Outcome, monotonic_ns, probe};
use crate::config::HealthCheck;

/// The shortest timeout of a confirming probe ([`Scheduler::confirm_now`]):
/// above this host's scheduling noise.
pub const CONFIRM_FLOOR: Duration = Duration::from_micros(1500);
/// Passing probes whose latency sets a confirming probe's timeout.
const RECENT: usize = 8;

/// The shortest effective interval, whatever a check asks: keeps a
/// misconfigured zero interval from spinning the event loop.
pub const MIN_INTERVAL: Duration = Duration::from_micros(100);

/// A probe target's identity, chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(pub u64);

/// What to probe: a backend address and its check (kind, interval, timeout, fall).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend (for ICMP only the address counts).
    pub addr: SocketAddr,
    /// How to probe it.
    pub check: HealthCheck,
}

/// One finished probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The target probed.
    pub id: TargetId,
    /// When the probe was sent, CLOCK_MONOTONIC ns (see [`super::monotonic_ns`]).
    /// Reports of probes sent before a [`Scheduler::set`] or
    /// [`Scheduler::remove`] of their target may still be queued: compare this.
    pub sent: u64,
    /// What it found.
    pub outcome: Outcome,
}

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// [`Scheduler::spawn`] was called outside a tokio runtime.
    #[error("the health scheduler must be started inside a tokio runtime: {0}")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
    /// Its own thread or runtime could not be started.
    #[error("starting the prober thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The floor on every target's interval that keeps all of them together
/// within `budget` probes per second (zero when they already fit).
///
/// Water-filling: the fastest targets are slowed to a common floor `F`, the
/// others keep their own interval, with `F` chosen so the total rate equals the
/// budget. With equal intervals `F = n / budget`. A budget of 0 counts as 1.
pub fn budget_floor(intervals: impl IntoIterator<Item = Duration>, budget: u32) -> Duration {
    let mut counts = BTreeMap::new();
    for interval in intervals {
        *counts.entry(interval.max(MIN_INTERVAL)).or_insert(0u64) += 1;
    }
    floor_of(&counts, budget)
}

/// [`budget_floor`] of targets counted by interval: O(distinct intervals).
fn floor_of(counts: &BTreeMap<Duration, u64>, budget: u32) -> Duration {
    let budget = f64::from(budget.max(1));
    let groups: Vec<(f64, f64)> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(d, n)| (d.max(&MIN_INTERVAL).as_secs_f64(), *n as f64))
        .collect();
    let total: f64 = groups.iter().map(|(d, n)| n / d).sum();
    if total <= budget {
        return Duration::ZERO;
    }
    // With the k fastest targets at F and the rest at their own d_i:
    // k / F + Σ_rest n_i / d_i = budget.
    let (mut k, mut rest) = (0.0, total);
    for (i, (d, n)) in groups.iter().enumerate() {
        k += n;
        rest -= n / d;
        let room = budget - rest;
        if room <= 0.0 {
            continue;
        }
        let floor = k / room;
        if groups.get(i + 1).is_none_or(|&(next, _)| floor <= next) {
            return Duration::from_secs_f64(floor);
        }
    }
    Duration::from_secs_f64(k / budget)
}

/// A target's effective interval under the budget's `floor`.
pub fn effective_interval(interval: Duration, floor: Duration) -> Duration {
    interval.max(floor).max(MIN_INTERVAL)
}

/// Probes in flight allowed for one target: `ceil(timeout / interval) + 1`.
fn in_flight_cap(timeout: Duration, interval: Duration) -> u32 {
    let interval = interval.as_nanos().max(1);
    let cap = timeout.as_nanos().div_ceil(interval) + 1;
    u32::try_from(cap).unwrap_or(u32::MAX)
}

/// Handle of the scheduler task. Dropping it stops the task and aborts the
/// probes in flight. Reports go to the channel given to [`Scheduler::spawn`];
/// the task also stops when that channel's receiver is dropped.
#[derive(Debug)]
pub struct Scheduler {
    commands: mpsc::UnboundedSender<Command>,
    /// The intervals and budget, kept here too so [`Scheduler::effective_interval`]
    /// answers at once; commands are sent under this lock, in order.
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    budget: u32,
    intervals: HashMap<TargetId, Duration>,
    /// How many targets have each interval (after [`MIN_INTERVAL`]).
    counts: BTreeMap<Duration, u64>,
    floor: Duration,
}

impl Table {
    fn new(budget: u32) -> Table {
        Table {
            budget,
            intervals: HashMap::new(),
            counts: BTreeMap::new(),
            floor: Duration::ZERO,
        }
    }

    fn insert(&mut self, id: TargetId, interval: Duration) {
        self.remove(id);
        self.intervals.insert(id, interval);
        *self.counts.entry(interval.max(MIN_INTERVAL)).or_insert(0) += 1;
    }

    fn remove(&mut self, id: TargetId) -> bool {
        let Some(interval) = self.intervals.remove(&id) else {
            return false;
        };
        let key = interval.max(MIN_INTERVAL);
        if let Some(n) = self.counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&key);
            }
        }
        true
    }

    fn refloor(&mut self) -> Duration {
        self.floor = floor_of(&self.counts, self.budget);
        self.floor
    }
}

#[derive(Debug)]
enum Command {
    Set {
        id: TargetId,
        target: Target,
        floor: Duration,
    },
    Remove {
        id: TargetId,
        floor: Duration,
    },
    ProbeNow {
        id: TargetId,
        /// With a short timeout, re-probed the same way after a failure.
        confirm: bool,
    },
    Budget {
        budget: u32,
        floor: Duration,
    },
}

impl Scheduler {
    /// Starts the scheduler task on the current tokio runtime (probes run there
    /// too; a current-thread runtime is enough). `budget` is probes per second
    /// over all targets; 0 counts as 1.
    pub fn spawn(budget: u32, reports: mpsc::Sender<Report>) -> Result<Scheduler, SchedulerError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let (commands, rx) = mpsc::unbounded_channel();
        runtime.spawn(Run::new(budget, reports).run(rx));
        Ok(Scheduler {
            commands,
            table: Mutex::new(Table::new(budget)),
        })
    }

    /// Starts the scheduler and its probes on a thread of their own (with its
    /// own runtime), so nothing the caller's loop does — rendering a status,
    /// walking maps, a stall — delays a probe. It runs until the returned
    /// handle or `reports`' receiver is dropped; if it ends otherwise (a
    /// panic), `reports` closes, which the receiver can see.
    pub fn spawn_thread(budget: u32, reports: mpsc::Sender<Report>) -> Result<Scheduler, SchedulerError> {
        let (commands, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SchedulerError::Thread)?;
        std::thread::Builder::new()
            .name("redirector-probes".into())
            .spawn(move || {
                runtime.block_on(async {
                    tokio::select! {
                        () = Run::new(budget, reports).run(rx) => {}
                        // Test builds: the prober dies (issue 10, fault 10).
                        () = crate::fault::after("PROBER_EXIT") => {}
                    }
                });
            })
            .map_err(SchedulerError::Thread)?;
        Ok(Scheduler {
            commands,
            table: Mutex::new(Table::new(budget)),
        })
    }

    /// Adds a target, or replaces it: a replaced target's probes in flight are
    /// abandoned and its cadence restarts (first probe at the next free slot),
    /// even when nothing changed, so a reload should only set what changed.
    pub fn set(&self, id: TargetId, target: Target) {
        let mut table = self.table();
        table.insert(id, target.check.interval);
        let floor = table.refloor();
        self.send(Command::Set { id, target, floor });
    }

    /// Stops probing a target; its probes in flight are abandoned.
    pub fn remove(&self, id: TargetId) {
        let mut table = self.table();
        if table.remove(id) {
            let floor = table.refloor();
            self.send(Command::Remove { id, floor });
        }
    }

    /// Probes a target now, off its cadence (a signal suggests it changed).
    /// At most once per effective interval; further calls are ignored.
    pub fn probe_now(&self, id: TargetId) {
        // Held only so commands reach the task in the order of the calls.
        let _table = self.table();
        self.send(Command::ProbeNow { id, confirm: false });
    }

    /// Probes a target now with a short timeout (see the module's
    /// "Confirming a silence"), under the same limit as [`Self::probe_now`].
    pub fn confirm_now(&self, id: TargetId) {
        // Held only so commands reach the task in the order of the calls.
        let _table = self.table();
        self.send(Command::ProbeNow { id, confirm: true });
    }

    /// Changes the global budget (probes per second; 0 counts as 1). Targets
    /// whose effective interval changes keep their phase where they can.
    pub fn set_budget(&self, budget: u32) {
        let mut table = self.table();
        table.budget = budget;
        let floor = table.refloor();
        self.send(Command::Budget { budget, floor });
    }

    /// The budget in force.
    pub fn budget(&self) -> u32 {
        self.table().budget
    }

    /// The interval a target is probed at, after the budget; `None` if unknown.
    pub fn effective_interval(&self, id: TargetId) -> Option<Duration> {
        let table = self.table();
        table
            .intervals
            .get(&id)
            .map(|&i| effective_interval(i, table.floor))
    }

    /// Whether the task still runs (it stops when the report receiver is dropped).
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is valid after any panic (each update is one assignment).
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            log::debug!("health scheduler stopped; command dropped");
        }
    }
}

/// What a probe task hands back to the scheduler.
#[derive(Debug, Clone, Copy)]
struct Done {
    ok: bool,
    hard: bool,
    /// No verdict about the backend (the probe could not run or judge here).
    local: bool,
    /// A confirming probe (short timeout).
    confirm: bool,
    latency: Duration,
}

/// One target inside the scheduler task.
#[derive(Debug)]
struct Slot {
    target: Arc<Target>,
    /// Distinguishes this `set` from earlier ones of the same id.
    generation: u64,
    /// Matches the heap entry that is this slot's live timer.
    timer: u64,
    eff: Duration,
    cap: u32,
    /// The next cadence tick.
    next: Instant,
    /// The last cadence tick that came due (`None` before the first probe).
    last_tick: Option<Instant>,
    in_flight: u32,
    /// Immediate re-probes since the last pass.
    reprobes: u32,
    /// Failed verdicts in a row (local trouble neither counts nor resets).
    failing: u32,
    last_forced: Option<Instant>,
    /// Latencies of the last passing probes (a ring).
    recent: [Duration; RECENT],
    recent_next: usize,
}

impl Slot {
    fn reinterval(&mut self, eff: Duration) {
        self.eff = eff;
        self.cap = in_flight_cap(self.target.check.timeout, eff);
    }

    fn can_launch(&self) -> bool {
        self.in_flight < self.cap
    }

    /// The timeout of a confirming probe: four times the slowest recent
    /// pass, within [`CONFIRM_FLOOR`] ..= the check's timeout.
    fn confirm_timeout(&self) -> Duration {
        let slowest = self.recent.iter().max().copied().unwrap_or_default();
        (slowest * 4)
            .max(CONFIRM_FLOOR)
            .min(self.target.check.timeout.max(CONFIRM_FLOOR))
    }

    /// Failed `fall` verdicts in a row: probed at the down cadence.
    fn is_down(&self) -> bool {
        self.failing >= self.target.check.fall
    }

    /// Time between cadence ticks now.
    fn cadence(&self) -> Duration {
        if self.is_down() {
            self.eff.max(self.target.check.down_interval)
        } else {
            self.eff
        }
    }

    /// One of this target's probes finished: whether to probe again at once
    /// (confirming a hard failure, at most `fall − 1` times in a row).
    fn finished(&mut self, done: Done) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        if done.local {
            return false;
        }
        if done.ok {
            self.reprobes = 0;
            self.failing = 0;
            self.recent[self.recent_next % RECENT] = done.latency;
            self.recent_next = self.recent_next.wrapping_add(1);
            return false;
        }
        self.failing = self.failing.saturating_add(1);
        if (done.hard || done.confirm)
            && self.reprobes < self.target.check.fall.saturating_sub(1)
            && self.can_launch()
        {
            self.reprobes += 1;
            return true;
        }
        false
    }

    /// A forced probe (a carrier back, a data-path signal) is allowed once
    /// per effective interval or per [`FORCE_EVERY`], the shorter: a slow
    /// cadence must not delay the confirmation of a failure the traffic
    /// showed, and a storm of causes still costs a bounded number of probes.
    fn may_force(&self, now: Instant) -> bool {
        self.can_launch()
            && self
                .last_forced
                .is_none_or(|t| now.duration_since(t) >= self.eff.min(FORCE_EVERY))
    }
}

/// The shortest time between two forced probes of one target: at most 100
/// per second per backend, whatever forces them (the data plane reports at
/// most one signal per backend per 10 ms too).
const FORCE_EVERY: Duration = Duration::from_millis(10);

/// The scheduler task's state.
struct Run {
    reports: mpsc::Sender<Report>,
    targets: HashMap<TargetId, Slot>,
    /// Cadence ticks `(when, target, timer)`; entries whose timer no longer
    /// matches their slot's are stale and skipped.
    heap: BinaryHeap<Reverse<(Instant, TargetId, u64)>>,
    probes: JoinSet<Done>,
    /// Which target and generation each probe task belongs to.
    tasks: HashMap<task::Id, (TargetId, u64, AbortHandle)>,
    floor: Duration,
    /// The floor of the last command not yet applied (see `settle`).
    pending_floor: Option<Duration>,
    /// `1 / budget`: the grid first probes are placed on.
    spacing: Duration,
    next_free: Instant,
    counter: u64,
}

impl Run {
    fn new(budget: u32, reports: mpsc::Sender<Report>) -> Run {
        Run {
            reports,
            targets: HashMap::new(),
            heap: BinaryHeap::new(),
            probes: JoinSet::new(),
            tasks: HashMap::new(),
            floor: Duration::ZERO,
            pending_floor: None,
            spacing: spacing(budget),
            next_free: Instant::now(),
            counter: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let far = Duration::from_secs(3600);
        let sleep = tokio::time::sleep(far);
        tokio::pin!(sleep);
        loop {
            let next = self.heap.peek().map(|Reverse((t, _, _))| *t);
            sleep.as_mut().reset(next.unwrap_or_else(|| Instant::now() + far));
            // Unbiased: a stream of finished probes must not starve the cadence.
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        self.command(command);
                        // A burst of commands (start-up, reload) reschedules once.
                        while let Ok(command) = commands.try_recv() {
                            self.command(command);
                        }
                        self.settle(Instant::now());
                    }
                    None => break,
                },
                Some(joined) = self.probes.join_next_with_id() => self.joined(joined),
                () = &mut sleep, if next.is_some() => self.fire_due(Instant::now()),
                () = self.reports.closed() => break,
            }
        }
        // Dropping `self.probes` aborts the probes in flight.
    }

    fn fresh(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The next free slot on the `1 / budget` grid, from `now` on.
    fn allocate(&mut self, now: Instant) -> Instant {
        let at = self.next_free.max(now);
        self.next_free = at + self.spacing;
        at
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Set { id, target, floor } => {
                self.abandon(id);
                self.pending_floor = Some(floor);
                let eff = effective_interval(target.check.interval, floor);
                let (generation, timer) = (self.fresh(), self.fresh());
                let next = self.allocate(now);
                let mut slot = Slot {
                    target: Arc::new(target),
                    generation,
                    timer,
                    eff,
                    cap: 0,
                    next,
                    last_tick: None,
                    in_flight: 0,
                    reprobes: 0,
                    failing: 0,
                    last_forced: None,
                    recent: [Duration::ZERO; RECENT],
                    recent_next: 0,
                };
                slot.reinterval(eff);
                self.targets.insert(id, slot);
                self.heap.push(Reverse((next, id, timer)));
            }
            Command::Remove { id, floor } => {
                self.abandon(id);
                self.targets.remove(&id);
                self.pending_floor = Some(floor);
            }
            Command::ProbeNow { id, confirm } => {
                if let Some(slot) = self.targets.get_mut(&id)
                    && slot.may_force(now)
                {
                    slot.last_forced = Some(now);
                    let timeout = confirm.then(|| slot.confirm_timeout());
                    self.launch(id, timeout);
                }
            }
            Command::Budget { budget, floor } => {
                self.spacing = spacing(budget);
                self.pending_floor = Some(floor);
            }
        }
    }

    /// Aborts a target's probes in flight (its reports are no longer wanted).
    fn abandon(&mut self, id: TargetId) {
        self.tasks.retain(|_, (target, _, abort)| {
            if *target == id {
                abort.abort();
                false
            } else {
                true
            }
        });
    }

    /// Applies the newest budget floor after a batch of commands.
    fn settle(&mut self, now: Instant) {
        if let Some(floor) = self.pending_floor.take() {
            self.apply_floor(floor, now);
        }
        self.compact();
    }

    /// New budget floor: targets whose effective interval changes keep their
    /// phase (next tick = last tick + new interval); a tick that would then lie
    /// in the past takes the next free slot instead of firing in a burst. A
    /// target not probed yet keeps its first slot.
    fn apply_floor(&mut self, floor: Duration, now: Instant) {
        // No shortcut when the floor is unchanged: targets set within the
        // batch got an intermediate floor's interval.
        self.floor = floor;
        let ids: Vec<TargetId> = self.targets.keys().copied().collect();
        for id in ids {
            let Some(slot) = self.targets.get(&id) else {
                continue;
            };
            let eff = effective_interval(slot.target.check.interval, floor);
            if eff == slot.eff {
                continue;
            }
            let (old_next, old_timer) = (slot.next, slot.timer);
            let next = match slot.last_tick {
                Some(last) if last + eff < now => self.allocate(now),
                Some(last) => last + eff,
                // Not probed yet: its first slot stands (due now, if passed).
                None => old_next,
            };
            let moved = next != old_next;
            let timer = if moved { self.fresh() } else { old_timer };
            if let Some(slot) = self.targets.get_mut(&id) {
                slot.reinterval(eff);
                slot.next = next;
                slot.timer = timer;
            }
            if moved {
                self.heap.push(Reverse((next, id, timer)));
            }
        }
    }

    /// Drops stale heap entries once they outnumber the live ones (many floor
    /// changes in a row, e.g. a reload adding targets one by one).
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.targets.len() + 64 {
            let targets = &self.targets;
            self.heap
                .retain(|Reverse((_, id, timer))| targets.get(id).is_some_and(|s| s.timer == *timer));
        }
    }

    /// Launches the cadence probes that are due.
    fn fire_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, id, timer))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(slot) = self.targets.get_mut(&id) else {
                continue;
            };
            if slot.timer != timer {
                continue;
            }
            // This target's latest tick up to now, on its phase grid: ticks
            // missed while starved are skipped, not caught up in a burst.
            let cadence = slot.cadence();
            let missed = now.duration_since(at).as_nanos() / cadence.as_nanos().max(1);
            let tick = u32::try_from(missed)
                .ok()
                .and_then(|m| cadence.checked_mul(m))
                .map_or(now, |behind| at + behind);
            let next = tick + cadence;
            slot.next = next;
            slot.last_tick = Some(tick);
            self.heap.push(Reverse((next, id, timer)));
            if slot.can_launch() {
                self.launch(id, None);
            }
        }
    }

    /// Starts one probe of `id` now; `confirm`: a confirming probe's timeout.
    fn launch(&mut self, id: TargetId, confirm: Option<Duration>) {
        let Some(slot) = self.targets.get_mut(&id) else {
            return;
        };
        slot.in_flight += 1;
        let target = Arc::clone(&slot.target);
        let generation = slot.generation;
        let reports = self.reports.clone();
        let abort = self.probes.spawn(async move {
            let sent = monotonic_ns();
            let timeout = confirm.unwrap_or(target.check.timeout);
            let outcome = probe(&target.check.kind, target.addr, timeout).await;
            let done = Done {
                ok: outcome.ok,
                hard: outcome.reason.is_hard(),
                local: outcome.reason.is_local(),
                confirm: confirm.is_some(),
                latency: outcome.latency,
            };
            // Waiting here when the receiver lags keeps this probe in flight:
            // the per-target cap then holds new probes back.
            if reports.send(Report { id, sent, outcome }).await.is_err() {
                log::debug!("health report for target {} dropped: receiver gone", id.0);
            }
            done
        });
        self.tasks.insert(abort.id(), (id, generation, abort));
    }

    /// A probe task ended.
    fn joined(&mut self, joined: Result<(task::Id, Done), JoinError>) {
        let (task, done) = match joined {
            Ok((task, done)) => (task, Some(done)),
            Err(e) => {
                if e.is_panic() {
                    log::warn!("health probe panicked: {e}");
                }
                (e.id(), None)
            }
        };
        // Abandoned probes were already forgotten.
        let Some((id, generation, _)) = self.tasks.remove(&task) else {
            return;
        };
        let Some(slot) = self.targets.get_mut(&id) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let was_down = slot.is_down();
        let again = match done {
            // A failed confirmation is confirmed the same way.
            Some(done) => slot
                .finished(done)
                .then(|| done.confirm.then(|| slot.confirm_timeout())),
            None => {
                slot.in_flight = slot.in_flight.saturating_sub(1);
                None
            }
        };
        if was_down && !slot.is_down() {
            // Back from the down cadence: the next tick one interval from now.
            let next = Instant::now() + slot.eff;
            let timer = self.fresh();
            if let Some(slot) = self.targets.get_mut(&id) {
                slot.next = next;
                slot.timer = timer;
            }
            self.heap.push(Reverse((next, id, timer)));
        }
        if let Some(confirm) = again {
            self.launch(id, confirm);
        }
    }
}

fn spacing(budget: u32) -> Duration {
    Duration::from_secs(1) / budget.max(1)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::config::ProbeKind;

    const MS: Duration = Duration::from_millis(1);

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(10)
    }

    #[test]
    fn floor_is_zero_within_budget() {
        assert_eq!(budget_floor([5 * MS; 10], 5000), Duration::ZERO);
        assert_eq!(budget_floor([], 5000), Duration::ZERO);
    }

    #[test]
    fn equal_intervals_stretch_to_n_over_budget() {
        let floor = budget_floor([MS; 100], 1000);
        assert!(close(floor, 100 * MS), "{floor:?}");
        assert!(close(effective_interval(MS, floor), 100 * MS));
    }

    #[test]
    fn slow_targets_leave_their_share_to_fast_ones() {
        // 10 exec probes at 1 s use 10/s of a 1000/s budget; 99 fast targets share 990/s.
        let intervals = [Duration::from_secs(1); 10].into_iter().chain([MS; 99]);
        let floor = budget_floor(intervals, 1000);
        assert!(close(floor, 100 * MS), "{floor:?}");
        // Never stricter than n / budget.
        assert!(floor <= Duration::from_secs_f64(109.0 / 1000.0));
    }

    #[test]
    fn the_budget_holds() {
        let intervals = [MS, 2 * MS, 3 * MS, 50 * MS, 700 * MS, 10 * MS, 10 * MS];
        for budget in [1, 10, 100, 1000] {
            let floor = budget_floor(intervals, budget);
            let rate: f64 = intervals
                .iter()
                .map(|&i| 1.0 / effective_interval(i, floor).as_secs_f64())
                .sum();
            assert!(rate <= f64::from(budget) * 1.0001, "budget {budget}: rate {rate}");
            assert!(
                rate >= f64::from(budget) * 0.999,
                "budget {budget}: rate {rate} wastes budget"
            );
        }
        assert!(close(budget_floor([MS], 0), Duration::from_secs(1)));
    }

    #[test]
    fn cap_is_ceil_timeout_over_interval_plus_one() {
        assert_eq!(in_flight_cap(15 * MS, 5 * MS), 4);
        assert_eq!(in_flight_cap(16 * MS, 5 * MS), 5);
        assert_eq!(in_flight_cap(MS, 100 * MS), 2);
    }

    fn slot(fall: u32) -> Slot {
        let check = HealthCheck {
            kind: ProbeKind::Tcp,
            interval: 5 * MS,
            down_interval: 1000 * MS,
            timeout: 15 * MS,
            rise: 3,
            fall,
            silence: None,
        };
        let target = Target {
            addr: "198.18.0.1:80".parse().unwrap(),
            check,
        };
        let mut slot = Slot {
            target: Arc::new(target),
            generation: 0,
            timer: 0,
            eff: Duration::ZERO,
            cap: 0,
            next: Instant::now(),
            last_tick: None,
            in_flight: 0,
            reprobes: 0,
            failing: 0,
            last_forced: None,
            recent: [Duration::ZERO; RECENT],
            recent_next: 0,
        };
        slot.reinterval(5 * MS);
        slot
    }

    const PASS: Done = Done {
        ok: true,
        hard: false,
        local: false,
        confirm: false,
        latency: Duration::from_micros(200),
    };
    const HARD: Done = Done {
        ok: false,
        hard: true,
        local: false,
        confirm: false,
        latency: Duration::from_micros(200),
    };
    const SOFT: Done = Done {
        ok: false,
        hard: false,
        local: false,
        confirm: false,
        latency: Duration::from_micros(200),
    };
    const LOCAL: Done = Done {
        ok: false,
        hard: false,
        local: true,
        confirm: false,
        latency: Duration::from_micros(200),
    };

    #[test]
    fn a_confirming_probe_waits_four_recent_round_trips_within_bounds() {
        let mut s = slot(2);
        s.in_flight = 20;
        assert_eq!(s.confirm_timeout(), CONFIRM_FLOOR);
        for _ in 0..RECENT {
            s.finished(PASS); // 200 µs each
        }
        assert_eq!(s.confirm_timeout(), CONFIRM_FLOOR);
        s.finished(Done {
            latency: 500 * Duration::from_micros(1),
            ..PASS
        });
        assert_eq!(s.confirm_timeout(), 2 * MS);
        s.finished(Done {
            latency: 5 * MS,
            ..PASS
        });
        assert_eq!(s.confirm_timeout(), 15 * MS, "never above the check's timeout");
        // The slow pass ages out of the ring.
        for _ in 0..RECENT {
            s.finished(PASS);
        }
        assert_eq!(s.confirm_timeout(), CONFIRM_FLOOR);
    }

    #[test]
    fn a_failed_confirmation_is_confirmed_again_fall_minus_one_times() {
        let mut s = slot(3);
        s.in_flight = 4;
        let confirm_timeout = Done {
            confirm: true,
            ..SOFT
        };
        assert!(s.finished(confirm_timeout));
        assert!(s.finished(confirm_timeout));
        assert!(!s.finished(confirm_timeout));
        assert!(!s.finished(SOFT), "a cadence probe's timeout is not");
    }

    #[test]
    fn fall_failures_in_a_row_slow_the_cadence_until_a_pass() {
        let mut s = slot(2);
        s.in_flight = 4;
        s.finished(SOFT);
        assert_eq!(s.cadence(), 5 * MS);
        // The gateway's own trouble is no verdict: it neither counts nor resets.
        s.finished(LOCAL);
        assert_eq!(s.cadence(), 5 * MS);
        s.finished(HARD);
        assert!(s.is_down());
        assert_eq!(s.cadence(), 1000 * MS);
        s.finished(LOCAL);
        assert!(s.is_down());
        s.finished(PASS);
        assert_eq!(s.cadence(), 5 * MS);
    }

    #[test]
    fn a_down_target_ticks_at_its_down_interval_and_resumes_after_a_pass() {
        let mut run = run_with(1, 5 * MS, 1000);
        let id = TargetId(0);
        let slot = run.targets.get_mut(&id).unwrap();
        slot.failing = 2;
        slot.cap = 0; // no probe launched: no runtime here
        let at = slot.next;
        run.fire_due(at);
        assert_eq!(run.targets[&id].next - at, 1000 * MS);
        // A pass (as a finished probe task reports it) brings the interval back.
        let (generation, timer) = (run.targets[&id].generation, run.targets[&id].timer);
        let task = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let mut set = JoinSet::new();
                let handle = set.spawn(async { PASS });
                let id = handle.id();
                (set.join_next_with_id().await.unwrap(), id, handle)
            });
        let (joined, task_id, handle) = task;
        run.tasks.insert(task_id, (id, generation, handle));
        let before = Instant::now();
        run.joined(joined);
        let slot = &run.targets[&id];
        assert_ne!(slot.timer, timer);
        assert!(slot.next >= before + 5 * MS && slot.next <= Instant::now() + 5 * MS);
    }

    #[test]
    fn hard_failures_are_confirmed_fall_minus_one_times_in_a_row() {
        let mut s = slot(3);
        s.in_flight = 1;
        assert!(s.finished(HARD));
        assert!(s.finished(HARD));
        // `fall` hard failures seen: back to the cadence, also for later ones.
        assert!(!s.finished(HARD));
        assert!(!s.finished(HARD));
        // A pass (a forged RST met by a passing re-probe) restarts the count.
        assert!(!s.finished(PASS));
        assert!(s.finished(HARD));
        assert!(!s.finished(SOFT), "timeouts are not confirmed at once");
    }

    #[test]
    fn fall_one_never_reprobes() {
        let mut s = slot(1);
        assert!(!s.finished(HARD));
        let mut s = slot(0);
        assert!(!s.finished(HARD));
    }

    #[test]
    fn reprobes_respect_the_in_flight_cap() {
        let mut s = slot(3);
        s.in_flight = s.cap + 1;
        assert!(!s.finished(HARD));
    }

    #[test]
    fn spawn_needs_a_runtime() {
        let (tx, _rx) = mpsc::channel(1);
        assert!(matches!(
            Scheduler::spawn(1, tx),
            Err(SchedulerError::NoRuntime(_))
        ));
    }

    /// Feeds `Set`s as the handle would, without firing anything.
    fn run_with(n: u64, interval: Duration, budget: u32) -> Run {
        let (tx, _rx) = mpsc::channel(1);
        let mut run = Run::new(budget, tx);
        let mut table = Table::new(budget);
        for i in 0..n {
            table.insert(TargetId(i), interval);
            let floor = table.refloor();
            let target = slot(2).target.as_ref().clone();
            let target = Target {
                check: HealthCheck {
                    interval,
                    ..target.check
                },
                ..target
            };
            run.command(Command::Set {
                id: TargetId(i),
                target,
                floor,
            });
        }
        run.settle(Instant::now());
        run
    }

    fn firsts(run: &Run, n: u64) -> Vec<Duration> {
        let t0 = run.targets[&TargetId(0)].next;
        (0..n).map(|i| run.targets[&TargetId(i)].next - t0).collect()
    }

    #[test]
    fn targets_added_together_start_on_the_budget_grid() {
        let run = run_with(100, MS, 1000);
        // First probes 1 ms apart (1 / budget), although the floor grew with every set.
        for (i, first) in firsts(&run, 100).into_iter().enumerate() {
            assert!(
                first.abs_diff(MS * i as u32) < Duration::from_micros(50),
                "target {i}: {first:?}"
            );
        }
        assert!(run.targets.values().all(|s| close(s.eff, 100 * MS)));
        assert!(run.targets.values().all(|s| s.cap == 2));
    }

    #[test]
    fn the_table_counts_replacements_and_removals_once() {
        let mut table = Table::new(1000);
        for i in 0..100 {
            table.insert(TargetId(i), MS);
        }
        table.insert(TargetId(0), MS);
        table.insert(TargetId(1), Duration::from_secs(1));
        assert!(close(
            table.refloor(),
            budget_floor([MS; 99].into_iter().chain([Duration::from_secs(1)]), 1000)
        ));
        assert!(table.remove(TargetId(1)));
        assert!(!table.remove(TargetId(1)));
        assert_eq!(table.counts.values().sum::<u64>(), 99);
        assert!(close(table.refloor(), 99 * MS));
        for i in 0..100 {
            table.remove(TargetId(i));
        }
        assert!(table.counts.is_empty());
        assert_eq!(table.refloor(), Duration::ZERO);
    }

    #[test]
    fn many_sets_leave_few_timers() {
        let run = run_with(2000, MS, 1000);
        assert!(run.heap.len() <= 2 * 2000 + 64, "{} heap entries", run.heap.len());
    }

    #[test]
    fn a_new_floor_keeps_phases() {
        let mut run = run_with(10, MS, 100);
        let now = Instant::now();
        // Pretend every target fired its first tick.
        for slot in run.targets.values_mut() {
            slot.last_tick = Some(slot.next);
        }
        let before = firsts(&run, 10);
        run.command(Command::Budget {
            budget: 50,
            floor: budget_floor([MS; 10], 50),
        });
        run.settle(now);
        assert!(run.targets.values().all(|s| close(s.eff, 200 * MS)));
        assert_eq!(firsts(&run, 10), before, "same relative phases");
        assert!(run.targets.values().all(|s| s.next >= now + 190 * MS));
    }

    #[test]
    fn forced_probes_once_per_interval() {
        let mut s = slot(2);
        let now = Instant::now();
        assert!(s.may_force(now));
        s.last_forced = Some(now);
        assert!(!s.may_force(now + MS));
        assert!(s.may_force(now + 5 * MS));
    }
}
