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
//! peers = ["/run/redirector/peers/gw2.sock"]  # other gateways' sockets: CLI intent reaches them too
//!
//! [announce]                      # optional: publish servable VIPs for BIRD/FRR or keepalived
//! table = 100                     # host routes in a kernel table of its own, 1..=2^32-1 but 253-255
//! device = "redirector0"          # the TUN device the daemon creates; default redirector0
//! track_file = "/run/redirector/track"  # for keepalived: 0 able, N VIPs unservable, 254 FAULT
//!                                 # (table, track_file or both)
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

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod announce;
mod control;
mod failover;
mod gateway;
mod health;
mod prefix;
#[cfg(test)]
mod proptests;
mod service;
#[cfg(test)]
mod tests;
mod toml_source;
mod values;
pub use announce::*;
pub use control::*;
pub use failover::*;
pub use gateway::*;
pub use health::*;
pub use prefix::{Prefix, PrefixError};
pub use service::*;
pub use values::parse_duration;

use announce::{RawAnnounce, convert_announce};
use control::{RawControl, convert_control};
use gateway::{RawGateway, convert_gateway};
use service::{RawServices, convert_service};
use toml_source::Source;

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Gateway settings.
    pub gateway: Gateway,
    /// Services in file order; may be empty.
    pub services: Vec<Service>,
    /// Control-plane settings.
    pub control: Control,
    /// Where the servable VIPs are published for a routing daemon; `None`:
    /// nowhere.
    pub announce: Option<Announce>,
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
    /// Two services of one group have different backend addresses.
    #[error(
        "{at}: service \"{service}\": {detail}: services of a group fail over together, so they must share their backends' addresses"
    )]
    GroupMismatch {
        /// Where the second member is.
        at: Location,
        /// The second member.
        service: String,
        /// Which group, member and address differ.
        detail: String,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a configuration table")]
struct RawConfig {
    gateway: Option<Spanned<RawGateway>>,
    #[serde(default)]
    service: RawServices,
    control: Option<Spanned<RawControl>>,
    announce: Option<Spanned<RawAnnounce>>,
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
        // Group → its first member: name, line, backend addresses.
        let mut groups: HashMap<String, (String, usize, [IpAddr; 2])> = HashMap::new();
        for (index, raw_service) in raw.service.0.iter().enumerate() {
            let service = convert_service(&src, index, raw_service)?;
            let span = raw_service.span();
            let line = src.line_of(span.start);
            if let Some(group) = &service.failover.group {
                let ours = [service.primary.addr, service.secondary.addr];
                let (other, other_line, theirs) = groups
                    .entry(group.clone())
                    .or_insert_with(|| (service.name.clone(), line, ours));
                if let Some(i) = (0..2).find(|&i| ours[i] != theirs[i]) {
                    return Err(ConfigError::GroupMismatch {
                        at: src.at(&span),
                        service: service.name,
                        detail: format!(
                            "group \"{group}\" also holds service \"{other}\" (line {other_line}), whose {} is {}, not {}",
                            ["primary", "secondary"][i],
                            theirs[i],
                            ours[i]
                        ),
                    });
                }
            }
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
        let announce = match &raw.announce {
            Some(a) => Some(convert_announce(&src, a, &gateway.interfaces)?),
            None => None,
        };

        Ok(Config {
            gateway,
            services,
            control,
            announce,
        })
    }
}
