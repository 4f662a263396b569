//! The `[service.health]` table (and a `failback_gate`, which has the same
//! keys): the probe kind, its timing and rise/fall hysteresis.
use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;

use super::toml_source::{RawValue, Section, describe, raw_table};
use super::{ConfigError, Protocol};

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
    /// A DNS query over UDP to the backend's service port; up on an answer
    /// to it whose RCODE is accepted.
    Dns {
        /// The name asked ("." for the root).
        name: String,
        /// The query type.
        qtype: u16,
        /// Accepted RCODEs, a bit per value (bit 0: NOERROR).
        rcodes: u16,
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
            Self::Dns { .. } => "dns",
            Self::Icmp => "icmp",
            Self::Exec { .. } => "exec",
        }
    }
}

/// Default `query` of a dns check: the root, which every resolver answers.
pub const DEFAULT_DNS_NAME: &str = ".";
/// Default `qtype` of a dns check.
pub const DEFAULT_DNS_QTYPE: u16 = 2;
/// Default `rcode` of a dns check: NOERROR.
pub const DEFAULT_DNS_RCODES: u16 = 1;

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
    /// Time between probes of a backend that failed `fall` probes in a row,
    /// until one passes (HAProxy's `downinter`): a dead UDP server answers
    /// each probe with an ICMP error its kernel rate-limits per destination
    /// (about one a second after a burst of six); probing it faster would
    /// spend that budget and leave the next kill to a probe timeout.
    pub down_interval: Duration,
    /// NAT only: a backend that leaves the clients' packets unanswered this
    /// long (packets forwarded, no reply seen) is probed at once with a short
    /// timeout; `None` (`"off"`) where traffic is one-way, for DSR (answers
    /// bypass the gateway) and for a `failback_gate`.
    pub silence: Option<Duration>,
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
/// Default `down_interval` of udp probes: the refill rate of the backend
/// kernel's ICMP error budget towards one destination (`icmp_ratelimit`).
pub const DEFAULT_UDP_DOWN_INTERVAL: Duration = Duration::from_secs(1);
/// Default `silence` of a NAT service: a few of this lab's round trips, and
/// far less than the probe timeout that judges a silent backend otherwise.
pub const DEFAULT_SILENCE: Duration = Duration::from_millis(3);
/// Allowed values of `silence`.
pub const SILENCE_RANGE: RangeInclusive<Duration> = Duration::from_micros(500)..=Duration::from_secs(60);
/// Default `rise`.
pub const DEFAULT_RISE: u32 = 3;
/// Default `fall`.
pub const DEFAULT_FALL: u32 = 2;
/// Default UDP probe payload.
pub const DEFAULT_UDP_SEND: &[u8] = b"redirector health check\n";
/// Default `interval` / `timeout` of a `failback_gate`.
pub const DEFAULT_GATE_INTERVAL: Duration = Duration::from_millis(100);
/// See [`DEFAULT_GATE_INTERVAL`].
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_millis(50);
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
/// Allowed values of `rise` and `fall`.
pub const RISE_FALL_RANGE: RangeInclusive<u32> = 1..=100;
/// Allowed HTTP status codes in `expect`.
pub const HTTP_STATUS_RANGE: RangeInclusive<u16> = 100..=599;

impl ProbeKind {
    /// Default `interval` and `timeout` of this kind.
    pub fn default_timing(&self) -> (Duration, Duration) {
        match self {
            Self::Tcp | Self::Udp { .. } | Self::Dns { .. } | Self::Icmp => {
                (DEFAULT_INTERVAL, DEFAULT_TIMEOUT)
            }
            Self::Http { .. } => (DEFAULT_HTTP_INTERVAL, DEFAULT_HTTP_TIMEOUT),
            Self::Exec { .. } => (DEFAULT_EXEC_INTERVAL, DEFAULT_EXEC_TIMEOUT),
        }
    }

    /// Default `down_interval` of this kind probed every `interval`: udp
    /// probes of a down backend at most once per
    /// [`DEFAULT_UDP_DOWN_INTERVAL`] (their refusal is a rate-limited ICMP
    /// error), other kinds at their `interval` (a TCP RST is not rate-limited).
    pub fn default_down_interval(&self, interval: Duration) -> Duration {
        match self {
            Self::Udp { .. } | Self::Dns { .. } => interval.max(DEFAULT_UDP_DOWN_INTERVAL),
            _ => interval,
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
            down_interval: kind.default_down_interval(interval),
            kind,
            interval,
            timeout,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            silence: Some(DEFAULT_SILENCE),
        }
    }
}

