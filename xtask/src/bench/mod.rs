//! `cargo xtask bench`: what the monitor costs the agent's syscalls, how
//! many events it carries, and what the daemon spends doing so (issue 7;
//! docs/performance.md has the method, the latest numbers and what they
//! decided).
//!
//! Each workload runs interleaved with its baseline in rounds: a phase
//! without the daemon (baselines, and the control pairs that measure the
//! noise floor) and a phase with a freshly started daemon (the monitored
//! runs), the order of the two phases alternating from round to round so
//! that a linear drift in the machine's load cancels. The workload binary
//! (`bench-load`, tests/bench/load.rs) times its own loop, so process
//! startup is excluded. Then the event pipeline is driven by a generator.
//!
//! The DNS workloads (a connect to an address learned from a domain rule,
//! and the latency of one question through the redirect and the resolver)
//! use a dnsmasq on a loopback port ([`dns`]) as the daemon's upstream.

mod daemon;
mod dns;
mod pipeline;
mod policies;
mod report;
mod stats;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use daemon::Daemon;
use stats::{Pairs, Target};

#[derive(clap::Args, Debug, Default)]
pub struct BenchArgs {
    /// Fewer pairs and shorter runs (under two minutes); what `cargo xtask
    /// test` runs, reporting only.
    #[arg(long)]
    pub quick: bool,
    /// Baseline/monitored pairs per workload (default 11, or 3 with --quick).
    #[arg(long)]
    pub pairs: Option<usize>,
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub quick: bool,
    pub pairs: usize,
    /// Length of one timed loop.
    pub run: Duration,
    /// Length of the pipeline generator's flood, and of its paced run.
    pub flood: Duration,
    pub paced: Duration,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let (pairs, run, flood) = if args.quick { (3, 100, 2_000) } else { (11, 400, 5_000) };
        Plan {
            quick: args.quick,
            pairs: args.pairs.unwrap_or(pairs).max(1),
            run: Duration::from_millis(run),
            flood: Duration::from_millis(flood),
            paced: Duration::from_millis(flood),
        }
    }
}

/// Rate of the paced pipeline run: the load the RSS target is stated at.
pub const PACED_RATE: u64 = 100_000;

/// Files and programs of a bench run.
pub struct Env {
    pub out: PathBuf,
    pub bin: PathBuf,
    pub load: PathBuf,
    pub policies: PathBuf,
    /// The trajectories' workspace, holding the files the workloads open.
    pub work: PathBuf,
    pub cpus: usize,
    /// The resolv.conf of trajectories that resolve names.
    pub resolv: PathBuf,
    /// dnsmasq's `127.0.0.1:PORT`, the monitored daemons' `--dns-upstream`.
    pub dns_upstream: String,
}

impl Env {
    fn open_file(&self) -> PathBuf {
        self.work.join("open.txt")
    }

    pub fn flood_file(&self) -> PathBuf {
        self.work.join("flood.txt")
    }
}

/// Where a workload's monitored half runs.
#[derive(Debug, Clone)]
enum Place {
    /// In a trajectory under `policy`; `resolv`: in a mount namespace whose
    /// /etc/resolv.conf is [`Env::resolv`], so its lookups are redirected.
    Trajectory { policy: String, resolv: bool },
    /// With the daemon running, in no trajectory.
    Outside,
}

impl Place {
    fn trajectory(policy: String) -> Place {
        Place::Trajectory { policy, resolv: false }
    }
}

