//! The built-in tamper protection against the real kernel: an agent (root
//! inside its trajectory, as in these tests) tries to leave its cgroup,
//! rewrite the daemon's files, reach the daemon's maps or memory, or mount
//! an alias; each test asserts what the attacker's syscall returned (or that
//! it was killed) and the `deny` record with rule `builtin:tamper`.
//!
//! The outcome depends on the mechanism the daemon reports in `status` for
//! each protection (`lsm-deny`: the call fails with EPERM and the process
//! lives; `kill`: the process dies of SIGKILL at the syscall), so the same
//! tests run unchanged on every kernel of the VM matrix. Where a kernel gives
//! no mechanism, the test asserts the current behaviour (the attempt works)
//! so that it fails the day that changes; `docs/security.md` lists those.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use serde_json::Value;

use crate::harness::{assert_stopped, attacker_bin, cgroup2_mount, of_kind, open_of, stdout, Daemon, Workspace};

/// A policy directory, a workspace with a secret, and a daemon.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub policies: PathBuf,
    pub ws: PathBuf,
    pub d: Daemon,
}

/// Allows everything, the cgroup filesystem and the policy directory
/// explicitly read-write (the built-in protection must win over that),
/// except the workspace's `secret/` and `bin/forbidden`.
pub fn permissive(name: &str, mode: &str, policies: &Path) -> String {
    format!(
        "name: {name}\nmode: {mode}\ndefaults:\n  file: allow\n  exec: allow\n  network: allow\nrules:\n  file:\n    \
         - path: ${{WORKSPACE}}/secret/\n      action: deny\n    \
         - path: /sys/fs/cgroup/\n      access: read-write\n      action: allow\n    \
         - path: {policies}/\n      action: allow\n  exec:\n    \
         - path: ${{WORKSPACE}}/bin/forbidden\n      action: deny\n",
        policies = policies.display()
    )
}

impl Lab {
    pub fn new() -> Lab {
        Lab::with(&[])
    }

    /// With extra policy files `(name, yaml)` in the directory at start.
    pub fn with(extra: &[(&str, &str)]) -> Lab {
        let w = Workspace::new().with_forbidden_binary();
        w.write_policy("test", &permissive("test", "enforce", &w.policies));
        w.write_policy("watch", &permissive("watch", "audit", &w.policies));
        for (name, yaml) in extra {
            w.write_policy(name, yaml);
        }
        let d = w.daemon();
        let Workspace { dir, policies, ws, .. } = w;
        Lab { dir, policies, ws, d }
    }

    /// Runs the attacker with `args` in trajectory `id` under `policy`.
    pub fn attack(&self, id: &str, policy: &str, args: &[&str]) -> Output {
        let bin = attacker_bin();
        let mut cmd = vec![bin.to_str().unwrap()];
        cmd.extend_from_slice(args);
        self.d.run_policy(id, policy, &self.ws, &cmd)
    }

    /// The mechanism `status` reports for protection `name`.
    pub fn protection(&self, name: &str) -> String {
        self.d.protection(name)
    }

    pub fn file_mechanism(&self) -> String {
        self.d.enforcement("file")
    }
}

/// The `tamper` records of a trajectory.
pub fn tamper_records(d: &Daemon, id: &str) -> Vec<Value> {
    of_kind(&d.trajectory(id), "tamper").into_iter().cloned().collect()
}

/// Asserts a single `tamper` record of `op`, denied by the built-in rule
/// with `mechanism`.
pub fn assert_tamper_record(d: &Daemon, id: &str, op: &str, mechanism: &str) -> Value {
    let recs = tamper_records(d, id);
    let r = recs.iter().find(|r| r["op"] == op).unwrap_or_else(|| panic!("{id}: no tamper record of {op}: {recs:#?}"));
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["rule"], "builtin:tamper", "{r}");
    assert_eq!(r["mechanism"], mechanism, "{r}");
    r.clone()
}

/// Asserts an `open` record of `path` denied by the built-in rule.
pub fn assert_builtin_open_deny(d: &Daemon, id: &str, path: &Path, mechanism: &str) {
    let recs = d.trajectory(id);
    let r = open_of(&recs, path);
    assert_eq!((r["decision"].as_str(), r["rule"].as_str()), (Some("deny"), Some("builtin:tamper")), "{r}");
    assert_eq!(r["mechanism"], mechanism, "{r}");
}

fn trajectory_cgroup(d: &Daemon, id: &str) -> PathBuf {
    cgroup2_mount().unwrap().join(&d.cgroup_parent).join(id)
}

