//! Policy instances in the kernel maps.
//!
//! A trajectory is judged by one *instance*: its policy compiled with its
//! own variables (`${WORKSPACE}`, `${HOME}`), written under an instance id
//! that heads every key of the policy maps and is bound to the trajectory's
//! cgroup in the trajectory map. The kernel reads that binding once per
//! operation, so changing rules is: write a complete new instance, rebind
//! (one map update), and only later delete the old one. At no instant is a
//! trajectory unbound, and no decision mixes two instances.
//!
//! Retired instances keep their entries for [`RETIRE_AFTER`] (programs that
//! read the old id just before the rebind finish long before), and their
//! description (policy name, rule origins) until the id is reused, which is
//! first-in first-out over [`MAX_POLICIES`] ids, so records still queued in
//! the ring buffer are described by the rules that judged them.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::lpm_trie::Key;
use monitor_common::{
    names,
    policy::{
        mode, InodeKey, PathKey, PolicyConfig, MAX_POLICIES, RULE_BUILTIN_TAMPER, RULE_DEFAULT, RULE_EXEC_UNNAMED,
        RULE_RAW_SOCKETS,
    },
};

use crate::{
    domains::{Domains, InstanceDomains},
    inodes::{self, Change, Watch},
    loader::PolicyMapHandles,
    policy::{
        compile::{CompiledPolicy, MapEntries},
        OpenError, PolicySet, Protected, Vars, TAMPER_RULE,
    },
};

/// How long a retired instance's entries stay in the kernel maps.
pub const RETIRE_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("all {MAX_POLICIES} policy instance ids are in use")]
    NoIds,
    #[error("writing policy map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// What a trajectory asked for: the policy name and its variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub policy: String,
    pub vars: Vars,
}

struct Instance {
    /// The set whose rule table names this instance's rules; `None` for an
    /// instance a previous daemon compiled from a set no longer loaded.
    set: Option<Arc<PolicySet>>,
    /// The compiled instance, which judges files added to the inode map
    /// later; `None` for an instance a previous daemon wrote.
    compiled: Option<Arc<CompiledPolicy>>,
    policy: Arc<str>,
    /// Keys to delete when retired; `None` once deleted, or for an
    /// instance a previous daemon wrote (see `scan`).
    entries: Option<MapEntries>,
    /// Written by a previous daemon: its keys are found by scanning the
    /// maps for its id.
    scan: bool,
}

/// How an event's verdict reads in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    pub policy: Arc<str>,
    /// `file:line` of the deciding rule, or `default`.
    pub rule: Arc<str>,
}

/// Where instances are written: the kernel's policy maps
/// ([`PolicyMapHandles`]), or an in-memory fake in tests.
pub trait PolicyWriter: Send {
    /// Writes an instance's entries: the tries first, the config entry
    /// last, since that entry is what makes lookups of its id judge at all.
    fn write(&mut self, entries: &MapEntries) -> Result<(), EnforceError>;
    /// Deletes an instance's entries: config first (lookups of its id stop
    /// judging), then the tries. Best effort: a missing key is no error.
    fn delete(&mut self, entries: &MapEntries);
    /// Deletes every entry whose instance id `doomed` picks, whoever wrote
    /// it (a previous daemon's instances are known only by their id).
    fn purge(&mut self, doomed: &dyn Fn(u32) -> bool);
}

pub struct Enforcer {
    maps: Box<dyn PolicyWriter>,
    set: Arc<PolicySet>,
    instances: HashMap<u32, Instance>,
    /// Ids never used or retired longest ago first.
    free: VecDeque<u32>,
    retiring: VecDeque<(Instant, u32)>,
    /// Rule descriptions, cached per (instance, rule).
    described: HashMap<(u32, u32), Described>,
    /// Built-in tamper protection, added to every instance.
    protected: Protected,
    /// Each live instance's domain rules, for the DNS resolver.
    domains: Domains,
    /// Read-denied directories watched for new files (`crate::inodes`);
    /// made when the first instance has one.
    watch: Option<Watch>,
}

impl Enforcer {
    pub fn new(maps: impl PolicyWriter + 'static, set: PolicySet) -> Self {
        Enforcer {
            maps: Box::new(maps),
            set: Arc::new(set),
            instances: HashMap::new(),
            free: (0..MAX_POLICIES).collect(),
            retiring: VecDeque::new(),
            described: HashMap::new(),
            protected: Protected::default(),
            domains: Domains::default(),
            watch: None,
        }
    }

