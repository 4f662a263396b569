//! Transition hooks: `promote` runs before traffic moves to the secondary
//! (the decision machine waits for its answer), `notify` after each event
//! (nothing waits for it). Both run as [`process::run`] runs commands: no
//! shell, their own process group, killed with it at their timeout; their
//! output is logged, their end and duration go to the event loop (events,
//! metrics). At most [`PROMOTES_IN_FLIGHT`] promotions and
//! [`NOTIFIES_IN_FLIGHT`] notifications run at once; beyond
//! [`NOTIFIES_WAITING`] waiting notifications, new ones are skipped and
//! counted (a promotion is never skipped: traffic waits for it). One
//! service's notifications run one at a time, in the order of its events.
use std::collections::HashMap;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use log::{info, warn};
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::{
    config::{Hook, Service},
    policy::{Cause, Event, Slot},
    process::{self, Ended},
};

/// Promotions running at once (one per service at most: the machine starts
/// one at a time).
pub const PROMOTES_IN_FLIGHT: usize = 64;
/// Notifications running at once.
pub const NOTIFIES_IN_FLIGHT: usize = 16;
/// Notifications waiting for a slot before new ones are skipped.
pub const NOTIFIES_WAITING: usize = 256;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `promote`, for the machine's promotion number `seq`.
    Promote {
        /// The promotion's number.
        seq: u64,
    },
    /// `notify`.
    Notify,
}

impl Kind {
    /// `promote` or `notify`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Promote { .. } => "promote",
            Kind::Notify => "notify",
        }
    }
}

/// A hook that ended, back on the event loop.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The service's id when the hook started.
    pub id: u32,
    /// The service's name.
    pub service: String,
    /// Which hook.
    pub kind: Kind,
    /// How it ended.
    pub ended: Ended,
    /// How long it ran.
    pub took: Duration,
}

/// Starts hooks on the current tokio runtime and reports their ends.
pub struct Runner {
    done: mpsc::UnboundedSender<Finished>,
    promotes: Arc<Semaphore>,
    notifies: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// Per service: its notifications' turn (tokio's mutex is first come,
    /// first served, and tasks start in the order they are spawned).
    turns: HashMap<String, Arc<Mutex<()>>>,
}

impl Runner {
    /// A runner and the receiver of its [`Finished`] reports.
    pub fn new() -> (Runner, mpsc::UnboundedReceiver<Finished>) {
        let (done, rx) = mpsc::unbounded_channel();
        let runner = Runner {
            done,
            promotes: Arc::new(Semaphore::new(PROMOTES_IN_FLIGHT)),
            notifies: Arc::new(Semaphore::new(NOTIFIES_IN_FLIGHT)),
            waiting: Arc::new(AtomicUsize::new(0)),
            turns: Default::default(),
        };
        (runner, rx)
    }

    /// Starts `hook` for service `id`; false when a notification was
    /// skipped (too many waiting). Must be called inside a tokio runtime.
    pub fn start(
        &mut self,
        id: u32,
        service: &str,
        kind: Kind,
        hook: &Hook,
        env: Vec<(String, String)>,
    ) -> bool {
        let slots = match kind {
            Kind::Promote { .. } => Arc::clone(&self.promotes),
            Kind::Notify => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= NOTIFIES_WAITING {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return false;
                }
                Arc::clone(&self.notifies)
            }
        };
        let waiting = Arc::clone(&self.waiting);
        let turn = match kind {
            Kind::Promote { .. } => None,
            Kind::Notify => Some(Arc::clone(self.turns.entry(service.to_owned()).or_default())),
        };
        let done = self.done.clone();
        let hook = hook.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            let _turn = match &turn {
                Some(t) => Some(t.lock().await),
                None => None,
            };
            // The semaphore is never closed.
            let _slot = slots.acquire_owned().await;
            if kind == Kind::Notify {
                waiting.fetch_sub(1, Ordering::Relaxed);
            }
            let start = Instant::now();
            let ran = process::run(&hook.command, &env, hook.timeout, true).await;
            let took = start.elapsed();
            log_output(&service, kind, &ran);
            // The loop may be gone (the daemon stops): nothing to tell.
            let _ = done.send(Finished {
                id,
                service,
                kind,
                ended: ran.ended,
                took,
            });
        });
        true
    }
}

fn log_output(service: &str, kind: Kind, ran: &process::Ran) {
    for line in ran.output.lines().filter(|l| !l.trim().is_empty()) {
        if ran.ended.ok() {
            info!("{service}: {}: {line}", kind.name());
        } else {
            warn!("{service}: {}: {line}", kind.name());
        }
    }
}

