//! Next-hop resolution for the XDP redirector, from the kernel's routing and
//! neighbour tables over rtnetlink (`NETLINK_ROUTE`).
//!
//! For each backend or client address the XDP program needs the egress
//! ifindex plus the destination and source MAC. [`resolve`] asks the kernel
//! for its FIB answer (`RTM_GETROUTE`, like `ip route get`), looks up the
//! neighbour entry of the gateway (or of the address itself when on-link) and
//! the MAC of the egress interface. [`Monitor`] tells when any of the
//! underlying tables changed so that the caller can re-resolve.
//!
//! All queries are synchronous single request/response exchanges (only
//! [`local_addrs`] is a dump). Every call opens its own short-lived netlink
//! socket, so it always answers for the network namespace of the calling
//! thread.

#![warn(missing_docs)]

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr as StdSocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkFlags, LinkLayerType, LinkMessage, LinkXdp,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How long a synchronous request waits for the kernel's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial receive buffer of a request socket (grown on demand).
const REPLY_BUF: usize = 16 * 1024;
/// Receive buffer of the monitor's `read` calls (datagrams are copied here).
const MONITOR_BUF: usize = 64 * 1024;
/// Socket receive buffer asked for the monitor (`SO_RCVBUFFORCE`, else
/// `SO_RCVBUF` capped by `net.core.rmem_max`).
const MONITOR_RCVBUF: usize = 4 * 1024 * 1024;
/// How often an interrupted (`NLM_F_DUMP_INTR`) dump is retried.
const DUMP_ATTEMPTS: usize = 5;
/// Discard port the fallback UDP probe is sent to.
const PROBE_PORT: u16 = 9;

/// `NLMSGERR_ATTR_MSG` of `include/uapi/linux/netlink.h`: the extended-ack
/// error string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Neighbour states (`NUD_*`) in which the entry's link-layer address is
/// usable for sending.
const NUD_USABLE: u16 = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;

/// Multicast groups the [`Monitor`] joins.
const MONITOR_GROUPS: [u32; 6] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_NEIGH,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV6_IFADDR,
];

/// Sequence numbers for requests, unique within the process.
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// Everything the XDP program needs to forward a frame to one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// Egress interface index.
    pub ifindex: u32,
    /// MAC of the next hop (the gateway, or the address itself when on-link).
    pub dst_mac: [u8; 6],
    /// MAC of the egress interface.
    pub src_mac: [u8; 6],
}

/// Outcome of [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Route and neighbour are known.
    Resolved {
        /// Where to send.
        hop: NextHop,
        /// The neighbour the MAC belongs to (gateway, or the address itself when on-link).
        neighbour: IpAddr,
    },
    /// Route found but the neighbour (gateway or the address itself when on-link) has no usable MAC yet.
    NoNeighbour {
        /// Egress interface index of the route.
        ifindex: u32,
        /// The neighbour whose MAC is missing.
        neighbour: IpAddr,
    },
}

/// The kernel's FIB answer for one destination (see [`route_get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// Output interface index (`RTA_OIF`).
    pub oif: u32,
    /// Next-hop gateway (`RTA_GATEWAY`, or `RTA_VIA` for an IPv4 next hop of
    /// an IPv6 route); `None` when the destination is on-link.
    pub gateway: Option<IpAddr>,
    /// Preferred source address (`RTA_PREFSRC`), if the kernel chose one.
    pub prefsrc: Option<IpAddr>,
}

/// The netlink request an error arose from; its `Display` names the address
/// or interface involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// `RTM_GETROUTE` for an address.
    RouteGet(IpAddr),
    /// `RTM_GETLINK` for an interface.
    LinkGet(u32),
    /// `RTM_GETNEIGH` for one neighbour entry.
    NeighbourGet {
        /// Interface of the entry.
        ifindex: u32,
        /// Address of the entry.
        addr: IpAddr,
    },
    /// `RTM_NEWNEIGH` making a neighbour entry managed.
    NeighbourManage {
        /// Interface of the entry.
        ifindex: u32,
        /// Address of the entry.
        addr: IpAddr,
    },
    /// `RTM_GETADDR` dump of all local addresses.
    AddressDump,
    /// `RTM_NEWROUTE` / `RTM_DELROUTE` of one host route in a table.
    RouteSet {
        /// The routing table.
        table: u32,
        /// The route's destination (a /32 or /128).
        addr: IpAddr,
    },
    /// `RTM_GETROUTE` dump of one table.
    RouteDump {
        /// The routing table.
        table: u32,
    },
    /// `RTM_NEWLINK` changing an interface's flags.
    LinkSet(u32),
    /// `RTM_DELLINK` of an interface.
    LinkDelete(u32),
    /// The change monitor's socket.
    Monitor,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RouteGet(addr) => write!(f, "route lookup for {addr}"),
            Self::LinkGet(ifindex) => write!(f, "link query for ifindex {ifindex}"),
            Self::NeighbourGet { ifindex, addr } => {
                write!(f, "neighbour query for {addr} on ifindex {ifindex}")
            }
            Self::NeighbourManage { ifindex, addr } => {
                write!(f, "managed-neighbour request for {addr} on ifindex {ifindex}")
            }
            Self::AddressDump => write!(f, "local address dump"),
            Self::RouteSet { table, addr } => write!(f, "route change for {addr} in table {table}"),
            Self::RouteDump { table } => write!(f, "route dump of table {table}"),
            Self::LinkSet(ifindex) => write!(f, "link change of ifindex {ifindex}"),
            Self::LinkDelete(ifindex) => write!(f, "link removal of ifindex {ifindex}"),
            Self::Monitor => write!(f, "rtnetlink change monitor"),
        }
    }
}

