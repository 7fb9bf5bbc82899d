//! The trajectory stream as an audit trail: process identity and ancestry,
//! steps, adoption of existing cgroups, loss accounting under a flood,
//! subscriptions with backpressure, and the events file's rotation.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{agent_bin, cgroup2_mount, metric_value, monitor_bin, of_kind, unique, Daemon};

/// `sh -c 'A & B; wait'` over a tree of test-agents: every node writes its
/// own pid and parent pid; the stream alone must give back the same tree.
#[test]
fn process_tree_is_rebuilt_from_the_stream() {
    let d = Daemon::start();
    // Not in the daemon's directory: it holds write-protected files.
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("tree.txt");
    let agent = agent_bin();
    let script = format!("{a} tree 2 2 {o} & {a} tree 1 3 {o}; wait", a = agent.display(), o = out.display());
    assert!(d.run(Some("tree-1"), &["sh", "-c", &script]).status.success());
    let recs = d.trajectory("tree-1");

    // Ground truth, from the processes themselves: 1+2+4 and 1+3 nodes.
    let truth: Vec<(u64, u64)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let (pid, ppid) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), ppid.parse().unwrap())
        })
        .collect();
    assert_eq!(truth.len(), 11, "{truth:?}");

    // Every record of one process carries one exec_id; pid is its suffix.
    let mut by_pid: HashMap<u64, String> = HashMap::new();
    for r in recs.iter().filter(|r| r["pid"].is_u64()) {
        let id = r["exec_id"].as_str().unwrap_or_else(|| panic!("no exec_id: {r}")).to_owned();
        assert!(id.ends_with(&format!(":{}", r["pid"])), "{r}");
        assert!(r["parent_exec_id"].is_string(), "{r}");
        let pid = r["pid"].as_u64().unwrap();
        assert_eq!(by_pid.entry(pid).or_insert_with(|| id.clone()), &id, "one id per process");
    }
    // Rebuild parent links from exec records alone, then compare with the
    // processes' own view.
    let parent_of: HashMap<String, String> = of_kind(&recs, "exec")
        .iter()
        .map(|r| (r["exec_id"].as_str().unwrap().to_owned(), r["parent_exec_id"].as_str().unwrap().to_owned()))
        .collect();
    for (pid, ppid) in &truth {
        let id = by_pid.get(pid).unwrap_or_else(|| panic!("no record of node {pid}"));
        let parent = by_pid.get(ppid).unwrap_or_else(|| panic!("no record of parent {ppid} of {pid}"));
        assert_eq!(&parent_of[id], parent, "node {pid}: parent is {ppid}");
    }
    // The shell spawned the two roots; both hang below the same sh.
    let roots: Vec<&(u64, u64)> = truth.iter().filter(|(_, ppid)| !truth.iter().any(|(p, _)| p == ppid)).collect();
    assert_eq!(roots.len(), 2);
    let sh = &by_pid[&roots[0].1];
    assert!(roots.iter().all(|(pid, _)| &parent_of[&by_pid[pid]] == sh));
    assert!(of_kind(&recs, "exec").iter().any(|r| r["exec_id"] == sh.as_str() && r["argv"][0] == "sh"));

    let end = of_kind(&recs, "trajectory_end")[0];
    let summary = &end["summary"];
    assert!(summary["processes"].as_u64().unwrap() >= 12, "{summary}");
    let exes: Vec<&str> = summary["executables"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(exes.iter().any(|e| e.ends_with("/test-agent")), "{exes:?}");
    assert!(summary["files_written"].as_array().unwrap().iter().any(|f| f == out.to_str().unwrap()), "{summary}");
    let counted: u64 = summary["counts"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|m| m.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(counted, end["records"].as_u64().unwrap(), "counts cover every record before the end");
}

/// `agent-monitor step` as a harness uses it: records after each call carry
/// that step, including those of processes started before the call, in the
/// order docs/events.md ("Steps and ordering") promises, checked exactly:
/// no record before a `step` record carries its step; a thread's steps never
/// go back; after a `step` record, only a thread's first record (the
/// operation it had in flight at the update) may still carry the previous
/// step; and a record carrying a step is stamped after its `step` record.
/// Two processes open a file in a loop throughout, so operations are in
/// flight at the updates.
#[test]
fn steps_annotate_every_later_record() {
    let d = Daemon::start();
    let stop = d.dir.path().join("stop");
    let target = d.dir.path().join("probe");
    std::fs::write(&target, "x").unwrap();
    // Two openers, a few ms apart: several records per thread wait in the
    // ring between two reads by the daemon (every 10 ms), so a step record
    // placed before them would show.
    let opener = format!("'{}' open-until '{}' 3 '{}'", agent_bin().display(), target.display(), stop.display());
    let mut agent = Command::new(monitor_bin())
        .args(["run", "--trajectory", "steps-1", "--control-socket"])
        .arg(&d.socket)
        .args(["--", "sh", "-c", &format!("{opener} & {opener}; wait")])
        .spawn()
        .unwrap();
    // Counts the agent's opens in the events file, reading only what was
    // appended since the last call (the file grows by thousands of records
    // under a slow guest; re-reading it all each time would dominate).
    let (mut read, mut opens) = (0usize, 0usize);
    let probe = format!("\"path\":{}", Value::from(target.to_str().unwrap()));
    let mut wait_opens = |more: usize| {
        let goal = opens + more;
        let deadline = Instant::now() + Duration::from_secs(crate::harness::HANG_GUARD_SECS);
        while opens < goal {
            assert!(Instant::now() < deadline, "agent opens not recorded:\n{}", d.stderr());
            std::thread::sleep(Duration::from_millis(20));
            let text = std::fs::read(&d.events).unwrap_or_default();
            let complete = text[read..].iter().rposition(|&b| b == b'\n').map_or(read, |i| read + i + 1);
            let lines = String::from_utf8_lossy(&text[read..complete]);
            opens += lines.lines().filter(|l| l.contains("\"kind\":\"open\"") && l.contains(&probe)).count();
            read = complete;
        }
    };
    wait_opens(6);
    let step = |args: &[&str]| {
        let out =
            Command::new(monitor_bin()).arg("step").arg("--control-socket").arg(&d.socket).args(args).output().unwrap();
        assert!(out.status.success(), "step failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(step(&["--trajectory", "steps-1", "--name", "read the repo"]), "trajectory steps-1: step 1\n");
    wait_opens(6);
    assert_eq!(step(&["--trajectory", "steps-1", "--name", "run tests", "--id", "7"]), "trajectory steps-1: step 7\n");
    wait_opens(6);
    // From inside the trajectory, a process may name its own step.
    let own = Command::new(monitor_bin())
        .args(["run", "--trajectory", "steps-2", "--control-socket"])
        .arg(&d.socket)
        .args(["--", monitor_bin().to_str().unwrap(), "step", "--name", "self", "--control-socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    std::fs::write(&stop, "").unwrap();
    assert!(agent.wait().unwrap().success());

    let recs = d.trajectory("steps-1");
    let steps: Vec<&Value> = of_kind(&recs, "step");
    let named: Vec<(u64, &str)> =
        steps.iter().map(|r| (r["step"]["id"].as_u64().unwrap(), r["step"]["name"].as_str().unwrap())).collect();
    assert_eq!(named, vec![(1, "read the repo"), (7, "run tests")]);
    let in_flight = assert_step_order(&recs);
    // Every phase has records of its own step.
    for phase in 0..=steps.len() {
        let carried = of_kind(&recs, "open").iter().filter(|r| step_phase(&steps, r) == phase).count();
        assert!(carried >= 3, "{carried} opens carry phase {phase}'s step");
    }
    eprintln!("records in flight at a step update: {in_flight}");
    let own = d.trajectory("steps-2");
    assert_eq!(of_kind(&own, "step")[0]["step"]["name"], "self");
}

/// Which of the trajectory's steps a record carries: 0 for none, `k` for
/// the step of the `k`-th `step` record.
fn step_phase(steps: &[&Value], r: &Value) -> usize {
    if r["step"].is_null() {
        return 0;
    }
    1 + steps.iter().position(|s| s["step"] == r["step"]).unwrap_or_else(|| panic!("an unknown step: {r}"))
}

/// Asserts the step-ordering guarantee of docs/events.md over one
/// trajectory's records (each step id used once); returns how many records
/// followed their `step` record with the previous step.
fn assert_step_order(recs: &[Value]) -> usize {
    let steps = of_kind(recs, "step");
    // Per thread: the phase of its last record, and how many `step`
    // records preceded that record.
    let mut threads: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut in_flight = 0;
    for r in recs.iter().filter(|r| ["exec", "open", "connect"].contains(&r["kind"].as_str().unwrap())) {
        let seq = r["seq"].as_u64().unwrap();
        let after = steps.iter().filter(|s| s["seq"].as_u64().unwrap() < seq).count();
        let phase = step_phase(&steps, r);
        assert!(phase <= after, "a record before its step's `step` record: {r}");
        if phase > 0 {
            let stamped = steps[phase - 1]["ts"].as_str().unwrap();
            assert!(r["ts"].as_str().unwrap() >= stamped, "a record of step {} stamped before it: {r}", r["step"]);
        }
        let tid = r["tid"].as_u64().unwrap();
        if let Some(&(last_phase, last_after)) = threads.get(&tid) {
            assert!(phase >= last_phase, "thread {tid} went back to an earlier step: {r}");
            if phase < after {
                assert!(last_after < after, "a second record of thread {tid} with the previous step: {r}");
            }
        }
        if phase < after {
            assert_eq!(phase + 1, after, "a record two steps behind: {r}");
            in_flight += 1;
        }
        threads.insert(tid, (phase, after));
    }
    in_flight
}

/// The control socket from inside a trajectory: `step` for its own
/// trajectory only; no status, no new trajectory (a laxer policy), no
/// annotating someone else's stream. Each refusal is a `tamper` record of
/// op `control` in the caller's own stream, naming the process that asked.
#[test]
fn agents_may_only_annotate_their_own_trajectory() {
    let d = Daemon::start();
    let stop = d.dir.path().join("stop");
    let mut other = Command::new(monitor_bin())
        .args(["run", "--trajectory", "victim", "--control-socket"])
        .arg(&d.socket)
        .arg("--")
        .arg(agent_bin())
        .args(["open-until", "/etc/hostname", "50"])
        .arg(&stop)
        .spawn()
        .unwrap();
    let sock = d.socket.to_str().unwrap().to_owned();
    let m = monitor_bin();
    let m = m.to_str().unwrap();
    // Each attempt prints its exit status and error; the shell goes on.
    let script = format!(
        "{m} status --control-socket {sock}; echo status=$?; \
         {m} run --trajectory nested --policy default --control-socket {sock} -- true; echo run=$?; \
         {m} step --trajectory victim --name forged --control-socket {sock}; echo other=$?; \
         {m} events --control-socket {sock}; echo events=$?; \
         {m} step --name mine --control-socket {sock}; echo own=$?"
    );
    let out = d.run(Some("attacker"), &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for refused in ["status=1", "run=1", "other=1", "events=1"] {
        assert!(stdout.contains(refused), "{refused} expected:\n{stdout}\n{stderr}");
    }
    assert!(stdout.contains("own=0"), "{stdout}\n{stderr}");
    assert!(stderr.contains("limited to `step` for that trajectory"), "{stderr}");
    assert!(stderr.contains("may only annotate its own steps, not victim"), "{stderr}");
    std::fs::write(&stop, "").unwrap();
    assert!(other.wait().unwrap().success());
    let victim = d.trajectory("victim");
    assert!(of_kind(&victim, "step").is_empty(), "no forged step in the victim's stream");
    assert!(!d.records().iter().any(|r| r["trajectory"] == "nested"));
    let attacker = d.trajectory("attacker");
    assert_eq!(of_kind(&attacker, "step").len(), 1);
    assert!(d.stderr().contains("agent request refused"), "the refusals are logged");
    assert_control_refusals(&attacker);
}

/// The attacker's four refused requests as `tamper` records: each denied by
/// the built-in rule, made by the `agent-monitor` process that sent it (its
/// exec record has the same pid and subcommand).
fn assert_control_refusals(recs: &[Value]) {
    crate::schema::assert_matches_schema(recs);
    let refusals: Vec<&Value> = of_kind(recs, "tamper").into_iter().filter(|r| r["op"] == "control").collect();
    let mut seen: Vec<(&str, Option<&str>)> =
        refusals.iter().map(|r| (r["request"].as_str().unwrap(), r["target_trajectory"].as_str())).collect();
    seen.sort();
    let expected = [("events", None), ("open_trajectory", Some("nested")), ("status", None), ("step", Some("victim"))];
    assert_eq!(seen, expected, "{refusals:#?}");
    for r in refusals {
        assert_eq!((r["decision"].as_str(), r["rule"].as_str()), (Some("deny"), Some("builtin:tamper")), "{r}");
        assert!(r.get("mechanism").is_none() && r["policy"].is_string(), "{r}");
        let subcommand = match r["request"].as_str().unwrap() {
            "open_trajectory" => "run",
            other => other,
        };
        let sender = of_kind(recs, "exec").into_iter().find(|e| e["pid"] == r["pid"] && e["argv"][1] == subcommand);
        assert!(sender.is_some(), "the refusal names the process that asked: {r}");
    }
}

/// A cgroup made by hand under a configured pattern is adopted with its
/// processes, its new processes are recorded under the new trajectory, and
/// removing it closes the trajectory.
#[test]
fn adopts_cgroups_matching_a_pattern() {
    let root = cgroup2_mount().expect("cgroup2");
    let base = unique("adopt-test");
    let dir = root.join(&base);
    std::fs::create_dir_all(&dir).unwrap();
    let scope = dir.join("agent-1.scope");
    std::fs::create_dir(&scope).unwrap();
    let _cleanup = RemoveOnDrop(vec![scope.clone(), dir.clone()]);
    // A process already there before the daemon starts.
    let workspace = tempfile::tempdir().unwrap();
    let mut sleeper = Command::new(agent_bin()).args(["sleep", "60000"]).current_dir(workspace.path()).spawn().unwrap();
    std::fs::write(scope.join("cgroup.procs"), sleeper.id().to_string()).unwrap();

    let d = Daemon::start_with(&["--adopt", &format!("{base}/agent-*.scope")]);
    let start = wait_for(&d, |r| r["kind"] == "trajectory_start" && r["origin"] == "adopt");
    let id = start["trajectory"].as_str().unwrap().to_owned();
    assert_eq!(start["cgroup"], scope.to_str().unwrap());
    let ws = std::fs::canonicalize(workspace.path()).unwrap();
    // The adoption is logged after the trajectory opens: wait for the line.
    d.wait_log(&format!("\"WORKSPACE\": \"{}\"", ws.display()));
    let procs = wait_for(&d, |r| r["trajectory"] == id.as_str() && r["kind"] == "process");
    assert_eq!(procs["pid"], sleeper.id());
    assert_eq!(procs["source"], "procfs");
    assert!(procs["exe"].as_str().unwrap().ends_with("/test-agent"), "{procs}");
    assert_eq!(procs["argv"], serde_json::json!([agent_bin().to_str().unwrap(), "sleep", "60000"]));
    assert!(procs["exec_id"].as_str().unwrap().ends_with(&format!(":{}", sleeper.id())));

    // A new process joins, then execs: recorded under the adopted trajectory.
    let join = format!("echo $$ > {}; exec cat /etc/hostname", scope.join("cgroup.procs").display());
    assert!(Command::new("sh").args(["-c", &join]).stdout(Stdio::null()).status().unwrap().success());
    let exec = wait_for(&d, |r| r["trajectory"] == id.as_str() && r["kind"] == "exec");
    assert!(exec["filename"].as_str().unwrap().ends_with("cat"), "{exec}");

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::remove_dir(&scope).is_err() {
        assert!(Instant::now() < deadline, "cgroup did not empty");
        std::thread::sleep(Duration::from_millis(20));
    }
    let recs = d.trajectory(&id);
    let end = of_kind(&recs, "trajectory_end")[0];
    assert_eq!(end["reason"], "cgroup_removed");
    crate::schema::assert_matches_schema(&recs);
    // A cgroup that does not match is left alone.
    assert!(d.records().iter().filter(|r| r["kind"] == "trajectory_start").count() == 1);
}

/// A flood from one agent overruns a small ring buffer. Every open the agent
/// made is either in the stream or counted in a gap record, and the gap
/// records add up to the kernel's drop counters.
#[test]
fn flood_gaps_equal_the_kernels_drop_counts() {
    // 32 KiB: room for the agent's own start (some 15 records), not for
    // the flood.
    let d = Daemon::start_with(&["--ringbuf-size", "32768"]);
    let target = d.dir.path().join("flood");
    std::fs::write(&target, "x").unwrap();
    let n: u64 = if std::env::var_os("AGENT_MONITOR_BIN").is_some() { 20_000 } else { 100_000 };
    // Without cargo's LD_LIBRARY_PATH the dynamic loader makes a handful
    // of opens, not dozens of failed probes.
    let out = Command::new(monitor_bin())
        .args(["run", "--trajectory", "flood-1", "--control-socket"])
        .arg(&d.socket)
        .arg("--")
        .arg(agent_bin())
        .args(["open-flood", target.to_str().unwrap(), &n.to_string()])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = d.trajectory("flood-1");
    let delivered = recs.iter().filter(|r| r["kind"] == "open" && r["path"] == target.to_str().unwrap()).count() as u64;
    let gaps: u64 = of_kind(&recs, "gap").iter().map(|g| g["lost"].as_u64().unwrap()).sum();
    assert!(gaps > 0, "a 32 KiB ring buffer must overflow under {n} opens");
    let others: Vec<String> = recs
        .iter()
        .filter(|r| !(r["kind"] == "open" && r["path"] == target.to_str().unwrap()))
        .map(|r| format!("{} {} {} {}", r["kind"], r["path"], r["requested"], r["result"]))
        .collect();
    assert_eq!(
        delivered + gaps,
        n,
        "attempted = delivered + counted (delivered {delivered}, lost {gaps}); other records: {others:#?}"
    );
    let end = of_kind(&recs, "trajectory_end")[0];
    assert_eq!(end["lost"].as_u64(), Some(gaps));
    let kernel = metric_value(&d.metrics(), "agent_monitor_events_lost_total{reason=\"ringbuf_full\"}").unwrap();
    assert_eq!(kernel as u64, gaps, "gap records = the kernel's drop counter");
    crate::harness::assert_well_formed(&recs);
}

/// A subscriber that stops reading: the file sink is complete and the
/// kernel loses nothing; the subscriber, once it reads again, learns how
/// many records it missed, and what it got plus that equals the file.
#[test]
fn a_stalled_subscriber_changes_nothing_else_and_learns_what_it_missed() {
    // A ring buffer that holds the whole flood (64 MiB for some 33 MB of
    // records): a daemon slower than the agent (a debug build under TCG in
    // the VM matrix) then loses nothing, so every open must reach the file.
    // It proves nothing about the subscriber by itself: a pipeline that
    // waited for the stalled subscriber would never write the
    // trajectory_end this test waits for before it reads a single line.
    let d = Daemon::start_with(&["--ringbuf-size", "67108864"]);
    let mut sub = Command::new(monitor_bin())
        .args(["events", "--follow", "--trajectory", "sub-1", "--control-socket"])
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    d.wait_metric("agent_monitor_subscribers", 1.0);
    let target = d.dir.path().join("many");
    std::fs::write(&target, "x").unwrap();
    // Past the subscriber queue (16,384) and what the sockets buffer: fewer
    // in the guests, where the flood is slow.
    let n: u64 = if std::env::var_os("AGENT_MONITOR_BIN").is_some() { 22_000 } else { 60_000 };
    let out =
        d.run(Some("sub-1"), &[agent_bin().to_str().unwrap(), "open-flood", target.to_str().unwrap(), &n.to_string()]);
    assert!(out.status.success());
    let recs = d.trajectory("sub-1");
    crate::harness::assert_well_formed(&recs);
    let delivered = recs.iter().filter(|r| r["kind"] == "open" && r["path"] == target.to_str().unwrap()).count() as u64;
    assert_eq!(delivered, n, "the file sink has every open; the kernel lost none");
    assert!(of_kind(&recs, "gap").is_empty());

    // Now read what the subscriber has, until got + missed covers the file.
    let (tx, rx) = mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut got, mut missed) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while got + missed < recs.len() as u64 && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) else { continue };
        let v: Value = serde_json::from_str(&line).unwrap();
        match v["kind"].as_str() {
            Some("subscription_gap") => missed += v["missed"].as_u64().unwrap(),
            _ => {
                assert_eq!(v["trajectory"], "sub-1");
                got += 1;
            }
        }
    }
    sub.kill().unwrap();
    let _ = sub.wait();
    assert_eq!(got + missed, recs.len() as u64, "got {got} + missed {missed} = the file's {}", recs.len());
    assert!(missed > 0, "a subscriber that stopped reading for {n} records must have missed some");
    let dropped = metric_value(&d.metrics(), "agent_monitor_subscriber_dropped_total").unwrap();
    assert_eq!(dropped as u64, missed);
}

/// `--events-max-size` rotates between records, keeps N files, and SIGHUP
/// reopens a file moved away.
#[test]
fn events_file_rotates_and_reopens_on_sighup() {
    // Every exec's dynamic loader probes each LD_LIBRARY_PATH directory
    // cargo sets (a record per failed open): keep enough files for all.
    let d = Daemon::start_with(&["--events-max-size", "8192", "--events-keep", "1000"]);
    for i in 0..4 {
        assert!(d.run(Some(&format!("rot-{i}")), &["sh", "-c", "cat /etc/hostname; ls / >/dev/null"]).status.success());
    }
    let _ = d.trajectory("rot-3");
    let rotated: Vec<PathBuf> = (1..=1000).map(|n| numbered(&d.events, n)).filter(|p| p.exists()).collect();
    assert!(!rotated.is_empty(), "the file rotated");
    assert!(!numbered(&d.events, 1000).exists(), "no rotated file was deleted, or this test misses records");
    let mut all: Vec<Value> = Vec::new();
    for p in rotated.iter().rev().chain([&d.events]) {
        for l in std::fs::read_to_string(p).unwrap().lines() {
            all.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: a split line? {e}", p.display())));
        }
    }
    for i in 0..4 {
        let t = format!("rot-{i}");
        let recs: Vec<Value> = all.iter().filter(|r| r["trajectory"] == t.as_str()).cloned().collect();
        crate::harness::assert_well_formed(&recs);
    }
    let moved = d.dir.path().join("moved.jsonl");
    std::fs::rename(&d.events, &moved).unwrap();
    // SAFETY: a signal to the test's own daemon child.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.run(Some("rot-after"), &["true"]).status.success());
    let _ = d.trajectory("rot-after");
    let old = std::fs::read_to_string(&moved).unwrap();
    assert!(!old.contains("rot-after"), "nothing is written to the file moved away after SIGHUP");
}

fn numbered(p: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", p.display()))
}

fn wait_for(d: &Daemon, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(crate::harness::HANG_GUARD_SECS);
    loop {
        if let Some(r) = d.records().into_iter().find(|r| pred(r)) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no such record within {} s; daemon log:\n{}",
            crate::harness::HANG_GUARD_SECS,
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir(p);
        }
    }
}
