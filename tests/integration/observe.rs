//! Foundation: an agent's exec, open and connect activity is recorded with
//! the right trajectory and fields, and nothing else is.

use std::{io::Read, net::TcpListener, time::Duration};

use serde_json::Value;

use crate::harness::{agent_bin, assert_well_formed, of_kind, Daemon};

fn opens_of<'a>(recs: &'a [Value], path: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["kind"] == "open" && r["path"] == path).collect()
}

#[test]
fn agent_exec_open_connect_are_recorded() {
    let d = Daemon::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = agent_bin();
    let script = format!("cat /etc/hostname; {} connect 127.0.0.1 {port}; exit 7", agent.display());
    let out = d.run(Some("observe-1"), &["sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(7), "run must exit with the command's status: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"), "{out:?}");

    let recs = d.trajectory("observe-1");
    assert_well_formed(&recs);
    assert!(recs.iter().all(|r| r["trajectory"] == "observe-1"));
    let start = &recs[0];
    assert_eq!(start["command"], serde_json::json!(["sh", "-c", script]));

    let execs = of_kind(&recs, "exec");
    let sh = execs.iter().find(|e| e["argv"][0] == "sh").expect("exec of sh");
    assert_eq!(sh["argv"], serde_json::json!(["sh", "-c", script]));
    assert_eq!(sh["pid"], start["pid"], "run execs in place: sh keeps run's pid");
    let cat = execs.iter().find(|e| e["argv"] == serde_json::json!(["cat", "/etc/hostname"])).expect("exec of cat");
    assert!(cat["filename"].as_str().unwrap().ends_with("/cat"), "{cat}");
    assert_eq!(cat["ppid"], sh["pid"], "cat's parent is sh");
    assert_eq!(cat["uid"], 0);
    assert_eq!(cat["comm"], "cat");

    let opens = opens_of(&recs, "/etc/hostname");
    let open = opens.iter().find(|o| o["pid"] == cat["pid"]).expect("cat opened /etc/hostname");
    assert_eq!(open["access"], "read");
    assert_eq!(open["comm"], "cat");

    let connects = of_kind(&recs, "connect");
    let c = connects.iter().find(|c| c["port"] == port).expect("connect recorded");
    assert_eq!(
        (c["family"].as_str(), c["addr"].as_str(), c["protocol"].as_str(), c["op"].as_str()),
        (Some("inet"), Some("127.0.0.1"), Some("tcp"), Some("connect"))
    );
    assert_eq!(c["comm"], "test-agent");
    assert!(listener.accept().is_ok());

    let end = recs.last().unwrap();
    assert_eq!(end["reason"], "exited");
    assert_eq!(end["records"], (recs.len() - 1) as u64);
    assert!(end["pid"].is_null());
}

#[test]
fn udp_and_ipv6_destinations_are_recorded() {
    let d = Daemon::start();
    let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = udp.local_addr().unwrap().port();
    let out = d.run(Some("observe-udp"), &[agent_bin().to_str().unwrap(), "sendto", "::1", &port.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let mut buf = [0u8; 16];
    assert_eq!(udp.recv(&mut buf).unwrap(), 5, "datagram delivered");
    let recs = d.trajectory("observe-udp");
    assert_well_formed(&recs);
    let c = of_kind(&recs, "connect");
    let c = c.iter().find(|c| c["port"] == port).expect("sendmsg recorded");
    assert_eq!(
        (c["op"].as_str(), c["family"].as_str(), c["addr"].as_str(), c["protocol"].as_str()),
        (Some("sendmsg"), Some("inet6"), Some("::1"), Some("udp"))
    );
}

#[test]
fn processes_outside_trajectories_produce_no_events() {
    let d = Daemon::start();
    let marker = d.dir.path().join("outside-marker");
    std::fs::write(&marker, b"x").unwrap();
    // Keep a trajectory open while an outside process touches the marker.
    let inside = std::thread::scope(|s| {
        let t = s.spawn(|| d.run(Some("observe-quiet"), &["sleep", "1"]));
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            let mut f = std::fs::File::open(&marker).unwrap();
            let _ = f.read(&mut [0u8; 1]);
            let _ = std::process::Command::new("cat").arg(&marker).output();
        }
        t.join().unwrap()
    });
    assert!(inside.status.success());
    let _ = d.trajectory("observe-quiet");
    let recs = d.records();
    let marker = marker.to_str().unwrap();
    assert!(opens_of(&recs, marker).is_empty(), "an outside process was recorded");
    assert!(recs.iter().all(|r| r["trajectory"] == "observe-quiet"), "only the one trajectory appears");
    assert!(of_kind(&recs, "exec").iter().all(|e| e["argv"][0] == "sleep"), "only sleep was exec'd inside");
    // The daemon also discards records of unknown cgroups; none may have
    // reached it: the kernel must filter them.
    let metrics = d.metrics();
    assert!(
        metrics.lines().any(|l| l == "agent_monitor_events_lost_total{reason=\"unknown_trajectory\"} 0"),
        "kernel let records of outside processes through:\n{metrics}"
    );
}

#[test]
fn double_forked_grandchild_is_attributed() {
    let d = Daemon::start();
    let marker = d.dir.path().join("grandchild-marker");
    std::fs::write(&marker, b"x").unwrap();
    let marker = marker.to_str().unwrap().to_owned();
    let agent = agent_bin();
    let out = d.run(Some("observe-fork"), &[agent.to_str().unwrap(), "double-fork", "cat", &marker]);
    assert!(out.status.success(), "{out:?}");
    // `run` returned when the middle process did; the trajectory lasts
    // until the orphaned grandchild is gone too.
    let recs = d.trajectory("observe-fork");
    assert_well_formed(&recs);
    let cat = of_kind(&recs, "exec").into_iter().find(|e| e["argv"][0] == "cat").expect("grandchild exec recorded");
    let top = &recs[0]["pid"];
    assert_ne!(cat["ppid"], *top, "the grandchild was reparented before exec");
    let open = opens_of(&recs, &marker);
    assert!(open.iter().any(|o| o["pid"] == cat["pid"]), "grandchild's open recorded");
    let open_seq = open[0]["seq"].as_u64().unwrap();
    assert!(open_seq < recs.last().unwrap()["seq"].as_u64().unwrap(), "end record after the last event");
}

#[test]
fn child_cgroup_of_a_trajectory_still_counts() {
    let d = Daemon::start();
    let marker = d.dir.path().join("nested-marker");
    std::fs::write(&marker, b"x").unwrap();
    // The agent writes its pid: not in the daemon's directory, which holds
    // write-protected files (no new entries there under the Landlock layer).
    let scratch = tempfile::tempdir().unwrap();
    let pidfile = scratch.path().join("nested-pid");
    let go = scratch.path().join("nested-go");
    // A sub-cgroup of the trajectory, made by someone outside it (the
    // trajectory itself may not: cgroupfs is read-only to it, see
    // tamper::an_agent_cannot_leave_or_reshape_its_cgroup), with the agent
    // moved into it before it opens the marker.
    let script = format!(
        "echo $$ > {pidfile}; while [ ! -e {go} ]; do sleep 0.02; done; cat {marker}",
        pidfile = pidfile.display(),
        go = go.display(),
        marker = marker.display()
    );
    std::thread::scope(|s| {
        let agent = s.spawn(|| d.run(Some("observe-nested"), &["sh", "-c", &script]));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the agent never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let own = cgroups.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 line").to_owned();
        let inner = crate::harness::cgroup2_mount().unwrap().join(own.trim_start_matches('/')).join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::write(&go, "").unwrap();
        let out = agent.join().unwrap();
        assert!(out.status.success(), "{out:?}");
    });
    let recs = d.trajectory("observe-nested");
    assert_well_formed(&recs);
    assert!(!opens_of(&recs, marker.to_str().unwrap()).is_empty(), "open from the child cgroup recorded");
}

#[test]
fn concurrent_trajectories_are_kept_apart() {
    let d = Daemon::start();
    let ids = ["observe-par-a", "observe-par-b"];
    let markers: Vec<String> = ids
        .iter()
        .map(|id| {
            let p = d.dir.path().join(format!("{id}.marker"));
            std::fs::write(&p, id).unwrap();
            p.to_str().unwrap().to_owned()
        })
        .collect();
    std::thread::scope(|s| {
        for (id, m) in ids.iter().zip(&markers) {
            let d = &d;
            s.spawn(move || {
                let script = format!("for i in 1 2 3 4 5; do cat {m} >/dev/null; sleep 0.05; done");
                assert!(d.run(Some(id), &["sh", "-c", &script]).status.success());
            });
        }
    });
    for (i, id) in ids.iter().enumerate() {
        let recs = d.trajectory(id);
        assert_well_formed(&recs);
        assert_eq!(opens_of(&recs, &markers[i]).len(), 5, "{id} saw its own 5 opens");
        assert!(opens_of(&recs, &markers[1 - i]).is_empty(), "{id} saw none of the other's");
    }
    // Generated ids are distinct too.
    let a = d.run(None, &["true"]);
    let b = d.run(None, &["true"]);
    assert!(a.status.success() && b.status.success());
    std::thread::sleep(Duration::from_millis(300));
    let starts: Vec<String> = of_kind(&d.records(), "trajectory_start")
        .iter()
        .map(|r| r["trajectory"].as_str().unwrap().to_owned())
        .filter(|t| t.starts_with("t-"))
        .collect();
    assert_eq!(starts.len(), 2);
    assert_ne!(starts[0], starts[1]);
}

#[test]
fn metrics_count_events_and_trajectories() {
    let d = Daemon::start();
    assert!(d.run(Some("observe-metrics"), &["cat", "/etc/hostname"]).status.success());
    let recs = d.trajectory("observe-metrics");
    let metrics = d.metrics();
    assert!(metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    // Summed over the `decision` label.
    let events = |kind: &str| -> u64 {
        let label = format!("kind=\"{kind}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with("agent_monitor_events_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(events("exec"), of_kind(&recs, "exec").len() as u64);
    assert_eq!(events("open"), of_kind(&recs, "open").len() as u64);
    assert_eq!(value("agent_monitor_trajectories_started_total"), 1);
    assert_eq!(value("agent_monitor_trajectories_ended_total"), 1);
    assert_eq!(value("agent_monitor_trajectories_active"), 0);
    assert_eq!(value("agent_monitor_events_lost_total{reason=\"ringbuf_full\"}"), 0);
}

#[test]
fn shutdown_closes_open_trajectories_and_flushes() {
    let mut d = Daemon::start();
    let mut child = std::process::Command::new(crate::harness::monitor_bin())
        .args(["run", "--control-socket"])
        .arg(&d.socket)
        .args(["--trajectory", "observe-shutdown", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.records().iter().any(|r| r["kind"] == "exec" && r["argv"][0] == "sleep") {
        assert!(std::time::Instant::now() < deadline, "sleep exec not recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.stop().success(), "daemon exits cleanly on SIGTERM");
    let recs: Vec<Value> = d.records().into_iter().filter(|r| r["trajectory"] == "observe-shutdown").collect();
    assert_well_formed(&recs);
    assert_eq!(recs.last().unwrap()["reason"], "daemon_shutdown");
    let _ = child.kill();
    let _ = child.wait();
}