/// Errors of this module; each message names the address or interface
/// involved.
#[derive(thiserror::Error, Debug)]
pub enum NetlinkError {
    /// The kernel has no route to the address (`ENETUNREACH`/`EHOSTUNREACH`).
    #[error("no route to {addr}: {source}")]
    NoRoute {
        /// The unroutable address.
        addr: IpAddr,
        /// The kernel's errno.
        source: io::Error,
    },
    /// The route to the address is not a unicast route (local, broadcast,
    /// blackhole, ...), so there is no next hop to forward to.
    #[error("route to {addr} is of type {kind}, not unicast (oif {oif})")]
    NotUnicast {
        /// The address looked up.
        addr: IpAddr,
        /// The route type as the kernel reported it.
        kind: String,
        /// The output interface the kernel reported.
        oif: u32,
    },
    /// The kernel knows no interface with this index (`ENODEV`).
    #[error("{request}: no interface with ifindex {ifindex}")]
    NoSuchLink {
        /// The request that named the interface.
        request: Request,
        /// The unknown interface index.
        ifindex: u32,
    },
    /// No interface has this name.
    #[error("no interface named {name:?}: {source}")]
    NoSuchInterface {
        /// The name looked up.
        name: String,
        /// Why the lookup failed.
        source: io::Error,
    },
    /// The interface has no 6-byte Ethernet address.
    #[error(
        "interface with ifindex {ifindex} has no Ethernet MAC address \
         (link type {link_type}, {addr_len}-byte link-layer address)"
    )]
    NotEthernet {
        /// The interface.
        ifindex: u32,
        /// Its `ARPHRD_*` link type.
        link_type: String,
        /// Length of its `IFLA_ADDRESS` (0 when absent).
        addr_len: usize,
    },
    /// The kernel rejected a request (`NLMSG_ERROR` with a negative errno).
    #[error("{request}: kernel answered: {source}{}", detail_suffix(.detail))]
    Kernel {
        /// The rejected request.
        request: Request,
        /// The errno the kernel returned.
        source: io::Error,
        /// The kernel's extended-ack message, if any.
        detail: Option<String>,
    },
    /// A socket call failed, or the kernel did not answer in time.
    #[error("{request}: netlink socket error: {source}")]
    Io {
        /// The request in flight.
        request: Request,
        /// The underlying error.
        source: io::Error,
    },
    /// The kernel's answer could not be decoded or made no sense.
    #[error("{request}: malformed reply: {reason}")]
    Protocol {
        /// The request in flight.
        request: Request,
        /// What was wrong.
        reason: String,
    },
    /// The fallback UDP probe that makes the kernel resolve a neighbour could
    /// not be sent.
    #[error("could not trigger neighbour resolution of {addr} on ifindex {ifindex}: {source}")]
    Trigger {
        /// The neighbour address.
        addr: IpAddr,
        /// The interface it was meant for.
        ifindex: u32,
        /// The socket error.
        source: io::Error,
    },
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(" ({d})"),
        None => String::new(),
    }
}

