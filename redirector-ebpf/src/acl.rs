//! Per-service allow and deny lists: source prefixes in two LPM tries keyed
//! by (service, client address). A service without lists costs nothing.
use aya_ebpf::maps::lpm_trie::Key;
use redirector_common::{ACL_ALLOW, ACL_DENY, AclKey, Ip};

use crate::maps::{ALLOW, DENY};

/// Does service `id` (whose `ServiceInfo::acl` is `acl`) admit `client`?
/// Deny wins; an allow list admits only what it matches.
#[inline(always)]
pub fn admits(id: u32, acl: u8, client: &Ip) -> bool {
    if acl == 0 {
        return true;
    }
    let key = Key::new(
        32 + 128,
        AclKey {
            service_be: id.to_be(),
            addr: *client,
        },
    );
    if acl & ACL_DENY != 0 && DENY.get(&key).is_some() {
        return false;
    }
    acl & ACL_ALLOW == 0 || ALLOW.get(&key).is_some()
}
