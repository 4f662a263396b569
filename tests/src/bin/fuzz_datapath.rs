//! `cargo xtask fuzz datapath`: the real compiled XDP program, run through
//! BPF_PROG_TEST_RUN on generated and mutated frames, checked against
//! invariants that an independent parser (etherparse) decides. Not a test of
//! exact outputs: properties that hold for every input, whatever the program
//! learns to handle next (ICMP errors, fragments, options, echo answers).
//!
//! Each case picks a seed family (a VIP request of a NAT or DSR service, a
//! NAT reply, an ICMP error quoting a VIP flow, a fragment, options or
//! extension headers, an echo request, a VLAN-tagged request, a foreign
//! packet, random bytes), mutates it (or not), runs it, and checks:
//!
//! 1. **foreign** — a frame that, parsed by etherparse, concerns no service
//!    (not to a service's VIP, port and protocol; not from a NAT backend's
//!    service endpoint to a client; not an ICMP error quoting a VIP or backend
//!    address; not an echo, nor a fragment, to a VIP) passes byte for byte;
//! 2. **parse** — a frame sent out (`XDP_TX`, `XDP_REDIRECT`) or passed
//!    changed parses with etherparse, and its checksums are all valid when the
//!    input's were (`packets::frame_checksums`);
//! 3. **backends** — a new flow (TCP SYN or UDP, from a client address and
//!    port never used before with that service) goes to a backend that is up
//!    and not drained; no packet of a service goes to a down backend while the
//!    other is up; a service whose backends are all down with `drop`/`pass`,
//!    or a client the service refuses (`allow`/`deny`), gets nothing forwarded;
//! 4. **rewrite** — a rewritten TCP/UDP packet of a service, or NAT reply,
//!    differs from its input only in the MACs and TTL (when sent), the
//!    translated address and port, and their checksums (an IPv4 UDP checksum
//!    0 stays 0); nothing is forwarded with a TTL that expires;
//! 5. **counters** — every case moves exactly one outcome counter, or is
//!    forwarded and counted to one backend; over each batch the outcome
//!    counters and backend packet counts add up to the number of cases.
//!
//! A violation prints the seed, the case, the service states, both frames in
//! hex, and ends the run with an error. The same `--seed` replays the same
//! frames and states (flow-table timing may differ). The summary shows how
//! often each outcome was reached and each invariant applied, so a fuzzer
//! that only reaches one branch shows itself.
//!
//! IPv6 fragments are recognised from the fragment header's bytes, not by
//! etherparse 0.16, which reads its offset and M flag from the wrong bits
//! (`packets::ipv6_fragmented`).
#![expect(
    clippy::unwrap_used,
    reason = "a fuzzer: writing a frame into a Vec cannot fail, a broken setup ends the run"
)]

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use etherparse::{
    LaxNetSlice, LaxSlicedPacket, PacketBuilder, SlicedPacket, TransportSlice,
    checksum::Sum16BitWords,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    icmpv6::{self, DestUnreachableCode},
};
use redirector::{
    config::{Config, Mode, Service},
    datapath::both_up,
};
use redirector_common::{
    BackendStats, Counter, NextHop, PROTO_TCP, PROTO_UDP, SLOT_PRIMARY, SLOT_SECONDARY, SWITCH_DROP,
    SWITCH_PASS, SWITCH_PINNED, SwitchState, flow::syn_tag,
};
use redirector_tests::{
    Harness,
    action::{DROP, PASS, REDIRECT, TX},
    netns::{NetNs, ifindex, in_ns},
    packets::{L4, Rng, Spec, frame_checksums, ipv6_fragmented, parses},
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
const GW_IN_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
const P_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 2];
const GW_P_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 1];
const S_MAC: [u8; 6] = [0x02, 0, 0, 0, 3, 2];
const GW_S_MAC: [u8; 6] = [0x02, 0, 0, 0, 3, 1];

/// Counters that come on top of a packet's outcome (a flow entry written,
/// replaced or moved, a data-path signal reported or rate-limited), by name so
/// renamed or added ones need no change here. Every other counter is an
/// outcome: a packet moves exactly one of them, unless it is forwarded (then
/// it is counted to its backend instead).
const EXTRA_COUNTERS: [&str; 7] = [
    "flow_inserted",
    "flow_insert_failed",
    "flow_evicted",
    "syn_entry_written",
    "flow_moved",
    "signal_reported",
    "signal_rate_limited",
];

/// Outcomes of a send that did not happen (no next hop; the redirect map
/// refused the egress): the packet was already counted as forwarded, to its
/// backend (`BACKEND_STATS`) or as a [`FORWARD_COUNTERS`] increment.
const SEND_FAILED: [&str; 2] = ["unresolved_next_hop", "redirect_failed"];

/// Counters the program increments when it has translated a packet and is
/// about to send it: the outcome of a packet that is sent, but followed by a
/// [`SEND_FAILED`] one when the send does not happen (as the backend stats are).
const FORWARD_COUNTERS: [&str; 1] = ["icmp_error_forwarded"];

/// Cases between two whole-batch counter checks.
const BATCH: u64 = 4096;

/// Services: each mode, family and protocol, plus two NAT services whose
/// backends cannot be reached from XDP (no next hop; an egress the redirect
/// map refuses); some refuse part of the clients (allow/deny). Addresses
/// from 198.18.0.0/15 and 2001:2::/48 only.
const SERVICES: &str = r#"
[gateway]
interfaces = ["in0"]

[[service]]
name = "nat-tcp4"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2:8080"
secondary = "198.18.3.2"
deny = ["198.18.66.0/24"]

[[service]]
name = "nat-udp4"
vip = "198.18.100.1"
port = 53
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2:5353"

[[service]]
name = "nat-tcp6"
vip = "2001:2::100"
port = 80
protocol = "tcp"
primary = "[2001:2:0:2::2]:8080"
secondary = "2001:2:0:3::2"
deny = ["2001:2:0:64::/124"]

[[service]]
name = "nat-udp6"
vip = "2001:2::100"
port = 53
protocol = "udp"
primary = "2001:2:0:2::2"
secondary = "[2001:2:0:3::2]:5353"
allow = ["2001:2:0:64::/64"]

[[service]]
name = "dsr-tcp4"
vip = "198.18.100.2"
port = 80
protocol = "tcp"
mode = "dsr"
primary = "198.18.2.2"
secondary = "198.18.3.2"

[[service]]
name = "dsr-udp4"
vip = "198.18.100.2"
port = 53
protocol = "udp"
mode = "dsr"
primary = "198.18.2.2"
secondary = "198.18.3.2"
allow = ["198.18.64.0/24", "198.18.80.0/20"]
deny = ["198.18.64.128/25"]

[[service]]
name = "dsr-tcp6"
vip = "2001:2::200"
port = 80
protocol = "tcp"
mode = "dsr"
primary = "2001:2:0:2::2"
secondary = "2001:2:0:3::2"

[[service]]
name = "dsr-udp6"
vip = "2001:2::200"
port = 53
protocol = "udp"
mode = "dsr"
primary = "2001:2:0:2::2"
secondary = "2001:2:0:3::2"

[[service]]
name = "unreachable-tcp4"
vip = "198.18.100.3"
port = 443
protocol = "tcp"
primary = "198.18.4.2"
secondary = "198.18.5.2:8443"

[[service]]
name = "unreachable-udp6"
vip = "2001:2::300"
port = 443
protocol = "udp"
primary = "2001:2:0:4::2"
secondary = "[2001:2:0:5::2]:8443"
"#;

/// Egress MTUs of the lab's interfaces: toward the primary, the secondary,
/// the clients (the ingress). Frames above them meet the program's MTU check.
const P_MTU: u32 = 1280;
const S_MTU: u32 = 1400;
const IN_MTU: u32 = 1450;

/// The gateway's own addresses (`LOCAL_ADDRS`): traffic to them is never ours.
const LOCAL: [&str; 4] = ["198.18.2.1", "198.18.3.1", "2001:2:0:2::1", "2001:2:0:3::1"];

// ---------------------------------------------------------------------------
// Arguments and randomness
// ---------------------------------------------------------------------------

struct Args {
    cases: u64,
    seed: u64,
    /// Record violations and go on (one report per kind), failing at the end.
    keep_going: bool,
}

/// Full reports printed with `--keep-going` (one per kind of violation).
const MAX_REPORTS: usize = 12;

fn args() -> Result<Args> {
    let mut cases = 100_000;
    let mut seed = None;
    let mut keep_going = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--keep-going" {
            keep_going = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--cases" => cases = v.parse().with_context(|| format!("--cases {v}"))?,
            "--seed" => seed = Some(v.parse().with_context(|| format!("--seed {v}"))?),
            _ => bail!("unknown argument {a} (expected --cases N, --seed S, --keep-going)"),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Truncation is fine: any 64 bits make a seed.
        splitmix(now as u64 ^ u64::from(std::process::id()))
    });
    Ok(Args {
        cases,
        seed,
        keep_going,
    })
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The generator of case `n` (or of state block `n` with `salt`): each is
/// independent of the others, so a case's frame depends on the seed and its
/// number only.
fn rng_for(seed: u64, n: u64, salt: u64) -> Rng {
    Rng(splitmix(seed ^ splitmix(n ^ salt)) | 1)
}

fn below(r: &mut Rng, n: u64) -> u64 {
    if n == 0 { 0 } else { r.next_u64() % n }
}

fn chance(r: &mut Rng, percent: u64) -> bool {
    below(r, 100) < percent
}

fn index(r: &mut Rng, len: usize) -> usize {
    usize::try_from(below(r, len as u64)).unwrap_or(0)
}

fn pick<T: Copy>(r: &mut Rng, items: &[T]) -> T {
    items[index(r, items.len())]
}

/// Picks by weight: `(weight, item)`.
fn weighted<T: Copy>(r: &mut Rng, items: &[(u64, T)]) -> T {
    let total: u64 = items.iter().map(|(w, _)| w).sum();
    let mut x = below(r, total);
    for &(w, item) in items {
        if x < w {
            return item;
        }
        x -= w;
    }
    items[0].1
}

fn bytes(r: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| r.next_u64() as u8).collect()
}

fn port(r: &mut Rng) -> u16 {
    1024 + u16::try_from(below(r, 64_512)).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// What the fuzzer knows about the data plane it set up
// ---------------------------------------------------------------------------

struct Svc {
    /// As configured (its `admits` says which clients it refuses).
    conf: Service,
    id: u32,
    name: String,
    vip: IpAddr,
    port: u16,
    proto: u8,
    nat: bool,
    /// (address, port) of the primary and the secondary, as packets carry them.
    backends: [(IpAddr, u16); 2],
    hops: [NextHop; 2],
}

/// A switch state and what it models.
#[derive(Clone, Copy)]
struct State {
    kind: &'static str,
    st: SwitchState,
}

struct Model {
    svcs: Vec<Svc>,
    /// (VIP, port, protocol) → service.
    services: HashMap<(IpAddr, u16, u8), usize>,
    /// NAT backend (address, port, protocol) → (service, slot).
    reverse: HashMap<(IpAddr, u16, u8), (usize, u8)>,
    vips: HashSet<IpAddr>,
    /// Every backend address.
    backends: HashSet<IpAddr>,
    nat_backends: HashSet<IpAddr>,
    local: HashSet<IpAddr>,
    states: Vec<State>,
    client_hop: NextHop,
    /// Echo requests to VIPs are answered in XDP (else passed).
    echo_answer: bool,
    /// MTU `bpf_check_mtu` finds for an egress ifindex (0: the ingress's).
    mtus: HashMap<u32, u32>,
}

/// Where a packet's headers are (from etherparse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct At {
    ip_off: usize,
    l4_off: usize,
    v6: bool,
    tcp: bool,
    ttl: u8,
}

/// What a frame is to the data plane, as etherparse sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rel {
    /// Concerns no service: must pass untouched.
    Foreign,
    /// TCP/UDP to a service's VIP, port and protocol.
    Service {
        svc: usize,
        client: IpAddr,
        cport: u16,
        /// TCP SYN without ACK, or UDP: what a new flow starts with.
        opens: bool,
        /// A TCP SYN's tag (`syn_tag` of its sequence number): another tag
        /// from the same client port is a new connection.
        syn: Option<u16>,
        at: At,
    },
    /// TCP/UDP from a NAT backend's service endpoint to a client.
    Reply { svc: usize, slot: u8, at: At },
    /// An ICMP error quoting a packet from or to a VIP or backend address.
    IcmpError,
    /// An IP fragment to a VIP or from a NAT backend.
    Fragment,
    /// An ICMP echo request or reply to a VIP.
    Echo,
}

impl Rel {
    fn name(&self) -> &'static str {
        match self {
            Rel::Foreign => "foreign",
            Rel::Service { .. } => "service",
            Rel::Reply { .. } => "reply",
            Rel::IcmpError => "icmp error",
            Rel::Fragment => "fragment",
            Rel::Echo => "echo",
        }
    }
}

