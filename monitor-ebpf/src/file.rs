//! The verdict on an opened `struct file`, the one check both file-open
//! paths make (the LSM `file_open` hook and the open tracepoints' exit):
//! built-in tamper protection first, then the policy's file rules on the
//! path resolved from the file's dentries. And the verdict on executing a
//! file, which the exec hooks share.

use crate::{
    kernel::read_u64,
    maps::offsets,
    pathres::{self, Resolved},
    policy::{self, Access, Verdict},
    tamper,
    trajectory::Membership,
};

/// Judges `file` opened with `access` by `member`; also returns the
/// resolved path, which the caller's record carries, and whether the
/// file's identity decided (`flags::BY_INODE`): a read-deny rule of the
/// policy names the same inode under another path, so a hard link or a
/// rename does not take the file out of its rule.
#[inline(always)]
pub fn judge(member: &Membership, file: u64, access: Access) -> (Verdict, Option<Resolved>, bool) {
    // Cgroup and BPF filesystems are read-only to trajectories by whatever
    // path they are reached (see `tamper::protected_fs`). Checked before the
    // walk: nothing the walk returns stays live across it.
    let tampered = access.write && tamper::protected_fs(file);
    let resolved = pathres::file_path(file);
    let (verdict, by_inode) = decide(member, file, access, tampered, &resolved);
    (verdict, resolved, by_inode)
}

/// [`judge`] for a caller that resolved the path already
/// (`pathres::file_path`). The open tracepoints' exit walks first, before
/// the ways its own state branches (in-flight entry or not, the access)
/// multiply the states the verifier walks the path with: on 6.1 that
/// multiplication exhausts its instruction budget.
#[inline(always)]
pub fn judge_walked(member: &Membership, file: u64, access: Access, resolved: &Option<Resolved>) -> (Verdict, bool) {
    let tampered = access.write && tamper::protected_fs(file);
    decide(member, file, access, tampered, resolved)
}

#[inline(always)]
fn decide(
    member: &Membership,
    file: u64,
    access: Access,
    tampered: bool,
    resolved: &Option<Resolved>,
) -> (Verdict, bool) {
    let verdict = match resolved {
        _ if tampered => tamper::verdict(member),
        Some(r) => policy::file(member.policy, pathres::key_from_resolved(r, member.policy), access),
        None => policy::file_default(member.policy),
    };
    if tampered || verdict.blocks() {
        return (verdict, false);
    }
    match policy::file_by_inode(member.policy, access, || identity(file)) {
        Some(by_inode) if by_inode.action > verdict.action => (by_inode, true),
        _ => (verdict, false),
    }
}

/// `file`'s inode as (superblock `s_dev`, inode number).
#[inline(always)]
fn identity(file: u64) -> Option<(u32, u64)> {
    let off = offsets();
    let inode = read_u64(file + off.file_f_inode);
    if inode == 0 {
        return None;
    }
    let sb = read_u64(inode + off.inode_i_sb);
    // `s_dev` is a `dev_t` (`u32`).
    Some((read_u64(sb + off.sb_s_dev) as u32, read_u64(inode + off.inode_i_ino)))
}

/// Judges the exec of `file` by `member` on the exec rules; for an
/// `execve` (`image`), a file no directory names (memfd, `O_TMPFILE`,
/// deleted: `i_nlink` is 0) is also judged by `defaults.exec_unnamed`, and
/// the stronger verdict stands (a deleted file's dentry still carries its
/// old name, which a rule may name). Executable mappings of such files are
/// not: JIT runtimes make them (.NET's W^X double mapping goes through a
/// memfd), and they give nothing anonymous executable memory does not.
/// Also returns the resolved path, which the caller's record carries.
#[inline(always)]
pub fn judge_exec(member: &Membership, file: u64, image: bool) -> (Verdict, Option<Resolved>) {
    let unnamed = image && file != 0 && unnamed(file);
    let resolved = pathres::file_path(file);
    let by_path = match &resolved {
        Some(r) => policy::exec(member.policy, pathres::key_from_resolved(r, member.policy)),
        // Unresolvable (deeper than the walk's bound): the policy default.
        None => policy::exec_default(member.policy),
    };
    if !unnamed {
        return (by_path, resolved);
    }
    let by_name = policy::exec_unnamed(member.policy);
    (if by_name.action > by_path.action { by_name } else { by_path }, resolved)
}

/// Whether no directory names `file`'s inode any more.
#[inline(always)]
fn unnamed(file: u64) -> bool {
    let off = offsets();
    let inode = read_u64(file + off.file_f_inode);
    // `i_nlink` is an `unsigned int`.
    inode != 0 && read_u64(inode + off.inode_i_nlink) & 0xffff_ffff == 0
}
