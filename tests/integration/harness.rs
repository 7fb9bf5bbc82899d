//! Starting daemons, running agents, reading the event stream.

use std::{
    net::TcpListener,
    os::unix::{fs::PermissionsExt, net::UnixStream, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// `agent-monitor`; `AGENT_MONITOR_BIN` overrides (VM guests).
pub fn monitor_bin() -> PathBuf {
    std::env::var_os("AGENT_MONITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_agent-monitor").into())
}

/// The daemon built with the previous pinned-map layout version (the
/// `agent-monitor-previous-layout` example, the upgrade test's older
/// build); `AGENT_MONITOR_PREVIOUS_BIN` overrides (VM guests).
pub fn previous_layout_bin() -> PathBuf {
    let path = std::env::var_os("AGENT_MONITOR_PREVIOUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| agent_bin().with_file_name("agent-monitor-previous-layout"));
    assert!(path.exists(), "{} not built: run the tests with `cargo xtask test`", path.display());
    path
}

/// The `test-agent` example; `TEST_AGENT_BIN` overrides (VM guests).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TEST_AGENT_BIN") {
        return p.into();
    }
    // Test executables live in target/<profile>/deps, examples beside it.
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe.parent().and_then(Path::parent).expect("target/<profile>").join("examples/test-agent");
    assert!(path.exists(), "{} not built: run the tests with `cargo xtask test`", path.display());
    path
}

/// The `attacker` example, beside `test-agent` (also in the VM guests).
pub fn attacker_bin() -> PathBuf {
    let path = agent_bin().with_file_name("attacker");
    assert!(path.exists(), "{} not built: run the tests with `cargo xtask test`", path.display());
    path
}

pub fn require_root() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "integration tests load eBPF programs and create cgroups: run them as root (`cargo xtask test`)"
    );
}

/// Skips the calling test because the kernel lacks an optional feature:
/// prints `SKIP: reason` and appends `test::name: reason` to
/// `$AGENT_MONITOR_SKIP_FILE`, which `cargo xtask test` and the VM runner
/// count per kernel (docs/testing.md). The caller returns right after. Never
/// for a missing privilege or a broken setup: those fail.
#[allow(dead_code)] // for tests of optional kernel features; none yet
pub fn skip(reason: &str) {
    use std::io::Write;
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("unknown").to_owned();
    eprintln!("SKIP: {reason}");
    if let Some(path) = std::env::var_os("AGENT_MONITOR_SKIP_FILE") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open the skip file");
        writeln!(f, "{test}: {reason}").expect("write the skip file");
    }
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// How long a wait for the daemon may take before the test fails as hung.
/// Generous: only a hang should reach it, and under TCG in the VM matrix a
/// debug-build daemon works through a flood of records slowly.
pub const HANG_GUARD_SECS: u64 = 90;

/// What the secret of a [`Workspace`] holds: the tests look for
/// `SECRET-CONTENT` in an agent's output to tell whether it leaked.
const SECRET_CONTENT: &str = "SECRET-CONTENT\n";

/// Where test daemons keep their sockets, state and event files.
pub const DAEMON_DIRS: &str = "/run/agent-monitor-tests";

