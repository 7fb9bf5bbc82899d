//! The event pipeline under load: a generator in a trajectory makes one
//! record per operation, first paced at [`PACED_RATE`](super::PACED_RATE)
//! opens per second (the rate the memory target is stated at), then as fast
//! as it can on every CPU, with opens (the common record, 1128 bytes, path
//! resolved in the kernel) and with UDP connects (the cheapest record, 112
//! bytes). The generator's count is what the kernel attempted to record;
//! the stream and the kernel's loss counters must account for every one.
//! Last, a daemon with a small ring buffer is stopped (`SIGSTOP`) in the
//! middle of a flood, as a stalled consumer would be, so that the kernel
//! must drop records and the accounting is checked with losses.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;

use super::{
    count_lines,
    daemon::{cpu_seconds, memory, Daemon, Memory},
    parse_load, policies,
    stats::fmt_num,
    trajectory_command, Env, Plan, PACED_RATE,
};

const LOST_SERIES: &str = "agent_monitor_events_lost_total{reason=\"ringbuf_full\"}";

/// One generator run.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub name: String,
    /// A flood (as fast as it can), to which the throughput targets apply;
    /// otherwise the paced run, to which the memory target applies.
    pub flood: bool,
    /// The daemon was stopped for a while: no target applies.
    pub stalled: bool,
    pub threads: usize,
    /// Operations the generator made (each one a kernel record attempted),
    /// and the time it took.
    pub attempted: u64,
    pub generator_s: f64,
    /// Records of those operations in the JSON Lines file.
    pub received: u64,
    /// `trajectory_end`: every record of the trajectory, and the kernel's
    /// count of those it could not store.
    pub records: u64,
    pub lost: u64,
    /// Growth of `agent_monitor_events_lost_total{reason="ringbuf_full"}`.
    pub lost_metric: f64,
    /// `trajectory_end.duration_ns`: trajectory start to its last record
    /// written, the drain after the generator exits included.
    pub duration_s: f64,
    /// Daemon CPU (user + system, all threads) over the run and the drain.
    pub cpu_s: f64,
    /// Largest sampled RSS without the ring buffer, and the daemon's memory
    /// when the run ended.
    pub peak_without_ring: u64,
    pub end: Memory,
}

impl Phase {
    /// attempted = received + counted losses, and the metric agrees.
    pub fn exact(&self) -> bool {
        self.attempted == self.received + self.lost && self.lost_metric == self.lost as f64
    }

    /// Kernel records per second, stored or counted as lost.
    pub fn offered_rate(&self) -> f64 {
        (self.received + self.lost) as f64 / self.generator_s
    }

    /// JSON lines per second of wall time, until the stream was complete.
    pub fn delivered_rate(&self) -> f64 {
        self.records as f64 / self.duration_s
    }

    /// JSON lines per second of daemon CPU time: the rate on one core.
    pub fn lines_per_cpu_second(&self) -> f64 {
        self.records as f64 / self.cpu_s
    }