    /// Publishes each instance's domain rules in `domains`.
    pub fn sharing_domains(mut self, domains: Domains) -> Self {
        self.domains = domains;
        self
    }

    /// Adds `protected` to every instance compiled from now on.
    pub fn protect(&mut self, protected: Protected) {
        self.protected = protected;
    }

    /// Compiles `binding` against the current set and writes it; returns
    /// the instance id to bind.
    pub fn open(&mut self, binding: &Binding) -> Result<u32, EnforceError> {
        let set = self.set.clone();
        self.open_in(&set, binding)
    }

    fn open_in(&mut self, set: &Arc<PolicySet>, binding: &Binding) -> Result<u32, EnforceError> {
        let mut compiled = set.open(&binding.policy, &binding.vars)?;
        compiled.protect(&self.protected);
        let found = inodes::read_denied(&compiled);
        compiled.config.inodes = u8::from(!found.inodes.is_empty() || !found.dirs.is_empty());
        let id = self.take_id()?;
        let mut entries = compiled.map_entries(id);
        entries.inodes = found.keyed(id);
        if let Err(e) = self.maps.write(&entries) {
            self.maps.delete(&entries);
            self.free.push_back(id);
            return Err(e);
        }
        if found.capped {
            tracing::warn!(
                policy = binding.policy,
                files = entries.inodes.len(),
                "the read-deny rules name more files than the inode map holds per trajectory; \
                 the rest are judged by their path only (a hard link or rename of one is not)"
            );
        }
        self.watch_dirs(id, &found.dirs);
        self.described.retain(|(i, _), _| *i != id);
        self.domains.bind(
            id,
            InstanceDomains {
                policy: binding.policy.as_str().into(),
                table: compiled.domains().clone(),
                enforce: compiled.config.mode == mode::ENFORCE,
            },
        );
        self.instances.insert(
            id,
            Instance {
                set: Some(set.clone()),
                compiled: Some(Arc::new(compiled)),
                policy: binding.policy.as_str().into(),
                entries: Some(entries),
                scan: false,
            },
        );
        Ok(id)
    }

    fn watch_dirs(&mut self, id: u32, dirs: &[std::path::PathBuf]) {
        if dirs.is_empty() {
            return;
        }
        if self.watch.is_none() {
            match Watch::new() {
                Ok(w) => self.watch = Some(w),
                Err(e) => {
                    tracing::warn!(
                        "cannot watch read-denied directories ({e}): files created there later are judged by path only"
                    );
                    return;
                }
            }
        }
        if let Some(w) = self.watch.as_mut() {
            w.add(id, dirs);
        }
    }

    /// The next change in a watched read-denied directory.
    pub async fn inode_change(&mut self) -> Change {
        match self.watch.as_mut() {
            Some(w) => w.next().await,
            None => std::future::pending().await,
        }
    }

    /// Adds what `change` brought to the inode map of each instance it
    /// concerns (all of them after an overflow).
    pub fn on_inode_change(&mut self, change: Change) {
        let (path, ids) = match change {
            Change::Created { path, instances } => (Some(path), instances),
            Change::Overflow => {
                tracing::warn!("the read-denied directories' change queue overflowed: walking them again");
                (None, self.instances.keys().copied().collect())
            }
        };
        for id in ids {
            // A directory created with entries is watched only once found:
            // entries made before the watch are found by walking it again.
            if self.add_inodes(id, path.as_deref()) && path.is_some() {
                self.add_inodes(id, path.as_deref());
            }
        }
    }