/// etherparse's transport slice, or, for an IPv6 packet etherparse wrongly
/// takes for a fragment (a reserved bit set in an atomic fragment header:
/// see `packets::ipv6_fragmented`), the transport parsed from its payload.
fn transport<'a>(
    p: &LaxSlicedPacket<'a>,
    payload: &etherparse::LaxIpPayloadSlice<'a>,
    fragmented: bool,
) -> Option<TransportSlice<'a>> {
    if fragmented || !payload.fragmented {
        return p.transport.clone();
    }
    let b = payload.payload;
    match payload.ip_number.0 {
        PROTO_TCP => etherparse::TcpSlice::from_slice(b).ok().map(TransportSlice::Tcp),
        PROTO_UDP => etherparse::UdpSlice::from_slice_lax(b)
            .ok()
            .map(TransportSlice::Udp),
        58 => etherparse::Icmpv6Slice::from_slice(b)
            .ok()
            .map(TransportSlice::Icmpv6),
        _ => None,
    }
}

fn offset(frame: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(frame.as_ptr() as usize)
}

impl Model {
    fn new(cfg: &Config, if_in: u32, if_p: u32, if_s: u32) -> Model {
        let hop = |ifindex, dst_mac, src_mac| NextHop {
            ifindex,
            dst_mac,
            src_mac,
        };
        let mut m = Model {
            svcs: Vec::new(),
            services: HashMap::new(),
            reverse: HashMap::new(),
            vips: HashSet::new(),
            backends: HashSet::new(),
            nat_backends: HashSet::new(),
            local: LOCAL.iter().map(|a| a.parse().unwrap()).collect(),
            states: Vec::new(),
            client_hop: hop(if_in, CLIENT_MAC, GW_IN_MAC),
            echo_answer: false,
            // 0: no next hop, the program checks against the ingress; 1: lo.
            mtus: HashMap::from([
                (0, IN_MTU),
                (if_in, IN_MTU),
                (1, 65_536),
                (if_p, P_MTU),
                (if_s, S_MTU),
            ]),
        };
        for (i, s) in cfg.services.iter().enumerate() {
            let id = u32::try_from(i).unwrap();
            let nat = s.mode == Mode::Nat;
            let backends = [
                (s.primary.addr, s.primary.port.unwrap_or(s.port)),
                (s.secondary.addr, s.secondary.port.unwrap_or(s.port)),
            ];
            // The last two services' backends cannot be reached from XDP: no
            // next hop yet (→ the stack), and an egress (lo) the redirect map refuses.
            let hops = if s.name.starts_with("unreachable") {
                [hop(0, P_MAC, GW_P_MAC), hop(1, S_MAC, GW_S_MAC)]
            } else {
                [hop(if_p, P_MAC, GW_P_MAC), hop(if_s, S_MAC, GW_S_MAC)]
            };
            let proto = s.protocol.number();
            m.services.insert((s.vip, s.port, proto), i);
            m.vips.insert(s.vip);
            for (slot, (addr, port)) in [SLOT_PRIMARY, SLOT_SECONDARY].into_iter().zip(backends) {
                m.backends.insert(addr);
                if nat {
                    m.nat_backends.insert(addr);
                    m.reverse.insert((addr, port, proto), (i, slot));
                }
            }
            m.svcs.push(Svc {
                conf: s.clone(),
                id,
                name: s.name.clone(),
                vip: s.vip,
                port: s.port,
                proto,
                nat,
                backends,
                hops,
            });
            m.states.push(State {
                kind: "both up, primary active",
                st: both_up(SLOT_PRIMARY),
            });
        }
        m
    }

    /// Is `a` a VIP or a backend address?
    fn mentioned(&self, a: IpAddr) -> bool {
        self.vips.contains(&a) || self.backends.contains(&a)
    }

    /// What `frame` is to the data plane, decided by etherparse (lax: it
    /// parses what is there, even with a lying length).
    fn relation(&self, frame: &[u8]) -> Rel {
        let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else {
            return Rel::Foreign;
        };
        let Some(net) = &p.net else {
            return Rel::Foreign;
        };
        let (src, dst, ip_off, v6, ttl, payload) = match net {
            LaxNetSlice::Ipv4(ip) => {
                let h = ip.header();
                (
                    IpAddr::from(h.source()),
                    IpAddr::from(h.destination()),
                    offset(frame, h.slice()),
                    false,
                    h.ttl(),
                    ip.payload(),
                )
            }
            LaxNetSlice::Ipv6(ip) => {
                let h = ip.header();
                (
                    IpAddr::from(h.source()),
                    IpAddr::from(h.destination()),
                    offset(frame, h.slice()),
                    true,
                    h.hop_limit(),
                    ip.payload(),
                )
            }
        };
        if self.local.contains(&dst) {
            // The gateway's own traffic (health probes' answers included).
            return Rel::Foreign;
        }
        let fragmented = match net {
            LaxNetSlice::Ipv4(_) => payload.fragmented,
            LaxNetSlice::Ipv6(ip) => ipv6_fragmented(ip.extensions()),
        };
        if fragmented {
            return if self.vips.contains(&dst) || self.nat_backends.contains(&src) {
                Rel::Fragment
            } else {
                Rel::Foreign
            };
        }
        let at = |l4: &[u8], tcp: bool| At {
            ip_off,
            l4_off: offset(frame, l4),
            v6,
            tcp,
            ttl,
        };
        match &transport(&p, payload, fragmented) {
            Some(TransportSlice::Tcp(t)) => self.l4_relation(
                (src, t.source_port()),
                (dst, t.destination_port()),
                PROTO_TCP,
                (t.syn() && !t.ack()).then(|| syn_tag(t.sequence_number())),
                at(t.slice(), true),
            ),
            Some(TransportSlice::Udp(u)) => self.l4_relation(
                (src, u.source_port()),
                (dst, u.destination_port()),
                PROTO_UDP,
                None,
                at(u.slice(), false),
            ),
            Some(TransportSlice::Icmpv4(i)) => self.icmp_relation(
                dst,
                matches!(i.type_u8(), 0 | 8),
                matches!(i.type_u8(), 3 | 4 | 5 | 11 | 12),
                i.payload(),
            ),
            Some(TransportSlice::Icmpv6(i)) => self.icmp_relation(
                dst,
                matches!(i.type_u8(), 128 | 129),
                matches!(i.type_u8(), 1..=4),
                i.payload(),
            ),
            None => Rel::Foreign,
        }
    }

    fn l4_relation(
        &self,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        proto: u8,
        syn: Option<u16>,
        at: At,
    ) -> Rel {
        if let Some(&svc) = self.services.get(&(dst.0, dst.1, proto)) {
            return Rel::Service {
                svc,
                client: src.0,
                cport: src.1,
                opens: proto == PROTO_UDP || syn.is_some(),
                syn,
                at,
            };
        }
        if let Some(&(svc, slot)) = self.reverse.get(&(src.0, src.1, proto)) {
            return Rel::Reply { svc, slot, at };
        }
        Rel::Foreign
    }

    fn icmp_relation(&self, dst: IpAddr, echo: bool, error: bool, payload: &[u8]) -> Rel {
        if echo && self.vips.contains(&dst) {
            return Rel::Echo;
        }
        if error
            && let Ok(inner) = LaxSlicedPacket::from_ip(payload)
            && let Some(net) = &inner.net
        {
            let (s, d) = match net {
                LaxNetSlice::Ipv4(ip) => (
                    IpAddr::from(ip.header().source()),
                    IpAddr::from(ip.header().destination()),
                ),
                LaxNetSlice::Ipv6(ip) => (
                    IpAddr::from(ip.header().source()),
                    IpAddr::from(ip.header().destination()),
                ),
            };
            if self.mentioned(s) || self.mentioned(d) {
                return Rel::IcmpError;
            }
        }
        Rel::Foreign
    }

    /// Which backend slot a rewritten packet of service `svc` went to: by
    /// the destination MAC when sent, by the destination address when a
    /// NAT packet was handed to the stack.
    fn slot_of(&self, svc: usize, out: &[u8], sent: bool, at: At) -> Option<u8> {
        let s = &self.svcs[svc];
        if sent {
            let mac = out.get(..6)?;
            return [SLOT_PRIMARY, SLOT_SECONDARY]
                .into_iter()
                .find(|&slot| mac == s.hops[usize::from(slot)].dst_mac);
        }
        if !s.nat {
            return None;
        }
        let dst = read_addr(out, at, false)?;
        [SLOT_PRIMARY, SLOT_SECONDARY]
            .into_iter()
            .find(|&slot| dst == s.backends[usize::from(slot)].0)
    }
}

fn read_addr(frame: &[u8], at: At, src: bool) -> Option<IpAddr> {
    if at.v6 {
        let off = at.ip_off + if src { 8 } else { 24 };
        let b: [u8; 16] = frame.get(off..off + 16)?.try_into().ok()?;
        Some(IpAddr::from(b))
    } else {
        let off = at.ip_off + if src { 12 } else { 16 };
        let b: [u8; 4] = frame.get(off..off + 4)?.try_into().ok()?;
        Some(IpAddr::from(b))
    }
}

fn write_addr(frame: &mut [u8], at: At, src: bool, addr: IpAddr) {
    let (off, b): (usize, Vec<u8>) = match addr {
        IpAddr::V4(a) => (at.ip_off + if src { 12 } else { 16 }, a.octets().to_vec()),
        IpAddr::V6(a) => (at.ip_off + if src { 8 } else { 24 }, a.octets().to_vec()),
    };
    if let Some(dst) = frame.get_mut(off..off + b.len()) {
        dst.copy_from_slice(&b);
    }
}

// ---------------------------------------------------------------------------
// Backend states
// ---------------------------------------------------------------------------

/// The states userspace writes (`daemon/apply.rs`): (what, active, up, drained, share, all-down flag).
type Desired = (&'static str, u8, u8, u8, u8, u8);

fn desired(r: &mut Rng) -> Desired {
    let share = 1 + u8::try_from(below(r, 100)).unwrap_or(0);
    let last = pick(r, &[SLOT_PRIMARY, SLOT_SECONDARY]);
    weighted(
        r,
        &[
            (25, ("both up, primary active", SLOT_PRIMARY, 0b11, 0, 0, 0)),
            (
                10,
                ("both up, secondary active (flip)", SLOT_SECONDARY, 0b11, 0, 0, 0),
            ),
            (
                15,
                ("primary down, secondary active", SLOT_SECONDARY, 0b10, 0, 0, 0),
            ),
            (8, ("secondary down, primary active", SLOT_PRIMARY, 0b01, 0, 0, 0)),
            (8, ("primary drained", SLOT_SECONDARY, 0b11, 0b01, 0, 0)),
            (5, ("secondary drained", SLOT_PRIMARY, 0b11, 0b10, 0, 0)),
            (10, ("load share", SLOT_PRIMARY, 0b11, 0, share, 0)),
            (
                3,
                (
                    "load share, secondary drained",
                    SLOT_PRIMARY,
                    0b11,
                    0b10,
                    share,
                    0,
                ),
            ),
            (3, ("load share, secondary down", SLOT_PRIMARY, 0b01, 0, share, 0)),
            (4, ("all down, keep", last, 0, 0, 0, 0)),
            (5, ("all down, drop", last, 0, 0, 0, SWITCH_DROP)),
            (4, ("all down, pass", last, 0, 0, 0, SWITCH_PASS)),
        ],
    )
}

/// The next state of a service, written as `Switches::write` does: the
/// pinned flag set whenever entries may be written and kept until a sweep
/// clears it — which the fuzzer does now and then where a sweep may.
fn next_state(r: &mut Rng, prev: SwitchState) -> State {
    let (kind, active, up, drained, share, all_down) = desired(r);
    let mut flags = prev.flags & SWITCH_PINNED;
    if active != SLOT_PRIMARY || share > 0 || drained & 1 != 0 {
        flags |= SWITCH_PINNED;
    } else if chance(r, 20) {
        flags &= !SWITCH_PINNED;
    }
    State {
        kind,
        st: SwitchState {
            active,
            up,
            drained,
            flags: flags | all_down,
            share,
            _pad: 0,
            generation: prev.generation.wrapping_add(1),
        },
    }
}

// ---------------------------------------------------------------------------
// Seed frames
// ---------------------------------------------------------------------------

struct Case {
    family: String,
    what: String,
    frame: Vec<u8>,
}

/// What earlier cases used: keys already seen by a service (so "new flow"
/// means never seen) and recent flows to send more packets of.
#[derive(Default)]
struct History {
    seen: HashSet<(IpAddr, u16, usize)>,
    /// SYN tags sent per flow key: a SYN with a tag not among them opens a
    /// new connection from a reused port.
    syns: HashSet<(IpAddr, u16, usize, u16)>,
    recent: VecDeque<(usize, IpAddr, u16)>,
}

const RECENT: usize = 1024;

fn family_name(base: &str, v6: bool) -> String {
    format!("{base} {}", if v6 { "v6" } else { "v4" })
}

/// A client address (198.18.64.0–198.18.96.255, 2001:2:0:64::/63: clear of
/// every VIP, backend and gateway address); those `with_hop` have a next hop
/// for replies.
fn client(r: &mut Rng, v6: bool, with_hop: bool) -> IpAddr {
    let low = r.next_u64();
    match (v6, with_hop) {
        (false, true) => IpAddr::V4(Ipv4Addr::new(198, 18, 64, low as u8)),
        (false, false) => IpAddr::V4(Ipv4Addr::new(198, 18, 65 + (low % 32) as u8, (low >> 8) as u8)),
        (true, true) => IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0x64, 0, 0, 0, low as u8 as u16)),
        (true, false) => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            2,
            0,
            0x65,
            (low >> 16) as u16,
            (low >> 32) as u16,
            (low >> 48) as u16,
            low as u16,
        )),
    }
}

