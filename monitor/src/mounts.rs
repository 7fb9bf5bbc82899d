//! The kernel filesystems the daemon mounts where a host lacks them: bpffs,
//! which holds the pins, and tracefs, where aya reads tracepoint ids. Their
//! locations and the one `mount(2)` call live here; `host` and `pins`
//! decide when to mount.

use std::{ffi::CString, io, path::Path};

/// Where bpffs is mounted by convention; a pin directory below it is
/// mounted on demand.
pub const BPFFS: &str = "/sys/fs/bpf";

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Where tracefs is mounted when the daemon mounts it.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Where a kernel shows its tracepoints: tracefs, or debugfs' copy of it.
const TRACING_ROOTS: [&str; 2] = [TRACEFS, "/sys/kernel/debug/tracing"];

/// Mounts a filesystem of type `fstype` (its source named the same) at
/// `target`, which must exist.
pub fn mount(fstype: &str, target: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (fs, tgt) = (c(fstype)?, c(target)?);
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe { libc::mount(fs.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts bpffs at [`BPFFS`], creating the directory first.
pub fn mount_bpffs() -> io::Result<()> {
    // A failure here shows as the mount's error.
    let _ = std::fs::create_dir_all(BPFFS);
    mount("bpf", BPFFS)
}

/// Whether the nearest existing ancestor of `path` is on bpffs.
pub fn on_bpffs(path: &Path) -> bool {
    let mut p = path;
    loop {
        if p.exists() {
            let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
            // SAFETY: `statfs` is plain data, for which all zeroes is valid.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: a valid C string and an out-pointer to a statfs the
            // kernel writes only during the call.
            if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
                return false;
            }
            return st.f_type as i64 == BPF_FS_MAGIC;
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return false,
        }
    }
}

/// Whether tracefs or debugfs' tracing directory shows tracepoints.
pub fn tracing_mounted() -> bool {
    TRACING_ROOTS.iter().any(|root| Path::new(root).join("events").exists())
}

/// Whether the kernel has tracepoint `category/name`.
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    TRACING_ROOTS.iter().any(|root| Path::new(root).join("events").join(category).join(name).exists())
}