    /// Walks `path` (everything the instance's read-deny rules name when
    /// `None`) and adds what is new to instance `id`'s inode map entries
    /// and its directories to the watch; true when it found directories.
    fn add_inodes(&mut self, id: u32, path: Option<&std::path::Path>) -> bool {
        let Some(inst) = self.instances.get_mut(&id) else { return false };
        let (Some(compiled), Some(entries)) = (inst.compiled.as_ref(), inst.entries.as_mut()) else { return false };
        let found = match path {
            Some(p) => inodes::read_denied_below(compiled, p, entries.inodes.len()),
            None => inodes::read_denied(compiled),
        };
        if found.capped {
            tracing::warn!(
                policy = %inst.policy,
                "a read-denied directory grew past the inode map's bound; further files are judged by path only"
            );
        }
        let held: std::collections::HashSet<InodeKey> = entries.inodes.iter().map(|(k, _)| *k).collect();
        let new: Vec<_> = found.keyed(id).into_iter().filter(|(k, _)| !held.contains(k)).collect();
        if !new.is_empty() {
            let added = MapEntries { inodes: new, ..MapEntries::default() };
            // Best effort: a full map is logged by the writer.
            let _ = self.maps.write(&added);
            entries.inodes.extend(added.inodes);
        }
        if let Some(w) = self.watch.as_mut() {
            w.add(id, &found.dirs);
        }
        !found.dirs.is_empty()
    }

    /// Compiles every binding against `set`, all or nothing: on success the
    /// new ids (in order) and `set` becomes current; on failure nothing
    /// written stays and the current set is unchanged.
    pub fn open_all(&mut self, set: PolicySet, bindings: &[Binding]) -> Result<Vec<u32>, EnforceError> {
        let set = Arc::new(set);
        let mut ids = Vec::with_capacity(bindings.len());
        for b in bindings {
            match self.open_in(&set, b) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in ids {
                        self.discard(id);
                    }
                    return Err(e);
                }
            }
        }
        self.set = set;
        Ok(ids)
    }

    /// The trajectory bound to `id` is gone or rebound: delete its entries
    /// after [`RETIRE_AFTER`].
    /// The compiled policy instance `id` judges with.
    pub fn compiled(&self, id: u32) -> Option<Arc<CompiledPolicy>> {
        self.instances.get(&id)?.compiled.clone()
    }

    pub fn retire(&mut self, id: u32, now: Instant) {
        if self.instances.contains_key(&id) {
            self.retiring.push_back((now + RETIRE_AFTER, id));
        }
    }

    /// Deletes the entries of instances retired long enough ago.
    pub fn tick(&mut self, now: Instant) {
        while let Some(&(due, id)) = self.retiring.front() {
            if due > now {
                break;
            }
            self.retiring.pop_front();
            self.discard_entries(id);
            self.free.push_back(id);
        }
    }

    /// Names the policy and rule of a kernel verdict.
    pub fn describe(&mut self, id: u32, rule_id: u32) -> Option<Described> {
        if let Some(d) = self.described.get(&(id, rule_id)) {
            return Some(d.clone());
        }
        let inst = self.instances.get(&id)?;
        let rule: Arc<str> = if rule_id == RULE_DEFAULT {
            "default".into()
        } else if rule_id == RULE_BUILTIN_TAMPER {
            TAMPER_RULE.into()
        } else if rule_id == RULE_EXEC_UNNAMED {
            "defaults.exec_unnamed".into()
        } else if rule_id == RULE_RAW_SOCKETS {
            "defaults.raw_sockets".into()
        } else {
            inst.set
                .as_ref()
                .and_then(|s| s.rule(rule_id))
                .map_or_else(|| format!("#{rule_id}"), |o| o.to_string())
                .into()
        };
        let d = Described { policy: inst.policy.clone(), rule };
        self.described.insert((id, rule_id), d.clone());
        Some(d)
    }

    /// Number of (file, exec, network) rules of each policy in the set.
    pub fn rule_counts(&self) -> Vec<(String, [usize; 3])> {
        self.set.policies().iter().map(|p| (p.name.clone(), p.rule_counts())).collect()
    }

    fn take_id(&mut self) -> Result<u32, EnforceError> {
        self.free.pop_front().ok_or(EnforceError::NoIds)
    }

    /// Removes an instance that was never bound.
    fn discard(&mut self, id: u32) {
        self.discard_entries(id);
        self.instances.remove(&id);
        self.free.push_back(id);
    }

    fn discard_entries(&mut self, id: u32) {
        self.domains.unbind(id);
        if let Some(w) = self.watch.as_mut() {
            w.remove(id);
        }
        let Some(inst) = self.instances.get_mut(&id) else { return };
        if std::mem::take(&mut inst.scan) {
            self.maps.purge(&|i| i == id);
        } else if let Some(entries) = inst.entries.take() {
            self.maps.delete(&entries);
        }
    }

    /// Digest of the current set's rule table (policy names and rule
    /// origins): equal digests name rule ids alike.
    pub fn rules_digest(&self) -> u64 {
        let mut h = crate::hash::Fnv::new();
        for p in self.set.policies() {
            h.bytes(p.name.as_bytes());
        }
        for o in self.set.rules() {
            h.bytes(o.to_string().as_bytes());
        }
        h.0
    }

    /// After a restart on reused maps: `bound` lists the instances the
    /// kernel still binds to trajectories being resumed (id, policy name,
    /// digest of the rule table it was compiled from). Every other instance
    /// a previous daemon left in the maps is deleted now; the bound ones
    /// are kept, named by the current set where its rule table is the same,
    /// and deleted (by scanning for their id) once retired.
    pub fn adopt_instances(&mut self, bound: &[(u32, String, u64)]) {
        let keep: std::collections::HashSet<u32> = bound.iter().map(|b| b.0).collect();
        self.maps.purge(&|id| !keep.contains(&id));
        let digest = self.rules_digest();
        for (id, policy, d) in bound {
            if self.instances.contains_key(id) {
                continue;
            }
            self.free.retain(|f| f != id);
            let set = (*d == digest).then(|| self.set.clone());
            self.instances.insert(
                *id,
                Instance { set, compiled: None, policy: policy.as_str().into(), entries: None, scan: true },
            );
        }
    }
}

