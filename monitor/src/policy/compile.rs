//! Compiling a policy into the contents of the kernel's policy maps: a pure
//! function, golden- and property-tested without root.
//!
//! Two steps. [`resolve`] expands the trajectory variables of one policy
//! (when the trajectory opens). [`compile`] turns the resolved rules into LPM
//! trie entries whose values are fully resolved: each entry already holds the
//! verdict of the most specific rule for every query that lands on it, so
//! one longest-prefix lookup (and, for the network, one bounded scan of port
//! rules) gives the answer however many rules the policy has.
//! [`CompiledPolicy::map_entries`] then stamps a policy id into the keys.
//! Domain rules are not map entries: [`compile`] builds their
//! [`DomainTable`], which the DNS resolver consults in user space.

use std::{cmp::Reverse, collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

use monitor_common::policy::{
    ExecValue, FileValue, InodeKey, Net4Key, Net6Key, NetValue, PathKey, PolicyConfig, PolicyVerdict, MAX_PORT_RULES,
    PATH_KEY_LEN, RULE_BUILTIN_TAMPER, RULE_DEFAULT,
};

use super::{
    domain::DomainTable,
    model::{
        first_match_list, sort_most_specific_first, AccessSet, Action, Cidr, Defaults, DomainRule, Mode, NetworkRule,
        Policy, PortItem, RuleId,
    },
    template::{ExpandError, PathKindOrd, ResolvedPath, Vars},
};

/// A policy with its trajectory variables expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPolicy {
    pub name: String,
    pub mode: Mode,
    pub defaults: Defaults,
    pub file_rules: Vec<ResolvedFileRule>,
    pub exec_rules: Vec<ResolvedExecRule>,
    pub network_rules: Vec<NetworkRule>,
    /// Domain rules have no variables: as in the policy.
    pub domain_rules: Vec<DomainRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedFileRule {
    pub id: RuleId,
    pub path: ResolvedPath,
    pub access: AccessSet,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedExecRule {
    pub id: RuleId,
    pub path: ResolvedPath,
    pub action: Action,
}

/// Why a policy cannot be opened for a trajectory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("no policy named {0:?}")]
    UnknownPolicy(String),
    #[error("{file}:{line}: {field}: {source}")]
    Path {
        file: PathBuf,
        line: u32,
        /// e.g. `rules.file[0].path`.
        field: String,
        #[source]
        source: ExpandError,
    },
    /// Cannot happen for a policy from a validated [`PolicySet`](super::PolicySet).
    #[error("policy {policy:?}: {source}")]
    PortRules {
        policy: String,
        #[source]
        source: TooManyPortRules,
    },
}

/// Expands the trajectory variables of `policy`. A variable the policy uses
/// but `vars` lacks is an error here, not at validation: only the trajectory
/// knows its workspace.
pub fn resolve(policy: &Policy, vars: &Vars) -> Result<ResolvedPolicy, OpenError> {
    let path_error = |class: &str, index: usize, line: u32| {
        let file = policy.file.clone();
        let field = format!("rules.{class}[{index}].path");
        move |source| OpenError::Path { file, line, field, source }
    };
    let file_rules = policy
        .file_rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = r.path.expand(vars).map_err(path_error("file", i, r.pos.line))?;
            Ok(ResolvedFileRule { id: r.id, path, access: r.access, action: r.action })
        })
        .collect::<Result<_, OpenError>>()?;
    let exec_rules = policy
        .exec_rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = r.path.expand(vars).map_err(path_error("exec", i, r.pos.line))?;
            Ok(ResolvedExecRule { id: r.id, path, action: r.action })
        })
        .collect::<Result<_, OpenError>>()?;
    Ok(ResolvedPolicy {
        name: policy.name.clone(),
        mode: policy.mode,
        defaults: policy.defaults,
        file_rules,
        exec_rules,
        network_rules: policy.network_rules.clone(),
        domain_rules: policy.domain_rules.clone(),
    })
}

