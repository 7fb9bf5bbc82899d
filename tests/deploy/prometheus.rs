//! A real Prometheus (Debian's `prometheus` package) scraping a real
//! daemon with the shipped scrape config and alert rules: the denials a
//! trajectory causes arrive in Prometheus exactly, the target is up, the
//! rules load and evaluate, and every query of the Grafana dashboard and of
//! the alerts runs against the scraped data and names only metrics the
//! daemon exports. The trajectory also asks one allowed DNS name of an
//! upstream that does not answer, so the DNS families a panel or an alert
//! uses exist (labelled counters appear with their first count).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    files::{alert_queries, dashboard_queries, deploy_dir, tool},
    harness::{agent_bin, free_port, Daemon},
};

/// Denials the trajectory causes.
const DENIALS: usize = 7;
/// The name the trajectory asks, allowed by the policy.
const NAME: &str = "upstream-down.test";

/// A Prometheus server on loopback, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts `binary` with `deploy/prometheus.yml` and `deploy/alerts.yml`,
    /// changed only to scrape `target` and evaluate every second.
    fn start(binary: &Path, target: u16) -> Prometheus {
        let deploy = deploy_dir();
        let shipped = std::fs::read_to_string(deploy.join("prometheus.yml")).unwrap();
        let mut config = shipped.clone();
        for (from, to) in [
            ("'127.0.0.1:9617'", format!("'127.0.0.1:{target}'")),
            ("scrape_interval: 15s", "scrape_interval: 1s".into()),
            ("evaluation_interval: 15s", "evaluation_interval: 1s".into()),
        ] {
            assert_eq!(shipped.matches(from).count(), 1, "deploy/prometheus.yml has {from} once");
            config = config.replace(from, &to);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::copy(deploy.join("alerts.yml"), dir.path().join("alerts.yml")).unwrap();
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { child, port, _dir: dir, log };
        p.wait(Duration::from_secs(20), "ready", |p| p.get("/-/ready").is_some_and(|(code, _)| code == 200));
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path`: status code and body, or `None` if nothing listens yet.
    fn get(&mut self, path: &str) -> Option<(u16, String)> {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    }

    /// `/api/v1/query`: the `data.result` of a successful query.
    fn query(&mut self, promql: &str) -> Vec<Value> {
        let (code, body) = self
            .get(&format!("/api/v1/query?query={}", encode(promql)))
            .unwrap_or_else(|| panic!("prometheus stopped answering:\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(code == 200 && v["status"] == "success", "query {promql} failed ({code}): {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of an instant vector query, if it has one series.
    fn value(&mut self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    fn wait(&mut self, limit: Duration, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(Instant::now() < deadline, "prometheus: {what} not within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn write_policy(dir: &Path) {
    std::fs::write(
        dir.join("prom-test.yaml"),
        format!(
            "name: prom-test\nmode: enforce\ndefaults: {{file: allow, exec: allow, network: deny}}\n\
             rules:\n  network:\n    - domain: {NAME}\n      action: allow\n"
        ),
    )
    .unwrap();
}

/// Names of metric families an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_lowercase()) {
        rest = &rest[start..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.starts_with("agent_monitor_") || word.starts_with("process_") {
            let family = ["_bucket", "_count", "_sum"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
            names.push(family.to_owned());
        }
        rest = &rest[end..];
    }
    names
}

#[test]
fn prometheus_scrapes_exactly_the_denials_a_trajectory_caused() {
    // The tool first: nothing to clean up if it is missing.
    let binary = tool("prometheus", "prometheus");
    let dig = tool("dig", "bind9-dnsutils");
    let policies = tempfile::tempdir().unwrap();
    write_policy(policies.path());
    // Nothing listens there: every forwarded question fails at once.
    let upstream = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(&["--policy-dir", policies.path().to_str().unwrap(), "--dns-upstream", &upstream]);
    let mut prom = Prometheus::start(&binary, d.metrics_port);
    let up = r#"up{job="agent-monitor"}"#;
    let denials = r#"agent_monitor_denials_total{job="agent-monitor",policy="prom-test",class="network",mechanism="cgroup-deny"}"#;

    // Scraped at least once before the denials: none yet.
    prom.wait(Duration::from_secs(20), "first scrape", |p| p.value(up) == Some(1.0));
    assert!(prom.query(denials).is_empty(), "no denial before the trajectory");

    let agent = agent_bin();
    // dig addresses a nameserver nothing listens on; the redirect takes
    // the question to the daemon's resolver whatever it names.
    let script = format!(
        "for port in $(seq 1 {DENIALS}); do '{}' connect 127.0.0.2 $port; done; \
         '{}' +time=2 +tries=1 @127.0.0.153 {NAME} >/dev/null 2>&1; exit 0",
        agent.display(),
        dig.display()
    );
    let ws = policies.path().canonicalize().unwrap();
    let out = d.run_policy("prom-denials", "prom-test", &ws, &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("errno=1 ").count(), DENIALS, "every connect refused with EPERM: {out:?}");

    prom.wait(Duration::from_secs(20), "the denials", |p| p.value(denials) == Some(DENIALS as f64));
    let series = prom.query(r#"agent_monitor_denials_total{job="agent-monitor"}"#);
    assert_eq!(series.len(), 1, "one denial series, of prom-test: {series:?}");
    assert_eq!(prom.value(up), Some(1.0));
    assert_eq!(
        prom.value(r#"sum(agent_monitor_events_total{job="agent-monitor",decision="deny"})"#),
        Some(DENIALS as f64),
        "events by decision agree with denials"
    );
    assert_eq!(
        prom.value(r#"agent_monitor_policy_decisions_total{policy="prom-test",class="network",decision="deny"}"#),
        Some(DENIALS as f64)
    );
    assert!(prom.value("agent_monitor_pipeline_latency_seconds_count").is_some_and(|n| n >= DENIALS as f64));
    assert!(prom.value(r#"process_resident_memory_bytes{job="agent-monitor"}"#).is_some_and(|b| b > 1e6));
    assert_eq!(
        prom.value(r#"agent_monitor_enforcement{class="network",mechanism="cgroup-deny"}"#),
        Some(1.0),
        "network rules enforced"
    );
    let asked = r#"agent_monitor_dns_questions_total{job="agent-monitor",policy="prom-test",decision="allow"}"#;
    let failed = r#"agent_monitor_dns_upstream_failures_total{job="agent-monitor",transport="udp"}"#;
    prom.wait(Duration::from_secs(20), "the DNS question", |p| p.value(asked).is_some_and(|n| n >= 1.0));
    prom.wait(Duration::from_secs(20), "the upstream failure", |p| p.value(failed).is_some_and(|n| n >= 1.0));

    // The shipped rules loaded and evaluate without error.
    prom.wait(Duration::from_secs(10), "rule evaluation", |p| {
        let Some((200, body)) = p.get("/api/v1/rules") else { return false };
        let v: Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert_eq!(rules.len(), 7, "{body}");
        for r in &rules {
            assert_ne!(r["health"], "err", "rule {} fails: {}", r["name"], r["lastError"]);
        }
        rules.iter().all(|r| r["health"] == "ok")
    });

    // Every dashboard and alert query runs, and names only metrics the
    // daemon exports (a misspelt metric is not an error in PromQL, only an
    // empty panel).
    let exported = d.metrics();
    for expr in dashboard_queries().iter().chain(alert_queries().iter()) {
        prom.query(expr);
        for name in metric_names(expr) {
            assert!(exported.contains(&format!("\n# TYPE {name} ")), "{expr}: the daemon exports no {name}");
        }
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(agent_monitor_pipeline_latency_seconds_bucket{a="b"}[5m]))) > process_open_fds"#
        ),
        ["agent_monitor_pipeline_latency_seconds", "process_open_fds"]
    );
}
