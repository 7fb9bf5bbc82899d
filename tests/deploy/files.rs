//! The files of `deploy/`, checked by the tools that consume them:
//! `promtool` (Debian's `prometheus` package) for the scrape config and the
//! alert rules, `systemd-analyze` for the unit, `strace` for the unit's
//! system call filter. A missing tool fails the test with the package to
//! install (`cargo xtask setup` installs them); it never skips.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{
    confined::{fixture, unit_values, Confined, UNIT},
    harness::{agent_bin, monitor_bin},
};

/// `deploy/` of this checkout.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").canonicalize().expect("deploy/ exists")
}

/// Path of a host tool, or a failure naming the Debian package.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
    {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!("`{name}` not found: install the Debian package `{package}` (`cargo xtask setup` does)")
}

fn run(tool: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = Command::new(tool).args(args.iter().map(|a| a.as_ref())).output().expect("run the tool");
    eprintln!(
        "$ {} {}\n{}{}",
        tool.display(),
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alert_rules() {
    let promtool = tool("promtool", "prometheus");
    let deploy = deploy_dir();
    // `check config` also loads the rule files the config names.
    assert_success(&run(&promtool, &[&"check", &"config", &deploy.join("prometheus.yml")]), "promtool check config");
    let out = run(&promtool, &[&"check", &"rules", &deploy.join("alerts.yml")]);
    assert_success(&out, "promtool check rules");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 7 rules found"), "every alert checked");
}

#[test]
fn every_alert_fires_in_its_promtool_unit_test() {
    let promtool = tool("promtool", "prometheus");
    let deploy = deploy_dir();
    let out = run(&promtool, &[&"test", &"rules", &deploy.join("alerts_test.yml")]);
    assert_success(&out, "promtool test rules");
    let rules = std::fs::read_to_string(deploy.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy.join("alerts_test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "{alert} has no test in alerts_test.yml");
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let analyze = tool("systemd-analyze", "systemd");
    // `verify` checks that ExecStart= exists: point it at the binary under
    // test, changing nothing else.
    let installed = "/usr/local/bin/agent-monitor";
    assert_eq!(UNIT.matches(installed).count(), 1, "ExecStart= names {installed}");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("agent-monitor.service");
    std::fs::write(&unit, UNIT.replace(installed, monitor_bin().to_str().unwrap())).unwrap();
    let out = run(&analyze, &[&"verify", &unit]);
    assert_success(&out, "systemd-analyze verify");
    // Unknown keys and bad values are warnings with exit status 0.
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "systemd-analyze verify complained");

    // The exposure score of the sandbox, so a change that weakens it is
    // noticed (2.8 when written; 3.3 since the Landlock layer needs
    // CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to see clients' files, +0.5;
    // systemd calls up to 4.9 "OK").
    let out = run(&analyze, &[&"security", &"--offline=true", &"--threshold=33", &unit]);
    assert_success(&out, "systemd-analyze security --threshold=33 (exposure above 3.3)");
}

#[test]
fn the_unit_and_the_example_config_agree() {
    let config = std::fs::read_to_string(deploy_dir().join("config.yaml")).unwrap();
    let value = |key: &str| -> String {
        config
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("config.yaml sets {key}"))
            .trim()
            .to_owned()
    };
    assert_eq!(unit_values("LogsDirectory"), ["agent-monitor"]);
    assert!(value("events").starts_with("/var/log/agent-monitor/"), "the events file is in the LogsDirectory");
    assert_eq!(unit_values("RuntimeDirectory"), ["agent-monitor"]);
    assert_eq!(unit_values("RuntimeDirectoryMode"), ["0700"], "the daemon refuses a socket directory others can enter");
    assert_eq!(value("control_socket"), monitor::config::DEFAULT_CONTROL_SOCKET);
    assert!(value("control_socket").starts_with("/run/agent-monitor/"));
    let exec = unit_values("ExecStart");
    assert_eq!(
        exec,
        [format!("/usr/local/bin/agent-monitor daemon --config {}", monitor::config::DEFAULT_CONFIG_FILE)]
    );
    let metrics: std::net::SocketAddr = value("metrics_addr").parse().unwrap();
    assert!(metrics.ip().is_loopback(), "the unit's IPAddressAllow=localhost matches");
    assert_eq!(unit_values("IPAddressAllow"), ["localhost"]);
    assert_eq!(unit_values("Delegate"), ["yes"]);
    assert_eq!(
        value("cgroup_parent"),
        "system.slice/agent-monitor.service/trajectories",
        "trajectories in the unit's delegated cgroup"
    );
}

/// Syscall names of an `strace -f` log.
fn traced_syscalls(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            let name = call.split('(').next()?;
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
                .then(|| name.to_owned())
        })
        .collect()
}

