//! Preflight checks and the kernel filesystems the daemon needs, each with
//! one clear error when something is missing.

use std::{io, path::Path};

use crate::{btf::VMLINUX_BTF, mounts};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "agent-monitor daemon must run as root (it loads eBPF programs and manages cgroups); effective uid is {uid}"
    )]
    NotRoot { uid: u32 },
    #[error("kernel BTF not found at {VMLINUX_BTF}: agent-monitor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    #[error("cannot mount {fstype} at {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
}

pub fn require_root() -> Result<(), HostError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(HostError::NotRoot { uid })
    }
}

pub fn require_btf() -> Result<(), HostError> {
    if Path::new(VMLINUX_BTF).exists() {
        Ok(())
    } else {
        Err(HostError::NoBtf)
    }
}

/// Mounts tracefs if neither tracefs nor debugfs' tracing directory is there.
pub fn ensure_tracefs() -> Result<(), HostError> {
    if mounts::tracing_mounted() {
        return Ok(());
    }
    mounts::mount("tracefs", mounts::TRACEFS).map_err(|source| HostError::Mount {
        fstype: "tracefs",
        target: mounts::TRACEFS,
        source,
    })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so map
/// creation does not fail there. Newer kernels ignore it.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit, read by the kernel only during the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", io::Error::last_os_error());
    }
}
