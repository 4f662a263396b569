//! Configuration file parsing and validation.
//!
//! The redirector is configured by a TOML file with one `[gateway]` table,
//! zero or more `[[service]]` tables, each with optional `[service.health]`
//! and `[service.failover]` tables, and an optional `[control]` table:
//!
//! ```toml
//! [gateway]
//! interfaces = ["eth0", "eth1"]   # required, non-empty, valid Linux interface names
//! xdp_mode = "auto"               # auto | driver | skb; default auto
//! flow_table_size = 262144        # default 262144, 1024..=16777216
//! tcp_flow_idle = 3600             # seconds, default 3600, 10..=604800
//! udp_flow_idle = 120              # seconds, default 120, 10..=604800
//! max_services = 1024             # default 1024, 1024..=65536, >= number of services
//! icmp_echo = "answer"            # answer | pass: echo requests to a VIP; default answer
//!
//! [[service]]
//! name = "web"                    # required, unique, 1..=64 of [A-Za-z0-9_.-]
//! vip = "198.18.100.1"            # IPv4 or IPv6 address
//! port = 80                       # 1..=65535
//! protocol = "tcp"                # tcp | udp
//! mode = "nat"                    # nat | dsr; default nat
//! primary = "198.18.2.2"          # "addr" or "addr:port"; IPv6 as "addr" or "[addr]:port"
//! secondary = "198.18.3.2:8080"
//! allow = ["198.18.1.0/24"]       # client source prefixes; empty or absent: everyone
//! deny = ["198.18.1.128/25"]      # refused even if allowed; both: the vip's family, no host
//!                                 # bits, no duplicates, at most 1024 each; "addr" is addr/32 (/128)
//!
//! [service.health]                # belongs to the [[service]] above it; optional
//! kind = "http"                   # tcp | http | udp | icmp | exec; default: the protocol (tcp or udp)
//! interval = "10ms"               # 100us..=1h; default by kind: tcp/udp/icmp 5ms, http 10ms, exec 1s
//! timeout = "30ms"                # >0, <=60s, may exceed interval; default by kind: 15ms, 30ms, 500ms
//! rise = 3                        # 1..=100, default 3: passes that bring a down backend up
//! fall = 2                        # 1..=100, default 2: failures that take a backend down
//! path = "/healthz"               # http only; starts with "/", no spaces; default "/"
//! expect = [200, 204]             # http: non-empty list of 100..=599, default [200]
//! # udp only:  send = "ping"       (default "redirector health check\n")
//! #            expect = "pong"     (default: any reply)
//! # exec only: command = ["/usr/local/bin/check", "arg"]   (required; absolute program path)
//!
//! [service.failover]              # optional
//! failback = "auto"               # auto | manual; default auto
//! failback_delay = "1s"           # 0..=1h, default 1s
//! all_down = "keep"               # keep | drop | pass; default keep
//! share = 0                       # percent of new flows to the secondary while both are up, 0..=100
//! flap_hold = "5s"                # 0..=1h, default 5s; "0s" turns flap damping off
//! failback_gate = { kind = "http", path = "/ready" }  # optional; the health keys, kind required;
//!                                 # default interval/timeout: the slower of 100ms/50ms and the kind's,
//!                                 # rise = fall = 1
//!
//! [control]                       # optional
//! socket = "/run/redirector/control.sock"   # absolute, at most 107 bytes
//! state_dir = "/var/lib/redirector"         # absolute
//! bpffs_dir = "/sys/fs/bpf/redirector"      # absolute, not the same as state_dir
//! metrics = "127.0.0.1:9630"      # "addr:port" or "[ipv6]:port", port not 0; default: none
//! probe_budget = 5000             # probes per second over all backends, 100..=1000000
//! ```
//!
//! Durations are strings: an integer or decimal number and a unit, one of
//! `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`; e.g. `"500us"`, `"1.5s"`.
//!
//! [`Config::from_file`] and [`Config::from_str_named`] parse the file and
//! check it completely, returning only validated types. Every error names the
//! file, and the line, table and key where they are known, for example
//! `config.toml:7: service "web": key "mode": unknown value "nta", expected "nat" or "dsr"` or
//! `config.toml:12: service "web" health: key "interval": "50us" is too short, the minimum is 100µs`.
//! Unknown keys are errors.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

mod control;
mod prefix;
#[cfg(test)]
mod proptests;
pub use control::*;
pub use prefix::{Prefix, PrefixError};

/// Default number of entries in the flow table.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;
/// Allowed values of `flow_table_size`.
pub const FLOW_TABLE_SIZE_RANGE: RangeInclusive<u32> = 1024..=16_777_216;
/// Default idle time after which a TCP flow entry is removed, in seconds.
/// Long: removing a pinned TCP flow's entry can move an idle connection.
pub const DEFAULT_TCP_FLOW_IDLE: u32 = 3600;
/// Default idle time after which a UDP flow entry is removed, in seconds.
pub const DEFAULT_UDP_FLOW_IDLE: u32 = 120;
/// Allowed values of `tcp_flow_idle` and `udp_flow_idle` (seconds, up to 7 days).
pub const FLOW_IDLE_RANGE: RangeInclusive<u32> = 10..=604_800;
/// Default maximum number of services.
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
/// Allowed values of `max_services`.
pub const MAX_SERVICES_RANGE: RangeInclusive<u32> = 1024..=65_536;

/// Most prefixes in one `allow` or `deny` list: each is an LPM trie entry of
/// the data plane, and a list this long is better served by a firewall.
pub const MAX_PREFIXES: usize = 1024;

/// Longest Linux interface name in bytes (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;
/// Longest service name in characters.
const MAX_SERVICE_NAME_LEN: usize = 64;

// ---------------------------------------------------------------------------
// Public, validated types
// ---------------------------------------------------------------------------

/// How the XDP program is attached to the interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XdpModeSetting {
    /// Try native (driver) mode, fall back to generic (skb) mode.
    #[default]
    Auto,
    /// Native driver mode only.
    Driver,
    /// Generic skb mode only.
    Skb,
}

impl XdpModeSetting {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("auto", Self::Auto), ("driver", Self::Driver), ("skb", Self::Skb)];

    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to ICMP / ICMPv6 echo requests to a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IcmpEcho {
    /// The data plane answers them from the VIP.
    #[default]
    Answer,
    /// They go to the kernel stack untouched.
    Pass,
}

impl IcmpEcho {
    const CHOICES: &'static [(&'static str, Self)] = &[("answer", Self::Answer), ("pass", Self::Pass)];

    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answer => "answer",
            Self::Pass => "pass",
        }
    }
}

impl fmt::Display for IcmpEcho {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    const CHOICES: &'static [(&'static str, Self)] = &[("tcp", Self::Tcp), ("udp", Self::Udp)];

    /// The IP protocol number: 6 for TCP, 17 for UDP.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How packets are forwarded to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Destination NAT: the destination address (and optionally port) is rewritten.
    #[default]
    Nat,
    /// Direct server return: only the L2 header is rewritten.
    Dsr,
}

impl Mode {
    const CHOICES: &'static [(&'static str, Self)] = &[("nat", Self::Nat), ("dsr", Self::Dsr)];

    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Dsr => "dsr",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend server of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Address of the backend; always the same family as the service's vip.
    pub addr: IpAddr,
    /// Port remap: `Some(port)` only when it differs from the service port,
    /// `None` when packets keep the service port.
    pub port: Option<u16>,
}

impl fmt::Display for Backend {
    /// Formats as `addr`, `addr:port`, or `[addr]:port` for IPv6.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (addr, None) => write!(f, "{addr}"),
            (IpAddr::V4(addr), Some(port)) => write!(f, "{addr}:{port}"),
            (IpAddr::V6(addr), Some(port)) => write!(f, "[{addr}]:{port}"),
        }
    }
}

/// One validated `[[service]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique service name.
    pub name: String,
    /// Virtual IP address the service is reached on.
    pub vip: IpAddr,
    /// Service port, 1..=65535.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Forwarding mode.
    pub mode: Mode,
    /// Backend used while it is healthy.
    pub primary: Backend,
    /// Backend used when the primary fails.
    pub secondary: Backend,
    /// How both backends are probed.
    pub health: HealthCheck,
    /// Failover and failback policy.
    pub failover: Failover,
    /// Client source prefixes allowed to reach the service, in file order;
    /// empty: every client. The vip's family, no duplicates.
    pub allow: Vec<Prefix>,
    /// Client source prefixes refused, in file order; a client in both lists
    /// is refused. The vip's family, no duplicates, none also in `allow`.
    pub deny: Vec<Prefix>,
}

impl Service {
    /// May a client at `client` reach the service? Refused if a `deny`
    /// prefix contains it, else admitted if `allow` is empty or one of its
    /// prefixes contains it. What the data plane's tries decide.
    pub fn admits(&self, client: IpAddr) -> bool {
        let any = |list: &[Prefix]| list.iter().any(|p| p.contains(client));
        !any(&self.deny) && (self.allow.is_empty() || any(&self.allow))
    }
}

/// The validated `[gateway]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Interfaces the XDP program is attached to; non-empty, no duplicates.
    pub interfaces: Vec<String>,
    /// XDP attach mode.
    pub xdp_mode: XdpModeSetting,
    /// Number of flow table entries.
    pub flow_table_size: u32,
    /// Capacity of the service table; at least the number of services.
    pub max_services: u32,
    /// Seconds without a packet after which a TCP flow entry is removed.
    pub tcp_flow_idle: u32,
    /// Seconds without a packet after which a UDP flow entry is removed.
    pub udp_flow_idle: u32,
    /// Echo requests to a VIP: answered in XDP or passed to the stack.
    pub icmp_echo: IcmpEcho,
}

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Gateway settings.
    pub gateway: Gateway,
    /// Services in file order; may be empty.
    pub services: Vec<Service>,
    /// Control-plane settings.
    pub control: Control,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Where in the configuration an error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file path, or the origin given to [`Config::from_str_named`].
    pub origin: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.origin),
            None => f.write_str(&self.origin),
        }
    }
}

/// An error reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not have the expected structure.
    #[error("{at}: {message}")]
    Toml {
        /// Where the error was found.
        at: Location,
        /// What is wrong.
        message: String,
    },
    /// A key that the configuration does not know. Quoted as Rust does, so a
    /// quoted TOML key with a newline cannot break the message over lines.
    #[error("{at}: {}unknown key {key:?}, expected {expected}", section_prefix(section.as_deref()))]
    UnknownKey {
        /// Where the key is.
        at: Location,
        /// The table, e.g. `[gateway]` or `service "web" health`; `None` at the top level.
        section: Option<String>,
        /// The unknown key.
        key: String,
        /// The keys allowed in its table.
        expected: String,
    },
    /// The `[gateway]` table is missing.
    #[error("{origin}: missing required [gateway] table")]
    MissingGateway {
        /// The file path or origin.
        origin: String,
    },
    /// A required key is missing from a table.
    #[error("{at}: {section}: missing required key \"{key}\"")]
    MissingKey {
        /// The line of the table header.
        at: Location,
        /// The table, e.g. `[gateway]` or `service "web"`.
        section: String,
        /// The missing key.
        key: String,
    },
    /// A value has the wrong type, is out of range or cannot be parsed.
    #[error("{at}: {section}: key \"{key}\": {message}")]
    InvalidValue {
        /// Where the value is.
        at: Location,
        /// The table, e.g. `[gateway]` or `service "web"`.
        section: String,
        /// The key whose value is invalid.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A backend's address family differs from the vip's.
    #[error(
        "{at}: service \"{service}\": key \"{key}\": backend {backend} is {}, but vip {vip} is {}",
        family(*backend),
        family(*vip)
    )]
    FamilyMismatch {
        /// Where the backend is.
        at: Location,
        /// The service name.
        service: String,
        /// `primary` or `secondary`.
        key: String,
        /// The backend address.
        backend: IpAddr,
        /// The service's vip.
        vip: IpAddr,
    },
    /// An `allow` or `deny` prefix's address family differs from the vip's.
    #[error(
        "{at}: service \"{service}\": key \"{key}\": prefix {prefix} is {}, but vip {vip} is {}; \
         clients of an {} vip are {}",
        family(prefix.addr()),
        family(*vip),
        family(*vip),
        family(*vip)
    )]
    PrefixFamilyMismatch {
        /// Where the prefix is.
        at: Location,
        /// The service name.
        service: String,
        /// `allow` or `deny`.
        key: String,
        /// The prefix.
        prefix: Prefix,
        /// The service's vip.
        vip: IpAddr,
    },
    /// A backend address equals the service's vip.
    #[error("{at}: service \"{service}\": key \"{key}\": backend address {vip} is the service's own vip")]
    BackendIsVip {
        /// Where the backend is.
        at: Location,
        /// The service name.
        service: String,
        /// `primary` or `secondary`.
        key: String,
        /// The vip.
        vip: IpAddr,
    },
    /// Primary and secondary are the same backend.
    #[error(
        "{at}: service \"{service}\": key \"secondary\": same backend as primary ({backend}); failover needs two different backends"
    )]
    SameBackends {
        /// Where the secondary is.
        at: Location,
        /// The service name.
        service: String,
        /// The backend given twice.
        backend: Backend,
    },
    /// A `dsr` service gives a backend port different from the service port.
    #[error(
        "{at}: service \"{service}\": key \"{key}\": port {backend_port} differs from service port {service_port}, but dsr rewrites only L2; remove the port from primary/secondary or use mode = \"nat\""
    )]
    DsrPortRemap {
        /// Where the backend is.
        at: Location,
        /// The service name.
        service: String,
        /// `primary` or `secondary`.
        key: String,
        /// The port given on the backend.
        backend_port: u16,
        /// The service port.
        service_port: u16,
    },
    /// Two services share a service name.
    #[error("{at}: service \"{name}\": duplicate service name, first defined at line {first_line}")]
    DuplicateName {
        /// Where the second service is.
        at: Location,
        /// The name.
        name: String,
        /// Line of the first service with this name.
        first_line: usize,
    },
    /// Two services share (vip, port, protocol).
    #[error(
        "{at}: service \"{service}\": {} {port}/{protocol} is already used by service \"{other}\" at line {other_line}",
        Backend { addr: *vip, port: None }
    )]
    DuplicateService {
        /// Where the second service is.
        at: Location,
        /// The second service.
        service: String,
        /// The first service with the same tuple.
        other: String,
        /// Line of the first service.
        other_line: usize,
        /// The shared vip.
        vip: IpAddr,
        /// The shared port.
        port: u16,
        /// The shared protocol.
        protocol: Protocol,
    },
    /// Two NAT services share a backend endpoint: replies from it could not be
    /// told apart, so they would leave with the wrong VIP.
    #[error(
        "{at}: service \"{service}\": NAT backend {backend} ({protocol}) is already a backend of NAT service \
         \"{other}\" at line {other_line}; replies could not be told apart — give each service its own \
         backend address or port"
    )]
    SharedNatBackend {
        /// Where the second service is.
        at: Location,
        /// The second service.
        service: String,
        /// The first service using the endpoint.
        other: String,
        /// Line of the first service.
        other_line: usize,
        /// The shared endpoint (address and effective port).
        backend: Backend,
        /// The shared protocol.
        protocol: Protocol,
    },
    /// There are more services than `max_services` allows.
    #[error(
        "{at}: [gateway]: key \"max_services\": {count} services are configured but max_services is {max}"
    )]
    TooManyServices {
        /// Where `max_services` (or `[gateway]`) is.
        at: Location,
        /// Number of services in the file.
        count: usize,
        /// The effective `max_services`.
        max: u32,
    },
    /// All services' `allow` (or `deny`) prefixes together exceed what the
    /// data plane's trie holds.
    #[error(
        "{origin}: the {list} lists of all services hold {count} prefixes together; the data plane holds at \
         most {max}: shorten them (a covering prefix instead of many hosts)"
    )]
    TooManyPrefixes {
        /// The file.
        origin: String,
        /// `allow` or `deny`.
        list: &'static str,
        /// Prefixes in the file.
        count: usize,
        /// Capacity of the trie.
        max: u32,
    },
}