fn client_hop_addrs() -> impl Iterator<Item = IpAddr> {
    (0..=255u8).flat_map(|i| {
        [
            IpAddr::V4(Ipv4Addr::new(198, 18, 64, i)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0x64, 0, 0, 0, u16::from(i))),
        ]
    })
}

/// A client of `addr`'s family.
fn c_for(r: &mut Rng, addr: IpAddr) -> IpAddr {
    let with_hop = chance(r, 50);
    client(r, addr.is_ipv6(), with_hop)
}

fn other_host(r: &mut Rng, v6: bool) -> IpAddr {
    let low = r.next_u64();
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0x200, 0, 0, 0, low as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 200, low as u8))
    }
}

fn router(v6: bool, backend_side: bool) -> IpAddr {
    match (v6, backend_side) {
        (false, false) => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 254)),
        (false, true) => IpAddr::V4(Ipv4Addr::new(198, 18, 2, 254)),
        (true, false) => IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0xfe)),
        (true, true) => IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0xfe)),
    }
}

fn ttl(r: &mut Rng) -> u8 {
    if chance(r, 93) {
        64
    } else {
        pick(r, &[0, 1, 2, 255])
    }
}

fn tcp_or_udp(proto: u8, syn: bool, ack: bool) -> L4 {
    if proto == PROTO_TCP {
        L4::Tcp { syn, ack }
    } else {
        L4::Udp
    }
}

/// A payload; now and then one that makes the packet bigger than an egress MTU.
fn big_or_small(r: &mut Rng) -> Vec<u8> {
    if chance(r, 8) {
        let len = 1150 + index(r, 301);
        bytes(r, len)
    } else {
        payload(r, 256)
    }
}

/// Clears IPv4 "don't fragment" now and then (the stack may fragment those).
fn maybe_clear_df(r: &mut Rng, f: &mut [u8]) {
    if f.get(12..14) == Some(&[0x08, 0x00]) && f.len() > 34 && chance(r, 25) {
        f[14 + 6] &= !0x40;
        fix_ipv4_header(f, 14);
    }
}

fn payload(r: &mut Rng, max: usize) -> Vec<u8> {
    let len = index(r, max + 1);
    bytes(r, len)
}

/// Recomputes the IPv4 header checksum at `ip_off` (header length from its IHL).
fn fix_ipv4_header(f: &mut [u8], ip_off: usize) {
    let Some(&vihl) = f.get(ip_off) else { return };
    let ihl = usize::from(vihl & 0xf) * 4;
    if ihl < 20 || f.len() < ip_off + ihl {
        return;
    }
    f[ip_off + 10] = 0;
    f[ip_off + 11] = 0;
    // etherparse sums 16-bit words as they lie in memory: the result goes back as is.
    let c = Sum16BitWords::new()
        .add_slice(&f[ip_off..ip_off + ihl])
        .ones_complement();
    f[ip_off + 10..ip_off + 12].copy_from_slice(&c.to_ne_bytes());
}

