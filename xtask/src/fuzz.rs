//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (policy parser and
//! compiler, kernel record decoder, the resolver's DNS message handling),
//! each for a bounded time.
//!
//! cargo-fuzz needs nightly compiler flags (`-Z sanitizer=address`, sanitizer
//! coverage); the machines have only the stable toolchain, whose sysroot
//! ships the sanitizer runtimes, so the flags are unlocked with
//! `RUSTC_BOOTSTRAP=1`. cargo-fuzz itself is installed from crates.io when
//! missing. A crash fails the run and leaves the input under
//! `fuzz/artifacts/<target>/`; reproduce with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`, then turn it into a
//! unit test.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Each target and the seed corpora (read-only) it starts from.
const TARGETS: &[(&str, &[&str])] =
    &[("policy", &["policies", "tests/fixtures/policies", "deploy"]), ("decode", &[]), ("dns", &[])];

#[derive(clap::Args, Default)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target (`policy`, `decode` or `dns`).
    #[arg(long)]
    pub target: Option<String>,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = crate::root();
    let targets: Vec<&(&str, &[&str])> =
        TARGETS.iter().filter(|(name, _)| args.target.as_deref().is_none_or(|t| t == *name)).collect();
    if targets.is_empty() {
        bail!("no fuzz target {:?}; targets: policy, decode, dns", args.target.as_deref().unwrap_or_default());
    }
    for (name, seeds) in targets {
        let corpus = root.join("fuzz/corpus").join(name);
        std::fs::create_dir_all(&corpus)?;
        // Built first, so a target that does not compile is not reported as
        // a crash, and the time below is the fuzzing's.
        let built = cargo()
            .current_dir(&root)
            .args(["fuzz", "build", "--fuzz-dir", "fuzz", name])
            .env("RUSTC_BOOTSTRAP", "1")
            .status()
            .context("cannot run cargo fuzz")?;
        if !built.success() {
            bail!("fuzz target {name} does not build ({built}); the compiler's errors are above");
        }
        let start = Instant::now();
        eprintln!("xtask: fuzzing {name} for {} s", args.seconds);
        let mut cmd = cargo();
        cmd.current_dir(&root).args(["fuzz", "run", "--fuzz-dir", "fuzz", name]).arg(&corpus);
        for seed in *seeds {
            let seed = root.join(seed);
            if seed.is_dir() {
                cmd.arg(seed);
            }
        }
        // -rss_limit_mb: the compiled policy maps of a large input are
        // legitimately big; libFuzzer's 2 GB default is kept.
        cmd.args(["--", &format!("-max_total_time={}", args.seconds), "-print_final_stats=1"]);
        let status = cmd.env("RUSTC_BOOTSTRAP", "1").status().context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {name} failed ({status}); the crashing input is in fuzz/artifacts/{name}/ \
                 (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run {name} <file>)"
            );
        }
        eprintln!("xtask: fuzz target {name}: no crash in {:.0} s", start.elapsed().as_secs_f64());
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 3 minutes)");
    let status = cargo()
        .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// Whether the fuzz crate is present (a checkout without it skips fuzzing).
pub fn available() -> bool {
    Path::new(&crate::root()).join("fuzz/Cargo.toml").exists()
}
