//! Process identity: the `exec_id` every record carries.
//!
//! A pid alone is reused; the pair (pid, start time) is not, within one boot.
//! The kernel stamps each record with `start_boottime` of the process and of
//! its parent; `/proc/<pid>/stat` reports the same clock in clock ticks, so
//! both sources give the same id: `<boot id>:<start ticks>:<pid>`.

use std::{fmt, fs, sync::OnceLock};

use serde::{Serialize, Serializer};

/// A process's identity for this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecId {
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    pub pid: u32,
}

impl ExecId {
    /// From the kernel's `start_boottime` in nanoseconds; `None` for pid 0
    /// (no parent: the idle task).
    pub fn from_start_ns(pid: u32, start_ns: u64) -> Option<Self> {
        (pid != 0).then(|| ExecId { start_ticks: start_ns / (1_000_000_000 / clock_ticks()), pid })
    }
}

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", boot_id(), self.start_ticks, self.pid)
    }
}

impl Serialize for ExecId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `USER_HZ` as the kernel exports it to `/proc` (100 on every architecture
/// this runs on; asked rather than assumed).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *TICKS.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 && 1_000_000_000 % n == 0 => n as u64,
        _ => 100,
    })
}

/// The first 16 hex digits of `/proc/sys/kernel/random/boot_id`: ids from
/// different boots of one host differ.
pub fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        let raw = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let hex: String = raw.chars().filter(char::is_ascii_hexdigit).take(16).collect();
        if hex.len() == 16 {
            hex
        } else {
            "0000000000000000".to_owned()
        }
    })
}
