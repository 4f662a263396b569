//! IP fragments: only a datagram's first fragment carries the ports, so it
//! alone can be matched to a service and a backend. Its decision is recorded
//! under the datagram's identity (source, destination, protocol,
//! identification) in `FRAGS`, and every later fragment goes the same way.
//! A later fragment with no record (it overtook the first, or the record was
//! evicted) cannot be placed: to a VIP it is dropped and counted.
use redirector_common::{Ip, flow::frag_hash};

use crate::{
    flows::Table,
    maps::{FLOW_SETTINGS, FRAGS},
    parse::Packet,
};

/// A datagram's identity.
pub struct Datagram<'a> {
    pub src: &'a Ip,
    pub dst: &'a Ip,
    pub id: u32,
    pub proto: u8,
    /// A NAT reply (backend → client) rather than VIP traffic.
    pub reply: bool,
}

impl<'a> Datagram<'a> {
    /// The datagram a first fragment belongs to.
    #[inline(always)]
    pub fn of(pkt: &'a Packet, reply: bool) -> Datagram<'a> {
        Datagram {
            src: &pkt.src,
            dst: &pkt.dst,
            id: pkt.frag_id,
            proto: pkt.proto,
            reply,
        }
    }
}

#[inline(always)]
fn hash(d: &Datagram) -> Option<(u64, Table)> {
    let cfg = FLOW_SETTINGS.get(0)?;
    let h = frag_hash(d.src, d.dst, d.id, d.proto, d.reply, cfg.seed);
    Some((h, Table::new(&FRAGS, cfg.frag_buckets)))
}

/// The first fragment went to backend `slot` of `service`.
#[inline(always)]
pub fn record(d: &Datagram, service: u32, slot: u8, now: u32) {
    if let Some((h, table)) = hash(d) {
        match table.find(h) {
            Some((e, _)) => crate::flows::repoint(e, h, slot, now),
            None => table.insert(h, service, slot, now),
        }
    }
}

/// Where the datagram's first fragment went: (service, slot).
#[inline(always)]
pub fn find(d: &Datagram) -> Option<(u32, u8)> {
    let (h, table) = hash(d)?;
    let (e, slot) = table.find(h)?;
    // SAFETY: e points into the map value `find` matched.
    Some((u32::from(unsafe { (*e).service }), slot))
}