/// `"section: "`, or nothing at the top level.
fn section_prefix(section: Option<&str>) -> String {
    section.map(|s| format!("{s}: ")).unwrap_or_default()
}

fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

// ---------------------------------------------------------------------------
// Raw (unvalidated) serde structures
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a configuration table")]
struct RawConfig {
    gateway: Option<Spanned<RawGateway>>,
    #[serde(default)]
    service: RawServices,
    control: Option<Spanned<RawControl>>,
}

/// The key under which toml hands a datetime to a visitor, as a one-entry map
/// (a private marker of `toml_datetime`); met where a table was expected.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// Declares a raw table: every key optional and spanned, and the keys it does
/// not know kept with their spans, so that conversion can reject them naming
/// the section (serde's `deny_unknown_fields` cannot say which service).
macro_rules! raw_table {
    ($(#[$doc:meta])* $name:ident, $expecting:literal { $($key:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Default)]
        struct $name {
            $($key: Option<Spanned<$ty>>,)*
            /// Keys not listed above, with the span of each value.
            unknown: Vec<(String, Range<usize>)>,
        }

        impl $name {
            /// The keys the table allows, in declaration order.
            const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct TableVisitor;
                impl<'de> Visitor<'de> for TableVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        let mut table = $name::default();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                $(stringify!($key) => table.$key = Some(map.next_value()?),)*
                                TOML_DATETIME_KEY => {
                                    return Err(de::Error::invalid_type(
                                        de::Unexpected::Other("datetime"),
                                        &self,
                                    ));
                                }
                                _ => {
                                    let value: Spanned<de::IgnoredAny> = map.next_value()?;
                                    table.unknown.push((key, value.span()));
                                }
                            }
                        }
                        Ok(table)
                    }
                }
                deserializer.deserialize_map(TableVisitor)
            }
        }
    };
}

raw_table! {
    /// `[gateway]`.
    RawGateway, "a [gateway] table" {
        interfaces: RawValue,
        xdp_mode: RawValue,
        flow_table_size: RawValue,
        max_services: RawValue,
        tcp_flow_idle: RawValue,
        udp_flow_idle: RawValue,
        icmp_echo: RawValue,
    }
}

raw_table! {
    /// One `[[service]]`.
    RawService, "a [[service]] table" {
        name: RawValue,
        vip: RawValue,
        port: RawValue,
        protocol: RawValue,
        mode: RawValue,
        primary: RawValue,
        secondary: RawValue,
        allow: RawValue,
        deny: RawValue,
        health: MaybeTable<RawHealth>,
        failover: MaybeTable<RawFailover>,
    }
}

raw_table! {
    /// `[service.health]`, and `failback_gate` in `[service.failover]`.
    RawHealth, "a health check table" {
        kind: RawValue,
        interval: RawValue,
        timeout: RawValue,
        rise: RawValue,
        fall: RawValue,
        path: RawValue,
        expect: RawValue,
        send: RawValue,
        command: RawValue,
    }
}

raw_table! {
    /// `[service.failover]`.
    RawFailover, "a [service.failover] table" {
        failback: RawValue,
        failback_delay: RawValue,
        all_down: RawValue,
        share: RawValue,
        flap_hold: RawValue,
        failback_gate: MaybeTable<RawHealth>,
    }
}

raw_table! {
    /// `[control]`.
    RawControl, "a [control] table" {
        socket: RawValue,
        state_dir: RawValue,
        bpffs_dir: RawValue,
        metrics: RawValue,
        probe_budget: RawValue,
    }
}

/// A value that should be a table: the table, or a description of what was
/// found instead, so that conversion can name the section and the key.
enum MaybeTable<T> {
    Table(T),
    Other(String),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MaybeTable<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MaybeTableVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MaybeTableVisitor<T> {
            type Value = MaybeTable<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(MaybeTable::Table)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(MaybeTable::Other("an array".to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(describe(&toml::Value::Boolean(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(describe(&toml::Value::Integer(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(format!("integer {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(describe(&toml::Value::Float(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(format!("string {v:?}")))
            }
        }
        deserializer.deserialize_any(MaybeTableVisitor(std::marker::PhantomData))
    }
}

/// The `[[service]]` array, with a clear message when it is not an array.
#[derive(Default)]
struct RawServices(Vec<Spanned<RawService>>);

impl<'de> Deserialize<'de> for RawServices {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServicesVisitor;
        impl<'de> Visitor<'de> for ServicesVisitor {
            type Value = RawServices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of [[service]] tables")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawServices, A::Error> {
                let mut services = Vec::new();
                while let Some(service) = seq.next_element()? {
                    services.push(service);
                }
                Ok(RawServices(services))
            }
        }
        deserializer.deserialize_seq(ServicesVisitor)
    }
}

/// Any TOML value; arrays keep the span of each element. Type checks are
/// done after deserialization so that errors can name the key.
enum RawValue {
    Scalar(toml::Value),
    Array(Vec<Spanned<toml::Value>>),
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::Boolean(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::Integer(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
                i64::try_from(v)
                    .map(|v| RawValue::Scalar(toml::Value::Integer(v)))
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::Float(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::String(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::String(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawValue::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawValue, A::Error> {
                // Tables and datetimes.
                toml::Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawValue::Scalar)
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

/// Short description of a value for "found ..." messages.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer {i}"),
        toml::Value::Float(x) => format!("float {x}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("datetime {d}"),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

fn describe_raw(value: &RawValue) -> String {
    match value {
        RawValue::Scalar(v) => describe(v),
        RawValue::Array(_) => "an array".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Conversion helpers
// ---------------------------------------------------------------------------

/// The text being parsed and the name used for it in messages.
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        let bytes = self.text.as_bytes();
        let before = bytes.get(..offset).unwrap_or(bytes);
        before.iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn at(&self, span: &Range<usize>) -> Location {
        Location {
            origin: self.origin.to_owned(),
            line: Some(self.line_of(span.start)),
        }
    }

    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let at = Location {
            origin: self.origin.to_owned(),
            line: err.span().map(|span| self.line_of(span.start)),
        };
        let message = err.message().trim();
        // serde's deny_unknown_fields message: "unknown field `k`, expected ...".
        if let Some((key, rest)) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            && let Some(expected) = rest.strip_prefix(", expected ")
        {
            return ConfigError::UnknownKey {
                at,
                section: None,
                key: key.to_owned(),
                expected: expected.replace('`', "\""),
            };
        }
        // toml's duplicate key message does not say which key; the span does.
        if message == "duplicate key"
            && let Some(key) = err.span().and_then(|span| self.text.get(span))
        {
            let key = key.trim();
            let message = if key.starts_with(['"', '\'']) {
                format!("duplicate key {key}")
            } else {
                format!("duplicate key \"{key}\"")
            };
            return ConfigError::Toml { at, message };
        }
        ConfigError::Toml {
            at,
            message: message.replace('\n', " "),
        }
    }
}

/// A table being converted: knows its name for error messages.
struct Section<'a> {
    src: &'a Source<'a>,
    name: String,
    span: Range<usize>,
}

impl Section<'_> {
    /// The items of an array value; anything else is an error saying `expected`
    /// (e.g. "an array of interface names").
    fn array<'v>(
        &self,
        key: &str,
        value: &'v Spanned<RawValue>,
        expected: &str,
    ) -> Result<&'v [Spanned<toml::Value>], ConfigError> {
        match value.get_ref() {
            RawValue::Array(items) => Ok(items),
            other => Err(self.invalid(
                key,
                &value.span(),
                format!("expected {expected}, found {}", describe_raw(other)),
            )),
        }
    }

    fn invalid(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            at: self.src.at(span),
            section: self.name.clone(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn required<'v>(
        &self,
        key: &str,
        field: &'v Option<Spanned<RawValue>>,
    ) -> Result<&'v Spanned<RawValue>, ConfigError> {
        field.as_ref().ok_or_else(|| ConfigError::MissingKey {
            at: self.src.at(&self.span),
            section: self.name.clone(),
            key: key.to_owned(),
        })
    }

    fn string<'v>(&self, key: &str, value: &'v Spanned<RawValue>) -> Result<&'v str, ConfigError> {
        match value.get_ref() {
            RawValue::Scalar(toml::Value::String(s)) => Ok(s),
            other => Err(self.invalid(
                key,
                &value.span(),
                format!("expected a string, found {}", describe_raw(other)),
            )),
        }
    }

    fn ranged<T>(
        &self,
        key: &str,
        value: &Spanned<RawValue>,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        let int = match value.get_ref() {
            RawValue::Scalar(toml::Value::Integer(i)) => *i,
            other => {
                return Err(self.invalid(
                    key,
                    &value.span(),
                    format!("expected an integer, found {}", describe_raw(other)),
                ));
            }
        };
        match T::try_from(int) {
            Ok(v) if range.contains(&v) => Ok(v),
            _ => Err(self.invalid(
                key,
                &value.span(),
                format!(
                    "{int} is out of range, expected {}..={}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    fn choice<T: Copy>(
        &self,
        key: &str,
        value: &Spanned<RawValue>,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let s = self.string(key, value)?;
        choices
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                let expected = match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => names.join(""),
                };
                self.invalid(
                    key,
                    &value.span(),
                    format!("unknown value {s:?}, expected {expected}"),
                )
            })
    }
}

impl Section<'_> {
    /// A table inside this one, e.g. `service "web" health`.
    fn sub(&self, key: &str, span: Range<usize>) -> Section<'_> {
        Section {
            src: self.src,
            name: format!("{} {key}", self.name),
            span,
        }
    }

    /// Rejects the first (in file order) key the table does not allow.
    fn unknown_keys(&self, unknown: &[(String, Range<usize>)], allowed: &[&str]) -> Result<(), ConfigError> {
        match unknown.iter().min_by_key(|(_, span)| span.start) {
            None => Ok(()),
            Some((key, span)) => Err(ConfigError::UnknownKey {
                at: self.src.at(span),
                section: Some(self.name.clone()),
                key: key.clone(),
                expected: expected_keys(allowed),
            }),
        }
    }

    /// A table-valued key: `None` when absent, else the table and its span.
    fn table<'v, T>(
        &self,
        key: &str,
        field: &'v Option<Spanned<MaybeTable<T>>>,
    ) -> Result<Option<(&'v T, Range<usize>)>, ConfigError> {
        let Some(value) = field else {
            return Ok(None);
        };
        match value.get_ref() {
            MaybeTable::Table(table) => Ok(Some((table, value.span()))),
            MaybeTable::Other(found) => {
                Err(self.invalid(key, &value.span(), format!("expected a table, found {found}")))
            }
        }
    }

    /// A duration string within `range`; zero gets its own message.
    fn duration(
        &self,
        key: &str,
        value: &Spanned<RawValue>,
        range: RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let span = value.span();
        let text = match value.get_ref() {
            RawValue::Scalar(toml::Value::String(s)) => s,
            other => {
                return Err(self.invalid(
                    key,
                    &span,
                    format!(
                        "expected a duration string such as \"500us\" or \"1.5s\", found {}",
                        describe_raw(other)
                    ),
                ));
            }
        };
        let duration = parse_duration(text).map_err(|m| self.invalid(key, &span, m))?;
        let message = if duration.is_zero() && !range.contains(&duration) {
            format!("{text:?} is zero, it must be greater than zero")
        } else if duration < *range.start() {
            format!("{text:?} is too short, the minimum is {:?}", range.start())
        } else if duration > *range.end() {
            format!("{text:?} is too long, the maximum is {:?}", range.end())
        } else {
            return Ok(duration);
        };
        Err(self.invalid(key, &span, message))
    }

    /// An absolute path.
    fn absolute_path(&self, key: &str, value: &Spanned<RawValue>) -> Result<PathBuf, ConfigError> {
        let path = self.string(key, value)?;
        if !path.starts_with('/') {
            return Err(self.invalid(key, &value.span(), format!("{path:?} is not an absolute path")));
        }
        if path.contains('\0') {
            return Err(self.invalid(key, &value.span(), format!("{path:?} contains a NUL character")));
        }
        Ok(PathBuf::from(path))
    }
}

/// `"a"` or `one of "a", "b"`, as in serde's unknown field messages.
fn expected_keys(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

/// Parses a duration: an integer or decimal number and a unit, e.g. `"500us"`
/// or `"1.5s"`. Exact: no floating point, no precision finer than 1 ns.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const FORMS: &str =
        "expected a number and a unit (ns, us, µs, ms, s, m or h), e.g. \"500us\" or \"1.5s\"";
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || !digits(fraction) {
        return Err(format!("invalid duration {text:?}, {FORMS}"));
    }
    if unit.is_empty() {
        return Err(format!("duration {text:?} has no unit, {FORMS}"));
    }
    let unit_nanos: u128 = match unit {
        "ns" => 1,
        // The micro sign (U+00B5) and the Greek small mu (U+03BC) look the same.
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {unit:?}, {FORMS}"
            ));
        }
    };
    let too_large = || format!("duration {text:?} is too large");
    // At most 20 digits each: the arithmetic below then fits in u128.
    if whole.len() > 20 || fraction.len() > 20 {
        return Err(too_large());
    }
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| too_large())?);
    let fraction_nanos = match fraction {
        "" => 0,
        _ => {
            let fraction: u128 = fraction.parse().map_err(|_| too_large())?;
            let nanos = fraction * unit_nanos;
            if !nanos.is_multiple_of(scale) {
                return Err(format!("duration {text:?} is more precise than a nanosecond"));
            }
            nanos / scale
        }
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(too_large)?;
    Ok(Duration::from_nanos(nanos))
}

fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name must not be empty".to_owned());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "interface name {name:?} is {} bytes long, the maximum is {MAX_IFNAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    // Same rules as the kernel's dev_valid_name(), plus no control characters.
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {name:?} contains invalid character {c:?}"
        ));
    }
    Ok(())
}

fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_SERVICE_NAME_LEN {
        return Err(format!(
            "service name {name:?} must be 1 to {MAX_SERVICE_NAME_LEN} characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "service name {name:?} contains invalid character {c:?}, allowed are A-Z a-z 0-9 _ . -"
        ));
    }
    Ok(())
}

/// Parses a plain IPv4 or IPv6 address (no port, no brackets, no zone).
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    if let Some((_, zone)) = s.split_once('%') {
        return Err(format!(
            "scoped IPv6 address {s:?} is not supported (remove the zone \"%{zone}\")"
        ));
    }
    let addr: IpAddr = s
        .parse()
        .map_err(|_| format!("invalid IP address {s:?}, expected an IPv4 or IPv6 address"))?;
    check_usable(addr)?;
    Ok(addr)
}

/// Rejects addresses that can never be a vip or a backend.
fn check_usable(addr: IpAddr) -> Result<(), String> {
    let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
    if addr.is_unspecified() || addr.is_multicast() || broadcast {
        return Err(format!(
            "{addr} is an unspecified, multicast or broadcast address"
        ));
    }
    Ok(())
}

fn parse_port(s: &str, whole: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {s:?} in {whole:?}"));
    }
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "port {s} in {whole:?} is out of range, expected 1..=65535"
        )),
    }
}

/// Parses `addr`, `v4addr:port`, `[v6addr]` or `[v6addr]:port`.
fn parse_backend(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    const FORMS: &str = "expected \"addr\", \"addr:port\" or \"[ipv6]:port\"";
    if let Some((_, zone)) = s.split_once('%') {
        let zone = zone.split(']').next().unwrap_or(zone);
        return Err(format!(
            "scoped IPv6 address {s:?} is not supported (remove the zone \"%{zone}\")"
        ));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("invalid backend {s:?}: missing \"]\", {FORMS}"))?;
        let addr: std::net::Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("invalid backend {s:?}: {inner:?} is not an IPv6 address, {FORMS}"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(parse_port(port, s)?),
                None => return Err(format!("invalid backend {s:?}, {FORMS}")),
            },
        };
        let addr = IpAddr::V6(addr);
        check_usable(addr)?;
        return Ok((addr, port));
    }
    // A plain address; for IPv6 this includes forms like "2001:2::1:80".
    if let Ok(addr) = s.parse::<IpAddr>() {
        check_usable(addr)?;
        return Ok((addr, None));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if let Ok(addr) = host.parse::<std::net::Ipv4Addr>() {
            let addr = IpAddr::V4(addr);
            check_usable(addr)?;
            return Ok((addr, Some(parse_port(port, s)?)));
        }
        if host.contains(':') {
            return Err(format!(
                "invalid backend {s:?}: an IPv6 address with a port must be written as \"[addr]:port\""
            ));
        }
    }
    Err(format!("invalid backend {s:?}, {FORMS}"))
}

// ---------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------

fn convert_gateway(src: &Source<'_>, raw: &Spanned<RawGateway>) -> Result<Gateway, ConfigError> {
    let sec = Section {
        src,
        name: "[gateway]".to_owned(),
        span: raw.span(),
    };
    let g = raw.get_ref();
    sec.unknown_keys(&g.unknown, RawGateway::KEYS)?;

    let list = sec.required("interfaces", &g.interfaces)?;
    let items = sec.array("interfaces", list, "an array of interface names")?;
    if items.is_empty() {
        return Err(sec.invalid("interfaces", &list.span(), "must list at least one interface"));
    }
    let mut interfaces = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for item in items {
        let name = match item.get_ref() {
            toml::Value::String(name) => name,
            other => {
                return Err(sec.invalid(
                    "interfaces",
                    &item.span(),
                    format!("expected an interface name, found {}", describe(other)),
                ));
            }
        };
        validate_ifname(name).map_err(|m| sec.invalid("interfaces", &item.span(), m))?;
        if !seen.insert(name.as_str()) {
            return Err(sec.invalid(
                "interfaces",
                &item.span(),
                format!("interface {name:?} is listed more than once"),
            ));
        }
        interfaces.push(name.clone());
    }

    let xdp_mode = match &g.xdp_mode {
        Some(v) => sec.choice("xdp_mode", v, XdpModeSetting::CHOICES)?,
        None => XdpModeSetting::default(),
    };
    let flow_table_size = match &g.flow_table_size {
        Some(v) => sec.ranged("flow_table_size", v, FLOW_TABLE_SIZE_RANGE)?,
        None => DEFAULT_FLOW_TABLE_SIZE,
    };
    let max_services = match &g.max_services {
        Some(v) => sec.ranged("max_services", v, MAX_SERVICES_RANGE)?,
        None => DEFAULT_MAX_SERVICES,
    };
    let tcp_flow_idle = match &g.tcp_flow_idle {
        Some(v) => sec.ranged("tcp_flow_idle", v, FLOW_IDLE_RANGE)?,
        None => DEFAULT_TCP_FLOW_IDLE,
    };
    let udp_flow_idle = match &g.udp_flow_idle {
        Some(v) => sec.ranged("udp_flow_idle", v, FLOW_IDLE_RANGE)?,
        None => DEFAULT_UDP_FLOW_IDLE,
    };
    let icmp_echo = match &g.icmp_echo {
        Some(v) => sec.choice("icmp_echo", v, IcmpEcho::CHOICES)?,
        None => IcmpEcho::default(),
    };
    Ok(Gateway {
        interfaces,
        xdp_mode,
        flow_table_size,
        max_services,
        tcp_flow_idle,
        udp_flow_idle,
        icmp_echo,
    })
}

fn convert_backend(
    sec: &Section<'_>,
    key: &str,
    raw: &Option<Spanned<RawValue>>,
    service: &str,
    vip: IpAddr,
    port: u16,
    mode: Mode,
) -> Result<(Backend, Range<usize>), ConfigError> {
    let value = sec.required(key, raw)?;
    let span = value.span();
    let text = sec.string(key, value)?;
    let (addr, backend_port) = parse_backend(text).map_err(|m| sec.invalid(key, &span, m))?;
    if addr.is_ipv4() != vip.is_ipv4() {
        return Err(ConfigError::FamilyMismatch {
            at: sec.src.at(&span),
            service: service.to_owned(),
            key: key.to_owned(),
            backend: addr,
            vip,
        });
    }
    if addr == vip {
        return Err(ConfigError::BackendIsVip {
            at: sec.src.at(&span),
            service: service.to_owned(),
            key: key.to_owned(),
            vip,
        });
    }
    // A backend port equal to the service port is not a remap.
    let backend_port = backend_port.filter(|&p| p != port);
    if let (Mode::Dsr, Some(backend_port)) = (mode, backend_port) {
        return Err(ConfigError::DsrPortRemap {
            at: sec.src.at(&span),
            service: service.to_owned(),
            key: key.to_owned(),
            backend_port,
            service_port: port,
        });
    }
    Ok((
        Backend {
            addr,
            port: backend_port,
        },
        span,
    ))
}

fn convert_service(
    src: &Source<'_>,
    index: usize,
    raw: &Spanned<RawService>,
) -> Result<Service, ConfigError> {
    let mut sec = Section {
        src,
        name: format!("service #{}", index + 1),
        span: raw.span(),
    };
    let r = raw.get_ref();
    // Name the service in an unknown key's message when its name is usable.
    if let Some(name) = r.name.as_ref().and_then(|v| sec.string("name", v).ok())
        && validate_service_name(name).is_ok()
    {
        sec.name = format!("service \"{name}\"");
    }
    sec.unknown_keys(&r.unknown, RawService::KEYS)?;

    let name_value = sec.required("name", &r.name)?;
    let name = sec.string("name", name_value)?;
    validate_service_name(name).map_err(|m| sec.invalid("name", &name_value.span(), m))?;
    let name = name.to_owned();

    let vip_value = sec.required("vip", &r.vip)?;
    let vip =
        parse_ip(sec.string("vip", vip_value)?).map_err(|m| sec.invalid("vip", &vip_value.span(), m))?;
    let port: u16 = sec.ranged("port", sec.required("port", &r.port)?, 1..=u16::MAX)?;
    let protocol = sec.choice(
        "protocol",
        sec.required("protocol", &r.protocol)?,
        Protocol::CHOICES,
    )?;
    let mode = match &r.mode {
        Some(v) => sec.choice("mode", v, Mode::CHOICES)?,
        None => Mode::default(),
    };

    let (primary, _) = convert_backend(&sec, "primary", &r.primary, &name, vip, port, mode)?;
    let (secondary, secondary_span) =
        convert_backend(&sec, "secondary", &r.secondary, &name, vip, port, mode)?;
    if primary == secondary {
        return Err(ConfigError::SameBackends {
            at: src.at(&secondary_span),
            service: name,
            backend: primary,
        });
    }

    let allow = prefix_list(&sec, "allow", r.allow.as_ref(), &name, vip, &[])?;
    let deny = prefix_list(&sec, "deny", r.deny.as_ref(), &name, vip, &allow)?;

    let health = match sec.table("health", &r.health)? {
        Some((table, span)) => {
            let sub = sec.sub("health", span);
            convert_check(&sub, table, CheckDefaults::Service(protocol))?
        }
        None => HealthCheck::default_for(protocol),
    };
    let failover = match sec.table("failover", &r.failover)? {
        Some((table, span)) => convert_failover(&sec, span, table)?,
        None => Failover::default(),
    };

    Ok(Service {
        name,
        vip,
        port,
        protocol,
        mode,
        primary,
        secondary,
        health,
        failover,
        allow,
        deny,
    })
}

