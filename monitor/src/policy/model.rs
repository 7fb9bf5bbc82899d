//! The validated policy: typed values with every check already passed, the
//! parsers for the scalar types a policy file writes as strings (actions,
//! CIDRs, domain names, port ranges), and the port-rule precedence that CIDR
//! entries and domain names share. Paths stay templates until a trajectory
//! opens (`template`).

use std::{
    cmp::Reverse,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use monitor_common::policy::{action, mode, protocol, PortRule};

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

/// Longest domain name, in bytes of its ASCII form without the trailing dot.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest label of a domain name, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// What a domain rule names: one name, or every name strictly below a zone.
/// Names are ASCII (IDNA punycode), lowercase, without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// `example.com`: that name only.
    Exact(String),
    /// `*.example.org`: every name ending in `.example.org`, at any depth;
    /// not `example.org` itself.
    Below(String),
}

impl DomainPattern {
    /// Parses `example.com` or `*.example.org`: one trailing dot is dropped,
    /// the name is mapped to lowercase ASCII by IDNA (UTS #46), and every
    /// label must be 1..=63 bytes of letters, digits, `-` and `_`, not
    /// starting or ending with `-`; the whole name at most 253 bytes. Only a
    /// leading `*.` is a wildcard. An exact name needs at least two labels
    /// (a rule for `localhost` would only ever see what the resolver's
    /// search list appends to it); a wildcard may stand over one label
    /// (`*.internal`).
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        let bad = |why: String| format!("invalid domain {s:?}: {why}");
        let name = s.strip_suffix('.').unwrap_or(s);
        let (below, name) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        if name.contains('*') {
            return Err(bad("only a whole leading label may be a wildcard, as in \"*.example.org\"".into()));
        }
        if name.is_empty() {
            return Err(bad("expected a name such as example.com".into()));
        }
        if name.parse::<IpAddr>().is_ok() {
            return Err(bad(format!("this is an address, not a name: write `cidr: {name}`")));
        }
        let ascii = to_ascii(name).map_err(bad)?;
        for label in ascii.split('.') {
            check_label(label).map_err(bad)?;
        }
        let len = ascii.len() + if below { 2 } else { 0 };
        if len > MAX_DOMAIN_LEN {
            return Err(bad(format!("the name is {len} bytes in ASCII; a name holds at most {MAX_DOMAIN_LEN}")));
        }
        if below {
            Ok(DomainPattern::Below(ascii))
        } else if !ascii.contains('.') {
            Err(bad(format!(
                "{ascii:?} is a single label: a domain rule names a fully qualified name such as example.com"
            )))
        } else {
            Ok(DomainPattern::Exact(ascii))
        }
    }

    /// Whether `name` (normalised: lowercase ASCII, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            DomainPattern::Exact(n) => name == n,
            DomainPattern::Below(zone) => {
                name.len() > zone.len() + 1
                    && name.ends_with(zone.as_str())
                    && name.as_bytes()[name.len() - zone.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(name) => f.write_str(name),
            DomainPattern::Below(zone) => write!(f, "*.{zone}"),
        }
    }
}

