//! Map keys and values, and the names of the maps that hold them.
use bytemuck::{Pod, Zeroable};

/// Map names (as the eBPF object declares them and userspace looks them up).
pub mod names {
    /// (VIP, port, protocol) → [`super::ServiceInfo`].
    pub const SERVICES: &str = "SERVICES";
    /// Service id → [`super::SwitchState`].
    pub const SWITCH: &str = "SWITCH";
    /// `service id * 2 + slot` → [`super::Backend`].
    pub const BACKENDS: &str = "BACKENDS";
    /// (backend addr, backend port, protocol) → [`super::ReverseInfo`], NAT only.
    pub const REVERSE: &str = "REVERSE";
    /// Flow entries: buckets of [`crate::FlowEntry`] (see [`crate::flow`]).
    pub const FLOWS: &str = "FLOWS";
    /// TCP flows whose SYN went where an entry is needed, until their
    /// handshake completes (then the entry moves to `FLOWS`): a SYN flood
    /// churns this table, never the established flows'. Same layout as `FLOWS`.
    pub const EMBRYOS: &str = "EMBRYOS";
    /// Direct flows: clients talking to a NAT backend's service port without
    /// a VIP, keyed (client addr, client port, backend index); their replies
    /// are not translated. Same layout as `FLOWS`.
    pub const DIRECT: &str = "DIRECT";
    /// IP datagrams being fragmented, keyed by [`crate::flow::frag_hash`]:
    /// the first fragment's service and backend slot, so every later
    /// fragment (no ports) goes where the first went. Same layout as `FLOWS`.
    pub const FRAGS: &str = "FRAGS";
    /// Service id → [`super::ServiceVip`]: a fragment's service's VIP and mode.
    pub const SERVICE_VIPS: &str = "SERVICE_VIPS";
    /// [`crate::FlowSettings`]: the flow tables' hash key and sizes.
    pub const FLOW_SETTINGS: &str = "FLOW_SETTINGS";
    /// LPM trie of (service, client prefix) → 1: services with an `allow`
    /// list admit only clients found here ([`super::AclKey`]).
    pub const ALLOW: &str = "ALLOW";
    /// LPM trie of (service, client prefix) → 1: refused clients.
    pub const DENY: &str = "DENY";
    /// Per-CPU packets refused by a service's allow/deny lists, by service id.
    pub const REFUSED: &str = "REFUSED";
    /// VIP address → [`super::VIP_ECHO_ANSWER`] flags: every address some
    /// service uses, for ICMP echo to a VIP.
    pub const VIPS: &str = "VIPS";
    /// Client address → [`super::NextHop`] for NAT replies, filled by userspace.
    pub const CLIENT_HOPS: &str = "CLIENT_HOPS";
    /// Addresses of the gateway itself; replies to them are never translated.
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    /// Egress ifindex → ifindex, for `bpf_redirect_map`.
    pub const EGRESS: &str = "EGRESS";
    /// Per-CPU global counters indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU per-backend counters indexed like `BACKENDS`.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Port → [`super::PORT_SERVICE`] | [`super::PORT_BACKEND`]: a one-load
    /// filter so most traffic that is not ours skips the hash lookups.
    pub const PORTS: &str = "PORTS";
    /// [`super::addr_bucket`] of an address → 1 if some NAT backend might
    /// have it: a one-load filter before the direct-flow lookup (superset:
    /// never cleared while running).
    pub const BACKEND_ADDRS: &str = "BACKEND_ADDRS";
    /// Program array: the programs the forwarding path goes on in by tail
    /// call, indexed by [`super::paths`].
    pub const PATHS: &str = "PATHS";
    /// Ring buffer of client addresses whose reply next hop is unknown.
    pub const HOP_REQUESTS: &str = "HOP_REQUESTS";
    /// Ring buffer of [`super::Signal`]s: the traffic hinting that a backend
    /// failed (not pinned: each daemon reads its own program's).
    pub const SIGNALS: &str = "SIGNALS";
    /// `BACKENDS` index → when its last signal was reported (ns), for the
    /// per-backend rate limit (not pinned).
    pub const SIGNAL_LAST: &str = "SIGNAL_LAST";
    /// Ifindex → 1 for each `[gateway] backend_interfaces` link: a signal
    /// arriving there can be evidence (not pinned: written at each start).
    pub const BACKEND_IFACES: &str = "BACKEND_IFACES";
    /// [`super::ingress_slot`] of an ifindex → [`super::IngressMac`]: the
    /// MAC of each attached interface, so that a frame addressed to another
    /// host is left to the stack (not pinned: written at each start).
    pub const INGRESS_MACS: &str = "INGRESS_MACS";
    /// [`super::Seen`] indexed like `BACKENDS`, memory-mapped by the daemon's
    /// silence watch (not pinned: it starts afresh with each program).
    pub const SEEN: &str = "SEEN";
    /// [`super::service_slot`] of a `SERVICES` key → [`super::IndexedService`]:
    /// a copy of the entry of one key with that slot, found with a cheap
    /// hash and an array load instead of the hash map's lookup. Pinned, so a
    /// restarted daemon that removes a service clears the copy the running
    /// program reads.
    pub const SERVICE_INDEX: &str = "SERVICE_INDEX";