/// The environment a hook gets for `event` of service `cfg`, as documented
/// in the README (`REDIRECTOR_*`). For a promotion, `TO` is the backend
/// being promoted; the promote hook's `CAUSE` is why traffic is to move.
pub fn env(kind: Kind, event: &Event, cfg: &Service, unix_ms: u64) -> Vec<(String, String)> {
    let (to, cause) = match (&event.cause, kind) {
        // The promote hook is told why traffic is to move.
        (Cause::Promoting { slot, on }, Kind::Promote { .. }) => (*slot, on.kind()),
        (Cause::Promoting { slot, .. }, Kind::Notify) => (*slot, "promoting"),
        (other, _) => (event.to, other.kind()),
    };
    let backend = |slot: Slot| match slot {
        Slot::Primary => &cfg.primary,
        Slot::Secondary => &cfg.secondary,
    };
    let mut env = vec![
        ("REDIRECTOR_HOOK", kind.name().to_owned()),
        ("REDIRECTOR_SERVICE", cfg.name.clone()),
        ("REDIRECTOR_VIP", cfg.vip.to_string()),
        ("REDIRECTOR_PORT", cfg.port.to_string()),
        ("REDIRECTOR_PROTOCOL", cfg.protocol.to_string()),
        ("REDIRECTOR_FROM", event.from.to_string()),
        ("REDIRECTOR_FROM_ADDR", backend(event.from).addr.to_string()),
        (
            "REDIRECTOR_FROM_PORT",
            backend(event.from).port.unwrap_or(cfg.port).to_string(),
        ),
        ("REDIRECTOR_TO", to.to_string()),
        ("REDIRECTOR_TO_ADDR", backend(to).addr.to_string()),
        (
            "REDIRECTOR_TO_PORT",
            backend(to).port.unwrap_or(cfg.port).to_string(),
        ),
        ("REDIRECTOR_CAUSE", cause.to_owned()),
        ("REDIRECTOR_EVENT", event.to_string()),
        ("REDIRECTOR_TIME_UNIX_MS", unix_ms.to_string()),
    ];
    if let Some(d) = event.detection {
        env.push(("REDIRECTOR_DETECTION_MS", format!("{:.3}", d.as_secs_f64() * 1e3)));
    }
    if let Some(who) = &event.who {
        env.push(("REDIRECTOR_WHO", who.to_string()));
    }
    if let Some(why) = &event.why {
        env.push(("REDIRECTOR_WHY", why.clone()));
    }
    if let Some(host) = hostname() {
        env.push(("REDIRECTOR_GATEWAY", host.to_owned()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// This host's name, read once (not a file read per hook on the event loop).
fn hostname() -> Option<&'static str> {
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
    })
    .as_deref()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn hook(script: &str) -> Hook {
        Hook {
            command: ["/bin/sh", "-c", script].map(String::from).to_vec(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn notifications_are_bounded_and_one_service_runs_in_order() {
        let (mut runner, mut ends) = Runner::new();
        let dir = std::env::temp_dir().join(format!("redirector-hooks-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("order");
        // One service: each appends its number after a short sleep; in order
        // only if they run one at a time, in the order started.
        for i in 0..5 {
            let h = hook(&format!("sleep 0.0{}; echo {i} >> {}", 5 - i, log.display()));
            assert!(runner.start(1, "svc", Kind::Notify, &h, Vec::new()));
        }
        for _ in 0..5 {
            let end = ends.recv().await.unwrap();
            assert!(end.ended.ok(), "{:?}", end.ended);
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "0\n1\n2\n3\n4\n");
        // Many services at once: at most NOTIFIES_IN_FLIGHT run, NOTIFIES_WAITING
        // wait, the rest are skipped.
        let slow = hook("sleep 0.2");
        let total = NOTIFIES_IN_FLIGHT + NOTIFIES_WAITING + 20;
        let started = (0..total)
            .filter(|i| runner.start(2, &format!("s{i}"), Kind::Notify, &slow, Vec::new()))
            .count();
        assert!(
            started <= NOTIFIES_WAITING + NOTIFIES_IN_FLIGHT,
            "{started} started"
        );
        assert!(started >= NOTIFIES_WAITING, "{started} started");
        // A promotion is never skipped.
        let p = hook("exit 0");
        assert!(runner.start(3, "db", Kind::Promote { seq: 1 }, &p, Vec::new()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
