//! The `[[service]]` tables: name, vip, port, protocol, mode, the two
//! backends and the client `allow` / `deny` lists; `[service.health]` and
//! `[service.failover]` are read by their own modules.
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::failover::{Failover, RawFailover, convert_failover};
use super::health::{CheckDefaults, HealthCheck, RawHealth, convert_check};
use super::toml_source::{MaybeTable, RawValue, Section, Source, describe, raw_table};
use super::values::{parse_backend, parse_ip, validate_service_name};
use super::{ConfigError, Prefix, PrefixError};

/// Most prefixes in one `allow` or `deny` list: each is an LPM trie entry of
/// the data plane, and a list this long is better served by a firewall.
pub const MAX_PREFIXES: usize = 1024;

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

raw_table! {
    /// One `[[service]]`.
    pub(super) RawService, "a [[service]] table" {
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

/// The `[[service]]` array, with a clear message when it is not an array.
#[derive(Default)]
pub(super) struct RawServices(pub(super) Vec<Spanned<RawService>>);

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

pub(super) fn convert_service(
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

    let mut health = match sec.table("health", &r.health)? {
        Some((table, span)) => {
            let sub = sec.sub("health", span);
            let check = convert_check(&sub, table, CheckDefaults::Service(protocol))?;
            if let (Mode::Dsr, Some(_), Some(v)) = (mode, check.silence, &table.silence) {
                return Err(sub.invalid(
                    "silence",
                    &v.span(),
                    "a dsr service's answers bypass the gateway: no silence can be seen (set \"off\" or \
                     remove it)",
                ));
            }
            check
        }
        None => HealthCheck::default_for(protocol),
    };
    if mode == Mode::Dsr {
        health.silence = None;
    }
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
