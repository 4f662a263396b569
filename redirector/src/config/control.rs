//! The `[control]` table: the operator socket, the state and bpffs
//! directories, the metrics address, the global probing budget and the
//! other gateways' sockets that operator commands reach too.
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use toml::Spanned;

use super::ConfigError;
use super::toml_source::{RawValue, Section, Source, raw_table};

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
    /// The other gateways' control sockets (e.g. forwarded by `ssh -L`):
    /// the CLI's operator commands (flip, auto, drain, undrain) reach them
    /// too, so intent is the same on every gateway.
    pub peers: Vec<PathBuf>,
}

/// Default probing budget, probes per second over all backends.
pub const DEFAULT_PROBE_BUDGET: u32 = 5000;

/// Allowed values of `probe_budget` (probes per second).
pub const PROBE_BUDGET_RANGE: RangeInclusive<u32> = 100..=1_000_000;

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: PathBuf::from("/run/redirector/control.sock"),
            state_dir: PathBuf::from("/var/lib/redirector"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/redirector"),
            metrics: None,
            probe_budget: DEFAULT_PROBE_BUDGET,
            peers: Vec::new(),
        }
    }
}

raw_table! {
    /// `[control]`.
    pub(super) RawControl, "a [control] table" {
        socket: RawValue,
        state_dir: RawValue,
        bpffs_dir: RawValue,
        metrics: RawValue,
        probe_budget: RawValue,
        peers: RawValue,
    }
}

/// Longest Unix socket path in bytes (`sun_path` holds 108 with the NUL).
const MAX_SOCKET_PATH_LEN: usize = 107;

pub(super) fn convert_control(
    src: &Source<'_>,
    raw: Option<&Spanned<RawControl>>,
) -> Result<Control, ConfigError> {
    let defaults = Control::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let sec = Section {
        src,
        name: "[control]".to_owned(),
        span: raw.span(),
    };
    let r = raw.get_ref();
    sec.unknown_keys(&r.unknown, RawControl::KEYS)?;

    let socket = match &r.socket {
        Some(v) => socket_path(&sec, "socket", v)?,
        None => defaults.socket,
    };
    let mut peers: Vec<PathBuf> = Vec::new();
    if let Some(list) = &r.peers {
        for item in sec.array("peers", list, "an array of socket paths")? {
            let v = Spanned::new(item.span(), RawValue::Scalar(item.get_ref().clone()));
            let peer = socket_path(&sec, "peers", &v)?;
            if peer == socket || peers.contains(&peer) {
                return Err(sec.invalid(
                    "peers",
                    &item.span(),
                    format!(
                        "{:?} is {}",
                        peer.display().to_string(),
                        if peer == socket {
                            "this gateway's own socket"
                        } else {
                            "listed more than once"
                        }
                    ),
                ));
            }
            peers.push(peer);
        }
    }
    let state_dir = match &r.state_dir {
        Some(v) => sec.absolute_path("state_dir", v)?,
        None => defaults.state_dir,
    };
    let bpffs_dir = match &r.bpffs_dir {
        Some(v) => sec.absolute_path("bpffs_dir", v)?,
        None => defaults.bpffs_dir,
    };
    // Path equality compares components: "/a/b/" is "/a/b". The defaults
    // differ, so at least one of the two keys is in the file.
    let reported = match (&r.bpffs_dir, &r.state_dir) {
        (Some(v), _) => Some(("bpffs_dir", &bpffs_dir, "state_dir", v)),
        (None, Some(v)) => Some(("state_dir", &state_dir, "bpffs_dir", v)),
        (None, None) => None,
    };
    if let Some((key, path, other, value)) = reported
        && state_dir == bpffs_dir
    {
        let note = match (&r.bpffs_dir, &r.state_dir) {
            (Some(_), Some(_)) => "",
            _ => " (the default)",
        };
        return Err(sec.invalid(
            key,
            &value.span(),
            format!(
                "{:?} is also {other}{note}; state_dir and bpffs_dir must be different directories",
                path.display().to_string()
            ),
        ));
    }
    let metrics = match &r.metrics {
        Some(v) => {
            Some(parse_metrics(sec.string("metrics", v)?).map_err(|m| sec.invalid("metrics", &v.span(), m))?)
        }
        None => defaults.metrics,
    };
    let probe_budget = match &r.probe_budget {
        Some(v) => sec.ranged("probe_budget", v, PROBE_BUDGET_RANGE)?,
        None => defaults.probe_budget,
    };
    Ok(Control {
        socket,
        state_dir,
        bpffs_dir,
        metrics,
        probe_budget,
        peers,
    })
}

/// An absolute path short enough for a Unix socket.
fn socket_path(sec: &Section<'_>, key: &str, v: &Spanned<RawValue>) -> Result<PathBuf, ConfigError> {
    let path = sec.absolute_path(key, v)?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(sec.invalid(
            key,
            &v.span(),
            format!(
                "{path:?} is {len} bytes long, a Unix socket path can be at most \
                 {MAX_SOCKET_PATH_LEN}"
            ),
        ));
    }
    Ok(path)
}

/// The metrics listen address: `addr:port` or `[ipv6]:port`, port not 0.
fn parse_metrics(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("invalid address {text:?}, expected \"addr:port\" or \"[ipv6]:port\""))?;
    if addr.port() == 0 {
        return Err(format!("port 0 in {text:?}: give the port to listen on"));
    }
    Ok(addr)
}
