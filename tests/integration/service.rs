//! The daemon as `deploy/agent-monitor.service` runs it: with only the
//! unit's capability bounding set and `no_new_privs`. It must start, report
//! the same enforcement as a daemon with every capability (on BPF LSM
//! kernels too: the VM matrix runs this), and block what the policy denies.
//! The unit's fine-grained capabilities (all but `CAP_SYS_ADMIN`) must each
//! be needed, and must suffice on kernels that let `CAP_PERFMON` open
//! perf events; Debian's kernels (`perf_event_paranoid` 3) do not.
//!
//! Also the launcher the other operations tests share: [`Confined`] starts
//! a daemon through an optional wrapper command (`strace`) and under an
//! optional capability set, which the harness's `Daemon` cannot do.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{agent_bin, cgroup2_mount, free_port, metric_value, monitor_bin, require_root, Daemon};

pub const UNIT: &str = include_str!("../../deploy/agent-monitor.service");

/// Values of `key=` lines in the unit, in order.
pub fn unit_values(key: &str) -> Vec<&'static str> {
    UNIT.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

/// Capability numbers (linux/capability.h) of the names the unit may use.
fn capability(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to the capability table of tests/integration/service.rs"),
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
        let out = Command::new(monitor_bin())
            .args(["status", "--json", "--control-socket"])
            .arg(&self.socket)
            .output()
            .expect("spawn agent-monitor status");
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics endpoint");
        write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
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

    fn cleanup(&self) {
        if let Some(root) = cgroup2_mount() {
            let parent = root.join(&self.cgroup_parent);
            for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
            let _ = std::fs::remove_dir(&parent);
            let _ = std::fs::remove_dir(parent.parent().expect("the unit cgroup"));
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
/// but loopback) and a workspace holding the secret.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub policies: PathBuf,
    pub ws: PathBuf,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().unwrap();
    let (policies, ws) = (root.join("policies"), root.join("ws"));
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::create_dir_all(ws.join("secret")).unwrap();
    std::fs::write(ws.join("secret/key"), "SECRET\n").unwrap();
    std::fs::write(
        policies.join("ops-test.yaml"),
        "name: ops-test\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\nrules:\n  file:\n    \
         - path: ${WORKSPACE}/secret/\n      action: deny\n  network:\n    - cidr: 127.0.0.0/8\n      action: allow\n",
    )
    .unwrap();
    Fixture { _dir: dir, policies, ws }
}

/// `CapEff` and `NoNewPrivs` of a process, from /proc.
fn privileges(pid: i32) -> (u64, bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap().to_owned();
    (u64::from_str_radix(&field("CapEff:"), 16).unwrap(), field("NoNewPrivs:") == "1")
}

#[test]
fn the_daemon_enforces_with_only_the_units_capabilities() {
    let caps = unit_capabilities();
    let f = fixture();
    let reference = Daemon::start_with(&["--policy-dir", f.policies.to_str().unwrap()]);
    let d = Confined::start(&[], Some(&caps), &f.policies).unwrap_or_else(|log| panic!("did not start:\n{log}"));

    let (effective, no_new_privs) = privileges(d.daemon_pid());
    let expected = caps.iter().fold(0u64, |m, c| m | 1 << capability(c));
    assert_eq!(effective, expected, "the daemon runs with exactly {caps:?}");
    assert!(no_new_privs);

    // Nothing is lost against a daemon with every capability: the same
    // mechanism for every hook and class (lsm-deny included where the
    // kernel has BPF LSM).
    let (full, confined) = (reference.status(), d.status());
    assert!(full["enforcement"]["network"].is_string(), "{full}");
    assert_eq!(confined["enforcement"], full["enforcement"], "{}", d.stderr());
    let mechanisms = |s: &serde_json::Value| -> Vec<(String, String)> {
        s["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["hook"].as_str().unwrap().to_owned(), h["mechanism"].as_str().unwrap().to_owned()))
            .collect()
    };
    assert_eq!(mechanisms(&confined), mechanisms(&full));

    // And it blocks.
    let agent = agent_bin();
    let agent = agent.to_str().unwrap();
    let out = d.run("ops-test", &f.ws, &[agent, "connect", "192.0.2.1", "80"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("errno=1 "), "EPERM: {out:?}");
    let key = f.ws.join("secret/key");
    let out = d.run("ops-test", &f.ws, &[agent, "open", key.to_str().unwrap()]);
    assert!(!out.status.success(), "the secret opened: {out:?}");
    let file_mechanism = confined["enforcement"]["file"].as_str().unwrap().to_owned();
    d.wait_metric(r#"agent_monitor_denials_total{class="network",mechanism="cgroup-deny",policy="ops-test"}"#, 1.0);
    d.wait_metric(
        &format!(r#"agent_monitor_denials_total{{class="file",mechanism="{file_mechanism}",policy="ops-test"}}"#),
        1.0,
    );
}

/// The unit's capabilities but `CAP_SYS_ADMIN`.
fn fine_grained() -> Vec<&'static str> {
    let caps: Vec<&str> = unit_capabilities().into_iter().filter(|c| *c != "CAP_SYS_ADMIN").collect();
    assert_eq!(caps.len(), 3, "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN: {caps:?}");
    caps
}

fn perf_event_paranoid() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap().trim().parse().unwrap()
}

/// The error of a daemon denied `perf_event_open` for a tracepoint.
const PERF_EVENT_EACCES: &str = "`perf_event_open_trace_point` failed: Permission denied";

#[test]
fn without_cap_sys_admin_the_daemon_enforces_unless_the_kernel_restricts_perf_events() {
    let f = fixture();
    let paranoid = perf_event_paranoid();
    match Confined::start(&[], Some(&fine_grained()), &f.policies) {
        Ok(d) => {
            let agent = agent_bin();
            let out = d.run("ops-test", &f.ws, &[agent.to_str().unwrap(), "connect", "192.0.2.1", "80"]);
            assert_eq!(out.status.code(), Some(3), "{out:?}");
            d.wait_metric(
                r#"agent_monitor_denials_total{class="network",mechanism="cgroup-deny",policy="ops-test"}"#,
                1.0,
            );
        }
        // Debian's patch: above 2, perf_event_open needs CAP_SYS_ADMIN.
        Err(log) if paranoid > 2 => assert!(log.contains(PERF_EVENT_EACCES), "perf_event_paranoid {paranoid}: {log}"),
        Err(log) => {
            panic!("perf_event_paranoid {paranoid}, yet the daemon needs more than {:?}:\n{log}", fine_grained())
        }
    }
}

#[test]
fn without_any_one_fine_grained_capability_the_daemon_does_not_start() {
    let caps = fine_grained();
    let f = fixture();
    for missing in &caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != missing).collect();
        match Confined::start(&[], Some(&fewer), &f.policies) {
            Ok(d) => panic!("started without {missing}; the unit lists more than it needs:\n{}", d.stderr()),
            Err(log) => assert!(
                log.contains("Operation not permitted") || log.contains(PERF_EVENT_EACCES),
                "without {missing}: {log}"
            ),
        }
    }
}