impl NetlinkError {
    /// The errno carried by a [`NetlinkError::Kernel`] error.
    pub(crate) fn kernel_errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Asks the kernel's FIB for the route it would use to send to `addr`
/// (`RTM_GETROUTE` with `RTA_DST` as a /32 or /128, not a dump; like
/// `ip route get`).
///
/// The answer is returned whatever its route type; [`resolve`] additionally
/// insists on a unicast route.
pub fn route_get(addr: IpAddr) -> Result<Route, NetlinkError> {
    let mut conn = Conn::open(Request::RouteGet(addr))?;
    conn.route_get(addr).map(|(route, _)| route)
}

/// MAC address (`IFLA_ADDRESS`) of the interface `ifindex` (`RTM_GETLINK`).
///
/// Fails with [`NetlinkError::NotEthernet`] unless the interface is an
/// Ethernet device (`ARPHRD_ETHER`) with a 6-byte address.
pub fn link_mac(ifindex: u32) -> Result<[u8; 6], NetlinkError> {
    let mut conn = Conn::open(Request::LinkGet(ifindex))?;
    conn.link_mac(ifindex)
}

/// Id of the XDP program attached to `ifindex` in any mode, if one is
/// (`IFLA_XDP` of `RTM_GETLINK`).
pub fn xdp_prog_id(ifindex: u32) -> Result<Option<u32>, NetlinkError> {
    let mut conn = Conn::open(Request::LinkGet(ifindex))?;
    conn.xdp_prog_id(ifindex)
}

/// MAC of the neighbour entry for `addr` on `ifindex` if the entry is usable
/// (REACHABLE, STALE, DELAY, PROBE, PERMANENT, or NOARP with a link-layer
/// address); `None` if absent, INCOMPLETE, FAILED, or without a non-zero
/// 6-byte address. A single `RTM_GETNEIGH` request, not a dump.
pub fn neighbour(ifindex: u32, addr: IpAddr) -> Result<Option<[u8; 6]>, NetlinkError> {
    let mut conn = Conn::open(Request::NeighbourGet { ifindex, addr })?;
    Ok(conn
        .neighbour_entry(ifindex, addr)?
        .and_then(|entry| entry.usable_mac()))
}

/// Asks the kernel to keep the neighbour entry for `addr` on `ifindex`
/// resolved ahead of time.
///
/// A PERMANENT or NOARP entry is left alone, as is an entry that is already
/// managed. Otherwise the entry is created or replaced as "managed"
/// (`NTF_EXT_MANAGED` via `NDA_FLAGS_EXT`, kernel ≥ 5.16; like
/// `ip neigh replace ADDR dev IF managed`), which keeps the kernel probing it
/// and preserves an existing resolved state. If the kernel refuses or
/// ignores the flag, resolution is triggered once by sending an empty UDP
/// datagram to `addr:9`, and `Ok` is returned all the same.
///
/// The check for a static entry and the replace are two requests, so a
/// static entry added concurrently in between can still be overwritten.
pub fn neighbour_keep_resolved(ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let mut conn = Conn::open(Request::NeighbourManage { ifindex, addr })?;
    if let Some(entry) = conn.neighbour_entry(ifindex, addr)? {
        if entry.state & (NUD_PERMANENT | NUD_NOARP) != 0 {
            log::debug!(
                "neighbour {addr} on ifindex {ifindex} is static (state {:#x}); left alone",
                entry.state
            );
            return Ok(());
        }
        if entry.managed {
            return Ok(());
        }
    }
    if managed_neighbours_supported() {
        match conn.neighbour_set_managed(ifindex, addr) {
            Ok(()) => {
                if conn
                    .neighbour_entry(ifindex, addr)?
                    .is_some_and(|entry| entry.managed)
                {
                    return Ok(());
                }
                log::warn!(
                    "kernel accepted but did not keep managed neighbour {addr} on ifindex {ifindex}; \
                     falling back to a UDP probe"
                );
            }
            Err(err @ NetlinkError::Kernel { .. }) => {
                log::warn!("{err}; falling back to a UDP probe");
            }
            Err(err) => return Err(err),
        }
    } else {
        log::debug!("kernel older than 5.16: no managed neighbours, probing {addr} over UDP");
    }
    trigger_resolution(ifindex, addr)
}

/// Resolves `addr` to a next hop: [`route_get`], then the neighbour entry of
/// the gateway (or of `addr` when on-link), then [`link_mac`] of the egress
/// interface. Uses one netlink socket for all three requests.
///
/// Fails with [`NetlinkError::NotUnicast`] for local, broadcast, blackhole
/// and other non-unicast routes.
pub fn resolve(addr: IpAddr) -> Result<Resolution, NetlinkError> {
    let mut conn = Conn::open(Request::RouteGet(addr))?;
    let (route, kind) = conn.route_get(addr)?;
    if kind != RouteType::Unicast {
        return Err(NetlinkError::NotUnicast {
            addr,
            kind: format!("{kind:?}").to_lowercase(),
            oif: route.oif,
        });
    }
    let neighbour = route.gateway.unwrap_or(addr);
    let Some(dst_mac) = conn
        .neighbour_entry(route.oif, neighbour)?
        .and_then(|entry| entry.usable_mac())
    else {
        return Ok(Resolution::NoNeighbour {
            ifindex: route.oif,
            neighbour,
        });
    };
    let src_mac = conn.link_mac(route.oif)?;
    Ok(Resolution::Resolved {
        hop: NextHop {
            ifindex: route.oif,
            dst_mac,
            src_mac,
        },
        neighbour,
    })
}

/// All addresses configured on any interface, IPv4 and IPv6 (`RTM_GETADDR`
/// dump), without duplicates. For point-to-point IPv4 addresses this is the
/// local end (`IFA_LOCAL`).
pub fn local_addrs() -> Result<Vec<IpAddr>, NetlinkError> {
    let request = Request::AddressDump;
    let mut conn = Conn::open(request)?;
    let mut attempt = 1;
    let reply = loop {
        let reply = conn.transact(
            request,
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        if !reply.interrupted || attempt == DUMP_ATTEMPTS {
            if reply.interrupted {
                log::warn!("{request}: still inconsistent after {attempt} attempts; using it");
            }
            break reply;
        }
        attempt += 1;
    };
    let mut seen = HashSet::new();
    let mut addrs = Vec::new();
    for message in reply.messages {
        let RouteNetlinkMessage::NewAddress(message) = message else {
            continue;
        };
        let mut local = None;
        let mut address = None;
        for attribute in message.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(ip),
                AddressAttribute::Address(ip) => address = Some(ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address)
            && seen.insert(ip)
        {
            addrs.push(ip);
        }
    }
    Ok(addrs)
}

/// Index of the interface called `name` (`if_nametoindex(3)`).
/// The name of interface `ifindex` now, if it exists.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires; it
    // writes a NUL-terminated name there or returns NULL.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> Result<u32, NetlinkError> {
    let c_name = CString::new(name).map_err(|_| NetlinkError::NoSuchInterface {
        name: name.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"),
    })?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the
    // call; `if_nametoindex` only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(NetlinkError::NoSuchInterface {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

/// Subscribes to RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR.
///
/// The socket belongs to the network namespace of the thread that called
/// [`Monitor::new`].
pub struct Monitor {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
    /// Number of receive-queue overruns (`ENOBUFS`) seen so far.
    overruns: u64,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("fd", &self.fd.get_ref().as_raw_fd())
            .field("overruns", &self.overruns)
            .finish()
    }
}

impl Monitor {
    /// Opens the monitor socket and joins the groups. Must be called inside
    /// a Tokio runtime with I/O enabled (an error is returned otherwise).
    pub fn new() -> Result<Monitor, NetlinkError> {
        Self::with_receive_buffer(MONITOR_RCVBUF, &MONITOR_GROUPS)
    }

    /// A monitor of link changes only: carrier events for the decision loop,
    /// parsed without any further query, so nothing there waits on netlink.
    pub fn links() -> Result<Monitor, NetlinkError> {
        Self::with_receive_buffer(MONITOR_RCVBUF, &[libc::RTNLGRP_LINK])
    }

    fn with_receive_buffer(rcvbuf: usize, groups: &[u32]) -> Result<Monitor, NetlinkError> {
        let request = Request::Monitor;
        let io_err = |source| NetlinkError::Io { request, source };
        let handle = tokio::runtime::Handle::try_current().map_err(|e| io_err(io::Error::other(e)))?;
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err)?;
        socket.bind_auto().map_err(io_err)?;
        for &group in groups {
            socket.add_membership(group).map_err(io_err)?;
        }
        let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        if let Err(force_err) =
            setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            && let Err(err) = setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, size)
        {
            log::warn!("{request}: cannot size receive buffer ({force_err}; {err})");
        }
        socket.set_non_blocking(true).map_err(io_err)?;
        let _guard = handle.enter();
        // SAFETY: `socket` owns its file descriptor, which stays open until
        // the socket is dropped together with the `AsyncFd`; `as_raw_fd`
        // always returns that same descriptor (`Socket` cannot swap it).
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| io_err(e.into()))?;
        Ok(Monitor {
            fd,
            buf: Vec::with_capacity(MONITOR_BUF),
            overruns: 0,
        })
    }

    /// Waits for the next batch of change messages and drains everything
    /// queued. Neighbour changes are reported one by one; anything else (link,
    /// address, route, a message that does not parse, or a receive-queue
    /// overrun that lost messages) sets [`Changes::full`].
    pub async fn changed(&mut self) -> Result<Changes, NetlinkError> {
        let request = Request::Monitor;
        let Monitor { fd, buf, overruns } = self;
        loop {
            let mut guard = fd
                .readable()
                .await
                .map_err(|source| NetlinkError::Io { request, source })?;
            let mut changes = Changes::default();
            let mut any = false;
            loop {
                let received = guard.try_io(|socket| {
                    buf.clear();
                    socket.get_ref().recv(buf, libc::MSG_TRUNC)
                });
                match received {
                    Ok(Ok(len)) => {
                        any = true;
                        if len > buf.len() {
                            log::debug!("{request}: {len}-byte datagram truncated");
                            changes.full = true;
                        }
                        classify(buf, &mut changes);
                    }
                    Ok(Err(err)) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                        any = true;
                        changes.full = true;
                        *overruns += 1;
                        log::warn!("{request}: receive queue overrun, change messages lost");
                    }
                    Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(source)) => return Err(NetlinkError::Io { request, source }),
                    // Queue drained; readiness has been cleared.
                    Err(_would_block) => break,
                }
            }
            if any {
                return Ok(changes);
            }
        }
    }
}