/// An `allow` or `deny` list: distinct prefixes of the vip's family, at most
/// [`MAX_PREFIXES`], none of them in `other` (the `allow` list, for `deny`).
fn prefix_list(
    sec: &Section<'_>,
    key: &str,
    value: Option<&Spanned<RawValue>>,
    service: &str,
    vip: IpAddr,
    other: &[Prefix],
) -> Result<Vec<Prefix>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items = sec.array(key, value, "an array of prefixes such as [\"198.18.1.0/24\"]")?;
    if items.len() > MAX_PREFIXES {
        return Err(sec.invalid(
            key,
            &value.span(),
            format!(
                "{} prefixes listed, at most {MAX_PREFIXES} are allowed",
                items.len()
            ),
        ));
    }
    let mut prefixes = Vec::with_capacity(items.len());
    // Each prefix and how it was first written, to name both in a message.
    let mut seen: HashMap<Prefix, &str> = HashMap::with_capacity(items.len());
    for item in items {
        let span = item.span();
        let text = match item.get_ref() {
            toml::Value::String(text) => text.as_str(),
            other => {
                return Err(sec.invalid(
                    key,
                    &span,
                    format!(
                        "expected a prefix such as \"198.18.1.0/24\", found {}",
                        describe(other)
                    ),
                ));
            }
        };
        let prefix: Prefix = text
            .parse()
            .map_err(|e: PrefixError| sec.invalid(key, &span, e.to_string()))?;
        if prefix.is_ipv4() != vip.is_ipv4() {
            return Err(ConfigError::PrefixFamilyMismatch {
                at: sec.src.at(&span),
                service: service.to_owned(),
                key: key.to_owned(),
                prefix,
                vip,
            });
        }
        // The data plane keys IPv4 clients by their mapped form; no IPv6
        // client has such a source, so this is an IPv4 client in disguise.
        if prefix.is_ipv4_mapped() {
            return Err(sec.invalid(
                key,
                &span,
                format!(
                    "{text:?} is an IPv4-mapped IPv6 prefix; clients of an IPv6 vip are IPv6, list IPv4 \
                     clients on a service with an IPv4 vip"
                ),
            ));
        }
        if let Some(first) = seen.get(&prefix) {
            let same = if *first == text {
                String::new()
            } else {
                format!(" (as {first:?})")
            };
            return Err(sec.invalid(key, &span, format!("{text:?} is listed more than once{same}")));
        }
        if other.contains(&prefix) {
            return Err(sec.invalid(
                key,
                &span,
                format!("{text:?} is also in allow; a prefix in both lists is refused, keep it in one"),
            ));
        }
        seen.insert(prefix, text);
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

/// Probe kinds as spelled in the file; their keys are read once the kind is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KindName {
    Tcp,
    Http,
    Udp,
    Icmp,
    Exec,
}

impl KindName {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("tcp", Self::Tcp),
        ("http", Self::Http),
        ("udp", Self::Udp),
        ("icmp", Self::Icmp),
        ("exec", Self::Exec),
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Exec => "exec",
        }
    }
}

const FAILBACK_CHOICES: &[(&str, Failback)] = &[("auto", Failback::Auto), ("manual", Failback::Manual)];
const ALL_DOWN_CHOICES: &[(&str, AllDown)] = &[
    ("keep", AllDown::Keep),
    ("drop", AllDown::Drop),
    ("pass", AllDown::Pass),
];

/// Longest Unix socket path in bytes (`sun_path` holds 108 with the NUL).
const MAX_SOCKET_PATH_LEN: usize = 107;

/// A key that belongs to some probe kinds only: name, value, the kinds.
type KindKey<'a> = (&'static str, &'a Option<Spanned<RawValue>>, &'static [KindName]);

/// How a health table's absent keys are filled in.
#[derive(Clone, Copy)]
enum CheckDefaults {
    /// `[service.health]`: the kind follows the service's protocol, the timing
    /// the kind ([`ProbeKind::default_timing`]), rise and fall the defaults.
    Service(Protocol),
    /// `failback_gate`: `kind` is required, timing from
    /// [`ProbeKind::default_gate_timing`], rise = fall = 1.
    Gate,
}

/// Converts a health table: `[service.health]` or a `failback_gate`.
fn convert_check(
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
    let kind_keys: [KindKey<'_>; 4] = [
        ("path", &r.path, &[KindName::Http]),
        ("expect", &r.expect, &[KindName::Http, KindName::Udp]),
        ("send", &r.send, &[KindName::Udp]),
        ("command", &r.command, &[KindName::Exec]),
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
            command: exec_command(sec, sec.required("command", &r.command)?)?,
        },
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
        timeout,
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

/// An exec probe's `command`: program (absolute path) and arguments.
fn exec_command(sec: &Section<'_>, value: &Spanned<RawValue>) -> Result<Vec<String>, ConfigError> {
    let items = sec.array(
        "command",
        value,
        "an array of strings such as [\"/usr/local/bin/check\", \"arg\"]",
    )?;
    let mut command = Vec::with_capacity(items.len());
    for item in items {
        let arg = match item.get_ref() {
            toml::Value::String(arg) => arg,
            other => {
                return Err(sec.invalid(
                    "command",
                    &item.span(),
                    format!("expected a string, found {}", describe(other)),
                ));
            }
        };
        if arg.contains('\0') {
            return Err(sec.invalid(
                "command",
                &item.span(),
                format!("{arg:?} contains a NUL character"),
            ));
        }
        command.push(arg.clone());
    }
    match command.first() {
        None => Err(sec.invalid(
            "command",
            &value.span(),
            "must name the program to run, e.g. [\"/usr/local/bin/check\"]",
        )),
        Some(program) if !program.starts_with('/') => Err(sec.invalid(
            "command",
            &value.span(),
            format!("program {program:?} must be an absolute path"),
        )),
        Some(_) => Ok(command),
    }
}

/// Converts `[service.failover]`; `service` is the service's section.
fn convert_failover(
    service: &Section<'_>,
    span: Range<usize>,
    r: &RawFailover,
) -> Result<Failover, ConfigError> {
    let sec = service.sub("failover", span);
    sec.unknown_keys(&r.unknown, RawFailover::KEYS)?;
    let defaults = Failover::default();
    let failback = match &r.failback {
        Some(v) => sec.choice("failback", v, FAILBACK_CHOICES)?,
        None => defaults.failback,
    };
    let failback_delay = match &r.failback_delay {
        Some(v) => sec.duration("failback_delay", v, Duration::ZERO..=MAX_FAILBACK_DELAY)?,
        None => defaults.failback_delay,
    };
    let all_down = match &r.all_down {
        Some(v) => sec.choice("all_down", v, ALL_DOWN_CHOICES)?,
        None => defaults.all_down,
    };
    let share = match &r.share {
        Some(v) => sec.ranged("share", v, SHARE_RANGE)?,
        None => defaults.share,
    };
    let flap_hold = match &r.flap_hold {
        Some(v) => sec.duration("flap_hold", v, Duration::ZERO..=MAX_FAILBACK_DELAY)?,
        None => defaults.flap_hold,
    };
    let failback_gate = match sec.table("failback_gate", &r.failback_gate)? {
        // Named after the service alone: `failback_gate` is a unique key.
        Some((table, span)) => Some(convert_check(
            &service.sub("failback_gate", span),
            table,
            CheckDefaults::Gate,
        )?),
        None => None,
    };
    Ok(Failover {
        failback,
        failback_delay,
        all_down,
        share,
        flap_hold,
        failback_gate,
    })
}

fn convert_control(src: &Source<'_>, raw: Option<&Spanned<RawControl>>) -> Result<Control, ConfigError> {
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
        Some(v) => {
            let socket = sec.absolute_path("socket", v)?;
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH_LEN {
                return Err(sec.invalid(
                    "socket",
                    &v.span(),
                    format!(
                        "{socket:?} is {len} bytes long, a Unix socket path can be at most \
                         {MAX_SOCKET_PATH_LEN}"
                    ),
                ));
            }
            socket
        }
        None => defaults.socket,
    };
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
    })
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

