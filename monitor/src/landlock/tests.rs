//! The planner against the policy's own judge, over generated trees and
//! policies, with Landlock's rule semantics simulated: a right is allowed
//! on a path when some grant on the path or one of its ancestors has it.
//! (The same plan is checked against the real kernel in
//! `tests/integration/landlock.rs`.)

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::plan::{fs, plan, Class, Kind, Plan, Tree};
use crate::policy::{tests::Rng, CompiledPolicy, PolicySet, Vars};

/// A filesystem in memory: every directory with its entries.
#[derive(Default)]
struct Mem {
    dirs: BTreeMap<PathBuf, Vec<(OsString, Kind)>>,
    volatile: Vec<PathBuf>,
}

impl Mem {
    fn add(&mut self, path: &str, kind: Kind) {
        let path = Path::new(path);
        let mut at = PathBuf::from("/");
        for c in path.parent().unwrap().components().skip(1) {
            let next = at.join(c);
            let entry = (c.as_os_str().to_owned(), Kind::Dir);
            let list = self.dirs.entry(at.clone()).or_default();
            if !list.contains(&entry) {
                list.push(entry);
            }
            at = next;
        }
        let entry = (path.file_name().unwrap().to_owned(), kind);
        let list = self.dirs.entry(at).or_default();
        if !list.contains(&entry) {
            list.push(entry);
        }
        if kind == Kind::Dir {
            self.dirs.entry(path.to_owned()).or_default();
        }
    }

    fn kind(&self, path: &Path) -> Option<Kind> {
        let parent = path.parent()?;
        let name = path.file_name()?;
        self.dirs.get(parent)?.iter().find(|(n, _)| n == name).map(|(_, k)| *k)
    }
}

impl Tree for Mem {
    fn entries(&self, dir: &Path) -> Vec<(OsString, Kind)> {
        self.dirs.get(dir).cloned().unwrap_or_default()
    }

    fn volatile(&self, dir: &Path) -> bool {
        self.volatile.iter().any(|v| dir.starts_with(v))
    }
}

/// Landlock's answer for `right` on `path`: granted on it or above.
fn landlock_allows(plan: &Plan, path: &Path, right: u64) -> bool {
    plan.handled & right == 0 || plan.grants.iter().any(|g| g.access & right != 0 && path.starts_with(&g.path))
}

fn compiled(yaml: &str) -> CompiledPolicy {
    let set = PolicySet::from_sources(&[("p.yaml".into(), yaml.into())]).unwrap_or_else(|d| panic!("{d:#?}"));
    let name = set.policies()[0].name.clone();
    let vars: Vars = [("WORKSPACE".to_owned(), "/w".to_owned())].into();
    set.open(&name, &vars).unwrap()
}

/// What the kernel's file trie says about `class` on `path`.
fn policy_allows(p: &CompiledPolicy, class: Class, path: &Path) -> bool {
    let mut key = path.as_os_str().as_bytes().to_vec();
    key.push(0);
    let deny = monitor_common::policy::action::DENY;
    match class {
        Class::Read => p.file_value(path.as_os_str().as_bytes()).read.action != deny,
        Class::Write => p.file_value(path.as_os_str().as_bytes()).write.action != deny,
        Class::Exec => {
            let hit = p.exec.iter().filter(|e| key.starts_with(&e.prefix)).max_by_key(|e| e.prefix.len());
            hit.map_or(p.config.exec_default, |e| e.value.action) != deny
        }
    }
}

const THREE_LEVELS: &str = "name: t\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n\
    rules:\n  file:\n    - {path: /data/, access: write, action: deny}\n\
    \x20   - {path: /data/open/, access: write, action: allow}\n\
    \x20   - {path: /data/open/sealed/, access: write, action: deny}\n\
    \x20   - {path: /home/u/.ssh/, action: deny}\n";

fn three_level_tree() -> Mem {
    let mut t = Mem::default();
    for (p, k) in [
        ("/data/a.txt", Kind::File),
        ("/data/open/b.txt", Kind::File),
        ("/data/open/sub/c.txt", Kind::File),
        ("/data/open/sealed/d.txt", Kind::File),
        ("/data/link", Kind::Symlink),
        ("/home/u/.ssh/id", Kind::File),
        ("/home/u/notes", Kind::File),
        ("/home/u/proj/x.rs", Kind::File),
        ("/tmp/t", Kind::File),
        ("/usr/bin/sh", Kind::File),
    ] {
        t.add(p, k);
    }
    t
}

