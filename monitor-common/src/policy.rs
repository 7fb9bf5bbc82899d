//! Keys and values of the policy maps: what `monitor::policy::compile` writes
//! and what the kernel programs look up on every exec, open and connect.
//!
//! Every lookup is one LPM-trie lookup followed by a bounded amount of work, so
//! the cost does not grow with the number of rules. The 32-bit policy id is the
//! head of every key, big-endian, so it is part of the matched prefix: entries
//! of one policy can never answer a lookup made for another.
//!
//! Paths: an exact rule `/a/b` is the prefix `"/a/b\0"`; a directory rule
//! `/a/b/` is the two prefixes `"/a/b/"` (everything below) and `"/a/b\0"`
//! (the directory itself); the root directory rule is the prefix `"/"`. The
//! kernel looks up the path followed by its NUL terminator, with the key's
//! prefix length set to the whole key. A path of [`PATH_KEY_LEN`] bytes or more
//! fills the key with its first [`PATH_KEY_LEN`] bytes and **no** terminator:
//! a terminator written by a truncating string read would make the cut path
//! match an exact rule for its first bytes.

use crate::assert_size;

/// Bytes of path in a path key. The kernel caps LPM key data (everything
/// after `prefixlen`) at 256 bytes; the policy id takes 4 of them.
pub const PATH_KEY_LEN: usize = 252;

/// Longest path a rule may name: the rule's entry holds the path plus a
/// `/` or NUL byte.
pub const MAX_RULE_PATH_LEN: usize = PATH_KEY_LEN - 1;

/// Port rules one network entry holds, its own and those inherited from
/// shorter covering CIDRs together.
pub const MAX_PORT_RULES: usize = 16;

/// Capacity of the policy config array: policy ids are `0..MAX_POLICIES`.
pub const MAX_POLICIES: u32 = 8192;

/// `PolicyVerdict::action` and the actions of [`PolicyConfig`]. Ordered by
/// strength so the larger value wins a tie; 0 is never written, so a zeroed
/// value reads as "no verdict" rather than as "allow".
pub mod action {
    pub const ALLOW: u8 = 1;
    /// Allow, and record the event as a policy hit.
    pub const AUDIT: u8 = 2;
    pub const DENY: u8 = 3;
}

/// `PolicyConfig::mode`.
pub mod mode {
    /// Deny verdicts block the operation.
    pub const ENFORCE: u8 = 1;
    /// Verdicts are recorded; nothing is blocked.
    pub const AUDIT: u8 = 2;
}

/// `PortRule::protocol`: IP protocol numbers, 0 for any.
pub mod protocol {
    pub const ANY: u8 = 0;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Rule id of a verdict that came from the policy's default, not a rule.
pub const RULE_DEFAULT: u32 = 0;

/// Rule id of the built-in tamper protection, added to every compiled
/// policy instance (writes into the daemon's own directories and the cgroup
/// and BPF filesystems) and carried by the tamper hooks' records. A deny
/// with this id blocks even under a policy in `audit` mode.
pub const RULE_BUILTIN_TAMPER: u32 = 0xffff_fffe;

/// Rule id of a verdict `defaults.exec_unnamed` decided: the exec or
/// executable mapping of a file no directory names.
pub const RULE_EXEC_UNNAMED: u32 = 0xffff_fffd;

/// Rule id of a verdict `defaults.raw_sockets` decided: a socket the
/// network rules cannot judge.
pub const RULE_RAW_SOCKETS: u32 = 0xffff_fffc;

/// An action and the rule that decided it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyVerdict {
    /// Id of the deciding rule, [`RULE_DEFAULT`] for the policy default.
    pub rule_id: u32,
    /// One of [`action`].
    pub action: u8,
    pub _pad: [u8; 3],
}
assert_size!(PolicyVerdict, 8);

/// Value of the policy config array, indexed by policy id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// One of [`mode`].
    pub mode: u8,
    /// Action on a file lookup miss, one of [`action`].
    pub file_default: u8,
    /// Action on an exec lookup miss.
    pub exec_default: u8,
    /// Action on a network lookup miss.
    pub network_default: u8,
    /// Action on the `execve` of a file no directory
    /// names: a memfd, an `O_TMPFILE` file, a deleted file.
    pub exec_unnamed: u8,
    /// Action on creating a socket the network rules cannot judge (raw,
    /// packet, ICMP, SCTP, vsock, ...: `docs/security.md`).
    pub raw_sockets: u8,
    /// 1 when the policy has exec rules: without them a named file's
    /// executable mapping is decided by `exec_default` alone, and the
    /// kernel skips resolving its path.
    pub exec_rules: u8,
    /// 1 when the instance has entries in the inode map ([`InodeKey`]):
    /// only then do file opens read the opened inode's identity.
    pub inodes: u8,
}
assert_size!(PolicyConfig, 8);