impl Config {
    /// Reads and validates the configuration file at `path`.
    ///
    /// Error messages name `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_named(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text.
    ///
    /// `origin` is used in error messages in place of a file path.
    pub fn from_str_named(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let src = Source { origin, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        let gateway_raw = raw.gateway.ok_or_else(|| ConfigError::MissingGateway {
            origin: origin.to_owned(),
        })?;
        let gateway = convert_gateway(&src, &gateway_raw)?;

        let mut services = Vec::with_capacity(raw.service.0.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut tuples: HashMap<(IpAddr, u16, Protocol), (String, usize)> = HashMap::new();
        let mut nat_backends: HashMap<(IpAddr, u16, Protocol), (String, usize)> = HashMap::new();
        for (index, raw_service) in raw.service.0.iter().enumerate() {
            let service = convert_service(&src, index, raw_service)?;
            let span = raw_service.span();
            let line = src.line_of(span.start);
            if let Some(&first_line) = names.get(&service.name) {
                return Err(ConfigError::DuplicateName {
                    at: src.at(&span),
                    name: service.name,
                    first_line,
                });
            }
            let tuple = (service.vip, service.port, service.protocol);
            if let Some((other, other_line)) = tuples.get(&tuple) {
                return Err(ConfigError::DuplicateService {
                    at: src.at(&span),
                    service: service.name,
                    other: other.clone(),
                    other_line: *other_line,
                    vip: service.vip,
                    port: service.port,
                    protocol: service.protocol,
                });
            }
            if service.mode == Mode::Nat {
                for be in [&service.primary, &service.secondary] {
                    let key = (be.addr, be.port.unwrap_or(service.port), service.protocol);
                    if let Some((other, other_line)) = nat_backends.get(&key) {
                        return Err(ConfigError::SharedNatBackend {
                            at: src.at(&span),
                            service: service.name,
                            other: other.clone(),
                            other_line: *other_line,
                            backend: Backend {
                                addr: key.0,
                                port: Some(key.1),
                            },
                            protocol: service.protocol,
                        });
                    }
                }
                for be in [&service.primary, &service.secondary] {
                    let key = (be.addr, be.port.unwrap_or(service.port), service.protocol);
                    nat_backends.insert(key, (service.name.clone(), line));
                }
            }
            names.insert(service.name.clone(), line);
            tuples.insert(tuple, (service.name.clone(), line));
            services.push(service);
        }

        let max = gateway.max_services;
        if !u32::try_from(services.len()).is_ok_and(|n| n <= max) {
            let span = match &gateway_raw.get_ref().max_services {
                Some(v) => v.span(),
                None => gateway_raw.span(),
            };
            return Err(ConfigError::TooManyServices {
                at: src.at(&span),
                count: services.len(),
                max,
            });
        }

        for (list, count) in [
            ("allow", services.iter().map(|s| s.allow.len()).sum::<usize>()),
            ("deny", services.iter().map(|s| s.deny.len()).sum()),
        ] {
            let max = redirector_common::DEFAULT_ACL_ENTRIES;
            if !u32::try_from(count).is_ok_and(|n| n <= max) {
                return Err(ConfigError::TooManyPrefixes {
                    origin: origin.to_owned(),
                    list,
                    count,
                    max,
                });
            }
        }

        let control = convert_control(&src, raw.control.as_ref())?;

        Ok(Config {
            gateway,
            services,
            control,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    const GATEWAY: &str = "[gateway]\ninterfaces = [\"eth0\"]\n";

    fn err(text: &str) -> String {
        match Config::from_str_named(text, "test.toml") {
            Ok(cfg) => panic!("expected an error, got {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts that the message contains each of `parts`.
    fn assert_contains(msg: &str, parts: &[&str]) {
        for part in parts {
            assert!(msg.contains(part), "{msg:?} does not contain {part:?}");
        }
    }

    /// A gateway plus one service (starting at line 3) with `extra` lines
    /// appended to it.
    fn one_service(extra: &str) -> String {
        format!("{GATEWAY}[[service]]\n{extra}")
    }

    const SVC: &str = "name = \"web\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n";

    #[test]
    fn full_example() {
        let text = r#"
[gateway]
interfaces = ["eth0", "eth1"]
xdp_mode = "driver"
flow_table_size = 1024

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2"
secondary = "198.18.3.2:8080"

[[service]]
name = "dns6"
vip = "2001:2::100"
port = 53
protocol = "udp"
mode = "dsr"
primary = "[2001:2::2]:53"
secondary = "[2001:2::3]"

[[service]]
name = "app-v6.remap"
vip = "2001:2::100"
port = 443
protocol = "tcp"
primary = "[2001:2::2]:8443"
secondary = "2001:2::1:80"
"#;
        let cfg = Config::from_str_named(text, "test.toml").expect("valid config");
        assert_eq!(
            cfg.gateway,
            Gateway {
                interfaces: vec!["eth0".to_owned(), "eth1".to_owned()],
                xdp_mode: XdpModeSetting::Driver,
                flow_table_size: 1024,
                max_services: DEFAULT_MAX_SERVICES,
                tcp_flow_idle: DEFAULT_TCP_FLOW_IDLE,
                udp_flow_idle: DEFAULT_UDP_FLOW_IDLE,
                icmp_echo: IcmpEcho::Answer,
            }
        );
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().expect("v6"));
        let v4 = |s: &str| IpAddr::V4(s.parse::<Ipv4Addr>().expect("v4"));
        assert_eq!(
            cfg.services,
            vec![
                Service {
                    name: "web".to_owned(),
                    vip: v4("198.18.100.1"),
                    port: 80,
                    protocol: Protocol::Tcp,
                    mode: Mode::Nat,
                    primary: Backend {
                        addr: v4("198.18.2.2"),
                        port: None
                    },
                    secondary: Backend {
                        addr: v4("198.18.3.2"),
                        port: Some(8080)
                    },
                    health: HealthCheck::default_for(Protocol::Tcp),
                    failover: Failover::default(),
                    allow: Vec::new(),
                    deny: Vec::new(),
                },
                Service {
                    name: "dns6".to_owned(),
                    vip: v6("2001:2::100"),
                    port: 53,
                    protocol: Protocol::Udp,
                    mode: Mode::Dsr,
                    // port 53 == service port: normalised to no remap
                    primary: Backend {
                        addr: v6("2001:2::2"),
                        port: None
                    },
                    secondary: Backend {
                        addr: v6("2001:2::3"),
                        port: None
                    },
                    health: HealthCheck::default_for(Protocol::Udp),
                    failover: Failover::default(),
                    allow: Vec::new(),
                    deny: Vec::new(),
                },
                Service {
                    name: "app-v6.remap".to_owned(),
                    vip: v6("2001:2::100"),
                    port: 443,
                    protocol: Protocol::Tcp,
                    mode: Mode::Nat,
                    primary: Backend {
                        addr: v6("2001:2::2"),
                        port: Some(8443)
                    },
                    // "2001:2::1:80" is a plain IPv6 address
                    secondary: Backend {
                        addr: v6("2001:2::1:80"),
                        port: None
                    },
                    health: HealthCheck::default_for(Protocol::Tcp),
                    failover: Failover::default(),
                    allow: Vec::new(),
                    deny: Vec::new(),
                },
            ]
        );
        assert_eq!(cfg.services[0].secondary.to_string(), "198.18.3.2:8080");
        assert_eq!(cfg.services[2].primary.to_string(), "[2001:2::2]:8443");
        assert_eq!(cfg.services[1].primary.to_string(), "2001:2::2");
        assert_eq!(Protocol::Tcp.number(), 6);
        assert_eq!(Protocol::Udp.number(), 17);
    }

    #[test]
    fn defaults_and_no_services() {
        let cfg = Config::from_str_named(GATEWAY, "test.toml").expect("valid config");
        assert_eq!(cfg.gateway.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(cfg.gateway.flow_table_size, DEFAULT_FLOW_TABLE_SIZE);
        assert_eq!(cfg.gateway.max_services, DEFAULT_MAX_SERVICES);
        assert!(cfg.services.is_empty());
    }

    #[test]
    fn from_file_reads_and_names_path() {
        let dir = std::env::temp_dir().join(format!("redirector-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("config.toml");
        std::fs::write(&path, format!("{GATEWAY}bogus = 1\n")).expect("write");
        let msg = Config::from_file(&path).expect_err("error").to_string();
        assert_contains(&msg, &[&format!("{}:3:", path.display()), "\"bogus\""]);
        std::fs::write(&path, GATEWAY).expect("write");
        assert!(Config::from_file(&path).is_ok());
        std::fs::remove_dir_all(&dir).expect("cleanup");

        let missing = dir.join("missing.toml");
        let e = Config::from_file(&missing).expect_err("error");
        assert!(matches!(e, ConfigError::Read { .. }));
        assert_contains(&e.to_string(), &["missing.toml", "cannot read"]);
    }

    #[test]
    fn unknown_key_in_gateway() {
        let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nflow_table = 1024\n");
        assert_contains(
            &msg,
            &[
                "test.toml:3:",
                "unknown key \"flow_table\"",
                "\"flow_table_size\"",
            ],
        );
    }

    #[test]
    fn unknown_key_in_service() {
        let msg = err(&one_service(&format!(
            "{SVC}primary = \"198.18.2.2\"\nweight = 3\n"
        )));
        assert_contains(&msg, &["test.toml:9:", "unknown key \"weight\""]);
    }

    #[test]
    fn unknown_top_level_table() {
        let msg = err(&format!("{GATEWAY}[services]\n"));
        assert_contains(&msg, &["test.toml:3:", "unknown key \"services\""]);
    }

    #[test]
    fn syntax_error() {
        let msg = err("[gateway]\ninterfaces = [\"eth0\"\n");
        assert_contains(&msg, &["test.toml:"]);
        assert!(!msg.contains('\n'), "{msg:?}");
    }

    #[test]
    fn duplicate_key() {
        let msg = err(&format!("{GATEWAY}interfaces = [\"eth1\"]\n"));
        assert_eq!(msg, "test.toml:3: duplicate key \"interfaces\"");
    }

    #[test]
    fn bad_vip() {
        let msg = err(&one_service(
            "name = \"web\"\nvip = \"198.18.300.1\"\nport = 80\n",
        ));
        assert_contains(
            &msg,
            &["test.toml:5:", "service \"web\"", "key \"vip\"", "198.18.300.1"],
        );
    }

    #[test]
    fn bad_mode() {
        let msg = err(&one_service(&format!("{SVC}mode = \"nta\"\n")));
        assert_eq!(
            msg,
            "test.toml:8: service \"web\": key \"mode\": unknown value \"nta\", expected \"nat\" or \"dsr\""
        );
    }

    #[test]
    fn bad_protocol() {
        let msg = err(&one_service(
            "name = \"web\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"sctp\"\n",
        ));
        assert_contains(
            &msg,
            &[
                "test.toml:7:",
                "service \"web\"",
                "key \"protocol\"",
                "\"sctp\"",
                "\"tcp\" or \"udp\"",
            ],
        );
    }

    #[test]
    fn bad_xdp_mode() {
        let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\n");
        assert_eq!(
            msg,
            "test.toml:3: [gateway]: key \"xdp_mode\": unknown value \"native\", expected \"auto\", \"driver\" or \"skb\""
        );
    }

    #[test]
    fn wrong_type() {
        let msg = err(&one_service(
            "name = \"web\"\nvip = \"198.18.100.1\"\nport = \"80\"\n",
        ));
        assert_contains(
            &msg,
            &[
                "test.toml:6:",
                "key \"port\"",
                "expected an integer",
                "string \"80\"",
            ],
        );
    }

    #[test]
    fn port_zero() {
        let msg = err(&one_service("name = \"web\"\nvip = \"198.18.100.1\"\nport = 0\n"));
        assert_contains(
            &msg,
            &[
                "test.toml:6:",
                "service \"web\"",
                "key \"port\"",
                "0 is out of range",
                "1..=65535",
            ],
        );
    }

    #[test]
    fn port_too_large() {
        let msg = err(&one_service(
            "name = \"web\"\nvip = \"198.18.100.1\"\nport = 70000\n",
        ));
        assert_contains(
            &msg,
            &[
                "test.toml:6:",
                "service \"web\"",
                "key \"port\"",
                "70000 is out of range",
            ],
        );
    }

    #[test]
    fn backend_port_out_of_range() {
        let msg = err(&one_service(&format!("{SVC}primary = \"198.18.2.2:70000\"\n")));
        assert_contains(
            &msg,
            &["test.toml:8:", "key \"primary\"", "70000", "out of range"],
        );
    }

    #[test]
    fn gateway_ranges() {
        let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nflow_table_size = 100\n");
        assert_contains(
            &msg,
            &["test.toml:3:", "key \"flow_table_size\"", "1024..=16777216"],
        );
        let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nmax_services = 70000\n");
        assert_contains(&msg, &["test.toml:3:", "key \"max_services\"", "1024..=65536"]);
    }

    #[test]
    fn missing_key() {
        let msg = err(&one_service("name = \"web\"\nvip = \"198.18.100.1\"\n"));
        assert_contains(
            &msg,
            &["test.toml:3:", "service \"web\"", "missing required key \"port\""],
        );
    }

    #[test]
    fn family_mismatch() {
        let msg = err(&one_service(&format!(
            "{SVC}primary = \"198.18.2.2\"\nsecondary = \"2001:2::3\"\n"
        )));
        assert_contains(
            &msg,
            &[
                "test.toml:9:",
                "service \"web\"",
                "key \"secondary\"",
                "IPv6",
                "IPv4",
            ],
        );
    }

    #[test]
    fn same_backends() {
        // Port equal to the service port is normalised, so these are the same.
        let msg = err(&one_service(&format!(
            "{SVC}primary = \"198.18.2.2\"\nsecondary = \"198.18.2.2:80\"\n"
        )));
        assert_contains(
            &msg,
            &["test.toml:9:", "service \"web\"", "same backend as primary"],
        );
    }

    #[test]
    fn backend_is_vip() {
        let msg = err(&one_service(&format!("{SVC}primary = \"198.18.100.1:8080\"\n")));
        assert_contains(
            &msg,
            &["test.toml:8:", "service \"web\"", "key \"primary\"", "own vip"],
        );
    }

    #[test]
    fn dsr_port_remap() {
        let msg = err(&one_service(&format!(
            "{SVC}mode = \"dsr\"\nprimary = \"198.18.2.2:8080\"\nsecondary = \"198.18.3.2\"\n"
        )));
        assert_contains(
            &msg,
            &[
                "test.toml:9:",
                "service \"web\"",
                "key \"primary\"",
                "dsr rewrites only L2; remove the port from primary/secondary or use mode = \"nat\"",
            ],
        );
    }

    #[test]
    fn duplicate_service_tuple() {
        let text = format!(
            "{GATEWAY}[[service]]\n{SVC}primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\
             [[service]]\nname = \"web2\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
             primary = \"198.18.2.3\"\nsecondary = \"198.18.3.3\"\n"
        );
        let msg = err(&text);
        assert_contains(
            &msg,
            &[
                "test.toml:10:",
                "service \"web2\"",
                "198.18.100.1 80/tcp",
                "service \"web\" at line 3",
            ],
        );
        // Same vip and port with another protocol is fine.
        let ok = text.replacen(
            "protocol = \"tcp\"\nprimary = \"198.18.2.3\"",
            "protocol = \"udp\"\nprimary = \"198.18.2.3\"",
            1,
        );
        assert!(Config::from_str_named(&ok, "test.toml").is_ok());
    }

    #[test]
    fn duplicate_name() {
        let text = format!(
            "{GATEWAY}[[service]]\n{SVC}primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\
             [[service]]\n{}primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n",
            SVC.replace("port = 80", "port = 443")
        );
        let msg = err(&text);
        assert_contains(
            &msg,
            &[
                "test.toml:10:",
                "service \"web\"",
                "duplicate service name",
                "line 3",
            ],
        );
    }

    #[test]
    fn bad_service_name() {
        let msg = err(&one_service("name = \"web site\"\n"));
        assert_contains(&msg, &["test.toml:4:", "service #1", "key \"name\"", "' '"]);
    }

    #[test]
    fn missing_gateway() {
        let msg = err("[[service]]\nname = \"web\"\n");
        assert_eq!(msg, "test.toml: missing required [gateway] table");
    }

    #[test]
    fn empty_interfaces() {
        let msg = err("\n[gateway]\ninterfaces = []\n");
        assert_contains(
            &msg,
            &["test.toml:3:", "[gateway]", "key \"interfaces\"", "at least one"],
        );
    }

    #[test]
    fn invalid_ifname() {
        let msg = err("[gateway]\ninterfaces = [\n  \"eth0\",\n  \"eth/1\",\n]\n");
        assert_contains(&msg, &["test.toml:4:", "key \"interfaces\"", "\"eth/1\""]);
        let msg = err("[gateway]\ninterfaces = [\"averyveryverylongname\"]\n");
        assert_contains(&msg, &["test.toml:2:", "key \"interfaces\"", "maximum is 15"]);
        for bad in ["", ".", "..", "eth 0", "eth0:1"] {
            let msg = err(&format!("[gateway]\ninterfaces = [\"{bad}\"]\n"));
            assert_contains(&msg, &["test.toml:2:", "key \"interfaces\""]);
        }
        let msg = err("[gateway]\ninterfaces = [\"eth0\", \"eth0\"]\n");
        assert_contains(&msg, &["test.toml:2:", "more than once"]);
    }

    #[test]
    fn ipv6_backend_forms() {
        let cases = [
            (
                "2001:2::1:80",
                Backend {
                    addr: "2001:2::1:80".parse().expect("ip"),
                    port: None,
                },
            ),
            (
                "[2001:2::1]:8080",
                Backend {
                    addr: "2001:2::1".parse().expect("ip"),
                    port: Some(8080),
                },
            ),
            (
                "[2001:2::1]",
                Backend {
                    addr: "2001:2::1".parse().expect("ip"),
                    port: None,
                },
            ),
        ];
        for (form, want) in cases {
            let text = one_service(&format!(
                "name = \"v6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\n\
                 primary = \"{form}\"\nsecondary = \"2001:2::3\"\n"
            ));
            let cfg = Config::from_str_named(&text, "test.toml").expect(form);
            assert_eq!(cfg.services[0].primary, want, "{form}");
        }
        let msg = err(&one_service(&format!("{SVC}primary = \"[198.18.2.2]:80\"\n")));
        assert_contains(&msg, &["test.toml:8:", "key \"primary\"", "not an IPv6 address"]);
    }

    #[test]
    fn scoped_ipv6_rejected() {
        let msg = err(&one_service(
            "name = \"v6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\nprimary = \"fe80::1%eth0\"\n",
        ));
        assert_contains(
            &msg,
            &[
                "test.toml:8:",
                "service \"v6\"",
                "key \"primary\"",
                "scoped",
                "%eth0",
            ],
        );
        let msg = err(&one_service("name = \"v6\"\nvip = \"fe80::1%eth0\"\n"));
        assert_contains(&msg, &["test.toml:5:", "key \"vip\"", "scoped"]);
        let msg = err(&one_service(
            "name = \"v6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\nprimary = \"[fe80::1%eth0]:80\"\n",
        ));
        assert_contains(&msg, &["test.toml:8:", "scoped", "\"%eth0\""]);
    }

    #[test]
    fn too_many_services() {
        let mut text = String::from("[gateway]\ninterfaces = [\"eth0\"]\nmax_services = 1024\n");
        for i in 0..1025u32 {
            text.push_str(&format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"198.18.100.1\"\nport = {}\nprotocol = \"tcp\"\n\
                 primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n",
                i + 1
            ));
        }
        let msg = err(&text);
        assert_contains(&msg, &["test.toml:3:", "max_services", "1025 services"]);
    }

    #[test]
    fn nat_services_cannot_share_a_backend_endpoint() {
        let text = format!(
            "{GATEWAY}\n[[service]]\nname = \"web1\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
             primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\n[[service]]\nname = \"web2\"\n\
             vip = \"198.18.100.2\"\nport = 80\nprotocol = \"tcp\"\nprimary = \"198.18.3.2:80\"\n\
             secondary = \"198.18.2.2:8080\"\n"
        );
        let err = Config::from_str_named(&text, "gw.toml").expect_err("shared backend");
        let msg = err.to_string();
        assert!(
            msg.contains("gw.toml:12:") && msg.contains("web2") && msg.contains("web1"),
            "{msg}"
        );
        assert!(msg.contains("198.18.3.2:80"), "{msg}");
        // Another port, another protocol or DSR are fine.
        let ok = text.replace("198.18.3.2:80\"", "198.18.3.2:81\"");
        Config::from_str_named(&ok, "gw.toml").expect("different port");
        let ok = text.replacen("protocol = \"tcp\"", "protocol = \"udp\"", 1);
        Config::from_str_named(&ok, "gw.toml").expect("different protocol");
    }

    // -----------------------------------------------------------------------
    // [service.health], [service.failover], [control]
    // -----------------------------------------------------------------------

    /// Backends completing `SVC`; with it the service spans lines 3..=9.
    const BACKENDS: &str = "primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n";

    /// One tcp service "web" and a `[service.<table>]` at line 10; `body`
    /// starts at line 11.
    fn with_table(table: &str, body: &str) -> String {
        format!("{GATEWAY}[[service]]\n{SVC}{BACKENDS}[service.{table}]\n{body}")
    }

    fn health_err(body: &str) -> String {
        err(&with_table("health", body))
    }

    fn failover_err(body: &str) -> String {
        err(&with_table("failover", body))
    }

    /// `[control]` at line 3; `body` starts at line 4.
    fn control_err(body: &str) -> String {
        err(&format!("{GATEWAY}[control]\n{body}"))
    }

    fn parse(text: &str) -> Config {
        match Config::from_str_named(text, "test.toml") {
            Ok(cfg) => cfg,
            Err(e) => panic!("{e}"),
        }
    }

    fn health_of(body: &str) -> HealthCheck {
        parse(&with_table("health", body)).services[0].health.clone()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn control_sections_full_example() {
        let text = r#"[gateway]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2"
secondary = "198.18.3.2"

[service.health]
kind = "http"
interval = "500us"
timeout = "1.5s"
rise = 4
fall = 5
path = "/healthz?full=1"
expect = [200, 204]

[service.failover]
failback = "manual"
failback_delay = "2m"
all_down = "drop"
share = 25
flap_hold = "10s"

[service.failover.failback_gate]
kind = "exec"
command = ["/usr/local/bin/check", "--ready"]
interval = "2s"
timeout = "750ms"
rise = 2
fall = 3

[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2"
health = { send = "ping", expect = "pong", interval = "10ms", timeout = "20ms", rise = 1, fall = 1 }
failover = { all_down = "pass", failback_delay = "0s", failback_gate = { kind = "icmp" } }

[[service]]
name = "ssh"
vip = "198.18.100.1"
port = 22
protocol = "tcp"
primary = "198.18.2.2"
secondary = "198.18.3.2"
[service.health]
kind = "icmp"
[service.failover]
failback_gate = { kind = "http", path = "/ready", expect = [200], interval = "100ms", timeout = "50ms" }

[control]
socket = "/run/redirector/ctl.sock"
state_dir = "/var/lib/redirector-test"
bpffs_dir = "/sys/fs/bpf/redirector-test"
metrics = "[::1]:9630"
probe_budget = 100000
"#;
        let cfg = parse(text);
        let web = &cfg.services[0];
        assert_eq!(
            web.health,
            HealthCheck {
                kind: ProbeKind::Http {
                    path: "/healthz?full=1".to_owned(),
                    expect: vec![200, 204],
                },
                interval: Duration::from_micros(500),
                timeout: ms(1500),
                rise: 4,
                fall: 5,
            }
        );
        assert_eq!(
            web.failover,
            Failover {
                failback: Failback::Manual,
                failback_delay: Duration::from_secs(120),
                all_down: AllDown::Drop,
                share: 25,
                flap_hold: Duration::from_secs(10),
                failback_gate: Some(HealthCheck {
                    kind: ProbeKind::Exec {
                        command: vec!["/usr/local/bin/check".to_owned(), "--ready".to_owned()],
                    },
                    interval: ms(2000),
                    timeout: ms(750),
                    rise: 2,
                    fall: 3,
                }),
            }
        );
        let dns = &cfg.services[1];
        assert_eq!(
            dns.health,
            HealthCheck {
                kind: ProbeKind::Udp {
                    send: b"ping".to_vec(),
                    expect: Some(b"pong".to_vec()),
                },
                interval: ms(10),
                timeout: ms(20),
                rise: 1,
                fall: 1,
            }
        );
        assert_eq!(
            dns.failover,
            Failover {
                failback: Failback::Auto,
                failback_delay: Duration::ZERO,
                all_down: AllDown::Pass,
                share: 0,
                flap_hold: DEFAULT_FLAP_HOLD,
                failback_gate: Some(HealthCheck {
                    kind: ProbeKind::Icmp,
                    interval: DEFAULT_GATE_INTERVAL,
                    timeout: DEFAULT_GATE_TIMEOUT,
                    rise: 1,
                    fall: 1,
                }),
            }
        );
        let ssh = &cfg.services[2];
        assert_eq!(ssh.health.kind, ProbeKind::Icmp);
        assert_eq!(
            ssh.failover.failback_gate,
            Some(HealthCheck {
                kind: ProbeKind::Http {
                    path: "/ready".to_owned(),
                    expect: vec![200],
                },
                interval: ms(100),
                timeout: ms(50),
                rise: 1,
                fall: 1,
            })
        );
        assert_eq!(
            cfg.control,
            Control {
                socket: PathBuf::from("/run/redirector/ctl.sock"),
                state_dir: PathBuf::from("/var/lib/redirector-test"),
                bpffs_dir: PathBuf::from("/sys/fs/bpf/redirector-test"),
                metrics: Some("[::1]:9630".parse().expect("addr")),
                probe_budget: 100_000,
            }
        );
    }

    #[test]
    fn control_sections_defaults() {
        let text = format!(
            "{GATEWAY}[[service]]\n{SVC}{BACKENDS}[[service]]\nname = \"dns\"\nvip = \"198.18.100.1\"\n\
             port = 53\nprotocol = \"udp\"\n{BACKENDS}"
        );
        let cfg = parse(&text);
        let tcp = HealthCheck {
            kind: ProbeKind::Tcp,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        };
        assert_eq!(cfg.services[0].health, tcp);
        assert_eq!(
            cfg.services[1].health,
            HealthCheck {
                kind: ProbeKind::Udp {
                    send: DEFAULT_UDP_SEND.to_vec(),
                    expect: None,
                },
                ..tcp.clone()
            }
        );
        let failover = Failover {
            failback: Failback::Auto,
            failback_delay: DEFAULT_FAILBACK_DELAY,
            all_down: AllDown::Keep,
            share: 0,
            flap_hold: DEFAULT_FLAP_HOLD,
            failback_gate: None,
        };
        assert_eq!(cfg.services[0].failover, failover);
        assert_eq!(cfg.services[1].failover, failover);
        assert_eq!(cfg.control, Control::default());
        assert_eq!(cfg.control.probe_budget, DEFAULT_PROBE_BUDGET);
        assert_eq!(cfg.control.metrics, None);

        // Empty tables are the same as absent ones.
        assert_eq!(health_of(""), tcp);
        assert_eq!(parse(&with_table("failover", "")).services[0].failover, failover);
        assert_eq!(
            parse(&format!("{GATEWAY}[control]\n")).control,
            Control::default()
        );
    }

    #[test]
    fn timing_defaults_follow_the_kind() {
        let exec = health_of("kind = \"exec\"\ncommand = [\"/bin/true\"]\n");
        assert_eq!(
            (exec.interval, exec.timeout),
            (DEFAULT_EXEC_INTERVAL, DEFAULT_EXEC_TIMEOUT)
        );
        assert_eq!(exec.interval, Duration::from_secs(1));
        let http = health_of("kind = \"http\"\n");
        assert_eq!(
            http.kind,
            ProbeKind::Http {
                path: "/".to_owned(),
                expect: vec![200],
            }
        );
        assert_eq!(
            (http.interval, http.timeout),
            (DEFAULT_HTTP_INTERVAL, DEFAULT_HTTP_TIMEOUT)
        );
        let icmp = health_of("kind = \"icmp\"\nrise = 1\n");
        assert_eq!(
            (icmp.interval, icmp.timeout, icmp.rise),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, 1)
        );
        // Setting one of the two keeps the other's default.
        let half = health_of("kind = \"exec\"\ncommand = [\"/bin/true\"]\ninterval = \"3s\"\n");
        assert_eq!(
            (half.interval, half.timeout),
            (Duration::from_secs(3), DEFAULT_EXEC_TIMEOUT)
        );
        // A timeout longer than the interval is allowed: probes overlap.
        let overlap = health_of("interval = \"1ms\"\ntimeout = \"60s\"\n");
        assert_eq!(
            (overlap.interval, overlap.timeout),
            (ms(1), Duration::from_secs(60))
        );

        // Gates: the slower of the gate defaults and the kind's, rise = fall = 1.
        let gate = |kind: &str| {
            parse(&with_table(
                "failover",
                &format!("failback_gate = {{ {kind} }}\n"),
            ))
            .services[0]
                .failover
                .failback_gate
                .clone()
                .expect("gate")
        };
        let tcp = gate("kind = \"tcp\"");
        assert_eq!(
            (tcp.interval, tcp.timeout, tcp.rise, tcp.fall),
            (DEFAULT_GATE_INTERVAL, DEFAULT_GATE_TIMEOUT, 1, 1)
        );
        let exec = gate("kind = \"exec\", command = [\"/bin/true\"]");
        assert_eq!(
            (exec.interval, exec.timeout),
            (DEFAULT_EXEC_INTERVAL, DEFAULT_EXEC_TIMEOUT)
        );
        let udp = gate("kind = \"udp\"");
        assert_eq!(
            udp.kind,
            ProbeKind::Udp {
                send: DEFAULT_UDP_SEND.to_vec(),
                expect: None
            }
        );
    }

    #[test]
    fn health_table_attaches_to_the_last_service() {
        let text = format!(
            "{GATEWAY}[[service]]\n{SVC}{BACKENDS}\n[[service]]\nname = \"b\"\nvip = \"198.18.100.1\"\n\
             port = 81\nprotocol = \"tcp\"\nprimary = \"198.18.2.3\"\nsecondary = \"198.18.3.3\"\n\
             [service.health]\nrise = 7\n"
        );
        let cfg = parse(&text);
        assert_eq!(cfg.services[0].health.rise, DEFAULT_RISE);
        assert_eq!(cfg.services[1].health.rise, 7);
        // The error points into the sub-table and names the second service.
        let msg = err(&text.replace("rise = 7", "rise = 0"));
        assert_eq!(
            msg,
            "test.toml:19: service \"b\" health: key \"rise\": 0 is out of range, expected 1..=100"
        );
        // A health table before any [[service]] is not an array of services.
        let msg = err(&format!("{GATEWAY}[service.health]\nrise = 1\n"));
        assert_contains(&msg, &["test.toml:3:", "[[service]]"]);
        // Two health tables for one service.
        let msg = err(&with_table("health", "rise = 1\n[service.health]\nfall = 1\n"));
        assert_contains(&msg, &["test.toml:12:", "duplicate key"]);
    }

    #[test]
    fn docs_example_parses() {
        let text = include_str!("../../../docs/examples/redirector.toml");
        let cfg = parse(text);
        let kinds: Vec<&str> = cfg.services.iter().map(|s| s.health.kind.as_str()).collect();
        assert_eq!(kinds, ["http", "udp", "exec"]);
        assert!(cfg.services[0].failover.failback_gate.is_some());
        assert_eq!(cfg.services[2].failover.failback, Failback::Manual);
        assert_eq!(cfg.control.metrics, Some("127.0.0.1:9630".parse().expect("addr")));
    }

    // Unknown keys.

    #[test]
    fn unknown_key_in_health() {
        let msg = health_err("rise = 2\nretries = 3\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" health: unknown key \"retries\", expected one of \"kind\", \
             \"interval\", \"timeout\", \"rise\", \"fall\", \"path\", \"expect\", \"send\", \"command\""
        );
    }

    #[test]
    fn unknown_key_in_failover() {
        let msg = failover_err("share = 1\nfailback_dealy = \"1s\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:12:",
                "service \"web\" failover: ",
                "unknown key \"failback_dealy\"",
                "\"failback\", \"failback_delay\", \"all_down\", \"share\", \"flap_hold\", \"failback_gate\"",
            ],
        );
    }

    #[test]
    fn unknown_key_in_failback_gate() {
        let msg = failover_err("\nfailback_gate = { kind = \"tcp\", port = 81 }\n");
        assert_contains(
            &msg,
            &[
                "test.toml:12:",
                "service \"web\" failback_gate: ",
                "unknown key \"port\"",
                "\"kind\", \"interval\"",
            ],
        );
        let msg = failover_err("[service.failover.failback_gate]\nkind = \"tcp\"\nbogus = 1\n");
        assert_contains(
            &msg,
            &[
                "test.toml:13:",
                "service \"web\" failback_gate: ",
                "unknown key \"bogus\"",
            ],
        );
    }

    #[test]
    fn unknown_key_stays_on_one_line() {
        // A quoted key may hold any character; the message escapes it.
        let msg = err(&format!("\"a\\nb\" = 1\n{GATEWAY}"));
        assert_eq!(
            msg,
            "test.toml:1: unknown key \"a\\nb\", expected one of \"gateway\", \"service\", \"control\""
        );
        let msg = err(&format!("{GATEWAY}\"x\\ty\" = 1\n"));
        assert_contains(&msg, &["test.toml:3: [gateway]: unknown key \"x\\ty\""]);
    }

    #[test]
    fn unknown_key_in_control() {
        let msg = control_err("socket = \"/run/r.sock\"\nmetric = \"127.0.0.1:9630\"\n");
        assert_eq!(
            msg,
            "test.toml:5: [control]: unknown key \"metric\", expected one of \"socket\", \"state_dir\", \
             \"bpffs_dir\", \"metrics\", \"probe_budget\""
        );
    }

    #[test]
    fn unknown_key_names_the_service_and_the_gateway() {
        let msg = err(&one_service(&format!(
            "{SVC}{BACKENDS}helth = {{ kind = \"tcp\" }}\n"
        )));
        assert_contains(
            &msg,
            &[
                "test.toml:10:",
                "service \"web\": unknown key \"helth\"",
                "\"health\"",
            ],
        );
        // An unusable name: the service is named by its position.
        let msg = err(&one_service("name = \"a b\"\nweight = 1\n"));
        assert_contains(&msg, &["test.toml:5:", "service #1: unknown key \"weight\""]);
        let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nflow_table = 1024\n");
        assert_contains(&msg, &["test.toml:3: [gateway]: unknown key \"flow_table\""]);
    }

    // Wrong types.

    #[test]
    fn table_key_with_a_scalar() {
        let msg = err(&one_service(&format!("{SVC}{BACKENDS}health = \"tcp\"\n")));
        assert_eq!(
            msg,
            "test.toml:10: service \"web\": key \"health\": expected a table, found string \"tcp\""
        );
        let msg = err(&one_service(&format!("{SVC}{BACKENDS}failover = [1]\n")));
        assert_contains(
            &msg,
            &[
                "test.toml:10:",
                "service \"web\"",
                "key \"failover\"",
                "found an array",
            ],
        );
        let msg = failover_err("failback_gate = true\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"web\" failover",
                "key \"failback_gate\"",
                "found boolean true",
            ],
        );
        let msg = err(&one_service(&format!("{SVC}{BACKENDS}health = 1979-05-27\n")));
        assert_contains(&msg, &["test.toml:10:", "datetime", "health check table"]);
        let msg = err(&format!("control = 1\n{GATEWAY}"));
        assert_contains(&msg, &["test.toml:1:", "integer", "[control] table"]);
    }

    #[test]
    fn wrong_value_types() {
        let msg = health_err("rise = \"3\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"web\" health",
                "key \"rise\"",
                "expected an integer",
            ],
        );
        let msg = health_err("kind = 1\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "key \"kind\"",
                "expected a string, found integer 1",
            ],
        );
        let msg = health_err("interval = 5\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" health: key \"interval\": expected a duration string such as \
             \"500us\" or \"1.5s\", found integer 5"
        );
        let msg = failover_err("share = 0.5\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"web\" failover",
                "key \"share\"",
                "float 0.5",
            ],
        );
        let msg = control_err("socket = 1\n");
        assert_contains(
            &msg,
            &["test.toml:4:", "[control]", "key \"socket\"", "expected a string"],
        );
        let msg = control_err("probe_budget = \"5000\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:4:",
                "[control]",
                "key \"probe_budget\"",
                "expected an integer",
            ],
        );
    }

    #[test]
    fn bad_kind() {
        let msg = health_err("kind = \"ping\"\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" health: key \"kind\": unknown value \"ping\", expected \"tcp\", \
             \"http\", \"udp\", \"icmp\" or \"exec\""
        );
    }

    // Durations.

    #[test]
    fn duration_unparsable() {
        let msg = health_err("interval = \"5 parsecs\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"web\" health",
                "key \"interval\"",
                "invalid duration \"5 parsecs\"",
                "\"500us\" or \"1.5s\"",
            ],
        );
        for bad in [
            "", "ms", "5", ".5s", "5.s", "1.2.3s", "-5ms", "5 ms", "5MS", "1e3ms", "5sec",
        ] {
            let msg = health_err(&format!("timeout = \"{bad}\"\n"));
            assert_contains(&msg, &["test.toml:11:", "key \"timeout\"", "duration"]);
        }
        let msg = health_err("timeout = \"5\"\n");
        assert_contains(&msg, &["has no unit"]);
        let msg = health_err("timeout = \"1.0000000001s\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "key \"timeout\"",
                "more precise than a nanosecond",
            ],
        );
        let msg = failover_err("failback_delay = \"99999999999999999999h\"\n");
        assert_contains(&msg, &["test.toml:11:", "key \"failback_delay\"", "too large"]);
    }

    #[test]
    fn duration_forms() {
        let cases = [
            ("100us", Duration::from_micros(100)),
            ("100\u{b5}s", Duration::from_micros(100)),
            ("100\u{3bc}s", Duration::from_micros(100)),
            ("100000ns", Duration::from_micros(100)),
            ("0.1ms", Duration::from_micros(100)),
            ("1.5s", ms(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0.25h", Duration::from_secs(900)),
            ("007ms", ms(7)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(
                health_of(&format!("interval = \"{text}\"\n")).interval,
                want,
                "{text}"
            );
        }
        assert_eq!(
            parse_duration("18446744073.709551615s"),
            Ok(Duration::from_nanos(u64::MAX))
        );
        assert!(parse_duration("18446744073.709551616s").is_err());
    }

    #[test]
    fn duration_zero() {
        let msg = health_err("interval = \"0ms\"\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" health: key \"interval\": \"0ms\" is zero, it must be greater than zero"
        );
        let msg = health_err("timeout = \"0s\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"web\" health",
                "key \"timeout\"",
                "is zero",
            ],
        );
        // failback_delay may be zero.
        let cfg = parse(&with_table("failover", "failback_delay = \"0s\"\n"));
        assert_eq!(cfg.services[0].failover.failback_delay, Duration::ZERO);
    }

    #[test]
    fn interval_too_short() {
        let msg = health_err("interval = \"99us\"\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" health: key \"interval\": \"99us\" is too short, the minimum is 100µs"
        );
        assert_eq!(health_of("interval = \"100us\"\n").interval, MIN_INTERVAL);
    }

    #[test]
    fn interval_too_long() {
        let msg = health_err("interval = \"61m\"\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" health: key \"interval\": \"61m\" is too long, the maximum is 3600s"
        );
        assert_eq!(health_of("interval = \"1h\"\n").interval, MAX_INTERVAL);
    }

    #[test]
    fn timeout_too_long() {
        let msg = health_err("interval = \"1s\"\ntimeout = \"60.001s\"\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" health: key \"timeout\": \"60.001s\" is too long, the maximum is 60s"
        );
        let msg = failover_err("failback_gate = { kind = \"tcp\", timeout = \"2m\" }\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"web\" failback_gate",
                "key \"timeout\"",
                "60s",
            ],
        );
    }

    #[test]
    fn failback_delay_range() {
        let msg = failover_err("failback_delay = \"3601s\"\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" failover: key \"failback_delay\": \"3601s\" is too long, the maximum is 3600s"
        );
        let cfg = parse(&with_table("failover", "failback_delay = \"60m\"\n"));
        assert_eq!(cfg.services[0].failover.failback_delay, MAX_FAILBACK_DELAY);
    }

    // rise, fall, share, budget.

    #[test]
    fn rise_fall_range() {
        for (body, key, value) in [
            ("rise = 0\n", "rise", "0"),
            ("rise = 101\n", "rise", "101"),
            ("fall = 0\n", "fall", "0"),
            ("fall = -1\n", "fall", "-1"),
            ("fall = 101\n", "fall", "101"),
        ] {
            let msg = health_err(body);
            assert_eq!(
                msg,
                format!(
                    "test.toml:11: service \"web\" health: key \"{key}\": {value} is out of range, expected 1..=100"
                )
            );
        }
        let hc = health_of("rise = 100\nfall = 1\n");
        assert_eq!((hc.rise, hc.fall), (100, 1));
    }

    #[test]
    fn share_range() {
        let msg = failover_err("share = 101\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" failover: key \"share\": 101 is out of range, expected 0..=100"
        );
        let msg = failover_err("share = -1\n");
        assert_contains(&msg, &["test.toml:11:", "key \"share\"", "-1 is out of range"]);
        let cfg = parse(&with_table("failover", "share = 100\n"));
        assert_eq!(cfg.services[0].failover.share, 100);
    }

    #[test]
    fn failover_choices() {
        let msg = failover_err("failback = \"never\"\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" failover: key \"failback\": unknown value \"never\", expected \"auto\" or \"manual\""
        );
        let msg = failover_err("\nall_down = \"reject\"\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" failover: key \"all_down\": unknown value \"reject\", expected \"keep\", \"drop\" or \"pass\""
        );
    }

    // Kind-specific keys.

    #[test]
    fn key_of_another_kind() {
        let msg = health_err("kind = \"tcp\"\npath = \"/healthz\"\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" health: key \"path\": only allowed with kind = \"http\", but kind is \"tcp\""
        );
        // The kind defaults to the service's protocol: the message says so.
        let msg = health_err("path = \"/healthz\"\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" health: key \"path\": only allowed with kind = \"http\", but kind is \
             \"tcp\" (the default for a tcp service)"
        );
        let msg = health_err("kind = \"icmp\"\nexpect = [200]\n");
        assert_contains(
            &msg,
            &[
                "test.toml:12:",
                "key \"expect\"",
                "kind = \"http\" or kind = \"udp\"",
                "kind is \"icmp\"",
            ],
        );
        let msg = health_err("kind = \"http\"\nsend = \"x\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:12:",
                "key \"send\"",
                "kind = \"udp\"",
                "kind is \"http\"",
            ],
        );
        let msg = health_err("kind = \"udp\"\ncommand = [\"/bin/true\"]\n");
        assert_contains(
            &msg,
            &[
                "test.toml:12:",
                "key \"command\"",
                "kind = \"exec\"",
                "kind is \"udp\"",
            ],
        );
        let msg = failover_err("failback_gate = { kind = \"icmp\", path = \"/\" }\n");
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"web\" failback_gate",
                "key \"path\"",
                "kind is \"icmp\"",
            ],
        );
    }

