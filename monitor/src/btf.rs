//! Kernel structure offsets from the running kernel's BTF.
//!
//! The Rust eBPF toolchain emits no CO-RE field relocations, so the programs
//! read `task_struct`/`mm_struct` fields at offsets the daemon resolves here
//! and passes in as a load-time constant ([`KernelOffsets`]). Resolving from
//! BTF, not from a table per kernel version, keeps it right on every kernel
//! with `CONFIG_DEBUG_INFO_BTF`, which the daemon requires anyway.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use monitor_common::{maps::KernelOffsets, tamper::TamperConfig};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF not found at {path}: agent-monitor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    Missing { path: PathBuf },
    #[error("cannot parse kernel BTF at {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("kernel BTF has no struct {ty} with a field {field}")]
    Field { ty: &'static str, field: &'static str },
}

/// Resolves the offsets the kernel programs need from `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    offsets_in(&parse(path)?)
}

/// The kernel programs' offsets and the tamper hooks' configuration, from
/// one parse of `path` (parsing takes seconds in a debug build under TCG).
pub fn all_offsets(path: &Path, daemon_tgid: u32) -> Result<(KernelOffsets, TamperConfig), BtfError> {
    let btf = parse(path)?;
    Ok((offsets_in(&btf)?, tamper_in(&btf, daemon_tgid)?))
}

fn parse(path: &Path) -> Result<Btf, BtfError> {
    if !path.exists() {
        return Err(BtfError::Missing { path: path.to_owned() });
    }
    Btf::from_file(path).map_err(|e| BtfError::Parse { path: path.to_owned(), reason: e.to_string() })
}

fn offsets_in(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        task_real_parent: field_offset(btf, "task_struct", "real_parent")?,
        task_tgid: field_offset(btf, "task_struct", "tgid")?,
        task_mm: field_offset(btf, "task_struct", "mm")?,
        mm_arg_start: field_offset(btf, "mm_struct", "arg_start")?,
        mm_arg_end: field_offset(btf, "mm_struct", "arg_end")?,
        mm_exe_file: field_offset(btf, "mm_struct", "exe_file")?,
        task_files: field_offset(btf, "task_struct", "files")?,
        files_fdt: field_offset(btf, "files_struct", "fdt")?,
        fdt_max_fds: field_offset(btf, "fdtable", "max_fds")?,
        fdt_fd: field_offset(btf, "fdtable", "fd")?,
        file_f_path: field_offset(btf, "file", "f_path")?,
        file_f_flags: field_offset(btf, "file", "f_flags")?,
        path_mnt: field_offset(btf, "path", "mnt")?,
        path_dentry: field_offset(btf, "path", "dentry")?,
        dentry_d_parent: field_offset(btf, "dentry", "d_parent")?,
        dentry_d_name: field_offset(btf, "dentry", "d_name")?,
        qstr_len: field_offset(btf, "qstr", "len")?,
        qstr_name: field_offset(btf, "qstr", "name")?,
        mount_mnt: field_offset(btf, "mount", "mnt")?,
        mount_mnt_parent: field_offset(btf, "mount", "mnt_parent")?,
        mount_mnt_mountpoint: field_offset(btf, "mount", "mnt_mountpoint")?,
        vfsmount_mnt_root: field_offset(btf, "vfsmount", "mnt_root")?,
        bprm_file: field_offset(btf, "linux_binprm", "file")?,
        task_group_leader: field_offset(btf, "task_struct", "group_leader")?,
        task_start_boottime: field_offset(btf, "task_struct", "start_boottime")?,
    })
}

/// The tamper hooks' configuration: offsets for walking a task's cgroup
/// ancestry and reading a file's superblock magic, and the daemon's pid.
fn tamper_in(btf: &Btf, daemon_tgid: u32) -> Result<TamperConfig, BtfError> {
    Ok(TamperConfig {
        daemon_tgid: u64::from(daemon_tgid),
        task_cgroups: field_offset(btf, "task_struct", "cgroups")?,
        css_set_dfl_cgrp: field_offset(btf, "css_set", "dfl_cgrp")?,
        cgroup_kn: field_offset(btf, "cgroup", "kn")?,
        cgroup_parent: field_offset(btf, "cgroup", "self")? + field_offset(btf, "cgroup_subsys_state", "parent")?,
        kernfs_node_id: field_offset(btf, "kernfs_node", "id")?,
        dentry_d_sb: field_offset(btf, "dentry", "d_sb")?,
        inode_i_sb: field_offset(btf, "inode", "i_sb")?,
        super_block_s_magic: field_offset(btf, "super_block", "s_magic")?,
    })
}

/// Byte offset of `field` in `struct ty`, looking through anonymous struct and
/// union members (`mm_struct` keeps most fields inside one).
fn field_offset(btf: &Btf, ty: &'static str, field: &'static str) -> Result<u64, BtfError> {
    let not_found = || BtfError::Field { ty, field };
    let types = btf.resolve_types_by_name(ty).map_err(|_| not_found())?;
    types
        .iter()
        .filter_map(|t| match t {
            Type::Struct(s) => find_in(btf, s, field),
            _ => None,
        })
        .next()
        .map(|bits| bits / 8)
        .ok_or_else(not_found)
}

fn find_in(btf: &Btf, s: &btf_rs::Struct, field: &str) -> Option<u64> {
    for member in &s.members {
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            return Some(u64::from(member.bit_offset()));
        }
        if name.is_empty() {
            let nested = match btf.resolve_chained_type(member).ok()? {
                Type::Struct(inner) | Type::Union(inner) => find_in(btf, &inner, field),
                _ => None,
            };
            if let Some(off) = nested {
                return Some(u64::from(member.bit_offset()) + off);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against the build machine's kernel: every kernel agent-monitor
    /// supports has these fields, at non-zero offsets.
    #[test]
    fn resolves_offsets_from_running_kernel() {
        let (off, tamper) = all_offsets(Path::new(VMLINUX_BTF), 1).expect("host kernel has BTF");
        assert!(tamper.task_cgroups > 0 && tamper.cgroup_kn > 0 && tamper.super_block_s_magic > 0, "{tamper:?}");
        assert_eq!(tamper.daemon_tgid, 1);
        assert!(off.task_real_parent > 0 && off.task_tgid > 0 && off.task_mm > 0);
        assert!(off.mm_arg_end == off.mm_arg_start + 8, "{off:?}");
        // struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name; }
        assert_eq!((off.qstr_len, off.qstr_name), (4, 8), "{off:?}");
        assert_eq!((off.path_mnt, off.path_dentry), (0, 8), "{off:?}");
        assert!(off.mount_mnt > 0 && off.file_f_path > 0 && off.dentry_d_name > 0, "{off:?}");
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = kernel_offsets(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"));
    }
}
