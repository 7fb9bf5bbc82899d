//! Policy decisions: one trie lookup per operation, then bounded work.
//! The daemon's `monitor::policy::judge` is the reference these must agree
//! with (and its tests check the compiled maps against a naive rule scan).

use aya_ebpf::maps::lpm_trie::Key;
use monitor_common::{
    event::{decision, EventHeader},
    policy::{
        action, mode, FileValue, InodeKey, Learned4Key, Learned6Key, LearnedValue, NetValue, PathKey, PolicyConfig,
        PolicyVerdict, MAX_PORT_RULES, RULE_BUILTIN_TAMPER, RULE_DEFAULT, RULE_EXEC_UNNAMED, RULE_RAW_SOCKETS,
    },
};

use crate::maps::{
    PathKeyData, LEARNED4, LEARNED6, POLICY_CONFIG, POLICY_EXEC, POLICY_FILE, POLICY_INODES, POLICY_NET4, POLICY_NET6,
};

/// A decision for one operation.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub policy: u32,
    pub rule_id: u32,
    /// The rule's or default's action, 0 when no policy judged.
    pub action: u8,
    /// One of `decision`.
    pub decision: u8,
}

impl Verdict {
    pub const NONE: Verdict = Verdict { policy: u32::MAX, rule_id: RULE_DEFAULT, action: 0, decision: decision::NONE };

    /// A DNS packet sent to the daemon's resolver, which judges the name.
    #[inline(always)]
    pub fn redirected(policy: u32) -> Verdict {
        Verdict { policy, rule_id: RULE_DEFAULT, action: action::ALLOW, decision: decision::ALLOW }
    }

    /// A DNS packet that could not be sent to the resolver: denied under an
    /// enforcing policy, recorded as a policy hit under an auditing one.
    #[inline(always)]
    pub fn unredirectable(policy: u32) -> Verdict {
        let decision = if enforcing(policy) { decision::DENY } else { decision::AUDIT };
        Verdict { policy, rule_id: RULE_DEFAULT, action: action::DENY, decision }
    }

    /// Whether the operation must be stopped.
    #[inline(always)]
    pub fn blocks(&self) -> bool {
        self.decision == decision::DENY
    }

    /// Copies the verdict into a record header (mechanism set by the caller).
    #[inline(always)]
    pub fn write(&self, h: *mut EventHeader) {
        unsafe {
            (*h).policy = self.policy;
            (*h).rule_id = self.rule_id;
            (*h).action = self.action;
            (*h).decision = self.decision;
        }
    }
}

#[inline(always)]
fn config(policy: u32) -> Option<PolicyConfig> {
    let c = *POLICY_CONFIG.get(policy)?;
    // A slot never written (or cleared) has mode 0: no policy.
    if c.mode == 0 {
        return None;
    }
    Some(c)
}

#[inline(always)]
fn outcome(policy: u32, cfg: &PolicyConfig, v: PolicyVerdict) -> Verdict {
    // The built-in tamper protection blocks under an audit-mode policy too.
    let decision = match v.action {
        action::DENY if cfg.mode == mode::ENFORCE || v.rule_id == RULE_BUILTIN_TAMPER => decision::DENY,
        action::DENY | action::AUDIT => decision::AUDIT,
        _ => decision::ALLOW,
    };
    Verdict { policy, rule_id: v.rule_id, action: v.action, decision }
}

#[inline(always)]
fn default(action: u8) -> PolicyVerdict {
    PolicyVerdict { rule_id: RULE_DEFAULT, action, _pad: [0; 3] }
}

#[inline(always)]
fn as_trie_key(key: &PathKey) -> &Key<PathKeyData> {
    // SAFETY: `PathKey` is `#[repr(C)] { prefixlen: u32, policy: [u8; 4],
    // path: [u8; PATH_KEY_LEN] }`, the layout of `Key<PathKeyData>`.
    unsafe { &*(key as *const PathKey as *const Key<PathKeyData>) }
}

/// Judges a file access; `key` holds the lookup key for `policy`. An
/// access that both reads and writes takes the stronger of the two
/// verdicts (the read one on a tie).
#[inline(always)]
pub fn file(policy: u32, key: &PathKey, access: Access) -> Verdict {
    let Some(cfg) = config(policy) else {
        return Verdict::NONE;
    };
    let v = match POLICY_FILE.get(as_trie_key(key)) {
        Some(value) => for_access(value, access),
        None => default(cfg.file_default),
    };
    outcome(policy, &cfg, v)
}

