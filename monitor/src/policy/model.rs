//! The validated policy: typed values with every check already passed, and
//! the parsers for the scalar types a policy file writes as strings (actions,
//! CIDRs, port ranges). Paths stay templates until a trajectory opens
//! (`template`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use monitor_common::policy::{action, mode, protocol};

use super::{diagnostic::Pos, template::PathPattern};

/// What a matching rule does. Ordered by strength: on a tie the stronger wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    /// Allow, and record the event as a policy hit.
    Audit,
    Deny,
}

impl Action {
    pub fn parse(s: &str) -> Result<Action, String> {
        match s {
            "allow" => Ok(Action::Allow),
            "audit" => Ok(Action::Audit),
            "deny" => Ok(Action::Deny),
            _ => Err(format!("unknown action {s:?}: expected allow, deny or audit")),
        }
    }

    /// The ABI encoding, [`monitor_common::policy::action`].
    pub const fn to_abi(self) -> u8 {
        match self {
            Action::Allow => action::ALLOW,
            Action::Audit => action::AUDIT,
            Action::Deny => action::DENY,
        }
    }

    pub const fn from_abi(v: u8) -> Option<Action> {
        match v {
            action::ALLOW => Some(Action::Allow),
            action::AUDIT => Some(Action::Audit),
            action::DENY => Some(Action::Deny),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Audit => "audit",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether deny verdicts block (`enforce`) or are only recorded (`audit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "audit" => Ok(Mode::Audit),
            _ => Err(format!("unknown mode {s:?}: expected enforce or audit")),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }

    pub const fn to_abi(self) -> u8 {
        match self {
            Mode::Enforce => mode::ENFORCE,
            Mode::Audit => mode::AUDIT,
        }
    }
}

/// One kind of file access. An open for both (`O_RDWR`) is judged once per
/// access and takes the stronger verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
}

/// The accesses a file rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccessSet {
    pub read: bool,
    pub write: bool,
}

impl AccessSet {
    pub const READ_WRITE: AccessSet = AccessSet { read: true, write: true };

    pub fn parse(s: &str) -> Result<AccessSet, String> {
        match s {
            "read" => Ok(AccessSet { read: true, write: false }),
            "write" => Ok(AccessSet { read: false, write: true }),
            "read-write" => Ok(AccessSet::READ_WRITE),
            _ => Err(format!("unknown access {s:?}: expected read, write or read-write")),
        }
    }

    pub const fn covers(self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }
}

/// A transport protocol a network rule may be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("unknown protocol {s:?}: expected tcp or udp")),
        }
    }

    /// IP protocol number, as the kernel sees it and [`PortRule`] stores it.
    ///
    /// [`PortRule`]: monitor_common::policy::PortRule
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => protocol::TCP,
            Protocol::Udp => protocol::UDP,
        }
    }
}

/// An inclusive range of destination ports. Rules name ports 1..=65535; a
/// rule without `ports` matches every port, 0 included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { lo: 0, hi: u16::MAX };

    pub fn parse(s: &str) -> Result<PortRange, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) => Err(format!("invalid port {s:?}: port 0 is not a destination; ports are 1..=65535")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("invalid port {s:?}: expected a port 1..=65535 or a range like 8000-8999")),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("invalid port range {s:?}: the first port must not be above the last"));
        }
        Ok(PortRange { lo, hi })
    }

    pub const fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    /// Ports in the range minus one: smaller is more specific.
    pub const fn span(self) -> u16 {
        self.hi - self.lo
    }
}

/// An IPv4 or IPv6 network, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/len` or a bare address (a single host). IPv6 networks
    /// inside `::ffff:0:0/96` are refused: the kernel judges IPv4-mapped
    /// destinations by the IPv4 rules, so such a rule could never match.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = |why: String| format!("invalid CIDR {s:?}: {why}");
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("expected an IPv4 or IPv6 address before the `/`".into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(bad(format!("prefix length must be 0..={max}"))),
            },
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(bad(format!("host bits are set; the network is {}/{prefix}", cidr.network())));
        }
        if let IpAddr::V6(v6) = addr {
            if prefix >= 96 && v6.to_ipv4_mapped().is_some() {
                let v4 = Cidr {
                    addr: IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                    prefix: prefix - 96,
                };
                return Err(bad(format!("IPv4-mapped addresses are judged by IPv4 rules; write {v4}")));
            }
        }
        Ok(cidr)
    }

    /// The address with the host bits cleared.
    pub fn network(self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    /// Whether `ip` is inside; an address of the other family never is.
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Stable id of one rule across a loaded [`PolicySet`](super::PolicySet):
/// policies in name order, then each policy's file, exec and network rules
/// in file order, numbered from 1 (0 is [`RULE_DEFAULT`](monitor_common::policy::RULE_DEFAULT)).
pub type RuleId = u32;

pub use crate::vocab::RuleClass;

/// Where a rule was written, for events (`rule: "policies/default.yaml:14"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    pub policy: String,
    pub file: PathBuf,
    /// Line of the rule's first field.
    pub line: u32,
    pub class: RuleClass,
    /// Index in the policy's `rules.<class>` list.
    pub index: usize,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub file: Action,
    pub exec: Action,
    pub network: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRule {
    pub id: RuleId,
    /// Where the rule starts in its file.
    pub pos: Pos,
    pub path: PathPattern,
    pub access: AccessSet,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRule {
    pub id: RuleId,
    /// Where the rule starts in its file.
    pub pos: Pos,
    pub path: PathPattern,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRule {
    pub id: RuleId,
    /// Where the rule starts in its file.
    pub pos: Pos,
    pub cidr: Cidr,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    /// `None`: every protocol.
    pub protocol: Option<Protocol>,
    pub action: Action,
}

/// One validated policy. Paths may still hold variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub file: PathBuf,
    pub mode: Mode,
    pub defaults: Defaults,
    pub file_rules: Vec<FileRule>,
    pub exec_rules: Vec<ExecRule>,
    pub network_rules: Vec<NetworkRule>,
}

impl Policy {
    /// Rules per class: file, exec, network.
    pub fn rule_counts(&self) -> [usize; 3] {
        [self.file_rules.len(), self.exec_rules.len(), self.network_rules.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_is_strict_and_explains() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("::1").unwrap().prefix, 128);
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix, 0);
        assert_eq!(
            Cidr::parse("10.0.0.0/33").unwrap_err(),
            "invalid CIDR \"10.0.0.0/33\": prefix length must be 0..=32"
        );
        assert!(Cidr::parse("::/129").unwrap_err().contains("0..=128"));
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("the network is 10.0.0.0/8"));
        assert!(Cidr::parse("10.0.0/8").unwrap_err().contains("expected an IPv4 or IPv6 address"));
        assert!(Cidr::parse("::ffff:10.0.0.0/104").unwrap_err().contains("write 10.0.0.0/8"));
        // Covering the mapped range from outside is allowed (documented: it
        // never matches mapped destinations).
        assert!(Cidr::parse("::/0").is_ok());
    }

    #[test]
    fn cidr_contains_respects_family_and_prefix() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(Cidr::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(PortRange::parse("443").unwrap(), PortRange { lo: 443, hi: 443 });
        assert_eq!(PortRange::parse("8000-8999").unwrap(), PortRange { lo: 8000, hi: 8999 });
        assert!(PortRange::parse("0").unwrap_err().contains("port 0"));
        assert!(PortRange::parse("9000-8000").unwrap_err().contains("must not be above"));
        assert!(PortRange::parse("70000").unwrap_err().contains("1..=65535"));
        assert!(PortRange::parse("http").is_err());
    }
}
