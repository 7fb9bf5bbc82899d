//! Names the refusals of a trajectory's Landlock layer.
//!
//! Landlock refuses before anything is opened, so the open tracepoints see
//! only the failed call (`-EACCES`), the string the process passed and, for
//! a relative one, the directory it resolved against. The kernel judged the
//! string; a string that reaches its file through a symbolic link, or a
//! relative one, says little. For such a record the pipeline resolves the
//! request as the kernel would have (symbolic links followed, now), judges
//! that path with the trajectory's policy, names its rule, and marks the
//! record `landlock-deny` when the policy denies it: the record then says
//! what was refused and why. Enforcement never depends on this: Landlock
//! refused in the kernel.

use std::{
    ffi::OsStr,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::decode::Decoded;
use crate::{
    landlock::{Class, Layer},
    policy::{Action, CompiledPolicy},
    record::{Body, Bytes},
    vocab::Mechanism,
};

const EACCES: i32 = 13;
/// Landlock's answer to a rename or link between directories it refuses.
const EXDEV: i32 = 18;

/// Names `d`'s verdict and mechanism when `layer` refused it. `policy` is
/// asked for only then: most records are not refusals.
pub(super) fn name(
    layer: &Layer,
    policy: impl FnOnce() -> Option<Arc<CompiledPolicy>>,
    instance: u32,
    d: &mut Decoded,
) {
    let Body::Open { access, result, path, requested, base, .. } = &mut d.body else {
        return;
    };
    let class = match *access {
        "read" => Class::Read,
        _ => Class::Write,
    };
    let read_too = *access == "read_write";
    if !(*result == -EACCES || *result == -EXDEV) || path.is_some() || !layer.covers(class) {
        return;
    }
    let requested = requested.as_ref().map(|r| of_process(&r.0, d.process.pid, d.process.tid));
    let target = requested.and_then(|r| resolve(base.as_ref().map(|b| &b.0[..]), &r));
    if let (Some(policy), Some(target)) = (target.as_ref().and_then(|_| policy()), target) {
        let value = policy.file_value(target.as_os_str().as_bytes());
        let v = match class {
            Class::Read => value.read,
            // Both verdicts of a read-write access: the stronger decides
            // (the read one on a tie), as the kernel's `for_access`.
            _ if read_too && value.read.action >= value.write.action => value.read,
            _ => value.write,
        };
        d.verdict.policy = instance;
        d.verdict.rule_id = v.rule_id;
        d.verdict.action = Action::from_abi(v.action).map(Action::as_str);
        d.verdict.decision = Some(policy.decision(v).as_str());
        *path = Some(Bytes(target.into_os_string().into_vec()));
    }
    if d.verdict.decision == Some("deny") && d.verdict.mechanism.is_none() {
        d.verdict.mechanism = Some(Mechanism::LandlockDeny);
    }
}

/// `requested` with `/proc/self` and `/proc/thread-self` naming the
/// process that asked, not the daemon that resolves it.
fn of_process(requested: &[u8], pid: Option<u32>, tid: Option<u32>) -> Vec<u8> {
    let (Some(pid), Some(tid)) = (pid, tid) else { return requested.to_vec() };
    for (link, real) in
        [(&b"/proc/self"[..], format!("/proc/{pid}")), (&b"/proc/thread-self"[..], format!("/proc/{pid}/task/{tid}"))]
    {
        if let Some(rest) = requested.strip_prefix(link) {
            if rest.is_empty() || rest[0] == b'/' {
                return [real.as_bytes(), rest].concat();
            }
        }
    }
    requested.to_vec()
}

/// `requested` (against `base` when relative) with symbolic links
/// followed as far as the path exists and `.`/`..` folded, as the kernel's
/// walk names a file; `None` for a relative request without a base.
fn resolve(base: Option<&[u8]>, requested: &[u8]) -> Option<PathBuf> {
    let requested = Path::new(OsStr::from_bytes(requested));
    let full = if requested.is_absolute() {
        requested.to_owned()
    } else {
        Path::new(OsStr::from_bytes(base?)).join(requested)
    };
    if let Ok(real) = std::fs::canonicalize(&full) {
        return Some(real);
    }
    // A name that does not exist (yet): its parent, resolved. A parent
    // that is gone too (a process's `/proc` entry after it exited) leaves
    // the kernel's judgement of the string.
    let (parent, name) = (full.parent()?, full.file_name()?);
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_resolve_through_links_and_against_their_base() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), "").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let base = root.as_os_str().as_bytes();
        assert_eq!(resolve(Some(base), b"link/f").unwrap(), root.join("real/f"));
        assert_eq!(resolve(Some(base), b"link/new").unwrap(), root.join("real/new"));
        assert_eq!(resolve(None, root.join("link/./f").as_os_str().as_bytes()).unwrap(), root.join("real/f"));
        assert_eq!(resolve(None, b"relative"), None);
        assert_eq!(resolve(Some(b"/nonexistent-dir"), b"a/../b"), None);
        assert_eq!(of_process(b"/proc/self/cwd/key", Some(7), Some(8)), b"/proc/7/cwd/key");
        assert_eq!(of_process(b"/proc/thread-self/root", Some(7), Some(8)), b"/proc/7/task/8/root");
        assert_eq!(of_process(b"/proc/selfish", Some(7), Some(8)), b"/proc/selfish");
    }
}
