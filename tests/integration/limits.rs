//! `limits:` of a policy on the trajectory's cgroup: a fork bomb stops at
//! `pids`, a memory hog is OOM-killed at `memory` and named in a `limit`
//! record, a busy loop gets about `cpu` cores, and the agent cannot raise
//! any of them. On the hybrid host the limits live in cgroup v1
//! hierarchies, in the guests in cgroup2: `status` says which.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use serde_json::Value;

use crate::harness::{attacker_bin, metric_value, of_kind, stdout, v1_mount, Daemon, Workspace};

const HEAD: &str = "mode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n";

/// A daemon with the policy `limited` carrying `limits`.
fn daemon(limits: &str) -> (Workspace, Daemon) {
    let w = Workspace::new();
    w.write_policy("limited", &format!("name: limited\n{HEAD}limits: {limits}\n"));
    let d = w.daemon();
    (w, d)
}

fn attacker() -> String {
    attacker_bin().display().to_string()
}

/// Where `status` says each controller's limit is applied.
fn hierarchy(d: &Daemon, controller: &str) -> String {
    let status = d.status();
    let row = status["limits"].as_array().unwrap().iter().find(|r| r["controller"] == controller).cloned();
    let row = row.unwrap_or_else(|| panic!("no limits row for {controller}: {status:#}"));
    row["hierarchy"].as_str().unwrap().to_owned()
}

fn limit_records<'a>(recs: &'a [Value], limit: &str) -> Vec<&'a Value> {
    of_kind(recs, "limit").into_iter().filter(|r| r["limit"] == limit).collect()
}

fn end_limits(recs: &[Value]) -> Value {
    of_kind(recs, "trajectory_end")[0]["summary"]["limits"].clone()
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_stream_says_so() {
    let (w, d) = daemon("{pids: 64}");
    assert_ne!(hierarchy(&d, "pids"), "unavailable", "{:#}", d.status());
    // Attacker: forks until refused (children wait, so none frees a slot).
    // A thread of the test ticks every 10 ms meanwhile: its longest wait
    // says whether the host stayed responsive.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut last, mut worst) = (Instant::now(), std::time::Duration::ZERO);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
            worst
        })
    };
    let started = Instant::now();
    let out = d.run_policy("bomb", "limited", &w.ws, &[&attacker(), "fork-bomb", "10000"]);
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = ticker.join().unwrap();
    eprintln!("fork bomb under pids: 64 took {took:?}; the test's 10 ms ticker waited at most {worst:?}");
    assert!(worst < std::time::Duration::from_secs(1), "the host stalled for {worst:?}");
    let text = stdout(&out);
    let forked: u32 = text.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out:?}"));
    // run's process is the attacker itself: 64 tasks in all.
    assert!((1..64).contains(&forked), "{text}");
    assert!(text.contains("errno=11"), "the fork past the limit fails with EAGAIN: {text}");
    assert!(took.as_secs() < 60, "{took:?}");
    let recs = d.trajectory("bomb");
    let max = limit_records(&recs, "pids");
    assert!(!max.is_empty(), "{recs:#?}");
    assert_eq!((max[0]["event"].as_str(), max[0]["decision"].as_str()), (Some("max"), None), "{}", max[0]);
    assert!(max[0]["count"].as_u64().unwrap() >= 1, "{}", max[0]);
    assert!(end_limits(&recs)["pids_max"].as_u64().unwrap() >= 1, "{recs:#?}");
    crate::schema::assert_matches_schema(&recs);
    let start = &of_kind(&recs, "trajectory_start")[0];
    assert_eq!(start["policy"], "limited");
    let series = r#"agent_monitor_limit_events_total{event="max",limit="pids",policy="limited"}"#;
    assert!(metric_value(&d.metrics(), series).unwrap_or(0.0) >= 1.0, "{series}");
}