fn set_u16(f: &mut [u8], off: usize, v: u16) {
    if let Some(d) = f.get_mut(off..off + 2) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

fn get_u16(f: &[u8], off: usize) -> u16 {
    f.get(off..off + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

impl Model {
    fn gen_case(&self, r: &mut Rng, hist: &History) -> Case {
        #[derive(Clone, Copy)]
        enum F {
            New,
            Known,
            Reply,
            IcmpError,
            Fragment,
            Options,
            Echo,
            Vlan,
            Foreign,
            Random,
        }
        let f = weighted(
            r,
            &[
                (20, F::New),
                (11, F::Known),
                (12, F::Reply),
                (12, F::IcmpError),
                (8, F::Fragment),
                (8, F::Options),
                (5, F::Echo),
                (2, F::Vlan),
                (17, F::Foreign),
                (5, F::Random),
            ],
        );
        match f {
            F::New => {
                let svc = index(r, self.svcs.len());
                self.request(r, hist, svc, true)
            }
            F::Known => {
                let svc = index(r, self.svcs.len());
                self.request(r, hist, svc, false)
            }
            F::Reply => self.reply(r, hist),
            F::IcmpError => self.icmp_error(r, hist),
            F::Fragment => self.fragment(r, hist),
            F::Options => self.options(r, hist),
            F::Echo => self.echo(r),
            F::Vlan => {
                let svc = index(r, self.svcs.len());
                let mut c = self.request(r, hist, svc, true);
                let tci = u16::try_from(below(r, 4096)).unwrap_or(1).to_be_bytes();
                c.frame.splice(12..12, [0x81, 0x00, tci[0], tci[1]]);
                c.family = family_name("vlan", self.svcs[svc].vip.is_ipv6());
                c
            }
            F::Foreign => self.foreign(r),
            F::Random => {
                let len = 14 + index(r, 200);
                let mut frame = bytes(r, len);
                let mut what = "random bytes".to_owned();
                if chance(r, 50) {
                    // A valid prefix takes the parser deeper.
                    let svc = index(r, self.svcs.len());
                    let base = self.request(r, hist, svc, true).frame;
                    let n = len.min(14 + index(r, 60)).min(base.len());
                    frame[..n].copy_from_slice(&base[..n]);
                    what = format!(
                        "random bytes after {n} bytes of a {} request",
                        self.svcs[svc].name
                    );
                }
                Case {
                    family: "random".into(),
                    what,
                    frame,
                }
            }
        }
    }

    /// A key (client, port) for service `svc`: never seen, or a recent one.
    fn flow(&self, r: &mut Rng, hist: &History, svc: usize, new: bool) -> (IpAddr, u16) {
        let v6 = self.svcs[svc].vip.is_ipv6();
        if !new {
            let known: Vec<_> = hist
                .recent
                .iter()
                .filter(|(s, _, _)| *s == svc)
                .map(|&(_, c, p)| (c, p))
                .collect();
            if !known.is_empty() {
                return pick(r, &known);
            }
        }
        let mut key = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        for _ in 0..16 {
            let with_hop = chance(r, 50);
            key = (client(r, v6, with_hop), port(r));
            if !hist.seen.contains(&(key.0, key.1, svc)) {
                break;
            }
        }
        key
    }

    fn request_spec(&self, r: &mut Rng, hist: &History, svc: usize, new: bool) -> Spec {
        let s = &self.svcs[svc];
        let (c, cport) = self.flow(r, hist, svc, new);
        let (syn, ack) = if new {
            if chance(r, 92) {
                (true, false)
            } else {
                (false, true)
            }
        } else if chance(r, 88) {
            (false, true)
        } else {
            (true, false)
        };
        let mut spec = Spec::new(c, cport, s.vip, s.port, tcp_or_udp(s.proto, syn, ack));
        // Half the SYNs repeat the default sequence number (retransmissions
        // of a flow's first SYN); the others open a new connection.
        if syn && chance(r, 50) {
            spec.seq = r.next_u64() as u32;
        }
        spec.ttl = ttl(r);
        spec.payload = big_or_small(r);
        spec.udp_zero_csum = s.proto == PROTO_UDP && s.vip.is_ipv4() && chance(r, 5);
        spec
    }

    fn request(&self, r: &mut Rng, hist: &History, svc: usize, new: bool) -> Case {
        let spec = self.request_spec(r, hist, svc, new);
        let s = &self.svcs[svc];
        let mut frame = spec.build();
        maybe_clear_df(r, &mut frame);
        Case {
            family: family_name(if new { "request new" } else { "request known" }, s.vip.is_ipv6()),
            what: format!("{} from {}:{}", s.name, spec.src, spec.sport),
            frame,
        }
    }

    fn nat_svc(&self, r: &mut Rng) -> usize {
        let nat: Vec<usize> = (0..self.svcs.len()).filter(|&i| self.svcs[i].nat).collect();
        pick(r, &nat)
    }

    fn reply_spec(&self, r: &mut Rng, hist: &History, svc: usize, slot: u8) -> Spec {
        let s = &self.svcs[svc];
        let (c, cport) = if chance(r, 50) {
            self.flow(r, hist, svc, false)
        } else {
            let with_hop = chance(r, 75);
            (client(r, s.vip.is_ipv6(), with_hop), port(r))
        };
        let (addr, bport) = s.backends[usize::from(slot)];
        let mut spec = Spec::new(addr, bport, c, cport, tcp_or_udp(s.proto, chance(r, 10), true));
        (spec.smac, spec.dmac) = if slot == SLOT_PRIMARY {
            (P_MAC, GW_P_MAC)
        } else {
            (S_MAC, GW_S_MAC)
        };
        spec.ttl = ttl(r);
        spec.payload = big_or_small(r);
        spec.udp_zero_csum = s.proto == PROTO_UDP && s.vip.is_ipv4() && chance(r, 5);
        spec
    }

    fn reply(&self, r: &mut Rng, hist: &History) -> Case {
        let svc = self.nat_svc(r);
        let slot = pick(r, &[SLOT_PRIMARY, SLOT_SECONDARY]);
        let spec = self.reply_spec(r, hist, svc, slot);
        let s = &self.svcs[svc];
        let mut frame = spec.build();
        maybe_clear_df(r, &mut frame);
        Case {
            family: family_name("reply", s.vip.is_ipv6()),
            what: format!("{} slot {slot} to {}:{}", s.name, spec.dst, spec.dport),
            frame,
        }
    }

    /// An ICMP error about a flow of a service: to the VIP about one of its
    /// replies (a client-side router or the client), or to the client about
    /// a request on the backend side (the backend itself or a router there).
    fn icmp_error(&self, r: &mut Rng, hist: &History) -> Case {
        let svc = index(r, self.svcs.len());
        let s = &self.svcs[svc];
        let v6 = s.vip.is_ipv6();
        let new = chance(r, 30);
        let (c, cport) = self.flow(r, hist, svc, new);
        let to_vip = chance(r, 50);
        let slot = usize::from(chance(r, 50));
        let (src, dst, smac, dmac, inner) = if to_vip {
            let mut inner = Spec::new(s.vip, s.port, c, cport, tcp_or_udp(s.proto, false, true));
            inner.payload = payload(r, 64);
            let src = if chance(r, 50) { c } else { router(v6, false) };
            (src, s.vip, CLIENT_MAC, GW_IN_MAC, inner)
        } else {
            let (addr, bport) = if s.nat { s.backends[slot] } else { (s.vip, s.port) };
            let mut inner = Spec::new(c, cport, addr, bport, tcp_or_udp(s.proto, true, false));
            inner.payload = payload(r, 64);
            let src = if chance(r, 50) {
                s.backends[slot].0
            } else {
                router(v6, true)
            };
            let (smac, dmac) = if slot == 0 {
                (P_MAC, GW_P_MAC)
            } else {
                (S_MAC, GW_S_MAC)
            };
            (src, c, smac, dmac, inner)
        };
        let quoted = inner.build();
        let ip_len = if v6 { 40 } else { 20 };
        let mut quote = quoted[14..].to_vec();
        if chance(r, 50) {
            // RFC 792: the IP header and the first 8 bytes of its payload.
            quote.truncate(ip_len + 8);
        }
        let eth = PacketBuilder::ethernet2(smac, dmac);
        let mut frame = Vec::new();
        let what;
        match (src, dst) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let t = pick(r, &[0u8, 1, 2, 3]);
                let ty = match t {
                    0 => etherparse::Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
                    1 => etherparse::Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
                    2 => etherparse::Icmpv4Type::DestinationUnreachable(
                        DestUnreachableHeader::FragmentationNeeded {
                            next_hop_mtu: 576 + u16::try_from(below(r, 925)).unwrap_or(0),
                        },
                    ),
                    _ => etherparse::Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
                };
                what = format!("{ty:?}");
                eth.ipv4(a.octets(), b.octets(), ttl(r))
                    .icmpv4(ty)
                    .write(&mut frame, &quote)
                    .unwrap();
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let t = pick(r, &[0u8, 1, 2, 3]);
                let ty = match t {
                    0 => etherparse::Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
                    1 => etherparse::Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Address),
                    2 => etherparse::Icmpv6Type::PacketTooBig {
                        mtu: 1280 + u32::try_from(below(r, 221)).unwrap_or(0),
                    },
                    _ => etherparse::Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
                };
                what = format!("{ty:?}");
                eth.ipv6(a.octets(), b.octets(), ttl(r))
                    .icmpv6(ty)
                    .write(&mut frame, &quote)
                    .unwrap();
            }
            _ => unreachable!("one family per service"),
        }
        Case {
            family: family_name("icmp error", v6),
            what: format!(
                "{what} {} {} about {}:{cport} ({} quoted bytes)",
                if to_vip {
                    "to the VIP of"
                } else {
                    "to the client of"
                },
                s.name,
                c,
                quote.len()
            ),
            frame,
        }
    }

    /// One fragment of a VIP request or a NAT reply (IPv4 MF/offset; IPv6
    /// fragment header, sometimes an atomic one).
    fn fragment(&self, r: &mut Rng, hist: &History) -> Case {
        let (mut spec, name) = if chance(r, 75) {
            let svc = index(r, self.svcs.len());
            let new = chance(r, 50);
            (self.request_spec(r, hist, svc, new), &self.svcs[svc].name)
        } else {
            let svc = self.nat_svc(r);
            let slot = pick(r, &[SLOT_PRIMARY, SLOT_SECONDARY]);
            (self.reply_spec(r, hist, svc, slot), &self.svcs[svc].name)
        };
        let len = 64 + index(r, 500);
        spec.payload = bytes(r, len);
        let full = spec.build();
        let v6 = spec.dst.is_ipv6();
        let hl = if v6 { 40 } else { 20 };
        let (hdr, l4) = (&full[14..14 + hl], &full[14 + hl..]);
        let blocks = l4.len() / 8;
        let k = 8 * (1 + index(r, blocks - 1));
        let which = if v6 && chance(r, 10) { 3 } else { below(r, 3) };
        let (piece, off, more) = match which {
            0 => (&l4[..k], 0, true),
            1 if k + 8 < l4.len() => {
                let k2 = k + 8 * (1 + index(r, (l4.len() - k - 1) / 8));
                (&l4[k..k2.min(l4.len())], k, true)
            }
            3 => (l4, 0, false),
            _ => (&l4[k..], k, false),
        };
        let id = r.next_u64();
        let mut frame = full[..14].to_vec();
        frame.extend_from_slice(hdr);
        if v6 {
            let proto = frame[14 + 6];
            frame[14 + 6] = 44;
            let offm = (u16::try_from(off / 8).unwrap_or(0) << 3) | u16::from(more);
            frame.extend_from_slice(&[proto, 0]);
            frame.extend_from_slice(&offm.to_be_bytes());
            frame.extend_from_slice(&(id as u32).to_be_bytes());
            frame.extend_from_slice(piece);
            set_u16(&mut frame, 14 + 4, u16::try_from(8 + piece.len()).unwrap_or(0));
        } else {
            frame.extend_from_slice(piece);
            set_u16(&mut frame, 14 + 2, u16::try_from(20 + piece.len()).unwrap_or(0));
            set_u16(&mut frame, 14 + 4, id as u16);
            let flags = if more { 0x2000 } else { 0 };
            set_u16(&mut frame, 14 + 6, flags | u16::try_from(off / 8).unwrap_or(0));
            fix_ipv4_header(&mut frame, 14);
        }
        let kind = ["first", "middle", "last", "atomic"][usize::try_from(which).unwrap_or(0)];
        Case {
            family: family_name("fragment", v6),
            what: format!("{kind} fragment (offset {off}, {} bytes) of {name}", piece.len()),
            frame,
        }
    }

    /// A VIP request or NAT reply with IPv4 options or IPv6 extension headers.
    fn options(&self, r: &mut Rng, hist: &History) -> Case {
        let (spec, name) = if chance(r, 80) {
            let svc = index(r, self.svcs.len());
            let new = chance(r, 60);
            (self.request_spec(r, hist, svc, new), &self.svcs[svc].name)
        } else {
            let svc = self.nat_svc(r);
            let slot = pick(r, &[SLOT_PRIMARY, SLOT_SECONDARY]);
            (self.reply_spec(r, hist, svc, slot), &self.svcs[svc].name)
        };
        let mut frame = spec.build();
        let v6 = spec.dst.is_ipv6();
        let what;
        if v6 {
            // 1..=3 headers; hop-by-hop may only come first.
            let n = 1 + index(r, 3);
            let mut types: Vec<u8> = Vec::new();
            for i in 0..n {
                let t = if i == 0 {
                    pick(r, &[0u8, 60, 43, 44])
                } else {
                    pick(r, &[60u8, 43, 44])
                };
                types.push(t);
            }
            let proto = frame[14 + 6];
            let mut ext = Vec::new();
            for (i, &t) in types.iter().enumerate() {
                let next = types.get(i + 1).copied().unwrap_or(proto);
                match t {
                    // Routing: type 4 (segment routing) with no segment left.
                    43 => ext.extend_from_slice(&[next, 0, 4, 0, 0, 0, 0, 0]),
                    // An atomic fragment header.
                    44 => {
                        ext.extend_from_slice(&[next, 0, 0, 0]);
                        ext.extend_from_slice(&(r.next_u64() as u32).to_be_bytes());
                    }
                    _ if chance(r, 30) => {
                        // Router alert, then PadN to 16 bytes.
                        ext.extend_from_slice(&[next, 1, 5, 2, 0, 0, 1, 8]);
                        ext.extend_from_slice(&[0; 8]);
                    }
                    _ => ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
                }
            }
            frame[14 + 6] = types[0];
            let plen = get_u16(&frame, 14 + 4) + u16::try_from(ext.len()).unwrap_or(0);
            set_u16(&mut frame, 14 + 4, plen);
            frame.splice(54..54, ext);
            what = format!("extension headers {types:?}");
        } else {
            let opts: Vec<u8> = match below(r, 4) {
                0 => vec![1, 1, 1, 0],
                1 => vec![148, 4, 0, 0],
                2 => vec![7, 7, 4, 198, 18, 1, 1, 0],
                _ => {
                    let n = 4 * (1 + index(r, 10));
                    bytes(r, n)
                }
            };
            let words = u8::try_from(opts.len() / 4).unwrap_or(0);
            frame[14] = 0x40 | (5 + words);
            let tot = get_u16(&frame, 16) + u16::try_from(opts.len()).unwrap_or(0);
            set_u16(&mut frame, 16, tot);
            what = format!("IPv4 options {opts:02x?}");
            frame.splice(34..34, opts);
            fix_ipv4_header(&mut frame, 14);
        }
        Case {
            family: family_name("options", v6),
            what: format!("{what} on {name}"),
            frame,
        }
    }

    fn echo(&self, r: &mut Rng) -> Case {
        let v6 = chance(r, 50);
        let vips: Vec<IpAddr> = self.vips.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
        let mut vips = vips;
        vips.sort();
        let vip = pick(r, &vips);
        let with_hop = chance(r, 50);
        let c = client(r, v6, with_hop);
        let (id, seq) = (r.next_u64() as u16, r.next_u64() as u16);
        let request = chance(r, 85);
        let data = payload(r, 64);
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, GW_IN_MAC);
        let mut frame = Vec::new();
        match (c, vip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let ip = eth.ipv4(a.octets(), b.octets(), ttl(r));
                if request {
                    ip.icmpv4_echo_request(id, seq).write(&mut frame, &data).unwrap();
                } else {
                    ip.icmpv4_echo_reply(id, seq).write(&mut frame, &data).unwrap();
                }
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let ip = eth.ipv6(a.octets(), b.octets(), ttl(r));
                if request {
                    ip.icmpv6_echo_request(id, seq).write(&mut frame, &data).unwrap();
                } else {
                    ip.icmpv6_echo_reply(id, seq).write(&mut frame, &data).unwrap();
                }
            }
            _ => unreachable!("same family"),
        }
        Case {
            family: family_name("echo", v6),
            what: format!(
                "echo {} from {c} to {vip}",
                if request { "request" } else { "reply" }
            ),
            frame,
        }
    }

    /// Packets that concern no service.
    fn foreign(&self, r: &mut Rng) -> Case {
        let svc = index(r, self.svcs.len());
        let s = &self.svcs[svc];
        let v6 = s.vip.is_ipv6();
        let with_hop = chance(r, 50);
        let c = client(r, v6, with_hop);
        let (what, frame) = match below(r, 11) {
            0 => {
                // The VIP, a port or protocol no service has there.
                let proto = pick(r, &[PROTO_TCP, PROTO_UDP]);
                let mut p = port(r);
                for _ in 0..8 {
                    if !self.services.contains_key(&(s.vip, p, proto)) {
                        break;
                    }
                    p = port(r);
                }
                let spec = Spec::new(c, port(r), s.vip, p, tcp_or_udp(proto, true, false));
                (format!("to {}:{p} proto {proto}", s.vip), spec.build())
            }
            1 => {
                // A service port on another address.
                let dst = other_host(r, v6);
                let spec = Spec::new(c, port(r), dst, s.port, tcp_or_udp(s.proto, true, false));
                (format!("to {dst}:{}", s.port), spec.build())
            }
            2 => {
                // Another protocol to the VIP.
                let mut f = Spec::new(c, port(r), s.vip, s.port, L4::Udp).build();
                let proto = if v6 {
                    pick(r, &[47u8, 132, 59, 50, 253])
                } else {
                    pick(r, &[47u8, 132, 50, 89, 2])
                };
                if v6 {
                    f[14 + 6] = proto;
                } else {
                    f[14 + 9] = proto;
                    fix_ipv4_header(&mut f, 14);
                }
                (format!("protocol {proto} to {}", s.vip), f)
            }
            3 => {
                // A backend talking from a port that is not its service's.
                let (addr, bport) = s.backends[index(r, 2)];
                let mut p = port(r);
                for _ in 0..8 {
                    if !self.reverse.contains_key(&(addr, p, s.proto)) && p != bport {
                        break;
                    }
                    p = port(r);
                }
                let spec = Spec::new(addr, p, c, port(r), tcp_or_udp(s.proto, false, true));
                (format!("from {addr}:{p}"), spec.build())
            }
            4 => {
                // A health probe's answer: a NAT backend to the gateway itself.
                let svc = self.nat_svc(r);
                let s = &self.svcs[svc];
                let (addr, bport) = s.backends[index(r, 2)];
                let mut locals: Vec<IpAddr> = self
                    .local
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv6() == addr.is_ipv6())
                    .collect();
                locals.sort();
                let local = pick(r, &locals);
                if chance(r, 70) {
                    let spec = Spec::new(addr, bport, local, port(r), tcp_or_udp(s.proto, false, true));
                    (format!("probe answer {addr}:{bport} → {local}"), spec.build())
                } else {
                    let mut f = Vec::new();
                    let eth = PacketBuilder::ethernet2(P_MAC, GW_P_MAC);
                    match (addr, local) {
                        (IpAddr::V4(a), IpAddr::V4(b)) => eth
                            .ipv4(a.octets(), b.octets(), 64)
                            .icmpv4_echo_reply(1, 2)
                            .write(&mut f, b"probe")
                            .unwrap(),
                        (IpAddr::V6(a), IpAddr::V6(b)) => eth
                            .ipv6(a.octets(), b.octets(), 64)
                            .icmpv6_echo_reply(1, 2)
                            .write(&mut f, b"probe")
                            .unwrap(),
                        _ => unreachable!("same family"),
                    }
                    (format!("echo probe answer {addr} → {local}"), f)
                }
            }
            5 => {
                // ARP: who has the VIP?
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&CLIENT_MAC);
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&CLIENT_MAC);
                f.extend_from_slice(&[198, 18, 64, 9]);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&[198, 18, 100, 1]);
                ("ARP request for 198.18.100.1".into(), f)
            }
            6 => {
                let random = r.next_u64() as u16 | 0x0600;
                let et = pick(r, &[0x88ccu16, 0x8847, 0x9000, 0x0842, random]);
                let mut f = GW_IN_MAC.to_vec();
                f.extend_from_slice(&CLIENT_MAC);
                f.extend_from_slice(&et.to_be_bytes());
                let n = 46 + index(r, 60);
                f.extend(bytes(r, n));
                (format!("ethertype {et:#06x}"), f)
            }
            7 => {
                // An ICMP error about a flow between unrelated hosts, to the VIP.
                let other = other_host(r, v6);
                let quote = Spec::new(c, port(r), other, port(r), L4::Udp).build()[14..].to_vec();
                let mut f = Vec::new();
                let eth = PacketBuilder::ethernet2(CLIENT_MAC, GW_IN_MAC);
                match (c, s.vip) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => eth
                        .ipv4(a.octets(), b.octets(), 64)
                        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                            DestUnreachableHeader::Port,
                        ))
                        .write(&mut f, &quote)
                        .unwrap(),
                    (IpAddr::V6(a), IpAddr::V6(b)) => eth
                        .ipv6(a.octets(), b.octets(), 64)
                        .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
                            DestUnreachableCode::Port,
                        ))
                        .write(&mut f, &quote)
                        .unwrap(),
                    _ => unreachable!("same family"),
                }
                (format!("ICMP error to {} about {c} → {other}", s.vip), f)
            }
            8 => {
                // Other ICMP to the VIP: a timestamp request, a neighbour solicitation.
                let mut f = Vec::new();
                let eth = PacketBuilder::ethernet2(CLIENT_MAC, GW_IN_MAC);
                match (c, s.vip) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => eth
                        .ipv4(a.octets(), b.octets(), 64)
                        .icmpv4_raw(13, 0, [0, 1, 0, 1])
                        .write(&mut f, &[0; 12])
                        .unwrap(),
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        let mut body = b.octets().to_vec();
                        body.extend_from_slice(&[1, 1]);
                        body.extend_from_slice(&CLIENT_MAC);
                        eth.ipv6(a.octets(), b.octets(), 255)
                            .icmpv6_raw(135, 0, [0; 4])
                            .write(&mut f, &body)
                            .unwrap();
                    }
                    _ => unreachable!("same family"),
                }
                (format!("other ICMP to {}", s.vip), f)
            }
            9 => {
                // A client talking to a NAT backend itself (a direct flow), and the
                // backend answering it from another port than its service's.
                let svc = self.nat_svc(r);
                let s = &self.svcs[svc];
                let (addr, bport) = s.backends[index(r, 2)];
                let cport = port(r);
                let spec = Spec::new(
                    c_for(r, addr),
                    cport,
                    addr,
                    bport,
                    tcp_or_udp(s.proto, true, false),
                );
                (format!("direct flow to {addr}:{bport}"), spec.build())
            }
            _ => {
                // Echo to a backend or another host (not a VIP).
                let dst = if chance(r, 50) {
                    s.backends[index(r, 2)].0
                } else {
                    other_host(r, v6)
                };
                let mut f = Vec::new();
                let eth = PacketBuilder::ethernet2(CLIENT_MAC, GW_IN_MAC);
                match (c, dst) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => eth
                        .ipv4(a.octets(), b.octets(), 64)
                        .icmpv4_echo_request(7, 7)
                        .write(&mut f, b"ping")
                        .unwrap(),
                    (IpAddr::V6(a), IpAddr::V6(b)) => eth
                        .ipv6(a.octets(), b.octets(), 64)
                        .icmpv6_echo_request(7, 7)
                        .write(&mut f, b"ping")
                        .unwrap(),
                    _ => unreachable!("same family"),
                }
                (format!("echo request to {dst}"), f)
            }
        };
        Case {
            family: "foreign".into(),
            what,
            frame,
        }
    }
}

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

