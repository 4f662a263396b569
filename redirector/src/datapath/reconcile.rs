//! The maps the configuration determines, compared with it and repaired: a
//! write that failed, or another writer (a stray `bpftool map update`, a
//! second tool), must not leave forwarding different from the
//! configuration until the next restart. Next hops are the resolver's and
//! switch states the decision loop's: not compared here.
//!
//! Cost: a few lookups per service ([`Datapath::reconcile_services`]) and
//! one walk of each [`Keyed`] map and of the allow/deny tries; the daemon
//! spreads them over its ticks so no tick stalls its loop for long
//! (`cargo xtask bench datapath` prints what each costs).
use std::collections::{HashMap as StdHashMap, HashSet};

use aya::maps::{
    Array, HashMap,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use redirector_common::{
    AclKey, Addr, Backend as KBackend, Endpoint, ReverseInfo, ServiceInfo, ServiceVip, names,
};

use super::{Datapath, DatapathError, absent_ok, acl_key, addr16, expect, map_err};
use crate::config::{Mode, Service};

type Result<T> = std::result::Result<T, DatapathError>;

/// Entries found different from the configuration and rewritten (or
/// removed), by map.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drift {
    /// (map name, entries repaired), maps without drift left out.
    pub repaired: Vec<(&'static str, usize)>,
    /// Backends whose address was repaired: their next hop must be resolved
    /// again (service id, slot).
    pub rehop: Vec<(u32, u8)>,
}

impl Drift {
    pub(super) fn count(&mut self, map: &'static str) {
        match self.repaired.iter_mut().find(|(m, _)| *m == map) {
            Some((_, n)) => *n += 1,
            None => self.repaired.push((map, 1)),
        }
    }

    /// Nothing differed.
    pub fn is_empty(&self) -> bool {
        self.repaired.is_empty()
    }
}

/// The hash maps whose keys the configuration determines, walked whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// `SERVICES`: (VIP, port, protocol) → service.
    Services,
    /// `REVERSE`: NAT backend endpoint → service.
    Reverse,
    /// `VIPS`: every VIP.
    Vips,
}

impl Datapath {
    /// All of it at once: [`Datapath::reconcile_services`] for every
    /// service, then each [`Keyed`] map.
    pub fn reconcile(&mut self, running: &[(u32, &Service)]) -> Result<Drift> {
        let mut drift = self.reconcile_services(running)?;
        for map in [Keyed::Services, Keyed::Reverse, Keyed::Vips] {
            let d = self.reconcile_keys(map, running)?;
            drift.repaired.extend(d.repaired);
        }
        Ok(drift)
    }

    /// The entries of these services in `SERVICE_VIPS`, `BACKENDS` (address
    /// and port; the hop is the resolver's), `PORTS` and `BACKEND_ADDRS`:
    /// a few lookups per service, rewritten where they differ.
    pub fn reconcile_services(&mut self, services: &[(u32, &Service)]) -> Result<Drift> {
        let mut drift = Drift::default();
        for &(id, svc) in services {
            self.reconcile_service_vip(id, svc, &mut drift)?;
            self.reconcile_backends(id, svc, &mut drift)?;
            for (port, flag) in expect::port_flags(svc) {
                let mut ports = self.array::<u8>(names::PORTS)?;
                let have = ports.get(&u32::from(port), 0).map_err(map_err(names::PORTS))?;
                if have & flag == 0 {
                    ports
                        .set(u32::from(port), have | flag, 0)
                        .map_err(map_err(names::PORTS))?;
                    drift.count(names::PORTS);
                }
            }
            if svc.mode == Mode::Nat {
                for (_, be) in expect::backends(svc) {
                    let bucket = redirector_common::addr_bucket(&addr16(be.addr));
                    let mut addrs = self.array::<u8>(names::BACKEND_ADDRS)?;
                    if addrs.get(&bucket, 0).map_err(map_err(names::BACKEND_ADDRS))? == 0 {
                        addrs.set(bucket, 1, 0).map_err(map_err(names::BACKEND_ADDRS))?;
                        drift.count(names::BACKEND_ADDRS);
                    }
                }
            }
        }
        Ok(drift)
    }

