//! The Prometheus registry and the `/metrics` endpoint. Label values are
//! bounded sets (kinds, reasons, policy names, hook names); never
//! trajectory ids, pids or paths. `docs/metrics.md` lists every family.

use std::{future::Future, net::SocketAddr, sync::Arc};

mod process;

use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::vocab::{Lost, Mechanism, RuleClass};

pub struct Metrics {
    pub registry: Registry,
    /// Records published to the sinks, by kind and decision (`none` for
    /// records no policy judged: trajectory start and end, gaps).
    pub events: IntCounterVec,
    pub events_lost: IntCounterVec,
    pub trajectories_active: IntGauge,
    pub trajectories_started: IntCounter,
    pub trajectories_ended: IntCounter,
    /// Policy decisions on exec/open/connect, by policy, class and decision.
    pub decisions: IntCounterVec,
    /// Blocked operations, by policy, class and mechanism.
    pub denials: IntCounterVec,
    /// Times a `limits:` limit held, by policy, limit and event.
    pub limit_events: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_rules: IntGaugeVec,
    /// 1 for the mechanism each hook uses.
    pub hook_mechanism: IntGaugeVec,
    /// 1 for the mechanism each rule class is enforced with: what an alert
    /// on degraded enforcement watches (a hook can be `unavailable` by
    /// design while its class still enforces through another hook).
    pub enforcement: IntGaugeVec,
    /// Kernel timestamp of a record to its hand-over to the sink queue.
    pub pipeline_latency: Histogram,
    /// Records dropped for slow subscribers (their queue was full).
    pub subscriber_dropped: IntCounter,
    /// Live subscriptions (`agent-monitor events --follow`).
    pub subscribers: IntGauge,
    pub dns: DnsMetrics,
}

/// The DNS egress resolver's metrics.
#[derive(Clone)]
pub struct DnsMetrics {
    /// DNS questions the resolver answered, by policy and decision.
    pub questions: IntCounterVec,
    /// Questions the upstream server did not answer (timeout, refused
    /// connection, malformed reply), by transport.
    pub upstream_failures: IntCounterVec,
    /// Time the upstream server took to answer.
    pub upstream_latency: Histogram,
    /// Entries in the learned-address maps.
    pub learned: IntGauge,
    /// Learned entries removed after their TTL plus grace.
    pub learned_expired: IntCounter,
}

impl DnsMetrics {
    fn new(r: &Registrar) -> DnsMetrics {
        let upstream_failures = r.counter_vec(
            "agent_monitor_dns_upstream_failures_total",
            "DNS questions the upstream server did not answer (timeout, refused, malformed), by transport (udp, tcp).",
            &["transport"],
        );
        // Known label values start at zero, so that rate() sees the first
        // failure.
        for transport in ["udp", "tcp"] {
            upstream_failures.with_label_values(&[transport]);
        }
        DnsMetrics {
            questions: r.counter_vec(
                "agent_monitor_dns_questions_total",
                "DNS questions of trajectories answered by the resolver, by policy and decision (allow, audit, deny).",
                &["policy", "decision"],
            ),
            upstream_failures,
            upstream_latency: r.register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "agent_monitor_dns_upstream_latency_seconds",
                        "Time the upstream DNS server took to answer a forwarded question.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            learned: r.gauge(
                "agent_monitor_dns_learned_entries",
                "Addresses learned from allowed names, in the kernel's learned-address maps.",
            ),
            learned_expired: r.counter(
                "agent_monitor_dns_learned_expired_total",
                "Learned addresses removed after their TTL plus grace.",
            ),
        }
    }
}

/// Upper bounds of the pipeline latency buckets, in seconds. Records wait
/// up to the 10 ms poll tick when traffic is light; the upper buckets show
/// a sink that holds the pipeline back.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Label values of `decision` on `agent_monitor_events_total` for records
/// no policy judged.
pub const NO_DECISION: &str = "none";

/// Creates each metric and registers it in one expression, so that no
/// metric exists that `/metrics` does not export.
struct Registrar(Registry);

