//! Kernel structure offsets from the running kernel's BTF.
//!
//! The Rust eBPF toolchain emits no CO-RE field relocations, so the programs
//! read `task_struct`/`mm_struct` fields at offsets the daemon resolves here
//! and passes in as a load-time constant ([`KernelOffsets`]). Resolving from
//! BTF, not from a table per kernel version, keeps it right on every kernel
//! with `CONFIG_DEBUG_INFO_BTF`, which the daemon requires anyway.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

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

/// The kernel programs' offsets and the tamper hooks' configuration, from
/// one parse of `path`.
pub fn all_offsets(path: &Path, daemon_tgid: u32) -> Result<(KernelOffsets, TamperConfig), BtfError> {
    let btf = parse(path)?;
    Ok((offsets_in(&btf)?, tamper_in(&btf, daemon_tgid)?))
}

fn parse(path: &Path) -> Result<Btf, BtfError> {
    if !path.exists() {
        return Err(BtfError::Missing { path: path.to_owned() });
    }
    let err = |reason: String| BtfError::Parse { path: path.to_owned(), reason };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    Btf::parse(data).map_err(err)
}

/// BTF kinds (`include/uapi/linux/btf.h`).
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// The part of a BTF blob the offsets need: every type's position, and the
/// structs by name. Our own reader because the offsets need nothing else
/// and a general parser (btf-rs, which the tests check this one against)
/// took 20 times as long, which every daemon start paid, most in the TCG
/// guests of the VM matrix.
struct Btf {
    data: Vec<u8>,
    /// Byte position of type id `i` at index `i - 1`.
    types: Vec<usize>,
    strings: std::ops::Range<usize>,
    /// Named structs: name → type ids.
    structs: HashMap<String, Vec<u32>>,
}

/// One member of a struct or union.
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u64,
}

impl Btf {
    fn parse(data: Vec<u8>) -> Result<Btf, String> {
        let u32_at = |at: usize| -> Result<u32, String> {
            data.get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
                .ok_or_else(|| format!("truncated at byte {at}"))
        };
        if data.get(0..2) != Some(&0xeb9f_u16.to_ne_bytes()[..]) {
            return Err("bad magic (not BTF, or not this machine's byte order)".into());
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let type_range = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if type_range.end > data.len() || strings.end > data.len() {
            return Err("a section runs past the end of the file".into());
        }
        let mut types = Vec::new();
        let mut named = Vec::new();
        let mut at = type_range.start;
        while at < type_range.end {
            let (name, info) = (u32_at(at)?, u32_at(at + 4)?);
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            types.push(at);
            if kind == kind::STRUCT && name != 0 {
                named.push((name, types.len() as u32));
            }
            at += 12
                + match kind {
                    kind::INT | kind::VAR | kind::DECL_TAG => 4,
                    kind::ARRAY => 12,
                    kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
                    kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                    0..=19 => 0,
                    other => return Err(format!("unknown type kind {other} at byte {at}")),
                };
        }
        let mut btf = Btf { data, types, strings, structs: HashMap::new() };
        for (name, id) in named {
            let name = btf.name(name)?.to_owned();
            btf.structs.entry(name).or_default().push(id);
        }
        Ok(btf)
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        self.data.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    }

    fn name(&self, offset: u32) -> Result<&str, String> {
        let start = self.strings.start + offset as usize;
        let bytes = self.data.get(start..self.strings.end).ok_or("name offset out of range")?;
        let len = bytes.iter().position(|&b| b == 0).ok_or("unterminated name")?;
        std::str::from_utf8(&bytes[..len]).map_err(|e| e.to_string())
    }

    /// Kind and members of type `id` if it is a struct or union, after
    /// typedefs and qualifiers.
    fn members(&self, mut id: u32) -> Option<Vec<Member>> {
        for _ in 0..32 {
            let at = *self.types.get((id as usize).checked_sub(1)?)?;
            let info = self.u32_at(at + 4)?;
            match (info >> 24) & 0x1f {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = self.u32_at(at + 8)?;
                }
                kind::STRUCT | kind::UNION => {
                    let bitfields = info & (1 << 31) != 0;
                    return (0..(info & 0xffff) as usize)
                        .map(|i| {
                            let m = at + 12 + 12 * i;
                            let offset = self.u32_at(m + 8)?;
                            let bit_offset = if bitfields { offset & 0xff_ffff } else { offset };
                            Some(Member {
                                name: self.u32_at(m)?,
                                ty: self.u32_at(m + 4)?,
                                bit_offset: bit_offset.into(),
                            })
                        })
                        .collect();
                }
                _ => return None,
            }
        }
        None
    }
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
        task_fs: field_offset(btf, "task_struct", "fs")?,
        fs_pwd: field_offset(btf, "fs_struct", "pwd")?,
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
        file_f_inode: field_offset(btf, "file", "f_inode")?,
        inode_i_nlink: field_offset(btf, "inode", "i_nlink")?,
        inode_i_ino: field_offset(btf, "inode", "i_ino")?,
        inode_i_sb: field_offset(btf, "inode", "i_sb")?,
        sb_s_dev: field_offset(btf, "super_block", "s_dev")?,
        vma_vm_file: field_offset(btf, "vm_area_struct", "vm_file")?,
        vma_vm_end: field_offset(btf, "vm_area_struct", "vm_end")?,
        vma_vm_flags: field_offset(btf, "vm_area_struct", "vm_flags")?,
        // x86 only; elsewhere 0, and the compat hook does nothing.
        task_ti_status: field_offset(btf, "task_struct", "thread_info")
            .and_then(|ti| Ok(ti + field_offset(btf, "thread_info", "status")?))
            .unwrap_or(0),
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
    btf.structs
        .get(ty)
        .into_iter()
        .flatten()
        .find_map(|&id| find_in(btf, id, field))
        .map(|bits| bits / 8)
        .ok_or(BtfError::Field { ty, field })
}