/// What a batch of change messages touched (see [`Monitor::changed`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Links, addresses or routes changed, or messages were lost: re-resolve everything.
    pub full: bool,
    /// Neighbour entries that changed, as (ifindex, address).
    pub neighbours: Vec<(u32, IpAddr)>,
    /// Links that were announced, as (ifindex, carrier up); a deleted link has no carrier.
    pub links: Vec<(u32, bool)>,
}

/// Sorts the messages of one datagram into `changes`.
fn classify(mut data: &[u8], changes: &mut Changes) {
    while let Ok(buffer) = NetlinkBuffer::new_checked(data) {
        let len = buffer.length() as usize;
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]) {
            Ok(NetlinkMessage {
                payload:
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
                    ),
                ..
            }) => {
                let addr = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                    _ => None,
                });
                match addr {
                    Some(addr) => changes.neighbours.push((n.header.ifindex, addr)),
                    None => changes.full = true,
                }
            }
            Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)),
                ..
            }) => {
                let carrier = l.header.flags.contains(LinkFlags::LowerUp);
                changes.links.push((l.header.index, carrier));
                changes.full = true;
            }
            Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)),
                ..
            }) => {
                changes.links.push((l.header.index, false));
                changes.full = true;
            }
            _ => changes.full = true,
        }
        let next = align4(len);
        if next >= data.len() {
            break;
        }
        data = &data[next..];
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The kernel's answer to one request: its payload messages in order.
#[derive(Default)]
pub(crate) struct Reply {
    pub(crate) messages: Vec<RouteNetlinkMessage>,
    /// A dump part carried `NLM_F_DUMP_INTR`: the table changed during it.
    pub(crate) interrupted: bool,
}

/// Relevant part of one neighbour entry.
struct NeighbourEntry {
    state: u16,
    lladdr: Option<Vec<u8>>,
    managed: bool,
}

impl NeighbourEntry {
    fn usable_mac(&self) -> Option<[u8; 6]> {
        if self.state & NUD_USABLE == 0 {
            return None;
        }
        let mac = <[u8; 6]>::try_from(self.lladdr.as_deref()?).ok()?;
        (mac != [0; 6]).then_some(mac)
    }
}

/// A request socket (`NETLINK_ROUTE`, bound to a kernel-assigned port).
/// One netlink socket for a series of requests (other modules' requests use
/// it too: [`crate::announce`]).
pub(crate) struct Conn {
    socket: Socket,
    port: u32,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn open(request: Request) -> Result<Conn, NetlinkError> {
        let io_err = |source| NetlinkError::Io { request, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err)?;
        let address = socket.bind_auto().map_err(io_err)?;
        // Error strings from the kernel, and error replies without a copy of
        // the whole request. Both are optional niceties.
        if let Err(err) = socket.set_ext_ack(true) {
            log::debug!("NETLINK_EXT_ACK unavailable: {err}");
        }
        if let Err(err) = socket.set_cap_ack(true) {
            log::debug!("NETLINK_CAP_ACK unavailable: {err}");
        }
        set_receive_timeout(socket.as_raw_fd(), REPLY_TIMEOUT).map_err(io_err)?;
        Ok(Conn {
            socket,
            port: address.port_number(),
            buf: Vec::with_capacity(REPLY_BUF),
        })
    }