/// Length fields of a frame (offset, kind), found by etherparse.
#[derive(Clone, Copy)]
enum Field {
    U16(usize),
    /// The high nibble of a byte (TCP data offset).
    Hi(usize),
    /// The low nibble of a byte (IPv4 IHL).
    Lo(usize),
}

fn length_fields(f: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let Ok(p) = LaxSlicedPacket::from_ethernet(f) else {
        return out;
    };
    match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let o = offset(f, ip.header().slice());
            out.push(Field::U16(o + 2));
            out.push(Field::Lo(o));
        }
        Some(LaxNetSlice::Ipv6(ip)) => out.push(Field::U16(offset(f, ip.header().slice()) + 4)),
        None => {}
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => out.push(Field::Hi(offset(f, t.slice()) + 12)),
        Some(TransportSlice::Udp(u)) => out.push(Field::U16(offset(f, u.slice()) + 4)),
        Some(TransportSlice::Icmpv4(i)) => {
            // The quoted packet's total length.
            let o = offset(f, i.payload());
            if i.payload().len() >= 20 {
                out.push(Field::U16(o + 2));
            }
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let o = offset(f, i.payload());
            if i.payload().len() >= 40 {
                out.push(Field::U16(o + 4));
            }
        }
        None => {}
    }
    out
}

const MUTATIONS: [(u64, &str); 8] = [
    (30, "none"),
    (15, "bit flips"),
    (12, "byte overwrites"),
    (12, "truncation"),
    (15, "lying length"),
    (8, "header noise"),
    (4, "trailing bytes"),
    (4, "two mutations"),
];

/// End of the region where headers live (Ethernet, VLAN, IP with options or
/// extension headers, L4, a quoted header).
fn header_end(len: usize) -> usize {
    len.min(14 + 4 + 60 + 40 + 28)
}

fn mutate_once(r: &mut Rng, f: &mut Vec<u8>, kind: &str) {
    let len = f.len();
    let spot = |r: &mut Rng| {
        if chance(r, 85) {
            index(r, header_end(len))
        } else {
            index(r, len)
        }
    };
    match kind {
        "bit flips" => {
            for _ in 0..1 + below(r, 3) {
                let at = spot(r);
                f[at] ^= 1 << below(r, 8);
            }
        }
        "byte overwrites" => {
            for _ in 0..1 + below(r, 3) {
                let at = spot(r);
                f[at] = if chance(r, 60) {
                    pick(
                        r,
                        &[
                            0u8, 0xff, 1, 2, 0x40, 0x45, 0x46, 0x4f, 0x60, 6, 17, 1, 58, 44, 0x86, 0xdd, 0x81,
                        ],
                    )
                } else {
                    r.next_u64() as u8
                };
            }
        }
        "truncation" if len > 14 => f.truncate(14 + index(r, len - 14)),
        "lying length" => {
            let fields = length_fields(f);
            if fields.is_empty() {
                return;
            }
            match pick(r, &fields) {
                Field::U16(o) => {
                    let old = get_u16(f, o);
                    let new = match below(r, 7) {
                        0 => 0,
                        1 => pick(r, &[1u16, 7, 8, 19, 20, 39, 40]),
                        2 => old.wrapping_add(1 + u16::try_from(below(r, 16)).unwrap_or(0)),
                        3 => old.wrapping_sub(1 + u16::try_from(below(r, 16)).unwrap_or(0)),
                        4 => 0xffff,
                        5 => old / 2,
                        _ => r.next_u64() as u16,
                    };
                    set_u16(f, o, new);
                }
                Field::Hi(o) => f[o] = (f[o] & 0x0f) | ((r.next_u64() as u8) << 4),
                Field::Lo(o) => f[o] = (f[o] & 0xf0) | (r.next_u64() as u8 & 0x0f),
            }
        }
        "header noise" => {
            let start = index(r, header_end(len));
            let n = (1 + index(r, 16)).min(len - start);
            for b in &mut f[start..start + n] {
                *b = r.next_u64() as u8;
            }
        }
        "trailing bytes" => {
            let n = 1 + index(r, 64);
            f.extend(bytes(r, n));
        }
        _ => {}
    }
}

/// Mutates `f`; returns the mutation's name. Half of the mutated frames get
/// their checksums recomputed (where etherparse can), so a broken length is
/// met both with valid and with invalid checksums.
fn mutate(r: &mut Rng, f: &mut Vec<u8>) -> &'static str {
    let kind = weighted(r, &MUTATIONS);
    match kind {
        "none" => return kind,
        "two mutations" => {
            for _ in 0..2 {
                let k = weighted(r, &MUTATIONS[1..7]);
                mutate_once(r, f, k);
            }
        }
        k => mutate_once(r, f, k),
    }
    if chance(r, 50) {
        fix_checksums(f);
    }
    kind
}

/// Recomputes what checksums etherparse can find: the IPv4 header's, then
/// (if the frame parses strictly) the transport's.
fn fix_checksums(f: &mut [u8]) {
    let ip_off = match LaxSlicedPacket::from_ethernet(f) {
        Ok(LaxSlicedPacket {
            net: Some(LaxNetSlice::Ipv4(ip)),
            ..
        }) => Some(offset(f, ip.header().slice())),
        _ => None,
    };
    if let Some(o) = ip_off {
        fix_ipv4_header(f, o);
    }
    let write = {
        let Ok(p) = SlicedPacket::from_ethernet(f) else {
            return;
        };
        let Some(net) = &p.net else { return };
        if let etherparse::NetSlice::Ipv6(ip) = net
            && ipv6_fragmented(ip.extensions())
        {
            return;
        }
        let pseudo = |s: Sum16BitWords, len: usize, proto: u8| -> Sum16BitWords {
            match net {
                etherparse::NetSlice::Ipv4(ip) => {
                    let h = ip.header();
                    s.add_slice(&h.source())
                        .add_slice(&h.destination())
                        .add_2bytes([0, proto])
                        .add_2bytes(u16::try_from(len).unwrap_or(0).to_be_bytes())
                }
                etherparse::NetSlice::Ipv6(ip) => {
                    let h = ip.header();
                    s.add_slice(&h.source())
                        .add_slice(&h.destination())
                        .add_slice(&u32::try_from(len).unwrap_or(0).to_be_bytes())
                        .add_2bytes([0, proto])
                }
            }
        };
        // Sum of the message with its checksum field (at `at`) skipped.
        let sum = |s: Sum16BitWords, msg: &[u8], at: usize| match (msg.get(..at), msg.get(at + 2..)) {
            (Some(a), Some(b)) => s.add_slice(a).add_slice(b),
            _ => s,
        };
        match &p.transport {
            // etherparse's own sums, as `frame_checksums` checks them.
            Some(TransportSlice::Tcp(t)) => {
                let c = match net {
                    etherparse::NetSlice::Ipv4(ip) => t
                        .to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), t.payload()),
                    etherparse::NetSlice::Ipv6(ip) => t
                        .to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), t.payload()),
                };
                c.ok().map(|c| (offset(f, t.slice()) + 16, c))
            }
            Some(TransportSlice::Udp(u)) => {
                let c = match net {
                    etherparse::NetSlice::Ipv4(_) if u.checksum() == 0 => return,
                    etherparse::NetSlice::Ipv4(ip) => u
                        .to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), u.payload()),
                    etherparse::NetSlice::Ipv6(ip) => u
                        .to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), u.payload()),
                };
                c.ok().map(|c| (offset(f, u.slice()) + 6, c))
            }
            // In-memory word sums (see `fix_ipv4_header`), as wire-order values.
            Some(TransportSlice::Icmpv4(i)) => {
                let m = i.slice();
                let c = sum(Sum16BitWords::new(), m, 2).ones_complement();
                Some((offset(f, m) + 2, u16::from_be_bytes(c.to_ne_bytes())))
            }
            Some(TransportSlice::Icmpv6(i)) => {
                let m = i.slice();
                let c = sum(pseudo(Sum16BitWords::new(), m.len(), 58), m, 2).ones_complement();
                Some((offset(f, m) + 2, u16::from_be_bytes(c.to_ne_bytes())))
            }
            None => None,
        }
    };
    if let Some((at, c)) = write {
        set_u16(f, at, c);
    }
}

// ---------------------------------------------------------------------------
// Running and checking
// ---------------------------------------------------------------------------

fn action_name(a: u32) -> String {
    match a {
        0 => "ABORTED".into(),
        DROP => "DROP".into(),
        PASS => "PASS".into(),
        TX => "TX".into(),
        REDIRECT => "REDIRECT".into(),
        n => format!("action {n}"),
    }
}

/// A data-path signal (reported or rate-limited) comes only from a NAT
/// backend's RST|ACK with sequence 0 (a closed port's answer to a SYN) or an
/// ICMP/ICMPv6 destination unreachable: anything else that moved a signal
/// counter would make the daemon probe a backend for nothing.
fn signal_only_from_a_hint(run: &Run) -> Result<(), String> {
    if run.hinted == 0 {
        return Ok(());
    }
    if run.hinted > 1 {
        return Err(format!(
            "[signal] one packet moved the signal counters {} times",
            run.hinted
        ));
    }
    let hint = match run.rel {
        Rel::Reply { .. } => etherparse::SlicedPacket::from_ethernet(run.frame)
            .ok()
            .and_then(|p| match p.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => {
                    Some(t.rst() && t.ack() && t.sequence_number() == 0)
                }
                _ => None,
            })
            .unwrap_or(false),
        Rel::IcmpError => etherparse::SlicedPacket::from_ethernet(run.frame)
            .ok()
            .and_then(|p| match p.transport {
                Some(etherparse::TransportSlice::Icmpv4(i)) => Some(i.type_u8() == 3),
                Some(etherparse::TransportSlice::Icmpv6(i)) => Some(i.type_u8() == 1),
                _ => None,
            })
            .unwrap_or(false),
        _ => false,
    };
    if hint {
        Ok(())
    } else {
        Err(format!(
            "[signal] a {} packet that is neither a closed port's RST nor a destination unreachable \
             was reported as a signal",
            run.rel.name()
        ))
    }
}

fn is_extra(c: Counter) -> bool {
    EXTRA_COUNTERS.contains(&c.name())
}

/// One case as run.
struct Run<'a> {
    frame: &'a [u8],
    out: &'a [u8],
    act: u32,
    rel: Rel,
    /// Outcome counters that moved (once per increment).
    moved: Vec<Counter>,
    /// Data-path signals reported or rate-limited during the case.
    hinted: u64,
    /// Backend packets and bytes counted during the case, if read.
    counted: Option<(u64, u64)>,
    /// No packet of this flow was seen before (a new flow if it opens one).
    fresh: bool,
}