    /// Every map that holds state of the data plane: pinned, so the data
    /// plane outlives the daemon and a restarted daemon adopts them.
    pub const PINNED: [&str; 24] = [
        SERVICES,
        SWITCH,
        BACKENDS,
        REVERSE,
        FLOWS,
        EMBRYOS,
        DIRECT,
        FRAGS,
        SERVICE_VIPS,
        FLOW_SETTINGS,
        ALLOW,
        DENY,
        REFUSED,
        VIPS,
        CLIENT_HOPS,
        LOCAL_ADDRS,
        EGRESS,
        COUNTERS,
        BACKEND_STATS,
        PORTS,
        SERVICE_INDEX,
        BACKEND_ADDRS,
        PATHS,
        HOP_REQUESTS,
    ];
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// The redirector itself: the forwarding path.
    pub const REDIRECTOR: &str = "redirector";
    /// Tail-called from it, with their `PATHS` index: ICMP, later
    /// fragments, IPv4 options / IPv6 extension headers.
    pub const PATHS: [(&str, u32); 3] = [
        ("redirector_icmp", super::paths::ICMP),
        ("redirector_fragment", super::paths::FRAGMENT),
        ("redirector_options", super::paths::OPTIONS),
    ];
}

/// Indexes of `PATHS`.
pub mod paths {
    /// ICMP / ICMPv6.
    pub const ICMP: u32 = 0;
    /// IP fragments after the first.
    pub const FRAGMENT: u32 = 1;
    /// TCP/UDP behind IPv4 options or IPv6 extension headers.
    pub const OPTIONS: u32 = 2;
    /// Entries.
    pub const COUNT: u32 = 3;
}

/// IANA protocol numbers we handle.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;

/// Backend slot of the primary.
pub const SLOT_PRIMARY: u8 = 0;
/// Backend slot of the secondary.
pub const SLOT_SECONDARY: u8 = 1;

/// Default sizes; userspace may set others at load time.
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
/// Default flow table size (16 bytes per entry; set-associative, so sized
/// well above the flows expected to be pinned: see docs/operations.md).
pub const DEFAULT_FLOW_ENTRIES: u32 = 262_144;
/// `EMBRYOS` holds a quarter of the flow table's entries: under a SYN flood
/// at rate R a handshake keeps its entry for about `EMBRYOS / R` seconds.
pub const EMBRYO_SHARE: u32 = 4;
/// Allow/deny prefixes, all services together, per list.
pub const DEFAULT_ACL_ENTRIES: u32 = 65_536;
/// Reply next-hop cache size.
pub const DEFAULT_CLIENT_HOPS: u32 = 65_536;

/// An address as the program handles it: the 16 bytes of an IPv6 (or
/// IPv4-mapped IPv4) address in wire order, viewed as four native-endian
/// words, so the program moves and compares it with four 32-bit operations.
pub type Ip = [u32; 4];

/// Third word of an IPv4-mapped address (`::ffff:0:0/96`), as [`Ip`] holds it.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A transport endpoint: address (IPv4-mapped for v4), port (network order), protocol.
///
/// Key of `SERVICES` (VIP side) and of `REVERSE` (backend side).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Endpoint {
    /// IPv6 address, or IPv4-mapped IPv4 address ([`Ip`]).
    pub addr: Ip,
    /// Port in network byte order, as read from the packet.
    pub port_be: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Always zero (explicit padding).
    pub _pad: u8,
}