/// What one run of a workload yields, and what its pairs compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// CPU time per operation; the ratio is of times.
    Cpu,
    /// Wall time per operation; the ratio is of rates (baseline time /
    /// monitored time), as for fork+exec, whose cost is in the children.
    Rate,
    /// The median wall time of one operation (`median_ns` of bench-load
    /// `dns`); its target is on the added time, in µs.
    Latency,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Cpu => "cpu_time",
            Measure::Rate => "rate",
            Measure::Latency => "median_latency",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub key: String,
    pub title: String,
    args: Vec<String>,
    /// The baseline's arguments when they differ from `args`: the server
    /// asked directly rather than through the redirect, or no name to
    /// resolve (outside a trajectory the lookup would go to the host's
    /// nameserver).
    baseline: Option<Vec<String>>,
    place: Place,
    pub measure: Measure,
    pub target: Option<Target>,
}

impl Workload {
    fn baseline_args(&self) -> &[String] {
        self.baseline.as_deref().unwrap_or(&self.args)
    }

    /// The value the target applies to: the median ratio, or for latency
    /// the median added time in µs.
    pub fn judged(&self, sum: &stats::Summary) -> f64 {
        match self.measure {
            Measure::Cpu | Measure::Rate => sum.ratio,
            Measure::Latency => sum.added_ns / 1_000.0,
        }
    }
}

/// How many agent-monitor daemons have programs attached on the machine
/// (each has one `sched_process_exec` tracepoint program); `None` when
/// bpftool cannot tell. Another daemon's open tracepoints run on every open of the machine,
/// baselines included, so rounds that had one are reported.
fn monitors_attached() -> Option<usize> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().ok()?;
    let progs: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(progs.as_array()?.iter().filter(|p| p["name"] == "sched_process_exec").count())
}

/// Results of one workload (or control) over all rounds.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub pairs: Pairs,
    /// Records of each monitored run (`trajectory_end.records`), and the
    /// kernel's count of those it lost.
    pub records: Vec<u64>,
    pub lost: u64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let plan = Plan::new(args);
    let begun = Instant::now();
    crate::setup::ensure()?;
    if !crate::setup::is_root() {
        bail!("the bench loads eBPF programs and creates cgroups: run `cargo xtask bench` as root");
    }
    // The daemon exactly as `cargo xtask build` makes it, and the workload
    // binary (an example of xtask, so it adds no dependency to the daemon).
    crate::cargo(&["build", "--release", "--locked", "--package", "agent-monitor"])?;
    crate::cargo(&["build", "--release", "--locked", "--package", "xtask", "--example", "bench-load"])?;
    let root = crate::root();
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let work = out.join("work");
    std::fs::create_dir_all(work.join("secret"))?;
    std::fs::write(work.join("secret/key"), "bench")?;
    // Runs (stopped when dropped) until the report is written.
    let upstream = dns::Upstream::start(&out)?;
    let env = Env {
        bin: root.join("target/release/agent-monitor"),
        load: root.join("target/release/examples/bench-load"),
        policies: out.join("policies"),
        work: work.canonicalize()?,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        resolv: dns::write_resolv_conf(&out)?,
        dns_upstream: upstream.addr(),
        out,
    };
    std::fs::write(env.open_file(), "bench\n")?;
    for i in 0..env.cpus {
        std::fs::write(format!("{}-{i}", env.flood_file().display()), "bench\n")?;
    }
    policies::write_all(&env.policies)?;

    let started = Instant::now();
    let rounds = rounds(&env, &plan)?;
    let rounds_took = started.elapsed();
    eprintln!("xtask: bench: event pipeline");
    let pipeline = pipeline::run(&env, &plan)?;
    let report = report::Report { plan, cpus: env.cpus, rounds, pipeline, rounds_took, took: begun.elapsed() };
    let md = report.markdown();
    std::fs::write(env.out.join("results.md"), &md)?;
    std::fs::write(env.out.join("results.json"), serde_json::to_string_pretty(&report.json())? + "\n")?;
    println!("\n{md}");
    println!("(written to {} and results.json)", env.out.join("results.md").display());
    if report.pipeline.phases.iter().any(|p| !p.exact()) {
        bail!("event accounting is not exact: attempted != received + counted losses (see the table)");
    }
    Ok(())
}

