//! The verdict on an opened `struct file`, the one check both file-open
//! paths make (the LSM `file_open` hook and the open tracepoints' exit):
//! built-in tamper protection first, then the policy's file rules on the
//! path resolved from the file's dentries.

use crate::{
    pathres::{self, Resolved},
    policy::{self, Access, Verdict},
    tamper,
    trajectory::Membership,
};

/// Judges `file` opened with `access` by `member`; also returns the
/// resolved path, which the caller's record carries.
#[inline(always)]
pub fn judge(member: &Membership, file: u64, access: Access) -> (Verdict, Option<Resolved>) {
    // Cgroup and BPF filesystems are read-only to trajectories by whatever
    // path they are reached (see `tamper::protected_fs`). Checked before the
    // walk: nothing the walk returns stays live across it.
    let tampered = access.write && tamper::protected_fs(file);
    let resolved = pathres::file_path(file);
    let verdict = match &resolved {
        _ if tampered => tamper::verdict(member),
        Some(r) => policy::file(member.policy, pathres::key_from_resolved(r, member.policy), access),
        None => policy::file_default(member.policy),
    };
    (verdict, resolved)
}
