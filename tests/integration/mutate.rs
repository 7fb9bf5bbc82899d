//! "Protected means protected": every way of changing a file under a
//! write-denied directory is refused, on every kernel, and the target is
//! left exactly as it was; the same call in the workspace succeeds.
//!
//! What refuses depends on the kernel, as `status` reports it: BPF LSM
//! (`EPERM`), or the Landlock layer `run` applies (`EACCES`, or `EXDEV` for
//! a rename or link between directories), for the operations Landlock
//! governs on the kernel's ABI.

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::harness::{agent_bin, of_kind, stdout, Daemon, Workspace};

const POLICY: &str = "name: sealed\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n\
                      rules:\n  file:\n    - {path: \"${WORKSPACE}/sealed/\", access: write, action: deny}\n";

struct Lab {
    s: Workspace,
    d: Daemon,
    sealed: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let s = Workspace::new();
        s.write_policy("sealed", POLICY);
        let sealed = s.ws.join("sealed");
        let d = s.daemon();
        Lab { s, d, sealed }
    }

    /// Puts the same entries in `dir`: a file `f`, an empty directory `d`.
    fn populate(dir: &Path) {
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("f"), "content\n").unwrap();
        std::fs::set_permissions(dir.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// `test-agent mutate OP ARGS` in trajectory `id`.
    fn mutate(&self, id: &str, op: &str, args: &[&Path]) -> std::process::Output {
        let agent = agent_bin();
        let mut cmd = vec![agent.to_str().unwrap(), "mutate", op];
        cmd.extend(args.iter().map(|p| p.to_str().unwrap()));
        self.d.run_policy(id, "sealed", &self.s.ws, &cmd)
    }

    /// The Landlock ABI the daemon reports, 0 without a layer.
    fn landlock_abi(&self) -> u32 {
        let status = self.d.status();
        let rows = status["protections"].as_array().unwrap();
        let Some(row) = rows.iter().find(|p| p["protection"] == "landlock" && p["mechanism"] == "landlock-deny") else {
            return 0;
        };
        let detail = row["detail"].as_str().unwrap();
        detail.strip_prefix("Landlock ABI ").and_then(|r| r.split(':').next()).unwrap().parse().unwrap()
    }
}

/// Type and mode, size, owner, modification time (s, ns), content.
type Entry = (u32, u64, u32, i64, i64, Vec<u8>);

/// Everything about the entries below `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() { std::fs::read(&p).unwrap() } else { Vec::new() };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (m.mode(), m.size(), m.uid(), m.mtime(), m.mtime_nsec(), content));
        }
    }
    out
}