/// Forwarding mode of a service.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Destination rewritten to the backend; replies rewritten back.
    Nat = 0,
    /// Only the L2 header changes; backends own the VIP.
    Dsr = 1,
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceInfo {
    /// Index into `SWITCH`, and `id * 2 + slot` into `BACKENDS`.
    pub id: u32,
    /// [`Mode`] as a byte.
    pub mode: u8,
    /// [`ACL_ALLOW`] | [`ACL_DENY`]: which lists the program must consult
    /// (none: no lookup at all).
    pub acl: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// Value of `SERVICE_INDEX`: when `valid`, a copy of the `SERVICES` entry
/// (key and value) of one key whose [`service_slot`] is this entry's index.
/// The program compares the whole key with the packet's and looks
/// `SERVICES` up on any mismatch (another key of the slot, an empty slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IndexedService {
    /// The key's VIP (IPv4-mapped for v4).
    pub vip: Ip,
    /// Its `SERVICES` value.
    pub info: ServiceInfo,
    /// The key's port, network order.
    pub port_be: u16,
    /// The key's protocol.
    pub proto: u8,
    /// 1: this entry holds a copy.
    pub valid: u8,
}

/// Entries of `SERVICE_INDEX` (a power of two): at the default 1024
/// services about 1.5 % share a slot with another and take the hash lookup.
pub const SERVICE_INDEX_SLOTS: u32 = 65536;

/// The `SERVICE_INDEX` slot of a `SERVICES` key: the words of the key
/// folded and mixed by murmur3's finaliser (a few instructions, against the
/// hash map's jhash and bucket walk).
#[inline(always)]
pub fn service_slot(addr: &Ip, port_be: u16, proto: u8) -> u32 {
    let mut h = addr[0]
        ^ addr[1].rotate_left(7)
        ^ addr[2].rotate_left(13)
        ^ addr[3].rotate_left(19)
        ^ (u32::from(port_be) | u32::from(proto) << 16);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & (SERVICE_INDEX_SLOTS - 1)
}

/// Value of `SERVICE_VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceVip {
    /// The VIP (IPv4-mapped for v4).
    pub vip: Ip,
    /// [`Mode`] as a byte.
    pub mode: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// `FRAGS` buckets (fixed: 16 384 datagrams in flight).
pub const FRAG_BUCKETS: u32 = 4096;

/// `ServiceInfo::acl`: the service has an allow list.
pub const ACL_ALLOW: u8 = 1;
/// `ServiceInfo::acl`: the service has a deny list.
pub const ACL_DENY: u8 = 2;

/// The data of an `ALLOW`/`DENY` trie key: the service id (all 32 bits are
/// always matched) then the client address (IPv4-mapped for v4), so one
/// trie holds every service's prefixes. Prefix length = 32 + address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AclKey {
    /// Service id, big-endian (the trie matches bytes in order).
    pub service_be: u32,
    /// Client address or prefix ([`Ip`]).
    pub addr: Ip,
}

/// A service's whole switching state: one 8-byte value, so every transition
/// (failover, failback, drain, manual flip) is one atomic map write.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SwitchState {
    /// Slot new flows go to ([`SLOT_PRIMARY`] or [`SLOT_SECONDARY`]).
    pub active: u8,
    /// Bit per slot: backend is up.
    pub up: u8,
    /// Bit per slot: backend is drained (takes no new flows; userspace policy).
    pub drained: u8,
    /// [`SWITCH_PINNED`], [`SWITCH_DROP`], [`SWITCH_PASS`].
    pub flags: u8,
    /// Percent (0..=100) of new flows sent to the secondary while both are up.
    pub share: u8,
    /// Always zero.
    pub _pad: u8,
    /// Incremented by userspace on every write (wrapping): a read-modify-write
    /// of the state only lands if the generation is still the one it read.
    pub generation: u16,
}

/// `SwitchState::flags`: flow entries may exist, so the program must look them
/// up. Userspace sets it in the same write that makes the secondary active and
/// clears it only once the primary is active and a sweep found no entries left;
/// while it is clear and the primary is active, packets skip the flow table.
pub const SWITCH_PINNED: u8 = 1;