impl PolicyWriter for PolicyMapHandles {
    fn write(&mut self, e: &MapEntries) -> Result<(), EnforceError> {
        let err = |map| move |source| EnforceError::Map { map, source };
        for (k, v) in &e.file {
            self.file.insert(&path_key(k), v, 0).map_err(err(names::MAP_POLICY_FILE))?;
        }
        for (k, v) in &e.exec {
            self.exec.insert(&path_key(k), v, 0).map_err(err(names::MAP_POLICY_EXEC))?;
        }
        for (k, v) in &e.net4 {
            self.net4.insert(&net4_key(k), v, 0).map_err(err(names::MAP_POLICY_NET4))?;
        }
        for (k, v) in &e.net6 {
            self.net6.insert(&net6_key(k), v, 0).map_err(err(names::MAP_POLICY_NET6))?;
        }
        for (k, v) in &e.inodes {
            // Not an error: files past a full map are judged by path only.
            if let Err(e) = self.inodes.insert(k, v, 0) {
                tracing::warn!("inode map {}: {e}: further files are judged by path only", names::MAP_POLICY_INODES);
                break;
            }
        }
        for (id, c) in &e.config {
            self.config.set(*id, c, 0).map_err(err(names::MAP_POLICY_CONFIG))?;
        }
        Ok(())
    }

    fn delete(&mut self, e: &MapEntries) {
        for (id, c) in &e.config {
            let _ = self.config.set(*id, PolicyConfig { mode: 0, ..*c }, 0);
        }
        for (k, _) in &e.file {
            let _ = self.file.remove(&path_key(k));
        }
        for (k, _) in &e.exec {
            let _ = self.exec.remove(&path_key(k));
        }
        for (k, _) in &e.net4 {
            let _ = self.net4.remove(&net4_key(k));
        }
        for (k, _) in &e.net6 {
            let _ = self.net6.remove(&net6_key(k));
        }
        for (k, _) in &e.inodes {
            let _ = self.inodes.remove(k);
        }
    }

    fn purge(&mut self, doomed: &dyn Fn(u32) -> bool) {
        purge_trie(&mut self.file, doomed);
        purge_trie(&mut self.exec, doomed);
        purge_trie(&mut self.net4, doomed);
        purge_trie(&mut self.net6, doomed);
        let keys: Vec<InodeKey> = self.inodes.keys().flatten().filter(|k| doomed(k.policy)).collect();
        for k in keys {
            let _ = self.inodes.remove(&k);
        }
        for id in (0..MAX_POLICIES).filter(|&i| doomed(i)) {
            if let Ok(c) = self.config.get(&id, 0) {
                if c.mode != 0 {
                    let _ = self.config.set(id, PolicyConfig { mode: 0, ..c }, 0);
                }
            }
        }
    }
}

