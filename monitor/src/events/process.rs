//! Reading a process from `/proc` (the client of `run`, processes of an
//! adopted cgroup) into the identity ([`ExecId`]) the kernel's records
//! carry.

use std::fs;

pub use crate::identity::ExecId;
use crate::record::{Bytes, Process};

/// What `/proc/<pid>` tells about a live process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcInfo {
    pub process: Process,
    /// The executable (`/proc/<pid>/exe`), `None` for kernel threads or when
    /// unreadable.
    pub exe: Option<Bytes>,
    pub argv: Vec<Bytes>,
}

/// Reads `/proc/<pid>`; `None` if the process is gone.
pub fn read_proc(pid: u32) -> Option<ProcInfo> {
    let stat = parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let id_field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let parent_start = fs::read(format!("/proc/{}/stat", stat.ppid)).ok().as_deref().and_then(parse_stat);
    let process = Process {
        pid: Some(pid),
        tid: Some(pid),
        ppid: Some(stat.ppid),
        uid: id_field("Uid:"),
        gid: id_field("Gid:"),
        comm: Some(Bytes(stat.comm)),
        exec_id: Some(ExecId { start_ticks: stat.start_ticks, pid }),
        parent_exec_id: parent_start
            .filter(|_| stat.ppid != 0)
            .map(|p| ExecId { start_ticks: p.start_ticks, pid: stat.ppid }),
    };
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| Bytes(p.into_os_string().into_encoded_bytes()));
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
    let argv = if cmdline.is_empty() { Vec::new() } else { cmdline.split(|&c| c == 0).map(Bytes::from).collect() };
    Some(ProcInfo { process, exe, argv })
}

struct Stat {
    comm: Vec<u8>,
    ppid: u32,
    start_ticks: u64,
}

/// `pid (comm) state ppid ... starttime(22) ...`; comm may hold spaces and
/// parentheses, so the fields after it are counted from the last `)`.
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let open = stat.iter().position(|&c| c == b'(')?;
    let close = stat.iter().rposition(|&c| c == b')')?;
    if close < open {
        return None;
    }
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    Some(Stat {
        comm: stat[open + 1..close].to_vec(),
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_comm() {
        let s = parse_stat(b"42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1000 100").unwrap();
        assert_eq!((s.comm.as_slice(), s.ppid, s.start_ticks), (&b"a) b (c)"[..], 7, 98765));
        assert!(parse_stat(b"42 (x").is_none());
    }

    /// The identity `/proc` gives this process equals the one computed from
    /// the kernel's nanosecond clock, which is how records and adopted
    /// processes agree.
    #[test]
    fn proc_and_kernel_clocks_agree() {
        let me = read_proc(std::process::id()).expect("self is alive");
        let id = me.process.exec_id.unwrap();
        let ns = id.start_ticks * (1_000_000_000 / crate::identity::clock_ticks());
        assert_eq!(ExecId::from_start_ns(id.pid, ns + 1), Some(id));
        assert!(me.process.parent_exec_id.is_some());
        let shown = id.to_string();
        assert_eq!(shown.split(':').count(), 3, "{shown}");
        assert!(shown.ends_with(&format!(":{}", std::process::id())), "{shown}");
    }
}