/// `SwitchState::flags`: both backends are down and the service's policy is
/// `all_down = "drop"`: the program drops its packets (counted).
pub const SWITCH_DROP: u8 = 2;

/// `SwitchState::flags`: both backends are down and the service's policy is
/// `all_down = "pass"`: its packets go to the kernel stack untouched (counted).
pub const SWITCH_PASS: u8 = 4;

/// `VIPS` value bit: answer ICMP echo requests to this VIP in XDP
/// (`icmp_echo = "answer"`); clear: pass them to the stack.
pub const VIP_ECHO_ANSWER: u8 = 1;

/// Index of an address in `BACKEND_ADDRS`: its four words folded to 16 bits.
#[inline(always)]
pub const fn addr_bucket(ip: &Ip) -> u32 {
    let x = ip[0] ^ ip[1] ^ ip[2] ^ ip[3];
    (x ^ (x >> 16)) & 0xffff
}

/// `PORTS` bit: some service listens on this destination port.
pub const PORT_SERVICE: u8 = 1;
/// `PORTS` bit: some NAT backend answers from this source port.
pub const PORT_BACKEND: u8 = 2;

impl SwitchState {
    /// Must the program consult the flow table?
    #[inline(always)]
    pub fn pinned(&self) -> bool {
        self.flags & SWITCH_PINNED != 0
    }

    /// Is the backend in `slot` up?
    #[inline(always)]
    pub fn is_up(&self, slot: u8) -> bool {
        self.up & (1 << (slot & 1)) != 0
    }
}

/// L2 next hop: egress interface and the MACs to write.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    /// Egress ifindex; 0 = unresolved (the packet goes to the kernel stack).
    pub ifindex: u32,
    /// Destination MAC (the neighbour).
    pub dst_mac: [u8; 6],
    /// Source MAC (the egress interface).
    pub src_mac: [u8; 6],
}

/// Value of `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    /// Backend address (IPv4-mapped for v4).
    pub addr: Ip,
    /// Remapped port in network order; 0 keeps the service port.
    pub port_be: u16,
    /// Always zero.
    pub _pad: u16,
    /// Where to send packets for this backend.
    pub hop: NextHop,
}

/// Value of `REVERSE`: which service a backend endpoint answers for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ReverseInfo {
    /// Service id.
    pub service: u32,
    /// VIP the reply must come from (IPv4-mapped for v4).
    pub vip: Ip,
    /// Service port, network order.
    pub port_be: u16,
    /// Backend slot the endpoint belongs to.
    pub slot: u8,
    /// Set by the program once a client talked to this endpoint directly
    /// (not through a VIP): its replies then consult `DIRECT`. Userspace
    /// keeps it when it rewrites the entry.
    pub direct: u8,
}

/// Key of `FLOWS`: a client's flow to a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    /// Client address (IPv4-mapped for v4).
    pub addr: Ip,
    /// Client port, network order.
    pub port_be: u16,
    /// Always zero.
    pub _pad: u16,
    /// Service id.
    pub service: u32,
}

/// A flow entry as a kernel LRU hash would hold it: only the benchmark's
/// reference programs use it (redirector's tables are [`crate::FlowBucket`]s).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowValue {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when last refreshed, at ~1 s granularity.
    pub last_seen_ns: u64,
    /// Backend slot the flow is pinned to (a full word: no padding to zero).
    pub slot: u32,
    /// Always zero.
    pub _pad: u32,
}

/// Key of `CLIENT_HOPS` and `LOCAL_ADDRS`; also a `HOP_REQUESTS` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Addr {
    /// IPv6 or IPv4-mapped address.
    pub addr: Ip,
}

/// What a NAT backend was sent and answered since the daemon last looked
/// (it swaps each flag back to 0). A request is a UDP packet or a TCP SYN
/// (a closed connection's last ACK expects no answer); an answer is a UDP
/// reply or a SYN-ACK. The program stores a flag only when it is 0, so a
/// busy backend costs one store per flag per look, not one per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Seen {
    /// 1: a request was forwarded.
    pub asked: u32,
    /// 1: an answer came back.
    pub answered: u32,
}

/// Per-backend traffic counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendStats {
    /// Client → backend packets.
    pub fwd_packets: u64,
    /// Client → backend bytes (L2 frame length).
    pub fwd_bytes: u64,
    /// Backend → client packets (NAT replies).
    pub rev_packets: u64,
    /// Backend → client bytes.
    pub rev_bytes: u64,
}

