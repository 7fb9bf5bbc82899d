//! Toolchain setup, as measured in `../shared/PLATFORM.md`: Debian's rustc
//! with a prebuilt `core` for the BPF target, LLVM 22, and `bpf-linker`
//! built against it. Checks first and installs only what is missing, so a
//! second run touches nothing and takes seconds.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Debian packages the build needs.
const PACKAGES: &[&str] = &[
    // rustc 1.96 whose sysroot has `core` for bpfel-unknown-none.
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    // LLVM for bpf-linker.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Inspecting loaded programs in tests and by operators.
    "bpftool",
    // Tests of deploy/ (tests/integration/deploy.rs, prometheus.rs):
    // `prometheus` and `promtool`, `systemd-analyze`, `strace`.
    "prometheus",
    "systemd",
    "strace",
    // Tests of domain egress (tests/integration/dns.rs): a real upstream
    // resolver, `dig` for TCP queries, curl through glibc's resolver.
    "dnsmasq-base",
    "bind9-dnsutils",
    "curl",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn ensure() -> Result<()> {
    ensure_packages(PACKAGES)?;
    if !bpf_linker_ok() {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
        let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path)
            .status()
            .context("cannot run cargo install")?;
        if !status.success() {
            bail!("`cargo install bpf-linker` failed: crates.io unreachable, or LLVM 22 not usable (see above)");
        }
        if !bpf_linker_ok() {
            bail!("bpf-linker {BPF_LINKER_VERSION} was installed but is not runnable from {}", cargo_bin().display());
        }
    }
    if !PathBuf::from("/usr/bin/rustc").exists() {
        bail!("/usr/bin/rustc is missing although rustc-web is installed");
    }
    eprintln!("xtask: toolchain ready");
    Ok(())
}

/// Installs whichever of `packages` are missing; runs `apt-get update` only
/// when something must be installed.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {}: run `cargo xtask setup` as root to install them", missing.join(" "));
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-q"]).status().context("cannot run apt-get")?;
    if !update.success() {
        bail!("`apt-get update` failed: Debian's package registry is unreachable or misconfigured");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !install.success() {
        bail!("`apt-get install {}` failed (see its output above)", missing.join(" "));
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

fn bpf_linker_ok() -> bool {
    Command::new(cargo_bin().join("bpf-linker"))
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}