/// Deletes the trie entries whose key starts with an instance id (big
/// endian, as every policy key does) that `doomed` picks.
fn purge_trie<const N: usize, V: aya::Pod>(
    trie: &mut aya::maps::LpmTrie<aya::maps::MapData, [u8; N], V>,
    doomed: &dyn Fn(u32) -> bool,
) {
    let id_of = |data: &[u8; N]| u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let keys: Vec<Key<[u8; N]>> = trie.keys().flatten().filter(|k| doomed(id_of(&k.data()))).collect();
    for k in keys {
        let _ = trie.remove(&k);
    }
}

fn path_key(k: &PathKey) -> Key<[u8; 256]> {
    let mut data = [0u8; 256];
    data[..4].copy_from_slice(&k.policy);
    data[4..].copy_from_slice(&k.path);
    Key::new(k.prefixlen, data)
}

fn net4_key(k: &monitor_common::policy::Net4Key) -> Key<[u8; 8]> {
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&k.policy);
    data[4..].copy_from_slice(&k.addr);
    Key::new(k.prefixlen, data)
}

fn net6_key(k: &monitor_common::policy::Net6Key) -> Key<[u8; 20]> {
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&k.policy);
    data[4..].copy_from_slice(&k.addr);
    Key::new(k.prefixlen, data)
}

/// The policy maps in memory (the reference judges' model of them), shared
/// with the test that reads them.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct MemoryPolicyMaps(pub std::sync::Arc<std::sync::Mutex<crate::policy::PolicyMaps>>);

#[cfg(test)]
impl MemoryPolicyMaps {
    pub(crate) fn maps(&self) -> std::sync::MutexGuard<'_, crate::policy::PolicyMaps> {
        self.0.lock().expect("no test panics while holding it")
    }
}

#[cfg(test)]
impl PolicyWriter for MemoryPolicyMaps {
    fn write(&mut self, entries: &MapEntries) -> Result<(), EnforceError> {
        self.maps().insert(entries.clone());
        Ok(())
    }

    fn delete(&mut self, entries: &MapEntries) {
        self.maps().remove(entries);
    }