#[test]
fn an_agent_cannot_leave_or_reshape_its_cgroup() {
    let lab = Lab::new();
    let files = lab.file_mechanism();
    let root = cgroup2_mount().unwrap();
    // "0" in cgroup.procs moves the writing process itself.
    let me = "0";

    // Attacker: writes its pid into the root cgroup's cgroup.procs (leaving
    // the trajectory), although its policy allows writes under /sys/fs/cgroup/.
    let procs = root.join("cgroup.procs");
    let out = lab.attack("cg-procs", "test", &["write-str", procs.to_str().unwrap(), me]);
    assert_stopped(&out, &files);
    assert_builtin_open_deny(&lab.d, "cg-procs", &procs, &files);

    // The same under a policy in audit mode: the built-in rule still blocks.
    let out = lab.attack("cg-procs-audit", "watch", &["write-str", procs.to_str().unwrap(), me]);
    assert_stopped(&out, &files);
    assert_builtin_open_deny(&lab.d, "cg-procs-audit", &procs, &files);

    // Attacker: rewrites a control file of its own trajectory cgroup.
    let own = trajectory_cgroup(&lab.d, "cg-own").join("cgroup.max.depth");
    let out = lab.attack("cg-own", "test", &["write-str", own.to_str().unwrap(), "0"]);
    assert_stopped(&out, &files);
    assert_builtin_open_deny(&lab.d, "cg-own", &own, &files);

    // Attacker: clone3(CLONE_INTO_CGROUP) with a read-only descriptor of the
    // root cgroup: the child would start outside the trajectory.
    let marker = lab.ws.join("out/escaped");
    let out = lab.attack("cg-clone", "test", &["clone-into-cgroup", root.to_str().unwrap(), marker.to_str().unwrap()]);
    let escape = lab.protection("cgroup-escape");
    assert_stopped(&out, &escape);
    assert!(!marker.exists(), "a child started in the root cgroup: {:?}", std::fs::read_to_string(&marker));
    let r = assert_tamper_record(&lab.d, "cg-clone", "clone_into_cgroup", &escape);
    assert_eq!(r["arg"].as_u64().unwrap() & 0x2_0000_0000, 0x2_0000_0000, "{r}");

    // Attacker: creates a cgroup below its own. BPF LSM refuses it; the
    // fallback has no hook that can (the new cgroup is still unusable to
    // it: cgroup.procs writes and clone3 into it are stopped above).
    let inner = trajectory_cgroup(&lab.d, "cg-mkdir").join("inner");
    let out = lab.attack("cg-mkdir", "test", &["mkdir", inner.to_str().unwrap()]);
    match lab.protection("cgroup-mkdir").as_str() {
        "lsm-deny" => {
            assert_stopped(&out, "lsm-deny");
            assert!(!inner.exists());
            // `path_mkdir` judges the new directory as a write of a
            // protected path and refuses first (an `open` record of the
            // operation); `inode_mkdir` would otherwise (a `tamper` record).
            let recs = lab.d.trajectory("cg-mkdir");
            let by_path = of_kind(&recs, "open")
                .into_iter()
                .any(|r| r["syscall"] == "mkdir" && r["rule"] == "builtin:tamper" && r["mechanism"] == "lsm-deny");
            if !by_path {
                assert_tamper_record(&lab.d, "cg-mkdir", "cgroup_mkdir", "lsm-deny");
            }
        }
        // Landlock: the cgroup filesystem is write-protected, so the layer
        // grants no right to create there (not recorded).
        "landlock-deny" => {
            assert_eq!(out.status.code(), Some(3), "{out:?}");
            assert!(stdout(&out).contains("errno=13 "), "{out:?}");
            assert!(!inner.exists());
        }
        "unavailable" => {
            assert_eq!(stdout(&out).trim(), "ok", "known limit: mkdir works without BPF LSM: {out:?}");
            assert!(tamper_records(&lab.d, "cg-mkdir").is_empty());
            let _ = std::fs::remove_dir(&inner);
        }
        other => panic!("cgroup-mkdir: unexpected mechanism {other}"),
    }
}

