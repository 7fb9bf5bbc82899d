//! Paths from the kernel's own objects: the dentry chain of an open file,
//! walked up to the root across mount points. This is what file and exec
//! rules are judged on, so symlinks, `..`, relative paths, `/proc/self/fd/N`
//! and a changed working directory all resolve to the file actually opened,
//! and no user memory is read (no check-then-use race on the path string).
//!
//! The path is built backwards at the end of the per-CPU scratch buffer,
//! one component per iteration, and then copied into the lookup key and the
//! record. Deeper than [`MAX_COMPONENTS`] (mount crossings included) or
//! longer than [`PATH_BUF`] bytes, the walk gives up: the path is reported
//! unresolved.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use monitor_common::policy::{PathKey, PATH_KEY_LEN};

use crate::maps::{offsets, Scratch, PATH_BUF, SCRATCH};

/// Bound on the walk: path components plus mount crossings.
const MAX_COMPONENTS: u32 = 64;
/// Longest name the kernel allows for one component.
const NAME_MAX: u32 = 255;

/// A path resolved into `scratch.buf[start..PATH_BUF]`.
pub struct Resolved {
    pub scratch: *mut Scratch,
    pub start: usize,
}

impl Resolved {
    #[inline(always)]
    pub fn len(&self) -> usize {
        PATH_BUF - self.start
    }
}

#[inline(always)]
fn read_ptr(base: u64, offset: u64) -> Option<u64> {
    unsafe { bpf_probe_read_kernel((base + offset) as *const u64).ok() }
}

/// The scratch area of this CPU.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// Resolves the path of `struct file *file`.
#[inline(always)]
pub fn file_path(file: u64) -> Option<Resolved> {
    if file == 0 {
        return None;
    }
    let off = offsets();
    let mnt = read_ptr(file, off.file_f_path + off.path_mnt)?;
    let dentry = read_ptr(file, off.file_f_path + off.path_dentry)?;
    walk(mnt, dentry)
}

/// Resolves the path of `dentry` on the mount `vfsmnt` (a `struct
/// vfsmount *`).
#[inline(always)]
pub fn dentry_path(vfsmnt: u64, dentry: u64) -> Option<Resolved> {
    if vfsmnt == 0 || dentry == 0 {
        return None;
    }
    walk(vfsmnt, dentry)
}

/// Walks from `dentry` on the mount of `vfsmnt` up to the root.
#[inline(always)]
fn walk(vfsmnt: u64, mut dentry: u64) -> Option<Resolved> {
    let off = offsets();
    let scratch = scratch()?;
    let buf = unsafe { (*scratch).buf.as_mut_ptr() };
    let pos_slot = unsafe { &raw mut (*scratch).pos };
    unsafe { core::ptr::write_volatile(pos_slot, PATH_BUF as u32) };
    let mut mount = vfsmnt.wrapping_sub(off.mount_mnt);
    let mut mnt_root = read_ptr(vfsmnt, off.vfsmount_mnt_root)?;
    let mut i = 0;
    let mut done = false;
    while i < MAX_COMPONENTS {
        i += 1;
        if dentry == mnt_root {
            let parent = read_ptr(mount, off.mount_mnt_parent)?;
            if parent == mount {
                done = true;
                break;
            }
            // Continue from the mount point in the parent mount.
            dentry = read_ptr(mount, off.mount_mnt_mountpoint)?;
            mount = parent;
            mnt_root = read_ptr(mount + off.mount_mnt, off.vfsmount_mnt_root)?;
            continue;
        }
        let parent = read_ptr(dentry, off.dentry_d_parent)?;
        if parent == dentry {
            // The root of a filesystem that is not mounted here (a detached
            // mount): nothing above it to name.
            done = true;
            break;
        }
        let len: u32 =
            unsafe { bpf_probe_read_kernel((dentry + off.dentry_d_name + off.qstr_len) as *const u32).ok()? };
        let name = read_ptr(dentry, off.dentry_d_name + off.qstr_name)?;
        let len = (len & NAME_MAX) as usize;
        let pos = unsafe { core::ptr::read_volatile(pos_slot) } as usize;
        if len + 1 > pos {
            return None;
        }
        let pos = pos - len - 1;
        unsafe {
            *buf.add(pos & (PATH_BUF - 1)) = b'/';
            generated::bpf_probe_read_kernel(buf.add((pos + 1) & (PATH_BUF - 1)).cast(), len as u32, name as *const _);
            core::ptr::write_volatile(pos_slot, pos as u32);
        }
        dentry = parent;
    }
    if !done {
        return None;
    }
    let mut pos = unsafe { core::ptr::read_volatile(pos_slot) } as usize & (PATH_BUF - 1 | PATH_BUF);
    if pos >= PATH_BUF {
        pos = PATH_BUF - 1;
        unsafe { *buf.add(pos) = b'/' };
    }
    Some(Resolved { scratch, start: pos })
}

/// Writes the lookup key for `policy` and the resolved path into the
/// scratch key (see `monitor_common::policy` for the key format).
#[inline(always)]
pub fn key_from_resolved(r: &Resolved, policy: u32) -> &PathKey {
    let scratch = r.scratch;
    unsafe {
        let key = &raw mut (*scratch).key;
        (*key).prefixlen = 32 + 8 * PATH_KEY_LEN as u32;
        (*key).policy = policy.to_be_bytes();
        let len = r.len();
        let n = if len < PATH_KEY_LEN { len } else { PATH_KEY_LEN };
        let src = (*scratch).buf.as_ptr().add(r.start & (PATH_BUF - 1));
        generated::bpf_probe_read_kernel((*key).path.as_mut_ptr().cast(), (n & 0xff) as u32, src.cast());
        if n < PATH_KEY_LEN {
            *(*key).path.as_mut_ptr().add(n & 0xff) = 0;
        }
        &*key
    }
}

/// Writes the lookup key for a path string already in `path` (a NUL or the
/// end of the array terminates it), e.g. a requested path.
#[inline(always)]
pub fn key_from_str(path: &[u8; monitor_common::event::PATH_LEN], len: usize, policy: u32) -> Option<&'static PathKey> {
    let scratch = scratch()?;
    unsafe {
        let key = &raw mut (*scratch).key;
        (*key).prefixlen = 32 + 8 * PATH_KEY_LEN as u32;
        (*key).policy = policy.to_be_bytes();
        let n = if len < PATH_KEY_LEN { len } else { PATH_KEY_LEN };
        generated::bpf_probe_read_kernel((*key).path.as_mut_ptr().cast(), (n & 0xff) as u32, path.as_ptr().cast());
        if n < PATH_KEY_LEN {
            *(*key).path.as_mut_ptr().add(n & 0xff) = 0;
        }
        Some(&*key)
    }
}

/// Copies the resolved path into a record's path field (NUL-terminated,
/// cut to fit); returns the bytes kept.
#[inline(always)]
pub fn copy_out(r: &Resolved, dst: *mut [u8; monitor_common::event::PATH_LEN]) -> usize {
    const CAP: usize = monitor_common::event::PATH_LEN - 1;
    let len = r.len();
    let n = if len < CAP { len } else { CAP };
    unsafe {
        let src = (*r.scratch).buf.as_ptr().add(r.start & (PATH_BUF - 1));
        generated::bpf_probe_read_kernel((*dst).as_mut_ptr().cast(), (n & 0x1ff) as u32, src.cast());
        (*dst)[n & 0x1ff] = 0;
    }
    n
}
