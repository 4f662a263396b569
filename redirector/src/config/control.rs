//! Validated types of the control-plane sections: `[service.health]`,
//! `[service.failover]` and `[control]`. Parsing lives in `mod.rs`; these
//! are the shapes the rest of the daemon consumes.
use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, time::Duration};

/// What a health probe does. Every kind judges one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// TCP connect to the backend's service port (closed with RST: no TIME_WAIT).
    Tcp,
    /// HTTP/1.1 `GET path` to the backend's service port; up if the status is in `expect`.
    Http {
        /// Request path, starts with `/`.
        path: String,
        /// Accepted status codes (non-empty).
        expect: Vec<u16>,
    },
    /// One UDP datagram to the backend's service port; up on a reply
    /// (any reply, or exactly `expect` when given).
    Udp {
        /// Payload sent.
        send: Vec<u8>,
        /// Required reply payload; `None` accepts any reply.
        expect: Option<Vec<u8>>,
    },
    /// ICMP / ICMPv6 echo to the backend's address.
    Icmp,
    /// A command; exit status 0 = up. Killed at the timeout.
    Exec {
        /// Program and arguments (non-empty).
        command: Vec<String>,
    },
}

impl ProbeKind {
    /// The spelling used in the configuration file.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http { .. } => "http",
            Self::Udp { .. } => "udp",
            Self::Icmp => "icmp",
            Self::Exec { .. } => "exec",
        }
    }
}

/// A health check: what to probe and how often; rise/fall hysteresis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Probe kind.
    pub kind: ProbeKind,
    /// Time between probes of one backend (before the global budget stretches it).
    pub interval: Duration,
    /// A probe without an answer after this long failed.
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up (an unknown one is up at its first pass).
    pub rise: u32,
    /// Consecutive failures that take an up (or unknown) backend down.
    pub fall: u32,
}

/// Whether traffic returns to the primary by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Failback {
    /// After `failback_delay` of continuous primary health (and the gate, if any).
    #[default]
    Auto,
    /// Only when an operator flips it back.
    Manual,
}

/// What happens to new traffic when both backends are down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AllDown {
    /// Keep sending to the last active backend.
    #[default]
    Keep,
    /// Drop the service's packets in XDP.
    Drop,
    /// Hand them to the kernel stack untouched.
    Pass,
}

/// `[service.failover]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Failback policy.
    pub failback: Failback,
    /// Continuous primary health required before an automatic failback.
    pub failback_delay: Duration,
    /// Both backends down.
    pub all_down: AllDown,
    /// Percent (0..=100) of new flows sent to the secondary while both are up.
    pub share: u8,
    /// How long a flapping backend (down more than 3 times in 60 s) is held
    /// down after it would rise, doubling per further flap up to 12×; zero
    /// turns damping off.
    pub flap_hold: Duration,
    /// A probe that must also pass before traffic returns to the primary.
    pub failback_gate: Option<HealthCheck>,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// Operator socket (Unix, mode 0600).
    pub socket: PathBuf,
    /// Where the state file (service ids, overrides, drains) lives.
    pub state_dir: PathBuf,
    /// bpffs directory; pins live in a versioned directory inside.
    pub bpffs_dir: PathBuf,
    /// Prometheus exposition address, if any.
    pub metrics: Option<SocketAddr>,
    /// Probes per second across all backends (the global probing budget).
    pub probe_budget: u32,
}