raw_table! {
    /// `[service.health]`, and `failback_gate` in `[service.failover]`.
    pub(super) RawHealth, "a health check table" {
        kind: RawValue,
        interval: RawValue,
        down_interval: RawValue,
        timeout: RawValue,
        silence: RawValue,
        rise: RawValue,
        fall: RawValue,
        path: RawValue,
        expect: RawValue,
        send: RawValue,
        command: RawValue,
        query: RawValue,
        qtype: RawValue,
        rcode: RawValue,
    }
}

/// Probe kinds as spelled in the file; their keys are read once the kind is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KindName {
    Tcp,
    Http,
    Udp,
    Dns,
    Icmp,
    Exec,
}

impl KindName {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("tcp", Self::Tcp),
        ("http", Self::Http),
        ("udp", Self::Udp),
        ("dns", Self::Dns),
        ("icmp", Self::Icmp),
        ("exec", Self::Exec),
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Udp => "udp",
            Self::Dns => "dns",
            Self::Icmp => "icmp",
            Self::Exec => "exec",
        }
    }
}

/// A key that belongs to some probe kinds only: name, value, the kinds.
type KindKey<'a> = (&'static str, &'a Option<Spanned<RawValue>>, &'static [KindName]);

/// How a health table's absent keys are filled in.
#[derive(Clone, Copy)]
pub(super) enum CheckDefaults {
    /// `[service.health]`: the kind follows the service's protocol, the timing
    /// the kind ([`ProbeKind::default_timing`]), rise and fall the defaults.
    Service(Protocol),
    /// `failback_gate`: `kind` is required, timing from
    /// [`ProbeKind::default_gate_timing`], rise = fall = 1.
    Gate,
}

