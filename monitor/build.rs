//! Builds the kernel programs (`monitor-ebpf`) and hands the object to the
//! daemon, which embeds it with `include_bytes!`.
//!
//! Every source of the kernel crate and of the shared ABI is declared as an
//! input, so editing one rebuilds the object: no stale object can ship. The
//! toolchain is the one `cargo xtask setup` installs (see
//! `../shared/PLATFORM.md`): Debian's rustc, whose sysroot carries a prebuilt
//! `core` for `bpfel-unknown-none`, and `bpf-linker` built against LLVM 22.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("monitor/ sits in the workspace").to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    for input in
        ["monitor-ebpf/src", "monitor-ebpf/Cargo.toml", "monitor-common/src", "monitor-common/Cargo.toml", "Cargo.lock"]
    {
        rerun_if_changed(&root.join(input));
    }
    println!("cargo::rerun-if-env-changed=AGENT_MONITOR_EBPF_OBJECT");

    // An externally built object (e.g. for a VM image built elsewhere).
    if let Some(prebuilt) = env::var_os("AGENT_MONITOR_EBPF_OBJECT") {
        copy(Path::new(&prebuilt), &out.join("monitor-ebpf"));
        return;
    }

    if !Path::new(BPF_RUSTC).exists() {
        fail(&format!("{BPF_RUSTC} not found: the eBPF toolchain is missing. Run `cargo xtask setup` as root."));
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let path = env::join_paths(
        [PathBuf::from(LLVM_BIN), cargo_home.join("bin")]
            .into_iter()
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH entries are valid");

    let target_dir = root.join("target").join("ebpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--locked", "--package", "monitor-ebpf", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    // Settings of the outer (host) build must not leak into the BPF build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| fail(&format!("cannot run cargo for the eBPF build: {e}")));
    if !status.success() {
        fail(&format!(
            "building the kernel programs (monitor-ebpf for {TARGET}) failed; see the errors above. \
             If the toolchain is missing, run `cargo xtask setup` as root."
        ));
    }
    copy(&target_dir.join(TARGET).join("release").join("monitor-ebpf"), &out.join("monitor-ebpf"));
}

fn rerun_if_changed(path: &Path) {
    println!("cargo::rerun-if-changed={}", path.display());
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            rerun_if_changed(&entry.path());
        }
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        fail(&format!("cannot copy the eBPF object {} to {}: {e}", from.display(), to.display()));
    }
}

fn fail(msg: &str) -> ! {
    println!("cargo::error={msg}");
    std::process::exit(1);
}
