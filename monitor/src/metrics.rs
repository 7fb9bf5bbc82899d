//! The Prometheus registry and the `/metrics` endpoint. Label values are
//! bounded sets (kinds, reasons); never trajectory ids, pids or paths.

use std::{future::Future, net::SocketAddr, sync::Arc};

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub events_lost: IntCounterVec,
    pub trajectories_active: IntGauge,
    pub trajectories_started: IntCounter,
    pub trajectories_ended: IntCounter,
    /// Policy decisions on exec/open/connect, by policy, class and decision.
    pub decisions: IntCounterVec,
    /// Blocked operations, by policy, class and mechanism.
    pub denials: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_rules: IntGaugeVec,
    /// 1 for the mechanism each hook uses (an alert fires on `audit-only`
    /// or `unavailable`).
    pub hook_mechanism: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new("agent_monitor_events_total", "Records published to the sinks, by kind."),
            &["kind"],
        )
        .expect("valid metric");
        let events_lost = IntCounterVec::new(
            Opts::new(
                "agent_monitor_events_lost_total",
                "Kernel records that did not reach the sinks, by reason (ringbuf_full, decode_error, unknown_trajectory).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let trajectories_active =
            IntGauge::new("agent_monitor_trajectories_active", "Trajectories currently open.").expect("valid metric");
        let trajectories_started =
            IntCounter::new("agent_monitor_trajectories_started_total", "Trajectories opened.").expect("valid metric");
        let trajectories_ended =
            IntCounter::new("agent_monitor_trajectories_ended_total", "Trajectories closed.").expect("valid metric");
        let decisions = IntCounterVec::new(
            Opts::new(
                "agent_monitor_policy_decisions_total",
                "Policy decisions on exec, open and connect, by policy, class (file, exec, network) and decision (allow, audit, deny).",
            ),
            &["policy", "class", "decision"],
        )
        .expect("valid metric");
        let denials = IntCounterVec::new(
            Opts::new(
                "agent_monitor_denials_total",
                "Operations blocked, by policy, class (file, exec, network) and mechanism (lsm-deny, kill, cgroup-deny).",
            ),
            &["policy", "class", "mechanism"],
        )
        .expect("valid metric");
        let policy_reloads = IntCounterVec::new(
            Opts::new("agent_monitor_policy_reloads_total", "Policy reloads, by result (success, failure)."),
            &["result"],
        )
        .expect("valid metric");
        let policy_rules = IntGaugeVec::new(
            Opts::new("agent_monitor_policy_rules", "Rules of each loaded policy, by class."),
            &["policy", "class"],
        )
        .expect("valid metric");
        let hook_mechanism = IntGaugeVec::new(
            Opts::new(
                "agent_monitor_hook_mechanism",
                "1 for the enforcement mechanism each hook runs with (lsm-deny, kill, cgroup-deny, observe, audit-only, unavailable).",
            ),
            &["hook", "mechanism"],
        )
        .expect("valid metric");
        for r in ["success", "failure"] {
            policy_reloads.with_label_values(&[r]);
        }
        for c in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(denials.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(policy_rules.clone()),
            Box::new(hook_mechanism.clone()),
            Box::new(events.clone()),
            Box::new(events_lost.clone()),
            Box::new(trajectories_active.clone()),
            Box::new(trajectories_started.clone()),
            Box::new(trajectories_ended.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        // Known label values start at zero, so a rate() exists before the
        // first event and an alert on losses can fire on the first one.
        for kind in ["exec", "open", "connect", "trajectory_start", "trajectory_end", "gap"] {
            events.with_label_values(&[kind]);
        }
        for reason in ["ringbuf_full", "decode_error", "unknown_trajectory"] {
            events_lost.with_label_values(&[reason]);
        }
        Arc::new(Metrics {
            registry,
            events,
            events_lost,
            trajectories_active,
            trajectories_started,
            trajectories_ended,
            decisions,
            denials,
            policy_reloads,
            policy_rules,
            hook_mechanism,
        })
    }

    pub fn count_decision(&self, policy: &str, class: &str, decision: &str, mechanism: Option<&str>) {
        self.decisions.with_label_values(&[policy, class, decision]).inc();
        if decision == "deny" {
            self.denials.with_label_values(&[policy, class, mechanism.unwrap_or("none")]).inc();
        }
    }

    /// Replaces the rule-count gauges with the loaded set's.
    pub fn set_rule_counts(&self, counts: &[(String, [usize; 3])]) {
        self.policy_rules.reset();
        for (policy, [file, exec, network]) in counts {
            for (class, n) in [("file", file), ("exec", exec), ("network", network)] {
                self.policy_rules.with_label_values(&[policy, class]).set(*n as i64);
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