#[test]
fn the_daemons_files_are_read_only_to_an_agent() {
    let lab = Lab::new();
    let files = lab.file_mechanism();

    // Attacker: plants a policy that allows everything in the policy
    // directory (which its own policy allows writing to).
    let evil = lab.policies.join("evil.yaml");
    let out = lab.attack("plant-policy", "test", &["create", evil.to_str().unwrap()]);
    assert_stopped(&out, &files);
    assert_builtin_open_deny(&lab.d, "plant-policy", &evil, &files);
    if files == "landlock-deny" || files == "lsm-deny" {
        // Refused before anything was created (Landlock; `path_mknod`,
        // which an open with O_CREAT of a new file passes, under BPF LSM).
        assert!(!evil.exists(), "the planted policy was created");
    } else {
        // Known limit of the other two: O_CREAT has created the (empty)
        // file before the open was refused; nothing was written into it
        // (an empty policy file only makes reloads fail until removed).
        assert_eq!(std::fs::read_to_string(&evil).unwrap(), "", "content reached the planted policy");
        let _ = std::fs::remove_file(&evil);
    }

    // Attacker: appends a forged record to the daemon's event file.
    let out = lab.attack("forge-events", "test", &["write-str", lab.d.events.to_str().unwrap(), "{\"forged\":1}\n"]);
    assert_stopped(&out, &files);
    assert_builtin_open_deny(&lab.d, "forge-events", &lab.d.events, &files);
    // (The attacker's argv, in its exec record, carries the text too.)
    assert!(std::fs::read_to_string(&lab.d.events).unwrap().lines().all(|l| l != "{\"forged\":1}"));

    // Attacker: creates a file beside the control socket (e.g. to replace it).
    let beside = lab.d.socket.with_file_name("evil.sock");
    let out = lab.attack("ctl-dir", "test", &["create", beside.to_str().unwrap()]);
    assert_stopped(&out, &files);
    assert_builtin_open_deny(&lab.d, "ctl-dir", &beside, &files);

    // Attacker: opens the daemon's memory for writing.
    let mem = PathBuf::from(format!("/proc/{}/mem", lab.d.pid()));
    let out = lab.attack("daemon-mem", "test", &["write-str", mem.to_str().unwrap(), "x"]);
    assert_stopped(&out, &files);
    assert_builtin_open_deny(&lab.d, "daemon-mem", &mem, &files);
}

#[test]
fn the_bpf_syscall_is_refused_to_an_agent() {
    let lab = Lab::new();
    let mechanism = lab.protection("bpf");
    // Attacker: walks the map ids, the first step to rewriting the
    // trajectory map or detaching the programs, under an audit-mode policy.
    let out = lab.attack("bpf", "watch", &["bpf"]);
    assert_stopped(&out, &mechanism);
    let r = assert_tamper_record(&lab.d, "bpf", "bpf", &mechanism);
    assert_eq!(r["arg"], 12, "BPF_MAP_GET_NEXT_ID: {r}");
    assert_eq!(r["policy"], "watch", "{r}");
}

/// Signals to the daemon: refused with BPF LSM; without it, delivered
/// (status says `unavailable`; continuity keeps the enforcement).
#[test]
fn an_agent_cannot_signal_the_daemon_where_bpf_lsm_runs() {
    let lab = Lab::new();
    let mechanism = lab.protection("signals");
    let daemon = lab.d.pid().to_string();
    // SIGWINCH: ignored by the daemon, so harmless where it is delivered.
    let winch = libc::SIGWINCH.to_string();
    let out = lab.attack("winch-daemon", "test", &["signal", &daemon, &winch]);
    match mechanism.as_str() {
        "lsm-deny" => {
            assert_stopped(&out, "lsm-deny");
            let r = assert_tamper_record(&lab.d, "winch-daemon", "signal", "lsm-deny");
            assert_eq!(r["target_pid"].as_u64(), Some(u64::from(lab.d.pid() as u32)), "{r}");
            assert_eq!(r["arg"].as_u64(), Some(libc::SIGWINCH as u64), "{r}");
            // The attacks that matter: SIGKILL, SIGSTOP, SIGTERM.
            for sig in [libc::SIGKILL, libc::SIGSTOP, libc::SIGTERM] {
                let out = lab.attack(&format!("sig{sig}-daemon"), "test", &["signal", &daemon, &sig.to_string()]);
                assert_stopped(&out, "lsm-deny");
            }
            assert!(lab.d.status()["trajectories"].is_array(), "the daemon still answers");
            // Signal 0 delivers nothing and stays allowed; so do signals
            // to processes of the trajectory or outside it.
            let out = lab.attack("sig0-daemon", "test", &["signal", &daemon, "0"]);
            assert_eq!(stdout(&out).trim(), "ok", "{out:?}");
        }
        // The Landlock layer's scoped signals: refused before delivery,
        // whatever the signal; the refusal passes no hook that records it.
        "landlock-deny" => {
            assert_refused_eperm(&out);
            for sig in [libc::SIGKILL, libc::SIGSTOP, libc::SIGTERM] {
                let out = lab.attack(&format!("sig{sig}-daemon"), "test", &["signal", &daemon, &sig.to_string()]);
                assert_refused_eperm(&out);
            }
            assert!(lab.d.status()["trajectories"].is_array(), "the daemon still answers");
        }
        "unavailable" => {
            // Known limit: delivered, and not recorded.
            assert_eq!(stdout(&out).trim(), "ok", "{out:?}");
            // (6.1's Landlock, ABI 2, has no scoped signals either.)
            assert_ne!(lab.file_mechanism(), "lsm-deny", "only kernels without BPF LSM lack it");
        }
        other => panic!("unexpected mechanism {other} for signals"),
    }
    let mut outside = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let out = lab.attack("winch-outside", "test", &["signal", &outside.id().to_string(), &winch]);
    if mechanism == "landlock-deny" {
        // Scoped signals reach no process outside the trajectory.
        assert_refused_eperm(&out);
    } else {
        assert_eq!(stdout(&out).trim(), "ok", "signals to other processes are not tamper: {out:?}");
    }
    let _ = outside.kill();
    let _ = outside.wait();
}

