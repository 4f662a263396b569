//! `SERVICE_INDEX`: copies of `SERVICES` entries in an array indexed by a
//! cheap hash of the key ([`service_slot`]), so the forwarding path finds a
//! service with a few instructions and an array load instead of the hash
//! map's lookup, its dearest step (`docs/benchmarks.md`, per-feature
//! ablation). A slot holds one of its keys; the others (rare) take the map.
//!
//! The one rule: a valid entry equals its key's `SERVICES` entry. The
//! program compares the whole key with the packet's and looks `SERVICES` up
//! on any mismatch, so which key a shared slot names never changes a
//! decision. Writers keep the rule by order: an entry is written after its
//! key's `SERVICES` value and invalidated before its key goes. `by_slot`
//! mirrors the published keys so a freed slot can name its next key.
use std::collections::BTreeMap;

use aya::maps::{Array, MapData};
use redirector_common::{Endpoint, IndexedService, ServiceInfo, names, service_slot};

use super::{Datapath, Result, map_err, reconcile::Drift};

/// Published `SERVICES` keys and values by slot.
pub(super) type BySlot = BTreeMap<u32, Vec<(Endpoint, ServiceInfo)>>;

fn slot(key: &Endpoint) -> u32 {
    service_slot(&key.addr, key.port_be, key.proto)
}

fn entry(key: &Endpoint, info: ServiceInfo) -> IndexedService {
    IndexedService {
        vip: key.addr,
        info,
        port_be: key.port_be,
        proto: key.proto,
        valid: 1,
    }
}

fn names_key(e: &IndexedService, key: &Endpoint) -> bool {
    e.valid != 0 && e.vip == key.addr && e.port_be == key.port_be && e.proto == key.proto
}

/// What a slot's entry should be, given the current one: kept while it is a
/// published key's copy, else a copy of the slot's first key.
fn want(have: IndexedService, published: &[(Endpoint, ServiceInfo)]) -> IndexedService {
    if published.iter().any(|(k, i)| entry(k, *i) == have) {
        return have;
    }
    published
        .first()
        .map_or_else(IndexedService::default, |(k, i)| entry(k, *i))
}

impl Datapath {
    fn index(&mut self) -> Result<Array<&mut MapData, IndexedService>> {
        self.array::<IndexedService>(names::SERVICE_INDEX)
    }

    fn indexed(&mut self, slot: u32) -> Result<IndexedService> {
        self.index()?.get(&slot, 0).map_err(map_err(names::SERVICE_INDEX))
    }

    fn set_indexed(&mut self, slot: u32, value: IndexedService) -> Result<()> {
        self.index()?
            .set(slot, value, 0)
            .map_err(map_err(names::SERVICE_INDEX))
    }

    /// Mirrors the pinned `SERVICES` keys (a restart), so a removal can hand
    /// a freed slot to its next key.
    pub(super) fn mirror_published(&mut self) -> Result<()> {
        self.by_slot = BySlot::new();
        for (key, info) in self.published()? {
            self.by_slot.entry(slot(&key)).or_default().push((key, info));
        }
        Ok(())
    }

    /// After `key` was written to `SERVICES` with `info`: its slot's entry
    /// copies it, unless it copies another key.
    pub(super) fn index_published(&mut self, key: Endpoint, info: ServiceInfo) -> Result<()> {
        let s = slot(&key);
        let list = self.by_slot.entry(s).or_default();
        match list.iter_mut().find(|(k, _)| *k == key) {
            Some((_, i)) => *i = info,
            None => list.push((key, info)),
        }
        let have = self.indexed(s)?;
        if have.valid == 0 || names_key(&have, &key) {
            self.set_indexed(s, entry(&key, info))?;
        }
        Ok(())
    }

    /// Before `key` leaves `SERVICES`: its copy is invalidated.
    pub(super) fn index_unpublishing(&mut self, key: &Endpoint) -> Result<()> {
        let s = slot(key);
        if names_key(&self.indexed(s)?, key) {
            self.set_indexed(s, IndexedService::default())?;
        }
        Ok(())
    }

    /// After `key` left `SERVICES`: its slot copies the slot's next key, if any.
    pub(super) fn index_unpublished(&mut self, key: &Endpoint) -> Result<()> {
        let s = slot(key);
        let list = self.by_slot.entry(s).or_default();
        list.retain(|(k, _)| k != key);
        let list = list.clone();
        if list.is_empty() {
            self.by_slot.remove(&s);
        }
        let have = self.indexed(s)?;
        let want = want(have, &list);
        if want != have {
            self.set_indexed(s, want)?;
        }
        Ok(())
    }

    /// After `SERVICES` was made to hold exactly `published`: the mirror
    /// follows it, and every entry of its slots (and of the slots it had)
    /// that breaks the rule is repaired.
    pub(super) fn reconcile_index(
        &mut self,
        published: &[(Endpoint, ServiceInfo)],
        drift: &mut Drift,
    ) -> Result<()> {
        let mut by_slot = BySlot::new();
        for &(k, i) in published {
            by_slot.entry(slot(&k)).or_default().push((k, i));
        }
        let slots: std::collections::BTreeSet<u32> =
            self.by_slot.keys().chain(by_slot.keys()).copied().collect();
        self.by_slot = by_slot;
        for s in slots {
            let list = self.by_slot.get(&s).cloned().unwrap_or_default();
            let have = self.indexed(s)?;
            let want = want(have, &list);
            if want != have {
                self.set_indexed(s, want)?;
                drift.count(names::SERVICE_INDEX);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8, port: u16) -> Endpoint {
        Endpoint {
            addr: crate::datapath::addr16(std::net::IpAddr::from([198, 18, 100, last])),
            port_be: port.to_be(),
            proto: 6,
            _pad: 0,
        }
    }

    fn info(id: u32) -> ServiceInfo {
        ServiceInfo {
            id,
            ..ServiceInfo::default()
        }
    }

    #[test]
    fn a_slot_keeps_a_valid_copy_and_otherwise_copies_its_first_key() {
        let (a, b) = ((key(1, 80), info(1)), (key(2, 80), info(2)));
        let copy_b = entry(&b.0, b.1);
        // Kept while it copies a published key with its value.
        assert_eq!(want(copy_b, &[a, b]), copy_b);
        // A stale value (the key republished with another id) is replaced.
        let stale = entry(&b.0, info(9));
        assert_eq!(want(stale, &[a, b]), entry(&a.0, a.1));
        // A key no longer published: the slot's first key, or nothing.
        assert_eq!(want(copy_b, &[a]), entry(&a.0, a.1));
        assert_eq!(want(copy_b, &[]), IndexedService::default());
    }

    #[test]
    fn a_thousand_services_on_one_port_mostly_get_a_slot_of_their_own() {
        let mut slots = std::collections::HashMap::new();
        for i in 0..1024u32 {
            let [_, _, c, d] = i.to_be_bytes();
            let addr = crate::datapath::addr16(std::net::IpAddr::from([198, 18, 100 + c, d]));
            *slots
                .entry(service_slot(&addr, 443u16.to_be(), 6))
                .or_insert(0u32) += 1;
        }
        let shared: u32 = slots.values().filter(|&&n| n > 1).sum();
        // ~1024²/2¹⁷ = 8 pairs expected from a uniform hash.
        assert!(shared < 40, "{shared} of 1024 keys share a slot");
    }
}