/// Key of the file and exec LPM tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    /// Matched bits: 32 for the policy id plus 8 per path byte.
    pub prefixlen: u32,
    /// Policy id, big-endian.
    pub policy: [u8; 4],
    pub path: [u8; PATH_KEY_LEN],
}
assert_size!(PathKey, 260);

/// Value of the file trie: the verdict per access, each fully resolved when
/// the policy was compiled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileValue {
    pub read: PolicyVerdict,
    pub write: PolicyVerdict,
}
assert_size!(FileValue, 16);

/// Value of the exec trie.
pub type ExecValue = PolicyVerdict;

/// Key of the inode map: a file a read-deny rule names, by identity, so
/// the rule follows it under another name (a hard link, a rename). `dev` is
/// the superblock's `s_dev` in the kernel's encoding (`major << 20 |
/// minor`); the value is the [`FileValue`] of its path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub policy: u32,
    pub dev: u32,
    pub ino: u64,
}
assert_size!(InodeKey, 16);

/// Capacity of the inode map, shared by every live instance.
pub const MAX_INODES: u32 = 1 << 18;
/// How many files of one instance's read-deny rules the daemon records by
/// identity; beyond it the rest are judged by path only, and the daemon
/// says so.
pub const MAX_INODES_PER_INSTANCE: usize = 16_384;

/// Key of the IPv4 network trie. IPv4-mapped IPv6 destinations
/// (`::ffff:a.b.c.d`) are looked up here, converted to IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4Key {
    /// 32 for the policy id plus the CIDR prefix length.
    pub prefixlen: u32,
    /// Policy id, big-endian.
    pub policy: [u8; 4],
    /// Network byte order.
    pub addr: [u8; 4],
}
assert_size!(Net4Key, 12);

/// Key of the IPv6 network trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net6Key {
    /// 32 for the policy id plus the CIDR prefix length.
    pub prefixlen: u32,
    /// Policy id, big-endian.
    pub policy: [u8; 4],
    /// Network byte order.
    pub addr: [u8; 16],
}
assert_size!(Net6Key, 24);

/// One port/protocol rule of a network entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// Inclusive range of destination ports (host byte order).
    pub port_lo: u16,
    pub port_hi: u16,
    /// One of [`protocol`].
    pub protocol: u8,
    /// One of [`action`].
    pub action: u8,
    pub _pad: u16,
    pub rule_id: u32,
}
assert_size!(PortRule, 12);

/// Value of both network tries. The kernel checks `rules[..count]` in order
/// and takes the first that matches the destination port and protocol, else
/// `fallback`. The order already encodes precedence (longest CIDR, then
/// narrowest port range, then a named protocol, then deny > audit > allow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetValue {
    /// Used entries of `rules`, at most [`MAX_PORT_RULES`].
    pub count: u32,
    pub _pad: u32,
    pub fallback: PolicyVerdict,
    pub rules: [PortRule; MAX_PORT_RULES],
}
assert_size!(NetValue, 16 + 12 * MAX_PORT_RULES);

/// Key of the learned-address map for IPv4: an address the trajectory's
/// own DNS answer returned for a name its policy allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Learned4Key {
    /// Policy instance id (native byte order: a hash key, not a prefix).
    pub policy: u32,
    /// Network byte order.
    pub addr: [u8; 4],
}
assert_size!(Learned4Key, 8);

/// Key of the learned-address map for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Learned6Key {
    pub policy: u32,
    pub addr: [u8; 16],
}
assert_size!(Learned6Key, 20);

/// Entries of each learned-address map (LRU: an evicted entry denies, like
/// an expired one).
pub const MAX_LEARNED: u32 = 1 << 14;

/// Value of the learned-address maps: the name's port rules, valid until
/// `expires_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedValue {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) after which the entry no longer
    /// judges: the answer's TTL plus the daemon's grace, clamped.
    pub expires_ns: u64,
    /// The daemon's id of the name the agent resolved (the `domain` of
    /// connect records); 0 is no name.
    pub name: u32,
    pub _pad: u32,
    /// The domain rules matching the name, in precedence order; `fallback`
    /// is the network default.
    pub net: NetValue,
}
assert_size!(LearnedValue, 16 + 16 + 12 * MAX_PORT_RULES);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::InodeKey {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::Learned4Key {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::Learned6Key {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::LearnedValue {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::PolicyVerdict {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::PolicyConfig {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::PathKey {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::FileValue {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::Net4Key {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::Net6Key {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::PortRule {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::NetValue {}
}
