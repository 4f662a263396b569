//! The systemd notification protocol (`sd_notify(3)`), for `Type=notify`
//! with `WatchdogSec=`: `READY=1` once the daemon forwards and probes, and
//! `WATCHDOG=1` from the decision loop itself, so a wedged loop stops the
//! pings and systemd restarts the daemon (the pinned data plane forwards
//! meanwhile). Without `NOTIFY_SOCKET` in the environment, nothing is sent.
use std::{os::unix::net::UnixDatagram, time::Duration};

use log::debug;

/// Where notifications go, and how often the watchdog wants a ping.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace)
    /// and `WATCHDOG_USEC` (honoured when `WATCHDOG_PID` is unset or ours).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let target = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        Some(Notifier {
            sock,
            target,
            watchdog,
        })
    }

    /// How often to ping: half the watchdog's timeout, if one is set.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `RELOADING=1`,
    /// `STOPPING=1` …). Best effort: a lost datagram is systemd's to judge.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.target) {
            debug!("sd_notify {state:?}: {e}");
        }
    }
}