#[test]
fn a_deny_under_an_allow_under_a_deny_is_granted_by_its_siblings() {
    let p = compiled(THREE_LEVELS);
    let plan = plan(&p, &three_level_tree(), 6, &Class::ALL);
    assert_eq!(plan.classes, [Class::Read, Class::Write, Class::Exec]);
    let w = fs::WRITE_FILE;
    let mk = fs::MAKE_REG;
    // Uniform subtrees are granted whole.
    assert!(landlock_allows(&plan, Path::new("/tmp/new"), mk));
    assert!(landlock_allows(&plan, Path::new("/data/open/sub/new"), mk));
    assert!(landlock_allows(&plan, Path::new("/data/open/b.txt"), w));
    // The denied levels are not.
    assert!(!landlock_allows(&plan, Path::new("/data/a.txt"), w));
    assert!(!landlock_allows(&plan, Path::new("/data/new"), mk));
    assert!(!landlock_allows(&plan, Path::new("/data/open/sealed/d.txt"), w));
    assert!(!landlock_allows(&plan, Path::new("/data/open/sealed/new"), mk));
    assert!(!landlock_allows(&plan, Path::new("/data/open/sealed/d.txt"), fs::REMOVE_FILE));
    // A split directory the policy allows writing in: its existing files
    // keep their grant; new entries in it do not get one (safe side).
    assert!(landlock_allows(&plan, Path::new("/home/u/notes"), w));
    assert!(!landlock_allows(&plan, Path::new("/home/u/new"), mk));
    assert!(landlock_allows(&plan, Path::new("/home/u/proj/new"), mk));
    // Reads: the credentials directory only.
    assert!(!landlock_allows(&plan, Path::new("/home/u/.ssh/id"), fs::READ_FILE));
    assert!(landlock_allows(&plan, Path::new("/home/u/notes"), fs::READ_FILE));
    assert!(landlock_allows(&plan, Path::new("/home/u"), fs::READ_DIR));
    // A symbolic link is never granted.
    assert!(!plan.grants.iter().any(|g| g.path == Path::new("/data/link")));
    // Signals are scoped from ABI 6 on.
    assert_eq!(plan.scoped, super::plan::scope::SIGNAL);
    assert_eq!(super::plan::plan(&p, &three_level_tree(), 5, &Class::ALL).scoped, 0);
}

#[test]
fn rights_follow_the_abi() {
    let p = compiled(THREE_LEVELS);
    let tree = three_level_tree();
    assert_eq!(plan(&p, &tree, 1, &Class::ALL).handled & (fs::REFER | fs::TRUNCATE), 0);
    assert_eq!(plan(&p, &tree, 2, &Class::ALL).handled & (fs::REFER | fs::TRUNCATE), fs::REFER);
    assert_eq!(plan(&p, &tree, 3, &Class::ALL).handled & (fs::REFER | fs::TRUNCATE), fs::REFER | fs::TRUNCATE);
}

#[test]
fn an_audit_mode_policy_grants_everything_but_the_tamper_protection() {
    let yaml = THREE_LEVELS.replace("mode: enforce", "mode: audit");
    let mut p = compiled(&yaml);
    p.protect(&crate::policy::Protected::new([(PathBuf::from("/data/open/sealed"), true)]));
    let plan = plan(&p, &three_level_tree(), 6, &Class::ALL);
    assert!(landlock_allows(&plan, Path::new("/data/a.txt"), fs::WRITE_FILE));
    assert!(landlock_allows(&plan, Path::new("/home/u/.ssh/id"), fs::READ_FILE));
    assert!(!landlock_allows(&plan, Path::new("/data/open/sealed/d.txt"), fs::WRITE_FILE));
}

#[test]
fn procfs_split_directories_are_granted_whole_and_left_to_the_ebpf_hooks() {
    let yaml = "name: t\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n\
                rules:\n  file:\n    - {path: /proc/42/, access: write, action: deny}\n";
    let mut tree = Mem::default();
    tree.add("/proc/42/mem", Kind::File);
    tree.add("/proc/43/mem", Kind::File);
    tree.volatile.push("/proc".into());
    let plan = plan(&compiled(yaml), &tree, 6, &Class::ALL);
    assert!(landlock_allows(&plan, Path::new("/proc/44/new"), fs::WRITE_FILE));
    assert_eq!(plan.ebpf_only, ["/proc/42"]);
}