impl Run<'_> {
    fn sent(&self) -> bool {
        self.act == TX || self.act == REDIRECT
    }

    fn changed(&self) -> bool {
        self.act != DROP && self.out != self.frame
    }

    /// "REDIRECT fwd primary", "PASS malformed", ...
    fn outcome(&self) -> String {
        let act = action_name(self.act);
        let changed = if self.act == PASS && self.changed() {
            " (rewritten)"
        } else {
            ""
        };
        match self.moved.as_slice() {
            [c] => format!("{act} {}{changed}", c.name()),
            [] if self.sent() => {
                let to = match self.out.get(..6) {
                    Some(m) if m == P_MAC => "primary",
                    Some(m) if m == S_MAC => "secondary",
                    Some(m) if m == CLIENT_MAC => "client",
                    _ => "elsewhere",
                };
                format!("{act} fwd {to}")
            }
            [] => format!("{act} (no counter){changed}"),
            many => {
                let names: Vec<&str> = many.iter().map(|c| c.name()).collect();
                format!("{act} {}{changed}", names.join("+"))
            }
        }
    }
}

/// Which checks a case was subject to beyond the counters (bits), so the
/// summary shows none of them is vacuous.
const CHECKS: [&str; 11] = [
    "1 foreign frame untouched",
    "2 output parses",
    "2 valid checksums kept valid",
    "3 all down: nothing forwarded",
    "3 refused client: nothing forwarded",
    "3 not to a down backend",
    "3 new flow: up, not drained",
    "4 exact rewrite",
    "4 sent frame fits the egress MTU",
    "4 exact too-big answer",
    "4 echo answered exactly, or passed",
];

fn names(cs: &[Counter]) -> String {
    cs.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

/// The IP packet's length by its header (what an MTU limits).
fn ip_len(frame: &[u8], at: At) -> usize {
    if at.v6 {
        40 + usize::from(get_u16(frame, at.ip_off + 4))
    } else {
        usize::from(get_u16(frame, at.ip_off + 2))
    }
}

/// An ICMP "fragmentation needed" / ICMPv6 "packet too big" in place of a
/// packet: (ICMP message, IP header offset, v6).
fn too_big_message(out: &[u8]) -> Option<(&[u8], usize, bool)> {
    let p = LaxSlicedPacket::from_ethernet(out).ok()?;
    let ip_off = match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => offset(out, ip.header().slice()),
        Some(LaxNetSlice::Ipv6(ip)) => offset(out, ip.header().slice()),
        None => return None,
    };
    match &p.transport {
        Some(TransportSlice::Icmpv4(i)) if i.type_u8() == 3 && i.code_u8() == 4 => {
            Some((i.slice(), ip_off, false))
        }
        Some(TransportSlice::Icmpv6(i)) if i.type_u8() == 2 => Some((i.slice(), ip_off, true)),
        _ => None,
    }
}

impl Model {
    /// Every invariant for one case: `Err` names the one broken, `Ok` has
    /// a bit per [`CHECKS`] entry that applied (the counters always do).
    fn check(&self, run: &Run) -> Result<u16, String> {
        if ![DROP, PASS, TX, REDIRECT].contains(&run.act) {
            return Err(format!("[action] unexpected XDP action {}", run.act));
        }
        let sent = run.sent();
        let changed = run.changed();
        let mut applied = 0u16;
        accounting(run)?;
        signal_only_from_a_hint(run)?;

        // 1. Foreign: untouched.
        if run.rel == Rel::Foreign {
            applied |= 1;
            if run.act != PASS || changed {
                return Err(format!(
                    "[1 foreign] a frame that concerns no service came back {}{}",
                    action_name(run.act),
                    if changed { " changed" } else { "" }
                ));
            }
        }

        // 2. What leaves, or is handed on changed, parses and keeps valid checksums.
        if sent || changed {
            applied |= 1 << 1;
            if let Err(e) = parses(run.out) {
                return Err(format!("[2 parse] the output does not parse: {e}"));
            }
            if frame_checksums(run.frame).is_ok() {
                applied |= 1 << 2;
                if let Err(e) = frame_checksums(run.out) {
                    return Err(format!("[2 checksum] valid input, invalid output: {e}"));
                }
            }
        }

        match run.rel {
            Rel::Service {
                svc,
                client,
                opens,
                at,
                ..
            } => {
                let st = self.states[svc].st;
                if st.flags & (SWITCH_DROP | SWITCH_PASS) != 0 {
                    applied |= 1 << 3;
                    if sent || changed {
                        return Err(
                            "[3 all down] a service whose backends are all down (drop/pass) forwarded a packet"
                                .into(),
                        );
                    }
                }
                if !self.svcs[svc].conf.admits(client) {
                    applied |= 1 << 4;
                    if sent || changed {
                        return Err(format!(
                            "[3 refused] {client} is refused by the service, and its packet forwarded"
                        ));
                    }
                }
                if !(sent || changed) {
                    return Ok(applied);
                }
                if sent && at.ttl <= 1 {
                    return Err(format!(
                        "[4 rewrite] sent with TTL {} (the stack must answer it)",
                        at.ttl
                    ));
                }
                let s = &self.svcs[svc];
                let slot = if sent && too_big_message(run.out).is_some() {
                    // Answered "too big" for the egress toward the chosen backend.
                    applied |= 1 << 9;
                    let mtu = self.too_big(run, at, s.conf.mode == Mode::Dsr)?;
                    [SLOT_PRIMARY, SLOT_SECONDARY]
                        .into_iter()
                        .find(|&x| self.mtu(s.hops[usize::from(x)].ifindex) == mtu)
                        .ok_or_else(|| format!("[4 too big] MTU {mtu} is not a backend link's"))?
                } else {
                    let Some(slot) = self.slot_of(svc, run.out, sent, at) else {
                        return Err(
                            "[4 rewrite] a packet of the service went to neither of its backends".into(),
                        );
                    };
                    let be = s.backends[usize::from(slot)];
                    let hop = s.hops[usize::from(slot)];
                    self.rewritten(
                        run,
                        at,
                        sent,
                        (hop.dst_mac, hop.src_mac),
                        s.nat.then_some((false, be.0, be.1)),
                    )?;
                    applied |= 1 << 7;
                    if sent {
                        applied |= 1 << 8;
                        self.fits(run.out, hop.ifindex)?;
                    }
                    slot
                };
                if st.up & 0b11 != 0 {
                    applied |= 1 << 5;
                    if !st.is_up(slot) {
                        return Err(format!(
                            "[3 backends] sent to the {} backend, which is down, while the other is up",
                            slot_name(slot)
                        ));
                    }
                }
                let eligible = |x: u8| st.is_up(x) && st.drained & (1 << x) == 0;
                if opens && run.fresh && (eligible(0) || eligible(1)) {
                    applied |= 1 << 6;
                    if !eligible(slot) {
                        return Err(format!(
                            "[3 backends] a new flow went to the {} backend, which is {}",
                            slot_name(slot),
                            if st.is_up(slot) { "drained" } else { "down" }
                        ));
                    }
                }
                Ok(applied)
            }
            Rel::Reply { svc, at, .. } => {
                if !(sent || changed) {
                    return Ok(applied);
                }
                if sent && at.ttl <= 1 {
                    return Err(format!("[4 rewrite] reply sent with TTL {}", at.ttl));
                }
                let hop = self.client_hop;
                if sent && too_big_message(run.out).is_some() {
                    let mtu = self.too_big(run, at, false)?;
                    if mtu != self.mtu(hop.ifindex) {
                        return Err(format!("[4 too big] MTU {mtu} is not the clients' link's"));
                    }
                    return Ok(applied | 1 << 9);
                }
                let s = &self.svcs[svc];
                self.rewritten(
                    run,
                    at,
                    sent,
                    (hop.dst_mac, hop.src_mac),
                    Some((true, s.vip, s.port)),
                )?;
                if sent {
                    self.fits(run.out, hop.ifindex)?;
                    applied |= 1 << 8;
                }
                Ok(applied | 1 << 7)
            }
            Rel::Echo => {
                applied |= 1 << 10;
                if sent || changed {
                    if !self.echo_answer {
                        return Err("[4 echo] answered while echo answering is off".into());
                    }
                    if !sent {
                        return Err("[4 echo] passed changed".into());
                    }
                    echo_answer(run)?;
                }
                Ok(applied)
            }
            _ => Ok(applied),
        }
    }

    /// The MTU the program's check finds for an egress.
    fn mtu(&self, ifindex: u32) -> u32 {
        self.mtus.get(&ifindex).copied().unwrap_or(u32::MAX)
    }

    /// A sent frame fits its egress link (what `bpf_check_mtu` compares).
    fn fits(&self, out: &[u8], ifindex: u32) -> Result<(), String> {
        let mtu = self.mtu(ifindex);
        if out.len() as u64 > u64::from(mtu) + 14 {
            return Err(format!(
                "[4 mtu] a {}-byte frame sent to a link with MTU {mtu}",
                out.len()
            ));
        }
        Ok(())
    }

    /// Invariant 4 for a "too big" answer: from the packet's destination to
    /// its source, back where it came from, quoting its start, with an MTU
    /// the packet exceeds (an IPv4 one must not be fragmentable, unless `dsr`:
    /// the stack cannot route a DSR packet to its backend). Returns the MTU.
    fn too_big(&self, run: &Run, at: At, dsr: bool) -> Result<u32, String> {
        let (frame, out) = (run.frame, run.out);
        let (icmp, ip_off, v6) = too_big_message(out).ok_or("[4 too big] not a too-big message")?;
        if v6 != at.v6 {
            return Err("[4 too big] answered in the other IP version".into());
        }
        if out[..6] != frame[6..12] || out[6..12] != frame[..6] {
            return Err("[4 too big] not sent back where the packet came from (MACs)".into());
        }
        let out_at = At { ip_off, ..at };
        if read_addr(out, out_at, true) != read_addr(frame, at, false)
            || read_addr(out, out_at, false) != read_addr(frame, at, true)
        {
            return Err("[4 too big] not from the packet's destination to its source".into());
        }
        let quote = icmp.get(8..).unwrap_or(&[]);
        let min = if v6 { 48 } else { 28 };
        if quote.len() < min || frame.get(at.ip_off..at.ip_off + quote.len()) != Some(quote) {
            return Err(format!(
                "[4 too big] the {}-byte quote is not the start of the packet",
                quote.len()
            ));
        }
        let mtu = if v6 {
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]])
        } else {
            u32::from(u16::from_be_bytes([icmp[6], icmp[7]]))
        };
        if !v6 && !dsr && frame[at.ip_off + 6] & 0x40 == 0 {
            return Err("[4 too big] answered an IPv4 packet without DF (the stack may fragment it)".into());
        }
        let len = ip_len(frame, at);
        if len <= mtu as usize {
            return Err(format!(
                "[4 too big] a {len}-byte packet (in a {}-byte frame) does not exceed MTU {mtu}",
                frame.len()
            ));
        }
        Ok(mtu)
    }

    /// Invariant 4: `run.out` is `run.frame` with exactly these changes: MACs
    /// and TTL when sent, the address and port of one side when translated,
    /// and the checksums that cover them.
    fn rewritten(
        &self,
        run: &Run,
        at: At,
        sent: bool,
        macs: ([u8; 6], [u8; 6]),
        nat: Option<(bool, IpAddr, u16)>,
    ) -> Result<(), String> {
        let (frame, out) = (run.frame, run.out);
        // A big frame (IP payload over 576 / 1280 bytes, where the program
        // checks the MTU) loses any bytes after its IP packet.
        let ip_end = at.ip_off + ip_len(frame, at);
        let big = frame.len() - 14 > if at.v6 { 1280 } else { 576 };
        let frame = if big && ip_end < frame.len() {
            &frame[..ip_end]
        } else {
            frame
        };
        if out.len() != frame.len() {
            return Err(format!("[4 rewrite] {} bytes in, {} out", frame.len(), out.len()));
        }
        let mut want = frame.to_vec();
        if sent {
            want[..6].copy_from_slice(&macs.0);
            want[6..12].copy_from_slice(&macs.1);
            let ttl_at = at.ip_off + if at.v6 { 7 } else { 8 };
            want[ttl_at] = want[ttl_at].wrapping_sub(1);
        }
        if let Some((src, addr, port)) = nat {
            write_addr(&mut want, at, src, addr);
            set_u16(&mut want, at.l4_off + if src { 0 } else { 2 }, port);
        }
        let csum_at = at.l4_off + if at.tcp { 16 } else { 6 };
        let mut csums = vec![csum_at];
        if !at.v6 {
            csums.push(at.ip_off + 10);
        }
        for &c in &csums {
            if let (Some(w), Some(o)) = (want.get_mut(c..c + 2), out.get(c..c + 2)) {
                w.copy_from_slice(o);
            }
        }
        if want != out {
            let diff: Vec<String> = (0..out.len())
                .filter(|&i| want[i] != out[i])
                .take(8)
                .map(|i| format!("@{i}: {:02x} want {:02x}", out[i], want[i]))
                .collect();
            return Err(format!("[4 rewrite] unexpected bytes: {}", diff.join(", ")));
        }
        if !at.v6
            && !at.tcp
            && frame.get(csum_at..csum_at + 2) == Some(&[0, 0])
            && out.get(csum_at..csum_at + 2) != Some(&[0, 0])
        {
            return Err("[4 rewrite] an IPv4 UDP checksum 0 (none) was changed".into());
        }
        Ok(())
    }
}

