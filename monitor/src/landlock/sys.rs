//! The Landlock system calls: the ABI probe, building a ruleset from a
//! [`Plan`], and restricting the calling process with it.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use super::plan::{fs, Plan};

const CREATE_RULESET_VERSION: libc::c_uint = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

/// `struct landlock_ruleset_attr` (ABI 6); older kernels take a prefix.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr`, packed as the kernel declares it.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("cannot create the Landlock ruleset (ABI {abi}): {source}")]
    Create { abi: u32, source: io::Error },
    #[error("cannot add the Landlock rule for {path}: {source}")]
    Rule { path: String, source: io::Error },
}

/// The running kernel's Landlock ABI version; 0 when Landlock is not built
/// or not enabled (`lsm=` without `landlock`).
pub fn abi() -> u32 {
    // SAFETY: the version query takes no attribute.
    let v = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<RulesetAttr>(), 0, CREATE_RULESET_VERSION)
    };
    u32::try_from(v).unwrap_or(0)
}

/// What building a ruleset did with the plan's grants.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Built {
    pub added: usize,
    /// Gone, replaced by a symbolic link, or no longer the kind planned:
    /// left without a grant (refused: the safe side).
    pub skipped: Vec<String>,
}

/// Creates the ruleset `plan` describes, for paths seen through `root`
/// (`/proc/<pid>/root` of the process that will apply it). Each path is
/// opened beneath it without following a symbolic link anywhere along it,
/// so a path changed since the plan can only lose its grant, never pass it
/// elsewhere.
pub fn build(plan: &Plan, root: &std::path::Path) -> Result<(OwnedFd, Built), LandlockError> {
    let attr = RulesetAttr { handled_access_fs: plan.handled, handled_access_net: 0, scoped: plan.scoped };
    let size = match plan.abi {
        0..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: `attr` outlives the call; `size` is at most its size.
    let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const RulesetAttr, size, 0) };
    if fd < 0 {
        return Err(LandlockError::Create { abi: plan.abi, source: io::Error::last_os_error() });
    }
    // SAFETY: a new descriptor this process owns.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let root =
        std::fs::File::open(root).map_err(|source| LandlockError::Rule { path: root.display().to_string(), source })?;
    let mut built = Built::default();
    for grant in &plan.grants {
        let shown = grant.path.display().to_string();
        let Some((target, is_dir)) = open_beneath(&root, &grant.path) else {
            built.skipped.push(shown);
            continue;
        };
        if is_dir != grant.dir {
            built.skipped.push(shown);
            continue;
        }
        let mask = if is_dir { plan.handled } else { plan.handled & fs::FILE };
        let attr = PathBeneathAttr { allowed_access: grant.access & mask, parent_fd: target.as_raw_fd() };
        if attr.allowed_access == 0 {
            continue;
        }
        // SAFETY: `attr` outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0,
            )
        };
        if r != 0 {
            return Err(LandlockError::Rule { path: shown, source: io::Error::last_os_error() });
        }
        built.added += 1;
    }
    Ok((ruleset, built))
}

/// `O_PATH` descriptor of the absolute `path` beneath `root` and whether it
/// is a directory; `None` if it is gone or a component is a symbolic link.
fn open_beneath(root: &std::fs::File, path: &std::path::Path) -> Option<(OwnedFd, bool)> {
    let relative = path.strip_prefix("/").ok()?;
    let relative = if relative.as_os_str().is_empty() { std::path::Path::new(".") } else { relative };
    let c = CString::new(relative.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero is a valid `open_how`.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_BENEATH;
    // SAFETY: a NUL-terminated path and an `open_how` of the size passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, root.as_raw_fd(), c.as_ptr(), &how as *const libc::open_how, size_of_val(&how))
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor this process owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a buffer of the right type.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => None,
        libc::S_IFDIR => Some((fd, true)),
        _ => Some((fd, false)),
    }
}

/// Restricts the calling thread (and what it executes) with `ruleset`,
/// after setting `no_new_privs`. Async-signal-safe: `run` calls it between
/// `fork`-free setup and `exec`.
pub fn restrict_self(ruleset: i32) -> io::Result<()> {
    // SAFETY: plain syscalls on integers.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