#[test]
fn an_exec_allow_list_grants_execute_on_the_allowed_directories_only() {
    let yaml = "name: t\nmode: enforce\ndefaults: {file: allow, exec: deny, network: deny}\n\
                rules:\n  exec:\n    - {path: /usr/bin/, action: allow}\n    - {path: /usr/bin/su, action: deny}\n";
    let tree = three_level_tree();
    let mut tree = tree;
    tree.add("/usr/bin/su", Kind::File);
    let plan = plan(&compiled(yaml), &tree, 6, &Class::ALL);
    assert!(landlock_allows(&plan, Path::new("/usr/bin/sh"), fs::EXECUTE));
    assert!(!landlock_allows(&plan, Path::new("/usr/bin/su"), fs::EXECUTE));
    assert!(!landlock_allows(&plan, Path::new("/tmp/t"), fs::EXECUTE));
}

/// A path of `depth` components over `a`, `b`, `c`.
fn random_path(rng: &mut Rng, depth: usize) -> String {
    (0..depth).map(|_| *rng.pick(&["/a", "/b", "/c"])).collect()
}

fn random_policy(rng: &mut Rng) -> String {
    let mut y = format!(
        "name: r\nmode: enforce\ndefaults: {{file: {}, exec: {}, network: deny}}\nrules:\n  file:\n",
        *rng.pick(&["allow", "deny"]),
        *rng.pick(&["allow", "deny"])
    );
    for _ in 0..1 + rng.below(6) {
        let depth = 1 + rng.below(3);
        let slash = if rng.below(2) == 0 { "/" } else { "" };
        y += &format!(
            "    - {{path: {}{slash}, access: {}, action: {}}}\n",
            random_path(rng, depth),
            *rng.pick(&["read", "write", "read-write"]),
            *rng.pick(&["allow", "deny", "audit"])
        );
    }
    y += "  exec:\n";
    for _ in 0..rng.below(3) {
        let slash = if rng.below(2) == 0 { "/" } else { "" };
        let depth = 1 + rng.below(3);
        let path = random_path(rng, depth);
        y += &format!("    - {{path: {path}{slash}, action: {}}}\n", *rng.pick(&["allow", "deny"]));
    }
    y
}

fn random_tree(rng: &mut Rng) -> Mem {
    let mut t = Mem::default();
    for _ in 0..12 {
        let depth = 1 + rng.below(4);
        let kind = [Kind::File, Kind::File, Kind::Dir, Kind::Symlink][rng.below(4)];
        let path = random_path(rng, depth);
        // A name is one kind only, and only a directory has entries.
        let p = Path::new(&path);
        let clash = p.ancestors().skip(1).any(|a| t.kind(a).is_some_and(|k| k != Kind::Dir));
        if !clash && t.kind(p).is_none() {
            t.add(&path, kind);
        }
    }
    t
}

/// Every existing file gets exactly the policy's answer; no directory
/// right is ever wider than the policy, except listing (`READ_DIR`) below
/// a split directory; a directory whose subtree the policy treats alike
/// gets exactly its answer.
#[test]
fn plans_agree_with_the_policy_judge_on_generated_trees() {
    let mut rng = Rng(0x1a4d_10c4_5eed_0023);
    for case in 0..3000 {
        let yaml = random_policy(&mut rng);
        let p = compiled(&yaml);
        let tree = random_tree(&mut rng);
        let plan = plan(&p, &tree, 6, &Class::ALL);
        let ctx = || format!("case {case}\n{yaml}\n{:#?}\n{:#?}", tree.dirs, plan.grants);
        for (dir, entries) in &tree.dirs {
            for (name, kind) in entries {
                let path = dir.join(name);
                for class in plan.classes.clone() {
                    let allowed = policy_allows(&p, class, &path);
                    match kind {
                        Kind::File => {
                            let right = match class {
                                Class::Read => fs::READ_FILE,
                                Class::Write => fs::WRITE_FILE,
                                Class::Exec => fs::EXECUTE,
                            };
                            assert_eq!(landlock_allows(&plan, &path, right), allowed, "{class:?} {path:?} {}", ctx());
                        }
                        Kind::Dir if class == Class::Write => {
                            // Removing the directory, creating in it.
                            if landlock_allows(&plan, dir, fs::REMOVE_DIR) {
                                assert!(allowed, "rmdir {path:?} {}", ctx());
                            }
                            let new = path.join("zz");
                            if landlock_allows(&plan, &path, fs::MAKE_REG) {
                                assert!(policy_allows(&p, class, &new), "create {new:?} {}", ctx());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