    pub fn cpu_per_million(&self) -> f64 {
        self.cpu_s / (self.records as f64 / 1e6)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    /// The daemon right after start.
    pub idle: Memory,
    pub phases: Vec<Phase>,
}

/// One generator run to make: name, `bench-load` arguments, threads, and
/// the text that marks its records in the stream.
struct Spec {
    name: String,
    flood: bool,
    args: Vec<String>,
    threads: usize,
    needle: String,
    /// Stop the daemon for this long, from a quarter into the run.
    stall: Option<Duration>,
}

/// Ring buffer of the stall phase's daemon: small, so that a stall of a
/// fraction of a second fills it (1 MiB holds about 9,000 connect records).
const STALL_RING: &str = "1048576";

pub fn run(env: &Env, plan: &Plan) -> Result<Pipeline> {
    let flood_file = env.flood_file().display().to_string();
    let ms = |t: Duration| t.as_millis().to_string();
    let open_needle = format!("\"path\":\"{flood_file}-");
    let connect_needle = "\"addr\":\"127.0.0.1\",\"port\":9,".to_string();
    let specs = [
        Spec {
            name: format!("paced, {} opens/s, 1 thread", fmt_num(PACED_RATE as f64)),
            flood: false,
            args: vec!["paced".into(), ms(plan.paced), PACED_RATE.to_string(), format!("{flood_file}-0")],
            threads: 1,
            needle: open_needle.clone(),
            stall: None,
        },
        Spec {
            name: format!("flood of opens, {} threads", env.cpus),
            flood: true,
            args: vec!["flood".into(), ms(plan.flood), env.cpus.to_string(), flood_file],
            threads: env.cpus,
            needle: open_needle,
            stall: None,
        },
        Spec {
            name: format!("flood of UDP connects, {} threads", env.cpus),
            flood: true,
            args: vec!["flood-connect".into(), ms(plan.flood), env.cpus.to_string()],
            threads: env.cpus,
            needle: connect_needle.clone(),
            stall: None,
        },
        Spec {
            name: format!(
                "the same, daemon stopped {:.1} s, {} MiB ring",
                (plan.flood / 2).as_secs_f64(),
                STALL_RING.parse::<u64>().unwrap_or(0) >> 20
            ),
            flood: true,
            args: vec!["flood-connect".into(), ms(plan.flood), env.cpus.to_string()],
            threads: env.cpus,
            needle: connect_needle,
            stall: Some(plan.flood / 2),
        },
    ];
    // A fresh daemon, so its high-water mark is this load's.
    let mut d = Daemon::start(&env.bin, &env.out, &env.policies)?;
    let idle = memory(d.pid())?;
    let policy = policies::file_policy_name(false, policies::FILE_RULES[0]);
    let mut phases = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if spec.stall.is_some() {
            d.truncate_events()?;
            d.stop()?;
            d = Daemon::start_with(&env.bin, &env.out, &env.policies, &["--ringbuf-size", STALL_RING])?;
        }
        phases.push(phase(env, &d, &format!("bench-pipeline-{i}"), &policy, spec)?);
    }
    d.truncate_events()?;
    d.stop()?;
    Ok(Pipeline { idle, phases })
}

fn phase(env: &Env, d: &Daemon, id: &str, policy: &str, spec: &Spec) -> Result<Phase> {
    let args = &spec.args;
    d.truncate_events()?;
    let pid = d.pid();
    let lost0 = d.metric(LOST_SERIES)?;
    let cpu0 = cpu_seconds(pid)?;
    let mut peak = 0u64;
    let mut sample = || -> Result<()> {
        peak = peak.max(memory(pid)?.without_ring());
        Ok(())
    };
    let started = Instant::now();
    let mut child = trajectory_command(env, d, id, policy, args).stdout(Stdio::piped()).spawn()?;
    // (stop at, continue at) relative to the start.
    let mut stall = spec.stall.map(|t| (t / 2, t / 2 + t));
    while child.try_wait()?.is_none() {
        sample()?;
        if let Some((stop, cont)) = stall {
            if started.elapsed() >= stop {
                d.signal("STOP")?;
                std::thread::sleep(cont - stop);
                d.signal("CONT")?;
                stall = None;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("agent-monitor run -- bench-load {} failed ({})", args.join(" "), out.status);
    }
    let load = parse_load(&out.stdout)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let end: Value = loop {
        sample()?;
        if let Some(end) = d.try_end(id)? {
            break end;
        }
        if Instant::now() > deadline {
            bail!("no trajectory_end for {id} within 120 s of the generator's exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let cpu_s = cpu_seconds(pid)? - cpu0;
    let end_memory = memory(pid)?;
    // The global loss counter reaches /metrics on the pipeline's 10 ms tick.
    std::thread::sleep(Duration::from_millis(100));
    let lost_metric = d.metric(LOST_SERIES)? - lost0;
    let received = count_lines(env, &d.events, &spec.needle)?;
    let u = |k: &str| end[k].as_u64().unwrap_or(0);
    Ok(Phase {
        name: spec.name.clone(),
        flood: spec.flood,
        stalled: spec.stall.is_some(),
        threads: spec.threads,
        attempted: load.ops,
        generator_s: load.wall.as_secs_f64(),
        received,
        records: u("records"),
        lost: u("lost"),
        lost_metric,
        duration_s: u("duration_ns") as f64 / 1e9,
        cpu_s,
        peak_without_ring: peak,
        end: end_memory,
    })
}
