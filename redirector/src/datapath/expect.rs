//! What a configured service means in the maps: the entries its writes put
//! there, so the writers and the reconciliation agree by construction.
use redirector_common::{
    ACL_ALLOW, ACL_DENY, Endpoint, PORT_BACKEND, PORT_SERVICE, ReverseInfo, SLOT_PRIMARY, SLOT_SECONDARY,
    ServiceInfo, ServiceVip,
};

use super::addr16;
use crate::config::{Backend, Mode, Service};

fn mode_byte(m: Mode) -> u8 {
    match m {
        Mode::Nat => redirector_common::Mode::Nat as u8,
        Mode::Dsr => redirector_common::Mode::Dsr as u8,
    }
}

/// The `SERVICES` key and value of service `id`.
pub(super) fn service(id: u32, svc: &Service) -> (Endpoint, ServiceInfo) {
    let key = Endpoint {
        addr: addr16(svc.vip),
        port_be: svc.port.to_be(),
        proto: svc.protocol.number(),
        _pad: 0,
    };
    let mut acl = 0;
    if !svc.allow.is_empty() {
        acl |= ACL_ALLOW;
    }
    if !svc.deny.is_empty() {
        acl |= ACL_DENY;
    }
    let info = ServiceInfo {
        id,
        mode: mode_byte(svc.mode),
        acl,
        _pad: [0; 2],
    };
    (key, info)
}

/// The `SERVICE_VIPS` entry of a service.
pub(super) fn service_vip(svc: &Service) -> ServiceVip {
    ServiceVip {
        vip: addr16(svc.vip),
        mode: mode_byte(svc.mode),
        _pad: [0; 3],
    }
}

/// Both backends with their slot.
pub(super) fn backends(svc: &Service) -> [(u8, &Backend); 2] {
    [(SLOT_PRIMARY, &svc.primary), (SLOT_SECONDARY, &svc.secondary)]
}

/// A NAT backend's `REVERSE` key and value (`direct` is learnt by the
/// program: 0 here).
pub(super) fn reverse(id: u32, svc: &Service, slot: u8, be: &Backend) -> (Endpoint, ReverseInfo) {
    let key = Endpoint {
        addr: addr16(be.addr),
        port_be: be.port.unwrap_or(svc.port).to_be(),
        proto: svc.protocol.number(),
        _pad: 0,
    };
    let info = ReverseInfo {
        service: id,
        vip: addr16(svc.vip),
        port_be: svc.port.to_be(),
        slot,
        direct: 0,
    };
    (key, info)
}

/// The `PORTS` bits a service needs: its own port, and for NAT its
/// backends' ports (replies are matched by source port).
pub(super) fn port_flags(svc: &Service) -> Vec<(u16, u8)> {
    let mut v = vec![(svc.port, PORT_SERVICE)];
    if svc.mode == Mode::Nat {
        for (_, be) in backends(svc) {
            v.push((be.port.unwrap_or(svc.port), PORT_BACKEND));
        }
    }
    v
}