/// IDNA ToASCII (UTS #46, nontransitional), which also lowercases. ASCII
/// that is not a valid host name character passes through, so the label
/// check can say which label holds it.
fn to_ascii(name: &str) -> Result<String, String> {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
    let convert = |s: &str| {
        Uts46::new()
            .to_ascii(s.as_bytes(), AsciiDenyList::EMPTY, Hyphens::Allow, DnsLength::Ignore)
            .map(|c| c.into_owned())
    };
    convert(name).map_err(|_| {
        // Bidi rules span labels, so the name can fail with every label
        // passing alone; then the message names the whole name.
        match name.split('.').find(|label| convert(label).is_err()) {
            Some(label) => format!("label {label:?} is not a valid internationalised label (IDNA, UTS #46)"),
            None => "not a valid internationalised name (IDNA, UTS #46)".into(),
        }
    })
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label: two dots in a row, or a leading dot".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!("label {label:?} is {} bytes; a label holds at most {MAX_LABEL_LEN}", label.len()));
    }
    if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("label {label:?} has a character other than letters, digits, '-' or '_'"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

/// Stable id of one rule across a loaded [`PolicySet`](super::PolicySet):
/// policies in name order, then each policy's file, exec and network rules
/// (CIDR and domain rules alike) in file order, numbered from 1 (0 is
/// [`RULE_DEFAULT`](monitor_common::policy::RULE_DEFAULT)).
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
    /// Executing (`execve`) a file no directory names: a
    /// memfd, an `O_TMPFILE` file, a deleted file. No path rule can name
    /// one, so this action decides it alone.
    pub exec_unnamed: Action,
    /// Creating a socket the network rules cannot judge: raw and packet
    /// sockets, ICMP, SCTP and the families `docs/security.md` lists.
    pub raw_sockets: Action,
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

/// A `rules.network` entry with `domain:`: judged by the daemon's DNS
/// resolver for each name the trajectory asks for (`super::domain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRule {
    pub id: RuleId,
    /// Where the rule starts in its file.
    pub pos: Pos,
    pub pattern: DomainPattern,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    /// `None`: every protocol.
    pub protocol: Option<Protocol>,
    pub action: Action,
    /// Keep answers that point into loopback, link-local or private ranges.
    pub allow_private: bool,
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
    /// The `cidr:` entries of `rules.network`.
    pub network_rules: Vec<NetworkRule>,
    /// The `domain:` entries of `rules.network`; they share its numbering
    /// with [`Policy::network_rules`] (ordered together by position).
    pub domain_rules: Vec<DomainRule>,
    /// `session:`: the account the agent runs as.
    pub session: super::session::Session,
    /// `limits:`: memory, tasks and CPU of the trajectory's cgroup.
    pub limits: super::session::Limits,
}

impl Policy {
    /// Rules per class: file, exec, network (CIDR and domain rules).
    pub fn rule_counts(&self) -> [usize; 3] {
        [self.file_rules.len(), self.exec_rules.len(), self.network_rules.len() + self.domain_rules.len()]
    }
}

/// One (port range, protocol) of a network rule, CIDR or domain: the unit
/// the kernel scans in a network entry and the resolver lists for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortItem {
    pub range: PortRange,
    pub protocol: Option<Protocol>,
    pub action: Action,
    pub id: RuleId,
    /// Index of the rule in the list it was compiled from, for errors.
    pub rule_index: usize,
}

impl PortItem {
    /// One item per port range of a rule (a rule without ports is one item
    /// over every port).
    pub fn of_rule(
        ports: &[PortRange],
        protocol: Option<Protocol>,
        action: Action,
        id: RuleId,
        rule_index: usize,
    ) -> impl Iterator<Item = PortItem> + '_ {
        let all: &[PortRange] = if ports.is_empty() { &[PortRange::ALL] } else { ports };
        all.iter().map(move |&range| PortItem { range, protocol, action, id, rule_index })
    }

    /// Matches every port and protocol.
    pub fn is_catch_all(&self) -> bool {
        self.range == PortRange::ALL && self.protocol.is_none()
    }

    /// Larger is more specific: narrower range, then a named protocol, then
    /// deny > audit > allow, then the lower rule id.
    pub fn rank(&self) -> (Reverse<u16>, bool, Action, Reverse<RuleId>) {
        (Reverse(self.range.span()), self.protocol.is_some(), self.action, Reverse(self.id))
    }

    /// Every query `other` matches, `self` matches too.
    pub fn shadows(&self, other: &PortItem) -> bool {
        self.range.lo <= other.range.lo
            && other.range.hi <= self.range.hi
            && (self.protocol.is_none() || self.protocol == other.protocol)
    }

    pub fn to_abi(self) -> PortRule {
        PortRule {
            port_lo: self.range.lo,
            port_hi: self.range.hi,
            protocol: self.protocol.map_or(protocol::ANY, Protocol::number),
            action: self.action.to_abi(),
            _pad: 0,
            rule_id: self.id,
        }
    }
}

/// Sorts one group's items (one CIDR's, one pattern's) most specific first.
pub(crate) fn sort_most_specific_first(items: &mut [PortItem]) {
    items.sort_by_key(|i| Reverse(i.rank()));
}