/// The verdict of a file entry for `access`.
#[inline(always)]
fn for_access(value: &FileValue, access: Access) -> PolicyVerdict {
    let FileValue { read, write } = *value;
    // The built-in tamper deny of a write is never outranked by the read
    // verdict (which an audit-mode policy would not enforce).
    if !access.write || (access.read && read.action >= write.action && write.rule_id != RULE_BUILTIN_TAMPER) {
        read
    } else {
        write
    }
}

/// Judges a file access by the opened inode's identity (device, inode
/// number): `Some` when a read-deny rule of `policy` names that inode under
/// its own path, which then decides whatever path the file was opened by.
/// `identity` gives (dev, ino); it is read only when the instance has
/// files by identity at all.
#[inline(always)]
pub fn file_by_inode(policy: u32, access: Access, identity: impl FnOnce() -> Option<(u32, u64)>) -> Option<Verdict> {
    let cfg = config(policy)?;
    if cfg.inodes == 0 {
        return None;
    }
    let (dev, ino) = identity()?;
    let value = unsafe { POLICY_INODES.get(&InodeKey { policy, dev, ino }) }?;
    Some(outcome(policy, &cfg, for_access(value, access)))
}

/// What an open asks for.
#[derive(Clone, Copy)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

impl Access {
    /// From open flags: the access mode, and creating or truncating counts
    /// as writing.
    #[inline(always)]
    pub fn of_flags(flags: u32) -> Access {
        let mode = flags & O_ACCMODE;
        Access { read: mode != O_WRONLY, write: mode == O_WRONLY || mode == O_RDWR || flags & (O_CREAT | O_TRUNC) != 0 }
    }
}

/// The policy's file default, for an access whose path is unknown.
#[inline(always)]
pub fn file_default(policy: u32) -> Verdict {
    match config(policy) {
        Some(cfg) => outcome(policy, &cfg, default(cfg.file_default)),
        None => Verdict::NONE,
    }
}

/// The policy's exec default, for a binary whose path is unknown.
#[inline(always)]
pub fn exec_default(policy: u32) -> Verdict {
    match config(policy) {
        Some(cfg) => outcome(policy, &cfg, default(cfg.exec_default)),
        None => Verdict::NONE,
    }
}

/// Judges the `execve` of a file no directory names:
/// `defaults.exec_unnamed` alone decides, no path rule can name it.
#[inline(always)]
pub fn exec_unnamed(policy: u32) -> Verdict {
    match config(policy) {
        Some(cfg) => {
            outcome(policy, &cfg, PolicyVerdict { rule_id: RULE_EXEC_UNNAMED, action: cfg.exec_unnamed, _pad: [0; 3] })
        }
        None => Verdict::NONE,
    }
}

/// Judges creating a socket the network rules cannot judge
/// (`defaults.raw_sockets`).
#[inline(always)]
pub fn raw_socket(policy: u32) -> Verdict {
    match config(policy) {
        Some(cfg) => {
            outcome(policy, &cfg, PolicyVerdict { rule_id: RULE_RAW_SOCKETS, action: cfg.raw_sockets, _pad: [0; 3] })
        }
        None => Verdict::NONE,
    }
}

/// Whether an executable mapping is plainly allowed without looking at its
/// file: the policy has no exec rule and allows execs by default (then
/// nothing about the path could change that).
#[inline(always)]
pub fn mapping_needs_no_path(policy: u32) -> bool {
    config(policy).is_some_and(|c| c.exec_rules == 0 && c.exec_default == action::ALLOW)
}

/// Judges an exec of the binary in `key`.
#[inline(always)]
pub fn exec(policy: u32, key: &PathKey) -> Verdict {
    let Some(cfg) = config(policy) else {
        return Verdict::NONE;
    };
    let v = match POLICY_EXEC.get(as_trie_key(key)) {
        Some(v) => *v,
        None => default(cfg.exec_default),
    };
    outcome(policy, &cfg, v)
}

