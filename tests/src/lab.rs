//! The built-in lab: four network namespaces joined by veth pairs, with
//! addresses only from 198.18.0.0/15 and 2001:2::/48.
//!
//! ```text
//! client 198.18.1.2 ─ c0 ── g-c 198.18.1.1  gateway  198.18.2.1 g-p ── p0 198.18.2.2 primary
//!        2001:2:0:1::2                                198.18.3.1 g-s ── s0 198.18.3.2 secondary
//! ```
//! Fixed MACs 02:00:00:00:<subnet>:<host>. Transmit checksum offload is off on
//! the client and backend ends (locally generated packets would otherwise
//! carry partial checksums that nothing completes after an XDP redirect), and
//! a trivial XDP_PASS program runs on them (native redirect into a veth only
//! delivers when the peer runs XDP).
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use aya::{Ebpf, programs::Xdp};

use crate::netns::{NetNs, in_ns, sh};

/// A running lab; everything is removed on drop.
pub struct Lab {
    /// Keeps the `pass` programs attached on c0, p0 and s0.
    _pass: Ebpf,
    /// The client namespace.
    pub client: NetNs,
    /// The gateway namespace (where redirector runs).
    pub gw: NetNs,
    /// The primary backend.
    pub primary: NetNs,
    /// The secondary backend.
    pub secondary: NetNs,
}

fn mac(subnet: u8, host: u8) -> String {
    format!("02:00:00:00:{subnet:02x}:{host:02x}")
}

/// VIPs that DSR backends hold on their loopback.
pub struct DsrVips<'a> {
    /// IPv4 VIPs.
    pub v4: &'a [&'a str],
    /// IPv6 VIPs.
    pub v6: &'a [&'a str],
}

impl Lab {
    /// Builds the lab. `tag` keeps namespace names unique per test.
    pub fn new(tag: &str, dsr: &DsrVips<'_>) -> Lab {
        let client = NetNs::new(&format!("{tag}c"));
        let gw = NetNs::new(&format!("{tag}g"));
        let primary = NetNs::new(&format!("{tag}p"));
        let secondary = NetNs::new(&format!("{tag}s"));
        in_ns(&gw.name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        in_ns(&gw.name, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (subnet, far, far_if, gw_if) in [
            (1u8, &client, "c0", "g-c"),
            (2, &primary, "p0", "g-p"),
            (3, &secondary, "s0", "g-s"),
        ] {
            sh(&[
                "ip",
                "link",
                "add",
                far_if,
                "netns",
                &far.name,
                "address",
                &mac(subnet, 2),
                "type",
                "veth",
                "peer",
                "name",
                gw_if,
                "netns",
                &gw.name,
                "address",
                &mac(subnet, 1),
            ]);
            let v4g = format!("198.18.{subnet}.1/24");
            let v4f = format!("198.18.{subnet}.2/24");
            let v6g = format!("2001:2:0:{subnet}::1/64");
            let v6f = format!("2001:2:0:{subnet}::2/64");
            in_ns(&gw.name, &["ip", "addr", "add", &v4g, "dev", gw_if]);
            in_ns(&gw.name, &["ip", "addr", "add", &v6g, "dev", gw_if, "nodad"]);
            in_ns(&gw.name, &["ip", "link", "set", gw_if, "up"]);
            in_ns(&far.name, &["ip", "addr", "add", &v4f, "dev", far_if]);
            in_ns(&far.name, &["ip", "addr", "add", &v6f, "dev", far_if, "nodad"]);
            in_ns(&far.name, &["ip", "link", "set", far_if, "up"]);
            in_ns(
                &far.name,
                &[
                    "ip",
                    "route",
                    "add",
                    "198.18.0.0/15",
                    "via",
                    &format!("198.18.{subnet}.1"),
                ],
            );
            in_ns(
                &far.name,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "2001:2::/48",
                    "via",
                    &format!("2001:2:0:{subnet}::1"),
                ],
            );
            in_ns(&far.name, &["ethtool", "-K", far_if, "tx", "off"]);
        }
        for be in [&primary, &secondary] {
            in_ns(&be.name, &["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]);
            in_ns(&be.name, &["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"]);
            for v in dsr.v4 {
                in_ns(&be.name, &["ip", "addr", "add", &format!("{v}/32"), "dev", "lo"]);
            }
            for v in dsr.v6 {
                in_ns(
                    &be.name,
                    &["ip", "addr", "add", &format!("{v}/128"), "dev", "lo", "nodad"],
                );
            }
        }
        let mut pass = Ebpf::load(redirector::LAB_OBJECT).unwrap();
        let prog: &mut Xdp = pass.program_mut("pass").unwrap().try_into().unwrap();
        prog.load().unwrap();
        for (ns, ifname) in [(&client, "c0"), (&primary, "p0"), (&secondary, "s0")] {
            let _in = ns.enter();
            prog.attach(ifname, aya::programs::XdpMode::Driver).unwrap();
        }
        Lab {
            _pass: pass,
            client,
            gw,
            primary,
            secondary,
        }
    }
}