/// Invariant 5 for one case: exactly one outcome. A packet that is sent
/// has its outcome counter, or is counted as forwarded (to its backend, or
/// by a [`FORWARD_COUNTERS`] one); a packet that is not sent has one outcome
/// counter, after a forwarding count only if that send failed.
fn accounting(run: &Run) -> Result<(), String> {
    let sent = run.sent();
    let counted = run.counted.unwrap_or((0, 0));
    let (fwd, others): (Vec<Counter>, Vec<Counter>) = run
        .moved
        .iter()
        .partition(|c| FORWARD_COUNTERS.contains(&c.name()));
    let outcomes = others.len() as u64 + if sent { fwd.len() as u64 + counted.0 } else { 0 };
    if outcomes != 1 {
        return Err(format!(
            "[5 counters] {} for one {} packet: counter increments ({}), backend packets {}",
            if outcomes == 0 {
                "no outcome"
            } else {
                "several outcomes"
            },
            action_name(run.act),
            names(&run.moved),
            counted.0,
        ));
    }
    if counted.0 > 1 {
        return Err(format!(
            "[5 counters] one packet counted {} times to backends",
            counted.0
        ));
    }
    let send_failed = others.iter().any(|c| SEND_FAILED.contains(&c.name()));
    if !sent && (counted.0 > 0 || !fwd.is_empty()) && !send_failed {
        return Err(format!(
            "[5 counters] counted as forwarded (backend packets {}, counters {}) but {}",
            counted.0,
            names(&run.moved),
            action_name(run.act),
        ));
    }
    if counted.0 == 1 {
        let len = [run.frame.len() as u64, run.out.len() as u64];
        if !len.contains(&counted.1) {
            return Err(format!(
                "[5 counters] {} bytes counted to the backend for a {}-byte frame ({} out)",
                counted.1, len[0], len[1]
            ));
        }
    }
    Ok(())
}

/// An echo answer: the request turned around — MACs and addresses swapped,
/// a reply type, the identifier, sequence and data unchanged.
fn echo_answer(run: &Run) -> Result<(), String> {
    let parts = |f: &[u8]| -> Option<(Option<IpAddr>, Option<IpAddr>, Vec<u8>)> {
        let p = LaxSlicedPacket::from_ethernet(f).ok()?;
        let (src, dst) = match &p.net {
            Some(LaxNetSlice::Ipv4(ip)) => (
                IpAddr::from(ip.header().source()),
                IpAddr::from(ip.header().destination()),
            ),
            Some(LaxNetSlice::Ipv6(ip)) => (
                IpAddr::from(ip.header().source()),
                IpAddr::from(ip.header().destination()),
            ),
            None => return None,
        };
        let icmp = match &p.transport {
            Some(TransportSlice::Icmpv4(i)) => i.slice().to_vec(),
            Some(TransportSlice::Icmpv6(i)) => i.slice().to_vec(),
            _ => return None,
        };
        Some((Some(src), Some(dst), icmp))
    };
    let (Some((isrc, idst, req)), Some((osrc, odst, rep))) = (parts(run.frame), parts(run.out)) else {
        return Err("[4 echo] the answer or the request is no ICMP message".into());
    };
    if !matches!(req[0], 8 | 128) || rep[0] != if req[0] == 8 { 0 } else { 129 } {
        return Err(format!("[4 echo] type {} answered with type {}", req[0], rep[0]));
    }
    if (osrc, odst) != (idst, isrc) || run.out[..6] != run.frame[6..12] || run.out[6..12] != run.frame[..6] {
        return Err("[4 echo] the answer does not go back where the request came from".into());
    }
    if rep.get(1) != req.get(1) || rep.get(4..) != req.get(4..) {
        return Err("[4 echo] the answer's code, identifier, sequence or data differ".into());
    }
    Ok(())
}

fn slot_name(slot: u8) -> &'static str {
    if slot == SLOT_PRIMARY {
        "primary"
    } else {
        "secondary"
    }
}

fn hex(f: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in f.chunks(32).enumerate() {
        let _ = write!(s, "\n    {:04x}:", i * 32);
        for b in chunk {
            let _ = write!(s, " {b:02x}");
        }
    }
    s
}

/// Backend counters of every slot of every service, in `id * 2 + slot` order.
fn backend_stats(h: &Harness, services: usize) -> Result<Vec<BackendStats>> {
    let mut out = Vec::with_capacity(services * 2);
    for id in 0..u32::try_from(services)? {
        for slot in [SLOT_PRIMARY, SLOT_SECONDARY] {
            out.push(h.dp.backend_stats(id, slot)?);
        }
    }
    Ok(out)
}

fn packets(s: &[BackendStats]) -> (u64, u64) {
    s.iter().fold((0, 0), |(p, b), x| {
        (p + x.fwd_packets + x.rev_packets, b + x.fwd_bytes + x.rev_bytes)
    })
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    families: BTreeMap<String, BTreeMap<String, u64>>,
    mutations: BTreeMap<&'static str, BTreeMap<String, u64>>,
    relations: BTreeMap<&'static str, u64>,
    /// Cases each of [`CHECKS`] applied to.
    checks: [u64; CHECKS.len()],
    /// `--keep-going`: violations by kind (invariant and family): count, first case.
    violations: BTreeMap<String, (u64, u64)>,
}

impl Tally {
    /// Records a violation; true if it is the first of its kind.
    fn violation(&mut self, kind: String, n: u64) -> bool {
        let e = self.violations.entry(kind).or_insert((0, n));
        e.0 += 1;
        e.0 == 1
    }
}