/// One operation: its name, and its arguments for a tree (`sealed` or the
/// workspace's `open`) and a scratch directory `out` beside it.
struct Case {
    op: &'static str,
    args: fn(&Path, &Path) -> Vec<PathBuf>,
    /// Landlock governs it from this ABI on (0: never).
    landlock_abi: u32,
    /// The `syscall` of the BPF LSM record, and the argument it names.
    lsm: (&'static str, usize),
}

const CASES: &[Case] = &[
    Case { op: "unlink", args: |t, _| vec![t.join("f")], landlock_abi: 1, lsm: ("unlink", 0) },
    Case { op: "rmdir", args: |t, _| vec![t.join("d")], landlock_abi: 1, lsm: ("rmdir", 0) },
    Case { op: "rename", args: |t, o| vec![t.join("f"), o.join("moved-out")], landlock_abi: 1, lsm: ("rename", 0) },
    Case { op: "rename", args: |t, o| vec![o.join("x"), t.join("moved-in")], landlock_abi: 1, lsm: ("rename_to", 1) },
    Case { op: "rename", args: |t, _| vec![t.join("f"), t.join("renamed")], landlock_abi: 1, lsm: ("rename", 0) },
    Case { op: "exchange", args: |t, o| vec![t.join("f"), o.join("x")], landlock_abi: 1, lsm: ("rename", 0) },
    Case { op: "exchange", args: |t, o| vec![o.join("x"), t.join("f")], landlock_abi: 1, lsm: ("rename_to", 1) },
    Case { op: "link", args: |t, o| vec![o.join("x"), t.join("hard")], landlock_abi: 1, lsm: ("link_to", 1) },
    Case {
        op: "symlink",
        args: |t, _| vec![PathBuf::from("/etc/hostname"), t.join("sym")],
        landlock_abi: 1,
        lsm: ("symlink", 1),
    },
    Case { op: "mkdir", args: |t, _| vec![t.join("new")], landlock_abi: 1, lsm: ("mkdir", 0) },
    Case { op: "mknod", args: |t, _| vec![t.join("fifo")], landlock_abi: 1, lsm: ("mknod", 0) },
    Case { op: "truncate", args: |t, _| vec![t.join("f")], landlock_abi: 3, lsm: ("truncate", 0) },
    Case { op: "chmod", args: |t, _| vec![t.join("f")], landlock_abi: 0, lsm: ("chmod", 0) },
    Case { op: "chown", args: |t, _| vec![t.join("f")], landlock_abi: 0, lsm: ("chown", 0) },
];

fn as_refs(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(PathBuf::as_path).collect()
}

/// Asserts the call was refused as `mechanism` refuses.
fn assert_refused(out: &std::process::Output, mechanism: &str, what: &str) {
    let text = stdout(out);
    assert_eq!(out.status.code(), Some(3), "{what}: expected a failed syscall: {out:?}");
    let ok = match mechanism {
        "lsm-deny" => text.contains("errno=1 "),
        "landlock-deny" => text.contains("errno=13 ") || text.contains("errno=18 "),
        other => panic!("{what}: no mechanism refuses it: {other}"),
    };
    assert!(ok, "{what}: expected the errno of {mechanism}: {text}");
}

#[test]
fn every_change_under_a_write_denied_directory_is_refused_and_the_workspace_is_not() {
    let lab = Lab::new();
    let abi = lab.landlock_abi();
    let files = lab.d.enforcement("file");
    let (open, out) = (lab.s.ws.join("open"), lab.s.ws.join("out"));
    for (i, case) in CASES.iter().enumerate() {
        let mechanism = match (files.as_str(), abi) {
            ("lsm-deny", _) => "lsm-deny",
            (_, abi) if abi > 0 && abi >= case.landlock_abi && case.landlock_abi > 0 => "landlock-deny",
            _ => continue,
        };
        for dir in [&lab.sealed, &open, &out] {
            let _ = std::fs::remove_dir_all(dir);
            Lab::populate(dir);
        }
        std::fs::write(out.join("x"), "outside\n").unwrap();
        let before = snapshot(&lab.sealed);
        let args = (case.args)(&lab.sealed, &out);
        let what = format!("{} {:?}", case.op, args);
        let id = format!("mut-{i}");
        let refused = lab.mutate(&id, case.op, &as_refs(&args));
        assert_refused(&refused, mechanism, &what);
        assert_eq!(snapshot(&lab.sealed), before, "{what}: the sealed tree changed");
        // Recorded as the operation, on the path it would change, with the
        // rule: by the LSM hook that refused, or by the syscall's exit
        // tracepoint after Landlock refused.
        let (syscall, at) = case.lsm;
        let recs = lab.d.trajectory(&id);
        let r = of_kind(&recs, "open")
            .into_iter()
            .find(|r| r["syscall"] == syscall && r["path"] == args[at].to_str().unwrap())
            .unwrap_or_else(|| panic!("{what}: no {syscall} record of {}: {recs:#?}", args[at].display()));
        assert_eq!((r["decision"].as_str(), r["mechanism"].as_str()), (Some("deny"), Some(mechanism)), "{r}");
        assert!(r["rule"].as_str().unwrap().ends_with("sealed.yaml:6"), "{r}");
        // The same call on the workspace's own tree.
        let args = (case.args)(&open, &out);
        let allowed = lab.mutate(&format!("{id}-ws"), case.op, &as_refs(&args));
        assert!(allowed.status.success(), "{} {args:?} in the workspace: {allowed:?}", case.op);
    }
}

#[test]
fn a_refused_open_for_writing_is_recorded_with_the_rule_and_the_mechanism() {
    let lab = Lab::new();
    let files = lab.d.enforcement("file");
    Lab::populate(&lab.sealed);
    let target = lab.sealed.join("f");
    let agent = agent_bin();
    let out = lab.d.run_policy(
        "write-sealed",
        "sealed",
        &lab.s.ws,
        &[agent.to_str().unwrap(), "write", target.to_str().unwrap()],
    );
    match files.as_str() {
        "lsm-deny" | "landlock-deny" => assert_refused(&out, &files, "write"),
        other => panic!("file rules not enforced before the open here: {other}"),
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "content\n");
    let recs = lab.d.trajectory("write-sealed");
    let rec: &Value = of_kind(&recs, "open")
        .into_iter()
        .find(|r| r["requested"] == target.to_str().unwrap() || r["path"] == target.to_str().unwrap())
        .unwrap_or_else(|| panic!("no open record of {}: {recs:#?}", target.display()));
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["mechanism"], files.as_str(), "{rec}");
    assert!(rec["rule"].as_str().unwrap().ends_with("sealed.yaml:6"), "{rec}");
}

/// xorshift64*: deterministic, so a failure reproduces from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn name(&mut self) -> &'static str {
        ["a", "b", "c"][self.below(3) as usize]
    }
}

