//! `cargo xtask vm-test`: the privileged integration tests inside QEMU guests
//! booted from Debian's own kernel packages, one guest per line of the pin
//! file (`tests/vm/kernels.txt`), and the per-kernel summary table.
//! docs/testing.md is the user's guide to all of it.

mod fetch;
mod guest;
mod initramfs;
mod matrix;
mod report;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cgroup::cgroup2_mount;
pub use report::{table, Row};

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Run only this kernel of the matrix (see --list).
    #[arg(long)]
    pub kernel: Option<String>,
    /// List the matrix and exit.
    #[arg(long)]
    pub list: bool,
    /// Per-kernel bound on boot plus tests, in seconds; QEMU is killed after it.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Guests booted at the same time. Each runs on one host core
    /// (single-threaded TCG): on a two-core machine, two.
    #[arg(long, default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
}

impl Default for VmArgs {
    fn default() -> VmArgs {
        VmArgs { kernel: None, list: false, timeout: DEFAULT_TIMEOUT_SECS, jobs: DEFAULT_JOBS }
    }
}

/// A hang guard, not a duration: about twice the slowest guest expected
/// (6.1 without BPF LSM, about 1,000 s with 57 tests under single-threaded
/// TCG; docs/testing.md). Under it a guest is reported, never cut.
const DEFAULT_TIMEOUT_SECS: u64 = 1800;
/// Two guests at a time: under single-threaded TCG (`guest.rs`) a guest
/// runs on one host core, so the two-core CI machine runs two side by side
/// without either slowing down. The slowest kernel is first in
/// `tests/vm/kernels.txt`, so the other two run one after the other beside
/// it (docs/testing.md).
const DEFAULT_JOBS: usize = 2;

/// Lines of console output shown when a guest ends without a result.
const TAIL_LINES: usize = 40;

pub fn run(args: &VmArgs, host: Option<Row>) -> Result<()> {
    let root = crate::root();
    let kernels = matrix::load(&root)?;
    if args.list {
        println!("host: this machine's kernel, the plain run of `cargo xtask test`");
        for k in &kernels {
            println!("{}: {}={} lsm={}", k.name, k.package, k.version, k.lsm);
        }
        return Ok(());
    }
    let selected: Vec<&matrix::Kernel> = match &args.kernel {
        Some(name) => vec![kernels.iter().find(|k| &k.name == name).with_context(|| {
            let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
            format!("no kernel {name} in {}; the matrix has: {}", matrix::PIN_FILE, names.join(", "))
        })?],
        None => kernels.iter().collect(),
    };
    let begun = Instant::now();
    crate::setup::ensure_packages(fetch::HOST_PACKAGES)?;

    let out = root.join("target/vm");
    let cache = out.join("cache");
    std::fs::create_dir_all(&out)?;
    // Fetch every kernel before the first boot, so a missing pin fails fast.
    let images = selected.iter().map(|k| fetch::kernel_image(k, &cache)).collect::<Result<Vec<_>>>()?;

    let payload = build_payload(&root, &out)?;
    let initramfs = out.join("initramfs.cpio");
    initramfs::build(&root, &payload, &initramfs)?;

    // `--jobs` workers take the next kernel in turn, in pin-file order; two
    // by default.
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<(Row, String)>>> = Mutex::new(selected.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(k) = selected.get(i) else { break };
                let result = run_guest(k, &images[i], &initramfs, &out, args.timeout);
                let result = result.unwrap_or_else(|e| {
                    let row = Row::failed(&k.name, format!("{e:#}"));
                    (row, String::new())
                });
                results.lock().unwrap()[i] = Some(result);
            });
        }
    });
    let mut rows: Vec<Row> = host.into_iter().collect();
    for (row, details) in results.into_inner().unwrap().into_iter().flatten() {
        if let Some(p) = &row.problem {
            eprintln!("\nxtask: {} FAILED: {p}\n{details}", row.kernel);
        }
        rows.push(row);
    }

    let jobs = args.jobs.clamp(1, selected.len());
    let wall = format!(
        "{} guest(s), {jobs} at a time: {:.0} s wall time ({:.0} s with host tools, kernel fetch, build and initramfs)",
        selected.len(),
        started.elapsed().as_secs_f64(),
        begun.elapsed().as_secs_f64()
    );
    let table = format!("{}\n{wall}\n", report::table(&rows));
    let summary = out.join("summary.md");
    std::fs::write(&summary, format!("# VM test summary\n\n{table}"))?;
    println!("\n{table}\n(written to {})", summary.display());
    let failed: Vec<&str> =
        rows.iter().filter(|r| r.problem.is_some() || r.failed > 0).map(|r| r.kernel.as_str()).collect();
    if !failed.is_empty() {
        bail!("tests failed on: {} (console logs in {})", failed.join(", "), out.display());
    }
    Ok(())
}