/// A CIDR entry needs more port rules than [`NetValue`] holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{cidr} needs {needed} port rules, counting those inherited from covering CIDRs; \
     the kernel holds at most {MAX_PORT_RULES} per CIDR: merge ports into ranges or drop rules"
)]
pub struct TooManyPortRules {
    /// The rule whose port rule did not fit (index in `rules.network`).
    pub rule_index: usize,
    pub cidr: Cidr,
    pub needed: usize,
}

/// The policy's entries for the kernel maps, not yet tied to a policy id,
/// and its domain rules compiled for the DNS resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub config: PolicyConfig,
    /// Sorted by prefix.
    pub file: Vec<PathEntry<FileValue>>,
    pub exec: Vec<PathEntry<ExecValue>>,
    pub net4: Vec<NetEntry>,
    pub net6: Vec<NetEntry>,
    /// Not map entries: the resolver judges names by it in user space.
    domains: Arc<DomainTable>,
}

/// One path trie entry: the key's path bytes (`"/a/b/"`, `"/a/b\0"`, `"/"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathEntry<V> {
    pub prefix: Vec<u8>,
    pub value: V,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetEntry {
    pub cidr: Cidr,
    pub value: NetValue,
}

/// The entries of every policy map for one policy id, ready to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntries {
    pub config: Vec<(u32, PolicyConfig)>,
    pub file: Vec<(PathKey, FileValue)>,
    pub exec: Vec<(PathKey, ExecValue)>,
    pub net4: Vec<(Net4Key, NetValue)>,
    pub net6: Vec<(Net6Key, NetValue)>,
    /// Files of read-deny rules by identity: not compiled but found on disk
    /// when the instance opens (`crate::inodes`).
    pub inodes: Vec<(InodeKey, FileValue)>,
}

impl CompiledPolicy {
    /// The file entry a lookup of `path` lands on, or the default's
    /// verdicts: what the kernel's trie gives for it.
    /// What the kernel does with verdict `v` of this policy (`outcome` in
    /// `monitor-ebpf/src/policy.rs`): a deny blocks under an enforcing
    /// policy, and the built-in tamper protection's under any; another deny
    /// or an audit is a recorded hit.
    pub fn decision(&self, v: PolicyVerdict) -> Action {
        match Action::from_abi(v.action) {
            Some(Action::Deny) if self.config.mode == Mode::Enforce.to_abi() || v.rule_id == RULE_BUILTIN_TAMPER => {
                Action::Deny
            }
            Some(Action::Deny | Action::Audit) => Action::Audit,
            _ => Action::Allow,
        }
    }

    pub fn file_value(&self, path: &[u8]) -> FileValue {
        let mut key = path.to_vec();
        key.push(0);
        self.file.iter().filter(|e| key.starts_with(&e.prefix)).max_by_key(|e| e.prefix.len()).map_or_else(
            || {
                let default = PolicyVerdict { rule_id: RULE_DEFAULT, action: self.config.file_default, _pad: [0; 3] };
                FileValue { read: default, write: default }
            },
            |e| e.value,
        )
    }

    /// The paths the entries whose reads are denied name: `/a/b` for both
    /// `"/a/b\0"` (the path itself) and `"/a/b/"` (what is below it).
    pub fn read_denied(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let deny = Action::Deny.to_abi();
        self.file.iter().filter(move |e| e.value.read.action == deny).filter_map(|e| match e.prefix.split_last() {
            Some((0, path)) => Some(path),
            Some((b'/', path)) if !path.is_empty() => Some(path),
            Some((b'/', _)) => Some(&e.prefix[..]),
            _ => None,
        })
    }

    /// The policy's domain rules, for the resolver of the trajectories this
    /// instance judges (shared: keep it as long as the instance lives).
    pub fn domains(&self) -> &Arc<DomainTable> {
        &self.domains
    }

