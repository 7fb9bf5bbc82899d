//! Reference judges: the decision the kernel must reach for an open, exec
//! or connect, computed two independent ways.
//!
//! * `judge_*` run the kernel's algorithm over compiled map entries: one
//!   longest-prefix match in the trie (simulated here by a scan), then the
//!   entry's verdict, or for the network its ordered port rules. The kernel
//!   programs must agree with these; they are the executable spec of the
//!   encoding.
//! * `naive::judge_*` scan the resolved source rules and apply the
//!   precedence rule as `docs/policy.md` states it.
//!
//! The property test in `tests.rs` asserts both agree on random policies and
//! queries, which is what makes the compiled encoding trustworthy.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use monitor_common::policy::{
    ExecValue, FileValue, InodeKey, Net4Key, Net6Key, NetValue, PathKey, PolicyConfig, PolicyVerdict, MAX_PORT_RULES,
    RULE_DEFAULT,
};

use super::{
    compile::{path_lookup_key, MapEntries},
    model::{Access, Action, RuleId},
};

/// The outcome for one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule, or [`RULE_DEFAULT`] for the policy default.
    pub rule_id: RuleId,
}

impl Decision {
    fn from_verdict(v: PolicyVerdict) -> Option<Decision> {
        Some(Decision { action: Action::from_abi(v.action)?, rule_id: v.rule_id })
    }

    fn default(action: u8) -> Option<Decision> {
        Some(Decision { action: Action::from_abi(action)?, rule_id: RULE_DEFAULT })
    }
}

/// Policy maps as the kernel holds them, for the reference judges.
#[derive(Clone, Debug, Default)]
pub struct PolicyMaps {
    config: BTreeMap<u32, PolicyConfig>,
    file: Vec<(PathKey, FileValue)>,
    exec: Vec<(PathKey, ExecValue)>,
    net4: Vec<(Net4Key, NetValue)>,
    net6: Vec<(Net6Key, NetValue)>,
    inodes: Vec<(InodeKey, FileValue)>,
}

impl PolicyMaps {
    pub fn new(entries: MapEntries) -> Self {
        let mut maps = PolicyMaps::default();
        maps.insert(entries);
        maps
    }

    pub fn insert(&mut self, entries: MapEntries) {
        self.config.extend(entries.config);
        self.file.extend(entries.file);
        self.exec.extend(entries.exec);
        self.net4.extend(entries.net4);
        self.net6.extend(entries.net6);
        self.inodes.extend(entries.inodes);
    }

    /// The config of `policy_id`, as the kernel reads it: a slot never
    /// written, or cleared (mode 0), is no policy.
    fn config(&self, policy_id: u32) -> Option<&PolicyConfig> {
        self.config.get(&policy_id).filter(|c| c.mode != 0)
    }

    /// Deletes `entries` as the daemon does: the config entry is cleared
    /// (mode 0: lookups of the id stop judging), the trie keys go.
    pub fn remove(&mut self, entries: &MapEntries) {
        for (id, c) in &entries.config {
            self.config.insert(*id, PolicyConfig { mode: 0, ..*c });
        }
        self.file.retain(|(k, _)| !entries.file.iter().any(|(e, _)| e == k));
        self.exec.retain(|(k, _)| !entries.exec.iter().any(|(e, _)| e == k));
        self.net4.retain(|(k, _)| !entries.net4.iter().any(|(e, _)| e == k));
        self.net6.retain(|(k, _)| !entries.net6.iter().any(|(e, _)| e == k));
        self.inodes.retain(|(k, _)| !entries.inodes.iter().any(|(e, _)| e == k));
    }

    /// Deletes every entry of the instance ids `doomed` picks.
    pub fn purge(&mut self, doomed: &dyn Fn(u32) -> bool) {
        let keep = |policy: &[u8; 4]| !doomed(u32::from_be_bytes(*policy));
        for (id, c) in self.config.iter_mut() {
            if doomed(*id) {
                c.mode = 0;
            }
        }
        self.file.retain(|(k, _)| keep(&k.policy));
        self.exec.retain(|(k, _)| keep(&k.policy));
        self.net4.retain(|(k, _)| keep(&k.policy));
        self.net6.retain(|(k, _)| keep(&k.policy));
        self.inodes.retain(|(k, _)| !doomed(k.policy));
    }

