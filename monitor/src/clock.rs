//! The clocks: CLOCK_BOOTTIME, which the kernel stamps records with (it
//! keeps counting through suspend and never jumps), and the wall clock the
//! stream is written in.

/// The current value of `clock`, in ns.
pub fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_BOOTTIME now, in ns: the kernel's `bpf_ktime_get_boot_ns`.
pub fn boottime_ns() -> u64 {
    now_ns(libc::CLOCK_BOOTTIME)
}

/// CLOCK_MONOTONIC now, in ns: the kernel's `bpf_ktime_get_ns`, which
/// the learned-address entries expire by.
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// Converts CLOCK_BOOTTIME stamps to wall-clock time (ns since the Unix
/// epoch). Sampled again now and then: the wall clock may be stepped.
#[derive(Clone, Copy, Debug)]
pub struct BootToWall {
    offset_ns: i128,
}

impl BootToWall {
    pub fn sample() -> Self {
        BootToWall { offset_ns: i128::from(now_ns(libc::CLOCK_REALTIME)) - i128::from(boottime_ns()) }
    }

    /// With a fixed offset, for tests.
    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> Self {
        BootToWall { offset_ns }
    }

    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        (i128::from(boot_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_stamps_map_to_wall_time_in_order() {
        let c = BootToWall::with_offset(1_000);
        assert_eq!(c.wall_ns(5), 1_005);
        assert!(c.wall_ns(6) > c.wall_ns(5));
        assert_eq!(BootToWall::with_offset(-10).wall_ns(3), 0, "clamped, never wraps");
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ns();
        assert!(boottime_ns() >= a);
    }
}