/// The system calls of `systemd-analyze syscall-filter` sets, groups
/// expanded.
fn expand_filter(analyze: &Path, items: &[&str]) -> BTreeSet<String> {
    let mut calls = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            calls.insert(item);
            continue;
        }
        if !seen.insert(item.clone()) {
            continue;
        }
        let out = Command::new(analyze).args(["syscall-filter", &item]).output().expect("systemd-analyze");
        assert_success(&out, "systemd-analyze syscall-filter");
        // The first line names the group; members are indented, comments
        // start with #.
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let member = line.trim();
            if !member.is_empty() && !member.starts_with('#') {
                todo.push(member.to_owned());
            }
        }
    }
    calls
}

#[test]
fn the_units_system_call_filter_allows_every_call_the_daemon_makes() {
    let analyze = tool("systemd-analyze", "systemd");
    let strace = tool("strace", "strace");
    let filters = unit_values("SystemCallFilter");
    assert_eq!(filters.len(), 1, "one SystemCallFilter= allow list");
    let mut allowed = expand_filter(&analyze, &filters[0].split_whitespace().collect::<Vec<_>>());
    // What other settings of the unit deny on top of the allow list.
    let denied = expand_filter(&analyze, &["@raw-io", "@clock", "@module", "syslog", "sethostname", "setdomainname"]);
    allowed.retain(|c| !denied.contains(c));
    assert!(allowed.contains("bpf") && allowed.contains("openat"));

    // A daemon's whole life under strace: start (load, attach), a trajectory
    // with a denial, a status request, a scrape, a reload, shutdown.
    let f = fixture();
    let log = tempfile::NamedTempFile::new().unwrap();
    let wrapper: Vec<OsString> =
        vec![strace.into(), "-f".into(), "-qq".into(), "-o".into(), log.path().as_os_str().to_owned()];
    let mut d = Confined::start(&wrapper, None, &f.policies).unwrap_or_else(|e| panic!("did not start:\n{e}"));
    let agent = agent_bin();
    let out = d.run("ops-test", &f.ws, &[agent.to_str().unwrap(), "connect", "127.0.0.2", "9"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    d.status();
    d.wait_metric(r#"agent_monitor_trajectories_ended_total"#, 1.0);
    d.signal(libc::SIGHUP);
    d.wait_metric(r#"agent_monitor_policy_reloads_total{result="success"}"#, 1.0);
    assert!(d.stop().success());

    let used = traced_syscalls(&std::fs::read_to_string(log.path()).unwrap());
    assert!(used.contains("bpf") && used.contains("perf_event_open"), "the trace covers loading: {used:?}");
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "SystemCallFilter= of deploy/agent-monitor.service would kill the daemon (SIGSYS) on {refused:?}"
    );
}

#[test]
fn the_dashboard_is_valid_grafana_json() {
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dash["uid"], "agent-monitor");
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel ids are unique");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} queries something", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{} has a PromQL expression", p["title"]);
        }
    }
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for wanted in ["Denials by policy", "Trajectories", "Records lost by reason", "Pipeline latency"] {
        assert!(titles.contains(&wanted), "the dashboard shows {wanted}: {titles:?}");
    }
}

/// Every PromQL expression of the dashboard, with Grafana's variables set
/// to values Prometheus accepts.
pub fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            out.push(expr.replace("$__rate_interval", "10s").replace("$__range", "1m").replace("$instance", ".*"));
        }
    }
    out
}

/// Every `expr:` of the alert rules.
pub fn alert_queries() -> Vec<String> {
    let rules = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else { continue };
        let expr = expr.trim();
        if expr == "|" {
            let indent = lines.peek().map(|l| l.len() - l.trim_start().len()).unwrap_or(0);
            let mut block = Vec::new();
            while let Some(l) = lines.peek().filter(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
            {
                block.push(l.trim().to_owned());
                lines.next();
            }
            out.push(block.join(" ").trim().to_owned());
        } else {
            out.push(expr.to_owned());
        }
    }
    assert_eq!(out.len(), 7, "an expr per alert");
    out
}

#[test]
fn alert_expressions_are_read_whole() {
    let spike = alert_queries().into_iter().find(|e| e.contains("offset")).unwrap();
    assert!(spike.starts_with('(') && spike.ends_with("> 0.1"), "{spike}");
}
