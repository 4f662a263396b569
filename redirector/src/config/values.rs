//! Scalar values shared by the tables: durations, interface and service
//! names, IP addresses, ports and backends. Each returns the message that
//! the table puts after its key.
use std::net::IpAddr;
use std::time::Duration;

/// Longest Linux interface name in bytes (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;
/// Longest service name in characters.
const MAX_SERVICE_NAME_LEN: usize = 64;

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

pub(super) fn validate_ifname(name: &str) -> Result<(), String> {
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

pub(super) fn validate_service_name(name: &str) -> Result<(), String> {
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
pub(super) fn parse_ip(s: &str) -> Result<IpAddr, String> {
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
pub(super) fn parse_backend(s: &str) -> Result<(IpAddr, Option<u16>), String> {
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