/// A backend's TCP RST answering a SYN (RST|ACK, sequence 0): its port is
/// closed. An application's reset of an open connection carries its
/// sequence number and is no hint.
pub const SIGNAL_RST_CLOSED: u8 = 1;
/// ICMP/ICMPv6 destination unreachable (port, host, address,
/// administratively prohibited) about a client's packet to a backend, from
/// the backend or a router on its way.
pub const SIGNAL_UNREACHABLE: u8 = 2;
/// At most one signal per backend per this many ns reaches the daemon: a
/// storm of forged RSTs or ICMP errors costs at most 100 extra probes per
/// second and backend.
pub const SIGNAL_INTERVAL_NS: u64 = 10_000_000;
/// The same for evidence ([`Signal::evidence`]): such a packet cannot come
/// from a client, so it may count as a verdict, and a second one soon after
/// completes `fall = 2` without waiting for a probe.
pub const EVIDENCE_INTERVAL_NS: u64 = 1_000_000;

/// Slots of `INGRESS_MACS`.
pub const INGRESS_SLOTS: u32 = 1024;

/// The `INGRESS_MACS` slot of an interface.
#[inline(always)]
pub const fn ingress_slot(ifindex: u32) -> u32 {
    ifindex % INGRESS_SLOTS
}

/// An attached interface and its MAC. A frame that arrives on it addressed
/// to another MAC (a promiscuous or virtual NIC, a switch flooding an
/// unknown destination) is another host's: forwarding it too would
/// duplicate it. A slot whose `ifindex` is not the ingress interface's
/// checks nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IngressMac {
    /// The interface (0: an empty slot).
    pub ifindex: u32,
    /// Its MAC's bytes as three native-endian 16-bit words, as the program
    /// reads the frame's destination.
    pub mac: [u16; 3],
    /// Zero.
    pub _pad: u16,
}

impl IngressMac {
    /// The entry of `ifindex` with MAC `mac`.
    pub fn new(ifindex: u32, mac: [u8; 6]) -> IngressMac {
        IngressMac {
            ifindex,
            mac: [
                u16::from_ne_bytes([mac[0], mac[1]]),
                u16::from_ne_bytes([mac[2], mac[3]]),
                u16::from_ne_bytes([mac[4], mac[5]]),
            ],
            _pad: 0,
        }
    }
}

/// Capacity of `BACKEND_IFACES`: the most `backend_interfaces` a gateway may list.
pub const MAX_BACKEND_IFACES: u32 = 64;

/// What the data plane saw that hints at a backend failure (`SIGNALS`).
/// The daemon confirms it with a probe before anything changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Signal {
    /// Service id.
    pub service: u32,
    /// Backend slot.
    pub slot: u8,
    /// [`SIGNAL_RST_CLOSED`] or [`SIGNAL_UNREACHABLE`].
    pub kind: u8,
    /// 1: evidence, not a mere hint: the packet came from the backend's own
    /// address, arrived on a `backend_interfaces` link that is the
    /// backend's next hop, from the next hop's MAC — the same evidence a
    /// probe's answer is.
    pub evidence: u8,
    /// Always zero.
    pub _pad: u8,
}