/// What the daemon says about the machine: kernel, mechanism per hook, and
/// per rule class.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub kernel: String,
    pub hooks: Vec<(String, String)>,
    pub enforcement: Vec<(String, String)>,
}

impl Host {
    fn from_status(s: &Value) -> Host {
        let str_of = |v: &Value| v.as_str().unwrap_or("?").to_owned();
        Host {
            kernel: str_of(&s["kernel"]),
            hooks: s["hooks"]
                .as_array()
                .map(|a| a.iter().map(|h| (str_of(&h["hook"]), str_of(&h["mechanism"]))).collect())
                .unwrap_or_default(),
            enforcement: ["file", "exec", "network"]
                .iter()
                .map(|c| (c.to_string(), str_of(&s["enforcement"][c])))
                .collect(),
        }
    }

    pub fn lsm(&self) -> bool {
        self.enforcement.iter().any(|(c, m)| c == "file" && m == "lsm-deny")
    }
}

fn workloads(env: &Env, plan: &Plan, host: &Host) -> Vec<Workload> {
    let ms = plan.run.as_millis().to_string();
    let open = env.open_file().display().to_string();
    let getppid_target = Target::AtMost(if host.lsm() { 1.02 } else { 1.40 });
    let base_policy = policies::file_policy_name(false, policies::FILE_RULES[0]);
    let mut w = vec![
        Workload {
            key: "getppid-trajectory".into(),
            title: "getppid, in a trajectory".into(),
            args: vec!["getppid".into(), ms.clone()],
            baseline: None,
            place: Place::trajectory(base_policy.clone()),
            measure: Measure::Cpu,
            target: Some(getppid_target),
        },
        Workload {
            key: "getppid-outside".into(),
            title: "getppid, outside any trajectory".into(),
            args: vec!["getppid".into(), ms.clone()],
            baseline: None,
            place: Place::Outside,
            measure: Measure::Cpu,
            target: Some(getppid_target),
        },
    ];
    w.push(Workload {
        key: "open-outside".into(),
        title: "openat+close, outside any trajectory".into(),
        args: vec!["open".into(), ms.clone(), open.clone()],
        baseline: None,
        place: Place::Outside,
        measure: Measure::Cpu,
        target: None,
    });
    for audit in [true, false] {
        for rules in policies::FILE_RULES {
            w.push(Workload {
                key: format!("open-{}-{rules}", if audit { "audit" } else { "enforce" }),
                title: format!(
                    "openat+close, {} rules, {}",
                    stats::fmt_num(rules as f64),
                    if audit { "audit" } else { "enforce, allowed" }
                ),
                args: vec!["open".into(), ms.clone(), open.clone()],
                baseline: None,
                place: Place::trajectory(policies::file_policy_name(audit, rules)),
                measure: Measure::Cpu,
                target: (rules == 1_000).then_some(Target::AtMost(1.15)),
            });
        }
    }
    w.push(Workload {
        key: "exec".into(),
        title: "fork+exec /bin/true (rate ratio)".into(),
        args: vec!["exec".into(), ms.clone(), "/bin/true".into()],
        baseline: None,
        place: Place::trajectory(base_policy),
        measure: Measure::Rate,
        target: Some(Target::AtLeast(0.95)),
    });
    w.push(Workload {
        key: "connect".into(),
        title: format!("loopback TCP connect+accept+close, {} CIDR rules", stats::fmt_num(policies::NET_RULES as f64)),
        args: vec!["connect".into(), ms.clone()],
        baseline: None,
        place: Place::trajectory(policies::net_policy_name()),
        measure: Measure::Cpu,
        target: Some(CONNECT_TARGET),
    });
    // The same loop, allowed by the address `bench.test` taught the kernel
    // (bench-load resolves it before the loop, through the redirect).
    w.push(Workload {
        key: "connect-learned".into(),
        title: format!(
            "loopback TCP connect+accept+close, learned address (domain rule + {} CIDR rules)",
            stats::fmt_num((policies::NET_RULES - 1) as f64)
        ),
        args: vec!["connect".into(), ms.clone(), dns::NAME.into()],
        baseline: Some(vec!["connect".into(), ms.clone()]),
        place: Place::Trajectory { policy: policies::learned_policy_name(), resolv: true },
        measure: Measure::Cpu,
        target: Some(CONNECT_TARGET),
    });
    w.push(Workload {
        key: "dns".into(),
        title: format!("DNS question (A {}), through the redirect and the resolver", dns::NAME),
        args: vec!["dns".into(), ms.clone(), dns::NAMESERVER.into(), dns::NAME.into()],
        baseline: Some(vec!["dns".into(), ms, env.dns_upstream.clone(), dns::NAME.into()]),
        place: Place::trajectory(policies::learned_policy_name()),
        measure: Measure::Latency,
        target: Some(DNS_TARGET_US),
    });
    w
}

