//! The kernel maps of DNS egress the resolver reads (who asked) and
//! writes (learned addresses), and how long a learned address stays.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError},
    Pod,
};
use monitor_common::{
    maps::{dns_bound_key, DnsSlot},
    policy::{Learned4Key, Learned6Key, LearnedValue, NetValue, PolicyVerdict, PortRule, MAX_PORT_RULES},
};

pub use crate::loader::DnsMaps;
use crate::{clock, domains::Domains};

/// How long a learned address stays allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Added to the answer's TTL: a client may connect a little after the
    /// TTL ran out (it looked the name up just before).
    pub grace: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Lifetime {
    pub fn of(&self, ttl: u32) -> Duration {
        (Duration::from_secs(ttl.into()) + self.grace).clamp(self.min, self.max)
    }
}

/// The port rules of a learned entry.
pub struct EntryRules {
    pub ports: Vec<PortRule>,
    pub fallback: PolicyVerdict,
}

impl DnsMaps {
    pub fn slot(&self, index: u32) -> Result<DnsSlot, MapError> {
        self.slots.get(&index, 0)
    }

    /// The slot of a redirected socket that was already bound to
    /// `addr:port` when it was redirected; with `wildcard`, also one bound
    /// to the wildcard address and `port`.
    pub fn bound_slot(&self, protocol: u8, addr: Ipv4Addr, port: u16, wildcard: bool) -> Option<u32> {
        let exact = self.bound.get(&dns_bound_key(protocol, addr.octets(), port), 0).ok();
        exact.or_else(|| wildcard.then(|| self.bound.get(&dns_bound_key(protocol, [0; 4], port), 0).ok()).flatten())
    }

    /// Writes `addr` as learned by `instance` for `name` until `lifetime`
    /// from now.
    pub fn learn(
        &mut self,
        instance: u32,
        addr: IpAddr,
        name: u32,
        rules: &EntryRules,
        lifetime: Duration,
    ) -> Result<(), MapError> {
        let mut net = NetValue { fallback: rules.fallback, ..NetValue::default() };
        let n = rules.ports.len().min(MAX_PORT_RULES);
        net.rules[..n].copy_from_slice(&rules.ports[..n]);
        net.count = n as u32;
        let value = LearnedValue {
            expires_ns: clock::monotonic_ns().saturating_add(lifetime.as_nanos() as u64),
            name,
            _pad: 0,
            net,
        };
        match addr {
            IpAddr::V4(a) => self.learned4.insert(Learned4Key { policy: instance, addr: a.octets() }, value, 0),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.learned4.insert(Learned4Key { policy: instance, addr: v4.octets() }, value, 0),
                None => self.learned6.insert(Learned6Key { policy: instance, addr: a.octets() }, value, 0),
            },
        }
    }

    /// Removes entries past their lifetime and those of instances no longer
    /// live; answers (entries left, entries expired).
    pub fn sweep(&mut self, domains: &Domains) -> (u64, u64) {
        let now = clock::monotonic_ns();
        let (left4, expired4) = sweep_map(&mut self.learned4, now, |k| domains.is_live(k.policy));
        let (left6, expired6) = sweep_map(&mut self.learned6, now, |k| domains.is_live(k.policy));
        (left4 + left6, expired4 + expired6)
    }
}

/// [`DnsMaps::sweep`] of one learned-address map.
fn sweep_map<K: Pod>(
    map: &mut BpfHashMap<MapData, K, LearnedValue>,
    now: u64,
    live: impl Fn(&K) -> bool,
) -> (u64, u64) {
    let (mut left, mut expired) = (0, 0);
    let mut stale = Vec::new();
    for (k, v) in map.iter().filter_map(Result::ok) {
        if v.expires_ns <= now {
            expired += 1;
            stale.push(k);
        } else if !live(&k) {
            stale.push(k);
        } else {
            left += 1;
        }
    }
    for k in stale {
        let _ = map.remove(&k);
    }
    (left, expired)
}