    #[test]
    fn http_path() {
        let msg = health_err("kind = \"http\"\npath = \"healthz\"\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" health: key \"path\": \"healthz\" must start with \"/\""
        );
        let msg = health_err("kind = \"http\"\npath = \"/a b\"\n");
        assert_contains(
            &msg,
            &["test.toml:12:", "service \"web\" health", "key \"path\"", "' '"],
        );
        let msg = health_err("kind = \"http\"\npath = \"/a\\r\\nHost: x\"\n");
        assert_contains(&msg, &["test.toml:12:", "key \"path\"", "'\\r'"]);
    }

    #[test]
    fn http_expect() {
        let msg = health_err("kind = \"http\"\nexpect = []\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" health: key \"expect\": must list at least one status code"
        );
        let msg = health_err("kind = \"http\"\nexpect = [\n  200,\n  600,\n]\n");
        assert_eq!(
            msg,
            "test.toml:14: service \"web\" health: key \"expect\": 600 is not an HTTP status code, expected 100..=599"
        );
        let msg = health_err("kind = \"http\"\nexpect = [99]\n");
        assert_contains(
            &msg,
            &["test.toml:12:", "key \"expect\"", "99 is not an HTTP status code"],
        );
        let msg = health_err("kind = \"http\"\nexpect = 200\n");
        assert_contains(
            &msg,
            &[
                "test.toml:12:",
                "service \"web\" health",
                "key \"expect\"",
                "array of HTTP status codes",
            ],
        );
        let msg = health_err("kind = \"http\"\nexpect = [\"200\"]\n");
        assert_contains(&msg, &["test.toml:12:", "key \"expect\"", "found string \"200\""]);
        let msg = health_err("kind = \"http\"\nexpect = [200, 200]\n");
        assert_contains(
            &msg,
            &["test.toml:12:", "key \"expect\"", "200 is listed more than once"],
        );
    }