/// Default `interval` of tcp, udp and icmp probes: with `fall = 2` and the
/// immediate re-probe after a refused/reset/unreachable answer, a killed
/// server is detected within one interval (docs/benchmarks.md, failover).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(5);
/// Default `timeout` of tcp, udp and icmp probes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(15);
/// Default `interval` / `timeout` of http probes (a request costs the backend more).
pub const DEFAULT_HTTP_INTERVAL: Duration = Duration::from_millis(10);
/// See [`DEFAULT_HTTP_INTERVAL`].
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_millis(30);
/// Default `interval` / `timeout` of exec probes (a fork per probe).
pub const DEFAULT_EXEC_INTERVAL: Duration = Duration::from_secs(1);
/// See [`DEFAULT_EXEC_INTERVAL`].
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_millis(500);
/// Default `rise`.
pub const DEFAULT_RISE: u32 = 3;
/// Default `fall`.
pub const DEFAULT_FALL: u32 = 2;
/// Default UDP probe payload.
pub const DEFAULT_UDP_SEND: &[u8] = b"redirector health check\n";
/// Default `flap_hold`.
pub const DEFAULT_FLAP_HOLD: Duration = Duration::from_secs(5);
/// Default `failback_delay`.
pub const DEFAULT_FAILBACK_DELAY: Duration = Duration::from_secs(1);
/// Default `interval` / `timeout` of a `failback_gate`.
pub const DEFAULT_GATE_INTERVAL: Duration = Duration::from_millis(100);
/// See [`DEFAULT_GATE_INTERVAL`].
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_millis(50);
/// Default probing budget, probes per second over all backends.
pub const DEFAULT_PROBE_BUDGET: u32 = 5000;
/// Default `path` of http probes.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// Default `expect` of http probes.
pub const DEFAULT_HTTP_EXPECT: &[u16] = &[200];
/// Default `rise` and `fall` of a `failback_gate`: one verdict decides.
pub const DEFAULT_GATE_RISE_FALL: u32 = 1;

/// Shortest allowed `interval`.
pub const MIN_INTERVAL: Duration = Duration::from_micros(100);
/// Longest allowed `interval`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest allowed `timeout` (it may exceed `interval`: probes then overlap).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest allowed `failback_delay` (0 is allowed: fail back at once).
pub const MAX_FAILBACK_DELAY: Duration = Duration::from_secs(3600);
/// Allowed values of `rise` and `fall`.
pub const RISE_FALL_RANGE: RangeInclusive<u32> = 1..=100;
/// Allowed values of `share` (percent).
pub const SHARE_RANGE: RangeInclusive<u8> = 0..=100;
/// Allowed values of `probe_budget` (probes per second).
pub const PROBE_BUDGET_RANGE: RangeInclusive<u32> = 100..=1_000_000;
/// Allowed HTTP status codes in `expect`.
pub const HTTP_STATUS_RANGE: RangeInclusive<u16> = 100..=599;

impl ProbeKind {
    /// Default `interval` and `timeout` of this kind.
    pub fn default_timing(&self) -> (Duration, Duration) {
        match self {
            Self::Tcp | Self::Udp { .. } | Self::Icmp => (DEFAULT_INTERVAL, DEFAULT_TIMEOUT),
            Self::Http { .. } => (DEFAULT_HTTP_INTERVAL, DEFAULT_HTTP_TIMEOUT),
            Self::Exec { .. } => (DEFAULT_EXEC_INTERVAL, DEFAULT_EXEC_TIMEOUT),
        }
    }

    /// Default `interval` and `timeout` of a `failback_gate` of this kind: the
    /// slower of [`DEFAULT_GATE_INTERVAL`] / [`DEFAULT_GATE_TIMEOUT`] and the
    /// kind's own defaults (so an exec gate keeps the time a fork needs).
    pub fn default_gate_timing(&self) -> (Duration, Duration) {
        let (interval, timeout) = self.default_timing();
        (
            interval.max(DEFAULT_GATE_INTERVAL),
            timeout.max(DEFAULT_GATE_TIMEOUT),
        )
    }
}

impl HealthCheck {
    /// The check used when a service writes no `[service.health]`: a probe of
    /// the service's own protocol with the default timing.
    pub fn default_for(protocol: super::Protocol) -> HealthCheck {
        let kind = match protocol {
            super::Protocol::Tcp => ProbeKind::Tcp,
            super::Protocol::Udp => ProbeKind::Udp {
                send: DEFAULT_UDP_SEND.to_vec(),
                expect: None,
            },
        };
        let (interval, timeout) = kind.default_timing();
        HealthCheck {
            kind,
            interval,
            timeout,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            failback: Failback::Auto,
            failback_delay: DEFAULT_FAILBACK_DELAY,
            all_down: AllDown::Keep,
            share: 0,
            flap_hold: DEFAULT_FLAP_HOLD,
            failback_gate: None,
        }
    }
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: PathBuf::from("/run/redirector/control.sock"),
            state_dir: PathBuf::from("/var/lib/redirector"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/redirector"),
            metrics: None,
            probe_budget: DEFAULT_PROBE_BUDGET,
        }
    }
}