    fn purge(&mut self, doomed: &dyn Fn(u32) -> bool) {
        self.maps().purge(doomed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::{judge_file, Access, Action};

    fn set(workspace_action: &str) -> PolicySet {
        let yaml = format!(
            "name: p\nmode: enforce\ndefaults: {{file: deny, exec: allow, network: deny}}\n\
             rules:\n  file:\n    - path: ${{WORKSPACE}}/\n      access: read-write\n      action: {workspace_action}\n"
        );
        PolicySet::from_sources(&[("p.yaml".into(), yaml)]).unwrap_or_else(|d| panic!("{d:#?}"))
    }

    fn binding() -> Binding {
        Binding { policy: "p".into(), vars: [("WORKSPACE".to_owned(), "/w".to_owned())].into() }
    }

    fn workspace(maps: &MemoryPolicyMaps, id: u32) -> Option<Action> {
        judge_file(&maps.maps(), id, b"/w/f", Access::Write).map(|d| d.action)
    }

    #[test]
    fn an_instance_judges_and_names_its_rules() {
        let maps = MemoryPolicyMaps::default();
        let mut e = Enforcer::new(maps.clone(), set("allow"));
        let id = e.open(&binding()).unwrap();
        assert_eq!(workspace(&maps, id), Some(Action::Allow));
        let rule = judge_file(&maps.maps(), id, b"/w/f", Access::Write).unwrap().rule_id;
        assert_eq!(e.describe(id, rule).unwrap().rule.as_ref(), "p.yaml:6");
        assert_eq!(e.describe(id, RULE_DEFAULT).unwrap().rule.as_ref(), "default");
        assert_eq!(e.describe(id + 1, RULE_DEFAULT), None, "an id never written names nothing");
    }

    /// Files a read-deny rule names are in the inode map by identity, those
    /// created later too; retiring the instance removes them.
    #[tokio::test]
    async fn read_denied_files_are_written_by_identity_and_followed() {
        use crate::policy::judge::judge_inode;
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("secret")).unwrap();
        std::fs::write(ws.path().join("secret/key"), "k").unwrap();
        let yaml = "name: p\nmode: enforce\ndefaults: {file: allow, exec: allow, network: allow}\n\
                    rules:\n  file:\n    - path: ${WORKSPACE}/secret/\n      access: read\n      action: deny\n";
        let set = PolicySet::from_sources(&[("p.yaml".into(), yaml.to_owned())]).unwrap();
        let maps = MemoryPolicyMaps::default();
        let mut e = Enforcer::new(maps.clone(), set);
        let vars = [("WORKSPACE".to_owned(), ws.path().to_str().unwrap().to_owned())].into();
        let id = e.open(&Binding { policy: "p".into(), vars }).unwrap();
        let judged = |name: &str| {
            let (dev, ino) = crate::inodes::identity(&std::fs::metadata(ws.path().join(name)).unwrap());
            judge_inode(&maps.maps(), id, dev, ino, Access::Read).map(|d| d.action)
        };
        assert_eq!(judged("secret/key"), Some(Action::Deny));
        assert_eq!(judged("secret"), Some(Action::Deny), "the directory too: a rename of it keeps it denied");
        std::fs::create_dir(ws.path().join("open")).unwrap();
        assert_eq!(judged("open"), None);
        std::fs::write(ws.path().join("secret/later"), "l").unwrap();
        let change = tokio::time::timeout(Duration::from_secs(5), e.inode_change()).await.unwrap();
        e.on_inode_change(change);
        assert_eq!(judged("secret/later"), Some(Action::Deny), "a file created after the instance opened");
        e.retire(id, Instant::now());
        e.tick(Instant::now() + RETIRE_AFTER);
        assert_eq!(judged("secret/key"), None);
    }

    /// A reload writes complete new instances; the old ones keep judging
    /// (a program may have read the old id) until retired long enough.
    #[test]
    fn reload_writes_new_instances_and_removes_the_old_ones_later() {
        let maps = MemoryPolicyMaps::default();
        let mut e = Enforcer::new(maps.clone(), set("allow"));
        let old = e.open(&binding()).unwrap();
        let new = e.open_all(set("deny"), &[binding()]).unwrap();
        assert_ne!(new, vec![old]);
        assert_eq!(workspace(&maps, new[0]), Some(Action::Deny));
        let now = Instant::now();
        e.retire(old, now);
        e.tick(now + RETIRE_AFTER / 2);
        assert_eq!(workspace(&maps, old), Some(Action::Allow), "retired, not yet removed");
        e.tick(now + RETIRE_AFTER);
        assert_eq!(workspace(&maps, old), None);
        assert_eq!(maps.maps().instances(), BTreeSet::from([new[0]]));
        // Records still queued are described by the rules that judged them.
        assert_eq!(e.describe(old, RULE_DEFAULT).unwrap().policy.as_ref(), "p");
    }

    #[test]
    fn a_reload_that_fails_leaves_nothing_behind() {
        let maps = MemoryPolicyMaps::default();
        let mut e = Enforcer::new(maps.clone(), set("allow"));
        let id = e.open(&binding()).unwrap();
        let missing = Binding { policy: "gone".into(), vars: Vars::new() };
        assert!(matches!(
            e.open_all(set("deny"), &[binding(), missing]),
            Err(EnforceError::Open(OpenError::UnknownPolicy(_)))
        ));
        assert_eq!(maps.maps().instances(), BTreeSet::from([id]));
        // The current set is unchanged: a new instance still allows.
        let again = e.open(&binding()).unwrap();
        assert_eq!(workspace(&maps, again), Some(Action::Allow));
    }

    /// After a restart on reused maps only the instances still bound stay.
    #[test]
    fn adopting_keeps_only_bound_instances() {
        let maps = MemoryPolicyMaps::default();
        let mut previous = Enforcer::new(maps.clone(), set("allow"));
        let (a, b) = (previous.open(&binding()).unwrap(), previous.open(&binding()).unwrap());
        let digest = previous.rules_digest();
        let mut e = Enforcer::new(maps.clone(), set("allow"));
        e.adopt_instances(&[(b, "p".into(), digest)]);
        assert_eq!(maps.maps().instances(), BTreeSet::from([b]));
        assert_eq!(workspace(&maps, a), None);
        // Named by the current set (same rule table), and never handed out
        // again while bound.
        assert_eq!(e.describe(b, RULE_DEFAULT).unwrap().policy.as_ref(), "p");
        let fresh: Vec<u32> = (0..3).map(|_| e.open(&binding()).unwrap()).collect();
        assert!(!fresh.contains(&b));
        // Retired, its entries are found by their id and removed.
        let now = Instant::now();
        e.retire(b, now);
        e.tick(now + RETIRE_AFTER);
        assert_eq!(workspace(&maps, b), None);
    }
}