#[test]
fn a_memory_hog_is_oom_killed_at_the_limit_and_named() {
    let (w, d) = daemon("{memory: 64M}");
    assert_ne!(hierarchy(&d, "memory"), "unavailable", "{:#}", d.status());
    let out = d.run_policy("hog", "limited", &w.ws, &[&attacker(), "hog", "512"]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    assert!(!stdout(&out).contains("ok"), "{out:?}");
    let recs = d.trajectory("hog");
    let oom = limit_records(&recs, "memory");
    assert_eq!(oom.len(), 1, "{recs:#?}");
    let r = oom[0];
    assert_eq!(r["event"], "oom_kill", "{r}");
    // The hog's own allocation hit the limit: it is the victim and the
    // record's process.
    let hog = of_kind(&recs, "exec").into_iter().find(|e| e["argv"][1] == "hog").expect("the hog's exec");
    assert_eq!(r["exec_id"], hog["exec_id"], "{r}");
    assert_eq!(r["victim_pid"], r["pid"], "{r}");
    assert_eq!(end_limits(&recs)["oom_kills"], 1, "{recs:#?}");
    crate::schema::assert_matches_schema(&recs);
    let series = r#"agent_monitor_limit_events_total{event="oom_kill",limit="memory",policy="limited"}"#;
    assert_eq!(metric_value(&d.metrics(), series), Some(1.0), "{series}");
}

#[test]
fn a_busy_loop_gets_about_the_cpu_limit() {
    let (w, d) = daemon("{cpu: 0.5}");
    assert_ne!(hierarchy(&d, "cpu"), "unavailable", "{:#}", d.status());
    let out = d.run_policy("spin", "limited", &w.ws, &[&attacker(), "spin", "3000"]);
    let text = stdout(&out);
    let field = |k: &str| -> f64 {
        let at = text.split_whitespace().position(|x| x == k).unwrap_or_else(|| panic!("{out:?}"));
        text.split_whitespace().nth(at + 1).unwrap().parse().unwrap()
    };
    let share = field("cpu_ms") / field("wall_ms");
    eprintln!("cpu: 0.5 -> the busy loop got {share:.3} of a core over 3 s");
    // CFS bandwidth gives 50 ms per 100 ms period; a period's slack and the
    // first period's full budget stay well under 0.65 over 3 s.
    assert!(share <= 0.65, "share {share:.3}: {text}");
    assert!(share >= 0.1, "the loop ran: {share:.3}: {text}");
    let recs = d.trajectory("spin");
    assert!(end_limits(&recs)["cpu_throttled_us"].as_u64().unwrap() > 0, "{recs:#?}");
}

/// The controller files holding a trajectory's limits: in its cgroup2
/// directory where the controller is enabled there, else in the v1
/// hierarchy's directory of the same relative path.
fn limit_files(d: &Daemon, id: &str) -> Vec<PathBuf> {
    let root = crate::harness::cgroup2_mount().unwrap();
    let rel = Path::new(&d.cgroup_parent).join(id);
    let mut out = Vec::new();
    for (controller, v2, v1) in [
        ("memory", "memory.max", "memory.limit_in_bytes"),
        ("pids", "pids.max", "pids.max"),
        ("cpu", "cpu.max", "cpu.cfs_quota_us"),
    ] {
        match hierarchy(d, controller).as_str() {
            "cgroup2" => out.push(root.join(&rel).join(v2)),
            "cgroup1" => out.push(v1_mount(controller).unwrap().join(&rel).join(v1)),
            other => panic!("{controller}: {other}"),
        }
    }
    out
}

#[test]
fn the_agent_cannot_raise_its_own_limits() {
    let (w, d) = daemon("{memory: 64M, pids: 64, cpu: 0.5}");
    let files = limit_files(&d, "raise");
    let mechanism = d.enforcement("file");
    // Attacker: root in the trajectory, rewrites each limit file of its own
    // cgroups (one process per file: the fallback kills the writer).
    let script: String = files
        .iter()
        .map(|f| format!("{} write-str {} max; echo \"rc=$? {}\"; ", attacker(), f.display(), f.display()))
        .collect::<String>()
        + "cat "
        + &files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" ");
    let out = d.run_policy("raise", "limited", &w.ws, &["sh", "-c", &script]);
    let text = stdout(&out);
    for f in &files {
        let line = text.lines().find(|l| l.ends_with(&f.display().to_string())).unwrap_or_else(|| panic!("{text}"));
        assert!(!line.starts_with("ok") && !line.contains("rc=0 "), "{f:?} was rewritten: {text}");
    }
    // The limits still read as the policy set them.
    let values: Vec<&str> = text.lines().filter(|l| !l.contains("rc=") && !l.starts_with("errno")).collect();
    assert!(values.contains(&"67108864"), "memory: {text}");
    assert!(values.contains(&"64"), "pids: {text}");
    assert!(values.iter().any(|v| v.starts_with("50000")), "cpu: {text}");
    let recs = d.trajectory("raise");
    let denied: Vec<&Value> = of_kind(&recs, "open")
        .into_iter()
        .filter(|r| files.iter().any(|f| r["path"] == f.to_str().unwrap()) && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), files.len(), "{recs:#?}");
    for r in denied {
        assert_eq!((r["rule"].as_str(), r["mechanism"].as_str()), (Some("builtin:tamper"), Some(mechanism.as_str())));
    }
}

/// `status` says where each limit is applied, and lists the limits of each
/// policy and open trajectory. (A controller missing everywhere refuses a
/// trajectory whose policy sets its limit: the host and every guest have
/// all three, so that refusal is a unit test of `limits::Controllers`.)
#[test]
fn status_lists_the_limits_of_policies_and_trajectories() {
    let (w, d) = daemon("{memory: 64M, pids: 64, cpu: 0.5}");
    for c in ["memory", "pids", "cpu"] {
        assert_ne!(hierarchy(&d, c), "unavailable");
    }
    let status = d.status();
    let limited = status["policies"].as_array().unwrap().iter().find(|p| p["name"] == "limited").unwrap();
    assert_eq!(limited["limits"], serde_json::json!({"memory": 67108864, "pids": 64, "cpu_millicores": 500}));
    // `status` lists the limits of an open trajectory.
    let mut c = d.run_policy_cmd("listed", "limited", &w.ws, &["sleep", "3"]);
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let row = loop {
        let s = d.status();
        if let Some(t) = s["trajectories"].as_array().unwrap().iter().find(|t| t["trajectory"] == "listed") {
            break t.clone();
        }
        assert!(Instant::now() < deadline, "{s:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(row["limits"]["pids"], 64, "{row}");
    assert_eq!(row["agent"]["uid"], 0, "{row}");
    assert!(child.wait().unwrap().success());
}