/// Global per-CPU counters: every packet the program does not forward, and why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not ours (not a VIP, not a NAT reply): passed untouched.
    Passed = 0,
    /// Truncated or invalid headers on VIP-bound traffic: passed untouched.
    Malformed = 1,
    /// Next hop not resolved yet: passed to the stack (after the NAT rewrite).
    Unresolved = 2,
    /// TTL / hop limit would expire: passed untouched so the stack sends ICMP.
    TtlExpired = 3,
    /// `bpf_redirect_map` refused the egress interface: passed to the stack.
    RedirectFailed = 4,
    /// IPv4 fragment or options, IPv6 extension header to a VIP: passed untouched.
    Unsupported = 5,
    /// A new flow entry was written.
    FlowInserted = 6,
    /// A flow entry was written over another live one (its bucket was full).
    FlowEvicted = 7,
    /// Both backends down, `all_down = "drop"`: dropped.
    AllDownDropped = 8,
    /// Both backends down, `all_down = "pass"`: passed to the stack untouched.
    AllDownPassed = 9,
    /// A SYN's entry was written to `EMBRYOS` (moved to `FLOWS` when the
    /// handshake completes, counted then as [`Counter::FlowInserted`]).
    SynEntry = 10,
    /// Refused by the service's allow/deny lists: dropped (also per service, `REFUSED`).
    Refused = 11,
    /// Traffic to or from a NAT backend's service port that did not go through
    /// a VIP (a direct flow): passed untouched.
    Direct = 12,
    /// ICMP / ICMPv6 echo request to a VIP answered in XDP.
    EchoAnswered = 13,
    /// An ICMP error about a VIP flow sent to the party that owns the flow
    /// (translated in NAT mode).
    IcmpErrorForwarded = 14,
    /// A packet too big for its egress link answered with ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big".
    TooBig = 15,
    /// An IPv4 packet too big for its egress link without "don't fragment":
    /// handed to the stack (after the NAT rewrite), which fragments it.
    Fragmented = 16,
    /// A fragment of a VIP datagram whose first fragment was not seen (or
    /// was forgotten): dropped; the datagram is lost, its sender resends.
    FragmentDropped = 17,
    /// A flow whose entry held a backend that went down, moved to the active
    /// backend (once per flow: its entry is re-pointed or dropped).
    FlowMoved = 18,
    /// A hint that a backend failed (a closed port's RST, an unreachable),
    /// reported to the daemon ([`Signal`]).
    SignalReported = 19,
    /// Such a hint within [`SIGNAL_INTERVAL_NS`] of the backend's last one:
    /// not reported.
    SignalLimited = 20,
}

impl Counter {
    /// Number of counters (size of the `COUNTERS` array).
    pub const COUNT: u32 = 21;
    /// All counters, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Passed,
        Counter::Malformed,
        Counter::Unresolved,
        Counter::TtlExpired,
        Counter::RedirectFailed,
        Counter::Unsupported,
        Counter::FlowInserted,
        Counter::FlowEvicted,
        Counter::AllDownDropped,
        Counter::AllDownPassed,
        Counter::SynEntry,
        Counter::Refused,
        Counter::Direct,
        Counter::EchoAnswered,
        Counter::IcmpErrorForwarded,
        Counter::TooBig,
        Counter::Fragmented,
        Counter::FragmentDropped,
        Counter::FlowMoved,
        Counter::SignalReported,
        Counter::SignalLimited,
    ];
    /// Stable name for output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::Malformed => "malformed",
            Counter::Unresolved => "unresolved_next_hop",
            Counter::TtlExpired => "ttl_expired",
            Counter::RedirectFailed => "redirect_failed",
            Counter::Unsupported => "unsupported",
            Counter::FlowInserted => "flow_inserted",
            Counter::FlowEvicted => "flow_evicted",
            Counter::AllDownDropped => "all_down_dropped",
            Counter::AllDownPassed => "all_down_passed",
            Counter::SynEntry => "syn_entry_written",
            Counter::Refused => "refused",
            Counter::Direct => "direct",
            Counter::EchoAnswered => "echo_answered",
            Counter::IcmpErrorForwarded => "icmp_error_forwarded",
            Counter::TooBig => "too_big_sent",
            Counter::Fragmented => "fragmented_by_stack",
            Counter::FragmentDropped => "fragment_dropped",
            Counter::FlowMoved => "flow_moved",
            Counter::SignalReported => "signal_reported",
            Counter::SignalLimited => "signal_rate_limited",
        }
    }
}

/// Frame bytes the benchmark's `restore` program copies over the packet.
pub const BENCH_TEMPLATE_LEN: usize = 128;

/// `BenchTemplate::vary_off` for the IPv4 source address.
pub const VARY_V4_SRC: usize = 14 + 12;
/// `BenchTemplate::vary_off` for the last 32 bits of the IPv6 source address.
pub const VARY_V6_SRC: usize = 14 + 8 + 12;
/// `BenchTemplate::vary_off` for an IPv4 UDP/TCP source port: the run
/// counter's low 16 bits, 65,536 flows over and over (valid addresses, so
/// the kernel's own forwarding path takes them too).
pub const VARY_V4_SPORT: usize = 14 + 20;

