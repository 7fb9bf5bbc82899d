//! The bench's results as a Markdown table (`target/bench/results.md`, the
//! table docs/performance.md holds) and as JSON (`target/bench/results.json`).

use std::{fmt::Write, time::Duration};

use serde_json::{json, Value};

use super::{
    pipeline::{Phase, Pipeline},
    stats::{fmt_num, Pairs, Summary, Target},
    Measure, Measured, Plan, Rounds, Workload, DNS_TARGET_US, PACED_RATE,
};

pub struct Report {
    pub plan: Plan,
    pub cpus: usize,
    pub rounds: Rounds,
    pub pipeline: Pipeline,
    pub rounds_took: Duration,
    pub took: Duration,
}

/// A pipeline target: the target, whether it applies to the floods (else to
/// the paced run), and the value of a phase it is checked against.
type PhaseTarget<'a> = Option<(Target, bool, &'a dyn Fn(&Phase) -> f64)>;

const EVENTS_TARGET: Target = Target::AtLeast(1_000_000.0);
const LINES_TARGET: Target = Target::AtLeast(250_000.0);
const RSS_TARGET_MIB: Target = Target::AtMost(32.0);

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn met(target: Option<Target>, value: f64) -> &'static str {
    match target {
        None => "",
        Some(_) if value.is_nan() => "n/a",
        Some(t) if t.met(value) => "yes",
        Some(_) => "**no**",
    }
}