/// Converts a health table: `[service.health]` or a `failback_gate`.
pub(super) fn convert_check(
    sec: &Section<'_>,
    r: &RawHealth,
    defaults: CheckDefaults,
) -> Result<HealthCheck, ConfigError> {
    sec.unknown_keys(&r.unknown, RawHealth::KEYS)?;
    // `kind_note` explains a kind the file does not spell out.
    let (kind, kind_note) = match (&r.kind, defaults) {
        (None, CheckDefaults::Service(protocol)) => {
            let kind = match protocol {
                Protocol::Tcp => KindName::Tcp,
                Protocol::Udp => KindName::Udp,
            };
            (kind, format!(" (the default for a {protocol} service)"))
        }
        (kind, _) => (
            sec.choice("kind", sec.required("kind", kind)?, KindName::CHOICES)?,
            String::new(),
        ),
    };

    // Keys that belong to some kinds only.
    let kind_keys: [KindKey<'_>; 7] = [
        ("path", &r.path, &[KindName::Http]),
        ("expect", &r.expect, &[KindName::Http, KindName::Udp]),
        ("send", &r.send, &[KindName::Udp]),
        ("command", &r.command, &[KindName::Exec]),
        ("query", &r.query, &[KindName::Dns]),
        ("qtype", &r.qtype, &[KindName::Dns]),
        ("rcode", &r.rcode, &[KindName::Dns]),
    ];
    for (key, field, kinds) in kind_keys {
        if let Some(value) = field
            && !kinds.contains(&kind)
        {
            let allowed: Vec<String> = kinds
                .iter()
                .map(|k| format!("kind = \"{}\"", k.as_str()))
                .collect();
            return Err(sec.invalid(
                key,
                &value.span(),
                format!(
                    "only allowed with {}, but kind is \"{}\"{kind_note}",
                    allowed.join(" or "),
                    kind.as_str()
                ),
            ));
        }
    }

    let probe = match kind {
        KindName::Tcp => ProbeKind::Tcp,
        KindName::Icmp => ProbeKind::Icmp,
        KindName::Http => ProbeKind::Http {
            path: match &r.path {
                Some(v) => http_path(sec, v)?,
                None => DEFAULT_HTTP_PATH.to_owned(),
            },
            expect: match &r.expect {
                Some(v) => http_expect(sec, v)?,
                None => DEFAULT_HTTP_EXPECT.to_vec(),
            },
        },
        KindName::Udp => ProbeKind::Udp {
            send: match &r.send {
                Some(v) => sec.string("send", v)?.as_bytes().to_vec(),
                None => DEFAULT_UDP_SEND.to_vec(),
            },
            expect: match &r.expect {
                Some(v) => Some(sec.string("expect", v)?.as_bytes().to_vec()),
                None => None,
            },
        },
        KindName::Exec => ProbeKind::Exec {
            command: command(sec, "command", sec.required("command", &r.command)?)?,
        },
        KindName::Dns => dns_check(sec, r)?,
    };

    let ((interval, timeout), (rise, fall)) = match defaults {
        CheckDefaults::Service(_) => (probe.default_timing(), (DEFAULT_RISE, DEFAULT_FALL)),
        CheckDefaults::Gate => (
            probe.default_gate_timing(),
            (DEFAULT_GATE_RISE_FALL, DEFAULT_GATE_RISE_FALL),
        ),
    };
    let interval = match &r.interval {
        Some(v) => sec.duration("interval", v, MIN_INTERVAL..=MAX_INTERVAL)?,
        None => interval,
    };
    let down_interval = match (&r.down_interval, defaults) {
        (Some(v), _) => {
            let d = sec.duration("down_interval", v, MIN_INTERVAL..=MAX_INTERVAL)?;
            if d < interval {
                return Err(sec.invalid(
                    "down_interval",
                    &v.span(),
                    format!(
                        "{d:?} is shorter than interval ({interval:?}): a down backend is probed no more often \
                         than an up one"
                    ),
                ));
            }
            d
        }
        (None, CheckDefaults::Service(_)) => probe.default_down_interval(interval),
        // A gate judges a primary that is up: no down cadence of its own.
        (None, CheckDefaults::Gate) => interval,
    };
    let silence = match (&r.silence, defaults) {
        (Some(v), CheckDefaults::Gate) => {
            return Err(sec.invalid(
                "silence",
                &v.span(),
                "only allowed in [service.health]: a failback_gate judges no traffic",
            ));
        }
        (Some(v), CheckDefaults::Service(_)) => {
            if matches!(v.get_ref(), RawValue::Scalar(toml::Value::String(t)) if t == "off") {
                None
            } else {
                Some(sec.duration("silence", v, SILENCE_RANGE)?)
            }
        }
        (None, CheckDefaults::Service(_)) => Some(DEFAULT_SILENCE),
        (None, CheckDefaults::Gate) => None,
    };
    let timeout = match &r.timeout {
        Some(v) => sec.duration("timeout", v, Duration::from_nanos(1)..=MAX_TIMEOUT)?,
        None => timeout,
    };
    let rise = match &r.rise {
        Some(v) => sec.ranged("rise", v, RISE_FALL_RANGE)?,
        None => rise,
    };
    let fall = match &r.fall {
        Some(v) => sec.ranged("fall", v, RISE_FALL_RANGE)?,
        None => fall,
    };
    Ok(HealthCheck {
        kind: probe,
        interval,
        down_interval,
        timeout,
        silence,
        rise,
        fall,
    })
}

/// An http probe's `path`: starts with `/`, and fits in a request line.
fn http_path(sec: &Section<'_>, value: &Spanned<RawValue>) -> Result<String, ConfigError> {
    let path = sec.string("path", value)?;
    if !path.starts_with('/') {
        return Err(sec.invalid("path", &value.span(), format!("{path:?} must start with \"/\"")));
    }
    if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(sec.invalid(
            "path",
            &value.span(),
            format!("{path:?} contains {c:?}; encode it (e.g. %20 for a space)"),
        ));
    }
    Ok(path.to_owned())
}