/// A network verdict and, when an address learned from a DNS answer
/// decided it, the daemon's id of the name (else 0).
#[derive(Clone, Copy)]
pub struct NetVerdict {
    pub verdict: Verdict,
    pub domain: u32,
}

/// Judges a connection to an IPv4 destination (network byte order): the
/// CIDR trie first; where it falls to the policy default, the addresses
/// learned from the trajectory's allowed names.
#[inline(always)]
pub fn net4(policy: u32, addr: [u8; 4], port: u16, protocol: u8) -> NetVerdict {
    let Some(cfg) = config(policy) else {
        return NetVerdict { verdict: Verdict::NONE, domain: 0 };
    };
    // A connect to 0.0.0.0 reaches the local host: judged as 127.0.0.1.
    let addr = if addr == [0; 4] { [127, 0, 0, 1] } else { addr };
    let p = policy.to_be_bytes();
    let key = Key::new(64, [p[0], p[1], p[2], p[3], addr[0], addr[1], addr[2], addr[3]]);
    let mut v = match POLICY_NET4.get(&key) {
        Some(value) => ports(value, port, protocol),
        None => default(cfg.network_default),
    };
    let mut domain = 0;
    if v.rule_id == RULE_DEFAULT {
        if let Some(learned) = unsafe { LEARNED4.get(&Learned4Key { policy, addr }) } {
            if let Some(l) = learned_verdict(learned, port, protocol) {
                v = l;
                domain = learned.name;
            }
        }
    }
    NetVerdict { verdict: outcome(policy, &cfg, v), domain }
}

/// Judges a connection to an IPv6 destination (network byte order). An
/// IPv4-mapped address (`::ffff:a.b.c.d`) is judged by the IPv4 rules.
#[inline(always)]
pub fn net6(policy: u32, addr: [u8; 16], port: u16, protocol: u8) -> NetVerdict {
    if addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff {
        return net4(policy, [addr[12], addr[13], addr[14], addr[15]], port, protocol);
    }
    let Some(cfg) = config(policy) else {
        return NetVerdict { verdict: Verdict::NONE, domain: 0 };
    };
    // A connect to :: reaches the local host: judged as ::1.
    let mut addr = addr;
    if addr == [0; 16] {
        addr[15] = 1;
    }
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&policy.to_be_bytes());
    data[4..].copy_from_slice(&addr);
    let key = Key::new(32 + 128, data);
    let mut v = match POLICY_NET6.get(&key) {
        Some(value) => ports(value, port, protocol),
        None => default(cfg.network_default),
    };
    let mut domain = 0;
    if v.rule_id == RULE_DEFAULT {
        if let Some(learned) = unsafe { LEARNED6.get(&Learned6Key { policy, addr }) } {
            if let Some(l) = learned_verdict(learned, port, protocol) {
                v = l;
                domain = learned.name;
            }
        }
    }
    NetVerdict { verdict: outcome(policy, &cfg, v), domain }
}

/// The verdict of a learned entry that has not expired; `None` once it
/// has (the policy default then judges, as if it were absent).
#[inline(always)]
fn learned_verdict(learned: &LearnedValue, port: u16, protocol: u8) -> Option<PolicyVerdict> {
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    if now >= learned.expires_ns {
        return None;
    }
    Some(ports(&learned.net, port, protocol))
}

/// The first port rule of an entry matching `port` and `protocol`, in the
/// precedence order the compiler wrote them, else the entry's fallback.
#[inline(always)]
fn ports(value: &NetValue, port: u16, protocol: u8) -> PolicyVerdict {
    let count = value.count as usize;
    let mut i = 0;
    while i < MAX_PORT_RULES {
        if i >= count {
            break;
        }
        let r = &value.rules[i];
        if r.port_lo <= port && port <= r.port_hi && (r.protocol == 0 || r.protocol == protocol) {
            return PolicyVerdict { rule_id: r.rule_id, action: r.action, _pad: [0; 3] };
        }
        i += 1;
    }
    value.fallback
}

/// Whether `policy` names a live instance (any mode).
#[inline(always)]
pub fn bound(policy: u32) -> bool {
    config(policy).is_some()
}

/// Whether `policy` is bound and in `enforce` mode.
#[inline(always)]
pub fn enforcing(policy: u32) -> bool {
    config(policy).is_some_and(|c| c.mode == mode::ENFORCE)
}
