//! The `session:` and `limits:` sections: who the agent runs as, and what
//! its cgroup may use. Parsed here, checked with file:line:column errors
//! like every other field; applied when a trajectory opens
//! (`crate::account`, `crate::limits`).

/// `session:` of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// `USER[:GROUP]` the agent must run as (resolved on the host when a
    /// trajectory opens: accounts differ between hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Capabilities the agent keeps, by name without `cap_`
    /// (`net_bind_service`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

impl Session {
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.capabilities.is_empty()
    }
}

/// `limits:` of a policy: applied to the trajectory's cgroup before the
/// agent runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Bytes (`memory.max`, `memory.limit_in_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Tasks (`pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Thousandths of a core (`cpu.max`, `cpu.cfs_quota_us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// The smallest memory limit: below it no agent starts.
pub const MIN_MEMORY: u64 = 4 << 20;
/// The kernel's own bound on `pids.max` (`PID_MAX_LIMIT`).
pub const MAX_PIDS: u64 = 4 << 20;
/// CPU bounds in thousandths of a core: `cpu.max` takes a quota of at least
/// 1 ms per 100 ms period, so 0.01 core.
pub const MIN_CPU_MILLICORES: u32 = 10;
pub const MAX_CPU_MILLICORES: u32 = 1024 * 1000;

/// `512M`, `2G`, `65536` (bytes): binary units K, M, G, T, an optional `i`
/// or `B` (`512Mi`, `512MB` mean the same).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let err =
        || format!("invalid memory size {s:?}: expected bytes or a number with K, M, G or T (binary units), e.g. 512M");
    let t = s.trim();
    let t = t.strip_suffix('B').or_else(|| t.strip_suffix('b')).unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(err)?;
    if bytes < MIN_MEMORY {
        return Err(format!("memory limit {s:?} is below the smallest accepted, 4M"));
    }
    Ok(bytes)
}

pub fn parse_pids(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_PIDS).contains(&n) => Ok(n),
        _ => Err(format!("invalid pids limit {s:?}: expected a whole number of tasks from 1 to {MAX_PIDS}")),
    }
}

/// Cores with up to three decimals: `1.5`, `0.25`, `2`.
pub fn parse_cpu(s: &str) -> Result<u32, String> {
    let err =
        || format!("invalid cpu limit {s:?}: expected cores, e.g. 1.5 (from 0.01 to 1024, at most three decimals)");
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 3 || (t.contains('.') && frac.is_empty()) {
        return Err(err());
    }
    let whole: u32 = whole.parse().map_err(|_| err())?;
    let frac: u32 = format!("{frac:0<3}").parse().map_err(|_| err())?;
    let milli = whole.checked_mul(1000).and_then(|w| w.checked_add(frac)).ok_or_else(err)?;
    if !(MIN_CPU_MILLICORES..=MAX_CPU_MILLICORES).contains(&milli) {
        return Err(err());
    }
    Ok(milli)
}

/// `USER[:GROUP]` as `run --user` takes it; resolved on the host later.
pub fn parse_user(s: &str) -> Result<String, String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let ok = match s.split_once(':') {
        Some((u, g)) => ok_part(u) && ok_part(g),
        None => ok_part(s),
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("invalid user {s:?}: expected USER or USER:GROUP (names or numeric ids)"))
    }
}

/// A capability by name, with or without `cap_`, any case; its name
/// without `cap_`.
pub fn parse_capability(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let name = lower.strip_prefix("cap_").unwrap_or(&lower);
    match cap_number(name) {
        Some(_) => Ok(name.to_owned()),
        None => {
            Err(format!("unknown capability {s:?}: expected a name such as net_bind_service (see capabilities(7))"))
        }
    }
}

/// A capability's number by its name without `cap_` (`net_bind_service`).
pub fn cap_number(name: &str) -> Option<u32> {
    CAP_NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// `cap_<name>` of capability `n`.
pub fn cap_name(n: u32) -> String {
    CAP_NAMES.get(n as usize).map_or_else(|| format!("cap_{n}"), |name| format!("cap_{name}"))
}

/// Capability names by number, without `cap_` (capabilities(7)).
const CAP_NAMES: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("2GB"), Ok(2 << 30));
        assert_eq!(parse_memory("4194304"), Ok(4 << 20));
        assert_eq!(parse_memory("64k").unwrap_err(), "memory limit \"64k\" is below the smallest accepted, 4M");
        for bad in ["", "M", "1.5G", "-1G", "12X", "99999999999999T"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pids_and_cpu() {
        assert_eq!(parse_pids("256"), Ok(256));
        for bad in ["0", "-1", "x", "4194305"] {
            assert!(parse_pids(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpu("1.5"), Ok(1500));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.01"), Ok(10));
        for bad in ["0", "0.001", "1.", ".5", "1.2345", "x", "-1", "1025"] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_and_capabilities() {
        assert_eq!(parse_user("agent"), Ok("agent".into()));
        assert_eq!(parse_user("1000:1000"), Ok("1000:1000".into()));
        for bad in ["", ":", "a:", "a b", "a/b", "a:b:c"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_capability("net_bind_service"), Ok("net_bind_service".into()));
        assert_eq!(parse_capability("CAP_NET_BIND_SERVICE"), Ok("net_bind_service".into()));
        assert!(parse_capability("net_bind").is_err());
    }
}