/// Issue 7's target for a trajectory's loopback connect, by CIDR rule or
/// by learned address.
const CONNECT_TARGET: Target = Target::AtMost(1.01);
/// The domain-egress issue's target for one DNS question through the
/// redirect and the resolver: added median latency in µs on this machine.
pub const DNS_TARGET_US: Target = Target::AtMost(200.0);

/// Control pairs: the same baseline run twice, nothing attached.
fn controls(env: &Env, plan: &Plan) -> Vec<Workload> {
    let ms = plan.run.as_millis().to_string();
    let open = env.open_file().display().to_string();
    let c = |key: &str, title: &str, args: Vec<String>, measure: Measure| Workload {
        key: key.into(),
        title: title.into(),
        args,
        baseline: None,
        place: Place::Outside,
        measure,
        target: None,
    };
    vec![
        c("control-getppid", "control: getppid vs getppid", vec!["getppid".into(), ms.clone()], Measure::Cpu),
        c("control-open", "control: openat+close vs openat+close", vec!["open".into(), ms.clone(), open], Measure::Cpu),
        c(
            "control-exec",
            "control: fork+exec vs fork+exec (rate ratio)",
            vec!["exec".into(), ms.clone(), "/bin/true".into()],
            Measure::Rate,
        ),
        c("control-connect", "control: connect vs connect", vec!["connect".into(), ms.clone()], Measure::Cpu),
        c(
            "control-dns",
            "control: DNS question vs DNS question, both directly to dnsmasq",
            vec!["dns".into(), ms, env.dns_upstream.clone(), dns::NAME.into()],
            Measure::Latency,
        ),
    ]
}

pub struct Rounds {
    pub host: Host,
    pub workloads: Vec<Workload>,
    pub controls: Vec<Workload>,
    pub measured: Vec<Measured>,
    pub control_results: Vec<Measured>,
    /// Rounds (from 1) during which another daemon's programs were attached.
    pub foreign: Vec<usize>,
}

