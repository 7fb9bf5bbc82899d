//! The ring buffer's producer and consumer positions, read from a read-only
//! mapping of its first two pages of our own (aya's `RingBuf` keeps its
//! mapping private).
//!
//! The pipeline needs them for one guarantee: a `step` record must follow
//! every record reserved before the step's map update. A record reserved
//! but not yet submitted stops the consumer ("busy"), so "the ring reads as
//! empty" does not mean "everything reserved so far was read"; comparing
//! the consumer position with a producer position sampled after the update
//! does.
//!
//! Layout (kernel `bpf_ringbuf`, the same for every kernel we support):
//! page 0 holds the consumer position, page 1 the producer position, both
//! `unsigned long` at offset 0. A mapping without `PROT_WRITE` may cover
//! any pages of the map, so mapping both read-only is always allowed.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

pub struct RingPositions {
    base: NonNull<u8>,
    page: usize,
}

// SAFETY: the mapping is read-only shared memory, read only through atomic
// loads; nothing in it is tied to the thread that created it.
unsafe impl Send for RingPositions {}

impl RingPositions {
    /// Maps the position pages of the ring buffer map `fd`.
    pub fn map(fd: BorrowedFd<'_>) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).map_err(|_| io::Error::last_os_error())?;
        // SAFETY: a fresh shared read-only mapping of two pages of a ring
        // buffer map; the kernel checks the fd and the range.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), 2 * page, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(RingPositions { base, page })
    }

    /// Where the next reservation will start: everything below it has been
    /// reserved (and maybe not yet submitted).
    pub fn producer(&self) -> u64 {
        self.load(self.page)
    }

    /// Where the consumer (aya's `RingBuf`) reads next.
    pub fn consumer(&self) -> u64 {
        self.load(0)
    }

    fn load(&self, offset: usize) -> u64 {
        // SAFETY: `offset` is 0 or one page into a live two-page mapping;
        // page-aligned, so aligned for an AtomicU64, which the kernel
        // updates with release stores (`smp_store_release`).
        unsafe { (*self.base.as_ptr().add(offset).cast::<AtomicU64>()).load(Ordering::Acquire) }
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), 2 * self.page) };
    }
}