    /// The instance ids with entries that judge (a config entry with a
    /// mode, or any trie key).
    pub fn instances(&self) -> std::collections::BTreeSet<u32> {
        let id = |p: &[u8; 4]| u32::from_be_bytes(*p);
        self.config
            .iter()
            .filter(|(_, c)| c.mode != 0)
            .map(|(i, _)| *i)
            .chain(self.file.iter().map(|(k, _)| id(&k.policy)))
            .chain(self.exec.iter().map(|(k, _)| id(&k.policy)))
            .chain(self.net4.iter().map(|(k, _)| id(&k.policy)))
            .chain(self.net6.iter().map(|(k, _)| id(&k.policy)))
            .chain(self.inodes.iter().map(|(k, _)| k.policy))
            .collect()
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let (bytes, rest) = ((bits / 8) as usize, bits % 8);
    if a.len() < bytes + usize::from(rest > 0) || b.len() < bytes + usize::from(rest > 0) {
        return false;
    }
    if a[..bytes] != b[..bytes] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[bytes] & mask == b[bytes] & mask
    }
}

/// `BPF_MAP_TYPE_LPM_TRIE` lookup: the entry with the longest prefix that
/// equals the lookup data over the prefix's length. `data` gives a key's data
/// (everything after `prefixlen`) and its prefix length.
fn lpm<'a, K, V>(entries: &'a [(K, V)], lookup: &K, data: impl Fn(&K) -> (u32, Vec<u8>)) -> Option<&'a V> {
    let (_, want) = data(lookup);
    entries
        .iter()
        .filter_map(|(k, v)| {
            let (bits, have) = data(k);
            prefix_eq(&have, &want, bits).then_some((bits, v))
        })
        .max_by_key(|(bits, _)| *bits)
        .map(|(_, v)| v)
}

fn path_data(k: &PathKey) -> (u32, Vec<u8>) {
    let mut d = k.policy.to_vec();
    d.extend_from_slice(&k.path);
    (k.prefixlen, d)
}

/// Decision for opening `path` for `access` under policy `policy_id`;
/// `None` when no policy has that id. An open for read and write is judged
/// once per access.
pub fn judge_file(maps: &PolicyMaps, policy_id: u32, path: &[u8], access: Access) -> Option<Decision> {
    let config = maps.config(policy_id)?;
    match lpm(&maps.file, &path_lookup_key(policy_id, path), path_data) {
        Some(v) => Decision::from_verdict(match access {
            Access::Read => v.read,
            Access::Write => v.write,
        }),
        None => Decision::default(config.file_default),
    }
}

/// Decision for opening the file whose identity is (`dev`, `ino`) by its
/// identity alone: `None` unless a read-deny rule of `policy_id` names it
/// (then the kernel takes this decision when it is stronger than the path's).
pub fn judge_inode(maps: &PolicyMaps, policy_id: u32, dev: u32, ino: u64, access: Access) -> Option<Decision> {
    if maps.config(policy_id)?.inodes == 0 {
        return None;
    }
    let key = InodeKey { policy: policy_id, dev, ino };
    let (_, v) = maps.inodes.iter().find(|(k, _)| *k == key)?;
    Decision::from_verdict(match access {
        Access::Read => v.read,
        Access::Write => v.write,
    })
}

/// Decision for executing the binary at `path`.
pub fn judge_exec(maps: &PolicyMaps, policy_id: u32, path: &[u8]) -> Option<Decision> {
    let config = maps.config(policy_id)?;
    match lpm(&maps.exec, &path_lookup_key(policy_id, path), path_data) {
        Some(v) => Decision::from_verdict(*v),
        None => Decision::default(config.exec_default),
    }
}

/// Decision for connecting (or sending) to `ip`:`port` over IP protocol
/// `protocol` (6 TCP, 17 UDP). An IPv4-mapped IPv6 address is judged as the
/// IPv4 address, by the IPv4 rules, as the kernel converts it.
pub fn judge_connect(maps: &PolicyMaps, policy_id: u32, ip: IpAddr, port: u16, protocol: u8) -> Option<Decision> {
    let config = maps.config(policy_id)?;
    let policy = policy_id.to_be_bytes();
    let hit = match unmap(ip) {
        IpAddr::V4(a) => lpm(&maps.net4, &Net4Key { prefixlen: 64, policy, addr: a.octets() }, |k| {
            (k.prefixlen, [k.policy.as_slice(), &k.addr].concat())
        }),
        IpAddr::V6(a) => lpm(&maps.net6, &Net6Key { prefixlen: 160, policy, addr: a.octets() }, |k| {
            (k.prefixlen, [k.policy.as_slice(), &k.addr].concat())
        }),
    };
    let Some(value) = hit else {
        return Decision::default(config.network_default);
    };
    // The kernel's loop: bounded by the constant, then by `count`.
    for rule in value.rules.iter().take((value.count as usize).min(MAX_PORT_RULES)) {
        if rule.port_lo <= port && port <= rule.port_hi && (rule.protocol == 0 || rule.protocol == protocol) {
            return Decision::from_verdict(PolicyVerdict { rule_id: rule.rule_id, action: rule.action, _pad: [0; 3] });
        }
    }
    Decision::from_verdict(value.fallback)
}