    /// Sends one request and collects the reply. Non-dump requests carry
    /// `NLM_F_ACK`, so the reply ends with the kernel's ACK or error; a dump
    /// ends with `NLMSG_DONE`. Messages of other requests are skipped.
    pub(crate) fn transact(
        &mut self,
        request: Request,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Reply, NetlinkError> {
        let io_err = |source| NetlinkError::Io { request, source };
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send_to(&out, &SocketAddr::new(0, 0), 0)
            .map_err(io_err)?;

        let mut reply = Reply::default();
        loop {
            let len = self.receive(request)?;
            let mut offset = 0;
            while offset < len {
                let data = &self.buf[offset..len];
                let buffer = NetlinkBuffer::new_checked(data).map_err(|e| NetlinkError::Protocol {
                    request,
                    reason: e.to_string(),
                })?;
                let msg_len = buffer.length() as usize;
                offset += align4(msg_len);
                if buffer.sequence_number() != sequence || buffer.port_number() != self.port {
                    log::debug!(
                        "{request}: skipping message seq {} port {} (want seq {sequence} port {})",
                        buffer.sequence_number(),
                        buffer.port_number(),
                        self.port
                    );
                    continue;
                }
                let parsed =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..msg_len]).map_err(|e| {
                        NetlinkError::Protocol {
                            request,
                            reason: e.to_string(),
                        }
                    })?;
                if parsed.header.flags & NLM_F_DUMP_INTR != 0 {
                    reply.interrupted = true;
                }
                match parsed.payload {
                    NetlinkPayload::InnerMessage(inner) => reply.messages.push(inner),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(reply),
                            Some(code) => Err(kernel_error(
                                request,
                                code.get(),
                                error_ack_message(parsed.header.flags, &error.header),
                            )),
                        };
                    }
                    NetlinkPayload::Done(done) => {
                        return if done.code < 0 {
                            Err(kernel_error(
                                request,
                                done.code,
                                ack_tlv_message(&done.extended_ack),
                            ))
                        } else {
                            Ok(reply)
                        };
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(NetlinkError::Protocol {
                            request,
                            reason: "kernel reported NLMSG_OVERRUN".to_owned(),
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// Receives one whole datagram into `self.buf`; returns its length.
    fn receive(&mut self, request: Request) -> Result<usize, NetlinkError> {
        let io_err = |source: io::Error| {
            let source = if source.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", REPLY_TIMEOUT.as_secs()),
                )
            } else {
                source
            };
            NetlinkError::Io { request, source }
        };
        loop {
            // Peek first to learn the datagram's size, so that nothing is
            // truncated however large the kernel's answer is.
            self.buf.clear();
            let size = match self.socket.recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC) {
                Ok(size) => size,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(io_err(err)),
            };
            self.buf.clear();
            self.buf.reserve(size);
            match self.socket.recv(&mut self.buf, 0) {
                Ok(_) => return Ok(self.buf.len()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(io_err(err)),
            }
        }
    }

    fn route_get(&mut self, addr: IpAddr) -> Result<(Route, RouteType), NetlinkError> {
        let request = Request::RouteGet(addr);
        let mut message = RouteMessage::default();
        message.header.address_family = family(addr);
        message.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(addr)));
        let reply = self.transact(request, RouteNetlinkMessage::GetRoute(message), 0)?;
        let message = reply
            .messages
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(route) => Some(route),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::Protocol {
                request,
                reason: "no route message in the answer".to_owned(),
            })?;
        let mut route = Route {
            oif: 0,
            gateway: None,
            prefsrc: None,
        };
        for attribute in message.attributes {
            match attribute {
                RouteAttribute::Oif(oif) => route.oif = oif,
                RouteAttribute::Gateway(gateway) => route.gateway = route_ip(gateway),
                RouteAttribute::Via(RouteVia::Inet(ip)) => route.gateway = Some(ip.into()),
                RouteAttribute::Via(RouteVia::Inet6(ip)) => route.gateway = Some(ip.into()),
                RouteAttribute::PrefSource(src) => route.prefsrc = route_ip(src),
                _ => {}
            }
        }
        if route.oif == 0 {
            return Err(NetlinkError::Protocol {
                request,
                reason: "the answer names no output interface".to_owned(),
            });
        }
        Ok((route, message.header.kind))
    }

    fn link(&mut self, ifindex: u32) -> Result<LinkMessage, NetlinkError> {
        let request = Request::LinkGet(ifindex);
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        message
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let reply = self.transact(request, RouteNetlinkMessage::GetLink(message), 0)?;
        reply
            .messages
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::Protocol {
                request,
                reason: "no link message in the answer".to_owned(),
            })
    }

    fn xdp_prog_id(&mut self, ifindex: u32) -> Result<Option<u32>, NetlinkError> {
        let link = self.link(ifindex)?;
        let ids = link.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        });
        // IFLA_XDP_PROG_ID is the single attached program; the per-mode ids
        // cover the case of several modes attached at once.
        Ok(ids.and_then(|attrs| {
            attrs.into_iter().find_map(|x| match x {
                LinkXdp::ProgId(id)
                | LinkXdp::DrvProgId(id)
                | LinkXdp::SkbProgId(id)
                | LinkXdp::HwProgId(id)
                    if id != 0 =>
                {
                    Some(id)
                }
                _ => None,
            })
        }))
    }

    fn link_mac(&mut self, ifindex: u32) -> Result<[u8; 6], NetlinkError> {
        let message = self.link(ifindex)?;
        let address = message.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(bytes),
            _ => None,
        });
        let link_type = message.header.link_layer_type;
        match address.as_deref().map(<[u8; 6]>::try_from) {
            Some(Ok(mac)) if link_type == LinkLayerType::Ether => Ok(mac),
            _ => Err(NetlinkError::NotEthernet {
                ifindex,
                link_type: link_type.to_string(),
                addr_len: address.map_or(0, |a| a.len()),
            }),
        }
    }

    /// The neighbour entry for `addr` on `ifindex`, whatever its state;
    /// `None` if there is none. A single `RTM_GETNEIGH` (kernel ≥ 5.0).
    fn neighbour_entry(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<Option<NeighbourEntry>, NetlinkError> {
        let request = Request::NeighbourGet { ifindex, addr };
        let mut message = NeighbourMessage::default();
        message.header.family = family(addr);
        message.header.ifindex = ifindex;
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(addr)));
        let reply = match self.transact(request, RouteNetlinkMessage::GetNeighbour(message), 0) {
            Ok(reply) => reply,
            Err(err) if err.kernel_errno() == Some(libc::ENOENT) => return Ok(None),
            Err(err) => return Err(err),
        };
        let Some(message) = reply.messages.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(neighbour) => Some(neighbour),
            _ => None,
        }) else {
            return Ok(None);
        };
        let mut entry = NeighbourEntry {
            state: u16::from(message.header.state),
            lladdr: None,
            managed: false,
        };
        for attribute in message.attributes {
            match attribute {
                NeighbourAttribute::LinkLayerAddress(bytes) => entry.lladdr = Some(bytes),
                NeighbourAttribute::ExtFlags(flags) => {
                    entry.managed = flags.contains(NeighbourExtFlags::Managed);
                }
                _ => {}
            }
        }
        Ok(Some(entry))
    }

    /// `RTM_NEWNEIGH` with `NLM_F_CREATE | NLM_F_REPLACE`, state `NUD_NONE`
    /// and `NTF_EXT_MANAGED`: the kernel keeps the state of an existing entry
    /// and keeps probing it.
    fn neighbour_set_managed(&mut self, ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        let request = Request::NeighbourManage { ifindex, addr };
        let mut message = NeighbourMessage::default();
        message.header.family = family(addr);
        message.header.ifindex = ifindex;
        message.header.state = NeighbourState::None;
        message.attributes = vec![
            NeighbourAttribute::Destination(neighbour_address(addr)),
            NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed),
        ];
        self.transact(
            request,
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }
}

/// Maps a kernel errno (negative, as in `nlmsgerr`) to a typed error.
fn kernel_error(request: Request, code: i32, detail: Option<String>) -> NetlinkError {
    let errno = code.saturating_neg();
    let source = io::Error::from_raw_os_error(errno);
    match request {
        Request::RouteGet(addr) if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH => {
            NetlinkError::NoRoute { addr, source }
        }
        Request::LinkGet(ifindex)
        | Request::NeighbourGet { ifindex, .. }
        | Request::NeighbourManage { ifindex, .. }
            if errno == libc::ENODEV =>
        {
            NetlinkError::NoSuchLink { request, ifindex }
        }
        _ => NetlinkError::Kernel {
            request,
            source,
            detail,
        },
    }
}

