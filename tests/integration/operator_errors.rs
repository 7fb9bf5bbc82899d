//! Errors an operator hits get one clear message and a non-zero exit.

use std::process::Command;

use crate::harness::{monitor_bin, require_root, Daemon};

fn output(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(monitor_bin()).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn run_without_a_daemon_says_so() {
    let (code, err) = output(&["run", "--control-socket", "/nonexistent/agent-monitor.sock", "--", "true"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("daemon is not running") && err.contains("/nonexistent/agent-monitor.sock"), "{err}");
}

#[test]
fn unknown_flag_is_rejected() {
    let (code, err) = output(&["daemon", "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn daemon_refuses_non_root() {
    require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(monitor_bin())
        .args(["daemon", "--control-socket", "/tmp/never.sock"])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("must run as root") && err.contains("65534"), "{err}");
}

#[test]
fn invalid_configuration_names_the_flag() {
    let (code, err) = output(&["daemon", "--cgroup-parent", "../escape"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--cgroup-parent") && err.contains("../escape"), "{err}");
}

#[test]
fn second_daemon_on_same_socket_is_refused() {
    let d = Daemon::start();
    let (code, err) = output(&[
        "daemon",
        "--control-socket",
        d.socket.to_str().unwrap(),
        "--metrics-addr",
        &format!("127.0.0.1:{}", crate::harness::free_port()),
        "--cgroup-parent",
        &format!("{}-second", d.cgroup_parent),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already listening"), "{err}");
    if let Some(root) = crate::harness::cgroup2_mount() {
        let _ = std::fs::remove_dir(root.join(format!("{}-second", d.cgroup_parent)));
    }
    // A start that fails leaves no program attached behind it.
    let pins = std::path::Path::new("/sys/fs/bpf/agent-monitor").join(format!("{}-second", d.cgroup_parent));
    assert!(!pins.exists(), "a refused daemon left its pins in {}", pins.display());
}

#[test]
fn second_daemon_on_same_cgroup_parent_is_refused() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = output(&[
        "daemon",
        "--control-socket",
        dir.path().join("other.sock").to_str().unwrap(),
        "--metrics-addr",
        &format!("127.0.0.1:{}", crate::harness::free_port()),
        "--cgroup-parent",
        &d.cgroup_parent,
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("another agent-monitor daemon runs with this cgroup parent"), "{err}");
    // The first one is untouched: its programs and trajectories work.
    assert!(d.run(Some("still-mine"), &["true"]).status.success());
    let recs = d.trajectory("still-mine");
    crate::harness::assert_well_formed(&recs);
    let layouts = std::fs::read_dir(d.pin_dir()).unwrap().count();
    assert_eq!(layouts, 1, "the refused daemon added nothing to the first one's pins");
}

#[test]
fn bad_trajectory_id_is_refused() {
    let d = Daemon::start();
    let out = d.run(Some("../escape"), &["true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid trajectory id"), "{err}");
}

#[test]
fn status_reports_every_hook_and_open_trajectories() {
    let d = Daemon::start();
    let mut child = Command::new(monitor_bin())
        .args(["run", "--control-socket"])
        .arg(&d.socket)
        .args(["--trajectory", "status-1", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    // Until the trajectory has its start and the exec of sleep (a fixed
    // 300 ms was too short in the TCG guests under load).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        let out =
            Command::new(monitor_bin()).args(["status", "--json", "--control-socket"]).arg(&d.socket).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let records = status["trajectories"][0]["records"].as_u64().unwrap_or(0);
        if records >= 2 || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let hooks = status["hooks"].as_array().unwrap();
    for hook in ["connect:connect4", "connect:connect6", "connect:sendmsg4", "connect:sendmsg6"] {
        let h = hooks.iter().find(|h| h["hook"] == hook).unwrap_or_else(|| panic!("{hook} missing: {status}"));
        assert_eq!(h["mechanism"], "cgroup-deny", "{h}");
    }
    // The DNS redirect's restoring hooks judge nothing: they never claim to.
    for hook in ["connect:recvmsg4", "connect:getpeername4"] {
        let h = hooks.iter().find(|h| h["hook"] == hook).unwrap_or_else(|| panic!("{hook} missing: {status}"));
        assert_eq!(h["mechanism"], "observe", "{h}");
    }
    // File and exec: the LSM hooks enforce, or they say why not and the
    // tracepoints kill.
    let lsm = hooks.iter().find(|h| h["hook"] == "lsm:file_open").expect("lsm:file_open listed");
    if lsm["mechanism"] == "lsm-deny" {
        assert_eq!(status["enforcement"]["file"], "lsm-deny");
    } else {
        assert_eq!(lsm["mechanism"], "unavailable", "{lsm}");
        assert!(!lsm["detail"].as_str().unwrap().is_empty());
        let open = hooks.iter().find(|h| h["hook"] == "open:openat/exit").expect("open tracepoints attached");
        assert_eq!(open["mechanism"], "kill", "{open}");
        // Trajectories started by `run` get the Landlock layer where the
        // kernel has Landlock; the tracepoints kill for the rest.
        let landlock = status["protections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["protection"] == "landlock" && p["mechanism"] == "landlock-deny");
        assert_eq!(status["enforcement"]["file"], if landlock { "landlock-deny" } else { "kill" });
    }
    let exec = hooks.iter().find(|h| h["hook"] == "exec").unwrap();
    assert!(exec["mechanism"] == "kill" || exec["mechanism"] == "observe", "{exec}");
    let trajectories = status["trajectories"].as_array().unwrap();
    assert_eq!(trajectories.len(), 1);
    assert_eq!(trajectories[0]["trajectory"], "status-1");
    assert!(trajectories[0]["records"].as_u64().unwrap() >= 2, "start and the exec of sleep");

    let text = Command::new(monitor_bin()).args(["status", "--control-socket"]).arg(&d.socket).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("lsm:file_open") && text.contains("status-1"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}