fn rounds(env: &Env, plan: &Plan) -> Result<Rounds> {
    // The daemon's report of the machine decides the getppid target, so
    // ask it once before the first round.
    let host = {
        let mut d = Daemon::start(&env.bin, &env.out, &env.policies)?;
        let host = Host::from_status(&d.status()?);
        d.stop()?;
        host
    };
    eprintln!(
        "xtask: bench on kernel {}, {} CPUs, {} pairs{} (file={} exec={} network={})",
        host.kernel,
        env.cpus,
        plan.pairs,
        if plan.quick { " (--quick)" } else { "" },
        host.enforcement[0].1,
        host.enforcement[1].1,
        host.enforcement[2].1
    );
    let workloads = workloads(env, plan, &host);
    let controls = controls(env, plan);
    let mut measured = vec![Measured::default(); workloads.len()];
    let mut control_results = vec![Measured::default(); controls.len()];
    let mut foreign = Vec::new();
    for round in 0..plan.pairs {
        let mut others = 0;
        let t = Instant::now();
        let monitored_first = round % 2 == 1;
        let mut baseline = vec![0.0; workloads.len()];
        let mut monitored = vec![0.0; workloads.len()];
        for phase in 0..2 {
            let ours = usize::from((phase == 0) == monitored_first);
            others += monitors_attached().unwrap_or(ours).saturating_sub(ours);
            if (phase == 0) != monitored_first {
                for (i, w) in workloads.iter().enumerate() {
                    baseline[i] = load_run(env, w.baseline_args(), w.measure)?;
                }
                for (i, c) in controls.iter().enumerate() {
                    let (a, b) = (load_run(env, &c.args, c.measure)?, load_run(env, &c.args, c.measure)?);
                    // Alternate which run is the "monitored" half, so an
                    // order effect shows as spread, not as a bias.
                    let pair = if round % 2 == 0 { (a, b) } else { (b, a) };
                    control_results[i].pairs.pairs.push(pair);
                }
            } else {
                let upstream = ["--dns-upstream", env.dns_upstream.as_str()];
                let mut d = Daemon::start_with(&env.bin, &env.out, &env.policies, &upstream)?;
                for (i, w) in workloads.iter().enumerate() {
                    let (ns, end) = match &w.place {
                        Place::Outside => (load_run(env, &w.args, w.measure)?, None),
                        Place::Trajectory { policy, resolv } => {
                            let id = format!("bench-{round}-{}", w.key);
                            let (ns, end) = trajectory_run(env, &d, &id, policy, *resolv, w)?;
                            (ns, Some(end))
                        }
                    };
                    monitored[i] = ns;
                    if let Some(end) = end {
                        measured[i].records.push(end["records"].as_u64().unwrap_or(0));
                        measured[i].lost += end["lost"].as_u64().unwrap_or(0);
                    }
                }
                others += monitors_attached().unwrap_or(1).saturating_sub(1);
                d.stop()?;
            }
        }
        if others > 0 {
            foreign.push(round + 1);
        }
        for (i, m) in measured.iter_mut().enumerate() {
            m.pairs.pairs.push((baseline[i], monitored[i]));
        }
        eprintln!(
            "xtask: bench round {}/{} ({} first) in {:.1} s{}",
            round + 1,
            plan.pairs,
            if monitored_first { "monitored" } else { "baseline" },
            t.elapsed().as_secs_f64(),
            if others > 0 { "; another agent-monitor daemon was running" } else { "" }
        );
    }
    Ok(Rounds { host, workloads, controls, measured, control_results, foreign })
}

/// Output of one `bench-load` run: operations, and the loop's own wall
/// time and CPU time; the median time of one operation where the loop
/// times each (`dns`).
pub struct LoadOutput {
    pub ops: u64,
    pub wall: Duration,
    pub cpu: Duration,
    pub median: Option<Duration>,
}

fn parse_load(stdout: &[u8]) -> Result<LoadOutput> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().context("bench-load printed nothing")?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("bench-load printed {line:?}"))?;
    let field = |k: &str| v[k].as_u64().with_context(|| format!("bench-load printed no {k}: {line:?}"));
    let out = LoadOutput {
        ops: field("ops")?,
        wall: Duration::from_nanos(field("elapsed_ns")?),
        cpu: Duration::from_nanos(field("cpu_ns")?),
        median: v["median_ns"].as_u64().map(Duration::from_nanos),
    };
    if out.ops == 0 {
        bail!("bench-load ran no operation");
    }
    Ok(out)
}