impl Registrar {
    /// Registers `c` and returns the handle the daemon updates (metric
    /// handles are shared: a clone updates the registered one).
    fn register<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique metric names");
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registrar(Registry::new());
        let build_info = r.gauge_vec(
            "agent_monitor_build_info",
            "Always 1; the version of the running daemon as a label.",
            &["version"],
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.0.register(Box::new(process::ProcessCollector::new())).expect("unique metric names");
        let m = Metrics {
            events: r.counter_vec(
                "agent_monitor_events_total",
                "Records published to the sinks, by kind and decision (allow, audit, deny; none for records no policy judged).",
                &["kind", "decision"],
            ),
            events_lost: r.counter_vec(
                "agent_monitor_events_lost_total",
                "Kernel records that did not reach the sinks, by reason (ringbuf_full, decode_error, unknown_trajectory, layout_change, daemon_killed).",
                &["reason"],
            ),
            trajectories_active: r.gauge("agent_monitor_trajectories_active", "Trajectories currently open."),
            trajectories_started: r.counter("agent_monitor_trajectories_started_total", "Trajectories opened."),
            trajectories_ended: r.counter("agent_monitor_trajectories_ended_total", "Trajectories closed."),
            decisions: r.counter_vec(
                "agent_monitor_policy_decisions_total",
                "Policy decisions on exec, open and connect, by policy, class (file, exec, network) and decision (allow, audit, deny).",
                &["policy", "class", "decision"],
            ),
            denials: r.counter_vec(
                "agent_monitor_denials_total",
                "Operations blocked, by policy, class (file, exec, network) and mechanism (lsm-deny, kill, cgroup-deny).",
                &["policy", "class", "mechanism"],
            ),
            limit_events: r.counter_vec(
                "agent_monitor_limit_events_total",
                "Times a policy's limits held, by policy, limit (memory, pids) and event (oom_kill: a process killed at the memory limit; max: a fork refused at the pids limit).",
                &["policy", "limit", "event"],
            ),
            policy_reloads: r.counter_vec(
                "agent_monitor_policy_reloads_total",
                "Policy reloads, by result (success, failure).",
                &["result"],
            ),
            policy_rules: r.gauge_vec(
                "agent_monitor_policy_rules",
                "Rules of each loaded policy, by class.",
                &["policy", "class"],
            ),
            hook_mechanism: r.gauge_vec(
                "agent_monitor_hook_mechanism",
                "1 for the enforcement mechanism each hook runs with (lsm-deny, kill, cgroup-deny, observe, audit-only, unavailable).",
                &["hook", "mechanism"],
            ),
            enforcement: r.gauge_vec(
                "agent_monitor_enforcement",
                "1 for the mechanism each rule class (file, exec, network) is enforced with (lsm-deny, kill, cgroup-deny, audit-only, unavailable).",
                &["class", "mechanism"],
            ),
            pipeline_latency: r.register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "agent_monitor_pipeline_latency_seconds",
                        "Time from the kernel's timestamp of a record to its hand-over to the event sink's queue.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            subscriber_dropped: r.counter(
                "agent_monitor_subscriber_dropped_total",
                "Records a slow subscriber could not take and missed (the file sink and other subscribers are unaffected).",
            ),
            subscribers: r.gauge("agent_monitor_subscribers", "Live record subscriptions on the control socket."),
            dns: DnsMetrics::new(&r),
            registry: r.0,
        };
        m.start_known_series();
        Arc::new(m)
    }

    /// Known label values start at zero, so a rate() exists before the
    /// first event and an alert on losses can fire on the first one.
    fn start_known_series(&self) {
        for r in ["success", "failure"] {
            self.policy_reloads.with_label_values(&[r]);
        }
        for kind in ["exec", "open", "connect"] {
            for decision in ["allow", "audit", "deny"] {
                self.events.with_label_values(&[kind, decision]);
            }
        }
        for kind in ["trajectory_start", "trajectory_end", "gap", "step", "process"] {
            self.events.with_label_values(&[kind, NO_DECISION]);
        }
        for reason in Lost::ALL {
            self.events_lost.with_label_values(&[reason.as_str()]);
        }
    }

    /// The `agent_monitor_events_lost_total` series of `reason`.
    pub fn limit_events(&self, policy: &str, limit: &str, event: &str) -> IntCounter {
        self.limit_events.with_label_values(&[policy, limit, event])
    }

    pub fn lost(&self, reason: Lost) -> IntCounter {
        self.events_lost.with_label_values(&[reason.as_str()])
    }

    /// Counts a published batch: records by kind and decision, and the
    /// policy decisions and denials among them. Aggregated first, so the
    /// label lookups are one per distinct label set per batch, not one per
    /// record.
    pub fn count_batch(&self, batch: &[crate::record::Record]) {
        use crate::record::Body;
        let mut events: Vec<([&str; 2], u64)> = Vec::new();
        let mut decisions: Vec<([&str; 4], u64)> = Vec::new();
        for r in batch {
            let decision = r.verdict.as_ref().and_then(|v| v.decision);
            bump(&mut events, [r.body.kind(), decision.unwrap_or(NO_DECISION)]);
            let Some(v) = &r.verdict else { continue };
            if let (Some(decision), Some(policy)) = (v.decision, v.policy.as_deref()) {
                let class = match r.body {
                    Body::Exec { .. } => RuleClass::Exec.as_str(),
                    Body::Open { .. } => RuleClass::File.as_str(),
                    // The built-in protection's, not a policy rule class.
                    Body::Tamper { .. } => "tamper",
                    _ => RuleClass::Network.as_str(),
                };
                bump(&mut decisions, [policy, class, decision, v.mechanism.map_or("none", Mechanism::as_str)]);
            }
        }
        for ([kind, decision], n) in events {
            self.events.with_label_values(&[kind, decision]).inc_by(n);
        }
        for ([policy, class, decision, mechanism], n) in decisions {
            self.decisions.with_label_values(&[policy, class, decision]).inc_by(n);
            if decision == "deny" {
                self.denials.with_label_values(&[policy, class, mechanism]).inc_by(n);
            }
        }
    }

    /// Replaces the rule-count gauges with the loaded set's.
    pub fn set_rule_counts(&self, counts: &[(String, [usize; 3])]) {
        self.policy_rules.reset();
        for (policy, per_class) in counts {
            for (class, n) in RuleClass::ALL.iter().zip(per_class) {
                self.policy_rules.with_label_values(&[policy, class.as_str()]).set(*n as i64);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text format is UTF-8")
    }
}

/// Binds `addr` now (so a busy port fails startup), then serves until
/// `shutdown` resolves.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind the metrics endpoint on {addr}: {e}")))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], metrics.render()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Adds one to `key`'s count; a linear scan, the sets are a handful long.
fn bump<'a, const N: usize>(counts: &mut Vec<([&'a str; N], u64)>, key: [&'a str; N]) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key, 1)),
    }
}