/// Boots one guest and reads its console back: its row, and what to show
/// under it if it failed.
fn run_guest(
    k: &matrix::Kernel,
    image: &fetch::KernelImage,
    initramfs: &Path,
    out: &Path,
    timeout: u64,
) -> Result<(Row, String)> {
    let log = out.join(format!("{}.log", k.name));
    eprintln!("xtask: booting {} ({}, lsm={}); console in {}", k.name, k.package, k.lsm, log.display());
    let (exit, elapsed) = guest::boot(&guest::Boot {
        bzimage: &image.bzimage,
        initramfs,
        lsm: &k.lsm,
        log: &log,
        timeout: Duration::from_secs(timeout),
        label: &k.name,
    })?;
    let text = String::from_utf8_lossy(&std::fs::read(&log)?).into_owned();
    let parsed = report::parse(&text);
    let mut row = Row::from_parsed(&k.name, &parsed, elapsed);
    row.problem = problem(&parsed, &exit, timeout, &log, &image.config);
    let details = if row.problem.is_some() { details(&parsed, &text) } else { String::new() };
    eprintln!(
        "xtask: {} finished in {:.0} s: {}",
        k.name,
        elapsed.as_secs_f64(),
        if row.problem.is_some() { "FAILED" } else { "ok" }
    );
    Ok((row, details))
}

/// Why a guest run failed, or `None` when it passed.
fn problem(p: &report::Parsed, exit: &guest::Exit, timeout: u64, log: &Path, config: &Path) -> Option<String> {
    let log = log.display();
    let during = p.running.as_ref().map(|t| format!(" during test {t}")).unwrap_or_default();
    if *exit == guest::Exit::TimedOut {
        return Some(format!("no result within {timeout} s{during}; QEMU killed (console: {log})"));
    }
    if let Some(e) = &p.setup_error {
        return Some(format!("guest setup: {e} (kernel config: {})", config.display()));
    }
    match p.rc {
        None => Some(format!("the guest ended without a VMTEST-RESULT line{during}: panic or crash (console: {log})")),
        Some(0) if p.failed.is_empty() && p.summary.is_some() => None,
        Some(0) => Some(format!("rc=0 but libtest's summary is missing or reports failures (console: {log})")),
        Some(rc) => Some(format!(
            "test executable exited with {rc}: {} (console: {log})",
            p.summary.as_deref().unwrap_or("no libtest summary")
        )),
    }
}