    #[test]
    fn udp_send_and_expect() {
        let text = format!(
            "{GATEWAY}[[service]]\nname = \"dns\"\nvip = \"198.18.100.1\"\nport = 53\nprotocol = \"udp\"\n\
             {BACKENDS}[service.health]\nexpect = \"\"\n"
        );
        let cfg = parse(&text);
        assert_eq!(
            cfg.services[0].health.kind,
            ProbeKind::Udp {
                send: DEFAULT_UDP_SEND.to_vec(),
                expect: Some(Vec::new())
            }
        );
        let msg = err(&text.replace("expect = \"\"", "expect = [\"pong\"]"));
        assert_contains(
            &msg,
            &[
                "test.toml:11:",
                "service \"dns\" health",
                "key \"expect\"",
                "expected a string",
            ],
        );
        let msg = err(&text.replace("expect = \"\"", "send = 1"));
        assert_contains(&msg, &["test.toml:11:", "key \"send\"", "expected a string"]);
    }

    #[test]
    fn exec_command() {
        let msg = health_err("kind = \"exec\"\n");
        assert_eq!(
            msg,
            "test.toml:10: service \"web\" health: missing required key \"command\""
        );
        let msg = health_err("kind = \"exec\"\ncommand = []\n");
        assert_contains(
            &msg,
            &[
                "test.toml:12:",
                "service \"web\" health",
                "key \"command\"",
                "must name the program",
            ],
        );
        let msg = health_err("kind = \"exec\"\ncommand = [\"check\", \"-v\"]\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" health: key \"command\": program \"check\" must be an absolute path"
        );
        let msg = health_err("kind = \"exec\"\ncommand = [\"/bin/check\",\n  3]\n");
        assert_contains(
            &msg,
            &[
                "test.toml:13:",
                "key \"command\"",
                "expected a string, found integer 3",
            ],
        );
        let msg = health_err("kind = \"exec\"\ncommand = \"/bin/check -v\"\n");
        assert_contains(
            &msg,
            &["test.toml:12:", "key \"command\"", "expected an array of strings"],
        );
        let msg = health_err("kind = \"exec\"\ncommand = [\"/bin/check\", \"a\\u0000b\"]\n");
        assert_contains(&msg, &["test.toml:12:", "key \"command\"", "NUL"]);
        let hc = health_of("kind = \"exec\"\ncommand = [\"/bin/check\", \"\", \"x y\"]\n");
        assert_eq!(
            hc.kind,
            ProbeKind::Exec {
                command: vec!["/bin/check".to_owned(), String::new(), "x y".to_owned()]
            }
        );
    }