    /// Makes one [`Keyed`] map hold exactly what the running services
    /// publish: missing or different entries written, keys no running
    /// service owns removed. One walk of the map.
    pub fn reconcile_keys(&mut self, map: Keyed, running: &[(u32, &Service)]) -> Result<Drift> {
        let mut drift = Drift::default();
        match map {
            Keyed::Services => {
                let want: StdHashMap<Endpoint, ServiceInfo> = running
                    .iter()
                    .map(|&(id, svc)| expect::service(id, svc))
                    .collect();
                self.reconcile_hash(names::SERVICES, &want, |have, want| have == want, &mut drift)?;
                let published: Vec<(Endpoint, ServiceInfo)> = want.into_iter().collect();
                self.reconcile_index(&published, &mut drift)?;
            }
            Keyed::Reverse => {
                let want: StdHashMap<Endpoint, ReverseInfo> = running
                    .iter()
                    .filter(|(_, svc)| svc.mode == Mode::Nat)
                    .flat_map(|&(id, svc)| {
                        expect::backends(svc)
                            .into_iter()
                            .map(move |(slot, be)| expect::reverse(id, svc, slot, be))
                    })
                    .collect();
                self.reconcile_hash(
                    names::REVERSE,
                    &want,
                    // `direct` is the program's to learn.
                    |have, want| ReverseInfo { direct: 0, ..*have } == *want,
                    &mut drift,
                )?;
            }
            Keyed::Vips => {
                let flags = self.vip_flags;
                let want: StdHashMap<Addr, u8> = running
                    .iter()
                    .map(|&(_, svc)| {
                        (
                            Addr {
                                addr: addr16(svc.vip),
                            },
                            flags,
                        )
                    })
                    .collect();
                self.reconcile_hash(names::VIPS, &want, |have, want| have == want, &mut drift)?;
            }
        }
        Ok(drift)
    }

    fn reconcile_service_vip(&mut self, id: u32, svc: &Service, drift: &mut Drift) -> Result<()> {
        let want = expect::service_vip(svc);
        let mut vips = self.array::<ServiceVip>(names::SERVICE_VIPS)?;
        if vips.get(&id, 0).map_err(map_err(names::SERVICE_VIPS))? != want {
            vips.set(id, want, 0).map_err(map_err(names::SERVICE_VIPS))?;
            drift.count(names::SERVICE_VIPS);
        }
        Ok(())
    }

    /// Address and port of both backends, under the lock the resolver's hop
    /// writes take (no lost update either way).
    fn reconcile_backends(&mut self, id: u32, svc: &Service, drift: &mut Drift) -> Result<()> {
        let lock = std::sync::Arc::clone(&self.backends_lock);
        let _held = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut backends: Array<_, KBackend> = self.array(names::BACKENDS)?;
        for (slot, be) in expect::backends(svc) {
            let index = id * 2 + u32::from(slot);
            let mut have = backends.get(&index, 0).map_err(map_err(names::BACKENDS))?;
            let (addr, port_be) = (addr16(be.addr), be.port.map_or(0, u16::to_be));
            if (have.addr, have.port_be) != (addr, port_be) {
                if have.addr != addr {
                    drift.rehop.push((id, slot));
                }
                have.addr = addr;
                have.port_be = port_be;
                backends.set(index, have, 0).map_err(map_err(names::BACKENDS))?;
                drift.count(names::BACKENDS);
            }
        }
        Ok(())
    }

    /// Makes hash map `name` hold exactly `want` (as `same` judges values).
    fn reconcile_hash<K, V>(
        &mut self,
        name: &'static str,
        want: &StdHashMap<K, V>,
        same: impl Fn(&V, &V) -> bool,
        drift: &mut Drift,
    ) -> Result<()>
    where
        K: aya::Pod + Eq + std::hash::Hash,
        V: aya::Pod,
    {
        let mut map: HashMap<_, K, V> = self.hash(name)?;
        let have: StdHashMap<K, V> = map.iter().filter_map(std::result::Result::ok).collect();
        for (k, v) in want {
            if !have.get(k).is_some_and(|h| same(h, v)) {
                map.insert(*k, *v, 0).map_err(map_err(name))?;
                drift.count(name);
            }
        }
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            absent_ok(name, map.remove(k))?;
            drift.count(name);
        }
        Ok(())
    }

    /// Makes the allow/deny tries hold exactly the running services'
    /// prefixes: one walk of each trie.
    pub fn reconcile_acl(&mut self, running: &[(u32, &Service)]) -> Result<Drift> {
        let mut drift = Drift::default();
        for name in [names::ALLOW, names::DENY] {
            let want: HashSet<(u32, AclKey)> = running
                .iter()
                .flat_map(|&(id, svc)| {
                    let list = if name == names::ALLOW {
                        &svc.allow
                    } else {
                        &svc.deny
                    };
                    list.iter().map(move |p| acl_key(id, p))
                })
                .collect();
            let mut trie = LpmTrie::<_, AclKey, u8>::try_from(self.map(name)?).map_err(map_err(name))?;
            let have: HashSet<(u32, AclKey)> = trie
                .keys()
                .filter_map(std::result::Result::ok)
                .map(|k| (k.prefix_len(), k.data()))
                .collect();
            for &(len, key) in want.difference(&have) {
                trie.insert(&LpmKey::new(len, key), 1, 0).map_err(map_err(name))?;
                drift.count(name);
            }
            for &(len, key) in have.difference(&want) {
                absent_ok(name, trie.remove(&LpmKey::new(len, key)))?;
                drift.count(name);
            }
        }
        Ok(drift)
    }
}