#[cfg(test)]
mod tests {
    use prometheus::proto::MetricType;

    use super::*;

    /// Every family, with one series of each labelled family touched so
    /// that it is exported.
    fn families() -> Vec<prometheus::proto::MetricFamily> {
        let m = Metrics::new();
        m.decisions.with_label_values(&["default", "network", "deny"]).inc();
        m.denials.with_label_values(&["default", "network", "cgroup-deny"]).inc();
        m.policy_rules.with_label_values(&["default", "file"]).set(1);
        m.hook_mechanism.with_label_values(&["exec", "kill"]).set(1);
        m.enforcement.with_label_values(&["exec", "kill"]).set(1);
        m.pipeline_latency.observe(0.003);
        m.registry.gather()
    }

    #[test]
    fn families_follow_prometheus_naming_conventions() {
        for f in families() {
            let name = f.name();
            assert!(name.starts_with("agent_monitor_") || name.starts_with("process_"), "{name}: prefix");
            assert!(!f.help().is_empty(), "{name}: help text");
            match f.get_field_type() {
                MetricType::COUNTER => assert!(name.ends_with("_total"), "{name}: counters end in _total"),
                MetricType::HISTOGRAM => assert!(name.ends_with("_seconds"), "{name}: histograms in base units"),
                _ => assert!(!name.ends_with("_total"), "{name}: only counters end in _total"),
            }
            for m in f.get_metric() {
                for l in m.get_label() {
                    assert!(
                        !["trajectory", "pid", "path", "cgroup", "rule"].contains(&l.name()),
                        "{name}: unbounded label {}",
                        l.name()
                    );
                }
            }
        }
    }

    #[test]
    fn docs_list_every_family() {
        let docs = include_str!("../../docs/metrics.md");
        for f in families() {
            assert!(docs.contains(&format!("`{}`", f.name())), "docs/metrics.md does not document {}", f.name());
        }
    }

    #[test]
    fn latency_buckets_are_increasing_and_cover_the_poll_tick() {
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        let tick = crate::events::pipeline::POLL_INTERVAL.as_secs_f64();
        assert!(LATENCY_BUCKETS.contains(&tick), "a bucket boundary at the poll interval");
    }
}