/// What to show under a failed guest: the daemon probe's error, libtest's
/// failure section, or (no result at all) the console's last lines.
fn details(p: &report::Parsed, console: &str) -> String {
    let mut s = String::new();
    for l in &p.probe_failure {
        s.push_str(l);
        s.push('\n');
    }
    if !p.failure_output.is_empty() {
        s.push_str(&p.failure_output.join("\n"));
    } else if p.rc.is_none() || p.summary.is_none() {
        let lines: Vec<&str> = console.lines().collect();
        s.push_str(&format!("last {TAIL_LINES} console lines:\n"));
        s.push_str(&lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n"));
    }
    s
}

/// The host test run's `cargo test`, whose build the guests reuse.
const HOST_TEST: &[&str] = &["test", "--locked", "--workspace", "--exclude", "monitor-ebpf"];

/// Copies the test executables, debug info stripped (a quarter of the size,
/// so a smaller initramfs; symbols stay for backtraces).
fn build_payload(root: &Path, out: &Path) -> Result<initramfs::Payload> {
    let built = test_build(root)?;
    let stage = out.join("stage");
    std::fs::create_dir_all(&stage)?;
    let strip = |src: &Path, name: &str| -> Result<PathBuf> {
        let dst = stage.join(name);
        let status =
            Command::new("objcopy").arg("--strip-debug").arg(src).arg(&dst).status().context("cannot run objcopy")?;
        if !status.success() {
            bail!("objcopy --strip-debug {} failed", src.display());
        }
        Ok(dst)
    };
    Ok(initramfs::Payload {
        integration: strip(&built.integration, "integration")?,
        monitor: strip(&built.monitor, "agent-monitor")?,
        test_agent: strip(&built.test_agent, "test-agent")?,
        attacker: strip(&built.attacker, "attacker")?,
        previous_layout: strip(&built.previous_layout, "agent-monitor-previous-layout")?,
    })
}

/// The executables a guest runs.
struct Built {
    integration: PathBuf,
    monitor: PathBuf,
    test_agent: PathBuf,
    attacker: PathBuf,
    previous_layout: PathBuf,
}

/// Builds with exactly the host run's `cargo test` selection, `--no-run`, and
/// takes the executables' paths from cargo's report. After a host run this
/// compiles nothing, and the guests run the very binaries the host tested;
/// a narrower `--package` build would resolve other features and recompile.
fn test_build(root: &Path) -> Result<Built> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(HOST_TEST)
        .args(["--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed (see above)");
    }
    let artifacts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .collect();
    let find = |kind: &str, name: &str, test: bool| -> Result<PathBuf> {
        artifacts
            .iter()
            .filter(|v| v["target"]["name"] == name && v["profile"]["test"] == test)
            .filter(|v| v["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == kind)))
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("cargo reported no executable for the {kind} target {name}"))
    };
    Ok(Built {
        integration: find("test", "integration", true)?,
        monitor: find("bin", "agent-monitor", false)?,
        test_agent: find("example", "test-agent", false)?,
        attacker: find("example", "attacker", false)?,
        previous_layout: find("example", "agent-monitor-previous-layout", false)?,
    })
}

/// `cargo test` for the whole workspace on the host, its output echoed and
/// kept in `target/vm/host.log`; returns the host's row of the summary
/// (the integration tests only, so it compares with the guests' rows).
pub fn host_tests() -> Result<Row> {
    let root = crate::root();
    let out = root.join("target/vm");
    std::fs::create_dir_all(&out)?;
    let skip_file = out.join("host-skips.txt");
    let _ = std::fs::remove_file(&skip_file);
    let log_path = out.join("host.log");
    let mut log = std::fs::File::create(&log_path)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let start = Instant::now();
    let mut child = Command::new(cargo)
        .current_dir(&root)
        .args(HOST_TEST)
        .env("AGENT_MONITOR_SKIP_FILE", &skip_file)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        writeln!(log, "{line}")?;
    }
    let status = child.wait()?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("cargo test failed on the host ({status}); output in {}", log_path.display());
    }

    let mut parsed = report::parse(&std::fs::read_to_string(&log_path)?);
    let built = test_build(&root)?;
    let names = integration_test_names(&built.integration)?;
    for list in [&mut parsed.ok, &mut parsed.failed, &mut parsed.ignored] {
        list.retain(|t| names.contains(t));
    }
    parsed.skips = std::fs::read_to_string(&skip_file)
        .unwrap_or_default()
        .lines()
        .map(report::skip_line)
        .filter(|(t, _)| names.contains(t))
        .collect();
    parsed.release = Some(uname_r());
    parsed.lsm = Some(host_lsm());
    parsed.mechanisms = probe_mechanisms(&built.monitor, &out.join("host-probe"))?;
    Ok(Row::from_parsed("host", &parsed, elapsed))
}

/// Starts the daemon once, as the guests' `/init` does, for the mechanism
/// each hook gets on this kernel.
fn probe_mechanisms(bin: &Path, dir: &Path) -> Result<Vec<(String, String)>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("control.sock");
    let stderr = dir.join("stderr");
    let parent = format!("xtask-probe-{}", std::process::id());
    let mut child = Command::new(bin)
        .arg("daemon")
        .arg("--control-socket")
        .arg(&socket)
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .args(["--metrics-addr", "127.0.0.1:0", "--cgroup-parent", &parent])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--stop-enforcement-on-exit")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() && Instant::now() < deadline && child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    // The daemon leaves its (empty) parent cgroup behind, as the tests'
    // harness expects; remove it.
    if let Some(mount) = cgroup2_mount() {
        let _ = std::fs::remove_dir(mount.join(&parent));
    }
    // With --stop-enforcement-on-exit a clean exit removes its pins; say so
    // if it did not, and leave no program attached.
    let pins = Path::new("/sys/fs/bpf/agent-monitor").join(&parent);
    if pins.exists() {
        eprintln!("xtask: warning: the probe daemon left its pins under {}; removing them", pins.display());
        let _ = Command::new("rm").arg("-r").arg(&pins).status();
    }
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    Ok(text.lines().filter_map(report::mechanism).collect())
}

fn integration_test_names(exe: &Path) -> Result<Vec<String>> {
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .output()
        .context("cannot list the integration tests")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// The host's active LSMs. securityfs is not mounted at boot here, so read
/// it from a private mount namespace rather than mount it for everyone.
fn host_lsm() -> String {
    if let Ok(s) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return s.trim().to_owned();
    }
    Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t securityfs securityfs /sys/kernel/security && cat /sys/kernel/security/lsm",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "? (cannot read securityfs)".into())
}

fn uname_r() -> String {
    Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