/// The extended-ack string of an `NLMSG_ERROR` payload (after the errno):
/// the original request's header (whole request unless `NLM_F_CAPPED`), then
/// TLVs if `NLM_F_ACK_TLVS`.
fn error_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len_bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        u32::from_ne_bytes(len_bytes) as usize
    };
    ack_tlv_message(payload.get(align4(request_len)..)?)
}

/// `NLMSGERR_ATTR_MSG` among extended-ack TLVs.
fn ack_tlv_message(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let value = nla.value();
            let text = value.split(|&b| b == 0).next().unwrap_or(value);
            String::from_utf8_lossy(text).into_owned()
        })
        .filter(|text| !text.is_empty())
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn neighbour_address(addr: IpAddr) -> NeighbourAddress {
    match addr {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    }
}

fn route_ip(addr: RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(ip.into()),
        RouteAddress::Inet6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// Whether the running kernel knows `NTF_EXT_MANAGED` (5.16+). Older kernels
/// silently ignore `NDA_FLAGS_EXT`, and a replace with state `NUD_NONE` would
/// then invalidate a resolved entry, so they are not asked at all. An
/// unreadable version counts as supported (the result is verified anyway).
fn managed_neighbours_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
            return true;
        };
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse::<u32>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (5, 16),
            _ => true,
        }
    })
}

