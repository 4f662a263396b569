//! Address prefixes of a service's `allow` and `deny` lists.
//!
//! An own small type rather than the `ipnet` crate: the lists need exactly
//! parse, display, containment and the IPv4-mapped key form of the data
//! plane, and the parse errors must say what to write instead (e.g. the
//! network of a prefix with host bits set), which `ipnet`'s opaque
//! `AddrParseError` cannot; it would also accept a prefix with host bits set.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest IPv4 prefix.
const V4_BITS: u8 = 32;
/// Longest IPv6 prefix.
const V6_BITS: u8 = 128;
/// Length of the IPv4-mapped IPv6 prefix `::ffff:0:0/96`.
const MAPPED_BITS: u8 = 96;

/// An IPv4 or IPv6 prefix: a network address and a length, host bits zero.
///
/// Written `addr/len`; a bare address is a host prefix (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Not an address, or an address and a length.
    #[error(
        "invalid prefix {text:?}, expected \"addr/len\" such as \"198.18.1.0/24\" or \"2001:2::/48\", \
         or a bare address"
    )]
    Malformed {
        /// The text given.
        text: String,
    },
    /// An IPv6 address with a zone (`%eth0`): zones are link-local only.
    #[error("scoped IPv6 address {text:?} is not supported (remove the zone \"%{zone}\")")]
    Scoped {
        /// The text given.
        text: String,
        /// The zone, without `%`.
        zone: String,
    },
    /// The length is longer than the address family allows.
    #[error("prefix length {len} in {text:?} is out of range, expected 0..={max}")]
    Length {
        /// The text given.
        text: String,
        /// The length as written.
        len: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits past the length are set: the text names a host, not a network.
    #[error("{text:?} has host bits set; the network is \"{network}\"")]
    HostBits {
        /// The text given.
        text: String,
        /// The network the address belongs to, with the same length.
        network: Prefix,
    },
}

impl Prefix {
    /// The prefix `addr/len`; host bits must be zero.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let text = || format!("{addr}/{len}");
        let network = Prefix::truncate(addr, len).ok_or_else(|| PrefixError::Length {
            text: text(),
            len: len.to_string(),
            max: max_len(addr),
        })?;
        if network.addr != addr {
            return Err(PrefixError::HostBits {
                text: text(),
                network,
            });
        }
        Ok(network)
    }

    /// The prefix of length `len` that contains `addr` (its host bits cleared);
    /// `None` if `len` is too long for the family.
    pub fn truncate(addr: IpAddr, len: u8) -> Option<Prefix> {
        if len > max_len(addr) {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(len))),
        };
        Some(Prefix { addr, len })
    }

    /// The host prefix of `addr`: `/32` or `/128`.
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix {
            addr,
            len: max_len(addr),
        }
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Is this an IPv4 prefix?
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Is `addr` (of the same family) inside the prefix?
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask_v4(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => u128::from(a) & mask_v6(self.len) == u128::from(net),
            _ => false,
        }
    }

    /// Is this IPv6 prefix inside `::ffff:0:0/96`, the IPv4-mapped addresses?
    /// No IPv6 packet has such a source, and the data plane keys IPv4 clients
    /// by that form.
    pub fn is_ipv4_mapped(&self) -> bool {
        match self.addr {
            IpAddr::V4(_) => false,
            IpAddr::V6(a) => self.len >= MAPPED_BITS && a.to_ipv4_mapped().is_some(),
        }
    }

    /// The form the data plane's LPM tries are keyed by: 16 address bytes and
    /// a length in bits. IPv4 `a.b.c.d/n` is `::ffff:a.b.c.d/(96 + n)`; IPv6
    /// is unchanged.
    pub fn mapped(&self) -> ([u8; 16], u8) {
        match self.addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), MAPPED_BITS + self.len),
            IpAddr::V6(a) => (a.octets(), self.len),
        }
    }
}

impl fmt::Display for Prefix {
    /// `addr/len`, always with the length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `addr/len` or a bare address (a host prefix).
    fn from_str(text: &str) -> Result<Prefix, PrefixError> {
        let malformed = || PrefixError::Malformed {
            text: text.to_owned(),
        };
        if let Some((_, rest)) = text.split_once('%') {
            let zone = rest.split('/').next().unwrap_or(rest);
            return Err(PrefixError::Scoped {
                text: text.to_owned(),
                zone: zone.to_owned(),
            });
        }
        let (addr_text, len_text) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| malformed())?;
        let Some(len_text) = len_text else {
            return Ok(Prefix::host(addr));
        };
        // Digits only: u8's parser would also take a sign.
        if len_text.is_empty() || !len_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let max = max_len(addr);
        let len = len_text
            .parse::<u8>()
            .ok()
            .filter(|&len| len <= max)
            .ok_or_else(|| PrefixError::Length {
                text: text.to_owned(),
                len: len_text.to_owned(),
                max,
            })?;
        Prefix::new(addr, len).map_err(|e| match e {
            PrefixError::HostBits { network, .. } => PrefixError::HostBits {
                text: text.to_owned(),
                network,
            },
            other => other,
        })
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => V4_BITS,
        IpAddr::V6(_) => V6_BITS,
    }
}