/// An http probe's `expect`: a non-empty list of distinct status codes.
fn http_expect(sec: &Section<'_>, value: &Spanned<RawValue>) -> Result<Vec<u16>, ConfigError> {
    let items = sec.array("expect", value, "an array of HTTP status codes such as [200]")?;
    if items.is_empty() {
        return Err(sec.invalid("expect", &value.span(), "must list at least one status code"));
    }
    let mut codes = Vec::with_capacity(items.len());
    for item in items {
        let span = item.span();
        let code = match item.get_ref() {
            toml::Value::Integer(code) => *code,
            other => {
                return Err(sec.invalid(
                    "expect",
                    &span,
                    format!("expected an HTTP status code, found {}", describe(other)),
                ));
            }
        };
        let code = u16::try_from(code)
            .ok()
            .filter(|c| HTTP_STATUS_RANGE.contains(c))
            .ok_or_else(|| {
                sec.invalid(
                    "expect",
                    &span,
                    format!(
                        "{code} is not an HTTP status code, expected {}..={}",
                        HTTP_STATUS_RANGE.start(),
                        HTTP_STATUS_RANGE.end()
                    ),
                )
            })?;
        if codes.contains(&code) {
            return Err(sec.invalid("expect", &span, format!("{code} is listed more than once")));
        }
        codes.push(code);
    }
    Ok(codes)
}

/// A command to run without a shell (an exec probe's `command`, a hook):
/// program (absolute path) and arguments.
pub(super) fn command(
    sec: &Section<'_>,
    key: &str,
    value: &Spanned<RawValue>,
) -> Result<Vec<String>, ConfigError> {
    let items = sec.array(
        key,
        value,
        "an array of strings such as [\"/usr/local/bin/check\", \"arg\"]",
    )?;
    let mut command = Vec::with_capacity(items.len());
    for item in items {
        let arg = match item.get_ref() {
            toml::Value::String(arg) => arg,
            other => {
                return Err(sec.invalid(
                    key,
                    &item.span(),
                    format!("expected a string, found {}", describe(other)),
                ));
            }
        };
        if arg.contains('\0') {
            return Err(sec.invalid(key, &item.span(), format!("{arg:?} contains a NUL character")));
        }
        command.push(arg.clone());
    }
    match command.first() {
        None => Err(sec.invalid(
            key,
            &value.span(),
            "must name the program to run, e.g. [\"/usr/local/bin/check\"]",
        )),
        Some(program) if !program.starts_with('/') => Err(sec.invalid(
            key,
            &value.span(),
            format!("program {program:?} must be an absolute path"),
        )),
        Some(_) => Ok(command),
    }
}

/// A dns check's `query`, `qtype` and `rcode`.
fn dns_check(sec: &Section<'_>, r: &RawHealth) -> Result<ProbeKind, ConfigError> {
    use crate::health::dns::{QTYPES, RCODES, encode_name};
    let name = match &r.query {
        Some(v) => {
            let name = sec.string("query", v)?;
            encode_name(name).map_err(|e| sec.invalid("query", &v.span(), format!("{name:?}: {e}")))?;
            name.to_owned()
        }
        None => DEFAULT_DNS_NAME.to_owned(),
    };
    let qtype = match &r.qtype {
        Some(v) => {
            let text = sec.string("qtype", v)?;
            QTYPES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(text))
                .map(|(_, t)| *t)
                .or_else(|| text.strip_prefix("TYPE").and_then(|n| n.parse().ok()))
                .ok_or_else(|| {
                    let names: Vec<&str> = QTYPES.iter().map(|(n, _)| *n).collect();
                    sec.invalid(
                        "qtype",
                        &v.span(),
                        format!(
                            "unknown type {text:?}, expected one of {} or TYPEnn",
                            names.join(", ")
                        ),
                    )
                })?
        }
        None => DEFAULT_DNS_QTYPE,
    };
    let rcodes = match &r.rcode {
        Some(v) => {
            let items = sec.array(
                "rcode",
                v,
                "an array of RCODE names such as [\"noerror\", \"nxdomain\"]",
            )?;
            let mut set = 0u16;
            for item in items {
                let code = match item.get_ref() {
                    toml::Value::String(s) => RCODES
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(s))
                        .map(|(_, c)| *c),
                    _ => None,
                };
                let Some(code) = code else {
                    let names: Vec<&str> = RCODES.iter().map(|(n, _)| *n).collect();
                    return Err(sec.invalid(
                        "rcode",
                        &item.span(),
                        format!(
                            "expected one of {}, found {}",
                            names.join(", "),
                            describe(item.get_ref())
                        ),
                    ));
                };
                set |= 1 << code;
            }
            if set == 0 {
                return Err(sec.invalid("rcode", &v.span(), "must accept at least one RCODE"));
            }
            set
        }
        None => DEFAULT_DNS_RCODES,
    };
    Ok(ProbeKind::Dns { name, qtype, rcodes })
}
