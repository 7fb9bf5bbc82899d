//! The internal address ranges a DNS answer may not point into unless the
//! rule that allowed the name says `allow_private: true`: the daemon's DNS
//! rebinding protection. A public name that resolves to loopback, a private
//! network or link-local (the cloud metadata service) would otherwise let an
//! agent reach inside through a name the policy allowed for the outside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::model::Cidr;

/// A set of networks; IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are
/// judged by their IPv4 address, as the kernel judges such destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalRanges {
    cidrs: Vec<Cidr>,
}

/// This host, RFC 1918 private networks, carrier-grade NAT, loopback,
/// link-local (cloud metadata services live there), and their IPv6
/// counterparts: unspecified, loopback, unique local, link-local.
const DEFAULT: [Cidr; 11] = [
    v4([0, 0, 0, 0], 8),
    v4([10, 0, 0, 0], 8),
    v4([100, 64, 0, 0], 10),
    v4([127, 0, 0, 0], 8),
    v4([169, 254, 0, 0], 16),
    v4([172, 16, 0, 0], 12),
    v4([192, 168, 0, 0], 16),
    v6(0, 128),
    v6(1, 128),
    v6(0xfc00 << 112, 7),
    v6(0xfe80 << 112, 10),
];

const fn v4(octets: [u8; 4], prefix: u8) -> Cidr {
    Cidr { addr: IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])), prefix }
}

const fn v6(bits: u128, prefix: u8) -> Cidr {
    Cidr { addr: IpAddr::V6(Ipv6Addr::from_bits(bits)), prefix }
}

impl Default for InternalRanges {
    /// 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16,
    /// 172.16.0.0/12, 192.168.0.0/16, ::/128, ::1/128, fc00::/7, fe80::/10.
    fn default() -> Self {
        InternalRanges { cidrs: DEFAULT.to_vec() }
    }
}

impl InternalRanges {
    /// Parses a configured list of CIDRs (`10.0.0.0/8`, or a bare address for
    /// one host). An empty list is valid and turns the protection off.
    /// IPv4-mapped IPv6 networks are refused with a hint to write the IPv4
    /// network, since mapped addresses are judged by their IPv4 form.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        let cidrs = list.iter().map(|s| Cidr::parse(s)).collect::<Result<Vec<_>, _>>()?;
        Ok(InternalRanges { cidrs })
    }

    /// Whether `addr` lies in one of the ranges.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            IpAddr::V4(_) => addr,
        };
        self.cidrs.iter().any(|c| c.contains(addr))
    }

    /// The ranges as CIDR strings, in configured order, for status output.
    pub fn describe(&self) -> Vec<String> {
        self.cidrs.iter().map(Cidr::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_covers_each_range_and_nothing_next_to_it() {
        let r = InternalRanges::default();
        // (first, last, just outside) for every default range.
        let cases = [
            ("0.0.0.0", "0.255.255.255", "1.0.0.0"),
            ("10.0.0.0", "10.255.255.255", "11.0.0.0"),
            ("100.64.0.0", "100.127.255.255", "100.128.0.0"),
            ("127.0.0.0", "127.255.255.255", "128.0.0.0"),
            ("169.254.0.0", "169.254.255.255", "169.255.0.0"),
            ("172.16.0.0", "172.31.255.255", "172.32.0.0"),
            ("192.168.0.0", "192.168.255.255", "192.169.0.0"),
            ("::", "::", "::2"),
            ("::1", "::1", "::2"),
            ("fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::"),
            ("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fec0::"),
        ];
        for (first, last, outside) in cases {
            assert!(r.contains(ip(first)), "{first}");
            assert!(r.contains(ip(last)), "{last}");
            assert!(!r.contains(ip(outside)), "{outside}");
        }
        for public in ["8.8.8.8", "9.255.255.255", "100.63.255.255", "172.15.255.255", "2606:4700::1111"] {
            assert!(!r.contains(ip(public)), "{public}");
        }
        assert_eq!(r.describe().len(), 11);
        assert_eq!(r.describe()[2], "100.64.0.0/10");
        assert_eq!(r.describe()[9], "fc00::/7");
    }

    #[test]
    fn mapped_ipv4_is_judged_as_ipv4() {
        let r = InternalRanges::default();
        assert!(r.contains(ip("::ffff:127.0.0.1")));
        assert!(r.contains(ip("::ffff:169.254.169.254")));
        assert!(r.contains(ip("::ffff:10.1.2.3")));
        assert!(!r.contains(ip("::ffff:8.8.8.8")));
    }

    #[test]
    fn configured_list_replaces_the_default() {
        let r =
            InternalRanges::parse(&["203.0.113.0/24".into(), "2001:db8::/32".into(), "198.51.100.7".into()]).unwrap();
        assert!(r.contains(ip("203.0.113.9")));
        assert!(r.contains(ip("::ffff:203.0.113.9")));
        assert!(r.contains(ip("2001:db8::1")));
        assert!(r.contains(ip("198.51.100.7")));
        assert!(!r.contains(ip("198.51.100.8")));
        assert!(!r.contains(ip("127.0.0.1")));
        assert_eq!(r.describe(), ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]);

        let none = InternalRanges::parse(&[]).unwrap();
        assert!(!none.contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_errors_that_name_them() {
        let err = |s: &str| InternalRanges::parse(&["10.0.0.0/8".into(), s.into()]).unwrap_err();
        assert!(err("10.0.0.1/8").contains("host bits"));
        assert!(err("intranet").contains("\"intranet\""));
        assert!(err("10.0.0.0/33").contains("0..=32"));
        assert!(err("::ffff:10.0.0.0/104").contains("write 10.0.0.0/8"));
    }
}