fn fuzz(args: &Args) -> Result<()> {
    let (if_in, if_p, if_s) = (ifindex("in0"), ifindex("p0"), ifindex("s0"));
    let cfg = Config::from_str_named(SERVICES, "the fuzzer's services")?;
    let mut m = Model::new(&cfg, if_in, if_p, if_s);
    let mut h = Harness::new(if_in);
    for i in [if_in, if_p, if_s] {
        h.dp.add_egress(i)?;
    }
    let mut hops = h.dp.hop_maps()?;
    for a in &m.local {
        hops.add_local_addr(*a)?;
    }
    for a in client_hop_addrs() {
        hops.set_client_hop(a, m.client_hop)?;
    }
    for (svc, s) in cfg.services.iter().zip(&m.svcs) {
        h.dp.set_service(s.id, svc, s.hops, m.states[usize::try_from(s.id)?].st)?;
    }
    let outcome_counters: Vec<&str> = Counter::ALL
        .iter()
        .filter(|c| !is_extra(**c))
        .map(|c| c.name())
        .collect();
    let extra_counters: Vec<&str> = Counter::ALL
        .iter()
        .filter(|c| is_extra(**c))
        .map(|c| c.name())
        .collect();
    println!(
        "fuzz datapath: {} cases, seed {} (replay: cargo xtask fuzz datapath --cases {} --seed {})",
        args.cases, args.seed, args.cases, args.seed
    );
    println!(
        "  {} services; outcome counters: {}; extra counters: {}",
        m.svcs.len(),
        outcome_counters.join(", "),
        extra_counters.join(", ")
    );

    let mut hist = History::default();
    let mut tally = Tally::default();
    let mut counters = h.dp.counters()?;
    let start_counters = counters;
    let mut stats = backend_stats(&h, m.svcs.len())?;
    let (mut batch_counters, mut batch_stats) = (counters, packets(&stats).0);
    let (mut batch_cases, mut batch_plain_fwd, mut batch_counted) = (0u64, 0u64, 0u64);
    let mut next_change = 0u64;
    let started = Instant::now();
    for n in 0..args.cases {
        if n == next_change {
            let mut r = rng_for(args.seed, n, 0x0057_17e5);
            for id in 0..m.svcs.len() {
                if n == 0 || chance(&mut r, 50) {
                    let next = next_state(&mut r, m.states[id].st);
                    h.dp.set_switch(m.svcs[id].id, next.st)?;
                    m.states[id] = next;
                }
            }
            m.echo_answer = chance(&mut r, 50);
            h.dp.set_icmp_echo(m.echo_answer)?;
            next_change = n + 16 + below(&mut r, 113);
        }
        let mut r = rng_for(args.seed, n, 0xca5e);
        let case = m.gen_case(&mut r, &hist);
        let mut frame = case.frame.clone();
        let mutation = mutate(&mut r, &mut frame);
        let rel = m.relation(&frame);
        if case.family == "foreign" && mutation == "none" && rel != Rel::Foreign {
            bail!(
                "fuzzer bug: case {n}, foreign seed frame ({}) seen as {}",
                case.what,
                rel.name()
            );
        }
        let fresh = match rel {
            Rel::Service {
                svc,
                client,
                cport,
                syn,
                ..
            } => {
                !hist.seen.contains(&(client, cport, svc))
                    || syn.is_some_and(|t| !hist.syns.contains(&(client, cport, svc, t)))
            }
            _ => false,
        };

        let (act, out) = h.run(&frame);

        let now = h.dp.counters()?;
        let hinted = [Counter::SignalReported, Counter::SignalLimited]
            .iter()
            .map(|&c| now[c as usize].saturating_sub(counters[c as usize]))
            .sum::<u64>();
        let mut moved = Vec::new();
        for c in Counter::ALL {
            let (a, b) = (counters[c as usize], now[c as usize]);
            if b < a {
                bail!("counter {} went down from {a} to {b}", c.name());
            }
            if !is_extra(c) {
                for _ in 0..(b - a).min(4) {
                    moved.push(c);
                }
            }
        }
        counters = now;
        let sent = act == TX || act == REDIRECT;
        let read_stats = sent
            || (act != DROP && out != frame)
            || moved.len() != 1
            || moved.iter().any(|c| SEND_FAILED.contains(&c.name()));
        let counted = if read_stats {
            let now = backend_stats(&h, m.svcs.len())?;
            let (p0, b0) = packets(&stats);
            let (p1, b1) = packets(&now);
            stats = now;
            Some((p1.wrapping_sub(p0), b1.wrapping_sub(b0)))
        } else {
            None
        };
        let run = Run {
            frame: &frame,
            out: &out,
            act,
            rel,
            moved,
            hinted,
            counted,
            fresh,
        };
        match m.check(&run) {
            Ok(applied) => {
                for (i, hits) in tally.checks.iter_mut().enumerate() {
                    *hits += u64::from((applied >> i) & 1);
                }
            }
            Err(why) => {
                if !args.keep_going {
                    report(args, n, &m, &case, mutation, &run, &why);
                    bail!("invariant violated at case {n} (seed {}): {why}", args.seed);
                }
                let tag = why.split(']').next().unwrap_or("").trim_start_matches('[');
                let kind = format!("[{tag}] {}, {}", case.family, run.rel.name());
                if tally.violation(kind, n) && tally.violations.len() <= MAX_REPORTS {
                    report(args, n, &m, &case, mutation, &run, &why);
                }
            }
        }

        // Bookkeeping for later cases and the tables.
        if let Rel::Service {
            svc,
            client,
            cport,
            syn,
            ..
        } = rel
        {
            hist.seen.insert((client, cport, svc));
            if let Some(t) = syn {
                hist.syns.insert((client, cport, svc, t));
            }
            if hist.recent.len() == RECENT {
                hist.recent.pop_front();
            }
            hist.recent.push_back((svc, client, cport));
        }
        let outcome = run.outcome();
        *tally.outcomes.entry(outcome.clone()).or_default() += 1;
        *tally
            .families
            .entry(case.family.clone())
            .or_default()
            .entry(outcome.clone())
            .or_default() += 1;
        let coarse = if run.act == PASS && !run.changed() {
            "PASS untouched".to_owned()
        } else if run.act == PASS {
            "PASS rewritten".to_owned()
        } else {
            action_name(run.act)
        };
        *tally
            .mutations
            .entry(mutation)
            .or_default()
            .entry(coarse)
            .or_default() += 1;
        *tally.relations.entry(rel.name()).or_default() += 1;

        // 5, per batch: the outcome counters and the plainly forwarded
        // packets add up to the cases; the backend counters to what each case counted.
        batch_cases += 1;
        if sent && run.moved.iter().all(|c| FORWARD_COUNTERS.contains(&c.name())) {
            batch_plain_fwd += 1;
        }
        batch_counted += counted.map_or(0, |c| c.0);
        if batch_cases == BATCH || n + 1 == args.cases {
            let now = h.dp.counters()?;
            let outcomes: u64 = Counter::ALL
                .iter()
                .filter(|c| !is_extra(**c) && !FORWARD_COUNTERS.contains(&c.name()))
                .map(|&c| now[c as usize] - batch_counters[c as usize])
                .sum();
            let all = backend_stats(&h, m.svcs.len())?;
            let backend = packets(&all).0 - batch_stats;
            if outcomes + batch_plain_fwd != batch_cases || backend != batch_counted {
                let why = format!(
                    "[5 counters] batch ending at case {n} (seed {}): {batch_cases} cases, but {outcomes} outcome \
                     counter increments + {batch_plain_fwd} forwarded packets; {backend} backend packets counted, \
                     {batch_counted} seen case by case",
                    args.seed
                );
                if !args.keep_going {
                    bail!(why);
                }
                if tally.violation("[5 counters] batch totals".into(), n) {
                    eprintln!("\nVIOLATION {why}");
                }
            }
            stats = all;
            (batch_counters, batch_stats) = (now, packets(&stats).0);
            (batch_cases, batch_plain_fwd, batch_counted) = (0, 0, 0);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    print_tally(&tally, args, secs, &start_counters, &counters);
    if !tally.violations.is_empty() {
        let total: u64 = tally.violations.values().map(|v| v.0).sum();
        bail!("{total} invariant violations (seed {}), see above", args.seed);
    }
    Ok(())
}

fn report(args: &Args, n: u64, m: &Model, case: &Case, mutation: &str, run: &Run, why: &str) {
    eprintln!("\nVIOLATION {why}");
    eprintln!(
        "  seed {}, case {n} (replay: cargo xtask fuzz datapath --seed {} --cases {})",
        args.seed,
        args.seed,
        n + 1
    );
    eprintln!("  family {}: {}; mutation: {mutation}", case.family, case.what);
    eprintln!("  etherparse sees: {:?}; new flow key: {}", run.rel, run.fresh);
    eprintln!(
        "  result: {} ({}); backend packets/bytes counted: {:?}",
        action_name(run.act),
        run.outcome(),
        run.counted
    );
    for (s, st) in m.svcs.iter().zip(&m.states) {
        eprintln!("  state {:<17} {:<34} {:?}", s.name, st.kind, st.st);
    }
    eprintln!("  echo requests to VIPs answered: {}", m.echo_answer);
    eprintln!("  seed frame ({} bytes):{}", case.frame.len(), hex(&case.frame));
    eprintln!("  input ({} bytes):{}", run.frame.len(), hex(run.frame));
    eprintln!("  output ({} bytes):{}", run.out.len(), hex(run.out));
}

fn print_tally(t: &Tally, args: &Args, secs: f64, c0: &[u64], c1: &[u64]) {
    let cases = args.cases;
    let verdict = if t.violations.is_empty() {
        "no invariant violated".to_owned()
    } else {
        format!("{} kinds of violation", t.violations.len())
    };
    println!(
        "\n{cases} cases in {secs:.1} s ({:.0} cases/s), seed {}: {verdict}",
        cases as f64 / secs.max(1e-9),
        args.seed
    );
    if !t.violations.is_empty() {
        println!("\nviolations (kind: cases, first case):");
        for (kind, (count, first)) in &t.violations {
            println!("  {kind:<60} {count:>7}  first: case {first}");
        }
    }
    println!("\noutcomes (action, counter or destination):");
    let mut by_count: Vec<_> = t.outcomes.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (o, c) in &by_count {
        println!("  {o:<44} {c:>9}  {:>5.1}%", **c as f64 * 100.0 / cases as f64);
    }
    println!("\ninvariants checked (cases; the counters on every case):");
    for (name, hits) in CHECKS.iter().zip(&t.checks) {
        println!("  {name:<44} {hits:>9}");
    }
    println!("\nas etherparse saw the inputs:");
    for (r, c) in &t.relations {
        println!("  {r:<44} {c:>9}");
    }
    println!("\nextra counters (flow entries), over the run:");
    for c in Counter::ALL.iter().filter(|c| is_extra(**c)) {
        println!("  {:<44} {:>9}", c.name(), c1[*c as usize] - c0[*c as usize]);
    }
    println!("\nfamilies × outcomes:");
    for (f, outs) in &t.families {
        let total: u64 = outs.values().sum();
        let mut v: Vec<_> = outs.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let cells: Vec<String> = v.iter().map(|(o, c)| format!("{o} {c}")).collect();
        println!("  {f:<20} {total:>8}: {}", cells.join(", "));
    }
    println!("\nmutations × actions:");
    for (mu, outs) in &t.mutations {
        let total: u64 = outs.values().sum();
        let cells: Vec<String> = outs.iter().map(|(o, c)| format!("{o} {c}")).collect();
        println!("  {mu:<20} {total:>8}: {}", cells.join(", "));
    }
}

fn main() -> Result<()> {
    let args = args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fuzzer loads XDP programs and creates a network namespace: run it as root");
    }
    let ns = NetNs::new("fuzz");
    ns.add_veths(&[("in0", "in1"), ("p0", "p1"), ("s0", "s1")]);
    for (dev, mtu) in [("p0", P_MTU), ("s0", S_MTU), ("in0", IN_MTU)] {
        in_ns(&ns.name, &["ip", "link", "set", dev, "mtu", &mtu.to_string()]);
    }
    let entered = ns.enter();
    // Everything that touches the data plane lives inside `fuzz`: it is gone
    // (maps, program) before the namespace is left and removed, also on error.
    let result = fuzz(&args);
    drop(entered);
    drop(ns);
    result
}

/// The checker itself, on hand-made runs: a fuzzer that cannot see a
/// violation would report every run as clean.
#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let cfg = Config::from_str_named(SERVICES, "test").unwrap();
        Model::new(&cfg, 4, 2, 3)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// nat-tcp4's SYN from a client, and what the program must send to `slot`.
    fn nat_syn(m: &Model, slot: u8) -> (Vec<u8>, Vec<u8>) {
        let s = &m.svcs[0];
        let req = Spec::new(
            ip("198.18.64.7"),
            40000,
            s.vip,
            s.port,
            L4::Tcp {
                syn: true,
                ack: false,
            },
        );
        let mut want = req.clone();
        let (addr, port) = s.backends[usize::from(slot)];
        want.dst = addr;
        want.dport = port;
        want.ttl -= 1;
        want.dmac = s.hops[usize::from(slot)].dst_mac;
        want.smac = s.hops[usize::from(slot)].src_mac;
        (req.build(), want.build())
    }

    fn run<'a>(
        m: &Model,
        frame: &'a [u8],
        out: &'a [u8],
        act: u32,
        moved: Vec<Counter>,
        counted: Option<(u64, u64)>,
    ) -> Run<'a> {
        Run {
            frame,
            out,
            act,
            rel: m.relation(frame),
            moved,
            hinted: 0,
            counted,
            fresh: true,
        }
    }

    fn violation(m: &Model, r: &Run) -> String {
        m.check(r).expect_err("a violation")
    }

    #[test]
    fn a_signal_from_anything_but_a_hint_is_caught() {
        let m = model();
        let (req, out) = nat_syn(&m, SLOT_PRIMARY);
        let fwd = Some((1, u64::try_from(req.len()).unwrap()));
        let mut r = run(&m, &req, &out, REDIRECT, vec![], fwd);
        m.check(&r).unwrap();
        // A client's SYN is no hint.
        r.hinted = 1;
        assert!(violation(&m, &r).starts_with("[signal]"));
    }

    #[test]
    fn a_correct_forward_passes_and_each_kind_of_damage_is_caught() {
        let mut m = model();
        let (req, out) = nat_syn(&m, SLOT_PRIMARY);
        let fwd = Some((1, u64::try_from(req.len()).unwrap()));
        assert!(matches!(
            m.relation(&req),
            Rel::Service {
                svc: 0,
                opens: true,
                ..
            }
        ));
        m.check(&run(&m, &req, &out, REDIRECT, vec![], fwd)).unwrap();

        // A payload byte changed: the checksum no longer matches.
        let mut bad = out.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(violation(&m, &run(&m, &req, &bad, REDIRECT, vec![], fwd)).starts_with("[2 checksum]"));

        // Another header field changed, checksums made right again: a wrong rewrite.
        let mut bad = out.clone();
        bad[14 + 4] ^= 0x40; // IPv4 identification
        fix_checksums(&mut bad);
        assert_eq!(frame_checksums(&bad), Ok(()));
        assert!(violation(&m, &run(&m, &req, &bad, REDIRECT, vec![], fwd)).starts_with("[4 rewrite]"));

        // Counted twice, or not at all.
        let passed = Counter::Passed;
        assert!(violation(&m, &run(&m, &req, &out, REDIRECT, vec![passed], fwd)).starts_with("[5 counters]"));
        assert!(violation(&m, &run(&m, &req, &out, REDIRECT, vec![], None)).starts_with("[5 counters]"));
        assert!(violation(&m, &run(&m, &req, &req, PASS, vec![], None)).starts_with("[5 counters]"));

        // To a backend that is down while the other is up.
        let (_, to_secondary) = nat_syn(&m, SLOT_SECONDARY);
        m.states[0].st.up = 0b01;
        assert!(
            violation(&m, &run(&m, &req, &to_secondary, REDIRECT, vec![], fwd)).starts_with("[3 backends]")
        );
        // A new flow to a drained one; an established flow may go there.
        m.states[0].st.up = 0b11;
        m.states[0].st.drained = 0b10;
        assert!(violation(&m, &run(&m, &req, &to_secondary, REDIRECT, vec![], fwd)).contains("new flow"));
        let mut known = run(&m, &req, &to_secondary, REDIRECT, vec![], fwd);
        known.fresh = false;
        m.check(&known).unwrap();
        // A client the service denies (nat-tcp4: 198.18.66.0/24): nothing may leave.
        m.states[0].st.drained = 0;
        let denied = |f: &[u8]| {
            let mut f = f.to_vec();
            f[14 + 14] = 66; // 198.18.64.7 → 198.18.66.7
            fix_checksums(&mut f);
            f
        };
        let (req_denied, out_denied) = (denied(&req), denied(&out));
        assert!(
            violation(&m, &run(&m, &req_denied, &out_denied, REDIRECT, vec![], fwd))
                .starts_with("[3 refused]")
        );
        m.check(&run(
            &m,
            &req_denied,
            &req_denied,
            DROP,
            vec![Counter::Refused],
            None,
        ))
        .unwrap();
        // All down with drop: nothing may leave.
        m.states[0].st = SwitchState {
            up: 0,
            flags: SWITCH_DROP,
            ..m.states[0].st
        };
        assert!(violation(&m, &run(&m, &req, &out, REDIRECT, vec![], fwd)).starts_with("[3 all down]"));
        m.check(&run(&m, &req, &req, DROP, vec![Counter::AllDownDropped], None))
            .unwrap();
    }

    #[test]
    fn foreign_frames_must_come_back_untouched() {
        let m = model();
        // The VIP on a port no service has.
        let f = Spec::new(
            ip("198.18.64.7"),
            1000,
            ip("198.18.100.1"),
            81,
            L4::Tcp {
                syn: true,
                ack: false,
            },
        )
        .build();
        assert_eq!(m.relation(&f), Rel::Foreign);
        m.check(&run(&m, &f, &f, PASS, vec![Counter::Passed], None))
            .unwrap();
        let mut changed = f.clone();
        changed[0] ^= 1;
        assert!(
            violation(&m, &run(&m, &f, &changed, PASS, vec![Counter::Passed], None))
                .starts_with("[1 foreign]")
        );
        assert!(
            violation(&m, &run(&m, &f, &f, DROP, vec![Counter::Passed], None)).starts_with("[1 foreign]")
        );
        // A health probe's answer (a NAT backend endpoint to the gateway) is not a reply.
        let probe = Spec::new(
            ip("198.18.2.2"),
            8080,
            ip("198.18.2.1"),
            5000,
            L4::Tcp {
                syn: false,
                ack: true,
            },
        )
        .build();
        assert_eq!(m.relation(&probe), Rel::Foreign);
        // The same from a client's point of view is.
        let reply = Spec::new(
            ip("198.18.2.2"),
            8080,
            ip("198.18.64.7"),
            5000,
            L4::Tcp {
                syn: false,
                ack: true,
            },
        )
        .build();
        assert!(matches!(m.relation(&reply), Rel::Reply { svc: 0, slot: 0, .. }));
    }

    #[test]
    fn seed_families_are_seen_as_what_they_are() {
        let m = model();
        let hist = History::default();
        let mut r = Rng(12345);
        let mut seen = BTreeMap::<String, BTreeMap<&str, u32>>::new();
        for _ in 0..5000 {
            let c = m.gen_case(&mut r, &hist);
            let family = c.family.split(' ').next().unwrap().to_owned();
            *seen
                .entry(family)
                .or_default()
                .entry(m.relation(&c.frame).name())
                .or_default() += 1;
        }
        let only = |f: &str, rels: &[&str]| {
            let got = &seen[f];
            assert!(got.keys().all(|k| rels.contains(k)), "{f}: {got:?}");
        };
        only("request", &["service"]);
        only("vlan", &["service"]);
        only("reply", &["reply"]);
        only("echo", &["echo"]);
        only("icmp", &["icmp error"]);
        only("fragment", &["fragment", "service", "reply"]); // an atomic fragment is whole
        only("options", &["service", "reply"]);
        only("foreign", &["foreign"]);
        // Unmutated seeds have valid checksums (so the output's are checked).
        for _ in 0..2000 {
            let c = m.gen_case(&mut r, &hist);
            if c.family != "foreign" && c.family != "random" {
                assert_eq!(frame_checksums(&c.frame), Ok(()), "{}: {}", c.family, c.what);
            }
        }
    }
}