/// Makes the kernel resolve `addr` by sending one empty UDP datagram to
/// `addr:9` from a connected socket (the kernel then ARPs/NDs).
fn trigger_resolution(ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let (local, remote): (StdSocketAddr, StdSocketAddr) = match addr {
        IpAddr::V4(ip) => ((Ipv4Addr::UNSPECIFIED, 0).into(), (ip, PROBE_PORT).into()),
        IpAddr::V6(ip) => {
            let scope = if ip.is_unicast_link_local() { ifindex } else { 0 };
            (
                (Ipv6Addr::UNSPECIFIED, 0).into(),
                SocketAddrV6::new(ip, PROBE_PORT, 0, scope).into(),
            )
        }
    };
    let send = || -> io::Result<()> {
        let socket = UdpSocket::bind(local)?;
        socket.connect(remote)?;
        socket.send(&[])?;
        Ok(())
    };
    send().map_err(|source| NetlinkError::Trigger {
        addr,
        ifindex,
        source,
    })
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller; the option value
    // points to a live `c_int` and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_receive_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `fd` is an open socket owned by the caller; the option value
    // points to a live `timeval` and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! These tests need root: each builds a private network namespace with a
    //! veth pair and moves its own thread into it.

    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::{Mutex, PoisonError};

    const WAIT: Duration = Duration::from_secs(5);
    const V0_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
    const PERM_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x54];
    const PERM6_MAC: [u8; 6] = [2, 0, 0, 0, 6, 2];
    const GW6_MAC: [u8; 6] = [2, 0, 0, 0, 6, 0xfe];

    /// `ip netns add` mounts /run/netns on first use; keep concurrent tests
    /// from racing on that.
    static NETNS_ADD: Mutex<()> = Mutex::new(());

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn setns(ns: &File) -> io::Result<()> {
        // SAFETY: `ns` is an open namespace file; setns only affects the
        // calling thread and does not touch memory we own.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A named network namespace the current thread lives in until drop,
    /// which moves the thread back and deletes the namespace (also when the
    /// test panics).
    struct TestNs {
        name: String,
        original: File,
    }

    impl TestNs {
        fn enter(tag: &str) -> TestNs {
            let original = File::open("/proc/thread-self/ns/net").expect("open own netns");
            let name = format!("nlt-{}-{tag}", std::process::id());
            {
                let _lock = NETNS_ADD.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                ip(&["netns", "add", &name]);
            }
            let ns = TestNs { name, original };
            let target = File::open(format!("/var/run/netns/{}", ns.name)).expect("open netns");
            setns(&target).expect("setns into test netns");
            ns
        }

        /// Runs `ip -n NAME <cmd>`.
        fn ip(&self, cmd: &str) {
            let mut args = vec!["-n", &self.name];
            args.extend(cmd.split_whitespace());
            ip(&args);
        }

        fn ip_output(&self, cmd: &str) -> String {
            let out = Command::new("ip")
                .args(["-n", &self.name])
                .args(cmd.split_whitespace())
                .output()
                .expect("run ip");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            if let Err(err) = setns(&self.original) {
                eprintln!("cannot return to the original netns: {err}");
            }
            match Command::new("ip").args(["netns", "del", &self.name]).output() {
                Ok(out) if out.status.success() => {}
                other => eprintln!("ip netns del {}: {other:?}", self.name),
            }
        }
    }

    /// lo up; veth v0 (198.18.0.1/24, 2001:2::1/64) <-> v1 (no addresses);
    /// permanent neighbours .2/::2 and gateways .254/::fe; routes to
    /// 198.19.0.0/24 and 2001:2:0:100::/64 via those gateways.
    /// These tests create network namespaces: root only. Without root they
    /// skip loudly, except under `CI=true`, where skipping is a failure.
    fn root(tag: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tag}: needs root, and CI=true forbids skipping"
        );
        eprintln!("SKIPPED netlink test {tag}: needs root");
        false
    }

    fn topology(tag: &str) -> Option<(TestNs, u32)> {
        if !root(tag) {
            return None;
        }
        let ns = TestNs::enter(tag);
        for cmd in [
            "link set lo up",
            "link add v0 address 02:00:00:00:01:01 type veth peer name v1 address 02:00:00:00:01:02",
            "link set v0 up",
            "link set v1 up",
            "addr add 198.18.0.1/24 dev v0",
            "addr add 2001:2::1/64 dev v0 nodad",
            "neigh add 198.18.0.2 lladdr 02:00:00:00:02:02 dev v0 nud permanent",
            "neigh add 198.18.0.254 lladdr 02:00:00:00:02:54 dev v0 nud permanent",
            "neigh add 2001:2::2 lladdr 02:00:00:00:06:02 dev v0 nud permanent",
            "neigh add 2001:2::fe lladdr 02:00:00:00:06:fe dev v0 nud permanent",
            "route add 198.19.0.0/24 via 198.18.0.254 dev v0",
            "route add 2001:2:0:100::/64 via 2001:2::fe dev v0",
        ] {
            ns.ip(cmd);
        }
        let v0 = ifindex("v0").expect("ifindex of v0");
        Some((ns, v0))
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    }

    #[test]
    fn resolves_next_hops() {
        let Some((ns, v0)) = topology("resolve") else {
            return;
        };
        let hop = |dst_mac, neighbour: &str| Resolution::Resolved {
            hop: NextHop {
                ifindex: v0,
                dst_mac,
                src_mac: V0_MAC,
            },
            neighbour: addr(neighbour),
        };

        assert_eq!(
            resolve(addr("198.18.0.2")).expect("on-link v4"),
            hop(PERM_MAC, "198.18.0.2")
        );
        assert_eq!(
            resolve(addr("2001:2::2")).expect("on-link v6"),
            hop(PERM6_MAC, "2001:2::2")
        );
        assert_eq!(
            resolve(addr("198.19.0.7")).expect("gateway v4"),
            hop(GW_MAC, "198.18.0.254")
        );
        assert_eq!(
            resolve(addr("2001:2:0:100::7")).expect("gateway v6"),
            hop(GW6_MAC, "2001:2::fe")
        );

        let route = route_get(addr("198.19.0.7")).expect("route v4");
        assert_eq!(
            route,
            Route {
                oif: v0,
                gateway: Some(addr("198.18.0.254")),
                prefsrc: Some(addr("198.18.0.1"))
            }
        );
        let route = route_get(addr("2001:2:0:100::7")).expect("route v6");
        assert_eq!((route.oif, route.gateway), (v0, Some(addr("2001:2::fe"))));
        let route = route_get(addr("198.18.0.3")).expect("on-link route");
        assert_eq!((route.oif, route.gateway), (v0, None));

        for target in ["198.18.0.3", "2001:2::3"] {
            assert_eq!(
                resolve(addr(target)).expect("no neighbour"),
                Resolution::NoNeighbour {
                    ifindex: v0,
                    neighbour: addr(target)
                }
            );
        }
        // Gateway without a neighbour entry: the gateway is reported.
        ns.ip("neigh del 198.18.0.254 dev v0");
        assert_eq!(
            resolve(addr("198.19.0.7")).expect("gateway without neighbour"),
            Resolution::NoNeighbour {
                ifindex: v0,
                neighbour: addr("198.18.0.254")
            }
        );

        for target in ["198.19.255.1", "2001:2:ffff::1"] {
            let err = route_get(addr(target)).expect_err("unroutable");
            assert!(matches!(err, NetlinkError::NoRoute { .. }), "{err:?}");
            assert!(err.to_string().contains(target), "{err}");
            let err = resolve(addr(target)).expect_err("unroutable");
            assert!(err.to_string().contains(target), "{err}");
        }

        // Non-unicast routes: the kernel refuses (blackhole, prohibit) or
        // answers with a route type resolve() rejects; either error names
        // the address.
        ns.ip("route add blackhole 198.19.1.0/24");
        ns.ip("route add prohibit 198.19.2.0/24");
        ns.ip("route add blackhole 2001:2:0:200::/64");
        for target in ["198.19.1.1", "198.19.2.1", "2001:2:0:200::1"] {
            let err = resolve(addr(target)).expect_err("non-unicast route");
            eprintln!("{target}: {err}");
            assert!(err.to_string().contains(target), "{err}");
        }

        let err = resolve(addr("198.18.0.1")).expect_err("local address");
        assert!(matches!(err, NetlinkError::NotUnicast { .. }), "{err:?}");
        assert!(err.to_string().contains("198.18.0.1"), "{err}");
    }

    #[test]
    fn queries_links_neighbours_and_addresses() {
        let Some((ns, v0)) = topology("query") else {
            return;
        };

        assert_eq!(link_mac(v0).expect("v0 mac"), V0_MAC);
        let lo = ifindex("lo").expect("lo");
        let err = link_mac(lo).expect_err("loopback is not Ethernet");
        assert!(matches!(err, NetlinkError::NotEthernet { .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("ifindex {lo}")), "{err}");
        let err = link_mac(999_999).expect_err("no such link");
        assert!(
            matches!(err, NetlinkError::NoSuchLink { ifindex: 999_999, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("999999"), "{err}");
        let err = ifindex("nlt-nonexistent").expect_err("no such name");
        assert!(err.to_string().contains("nlt-nonexistent"), "{err}");

        ns.ip("neigh add 198.18.0.6 lladdr 02:00:00:00:02:06 dev v0 nud stale");
        ns.ip("neigh add 198.18.0.7 lladdr 02:00:00:00:02:07 dev v0 nud noarp");
        assert_eq!(neighbour(v0, addr("198.18.0.2")).expect("perm"), Some(PERM_MAC));
        assert_eq!(
            neighbour(v0, addr("2001:2::2")).expect("perm v6"),
            Some(PERM6_MAC)
        );
        assert_eq!(
            neighbour(v0, addr("198.18.0.6")).expect("stale"),
            Some([2, 0, 0, 0, 2, 6])
        );
        assert_eq!(
            neighbour(v0, addr("198.18.0.7")).expect("noarp"),
            Some([2, 0, 0, 0, 2, 7])
        );
        assert_eq!(neighbour(v0, addr("198.18.0.3")).expect("absent"), None);
        let err = neighbour(999_999, addr("198.18.0.2")).expect_err("no such link");
        assert!(err.to_string().contains("999999"), "{err}");

        let addrs = local_addrs().expect("local addresses");
        for expected in ["198.18.0.1", "2001:2::1", "127.0.0.1", "::1"] {
            assert!(
                addrs.contains(&addr(expected)),
                "{expected} missing from {addrs:?}"
            );
        }
    }

    #[test]
    fn keeps_neighbours_resolved() {
        let Some((ns, v0)) = topology("keep") else {
            return;
        };

        for target in ["198.18.0.3", "2001:2::3"] {
            neighbour_keep_resolved(v0, addr(target)).expect("keep resolved");
            let shown = ns.ip_output(&format!("neigh show {target} dev v0"));
            assert!(shown.contains("managed"), "{target}: {shown}");
            assert_eq!(neighbour(v0, addr(target)).expect("query"), None, "{shown}");
            // Already managed: nothing to do, still fine.
            neighbour_keep_resolved(v0, addr(target)).expect("keep resolved again");
        }

        for (target, mac) in [("198.18.0.2", PERM_MAC), ("2001:2::2", PERM6_MAC)] {
            neighbour_keep_resolved(v0, addr(target)).expect("permanent entry");
            let shown = ns.ip_output(&format!("neigh show {target} dev v0"));
            assert!(
                shown.contains("PERMANENT") && !shown.contains("managed"),
                "{shown}"
            );
            assert_eq!(neighbour(v0, addr(target)).expect("query"), Some(mac));
        }

        // A resolved (stale) entry keeps its address when made managed.
        ns.ip("neigh add 198.18.0.6 lladdr 02:00:00:00:02:06 dev v0 nud stale");
        neighbour_keep_resolved(v0, addr("198.18.0.6")).expect("stale entry");
        assert_eq!(
            neighbour(v0, addr("198.18.0.6")).expect("query"),
            Some([2, 0, 0, 0, 2, 6])
        );

        let err = neighbour_keep_resolved(999_999, addr("198.18.0.3")).expect_err("no link");
        assert!(err.to_string().contains("999999"), "{err}");

        // The fallback: one UDP datagram makes the kernel start resolving.
        for target in ["198.18.0.4", "2001:2::4"] {
            trigger_resolution(v0, addr(target)).expect("udp probe");
            let mut conn = Conn::open(Request::NeighbourGet {
                ifindex: v0,
                addr: addr(target),
            })
            .expect("socket");
            let entry = conn
                .neighbour_entry(v0, addr(target))
                .expect("query")
                .expect("probe created a neighbour entry");
            assert!(entry.usable_mac().is_none());
            assert!(!entry.managed);
        }
    }

    async fn quiesce(monitor: &mut Monitor) {
        for _ in 0..50 {
            match tokio::time::timeout(Duration::from_millis(300), monitor.changed()).await {
                Ok(result) => {
                    result.expect("monitor");
                }
                Err(_elapsed) => return,
            }
        }
        panic!("monitor never went quiet");
    }

    #[test]
    fn monitor_reports_changes() {
        let Some((ns, v0)) = topology("monitor") else {
            return;
        };
        runtime().block_on(async {
            let mut monitor = Monitor::new().expect("monitor");
            quiesce(&mut monitor).await;
            ns.ip("link set v1 down");
            let changes = tokio::time::timeout(WAIT, monitor.changed())
                .await
                .expect("no change reported after link down")
                .expect("monitor");
            assert!(changes.full, "{changes:?}");

            quiesce(&mut monitor).await;
            ns.ip("neigh add 198.18.0.50 lladdr 02:00:00:00:02:50 dev v0 nud permanent");
            let changes = tokio::time::timeout(WAIT, monitor.changed())
                .await
                .expect("no change reported after neigh add")
                .expect("monitor");
            assert!(
                !changes.full,
                "a neighbour change alone is not a full refresh: {changes:?}"
            );
            assert!(
                changes.neighbours.contains(&(v0, addr("198.18.0.50"))),
                "{changes:?}"
            );

            quiesce(&mut monitor).await;
            ns.ip("addr add 198.18.5.1/24 dev v0");
            tokio::time::timeout(WAIT, monitor.changed())
                .await
                .expect("no change reported after addr add")
                .expect("monitor");
        });
    }

    #[test]
    fn monitor_survives_overrun() {
        let Some((ns, _v0)) = topology("overrun") else {
            return;
        };
        runtime().block_on(async {
            let mut monitor = Monitor::with_receive_buffer(1, &MONITOR_GROUPS).expect("monitor");
            quiesce(&mut monitor).await;
            let mut batch = String::new();
            for third in 1..=4 {
                for fourth in 1..=250 {
                    batch.push_str(&format!(
                        "neigh add 198.18.{third}.{fourth} lladdr 02:00:00:00:{third:02x}:{fourth:02x} dev v0 nud permanent\n"
                    ));
                }
            }
            let mut child = Command::new("ip")
                .args(["-n", &ns.name, "-batch", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("ip -batch");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(batch.as_bytes())
                .expect("write batch");
            assert!(child.wait().expect("ip -batch").success());

            let changes = tokio::time::timeout(WAIT, monitor.changed())
                .await
                .expect("no change reported")
                .expect("overrun is not an error");
            assert!(changes.full || !changes.neighbours.is_empty(), "{changes:?}");
            quiesce(&mut monitor).await;
            assert!(monitor.overruns > 0, "the tiny receive buffer never overran");

            // Still works afterwards.
            ns.ip("link set v1 down");
            tokio::time::timeout(WAIT, monitor.changed())
                .await
                .expect("no change reported after overrun")
                .expect("monitor");
        });
    }

    #[test]
    fn monitor_needs_a_runtime() {
        let err = Monitor::new().expect_err("no runtime");
        assert!(
            matches!(
                err,
                NetlinkError::Io {
                    request: Request::Monitor,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn parses_extended_ack_and_counts_messages() {
        // NLMSG_ERROR payload after the errno: capped request header, then
        // an NLMSGERR_ATTR_MSG TLV.
        let mut payload = vec![0u8; 16];
        let text = b"Neighbour entry not found\0";
        let nla_len = 4 + text.len();
        payload.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.resize(align4(payload.len()), 0);
        assert_eq!(
            error_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Neighbour entry not found")
        );
        assert_eq!(error_ack_message(NLM_F_CAPPED, &payload), None);

        let err = kernel_error(Request::LinkGet(7), -libc::EPERM, Some("nope".into()));
        let text = err.to_string();
        assert!(text.contains("ifindex 7") && text.contains("nope"), "{text}");

        // Two 16-byte headers (NLMSG_NOOP) in one datagram: not neighbour
        // messages, so they ask for a full refresh.
        let mut datagram = Vec::new();
        for _ in 0..2 {
            datagram.extend_from_slice(&16u32.to_ne_bytes());
            datagram.extend_from_slice(&1u16.to_ne_bytes());
            datagram.extend_from_slice(&[0; 10]);
        }
        let mut changes = Changes::default();
        classify(&datagram, &mut changes);
        assert!(changes.full && changes.neighbours.is_empty());
        let mut changes = Changes::default();
        classify(&[], &mut changes);
        assert_eq!(changes, Changes::default());
    }
}
