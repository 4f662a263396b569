//! The `[gateway]` table: interfaces, XDP mode, flow and service table sizes,
//! flow idle times and ICMP echo handling.
use std::collections::HashSet;
use std::fmt;
use std::ops::RangeInclusive;

use toml::Spanned;

use super::ConfigError;
use super::toml_source::{RawValue, Section, Source, describe, raw_table};
use super::values::validate_ifname;

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

/// The validated `[gateway]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Interfaces the XDP program is attached to; non-empty, no duplicates.
    pub interfaces: Vec<String>,
    /// Those of `interfaces` that face backends only (no client arrives
    /// there): a backend's refusal seen in the traffic on such a link is
    /// evidence, counted as a failed probe; elsewhere it is a hint.
    pub backend_interfaces: Vec<String>,
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

raw_table! {
    /// `[gateway]`.
    pub(super) RawGateway, "a [gateway] table" {
        interfaces: RawValue,
        backend_interfaces: RawValue,
        xdp_mode: RawValue,
        flow_table_size: RawValue,
        max_services: RawValue,
        tcp_flow_idle: RawValue,
        udp_flow_idle: RawValue,
        icmp_echo: RawValue,
    }
}

pub(super) fn convert_gateway(src: &Source<'_>, raw: &Spanned<RawGateway>) -> Result<Gateway, ConfigError> {
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

    let mut backend_interfaces = Vec::new();
    if let Some(list) = &g.backend_interfaces {
        let items = sec.array("backend_interfaces", list, "an array of interface names")?;
        if items.len() > redirector_common::MAX_BACKEND_IFACES as usize {
            return Err(sec.invalid(
                "backend_interfaces",
                &list.span(),
                format!("at most {} interfaces", redirector_common::MAX_BACKEND_IFACES),
            ));
        }
        for item in items {
            let toml::Value::String(name) = item.get_ref() else {
                return Err(sec.invalid(
                    "backend_interfaces",
                    &item.span(),
                    format!("expected an interface name, found {}", describe(item.get_ref())),
                ));
            };
            if !interfaces.contains(name) {
                return Err(sec.invalid(
                    "backend_interfaces",
                    &item.span(),
                    format!(
                        "{name:?} is not in interfaces: the XDP program sees only what arrives on the \
                         interfaces it is attached to"
                    ),
                ));
            }
            if backend_interfaces.contains(name) {
                return Err(sec.invalid(
                    "backend_interfaces",
                    &item.span(),
                    format!("interface {name:?} is listed more than once"),
                ));
            }
            backend_interfaces.push(name.clone());
        }
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
        backend_interfaces,
        xdp_mode,
        flow_table_size,
        max_services,
        tcp_flow_idle,
        udp_flow_idle,
        icmp_echo,
    })
}
