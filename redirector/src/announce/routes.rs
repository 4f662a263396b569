//! The announced host routes, over rtnetlink: one /32 or /128 per VIP in
//! the announce table, through the TUN device, with the redirector's own
//! route protocol number so that a routing daemon (and a person) can tell
//! them from anything else.
use std::{collections::BTreeSet, net::IpAddr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};

use crate::netlink::{Conn, NetlinkError, Request};

/// `rtm_protocol` of the announced routes (`ip route … proto 245`; BIRD
/// shows it as `Kernel.source: 245`). Unassigned in `rt_protos`.
pub const RTPROT_REDIRECTOR: u8 = 245;

fn message(table: u32, ifindex: u32, addr: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    // The u8 field holds tables below 256; RTA_TABLE holds any.
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RouteProtocol::Other(RTPROT_REDIRECTOR);
    m.header.scope = RouteScope::Link;
    m.header.kind = RouteType::Unicast;
    m.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Destination(RouteAddress::from(addr)),
        RouteAttribute::Oif(ifindex),
    ];
    m
}

/// Adds (or replaces) the host route to `addr` in `table` through `ifindex`.
pub fn add(table: u32, ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let request = Request::RouteSet { table, addr };
    Conn::open(request)?
        .transact(
            request,
            RouteNetlinkMessage::NewRoute(message(table, ifindex, addr)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
}

/// Removes the host route to `addr` from `table`; one already gone is fine.
pub fn remove(table: u32, ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let request = Request::RouteSet { table, addr };
    match Conn::open(request)?.transact(
        request,
        RouteNetlinkMessage::DelRoute(message(table, ifindex, addr)),
        0,
    ) {
        Err(e) if e.kernel_errno() == Some(libc::ESRCH) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// The host routes in `table` through `ifindex` (both families): what a
/// stopped daemon left announced.
pub fn list(table: u32, ifindex: u32) -> Result<BTreeSet<IpAddr>, NetlinkError> {
    let request = Request::RouteDump { table };
    let mut conn = Conn::open(request)?;
    let mut found = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        let reply = conn.transact(request, RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        for msg in reply.messages {
            let RouteNetlinkMessage::NewRoute(route) = msg else {
                continue;
            };
            let full = if family == AddressFamily::Inet { 32 } else { 128 };
            if route.header.destination_prefix_length != full {
                continue;
            }
            let mut in_table = u32::from(route.header.table);
            let (mut oif, mut dst) = (0, None);
            for a in route.attributes {
                match a {
                    RouteAttribute::Table(t) => in_table = t,
                    RouteAttribute::Oif(o) => oif = o,
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(ip)),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(ip)),
                    _ => {}
                }
            }
            if in_table == table
                && oif == ifindex
                && let Some(ip) = dst
            {
                found.insert(ip);
            }
        }
    }
    Ok(found)
}

/// Sets interface `ifindex` administratively up.
pub fn link_up(ifindex: u32) -> Result<(), NetlinkError> {
    let request = Request::LinkSet(ifindex);
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    Conn::open(request)?
        .transact(request, RouteNetlinkMessage::SetLink(m), 0)
        .map(|_| ())
}

/// Removes interface `ifindex` (a persistent announce device left by a
/// stopped daemon, at `detach`).
pub fn link_delete(ifindex: u32) -> Result<(), NetlinkError> {
    let request = Request::LinkDelete(ifindex);
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    Conn::open(request)?
        .transact(request, RouteNetlinkMessage::DelLink(m), 0)
        .map(|_| ())
}
