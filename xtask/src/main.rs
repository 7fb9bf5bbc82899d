//! Project tasks: `cargo xtask <task>`. The README's two commands are
//! `cargo xtask run` (set up, build, start the daemon) and `cargo xtask test`
//! (set up, build, run every test: the host's, then the VM matrix).

mod bench;
mod cgroup;
mod fuzz;
mod modules;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing toolchain pieces (Debian packages, bpf-linker). Idempotent.
    Setup,
    /// Build the daemon (release) with its embedded kernel programs.
    Build,
    /// Set up, build, and start the daemon; extra arguments go to `agent-monitor daemon`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, run the unit and integration tests on the host kernel,
    /// then the VM matrix (as `vm-test` does); what CI runs.
    Test(TestArgs),
    /// Run the integration tests inside QEMU guests booted from the pinned
    /// Debian kernels (tests/vm/kernels.txt); see docs/testing.md.
    VmTest(vm::VmArgs),
    /// Measure the monitor's overhead, event throughput and daemon cost
    /// (release build); writes target/bench/results.{md,json}.
    Bench(bench::BenchArgs),
    /// Run the cargo-fuzz targets (policy parser/compiler, record decoder)
    /// for a bounded time each; installs cargo-fuzz when missing.
    Fuzz(fuzz::FuzzArgs),
    /// Check that no module of monitor/ or monitor-ebpf/ imports, directly or
    /// through others, a module that imports it.
    Modules,
}

#[derive(clap::Args)]
struct TestArgs {
    /// Stop after the host tests, skipping the VM matrix (several minutes
    /// under TCG). For development only: CI runs the full command.
    #[arg(long)]
    host_only: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::ensure(),
        Task::Build => {
            setup::ensure()?;
            cargo(&["build", "--release", "--locked", "--package", "agent-monitor"])
        }
        Task::Run { args } => {
            setup::ensure()?;
            cargo(&["build", "--release", "--locked", "--package", "agent-monitor"])?;
            let bin = root().join("target/release/agent-monitor");
            eprintln!("xtask: starting {} daemon {}", bin.display(), args.join(" "));
            use std::os::unix::process::CommandExt;
            let err = Command::new(&bin).arg("daemon").args(&args).exec();
            bail!("cannot start {}: {err}", bin.display())
        }
        Task::Test(args) => {
            setup::ensure()?;
            if !setup::is_root() {
                bail!("the integration tests load eBPF programs and create cgroups: run `cargo xtask test` as root");
            }
            // No module cycle (pure, under a second): a cycle fails the
            // run before anything is built.
            modules::run()?;
            // Unit tests, integration tests against the real kernel, doc
            // tests; a failure here stops the run before any guest boots.
            let host = vm::host_tests()?;
            eprintln!("xtask: host tests passed in {:.0} s", host.duration.as_secs_f64());
            // A short fuzz run of each target (about a minute in all).
            if fuzz::available() {
                fuzz::run(&fuzz::FuzzArgs { seconds: FUZZ_SECONDS_IN_TEST, target: None })?;
            }
            bench::report_only();
            if args.host_only {
                println!("\n{}\n(--host-only: the VM matrix did not run)", vm::table(&[host]));
                return Ok(());
            }
            vm::run(&vm::VmArgs::default(), Some(host))
        }
        Task::Fuzz(args) => fuzz::run(&args),
        Task::VmTest(args) => {
            if !args.list {
                setup::ensure()?;
            }
            vm::run(&args, None)
        }
        Task::Bench(args) => bench::run(&args),
        Task::Modules => modules::run(),
    }
}

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 20;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is in the workspace").to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(args)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