/// The address a destination is judged as: `::ffff:a.b.c.d` → `a.b.c.d`,
/// and the unspecified addresses, which a connect reaches the local host
/// through, as loopback (`0.0.0.0` → `127.0.0.1`, `::` → `::1`); any other
/// address unchanged.
pub fn unmap(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, |v4: Ipv4Addr| IpAddr::V4(v4)),
        IpAddr::V4(_) => ip,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The specification, applied rule by rule to the resolved source policy.
pub mod naive {
    use std::{cmp::Reverse, net::IpAddr};

    use super::{unmap, Decision};
    use crate::policy::{
        compile::ResolvedPolicy,
        model::{Access, PortRange},
        template::{PathKindOrd, ResolvedPath},
    };
    use monitor_common::policy::RULE_DEFAULT;

    /// How specifically `rule` names `path`, `None` if it does not match:
    /// the rule path's length (an exact rule `/a/b` and a directory rule
    /// `/a/b/` both count 5 = `/a/b` plus one), then exact over directory.
    fn path_match(rule: &ResolvedPath, path: &[u8]) -> Option<(usize, PathKindOrd)> {
        let r = rule.path.as_bytes();
        let matches = match rule.kind {
            PathKindOrd::Exact => path == r,
            PathKindOrd::Directory => path == r || (path.starts_with(r) && path.get(r.len()) == Some(&b'/')),
        };
        matches.then_some((r.len() + 1, rule.kind))
    }

    fn nul_free(path: &[u8]) -> &[u8] {
        path.split(|&b| b == 0).next().unwrap_or_default()
    }

    pub fn judge_file(policy: &ResolvedPolicy, path: &[u8], access: Access) -> Decision {
        let path = nul_free(path);
        policy
            .file_rules
            .iter()
            .filter(|r| r.access.covers(access))
            .filter_map(|r| Some(((path_match(&r.path, path)?, r.action, Reverse(r.id)), r)))
            .max_by_key(|(rank, _)| *rank)
            .map_or(Decision { action: policy.defaults.file, rule_id: RULE_DEFAULT }, |(_, r)| Decision {
                action: r.action,
                rule_id: r.id,
            })
    }

    pub fn judge_exec(policy: &ResolvedPolicy, path: &[u8]) -> Decision {
        let path = nul_free(path);
        policy
            .exec_rules
            .iter()
            .filter_map(|r| Some(((path_match(&r.path, path)?, r.action, Reverse(r.id)), r)))
            .max_by_key(|(rank, _)| *rank)
            .map_or(Decision { action: policy.defaults.exec, rule_id: RULE_DEFAULT }, |(_, r)| Decision {
                action: r.action,
                rule_id: r.id,
            })
    }

    /// Most specific wins: longest CIDR, then narrowest port range, then a
    /// named protocol over any, then deny > audit > allow, then lower id.
    pub fn judge_connect(policy: &ResolvedPolicy, ip: IpAddr, port: u16, protocol: u8) -> Decision {
        let ip = unmap(ip);
        policy
            .network_rules
            .iter()
            .filter(|r| r.cidr.contains(ip))
            .filter(|r| r.protocol.is_none_or(|p| p.number() == protocol))
            .flat_map(|r| {
                let ranges = if r.ports.is_empty() { vec![PortRange::ALL] } else { r.ports.clone() };
                ranges.into_iter().filter(move |range| range.contains(port)).map(move |range| {
                    ((r.cidr.prefix, Reverse(range.span()), r.protocol.is_some(), r.action, Reverse(r.id)), r)
                })
            })
            .max_by_key(|(rank, _)| *rank)
            .map_or(Decision { action: policy.defaults.network, rule_id: RULE_DEFAULT }, |(_, r)| Decision {
                action: r.action,
                rule_id: r.id,
            })
    }
}
