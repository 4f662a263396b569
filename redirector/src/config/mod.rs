//! Configuration file parsing and validation.
//!
//! The redirector is configured by a TOML file with one `[gateway]` table
//! and zero or more `[[service]]` tables:
//!
//! ```toml
//! [gateway]
//! interfaces = ["eth0", "eth1"]   # required, non-empty, valid Linux interface names
//! xdp_mode = "auto"               # auto | driver | skb; default auto
//! flow_table_size = 262144        # default 262144, 1024..=16777216
//! tcp_flow_idle = 3600             # seconds, default 3600, 10..=604800
//! udp_flow_idle = 120              # seconds, default 120, 10..=604800
//! max_services = 1024             # default 1024, 1024..=65536, >= number of services
//!
//! [[service]]
//! name = "web"                    # required, unique, 1..=64 of [A-Za-z0-9_.-]
//! vip = "198.18.100.1"            # IPv4 or IPv6 address
//! port = 80                       # 1..=65535
//! protocol = "tcp"                # tcp | udp
//! mode = "nat"                    # nat | dsr; default nat
//! primary = "198.18.2.2"          # "addr" or "addr:port"; IPv6 as "addr" or "[addr]:port"
//! secondary = "198.18.3.2:8080"
//! ```
//!
//! [`Config::from_file`] and [`Config::from_str_named`] parse the file and
//! check it completely, returning only validated types. Every error names the
//! file, and the line and key where they are known, for example
//! `config.toml:7: service "web": key "mode": unknown value "nta", expected "nat" or "dsr"`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

mod control;
pub use control::*;

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
    /// A key that the configuration does not know.
    #[error("{at}: unknown key \"{key}\", expected {expected}")]
    UnknownKey {
        /// Where the key is.
        at: Location,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [gateway] table")]
struct RawGateway {
    interfaces: Option<Spanned<RawValue>>,
    xdp_mode: Option<Spanned<RawValue>>,
    flow_table_size: Option<Spanned<RawValue>>,
    max_services: Option<Spanned<RawValue>>,
    tcp_flow_idle: Option<Spanned<RawValue>>,
    udp_flow_idle: Option<Spanned<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[service]] table")]
struct RawService {
    name: Option<Spanned<RawValue>>,
    vip: Option<Spanned<RawValue>>,
    port: Option<Spanned<RawValue>>,
    protocol: Option<Spanned<RawValue>>,
    mode: Option<Spanned<RawValue>>,
    primary: Option<Spanned<RawValue>>,
    secondary: Option<Spanned<RawValue>>,
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

    let list = sec.required("interfaces", &g.interfaces)?;
    let items = match list.get_ref() {
        RawValue::Array(items) => items,
        other => {
            return Err(sec.invalid(
                "interfaces",
                &list.span(),
                format!(
                    "expected an array of interface names, found {}",
                    describe_raw(other)
                ),
            ));
        }
    };
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
    Ok(Gateway {
        interfaces,
        xdp_mode,
        flow_table_size,
        max_services,
        tcp_flow_idle,
        udp_flow_idle,
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

    let name_value = sec.required("name", &r.name)?;
    let name = sec.string("name", name_value)?;
    validate_service_name(name).map_err(|m| sec.invalid("name", &name_value.span(), m))?;
    let name = name.to_owned();
    sec.name = format!("service \"{name}\"");

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

    Ok(Service {
        name,
        vip,
        port,
        protocol,
        mode,
        primary,
        secondary,
        health: HealthCheck::default_for(protocol),
        failover: Failover::default(),
    })
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

        Ok(Config {
            gateway,
            services,
            control: Control::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

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
}