fn ratio(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.3}")
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let cmd = if p.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" };
        writeln!(s, "## `{cmd}`\n").unwrap();
        writeln!(
            s,
            "Kernel {}, {} CPUs; {} pairs per workload{}, {} ms timed loops; rounds {:.0} s, whole run {:.0} s \
             (build check included).",
            self.rounds.host.kernel,
            self.cpus,
            p.pairs,
            if p.quick { " (--quick: fewer pairs and shorter runs than the full bench)" } else { "" },
            p.run.as_millis(),
            self.rounds_took.as_secs_f64(),
            self.took.as_secs_f64()
        )
        .unwrap();
        let enf: Vec<String> = self.rounds.host.enforcement.iter().map(|(c, m)| format!("{c}={m}")).collect();
        writeln!(s, "Enforcement: {}.\n", enf.join(" ")).unwrap();
        if !self.rounds.foreign.is_empty() {
            let r: Vec<String> = self.rounds.foreign.iter().map(usize::to_string).collect();
            writeln!(
                s,
                "Another agent-monitor daemon had programs attached during round(s) {} of {}: its open \
                 tracepoints ran on every open of the machine, baselines included.\n",
                r.join(", "),
                self.plan.pairs
            )
            .unwrap();
        }

        writeln!(
            s,
            "### Cost per operation (ratio = monitored / baseline of each pair; median, min, max over pairs)\n"
        )
        .unwrap();
        s.push_str("| workload | baseline ns/op | monitored ns/op | added ns/op | ratio | min | max | records/run | lost | target | met |\n");
        s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n");
        for (w, m) in self.per_op(&self.rounds.workloads, &self.rounds.measured) {
            row(&mut s, &w.title, &w.summary(m), &records(m), &m.lost.to_string(), w.target);
        }
        for (c, m) in self.per_op(&self.rounds.controls, &self.rounds.control_results) {
            row(&mut s, &c.title, &c.summary(m), "–", "–", None);
        }
        s.push_str(
            "\nns/op is CPU time of the workload process per operation (time other processes held the CPU \
             left out), except fork+exec: wall time, and its ratio is of rates (baseline time / monitored \
             time: below 1 is slower). Records/run: the \
             trajectory's records as `trajectory_end` counts them; lost: the kernel's count over all pairs. \
             Control rows compare two runs with nothing attached: their spread is the noise floor.\n\n",
        );
        if let Some(l) = self.learned_vs_cidr() {
            writeln!(
                s,
                "Connect to a learned address against a CIDR-allowed one (the monitored halves of each round, \
                 one daemon): learned − CIDR {} ns/op (median; min {}, max {}), learned / CIDR {} \
                 (min {}, max {}).\n",
                fmt_num(l.added_ns),
                fmt_num(l.added_min),
                fmt_num(l.added_max),
                ratio(l.ratio),
                ratio(l.ratio_min),
                ratio(l.ratio_max)
            )
            .unwrap();
        }
        self.latency(&mut s);

        let phases = &self.pipeline.phases;
        writeln!(s, "### Event pipeline (a generator in a trajectory; one record per operation)\n").unwrap();
        s.push_str("| measure |");
        for ph in phases {
            write!(s, " {} |", ph.name).unwrap();
        }
        s.push_str(" target |\n| --- |");
        s.push_str(&" ---: |".repeat(phases.len()));
        s.push_str(" --- |\n");
        // One row: a cell per phase, marked against `target` where it applies.
        let mut line = |name: &str, cell: &dyn Fn(&Phase) -> String, target: PhaseTarget| {
            write!(s, "| {name} |").unwrap();
            for ph in phases {
                let mut c = cell(ph);
                if let Some((t, flood, value)) = target {
                    if ph.flood == flood && !ph.stalled {
                        c.push_str(if t.met(value(ph)) { " (met)" } else { " (**not met**)" });
                    }
                }
                write!(s, " {c} |").unwrap();
            }
            let t = target.map(|(t, flood, _)| {
                let unit = if t == RSS_TARGET_MIB { " MiB" } else { "" };
                t.describe(&format!("{unit} ({})", if flood { "floods" } else { "paced" }))
            });
            writeln!(s, " {} |", t.unwrap_or_default()).unwrap();
        };
        line(
            "operations attempted by the generator",
            &|ph| format!("{} in {:.2} s", fmt_num(ph.attempted as f64), ph.generator_s),
            None,
        );
        line(
            "events/s recorded or counted (kernel)",
            &|ph| fmt_num(ph.offered_rate()),
            Some((EVENTS_TARGET, true, &|ph: &Phase| ph.offered_rate())),
        );
        line("records of those operations in the JSONL file", &|ph| fmt_num(ph.received as f64), None);
        line(
            "lost, counted by the kernel",
            &|ph| format!("{} ({:.1} %)", fmt_num(ph.lost as f64), 100.0 * ph.lost as f64 / ph.attempted.max(1) as f64),
            None,
        );
        line(
            "attempted = received + lost, and the loss metric agrees",
            &|ph| {
                if ph.exact() {
                    "exact".into()
                } else {
                    format!(
                        "**off by {}** (metric {})",
                        ph.attempted as i64 - (ph.received + ph.lost) as i64,
                        fmt_num(ph.lost_metric)
                    )
                }
            },
            None,
        );
        line(
            "JSON lines/s written, wall time to the last line",
            &|ph| format!("{} in {:.2} s", fmt_num(ph.delivered_rate()), ph.duration_s),
            None,
        );
        line(
            "JSON lines per daemon CPU-second",
            &|ph| format!("{} ({:.2} s CPU)", fmt_num(ph.lines_per_cpu_second()), ph.cpu_s),
            Some((LINES_TARGET, true, &|ph: &Phase| ph.lines_per_cpu_second())),
        );
        line("daemon CPU seconds per million records", &|ph| format!("{:.2}", ph.cpu_per_million()), None);
        line(
            "daemon peak RSS without the ring buffer (sampled every 10 ms)",
            &|ph| format!("{:.1} MiB", mib(ph.peak_without_ring)),
            Some((RSS_TARGET_MIB, false, &|ph: &Phase| mib(ph.peak_without_ring))),
        );
        line("ring buffer resident in the daemon at the end", &|ph| format!("{:.1} MiB", mib(ph.end.ring)), None);
        line("VmHWM at the end (ring buffer included)", &|ph| format!("{:.1} MiB", mib(ph.end.hwm)), None);
        writeln!(
            s,
            "\nIdle daemon after start: RSS {:.1} MiB, of which ring buffer {:.1} MiB.\n",
            mib(self.pipeline.idle.rss),
            mib(self.pipeline.idle.ring)
        )
        .unwrap();

        s.push_str("### Mechanism per hook\n\n| hook | mechanism |\n| --- | --- |\n");
        for (h, m) in &self.rounds.host.hooks {
            writeln!(s, "| {h} | {m} |").unwrap();
        }
        s
    }

    pub fn json(&self) -> Value {
        let summary = |w: &Workload, m: &Measured| {
            let sum = w.summary(m);
            json!({
                "key": w.key,
                "title": w.title,
                "args": w.args,
                "baseline_args": w.baseline_args(),
                "measure": w.measure.as_str(),
                "rate_ratio": w.measure == Measure::Rate,
                "pairs": m.pairs.pairs.iter().map(|(b, m)| json!({"baseline_ns": b, "monitored_ns": m})).collect::<Vec<_>>(),
                "baseline_ns_median": sum.baseline_ns,
                "monitored_ns_median": sum.monitored_ns,
                "added_ns_median": sum.added_ns,
                "added_ns_min": sum.added_min,
                "added_ns_max": sum.added_max,
                "ratio_median": sum.ratio,
                "ratio_min": sum.ratio_min,
                "ratio_max": sum.ratio_max,
                "records_per_run": m.records,
                "lost": m.lost,
                "target": w.target.map(|t| t.describe(if w.measure == Measure::Latency { " µs added" } else { "" })),
                "met": w.target.map(|t| t.met(w.judged(&sum))),
            })
        };
        let phase = |ph: &Phase| {
            json!({
                "name": ph.name,
                "flood": ph.flood,
                "stalled": ph.stalled,
                "threads": ph.threads,
                "attempted": ph.attempted,
                "generator_s": ph.generator_s,
                "received": ph.received,
                "records": ph.records,
                "lost": ph.lost,
                "lost_metric": ph.lost_metric,
                "exact": ph.exact(),
                "events_per_s_recorded_or_counted": ph.offered_rate(),
                "lines_per_s_wall": ph.delivered_rate(),
                "stream_duration_s": ph.duration_s,
                "daemon_cpu_s": ph.cpu_s,
                "lines_per_daemon_cpu_s": ph.lines_per_cpu_second(),
                "daemon_cpu_s_per_million": ph.cpu_per_million(),
                "peak_rss_without_ring_bytes": ph.peak_without_ring,
                "end_rss_bytes": ph.end.rss,
                "end_ring_rss_bytes": ph.end.ring,
                "end_vmhwm_bytes": ph.end.hwm,
            })
        };
        json!({
            "mode": if self.plan.quick { "quick" } else { "full" },
            "pairs": self.plan.pairs,
            "run_ms": self.plan.run.as_millis() as u64,
            "kernel": self.rounds.host.kernel,
            "cpus": self.cpus,
            "enforcement": self.rounds.host.enforcement.iter().map(|(c, m)| (c.clone(), json!(m))).collect::<serde_json::Map<_, _>>(),
            "hooks": self.rounds.host.hooks.iter().map(|(h, m)| json!({"hook": h, "mechanism": m})).collect::<Vec<_>>(),
            "workloads": self.rounds.workloads.iter().zip(&self.rounds.measured).map(|(w, m)| summary(w, m)).collect::<Vec<_>>(),
            "controls": self.rounds.controls.iter().zip(&self.rounds.control_results).map(|(w, m)| summary(w, m)).collect::<Vec<_>>(),
            "connect_learned_vs_cidr": self.learned_vs_cidr().map(|l| json!({
                "added_ns_median": l.added_ns,
                "added_ns_min": l.added_min,
                "added_ns_max": l.added_max,
                "ratio_median": l.ratio,
                "ratio_min": l.ratio_min,
                "ratio_max": l.ratio_max,
            })),
            "pipeline": {
                "idle_rss_bytes": self.pipeline.idle.rss,
                "idle_ring_rss_bytes": self.pipeline.idle.ring,
                "paced_rate": PACED_RATE,
                "phases": self.pipeline.phases.iter().map(phase).collect::<Vec<_>>(),
                "targets": {
                    "events_per_s": EVENTS_TARGET.describe(""),
                    "lines_per_daemon_cpu_s": LINES_TARGET.describe(""),
                    "paced_peak_rss_without_ring_mib": RSS_TARGET_MIB.describe(""),
                },
            },
            "rounds_with_another_daemon": self.rounds.foreign,
            "rounds_s": self.rounds_took.as_secs_f64(),
            "total_s": self.took.as_secs_f64(),
        })
    }
}

