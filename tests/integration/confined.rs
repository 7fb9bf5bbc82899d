//! Starting a daemon the way `deploy/agent-monitor.service` does, which the
//! harness's `Daemon` cannot: under a capability bounding set with
//! `no_new_privs`, through an optional wrapper command (`strace`), with its
//! trajectory cgroups in a directory made for it as `Delegate=yes` gives
//! one. Also the unit's text, for the tests that read its settings. Shared
//! by `service.rs` here and the `deploy` test target.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{
    cgroup2_mount, free_port, metric_value, monitor_bin, remove_cgroup_tree, require_root, Workspace,
};

pub const UNIT: &str = include_str!("../../deploy/agent-monitor.service");

/// Values of `key=` lines in the unit, in order.
pub fn unit_values(key: &str) -> Vec<&'static str> {
    UNIT.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

/// Capability numbers (linux/capability.h) of the names the unit may use.
pub fn capability(name: &str) -> u32 {
    match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to the capability table of tests/integration/confined.rs"),
    }
}

/// The unit's `CapabilityBoundingSet=`, by name.
pub fn unit_capabilities() -> Vec<&'static str> {
    let sets = unit_values("CapabilityBoundingSet");
    assert_eq!(sets.len(), 1, "one CapabilityBoundingSet= line in the unit");
    sets[0].split_whitespace().collect()
}

/// A daemon started by [`Confined::start`]; SIGTERM, wait and cgroup
/// cleanup on drop.
pub struct Confined {
    child: Option<Child>,
    /// Started through a wrapper command, whose child is the daemon.
    wrapped: bool,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub metrics_port: u16,
    cgroup_parent: String,
    stderr: PathBuf,
}

impl Confined {
    /// `wrapper... agent-monitor daemon --policy-dir DIR ...` with the
    /// capability bounding set reduced to `caps` (when given) and
    /// `no_new_privs` set, and its trajectory cgroups in a directory made
    /// for it, as systemd does for the unit (Delegate=yes). Returns the
    /// daemon's stderr if it exits before its control socket appears.
    pub fn start(wrapper: &[OsString], caps: Option<&[&str]>, policy_dir: &Path) -> Result<Confined, String> {
        require_root();
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("ctl/control.sock");
        let stderr = dir.path().join("daemon.stderr");
        let metrics_port = free_port();
        // The layout of the unit: systemd creates the unit's cgroup (0755,
        // root's) and delegates it; trajectories go in a directory below.
        let unit_cgroup = format!("agent-monitor-ops-{}-{n}.service", std::process::id());
        std::fs::create_dir(cgroup2_mount().expect("cgroup2 mount").join(&unit_cgroup)).expect("unit cgroup");
        let cgroup_parent = format!("{unit_cgroup}/trajectories");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(monitor_bin());
                c
            }
            None => Command::new(monitor_bin()),
        };
        cmd.args(["daemon", "--events"])
            .arg(dir.path().join("events.jsonl"))
            .arg("--control-socket")
            .arg(&socket)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}"), "--cgroup-parent", &cgroup_parent])
            .arg("--policy-dir")
            .arg(policy_dir)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--stop-enforcement-on-exit")
            .env("AGENT_MONITOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        if let Some(caps) = caps {
            let keep: Vec<u32> = caps.iter().map(|c| capability(c)).collect();
            let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .expect("cap_last_cap")
                .trim()
                .parse()
                .expect("a number");
            // SAFETY: only prctl(2) calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    for cap in (0..=last).filter(|c| !keep.contains(c)) {
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    let clear_ambient = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
                    if libc::prctl(libc::PR_CAP_AMBIENT, clear_ambient, 0, 0, 0) != 0
                        || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn the daemon");
        let wrapped = !wrapper.is_empty();
        let mut d = Confined { child: Some(child), wrapped, _dir: dir, socket, metrics_port, cgroup_parent, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.socket.exists() {
                return Ok(d);
            }
            if d.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                d.child = None;
                return Err(d.stderr());
            }
            assert!(Instant::now() < deadline, "daemon not ready within 60 s:\n{}", d.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The daemon's pid: the child itself, or the wrapper's child.
    pub fn daemon_pid(&self) -> i32 {
        let child = self.child.as_ref().expect("running").id();
        if !self.wrapped {
            return child as i32;
        }
        std::fs::read_to_string(format!("/proc/{child}/task/{child}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the wrapper has started the daemon")
    }

    /// `agent-monitor run --policy P --workspace W -- cmd...`.
    pub fn run(&self, policy: &str, workspace: &Path, cmd: &[&str]) -> std::process::Output {
        Command::new(monitor_bin())
            .arg("run")
            .arg("--control-socket")
            .arg(&self.socket)
            .args(["--policy", policy, "--workspace"])
            .arg(workspace)
            .arg("--")
            .args(cmd)
            .output()
            .expect("spawn agent-monitor run")
    }

    pub fn status(&self) -> serde_json::Value {
        crate::harness::status(&self.socket)
    }

    pub fn metrics(&self) -> String {
        crate::harness::scrape(self.metrics_port)
    }

    /// Waits until `series` reaches `min` in the daemon's own scrape.
    pub fn wait_metric(&self, series: &str, min: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !metric_value(&self.metrics(), series).is_some_and(|v| v >= min) {
            assert!(Instant::now() < deadline, "{series} did not reach {min}; daemon log:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: a pid of our own child tree.
        unsafe { libc::kill(self.daemon_pid(), signal) };
    }

    /// SIGTERM to the daemon (not to a wrapper, which might detach and
    /// leave it running), then waits for the whole child to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let status = self.child.take().expect("running").wait().expect("wait");
        self.cleanup();
        status
    }

    /// The unit's cgroup and everything below it, processes included.
    fn cleanup(&self) {
        if let Some(root) = cgroup2_mount() {
            let parent = root.join(&self.cgroup_parent);
            remove_cgroup_tree(parent.parent().expect("the unit cgroup"));
        }
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        } else {
            self.cleanup();
        }
    }
}

/// A policy directory with `ops-test` (file `secret/` denied, network denied
/// but 127.0.0.1) and a workspace holding the secret. Tests connect to
/// 127.0.0.2 to see a denial: were it ever allowed, the connect would fail
/// with `ECONNREFUSED` on this machine instead of leaving it.
pub fn fixture() -> Workspace {
    let f = Workspace::new();
    f.write_policy(
        "ops-test",
        "name: ops-test\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\nrules:\n  file:\n    \
         - path: ${WORKSPACE}/secret/\n      action: deny\n  network:\n    - cidr: 127.0.0.1/32\n      action: allow\n",
    );
    f
}