/// Nanoseconds per operation: of CPU time, so that time other processes of
/// a shared machine held the CPU does not count (the kernel programs run in
/// the workload's syscalls and are counted), or of wall time for the rate
/// workloads (fork+exec: its cost is mostly in the children); for latency,
/// the median wall time of one operation (a DNS answer is the work of
/// other processes: the resolver, dnsmasq).
fn ns_per_op(stdout: &[u8], measure: Measure) -> Result<f64> {
    let out = parse_load(stdout)?;
    let per_op = |t: Duration| t.as_nanos() as f64 / out.ops as f64;
    Ok(match measure {
        Measure::Cpu => per_op(out.cpu),
        Measure::Rate => per_op(out.wall),
        Measure::Latency => out.median.context("bench-load printed no median_ns")?.as_nanos() as f64,
    })
}

/// A command for a program the bench measures or runs beside a measurement.
/// `cargo` sets `LD_LIBRARY_PATH` (the toolchain's and target's library
/// directories) for what it runs, xtask included; left in place, the
/// dynamic loader of every exec would try each of those directories first,
/// and every failed open is one more record in a trajectory.
pub fn workload_command(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// `bench-load ARGS`, outside any trajectory: nanoseconds per operation.
fn load_run(env: &Env, args: &[String], measure: Measure) -> Result<f64> {
    let out = workload_command(&env.load).args(args).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("bench-load {} failed ({})", args.join(" "), out.status);
    }
    ns_per_op(&out.stdout, measure)
}

/// The `agent-monitor run` command placing `bench-load ARGS` in trajectory `id`.
pub fn trajectory_command(env: &Env, d: &Daemon, id: &str, policy: &str, args: &[String]) -> Command {
    run_command(env, d, id, policy, args, false)
}

/// [`trajectory_command`]; `resolv`: `agent-monitor run` started by
/// `bench-load resolv`, in a mount namespace whose /etc/resolv.conf is
/// [`Env::resolv`].
fn run_command(env: &Env, d: &Daemon, id: &str, policy: &str, args: &[String], resolv: bool) -> Command {
    let mut c = if resolv {
        let mut c = workload_command(&env.load);
        c.arg("resolv").arg(&env.resolv).arg(&env.bin);
        c
    } else {
        workload_command(&env.bin)
    };
    c.arg("run").arg("--control-socket").arg(&d.socket);
    c.args(["--trajectory", id, "--policy", policy, "--workspace"]).arg(&env.work);
    c.arg("--").arg(&env.load).args(args);
    c.stderr(Stdio::inherit());
    c
}

/// `bench-load ARGS` in a new trajectory; waits for the trajectory's end
/// (so its records are written before the next run) and empties the events
/// file. Returns nanoseconds per operation and the `trajectory_end` record.
fn trajectory_run(env: &Env, d: &Daemon, id: &str, policy: &str, resolv: bool, w: &Workload) -> Result<(f64, Value)> {
    let args = &w.args;
    let out = run_command(env, d, id, policy, args, resolv).output()?;
    if !out.status.success() {
        bail!("agent-monitor run -- bench-load {} failed ({})", args.join(" "), out.status);
    }
    let ns = ns_per_op(&out.stdout, w.measure)?;
    let end = d.wait_end(id, Duration::from_secs(60))?;
    d.truncate_events()?;
    Ok((ns, end))
}

/// Lines of `file` containing `needle`, counted by the release-built
/// `bench-load count`.
pub fn count_lines(env: &Env, file: &Path, needle: &str) -> Result<u64> {
    let out = Command::new(&env.load).arg("count").arg(file).arg(needle).output()?;
    if !out.status.success() {
        bail!("bench-load count failed ({})", out.status);
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["count"].as_u64().context("bench-load count printed no count")
}

/// `cargo xtask test`'s use: the quick bench, reporting only. Its numbers
/// never fail the tests, and neither does a bench that could not run
/// (it says so).
pub fn report_only() {
    eprintln!("xtask: running `cargo xtask bench --quick` (reporting only)");
    if let Err(e) = run(&BenchArgs { quick: true, pairs: None }) {
        eprintln!("xtask: warning: bench --quick did not complete: {e:#}");
    }
}