/// The network mask of an IPv4 prefix of length `len` (≤ 32).
fn mask_v4(len: u8) -> u32 {
    // A shift by the full width is an overflow: length 0 masks nothing.
    u32::MAX.checked_shl(u32::from(V4_BITS - len)).unwrap_or(0)
}

/// The network mask of an IPv6 prefix of length `len` (≤ 128).
fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(u32::from(V6_BITS - len)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Prefix, String> {
        text.parse::<Prefix>().map_err(|e| e.to_string())
    }

    #[test]
    fn forms() {
        let ok = |text: &str, display: &str| {
            assert_eq!(p(text).map(|p| p.to_string()), Ok(display.to_owned()), "{text}");
        };
        ok("198.18.1.0/24", "198.18.1.0/24");
        ok("198.18.1.5", "198.18.1.5/32");
        ok("0.0.0.0/0", "0.0.0.0/0");
        ok("198.18.1.0/024", "198.18.1.0/24");
        ok("2001:2::/48", "2001:2::/48");
        ok("2001:0002:0000::/48", "2001:2::/48");
        ok("2001:2::1", "2001:2::1/128");
        ok("::/0", "::/0");
    }

    #[test]
    fn errors() {
        assert_eq!(
            p("198.18.1.5/24"),
            Err("\"198.18.1.5/24\" has host bits set; the network is \"198.18.1.0/24\"".to_owned())
        );
        assert_eq!(
            p("2001:2::1/48"),
            Err("\"2001:2::1/48\" has host bits set; the network is \"2001:2::/48\"".to_owned())
        );
        assert_eq!(
            p("198.18.1.0/33"),
            Err("prefix length 33 in \"198.18.1.0/33\" is out of range, expected 0..=32".to_owned())
        );
        assert_eq!(
            p("2001:2::/129"),
            Err("prefix length 129 in \"2001:2::/129\" is out of range, expected 0..=128".to_owned())
        );
        assert!(p("2001:2::/99999999999999999999").is_err_and(|m| m.contains("out of range")));
        for bad in [
            "",
            "/24",
            "198.18.1.0/",
            "198.18.1.0/+24",
            "198.18.1.0/-1",
            "198.18.1/24",
            "198.18.1.0 /24",
            "[2001:2::]/48",
            "web",
            "198.18.1.0/24/1",
        ] {
            assert!(p(bad).is_err_and(|m| m.starts_with("invalid prefix")), "{bad}");
        }
        assert_eq!(
            p("fe80::%eth0/64"),
            Err(
                "scoped IPv6 address \"fe80::%eth0/64\" is not supported (remove the zone \"%eth0\")"
                    .to_owned()
            )
        );
        let addr: IpAddr = "198.18.1.5".parse().expect("addr");
        assert!(matches!(
            Prefix::new(addr, 24),
            Err(PrefixError::HostBits { network, .. }) if network.to_string() == "198.18.1.0/24"
        ));
        assert!(matches!(
            Prefix::new(addr, 33),
            Err(PrefixError::Length { max: 32, .. })
        ));
    }

    #[test]
    fn contains_and_mapped() {
        let net = p("198.18.1.0/24").expect("prefix");
        assert!(net.contains("198.18.1.255".parse().expect("addr")));
        assert!(!net.contains("198.18.2.0".parse().expect("addr")));
        assert!(!net.contains("::ffff:198.18.1.1".parse().expect("addr")));
        assert!(
            p("0.0.0.0/0")
                .expect("prefix")
                .contains("255.255.255.255".parse().expect("addr"))
        );
        let (bytes, len) = net.mapped();
        assert_eq!(len, 120);
        assert_eq!(
            bytes,
            "::ffff:198.18.1.0".parse::<Ipv6Addr>().expect("addr").octets()
        );
        assert_eq!(p("0.0.0.0/0").expect("prefix").mapped().1, 96);
        let v6 = p("2001:2::/48").expect("prefix");
        assert_eq!(v6.mapped(), (v6_octets("2001:2::"), 48));
        assert!(v6.contains("2001:2:0:ffff::1".parse().expect("addr")));
        assert!(!v6.is_ipv4_mapped());
        assert!(p("::ffff:198.18.1.0/120").expect("prefix").is_ipv4_mapped());
        assert!(!p("::/64").expect("prefix").is_ipv4_mapped());
        assert!(!net.is_ipv4_mapped());
    }

    fn v6_octets(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>().expect("addr").octets()
    }
}