    /// The map entries for this policy under `policy_id`.
    pub fn map_entries(&self, policy_id: u32) -> MapEntries {
        MapEntries {
            config: vec![(policy_id, self.config)],
            file: self.file.iter().map(|e| (path_entry_key(policy_id, &e.prefix), e.value)).collect(),
            exec: self.exec.iter().map(|e| (path_entry_key(policy_id, &e.prefix), e.value)).collect(),
            net4: self
                .net4
                .iter()
                .filter_map(|e| match e.cidr.addr {
                    IpAddr::V4(a) => Some((
                        Net4Key {
                            prefixlen: 32 + u32::from(e.cidr.prefix),
                            policy: policy_id.to_be_bytes(),
                            addr: a.octets(),
                        },
                        e.value,
                    )),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            net6: self
                .net6
                .iter()
                .filter_map(|e| match e.cidr.addr {
                    IpAddr::V6(a) => Some((
                        Net6Key {
                            prefixlen: 32 + u32::from(e.cidr.prefix),
                            policy: policy_id.to_be_bytes(),
                            addr: a.octets(),
                        },
                        e.value,
                    )),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            inodes: Vec::new(),
        }
    }
}

/// The key of a path trie entry: the policy id and the prefix bytes.
pub fn path_entry_key(policy_id: u32, prefix: &[u8]) -> PathKey {
    let mut path = [0u8; PATH_KEY_LEN];
    let len = prefix.len().min(PATH_KEY_LEN);
    path[..len].copy_from_slice(&prefix[..len]);
    PathKey { prefixlen: 32 + 8 * len as u32, policy: policy_id.to_be_bytes(), path }
}

/// The key the kernel looks up for `path` (bytes up to the first NUL): the
/// path and its terminator when it fits, else its first [`PATH_KEY_LEN`]
/// bytes and no terminator (see `monitor_common::policy`).
pub fn path_lookup_key(policy_id: u32, path: &[u8]) -> PathKey {
    let path = path.split(|&b| b == 0).next().unwrap_or_default();
    let mut key = [0u8; PATH_KEY_LEN];
    let len = path.len().min(PATH_KEY_LEN);
    key[..len].copy_from_slice(&path[..len]);
    PathKey { prefixlen: 32 + 8 * PATH_KEY_LEN as u32, policy: policy_id.to_be_bytes(), path: key }
}

/// Compiles a resolved policy into map entries.
pub fn compile(policy: &ResolvedPolicy) -> Result<CompiledPolicy, TooManyPortRules> {
    let d = policy.defaults;
    let config = PolicyConfig {
        mode: policy.mode.to_abi(),
        file_default: d.file.to_abi(),
        exec_default: d.exec.to_abi(),
        network_default: d.network.to_abi(),
        exec_unnamed: d.exec_unnamed.to_abi(),
        raw_sockets: d.raw_sockets.to_abi(),
        exec_rules: u8::from(!policy.exec_rules.is_empty()),
        inodes: 0,
    };
    let file = resolve_paths(
        policy
            .file_rules
            .iter()
            .map(|r| (&r.path, Claim { covers: [r.access.read, r.access.write], action: r.action, id: r.id })),
        d.file,
    )
    .into_iter()
    .map(|(prefix, [read, write])| PathEntry { prefix, value: FileValue { read, write } })
    .collect();
    let exec = resolve_paths(
        policy.exec_rules.iter().map(|r| (&r.path, Claim { covers: [true, true], action: r.action, id: r.id })),
        d.exec,
    )
    .into_iter()
    .map(|(prefix, [verdict, _])| PathEntry { prefix, value: verdict })
    .collect();
    let (v4, v6): (Vec<_>, Vec<_>) = policy.network_rules.iter().enumerate().partition(|(_, r)| r.cidr.addr.is_ipv4());
    Ok(CompiledPolicy {
        config,
        file,
        exec,
        net4: compile_network(&v4, d.network)?,
        net6: compile_network(&v6, d.network)?,
        domains: Arc::new(DomainTable::new(&policy.domain_rules, d.network)),
    })
}

pub(crate) fn verdict(action: Action, rule_id: RuleId) -> PolicyVerdict {
    PolicyVerdict { rule_id, action: action.to_abi(), _pad: [0; 3] }
}

/// What one rule says about the paths of one trie entry, per access slot
/// (file: read, write; exec: the first slot only).
#[derive(Clone, Copy, Debug)]
struct Claim {
    covers: [bool; 2],
    action: Action,
    id: RuleId,
}

/// The trie prefixes a rule path occupies (see `monitor_common::policy`).
pub(crate) fn prefixes(path: &ResolvedPath) -> Vec<Vec<u8>> {
    let with = |end: u8| {
        let mut p = path.path.as_bytes().to_vec();
        p.push(end);
        p
    };
    match path.kind {
        PathKindOrd::Exact => vec![with(0)],
        PathKindOrd::Directory if path.path.is_empty() => vec![b"/".to_vec()],
        PathKindOrd::Directory => vec![with(b'/'), with(0)],
    }
}

/// Builds the trie entries of one path class, each slot resolved: the best
/// own claim (an exact rule over a directory rule on the same path, then
/// deny > audit > allow, then the lower rule id), else the entry's longest
/// proper-prefix entry's verdict, else the default.
fn resolve_paths<'a>(
    rules: impl Iterator<Item = (&'a ResolvedPath, Claim)>,
    default: Action,
) -> Vec<(Vec<u8>, [PolicyVerdict; 2])> {
    let mut claims: BTreeMap<Vec<u8>, Vec<(PathKindOrd, Claim)>> = BTreeMap::new();
    for (path, claim) in rules {
        for prefix in prefixes(path) {
            claims.entry(prefix).or_default().push((path.kind, claim));
        }
    }
    // Shorter prefixes first, so every entry's ancestors are resolved before it.
    let mut order: Vec<&Vec<u8>> = claims.keys().collect();
    order.sort_by_key(|p| p.len());
    let mut resolved: BTreeMap<&[u8], [PolicyVerdict; 2]> = BTreeMap::new();
    for prefix in order {
        let inherited = (0..prefix.len())
            .rev()
            .find_map(|len| resolved.get(&prefix[..len]).copied())
            .unwrap_or([verdict(default, RULE_DEFAULT); 2]);
        let own = &claims[prefix];
        let slot = |i: usize| {
            own.iter()
                .filter(|(_, c)| c.covers[i])
                .max_by_key(|(kind, c)| (*kind, c.action, Reverse(c.id)))
                .map(|(_, c)| verdict(c.action, c.id))
                .unwrap_or(inherited[i])
        };
        resolved.insert(prefix, [slot(0), slot(1)]);
    }
    resolved.into_iter().map(|(p, v)| (p.to_vec(), v)).collect()
}

/// Builds the trie entries of one address family: one per distinct CIDR,
/// holding its own port rules and those of every shorter CIDR covering it,
/// longest CIDR first, each CIDR's rules most specific first. A rule with
/// neither ports nor protocol matches everything, so it ends the list as the
/// fallback; rules after it, or shadowed by an earlier one, are dropped.
fn compile_network(rules: &[(usize, &NetworkRule)], default: Action) -> Result<Vec<NetEntry>, TooManyPortRules> {
    let mut groups: BTreeMap<(u8, IpAddr), Vec<PortItem>> = BTreeMap::new();
    for &(rule_index, r) in rules {
        let items = groups.entry((r.cidr.prefix, r.cidr.addr)).or_default();
        items.extend(PortItem::of_rule(&r.ports, r.protocol, r.action, r.id, rule_index));
    }
    for items in groups.values_mut() {
        sort_most_specific_first(items);
    }
    let mut entries = Vec::with_capacity(groups.len());
    for &(prefix, addr) in groups.keys() {
        let cidr = Cidr { addr, prefix };
        let mut covering: Vec<(&(u8, IpAddr), &Vec<PortItem>)> =
            groups.iter().filter(|((p, a), _)| *p <= prefix && Cidr { addr: *a, prefix: *p }.contains(addr)).collect();
        covering.sort_by_key(|((p, _), _)| Reverse(*p));
        let (kept, catch_all) = first_match_list(covering.into_iter().map(|(_, items)| items.as_slice()));
        let fallback = catch_all.map_or(verdict(default, RULE_DEFAULT), |c| verdict(c.action, c.id));
        if let Some(over) = kept.get(MAX_PORT_RULES) {
            return Err(TooManyPortRules { rule_index: over.rule_index, cidr, needed: kept.len() });
        }
        let mut value = NetValue { count: kept.len() as u32, fallback, ..NetValue::default() };
        for (slot, item) in value.rules.iter_mut().zip(&kept) {
            *slot = item.to_abi();
        }
        entries.push(NetEntry { cidr, value });
    }
    Ok(entries)
}