#[test]
fn an_agent_cannot_ptrace_the_daemon_or_processes_outside_its_trajectory() {
    let lab = Lab::new();
    let mechanism = lab.protection("ptrace");
    let daemon = lab.d.pid().to_string();

    // Attacker: PTRACE_SEIZE on the daemon, and process_vm_readv of it.
    let out = lab.attack("seize-daemon", "test", &["ptrace-seize", &daemon]);
    assert_stopped(&out, &mechanism);
    let r = assert_tamper_record(&lab.d, "seize-daemon", "ptrace", &mechanism);
    assert_eq!(r["target_pid"].as_u64(), Some(u64::from(lab.d.pid() as u32)), "{r}");
    let out = lab.attack("vm-daemon", "test", &["vm-read", &daemon]);
    assert_stopped(&out, &mechanism);
    let op = if mechanism == "lsm-deny" { "ptrace" } else { "process_vm" };
    assert_tamper_record(&lab.d, "vm-daemon", op, &mechanism);

    // pidfd_open: harmless on its own (pidfd_getfd is the ptrace-checked
    // step); the kill fallback stops it at the daemon anyway.
    let out = lab.attack("pidfd-daemon", "test", &["pidfd-open", &daemon]);
    if mechanism == "kill" {
        assert_stopped(&out, "kill");
        assert_tamper_record(&lab.d, "pidfd-daemon", "pidfd_open", "kill");
    } else {
        assert_eq!(stdout(&out).trim(), "ok", "{out:?}");
    }

    // Attacker: PTRACE_SEIZE on another process outside the trajectory.
    let mut outside = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pid = outside.id().to_string();
    let out = lab.attack("seize-outside", "test", &["ptrace-seize", &pid]);
    match mechanism.as_str() {
        "lsm-deny" => {
            assert_stopped(&out, "lsm-deny");
            assert_tamper_record(&lab.d, "seize-outside", "ptrace", "lsm-deny");
        }
        // The Landlock layer refuses ptrace of any process outside the
        // agent's domain (not recorded).
        _ if lab.protection("landlock") == "landlock-deny" => assert_refused_eperm(&out),
        // Known limit: a tracepoint cannot look up another pid's cgroup, so
        // the fallback guards the daemon only.
        _ => {
            assert_eq!(stdout(&out).trim(), "ok", "{out:?}");
            assert!(tamper_records(&lab.d, "seize-outside").is_empty());
        }
    }
    let _ = outside.kill();
    let _ = outside.wait();

    // Tracing a process of its own trajectory stays allowed everywhere.
    let inside = format!("sleep 2 & exec '{}' ptrace-seize $!", attacker_bin().display());
    let out = lab.d.run_policy("seize-inside", "test", &lab.ws, &["sh", "-c", &inside]);
    assert_eq!(stdout(&out).trim(), "ok", "{out:?}");
    assert!(tamper_records(&lab.d, "seize-inside").is_empty());
}

#[test]
fn mounts_are_refused_so_no_bind_mount_can_alias_a_denied_path() {
    let lab = Lab::new();
    let mechanism = lab.protection("mount");
    let target = lab.ws.join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    // Attacker: root in its trajectory, bind-mounts the denied directory
    // elsewhere in a new mount namespace, so the secret's path becomes
    // <ws>/mnt/key, which no rule names.
    let secret = lab.ws.join("secret");
    let out = lab.attack("bind", "test", &["bind-read", secret.to_str().unwrap(), target.to_str().unwrap(), "key"]);
    assert!(!stdout(&out).contains("SECRET-CONTENT"), "the bind mount leaked the secret: {out:?}");
    assert_stopped(&out, &mechanism);
    assert_tamper_record(&lab.d, "bind", "mount", &mechanism);
}

/// The attacker's call failed with EPERM and it lived.
fn assert_refused_eperm(out: &Output) {
    assert_eq!(out.status.code(), Some(3), "expected a failed syscall: {out:?}");
    assert!(stdout(out).contains("errno=1 "), "expected EPERM: {out:?}");
}
