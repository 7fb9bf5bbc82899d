//! DNS egress: the resolver a trajectory's DNS traffic is redirected to
//! (`monitor-ebpf/src/dns.rs` redirects it), the DNS messages it reads and
//! writes, and the addresses it learns for the kernel's connect hooks.
//! `docs/architecture.md` ("Domain egress") explains the design.

pub mod learn;
pub mod message;
pub mod ranges;
pub mod resolver;

/// The first `nameserver` of `/etc/resolv.conf`, port 53: the upstream
/// when none is configured.
pub fn system_upstream() -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().split('%').next()?.parse::<std::net::IpAddr>().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
}
