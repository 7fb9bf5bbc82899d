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