/// A generated tree below `root`: directories `a`..`c` three deep, a file
/// `f` in most of them. Returns the files.
fn generate_tree(rng: &mut Rng, root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for _ in 0..10 {
        let mut dir = root.to_owned();
        for _ in 0..1 + rng.below(3) {
            dir.push(rng.name());
        }
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("f{}", rng.below(2)));
        if !files.contains(&f) {
            std::fs::write(&f, "x").unwrap();
            files.push(f);
        }
    }
    files
}

/// A policy with a write deny under an allow under a deny below `lab/`,
/// and read rules at random places.
fn generate_policy(rng: &mut Rng, name: &str) -> String {
    let (d1, d2, d3) = (rng.name(), rng.name(), rng.name());
    let mut y = format!(
        "name: {name}\nmode: enforce\ndefaults: {{file: allow, exec: allow, network: deny}}\nrules:\n  file:\n    \
         - {{path: \"${{WORKSPACE}}/lab/{d1}/\", access: write, action: deny}}\n    \
         - {{path: \"${{WORKSPACE}}/lab/{d1}/{d2}/\", access: write, action: allow}}\n    \
         - {{path: \"${{WORKSPACE}}/lab/{d1}/{d2}/{d3}/\", access: write, action: deny}}\n"
    );
    for _ in 0..rng.below(3) {
        let mut p = String::from("${WORKSPACE}/lab");
        for _ in 0..1 + rng.below(3) {
            p.push('/');
            p.push_str(rng.name());
        }
        let exact = rng.below(3) == 0;
        let (path, action) = if exact {
            (format!("{p}/f0"), "deny")
        } else {
            (format!("{p}/"), ["deny", "allow"][rng.below(2) as usize])
        };
        y += &format!("    - {{path: \"{path}\", access: read, action: {action}}}\n");
    }
    y
}

/// Deny under allow under deny, on the real kernel: for generated trees
/// and policies, every read and write open of every file is allowed or
/// refused exactly as the policy judge says (the judge the kernel maps are
/// compiled from), under BPF LSM and under the Landlock layer alike, and
/// removing a file the policy denies writing is refused.
#[test]
fn three_level_policies_are_enforced_as_the_judge_decides_on_generated_trees() {
    const CASES: usize = 12;
    let s = Workspace::new();
    let mut rng = Rng(0xd1ff_3e7e_5eed_0023);
    let policies: Vec<String> = (0..CASES).map(|i| generate_policy(&mut rng, &format!("gen{i}"))).collect();
    for (i, yaml) in policies.iter().enumerate() {
        s.write_policy(&format!("gen{i}"), yaml);
    }
    let d = s.daemon();
    let files = d.enforcement("file");
    let refusal_errno = match files.as_str() {
        "lsm-deny" => 1,
        "landlock-deny" => 13,
        other => panic!("file rules are not refused before the open here: {other}"),
    };
    let vars: monitor::policy::Vars = [("WORKSPACE".to_owned(), s.ws.to_str().unwrap().to_owned())].into();
    let deny = monitor_common::policy::action::DENY;
    for (i, yaml) in policies.iter().enumerate() {
        let lab = s.ws.join("lab");
        let _ = std::fs::remove_dir_all(&lab);
        let tree = generate_tree(&mut rng, &lab);
        let set = monitor::policy::PolicySet::from_sources(&[("p.yaml".into(), yaml.clone())]).unwrap();
        let judge = set.open(&format!("gen{i}"), &vars).unwrap();
        // One line per attempt: `r|w|u PATH 0|errno`.
        let mut script = String::new();
        for f in &tree {
            let p = f.display();
            script += &format!("cat '{p}' >/dev/null 2>&1; echo \"r {p} $?\"; ");
            script += &format!("(: >> '{p}') 2>/dev/null; echo \"w {p} $?\"; ");
        }
        let denied: Vec<&PathBuf> =
            tree.iter().filter(|f| judge.file_value(f.as_os_str().as_encoded_bytes()).write.action == deny).collect();
        for f in &denied {
            script += &format!("rm -f '{}' 2>/dev/null; echo \"u {} $?\"; ", f.display(), f.display());
        }
        let out = d.run_policy(&format!("gen-{i}"), &format!("gen{i}"), &s.ws, &["sh", "-c", &script]);
        let text = stdout(&out);
        for f in &tree {
            let v = judge.file_value(f.as_os_str().as_encoded_bytes());
            for (op, verdict) in [("r", v.read), ("w", v.write)] {
                let line = format!("{op} {} ", f.display());
                let got = text.lines().find(|l| l.starts_with(&line)).unwrap_or_else(|| panic!("{line}: {out:?}"));
                let allowed = got.ends_with(" 0");
                assert_eq!(
                    allowed,
                    verdict.action != deny,
                    "case {i} {got} ({files}, errno {refusal_errno} expected when refused)\n{yaml}"
                );
            }
        }
        for f in denied {
            assert!(f.exists(), "case {i}: {} was removed although the policy denies writing it\n{yaml}", f.display());
        }
    }
}