fn find_in(btf: &Btf, id: u32, field: &str) -> Option<u64> {
    for member in btf.members(id)? {
        let name = btf.name(member.name).unwrap_or_default();
        if name == field {
            return Some(member.bit_offset);
        }
        if name.is_empty() {
            if let Some(off) = find_in(btf, member.ty, field) {
                return Some(member.bit_offset + off);
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

    /// This reader against btf-rs, a general BTF parser, on every field
    /// the daemon reads, on the running kernel.
    #[test]
    fn agrees_with_btf_rs_on_every_field() {
        let ours = parse(Path::new(VMLINUX_BTF)).unwrap();
        let theirs = btf_rs::Btf::from_file(VMLINUX_BTF).unwrap();
        let fields: &[(&'static str, &'static str)] = &[
            ("task_struct", "real_parent"),
            ("task_struct", "tgid"),
            ("task_struct", "mm"),
            ("mm_struct", "arg_start"),
            ("mm_struct", "arg_end"),
            ("mm_struct", "exe_file"),
            ("task_struct", "files"),
            ("files_struct", "fdt"),
            ("fdtable", "max_fds"),
            ("fdtable", "fd"),
            ("file", "f_path"),
            ("file", "f_flags"),
            ("path", "mnt"),
            ("path", "dentry"),
            ("dentry", "d_parent"),
            ("dentry", "d_name"),
            ("qstr", "len"),
            ("qstr", "name"),
            ("mount", "mnt"),
            ("mount", "mnt_parent"),
            ("mount", "mnt_mountpoint"),
            ("vfsmount", "mnt_root"),
            ("linux_binprm", "file"),
            ("task_struct", "group_leader"),
            ("task_struct", "start_boottime"),
            ("task_struct", "cgroups"),
            ("css_set", "dfl_cgrp"),
            ("cgroup", "kn"),
            ("cgroup", "self"),
            ("cgroup_subsys_state", "parent"),
            ("kernfs_node", "id"),
            ("dentry", "d_sb"),
            ("inode", "i_sb"),
            ("super_block", "s_magic"),
        ];
        for &(ty, field) in fields {
            let expected = theirs
                .resolve_types_by_name(ty)
                .unwrap()
                .iter()
                .find_map(|t| match t {
                    btf_rs::Type::Struct(s) => btf_rs_find(&theirs, s, field),
                    _ => None,
                })
                .map(|bits| bits / 8);
            assert_eq!(field_offset(&ours, ty, field).ok(), expected, "{ty}.{field}");
        }
        assert!(field_offset(&ours, "task_struct", "no_such_field").is_err());
        assert!(field_offset(&ours, "no_such_struct", "tgid").is_err());
    }

    fn btf_rs_find(btf: &btf_rs::Btf, s: &btf_rs::Struct, field: &str) -> Option<u64> {
        for member in &s.members {
            let name = btf.resolve_name(member).unwrap_or_default();
            if name == field {
                return Some(u64::from(member.bit_offset()));
            }
            if name.is_empty() {
                let nested = match btf.resolve_chained_type(member).ok()? {
                    btf_rs::Type::Struct(inner) | btf_rs::Type::Union(inner) => btf_rs_find(btf, &inner, field),
                    _ => None,
                };
                if let Some(off) = nested {
                    return Some(u64::from(member.bit_offset()) + off);
                }
            }
        }
        None
    }

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        assert!(Btf::parse(b"not btf at all".to_vec()).is_err());
        let mut real = std::fs::read(VMLINUX_BTF).unwrap();
        real.truncate(real.len() / 2);
        assert!(Btf::parse(real).is_err());
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = all_offsets(Path::new("/nonexistent/vmlinux"), 1).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"));
    }
}
