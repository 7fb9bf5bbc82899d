//! Continuity: the kernel keeps enforcing while no daemon runs, and the
//! next daemon resumes the trajectories' streams without reusing a `seq`
//! (docs/security.md#continuity).

use std::{
    collections::HashSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    agent_bin, metric_value, of_kind, previous_layout_bin, protection, Daemon, Workspace, HANG_GUARD_SECS,
};

/// A workspace with the secret and policy `test`, which denies it and
/// connects to a listener of the test's; the agent's progress and stop files.
struct Lab {
    w: Workspace,
    /// Nothing may ever reach it: policy `test` denies connects to its port.
    listener: TcpListener,
    port: u16,
    progress: PathBuf,
    stop: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let w = Workspace::new();
        w.write_policy(
            "test",
            &format!(
                "name: test\nmode: enforce\ndefaults:\n  file: allow\n  exec: allow\n  network: allow\nrules:\n  file:\n    \
                 - path: ${{WORKSPACE}}/secret/\n      action: deny\n  network:\n    - cidr: 127.0.0.1/32\n      \
                 ports: [\"{port}\"]\n      action: deny\n"
            ),
        );
        // In `out/`: the agent may create files there (not beside `secret/`).
        Lab { progress: w.ws.join("out/progress"), stop: w.ws.join("out/stop"), w, listener, port }
    }

    fn policy_dir(&self) -> &str {
        self.w.policy_dir()
    }

    /// Starts trajectory `id` under policy `test`: the agent retries the
    /// denied connect and the denied open until [`Lab::stop_agent`].
    fn retry_denied(&self, d: &Daemon, id: &str) -> Agent {
        let (agent, secret, port) = (agent_bin(), self.w.secret(), self.port.to_string());
        let args = [
            agent.to_str().unwrap(),
            "retry-denied",
            "127.0.0.1",
            &port,
            secret.to_str().unwrap(),
            self.stop.to_str().unwrap(),
            self.progress.to_str().unwrap(),
        ];
        Agent(d.run_policy_cmd(id, "test", &self.w.ws, &args).stdout(Stdio::null()).spawn().expect("spawn run"))
    }

    /// A daemon that keeps its pins, and trajectory `id`'s agent once it
    /// has made 10 attempts under that daemon.
    fn start_keeping(&self, id: &str) -> (Daemon, Agent) {
        let d = Daemon::start_keeping(&["--policy-dir", self.policy_dir()]);
        let mut agent = self.retry_denied(&d, id);
        self.wait_rounds(10, &mut agent, "under the first daemon");
        (d, agent)
    }

    /// Waits until the agent has made `more` further attempts.
    fn wait_rounds(&self, more: u64, agent: &mut Child, what: &str) -> [u64; 3] {
        let start = progress(&self.progress)[0];
        let deadline = Instant::now() + Duration::from_secs(HANG_GUARD_SECS);
        loop {
            let p = progress(&self.progress);
            if p[0] >= start + more {
                return p;
            }
            assert!(agent.try_wait().unwrap().is_none(), "the agent died {what}: {p:?}");
            assert!(Instant::now() < deadline, "the agent made no {more} attempts {what} within {HANG_GUARD_SECS} s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tells the agent to stop, asserts it exits cleanly, and returns its
    /// final progress.
    fn stop_agent(&self, mut agent: Agent) -> [u64; 3] {
        std::fs::write(&self.stop, "").unwrap();
        let exit = agent.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
        progress(&self.progress)
    }

    /// Asserts that none of the agent's attempts got through: no connect,
    /// no read of the secret, nothing reached the listener.
    fn assert_nothing_got_through(&self, [rounds, connected, read]: [u64; 3]) {
        assert_eq!(connected, 0, "connects to the denied address succeeded in {connected} of {rounds} attempts");
        assert_eq!(read, 0, "the denied file was read in {read} of {rounds} attempts");
        self.listener.set_nonblocking(true).unwrap();
        assert!(self.listener.accept().is_err(), "a connection reached the denied port");
    }
}

/// "ROUNDS CONNECTED READ" of the agent's loop; zeros before its first
/// round. The agent rewrites the file in place every round: a read between
/// its truncate and its write finds the file empty and is retried (taken
/// as zero, it made `wait_rounds` return at once and the test stop the
/// agent before the rounds it meant to wait for).
fn progress(path: &Path) -> [u64; 3] {
    for _ in 0..1000 {
        let Ok(text) = std::fs::read_to_string(path) else { return [0; 3] };
        let v: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        if let [a, b, c] = v[..] {
            return [a, b, c];
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{} never holds three numbers", path.display())
}

/// The agent's process, killed if the test fails before it stops it.
struct Agent(Child);

impl std::ops::Deref for Agent {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The agent retries a denied connect and a denied open in a tight loop.
/// The daemon is SIGKILLed twice during the loop; the first restart finds
/// the pins of its own layout and reuses them, the second runs with
/// another ring buffer size, which is another map layout, so it builds
/// new maps, re-registers the trajectory and only then removes the old
/// pins. No attempt succeeds, before, between or after; the stream
/// continues after each restart with a `gap` record, and no `seq` is used
/// twice.
#[test]
fn enforcement_survives_sigkill_and_restarts_and_the_stream_resumes() {
    let l = Lab::new();
    let mut d = Daemon::start_keeping(&["--policy-dir", l.policy_dir()]);
    let status = d.status();
    let continuity = protection(&status, "continuity");
    assert_eq!(continuity["mechanism"], "pinned", "{continuity}");

    let mut agent = l.retry_denied(&d, "cont-1");
    l.wait_rounds(20, &mut agent, "under the first daemon");

    d.kill();
    assert!(d.pin_dir().exists(), "the pins outlive the killed daemon");
    l.wait_rounds(20, &mut agent, "with no daemon (first kill)");
    d.restart(&["--policy-dir", l.policy_dir()], false);
    let status = d.status();
    let listed = status["trajectories"].as_array().unwrap();
    assert!(listed.iter().any(|t| t["trajectory"] == "cont-1"), "resumed: {status}");
    l.wait_rounds(20, &mut agent, "under the second daemon");

    d.kill();
    l.wait_rounds(20, &mut agent, "with no daemon (second kill)");
    // Another ring buffer size: another layout.
    d.restart(&["--policy-dir", l.policy_dir(), "--ringbuf-size", "8388608"], true);
    // The control socket accepts before the take-over is complete; status
    // is answered only after it (the old pins are retired by then).
    d.status();
    l.wait_rounds(20, &mut agent, "under the third daemon");
    let layouts: Vec<PathBuf> = std::fs::read_dir(d.pin_dir()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(layouts.len(), 1, "the old layout's pins are gone once the new one runs: {layouts:?}");

    let counts = l.stop_agent(agent);
    let rounds = counts[0];
    assert!(rounds >= 100, "{rounds} attempts");
    l.assert_nothing_got_through(counts);

    let recs = d.trajectory("cont-1");
    crate::schema::assert_matches_schema(&recs);
    let mut seen = HashSet::new();
    let mut last = 0;
    for r in &recs {
        let seq = r["seq"].as_u64().unwrap();
        assert!(seen.insert(seq), "seq {seq} used twice: {r}");
        assert!(seq > last, "seq goes back from {last} to {seq}: {r}");
        last = seq;
    }
    assert_eq!(of_kind(&recs, "trajectory_start").len(), 1);
    assert_eq!(of_kind(&recs, "trajectory_end").len(), 1);
    let gaps: Vec<&Value> = of_kind(&recs, "gap").into_iter().filter(|g| g["reason"] == "daemon_restart").collect();
    assert_eq!(gaps.len(), 2, "one gap per restart: {gaps:?}");
    for g in &gaps {
        assert!(g["down_ns"].as_u64().is_some_and(|n| n > 0), "{g}");
        assert!(g["lost"].as_u64().is_some(), "{g}");
    }
    // Every seq number up to each gap is in the file or counted as one the
    // killed daemon did not write.
    let mut from = 0;
    for g in &gaps {
        let at = g["seq"].as_u64().unwrap();
        let written = recs.iter().filter(|r| (from + 1..at).contains(&r["seq"].as_u64().unwrap())).count() as u64;
        let unwritten = g["unwritten"].as_u64().unwrap_or_else(|| panic!("no unwritten count: {g}"));
        assert_eq!(written + unwritten, at - from - 1, "seq {from} to {at}: {g}");
        from = at;
    }
    // The second restart changed the layout: what the kernel recorded into
    // the old ring while no daemon ran (20 rounds and more) cannot be
    // delivered, and is counted instead.
    assert!(gaps[1]["lost"].as_u64().unwrap() >= 20, "records left in the old layout's ring, counted: {}", gaps[1]);
    let series = "agent_monitor_events_lost_total{reason=\"layout_change\"}";
    let counted = metric_value(&d.metrics(), series).unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(counted as u64, gaps[1]["lost"].as_u64().unwrap(), "{series} counts what the gap reports");
    // Denials recorded after each restart, judged by the policy's rules.
    let denied_after = |gap: &Value| {
        let from = gap["seq"].as_u64().unwrap();
        recs.iter()
            .filter(|r| r["seq"].as_u64().unwrap() > from && r["decision"] == "deny" && r["kind"] == "connect")
            .count()
    };
    for g in &gaps {
        assert!(denied_after(g) > 0, "denied connects recorded after the restart at seq {}", g["seq"]);
    }
    let deny = of_kind(&recs, "connect").into_iter().rev().find(|r| r["decision"] == "deny").unwrap();
    assert_eq!(deny["policy"], "test");
    assert!(deny["rule"].as_str().unwrap().contains("test.yaml:"), "{deny}");

    assert!(d.stop().success());
    assert!(!d.pin_dir().exists(), "--stop-enforcement-on-exit removes the pins");
}

/// The default on a clean stop: the pins stay, the trajectory is not
/// ended, and the next daemon resumes it; once its cgroup empties while no
/// daemon runs, the next daemon closes it.
#[test]
fn a_clean_stop_keeps_enforcing_and_the_next_daemon_closes_what_ended_meanwhile() {
    let l = Lab::new();
    let (mut d, mut agent) = l.start_keeping("cont-2");
    assert!(d.stop().success());
    assert!(d.pin_dir().exists(), "a clean stop keeps the pins by default");
    assert!(
        !d.records().iter().any(|r| r["trajectory"] == "cont-2" && r["kind"] == "trajectory_end"),
        "the trajectory does not end with the daemon"
    );
    l.wait_rounds(20, &mut agent, "after a clean stop");
    let [rounds, connected, read] = l.stop_agent(agent);
    assert_eq!((connected, read), (0, 0), "of {rounds} attempts");
    // The cgroup emptied with no daemon running.
    d.restart(&["--policy-dir", l.policy_dir()], true);
    let recs = d.trajectory("cont-2");
    let end = of_kind(&recs, "trajectory_end")[0];
    assert_eq!(end["reason"], "exited", "{end}");
    let gap = of_kind(&recs, "gap").into_iter().find(|g| g["reason"] == "daemon_restart").expect("restart gap");
    assert!(gap["seq"].as_u64() < end["seq"].as_u64());
}

/// `<id>.json` in the daemon's state directory.
fn state_file(d: &Daemon, id: &str) -> PathBuf {
    let dirs = std::fs::read_dir(d.state_dir()).unwrap().flatten().map(|e| e.path());
    dirs.map(|dir| dir.join(format!("{id}.json"))).find(|p| p.exists()).expect("state file")
}

/// A state file the restarted daemon cannot read (written by another
/// release of agent-monitor, torn, edited by hand) must not end the
/// enforcement of its trajectory: the daemon keeps the previous binding,
/// both on the same layout (a binding no readable state explains would
/// otherwise be removed) and across a layout change (the previous
/// layout's pins would otherwise go), says so in `status`, and names the
/// file in its log. The trajectory's stream is not resumed.
#[test]
fn an_unreadable_state_file_keeps_its_trajectory_enforced() {
    let l = Lab::new();
    let (mut d, mut agent) = l.start_keeping("cont-3");

    d.kill();
    let json = state_file(&d, "cont-3");
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(text.contains(r#""format":1,"#), "{text}");
    std::fs::write(&json, text.replace(r#""format":1,"#, r#""format":99,"#)).unwrap();
    d.restart(&["--policy-dir", l.policy_dir()], false);
    let status = d.status();
    let continuity = protection(&status, "continuity");
    assert!(continuity["detail"].as_str().unwrap().contains("unreadable trajectory state"), "{continuity}");
    assert!(
        !status["trajectories"].as_array().unwrap().iter().any(|t| t["trajectory"] == "cont-3"),
        "not resumed: {status}"
    );
    let log = d.stderr();
    assert!(log.contains("state format 99") && log.contains(json.to_str().unwrap()), "{log}");
    let [rounds, connected, read] = l.wait_rounds(20, &mut agent, "with its state unreadable (same layout)");
    assert_eq!((connected, read), (0, 0), "successes in {rounds} attempts, same layout");

    d.kill();
    d.restart(&["--policy-dir", l.policy_dir(), "--ringbuf-size", "8388608"], true);
    d.status();
    let [rounds, connected, read] = l.wait_rounds(20, &mut agent, "with its state unreadable (another layout)");
    assert_eq!((connected, read), (0, 0), "successes in {rounds} attempts, another layout");
    let layouts = std::fs::read_dir(d.pin_dir()).unwrap().count();
    assert_eq!(layouts, 2, "the previous layout's pins stay while a state file is unreadable");

    l.assert_nothing_got_through(l.stop_agent(agent));
    assert!(d.stop().success());
    assert!(!d.pin_dir().exists(), "--stop-enforcement-on-exit removes the pins, the kept ones too");
}

/// The daemon's JSON sink thread, stopped by ptrace (that thread only: the
/// pipeline goes on numbering records and queueing them for it).
struct StoppedSink {
    tid: i32,
}

impl StoppedSink {
    fn stop(d: &Daemon) -> StoppedSink {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap();
        let tid = tasks
            .flatten()
            .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "sink-jsonl"))
            .and_then(|t| t.file_name().to_str()?.parse::<i32>().ok())
            .expect("the daemon's sink-jsonl thread");
        // SAFETY: plain ptrace requests on a thread id; no memory is passed.
        unsafe {
            assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0), 0, "{}", std::io::Error::last_os_error());
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0, "{}", std::io::Error::last_os_error());
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
            assert!(libc::WIFSTOPPED(status), "the sink thread stopped: {status:#x}");
        }
        StoppedSink { tid }
    }

    /// Lets the sink thread run again.
    fn resume(self) {
        // SAFETY: a plain ptrace request on the thread we stopped.
        unsafe { assert_eq!(libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0), 0) };
    }

    /// SIGKILLs the daemon; reaps the traced thread, without which the
    /// daemon's exit is never reported.
    fn kill_daemon(self, d: &mut Daemon) {
        // SAFETY: signals and waits on the daemon's own ids.
        unsafe {
            libc::kill(d.pid(), libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(self.tid, &mut status, libc::__WALL) == self.tid
                && !(libc::WIFEXITED(status) || libc::WIFSIGNALED(status))
            {}
        }
        d.kill();
    }
}

/// What a killed daemon had numbered and not written is counted, exactly:
/// the test stops the daemon's sink thread, so the pipeline numbers records
/// (and saves its progress past them) that never reach the events file, then
/// SIGKILLs the daemon. The next daemon's restart gap says how many in
/// `unwritten`: with the records in the file, every `seq` below the gap is
/// accounted for once. Without the count the gap has no `unwritten`.
#[test]
fn records_a_killed_daemon_numbered_but_did_not_write_are_counted() {
    let l = Lab::new();
    let (mut d, mut agent) = l.start_keeping("cont-4");
    // The sink thread is stopped wherever it happens to be. Stopped while
    // it holds a lock the pipeline needs too (the allocator's, in the
    // middle of a malloc), the pipeline stalls and numbers nothing: then
    // let it go and stop it again, until the pipeline numbers on.
    let mut tries = 0;
    let sink = loop {
        let sink = StoppedSink::stop(&d);
        let before = next_seq(&d, "cont-4");
        l.wait_rounds(10, &mut agent, "with the daemon's sink stopped");
        if next_seq(&d, "cont-4") >= before + 10 {
            break sink;
        }
        tries += 1;
        assert!(tries < 5, "the pipeline stalled each of {tries} times the sink thread was stopped");
        sink.resume();
        l.wait_rounds(5, &mut agent, "with the sink running again");
    };
    sink.kill_daemon(&mut d);
    d.restart(&["--policy-dir", l.policy_dir()], true);
    d.status();
    l.wait_rounds(5, &mut agent, "under the second daemon");
    l.stop_agent(agent);

    let recs = d.trajectory("cont-4");
    crate::schema::assert_matches_schema(&recs);
    let gap = of_kind(&recs, "gap").into_iter().find(|g| g["reason"] == "daemon_restart").expect("restart gap");
    let unwritten = gap["unwritten"].as_u64().unwrap_or_else(|| panic!("no unwritten count: {gap}"));
    // Ten rounds, a denied connect each at least, numbered while the sink
    // was stopped.
    assert!(unwritten >= 10, "{gap}");
    let gap_seq = gap["seq"].as_u64().unwrap();
    let before = recs.iter().filter(|r| r["seq"].as_u64().unwrap() < gap_seq).count() as u64;
    assert_eq!(before + unwritten, gap_seq - 1, "every seq below the gap is in the file or counted: {gap}");
    let series = "agent_monitor_events_lost_total{reason=\"daemon_killed\"}";
    let counted = metric_value(&d.metrics(), series).unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(counted as u64, unwritten, "{series}");
    assert!(d.stop().success());
}

/// The next `seq` the daemon's pipeline saved for `trajectory` (its
/// `<id>.seq` state file, below the daemon's state directory).
fn next_seq(d: &Daemon, trajectory: &str) -> u64 {
    fn find(dir: &std::path::Path, name: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(found) = find(&p, name) {
                    return Some(found);
                }
            } else if p.file_name().is_some_and(|f| f == name) {
                return Some(p);
            }
        }
        None
    }
    let path = find(&d.state_dir(), &format!("{trajectory}.seq")).expect("the trajectory's .seq state file");
    let bytes = std::fs::read(&path).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// The only directory under the daemon's pin directory: its layout's.
fn layout_dir(d: &Daemon) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(d.pin_dir()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(dirs.len(), 1, "one layout directory: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// An upgrade across a layout change, with two builds: the build before
/// this one (`agent-monitor-previous-layout`, pinning with the previous
/// layout version) runs a trajectory and stops the way a package upgrade
/// stops it (SIGTERM, pins kept); the current `agent-monitor` starts, finds
/// pins it must not reuse, builds its own maps, re-registers the
/// trajectory, and only then detaches the older build's programs. The
/// agent retries a denied connect and a denied open throughout: none
/// succeeds, and the stream goes on with one restart gap.
#[test]
fn an_upgrade_from_a_build_of_another_layout_hands_over_without_a_gap() {
    let l = Lab::new();
    let mut d = Daemon::start_keeping_build(previous_layout_bin(), &["--policy-dir", l.policy_dir()]);
    d.status();
    let old_layout = layout_dir(&d);
    let mut agent = l.retry_denied(&d, "upgrade-1");
    l.wait_rounds(20, &mut agent, "under the older build");

    assert!(d.stop().success());
    l.wait_rounds(20, &mut agent, "between the builds");
    d.upgrade(&["--policy-dir", l.policy_dir()], true);
    d.status();
    let new_layout = layout_dir(&d);
    assert_ne!(new_layout, old_layout, "the current build must not reuse the older build's maps");
    let status = d.status();
    assert!(
        status["trajectories"].as_array().unwrap().iter().any(|t| t["trajectory"] == "upgrade-1"),
        "the trajectory was handed over: {status}"
    );
    l.wait_rounds(20, &mut agent, "under the current build");

    let counts = l.stop_agent(agent);
    let rounds = counts[0];
    l.assert_nothing_got_through(counts);

    let recs = d.trajectory("upgrade-1");
    crate::schema::assert_matches_schema(&recs);
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq strictly increasing across the builds: {seqs:?}");
    let gaps: Vec<&Value> = of_kind(&recs, "gap").into_iter().filter(|g| g["reason"] == "daemon_restart").collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let from = gaps[0]["seq"].as_u64().unwrap();
    let denied = |after: bool| {
        recs.iter()
            .filter(|r| r["kind"] == "connect" && r["decision"] == "deny")
            .filter(|r| (r["seq"].as_u64().unwrap() > from) == after)
            .count()
    };
    assert!(
        denied(false) > 0 && denied(true) > 0,
        "denials recorded by both builds: {} before the gap at seq {from}, {} after; stream:\n{}\ndaemon log:\n{}",
        denied(false),
        denied(true),
        recs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"),
        d.stderr()
    );
    // Every attempt is delivered or counted: the connects the kernel took
    // into the older build's ring between the builds (20 rounds and more)
    // are counted in the gap (with the other records of those rounds).
    // Duplicates (both builds' programs run for an instant) only add.
    let lost = gaps[0]["lost"].as_u64().unwrap();
    assert!(lost >= 20, "records left in the older build's ring, counted: {}", gaps[0]);
    let delivered = (denied(false) + denied(true)) as u64;
    assert!(delivered + lost >= rounds, "{rounds} connects: {delivered} recorded, {lost} counted lost");
    assert_eq!(of_kind(&recs, "trajectory_start").len(), 1);
    assert!(d.stop().success());
    assert!(!d.pin_dir().exists(), "--stop-enforcement-on-exit removes the pins");
}

/// A SIGTERM that arrives while the daemon is still starting (its pins are
/// written, it does not serve yet: a probe or a unit stopped at once) ends
/// it cleanly once it is up: exit status 0, and with
/// `--stop-enforcement-on-exit` no pinned program is left in the kernel.
/// Before the handlers were installed first, the default action killed it
/// half-way and its pins stayed.
#[test]
fn a_sigterm_during_start_up_ends_the_daemon_cleanly() {
    crate::harness::require_root();
    let dir = tempfile::tempdir().unwrap();
    let parent = crate::harness::unique("agent-monitor-test");
    let stderr = dir.path().join("stderr");
    let mut child = std::process::Command::new(crate::harness::monitor_bin())
        .arg("daemon")
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .arg("--events")
        .arg(dir.path().join("events.jsonl"))
        .args(["--metrics-addr", "127.0.0.1:0", "--cgroup-parent", &parent, "--stop-enforcement-on-exit"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("AGENT_MONITOR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pins = crate::harness::pin_dir_of(&parent);
    let deadline = Instant::now() + Duration::from_secs(HANG_GUARD_SECS);
    // The line the daemon logs once its links and maps are pinned, before
    // it binds its sockets.
    while !std::fs::read_to_string(&stderr).unwrap_or_default().contains("pinned under") {
        assert!(Instant::now() < deadline, "the daemon did not pin:\n{}", std::fs::read_to_string(&stderr).unwrap());
        assert!(child.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&stderr).unwrap());
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&stderr).unwrap();
    let left = pins.exists();
    if left {
        // Leave nothing attached whatever the outcome.
        crate::harness::remove_pins(&pins);
    }
    if let Some(root) = crate::harness::cgroup2_mount() {
        crate::harness::remove_cgroup_tree(&root.join(&parent));
    }
    assert!(status.success(), "{status:?}:\n{log}");
    assert!(!left, "pins left under {}:\n{log}", pins.display());
}