    #[test]
    fn failback_gate_needs_a_kind() {
        let msg = failover_err("share = 0\nfailback_gate = { interval = \"1s\" }\n");
        assert_eq!(
            msg,
            "test.toml:12: service \"web\" failback_gate: missing required key \"kind\""
        );
        let msg = failover_err("[service.failover.failback_gate]\nrise = 2\n");
        assert_eq!(
            msg,
            "test.toml:11: service \"web\" failback_gate: missing required key \"kind\""
        );
    }

    // allow, deny, icmp_echo

    /// The service "web" (198.18.100.1:80/tcp) with `lists` at line 10.
    fn with_lists(lists: &str) -> String {
        format!("{GATEWAY}[[service]]\n{SVC}{BACKENDS}{lists}")
    }

    /// A v6 service "web6" (2001:2::100:80/tcp) with `lists` at line 10.
    fn with_lists_v6(lists: &str) -> String {
        format!(
            "{GATEWAY}[[service]]\nname = \"web6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\n\
             primary = \"2001:2::2\"\nsecondary = \"2001:2::3\"\n{lists}"
        )
    }

    fn prefixes(list: &[&str]) -> Vec<Prefix> {
        list.iter().map(|t| t.parse().expect("prefix")).collect()
    }

    #[test]
    fn allow_and_deny_parse() {
        let cfg = parse(&with_lists(
            "allow = [\"198.18.1.0/24\", \"198.18.7.9\", \"0.0.0.0/0\"]\ndeny = [\n  \"198.18.1.128/25\",\n]\n",
        ));
        let web = &cfg.services[0];
        assert_eq!(
            web.allow,
            prefixes(&["198.18.1.0/24", "198.18.7.9/32", "0.0.0.0/0"])
        );
        assert_eq!(web.deny, prefixes(&["198.18.1.128/25"]));
        let cfg = parse(&with_lists_v6(
            "allow = [\"2001:2::/48\", \"2001:2:0:7::1\"]\ndeny = []\n",
        ));
        assert_eq!(
            cfg.services[0].allow,
            prefixes(&["2001:2::/48", "2001:2:0:7::1/128"])
        );
        assert!(cfg.services[0].deny.is_empty());
        // Absent lists are empty: every client.
        let cfg = parse(&with_lists(""));
        assert!(cfg.services[0].allow.is_empty() && cfg.services[0].deny.is_empty());
        assert!(cfg.services[0].admits("203.0.113.1".parse().expect("addr")));
    }

    #[test]
    fn admits_deny_before_allow() {
        let cfg = parse(&with_lists(
            "allow = [\"198.18.0.0/16\"]\ndeny = [\"198.18.1.0/24\"]\n",
        ));
        let web = &cfg.services[0];
        let admits = |a: &str| web.admits(a.parse().expect("addr"));
        assert!(admits("198.18.2.1"));
        assert!(!admits("198.18.1.1"));
        assert!(!admits("203.0.113.1"));
        let cfg = parse(&with_lists("deny = [\"198.18.1.0/24\"]\n"));
        assert!(cfg.services[0].admits("203.0.113.1".parse().expect("addr")));
        assert!(!cfg.services[0].admits("198.18.1.7".parse().expect("addr")));
    }

    #[test]
    fn prefix_errors() {
        let msg = err(&with_lists("allow = [\"198.18.1.5/24\"]\n"));
        assert_eq!(
            msg,
            "test.toml:10: service \"web\": key \"allow\": \"198.18.1.5/24\" has host bits set; the network \
             is \"198.18.1.0/24\""
        );
        let msg = err(&with_lists(
            "deny = [\n  \"198.18.1.0/24\",\n  \"198.18.1.0/33\",\n]\n",
        ));
        assert_eq!(
            msg,
            "test.toml:12: service \"web\": key \"deny\": prefix length 33 in \"198.18.1.0/33\" is out of \
             range, expected 0..=32"
        );
        let msg = err(&with_lists_v6("allow = [\"2001:2::/129\"]\n"));
        assert_contains(
            &msg,
            &["test.toml:10:", "service \"web6\"", "key \"allow\"", "0..=128"],
        );
        let msg = err(&with_lists("allow = [\"198.18.1.0/ 24\"]\n"));
        assert_contains(
            &msg,
            &[
                "test.toml:10:",
                "key \"allow\"",
                "invalid prefix \"198.18.1.0/ 24\"",
                "\"198.18.1.0/24\"",
            ],
        );
        let msg = err(&with_lists("allow = \"198.18.1.0/24\"\n"));
        assert_eq!(
            msg,
            "test.toml:10: service \"web\": key \"allow\": expected an array of prefixes such as \
             [\"198.18.1.0/24\"], found string \"198.18.1.0/24\""
        );
        let msg = err(&with_lists("deny = [24]\n"));
        assert_contains(&msg, &["test.toml:10:", "key \"deny\"", "found integer 24"]);
        let msg = err(&with_lists_v6("allow = [\"fe80::%eth0/64\"]\n"));
        assert_contains(&msg, &["test.toml:10:", "key \"allow\"", "scoped", "%eth0"]);
    }

    #[test]
    fn prefix_family_must_match_the_vip() {
        let msg = err(&with_lists("allow = [\"198.18.1.0/24\", \"2001:2::/48\"]\n"));
        assert_eq!(
            msg,
            "test.toml:10: service \"web\": key \"allow\": prefix 2001:2::/48 is IPv6, but vip 198.18.100.1 \
             is IPv4; clients of an IPv4 vip are IPv4"
        );
        let msg = err(&with_lists_v6("\ndeny = [\"198.18.1.0/24\"]\n"));
        assert_eq!(
            msg,
            "test.toml:11: service \"web6\": key \"deny\": prefix 198.18.1.0/24 is IPv4, but vip 2001:2::100 \
             is IPv6; clients of an IPv6 vip are IPv6"
        );
        assert!(matches!(
            Config::from_str_named(&with_lists_v6("deny = [\"198.18.1.0/24\"]\n"), "test.toml"),
            Err(ConfigError::PrefixFamilyMismatch { .. })
        ));
        let msg = err(&with_lists_v6("allow = [\"::ffff:198.18.1.0/120\"]\n"));
        assert_contains(&msg, &["test.toml:10:", "key \"allow\"", "IPv4-mapped"]);
        // A v6 prefix that covers the mapped range is an ordinary prefix.
        assert_eq!(
            parse(&with_lists_v6("deny = [\"::/0\"]\n")).services[0].deny,
            prefixes(&["::/0"])
        );
    }

    #[test]
    fn prefix_duplicates() {
        let msg = err(&with_lists("allow = [\"198.18.1.0/24\", \"198.18.1.0/24\"]\n"));
        assert_eq!(
            msg,
            "test.toml:10: service \"web\": key \"allow\": \"198.18.1.0/24\" is listed more than once"
        );
        let msg = err(&with_lists(
            "deny = [\n  \"198.18.1.5\",\n  \"198.18.1.5/32\",\n]\n",
        ));
        assert_eq!(
            msg,
            "test.toml:12: service \"web\": key \"deny\": \"198.18.1.5/32\" is listed more than once (as \
             \"198.18.1.5\")"
        );
        let msg = err(&with_lists_v6("allow = [\"2001:2::/48\", \"2001:0002::/48\"]\n"));
        assert_contains(&msg, &["test.toml:10:", "more than once", "(as \"2001:2::/48\")"]);
        let msg = err(&with_lists(
            "allow = [\"198.18.1.0/24\"]\ndeny = [\"198.18.1.0/24\"]\n",
        ));
        assert_eq!(
            msg,
            "test.toml:11: service \"web\": key \"deny\": \"198.18.1.0/24\" is also in allow; a prefix in \
             both lists is refused, keep it in one"
        );
        // Overlapping, not equal: a hole in an allowed range.
        let cfg = parse(&with_lists(
            "allow = [\"198.18.0.0/16\"]\ndeny = [\"198.18.0.0/17\"]\n",
        ));
        assert_eq!(cfg.services[0].deny, prefixes(&["198.18.0.0/17"]));
    }

    #[test]
    fn prefix_list_cap() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cfg = parse(&with_lists(&format!("allow = [{}]\n", list(MAX_PREFIXES))));
        assert_eq!(cfg.services[0].allow.len(), MAX_PREFIXES);
        let msg = err(&with_lists(&format!("\ndeny = [{}]\n", list(MAX_PREFIXES + 1))));
        assert_eq!(
            msg,
            "test.toml:11: service \"web\": key \"deny\": 1025 prefixes listed, at most 1024 are allowed"
        );
    }

    #[test]
    fn icmp_echo() {
        assert_eq!(parse(GATEWAY).gateway.icmp_echo, IcmpEcho::Answer);
        let cfg = parse(&format!("{GATEWAY}icmp_echo = \"pass\"\n"));
        assert_eq!(cfg.gateway.icmp_echo, IcmpEcho::Pass);
        assert_eq!(IcmpEcho::Pass.to_string(), "pass");
        let cfg = parse(&format!("{GATEWAY}icmp_echo = \"answer\"\n"));
        assert_eq!(cfg.gateway.icmp_echo, IcmpEcho::Answer);
        let msg = err(&format!("{GATEWAY}icmp_echo = \"reply\"\n"));
        assert_eq!(
            msg,
            "test.toml:3: [gateway]: key \"icmp_echo\": unknown value \"reply\", expected \"answer\" or \"pass\""
        );
        let msg = err(&format!("{GATEWAY}icmp_echo = true\n"));
        assert_contains(
            &msg,
            &[
                "test.toml:3:",
                "key \"icmp_echo\"",
                "expected a string, found boolean true",
            ],
        );
    }

    // [control]

    #[test]
    fn control_paths_must_be_absolute() {
        for key in ["socket", "state_dir", "bpffs_dir"] {
            let msg = control_err(&format!("\n{key} = \"run/redirector\"\n"));
            assert_eq!(
                msg,
                format!("test.toml:5: [control]: key \"{key}\": \"run/redirector\" is not an absolute path")
            );
        }
        let msg = control_err("state_dir = \"\"\n");
        assert_contains(
            &msg,
            &["test.toml:4:", "key \"state_dir\"", "not an absolute path"],
        );
    }

    #[test]
    fn control_socket_path_length() {
        let long = format!("/run/{}", "s".repeat(103));
        let msg = control_err(&format!("socket = \"{long}\"\n"));
        assert_contains(
            &msg,
            &[
                "test.toml:4:",
                "[control]",
                "key \"socket\"",
                "108 bytes",
                "at most 107",
            ],
        );
        let ok = format!("/run/{}", "s".repeat(102));
        let cfg = parse(&format!("{GATEWAY}[control]\nsocket = \"{ok}\"\n"));
        assert_eq!(cfg.control.socket, PathBuf::from(ok));
    }

    #[test]
    fn control_dirs_must_differ() {
        let msg = control_err("state_dir = \"/var/lib/r\"\nbpffs_dir = \"/var/lib/r/\"\n");
        assert_eq!(
            msg,
            "test.toml:5: [control]: key \"bpffs_dir\": \"/var/lib/r/\" is also state_dir; state_dir and \
             bpffs_dir must be different directories"
        );
        let msg = control_err("state_dir = \"/sys/fs/bpf/redirector\"\n");
        assert_contains(
            &msg,
            &[
                "test.toml:4:",
                "[control]",
                "key \"state_dir\"",
                "is also bpffs_dir (the default)",
            ],
        );
    }

    #[test]
    fn control_metrics() {
        for (text, want) in [("127.0.0.1:9630", "127.0.0.1:9630"), ("[::]:9630", "[::]:9630")] {
            let cfg = parse(&format!("{GATEWAY}[control]\nmetrics = \"{text}\"\n"));
            assert_eq!(cfg.control.metrics, Some(want.parse().expect("addr")));
        }
        for bad in ["localhost:9630", "127.0.0.1", "::1:9630", "127.0.0.1:99999", ""] {
            let msg = control_err(&format!("metrics = \"{bad}\"\n"));
            assert_contains(
                &msg,
                &[
                    "test.toml:4:",
                    "[control]",
                    "key \"metrics\"",
                    "expected \"addr:port\" or \"[ipv6]:port\"",
                ],
            );
        }
        let msg = control_err("metrics = \"127.0.0.1:0\"\n");
        assert_contains(&msg, &["test.toml:4:", "key \"metrics\"", "port 0"]);
    }

    #[test]
    fn control_probe_budget_range() {
        for bad in [99, 1_000_001] {
            let msg = control_err(&format!("probe_budget = {bad}\n"));
            assert_eq!(
                msg,
                format!(
                    "test.toml:4: [control]: key \"probe_budget\": {bad} is out of range, expected 100..=1000000"
                )
            );
        }
        for ok in [100, 1_000_000] {
            let cfg = parse(&format!("{GATEWAY}[control]\nprobe_budget = {ok}\n"));
            assert_eq!(cfg.control.probe_budget, ok);
        }
    }
}