/// The first-match list of groups given most specific first (each sorted
/// by [`sort_most_specific_first`]): items in that order, minus those an
/// earlier item shadows, up to the first catch-all, which ends the list and
/// is returned apart. Whatever the query, the first item that matches it in
/// the list, else the catch-all, is the deciding one.
pub(crate) fn first_match_list<'a>(
    groups: impl IntoIterator<Item = &'a [PortItem]>,
) -> (Vec<PortItem>, Option<PortItem>) {
    let mut kept: Vec<PortItem> = Vec::new();
    for items in groups {
        for item in items {
            if item.is_catch_all() {
                return (kept, Some(*item));
            }
            if kept.iter().any(|k| k.shadows(item)) {
                continue;
            }
            kept.push(*item);
        }
    }
    (kept, None)
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
    fn domain_patterns_are_normalised() {
        let parse = |s: &str| DomainPattern::parse(s).map(|p| (p.to_string(), matches!(p, DomainPattern::Below(_))));
        assert_eq!(parse("example.com"), Ok(("example.com".into(), false)));
        assert_eq!(parse("WWW.Example.COM."), Ok(("www.example.com".into(), false)), "case and one trailing dot");
        assert_eq!(parse("*.Example.ORG."), Ok(("*.example.org".into(), true)));
        assert_eq!(parse("Bücher.example"), Ok(("xn--bcher-kva.example".into(), false)), "IDNA to punycode");
        assert_eq!(parse("*.BÜCHER.example"), Ok(("*.xn--bcher-kva.example".into(), true)));
        assert_eq!(parse("xn--bcher-kva.example"), Ok(("xn--bcher-kva.example".into(), false)));
        assert_eq!(parse("_sip._tcp.example.com"), Ok(("_sip._tcp.example.com".into(), false)), "SRV-style labels");
        assert_eq!(parse("a-b.example.com"), Ok(("a-b.example.com".into(), false)));
        assert_eq!(parse("*.internal"), Ok(("*.internal".into(), true)), "a wildcard may stand over one label");
        let longest = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(parse(&longest).is_ok());
        assert_eq!(DomainPattern::parse("Example.com").unwrap(), DomainPattern::Exact("example.com".into()));
    }

    #[test]
    fn domain_pattern_errors_say_what_is_wrong() {
        let err = |s: &str| DomainPattern::parse(s).unwrap_err();
        assert_eq!(
            err("exa mple.com"),
            "invalid domain \"exa mple.com\": label \"exa mple\" has a character other than letters, digits, '-' or '_'"
        );
        for wild in ["a.*.example.com", "*foo.example.com", "*", "*.", "*.*.example.com", "example.*"] {
            assert!(err(wild).contains("only a whole leading label may be a wildcard"), "{wild}: {}", err(wild));
        }
        assert!(err("localhost").contains("single label: a domain rule names a fully qualified name"));
        assert!(err("localhost.").contains("single label"));
        assert!(err("").contains("expected a name such as example.com"));
        assert!(err(".").contains("expected a name"));
        assert!(err("a..example.com").contains("empty label"));
        assert!(err(".example.com").contains("empty label"));
        assert!(err("example.com..").contains("empty label"), "only one trailing dot is dropped");
        assert!(err("-a.example.com").contains("label \"-a\" starts or ends with '-'"));
        assert!(err("a-.example.com").contains("starts or ends with '-'"));
        assert!(err("a/b.example.com").contains("label \"a/b\" has a character other than"));
        assert!(err(&format!("{}.com", "a".repeat(64))).contains("is 64 bytes; a label holds at most 63"));
        let long = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62));
        assert!(err(&long).contains("the name is 254 bytes in ASCII; a name holds at most 253"));
        let long_zone = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(60));
        assert_eq!(long_zone.len(), 252);
        assert!(err(&format!("*.{long_zone}")).contains("254 bytes"), "the wildcard label counts");
        assert!(err("10.0.0.1").contains("an address, not a name: write `cidr: 10.0.0.1`"));
        assert!(err("xn--a.example").contains("label \"xn--a\" is not a valid internationalised label"));
    }

    #[test]
    fn domain_patterns_match_whole_labels() {
        let exact = DomainPattern::parse("example.com").unwrap();
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("www.example.com") && !exact.matches("example.co"));
        let below = DomainPattern::parse("*.example.org").unwrap();
        assert!(below.matches("a.example.org") && below.matches("a.b.example.org"));
        assert!(!below.matches("example.org"), "not the zone itself");
        assert!(!below.matches("aexample.org") && !below.matches(".example.org"));
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