impl Workload {
    fn summary(&self, m: &Measured) -> Summary {
        m.pairs.summary(self.measure == Measure::Rate)
    }
}

/// Median records per monitored run, or – when it ran in no trajectory.
fn records(m: &Measured) -> String {
    if m.records.is_empty() {
        return "–".into();
    }
    fmt_num(super::stats::median(&m.records.iter().map(|&r| r as f64).collect::<Vec<_>>()).round())
}

/// Microseconds with one decimal (a value that rounds to zero is "0.0", not "-0.0").
fn us(ns: f64) -> String {
    if ns.is_nan() {
        "n/a".into()
    } else {
        format!("{:.1}", (ns / 100.0).round() / 10.0 + 0.0)
    }
}

impl Report {
    /// The workloads (or controls) of the per-operation table, with their
    /// results: all but the latency ones, which have their own.
    fn per_op<'a>(&self, w: &'a [Workload], m: &'a [Measured]) -> impl Iterator<Item = (&'a Workload, &'a Measured)> {
        w.iter().zip(m).filter(|(w, _)| w.measure != Measure::Latency)
    }

    /// The learned-address connect against the CIDR one, per round: pairs
    /// of (CIDR monitored, learned monitored).
    fn learned_vs_cidr(&self) -> Option<Summary> {
        let r = &self.rounds;
        let at = |key: &str| r.workloads.iter().position(|w| w.key == key);
        let (cidr, learned) = (&r.measured[at("connect")?], &r.measured[at("connect-learned")?]);
        let pairs = cidr.pairs.pairs.iter().zip(&learned.pairs.pairs).map(|(c, l)| (c.1, l.1)).collect();
        Some(Pairs { pairs }.summary(false))
    }

    /// The latency table: median time of one question and its answer.
    fn latency(&self, s: &mut String) {
        let r = &self.rounds;
        let rows: Vec<(&Workload, &Measured, bool)> = (r.workloads.iter().zip(&r.measured).map(|(w, m)| (w, m, false)))
            .chain(r.controls.iter().zip(&r.control_results).map(|(w, m)| (w, m, true)))
            .filter(|(w, _, _)| w.measure == Measure::Latency)
            .collect();
        if rows.is_empty() {
            return;
        }
        writeln!(s, "### DNS resolver latency (median time of one question and its answer)\n").unwrap();
        s.push_str("| question | baseline µs | monitored µs | added µs | min | max | records/run | target | met |\n");
        s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n");
        for (w, m, control) in rows {
            let sum = w.summary(m);
            let (records, target) = if control { ("–".into(), None) } else { (records(m), w.target) };
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {records} | {} | {} |",
                w.title,
                us(sum.baseline_ns),
                us(sum.monitored_ns),
                us(sum.added_ns),
                us(sum.added_min),
                us(sum.added_max),
                target.map(|t| t.describe(" µs added")).unwrap_or_default(),
                met(target, w.judged(&sum))
            )
            .unwrap();
        }
        writeln!(
            s,
            "\nEach run asks one name's A record over one connected UDP socket, again and again with a new id, \
             for {} ms; its value is the median time from send to answer. Monitored: in a trajectory, asking \
             {} (the connect hook redirects it to the daemon's resolver, which forwards it to dnsmasq and \
             writes the answer's address into the kernel before releasing it); baseline: the same question \
             directly to dnsmasq, no daemon running. Added is the median over pairs of (monitored − baseline); \
             the target ({}) is reported, not asserted. The control asks dnsmasq directly in both halves.\n",
            self.plan.run.as_millis(),
            super::dns::NAMESERVER,
            DNS_TARGET_US.describe(" µs")
        )
        .unwrap();
    }
}

fn row(s: &mut String, title: &str, sum: &Summary, records: &str, lost: &str, target: Option<Target>) {
    writeln!(
        s,
        "| {title} | {} | {} | {} | {} | {} | {} | {records} | {lost} | {} | {} |",
        fmt_num(sum.baseline_ns),
        fmt_num(sum.monitored_ns),
        fmt_num(sum.added_ns),
        ratio(sum.ratio),
        ratio(sum.ratio_min),
        ratio(sum.ratio_max),
        target.map(|t| t.describe("×")).unwrap_or_default(),
        met(target, sum.ratio)
    )
    .unwrap();
}
