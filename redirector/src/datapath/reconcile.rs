//! The maps the configuration determines, compared with it and repaired: a
//! write that failed, or another writer (a stray `bpftool map update`, a
//! second tool), must not leave forwarding different from the
//! configuration until the next restart. Next hops are the resolver's and
//! switch states the decision loop's: not compared here.
//!
//! Cost: a few lookups per service plus one walk of `SERVICES`, `VIPS` and
//! `REVERSE` (each as large as the configuration); the allow/deny tries are
//! walked by [`Datapath::reconcile_acl`], which the daemon runs less often.
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
    fn count(&mut self, map: &'static str) {
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

impl Datapath {
    /// Compares `SERVICES`, `SERVICE_VIPS`, `VIPS`, `BACKENDS` (address and
    /// port; the hop is the resolver's), `REVERSE`, `BACKEND_ADDRS` and
    /// `PORTS` with the running services and rewrites what differs; keys no
    /// running service owns are removed.
    pub fn reconcile(&mut self, running: &[(u32, &Service)]) -> Result<Drift> {
        let mut drift = Drift::default();
        let mut want_keys: StdHashMap<Endpoint, ServiceInfo> = StdHashMap::new();
        let mut want_reverse: StdHashMap<Endpoint, ReverseInfo> = StdHashMap::new();
        let mut want_vips = HashSet::new();
        for &(id, svc) in running {
            let (key, info) = expect::service(id, svc);
            want_keys.insert(key, info);
            want_vips.insert(key.addr);
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
                for (slot, be) in expect::backends(svc) {
                    let (k, v) = expect::reverse(id, svc, slot, be);
                    want_reverse.insert(k, v);
                    let bucket = redirector_common::addr_bucket(&addr16(be.addr));
                    let mut addrs = self.array::<u8>(names::BACKEND_ADDRS)?;
                    if addrs.get(&bucket, 0).map_err(map_err(names::BACKEND_ADDRS))? == 0 {
                        addrs.set(bucket, 1, 0).map_err(map_err(names::BACKEND_ADDRS))?;
                        drift.count(names::BACKEND_ADDRS);
                    }
                }
            }
        }
        self.reconcile_hash(names::SERVICES, &want_keys, |have, want| have == want, &mut drift)?;
        self.reconcile_hash(
            names::REVERSE,
            &want_reverse,
            // `direct` is the program's to learn.
            |have, want| ReverseInfo { direct: 0, ..*have } == *want,
            &mut drift,
        )?;
        let flags = self.vip_flags;
        let want_vips: StdHashMap<Addr, u8> =
            want_vips.into_iter().map(|addr| (Addr { addr }, flags)).collect();
        self.reconcile_hash(names::VIPS, &want_vips, |have, want| have == want, &mut drift)?;
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
