//! The daemon as `deploy/agent-monitor.service` runs it: with only the
//! unit's capability bounding set and `no_new_privs`. It must start, report
//! the same enforcement as a daemon with every capability (on BPF LSM
//! kernels too: the VM matrix runs this), and block what the policy denies.
//! The unit's fine-grained capabilities (all but `CAP_SYS_ADMIN`) must each
//! be needed, and must suffice on kernels that let `CAP_PERFMON` open
//! perf events; Debian's kernels (`perf_event_paranoid` 3) do not.

use crate::{
    confined::{capability, fixture, unit_capabilities, Confined},
    harness::agent_bin,
};

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
    let reference = f.daemon();
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
    let out = d.run("ops-test", &f.ws, &[agent, "connect", "127.0.0.2", "9"]);
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

/// What the Landlock layer needs besides: seeing a client's files through
/// `/proc/PID/root` ([`without_cap_sys_ptrace_run_is_refused_where_the_landlock_layer_runs`]).
const LANDLOCK_CAPS: [&str; 2] = ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"];

/// The unit's capabilities for loading and attaching: all but
/// `CAP_SYS_ADMIN` and the Landlock layer's.
fn fine_grained() -> Vec<&'static str> {
    let caps: Vec<&str> =
        unit_capabilities().into_iter().filter(|c| *c != "CAP_SYS_ADMIN" && !LANDLOCK_CAPS.contains(c)).collect();
    assert_eq!(caps.len(), 3, "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN: {caps:?}");
    caps
}

/// Without `CAP_SYS_PTRACE` the daemon cannot see a root client's files
/// through `/proc/PID/root`: where the Landlock layer runs, `run` is refused
/// with a message that names the capability, never started with a layer
/// planned from nothing. Where BPF LSM runs there is no layer to plan.
#[test]
fn without_cap_sys_ptrace_run_is_refused_where_the_landlock_layer_runs() {
    let f = fixture();
    let fewer: Vec<&str> = unit_capabilities().into_iter().filter(|c| *c != "CAP_SYS_PTRACE").collect();
    let d = Confined::start(&[], Some(&fewer), &f.policies).unwrap_or_else(|log| panic!("did not start:\n{log}"));
    let layered = d.status()["enforcement"]["file"] == "landlock-deny";
    let out = d.run("ops-test", &f.ws, &["true"]);
    if layered {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_SYS_PTRACE"), "{out:?}");
    } else {
        assert!(out.status.success(), "{out:?}");
    }
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
    let caps: Vec<&str> = fine_grained().into_iter().chain(LANDLOCK_CAPS).collect();
    match Confined::start(&[], Some(&caps), &f.policies) {
        Ok(d) => {
            let agent = agent_bin();
            let out = d.run("ops-test", &f.ws, &[agent.to_str().unwrap(), "connect", "127.0.0.2", "9"]);
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