/// Value of the benchmark object's `TEMPLATE` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchTemplate {
    /// The original frame (only the first `frame length` bytes are copied).
    pub bytes: [u8; BENCH_TEMPLATE_LEN],
    /// [`VARY_V4_SRC`] or [`VARY_V6_SRC`]: overwrite that 32-bit field with a
    /// run counter, a fresh 5-tuple every run; [`VARY_V4_SPORT`]: the
    /// counter's low 16 bits as the source port; anything else: no change.
    pub vary_off: u32,
    /// The run counter.
    pub counter: u32,
}

/// [`Ip`] of an IPv4 address (IPv4-mapped).
pub const fn ip_from_v4(octets: [u8; 4]) -> Ip {
    [0, 0, V4_MAPPED_WORD, u32::from_ne_bytes(octets)]
}

/// [`Ip`] of 16 address bytes.
pub const fn ip_from_bytes(b: [u8; 16]) -> Ip {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// The 16 address bytes of an [`Ip`].
pub const fn ip_to_bytes(ip: Ip) -> [u8; 16] {
    let [a, b, c, d] = [
        ip[0].to_ne_bytes(),
        ip[1].to_ne_bytes(),
        ip[2].to_ne_bytes(),
        ip[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3],
    ]
}

const _: () = {
    assert!(core::mem::size_of::<Endpoint>() == 20);
    assert!(core::mem::size_of::<ServiceInfo>() == 8);
    assert!(core::mem::size_of::<SwitchState>() == 8);
    assert!(core::mem::size_of::<NextHop>() == 16);
    assert!(core::mem::size_of::<Backend>() == 36);
    assert!(core::mem::size_of::<ReverseInfo>() == 24);
    assert!(core::mem::size_of::<FlowKey>() == 24);
    assert!(core::mem::size_of::<FlowValue>() == 16);
    assert!(core::mem::size_of::<Addr>() == 16);
    assert!(core::mem::size_of::<AclKey>() == 20);
    assert!(core::mem::size_of::<ServiceVip>() == 20);
    assert!(core::mem::size_of::<IndexedService>() == 28);
    assert!(core::mem::size_of::<BackendStats>() == 32);
    assert!(core::mem::size_of::<BenchTemplate>() == 136);
    assert!(core::mem::size_of::<Signal>() == 8);
    assert!(core::mem::size_of::<IngressMac>() == 12);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: each type is #[repr(C)] and bytemuck::Pod (no padding, any bit pattern valid).
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SwitchState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReverseInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Addr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NextHop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BenchTemplate {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AclKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceVip {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IndexedService {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::FlowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::FlowBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::FlowSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Signal {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IngressMac {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    /// The kernel side reads these offsets; a change here is an ABI change
    /// (bump [`crate::ABI_VERSION`]).
    #[test]
    fn layouts_are_the_abi() {
        assert_eq!(
            (offset_of!(Endpoint, port_be), offset_of!(Endpoint, proto)),
            (16, 18)
        );
        assert_eq!((offset_of!(Backend, port_be), offset_of!(Backend, hop)), (16, 20));
        assert_eq!(
            (offset_of!(NextHop, dst_mac), offset_of!(NextHop, src_mac)),
            (4, 10)
        );
        assert_eq!(
            (offset_of!(ReverseInfo, vip), offset_of!(ReverseInfo, port_be)),
            (4, 20)
        );
        assert_eq!(
            (offset_of!(FlowKey, port_be), offset_of!(FlowKey, service)),
            (16, 20)
        );
        assert_eq!(offset_of!(FlowValue, slot), 8);
        assert_eq!(
            (
                offset_of!(SwitchState, active),
                offset_of!(SwitchState, up),
                offset_of!(SwitchState, share),
                offset_of!(SwitchState, generation)
            ),
            (0, 1, 4, 6)
        );
        // One aligned 8-byte value: a single store on every 64-bit architecture.
        assert_eq!((size_of::<SwitchState>(), align_of::<SwitchState>()), (8, 8));
    }

    #[test]
    fn ip_forms_round_trip() {
        let v4 = ip_from_v4([198, 18, 0, 1]);
        let b = ip_to_bytes(v4);
        assert_eq!(&b[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&b[12..], &[198, 18, 0, 1]);
        assert_eq!(ip_from_bytes(b), v4);
        let v6 = [0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(ip_to_bytes(ip_from_bytes(v6)), v6);
    }
}