/// A policy directory and a workspace in a temporary directory; the
/// workspace holds the secret `secret/key` that the tests' policies deny.
/// Paths are canonical, as the kernel reports the files it judged.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// `dir`, canonical.
    pub root: PathBuf,
    pub policies: PathBuf,
    pub ws: PathBuf,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().unwrap();
        let policies = root.join("policies");
        let ws = root.join("ws");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::create_dir_all(ws.join("secret")).unwrap();
        // Where agents create files: the workspace itself holds a denied
        // directory, so the Landlock layer refuses new entries directly in
        // it (`docs/security.md`); `out/` has no rule below it.
        std::fs::create_dir_all(ws.join("out")).unwrap();
        std::fs::write(ws.join("secret/key"), SECRET_CONTENT).unwrap();
        Workspace { dir, root, policies, ws }
    }

    /// Adds `bin/forbidden` to the workspace, for the exec rules to deny:
    /// a real ELF binary (in the VM guests /bin/true is busybox, which would
    /// not run under another name), the test agent, run as `forbidden sleep 0`.
    pub fn with_forbidden_binary(self) -> Workspace {
        let bin = self.ws.join("bin/forbidden");
        std::fs::create_dir_all(self.ws.join("bin")).unwrap();
        std::fs::copy(agent_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// The secret, `ws/secret/key`.
    pub fn secret(&self) -> PathBuf {
        self.ws.join("secret/key")
    }

    /// Writes the policy file `<name>.yaml`.
    pub fn write_policy(&self, name: &str, yaml: &str) {
        std::fs::write(self.policies.join(format!("{name}.yaml")), yaml).unwrap();
    }

    /// The policy directory, as a daemon argument.
    pub fn policy_dir(&self) -> &str {
        self.policies.to_str().unwrap()
    }

    /// A daemon of this policy directory ([`Daemon::start_with`]).
    pub fn daemon(&self) -> Daemon {
        Daemon::start_with(&["--policy-dir", self.policy_dir()])
    }
}

pub struct Daemon {
    child: Option<Child>,
    /// The executable the next (re)start runs.
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub events: PathBuf,
    pub metrics_port: u16,
    pub cgroup_parent: String,
    stderr: PathBuf,
    /// `--stop-enforcement-on-exit` was given.
    stops_enforcement: bool,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    /// A daemon that ends enforcement when it stops (`--stop-enforcement-on-exit`),
    /// as every test but the continuity ones wants: nothing it pinned
    /// outlives the test.
    pub fn start_with(extra: &[&str]) -> Daemon {
        Self::start_inner(monitor_bin(), extra, true)
    }

    /// A daemon with the default behaviour: its pins, and so enforcement,
    /// outlive it, and the next daemon resumes its trajectories.
    pub fn start_keeping(extra: &[&str]) -> Daemon {
        Self::start_inner(monitor_bin(), extra, false)
    }

    /// [`Daemon::start_keeping`] with another build of the daemon.
    pub fn start_keeping_build(bin: PathBuf, extra: &[&str]) -> Daemon {
        Self::start_inner(bin, extra, false)
    }

    fn start_inner(bin: PathBuf, extra: &[&str], stops_enforcement: bool) -> Daemon {
        require_root();
        // Not under /tmp: the daemon's files are write-protected from every
        // trajectory, and the Landlock layer refuses creating entries in a
        // directory that holds a protected one (`docs/security.md`), so a
        // daemon directory in /tmp would leave agents no new file there.
        std::fs::create_dir_all(DAEMON_DIRS).expect("daemon directory base");
        let dir = tempfile::tempdir_in(DAEMON_DIRS).expect("tempdir");
        let socket = dir.path().join("ctl/control.sock");
        let events = dir.path().join("events.jsonl");
        let stderr = dir.path().join("daemon.stderr");
        let metrics_port = free_port();
        let cgroup_parent = unique("agent-monitor-test");
        let mut d =
            Daemon { child: None, bin, dir, socket, events, metrics_port, cgroup_parent, stderr, stops_enforcement };
        d.spawn(extra);
        d
    }

    fn spawn(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["daemon", "--events"])
            .arg(&self.events)
            .arg("--control-socket")
            .arg(&self.socket)
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.metrics_port)])
            .args(["--cgroup-parent", &self.cgroup_parent])
            .arg("--state-dir")
            .arg(self.dir.path().join("state"));
        if self.stops_enforcement {
            cmd.arg("--stop-enforcement-on-exit");
        }
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr).expect("stderr file");
        writeln!(log, "--- daemon start {} {extra:?}", self.bin.display()).expect("stderr file");
        let child = cmd
            .args(extra)
            .env("AGENT_MONITOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent-monitor daemon");
        self.child = Some(child);
        self.wait_ready();
    }

    /// SIGKILLs the daemon (no chance to clean up: as an OOM kill or a
    /// crash) and returns once it is dead.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().expect("wait daemon");
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts the daemon again with the same files, cgroup parent and
    /// state directory; `stops_enforcement` as for the first start.
    pub fn restart(&mut self, extra: &[&str], stops_enforcement: bool) {
        assert!(self.child.is_none(), "kill or stop the daemon first");
        self.stops_enforcement = stops_enforcement;
        self.spawn(extra);
    }

    /// Starts this build of the daemon (the current `agent-monitor`) with
    /// the same files, cgroup parent and state directory, as a package
    /// upgrade does once the older build has stopped.
    pub fn upgrade(&mut self, extra: &[&str], stops_enforcement: bool) {
        self.bin = monitor_bin();
        self.restart(extra, stops_enforcement);
    }

    /// The daemon's `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The bpffs directory of this daemon's pins.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir_of(&self.cgroup_parent)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(HANG_GUARD_SECS);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited during startup ({status}):\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon not ready within {HANG_GUARD_SECS} s:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the daemon's log contains `needle`. A line logged after
    /// the daemon has published a record may reach the log after the record
    /// reaches the sink, so a test that has seen the record waits for the
    /// line rather than reading the log once.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(HANG_GUARD_SECS);
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < deadline, "{needle:?} not logged within {HANG_GUARD_SECS} s:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `agent-monitor run [--trajectory id] -- cmd...`, waited for.
    pub fn run(&self, trajectory: Option<&str>, cmd: &[&str]) -> Output {
        let mut c = Command::new(monitor_bin());
        c.arg("run").arg("--control-socket").arg(&self.socket);
        if let Some(t) = trajectory {
            c.args(["--trajectory", t]);
        }
        c.arg("--").args(cmd).output().expect("spawn agent-monitor run")
    }

    /// `agent-monitor run --policy P --workspace W [--trajectory id] -- cmd...`.
    pub fn run_policy(&self, trajectory: &str, policy: &str, workspace: &Path, cmd: &[&str]) -> Output {
        self.run_policy_cmd(trajectory, policy, workspace, cmd).output().expect("spawn agent-monitor run")
    }

    /// The `run` command of [`Self::run_policy`], for spawning.
    pub fn run_policy_cmd(&self, trajectory: &str, policy: &str, workspace: &Path, cmd: &[&str]) -> Command {
        let mut c = Command::new(monitor_bin());
        c.arg("run").arg("--control-socket").arg(&self.socket);
        c.args(["--trajectory", trajectory, "--policy", policy, "--workspace"]).arg(workspace);
        c.arg("--").args(cmd);
        c
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// `status --json` of this daemon.
    pub fn status(&self) -> Value {
        status(&self.socket)
    }

    /// The mechanism `status` reports for the rules of `class` (`file`,
    /// `exec`, `network`).
    pub fn enforcement(&self, class: &str) -> String {
        self.status()["enforcement"][class].as_str().unwrap().to_owned()
    }

    /// The mechanism `status` reports for the protection `name`.
    pub fn protection(&self, name: &str) -> String {
        let status = self.status();
        protection(&status, name)["mechanism"].as_str().unwrap_or_else(|| panic!("{name}: no mechanism")).to_owned()
    }

    /// Waits until a metric line `name{labels} value` has a value >= `min`.
    pub fn wait_metric(&self, series: &str, min: f64) {
        let deadline = Instant::now() + Duration::from_secs(HANG_GUARD_SECS);
        loop {
            if metric_value(&self.metrics(), series).is_some_and(|v| v >= min) {
                return;
            }
            if Instant::now() > deadline {
                panic!("{series} did not reach {min} within {HANG_GUARD_SECS} s; daemon log:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// All complete records so far (a line the sink is still writing, with
    /// no newline yet, is left for the next read).
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid JSON line {l:?}: {e}")))
            .collect()
    }

    /// Records of one trajectory, once its `trajectory_end` has been written.
    pub fn trajectory(&self, id: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(HANG_GUARD_SECS);
        loop {
            let recs: Vec<Value> = self.records().into_iter().filter(|r| r["trajectory"] == id).collect();
            if recs.iter().any(|r| r["kind"] == "trajectory_end") {
                return recs;
            }
            if Instant::now() > deadline {
                panic!(
                    "no trajectory_end for {id} within {HANG_GUARD_SECS} s; have {} records; daemon log:\n{}",
                    recs.len(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        scrape(self.metrics_port)
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait daemon");
        self.cleanup_cgroups();
        status
    }

    /// Removes whatever pins a daemon that did not stop enforcement left.
    fn cleanup_pins(&self) {
        let dir = self.pin_dir();
        if dir.exists() {
            remove_pins(&dir);
        }
    }

    fn cleanup_cgroups(&self) {
        if let Some(root) = cgroup2_mount() {
            let parent = root.join(&self.cgroup_parent);
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl Drop for Daemon {
    /// Whatever the test did or where it failed: the daemon stops, and what
    /// it left in the kernel and the cgroup tree (an agent still running in
    /// a trajectory the daemon did not end) is removed.
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if let Some(root) = cgroup2_mount() {
            remove_cgroup_tree(&root.join(&self.cgroup_parent));
        }
        // The limits' cgroups in v1 hierarchies (hybrid hosts).
        for controller in ["memory", "pids", "cpu"] {
            if let Some(mount) = v1_mount(controller) {
                remove_cgroup_tree(&mount.join(&self.cgroup_parent));
            }
        }
        self.cleanup_pins();
    }
}

/// Kills every process in the cgroup `dir` and below, then removes the
/// cgroups, deepest first. Bounded: a cgroup that does not empty within a
/// few seconds is left and named on stderr.
pub fn remove_cgroup_tree(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    // cgroup.kill (Linux 5.14) kills the subtree atomically, including
    // processes forking meanwhile; before it, one SIGKILL per member.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: SIGKILL to a test cgroup's member; at worst a pid gone meanwhile.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::remove_dir(dir).is_err() && dir.exists() {
        if Instant::now() > deadline {
            eprintln!("cannot remove the test cgroup {}", dir.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bpffs directory of the pins of a daemon with `--cgroup-parent
/// parent` and the default `--pin-dir`.
pub fn pin_dir_of(parent: &str) -> PathBuf {
    Path::new(monitor::defaults::DEFAULT_PIN_DIR).join(parent)
}

/// `rm -r` on bpffs (links first, so programs detach before their maps go).
pub fn remove_pins(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort_by_key(|p| !p.ends_with("links"));
    for p in entries {
        if p.is_dir() {
            remove_pins(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// `GET /metrics` on a loopback port: the raw HTTP response.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Value of one series (exact `name{labels}` text) in a metrics scrape.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The mount point of the cgroup v1 hierarchy with `controller`.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split_whitespace();
        (post.next()? == "cgroup" && post.nth(1)?.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
    })
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    monitor::cgroup::Hierarchy::discover().ok().map(|h| h.mount_point)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `status --json` of the daemon at control socket `socket`.
pub fn status(socket: &Path) -> Value {
    let out = Command::new(monitor_bin())
        .args(["status", "--json", "--control-socket"])
        .arg(socket)
        .output()
        .expect("spawn agent-monitor status");
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// The row of protection `name` in a `status --json`.
pub fn protection<'a>(status: &'a Value, name: &str) -> &'a Value {
    let rows = status["protections"].as_array().unwrap();
    rows.iter()
        .find(|p| p["protection"] == name)
        .unwrap_or_else(|| panic!("no protection {name} in status: {status:#}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a denied operation was stopped by `mechanism`, as the process
/// (the test agent or the attacker) saw it.
pub fn assert_stopped(out: &Output, mechanism: &str) {
    match mechanism {
        "lsm-deny" => {
            assert_eq!(out.status.code(), Some(3), "expected a failed syscall: {out:?}");
            assert!(stdout(out).contains("errno=1 "), "expected EPERM: {out:?}");
        }
        "landlock-deny" => {
            assert_eq!(out.status.code(), Some(3), "expected a failed syscall: {out:?}");
            assert!(stdout(out).contains("errno=13 "), "expected EACCES: {out:?}");
        }
        "kill" => {
            assert_eq!(out.status.signal(), Some(libc::SIGKILL), "expected SIGKILL: {out:?}");
            assert!(!stdout(out).contains("ok"), "the killed process must not report success: {out:?}");
        }
        other => panic!("not enforced on this kernel: mechanism {other}"),
    }
}

/// The record of the open of `path` (resolved).
pub fn open_of<'a>(recs: &'a [Value], path: &Path) -> &'a Value {
    of_kind(recs, "open")
        .into_iter()
        .find(|r| r["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("no open record of {}: {recs:#?}", path.display()))
}

/// Records of `kind`.
pub fn of_kind<'a>(recs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["kind"] == kind).collect()
}

/// Asserts `seq` runs 1..=n in file order, and the stream is framed by
/// `trajectory_start` and `trajectory_end`.
pub fn assert_well_formed(recs: &[Value]) {
    assert!(!recs.is_empty());
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], (i + 1) as u64, "seq gap or reorder at index {i}: {r}");
        assert_eq!(r["v"], 1);
        assert!(r["ts"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 30), "ts {r}");
    }
    assert_eq!(recs[0]["kind"], "trajectory_start");
    assert_eq!(recs.last().unwrap()["kind"], "trajectory_end");
    assert_eq!(of_kind(recs, "trajectory_end").len(), 1);
}
