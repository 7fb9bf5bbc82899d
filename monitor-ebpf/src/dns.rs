//! DNS egress: a trajectory's DNS traffic goes to the daemon's resolver.
//!
//! `connect4` and `sendmsg4` rewrite a destination on port 53 (UDP or TCP)
//! to the resolver's loopback address and port, the way Cilium's socket
//! load balancer rewrites a service address, and give the socket a source
//! address in `127.N.0.0/16` whose low 16 bits name a [`DNS_SLOTS`] entry:
//! who asked (process, trajectory, policy instance, step) and where the
//! agent meant to send it. The resolver reads that slot to judge the
//! question by the right policy. `recvmsg4` and `getpeername4` show the
//! agent the server it asked for, not the resolver, so a resolver library
//! that checks the reply's source (glibc does) accepts it.
//!
//! A socket the agent bound itself before connecting (dig does) keeps its
//! address: its protocol and source port name the slot instead, in
//! [`DNS_BOUND`]. A DNS packet the hook cannot redirect (an IPv6
//! nameserver, a bound socket without a port) is refused under an
//! enforcing policy: no agent packet to port 53 leaves the host
//! un-redirected.

use aya_ebpf::{
    helpers::generated::{bpf_bind, bpf_get_smp_processor_id, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use monitor_common::{
    event::{decision, EventKind},
    maps::{DnsPeer, RuntimeConfig, DNS_SLOTS_PER_CPU, DNS_SLOT_COUNT as SLOTS},
    policy::RULE_DEFAULT,
};

use crate::{
    maps::{CONFIG, DNS_BOUND, DNS_NEXT, DNS_PEERS, DNS_SLOTS},
    policy::Verdict,
    record,
    trajectory::Membership,
};

pub const DNS_PORT: u16 = 53;
const AF_INET: u16 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// What the hook did with a packet to port 53.
pub enum Redirect {
    /// Not DNS, or no resolver runs: judge it like any destination.
    No,
    /// Sent to the resolver.
    Done,
    /// DNS that could not be redirected.
    Failed,
}

/// The resolver's address, when one runs.
#[inline(always)]
pub fn resolver() -> Option<RuntimeConfig> {
    let c = *CONFIG.get(0)?;
    if c.dns_port == 0 {
        return None;
    }
    Some(c)
}

/// Whether `addr:port` is the resolver itself: an agent reaches it only
/// through the redirect, whose source names the slot.
#[inline(always)]
pub fn is_resolver(cfg: &RuntimeConfig, addr: [u8; 4], port: u16) -> bool {
    addr == cfg.dns_addr && port == cfg.dns_port
}

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// Redirects an IPv4 DNS packet of `member` to the resolver. `connect`:
/// the `connect4` hook (the source is set with `bpf_bind`); otherwise
/// `sendmsg4` (the source is set per message).
#[inline(always)]
pub fn redirect4(ctx: &SockAddrContext, cfg: &RuntimeConfig, member: &Membership, connect: bool) -> Redirect {
    let sa = ctx.sock_addr;
    let (port, protocol) = unsafe { (u16::from_be((*sa).user_port as u16), (*sa).protocol) };
    if port != DNS_PORT || (protocol != IPPROTO_UDP && protocol != IPPROTO_TCP) {
        return Redirect::No;
    }
    let Some(slot) = take_slot() else {
        return Redirect::Failed;
    };
    let source = [127, cfg.dns_client_net, (slot >> 8) as u8, slot as u8];
    let orig = unsafe { (*sa).user_ip4 };
    let Some(entry) = DNS_SLOTS.get_ptr_mut(slot) else {
        return Redirect::Failed;
    };
    let verdict = Verdict { policy: member.policy, rule_id: RULE_DEFAULT, action: 0, decision: decision::ALLOW };
    unsafe {
        record::fill_header(&raw mut (*entry).header, EventKind::Connect, member, &verdict, 0);
        let o = orig.to_ne_bytes();
        (*entry).orig_addr = [o[0], o[1], o[2], o[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        (*entry).orig_port = port;
        (*entry).protocol = protocol as u8;
        (*entry).op = if connect { 1 } else { 2 };
        (*entry).generation = (*entry).generation.wrapping_add(1);
    }
    if connect {
        let mut bind = SockaddrIn { family: AF_INET, port: 0, addr: u32::from_ne_bytes(source), zero: [0; 8] };
        let rc = unsafe { bpf_bind(sa, (&raw mut bind).cast(), core::mem::size_of::<SockaddrIn>() as i32) };
        if rc != 0 {
            // Already bound (dig and other libraries bind to port 0 first):
            // its source port names the slot instead.
            let sk = unsafe { (*sa).__bindgen_anon_1.sk };
            if sk.is_null() {
                return Redirect::Failed;
            }
            let (src_ip, src_port) = unsafe { ((*sk).src_ip4, (*sk).src_port) };
            if src_port == 0 || src_port > 0xffff {
                return Redirect::Failed;
            }
            let key = monitor_common::maps::dns_bound_key(protocol as u8, src_ip.to_ne_bytes(), src_port as u16);
            if DNS_BOUND.insert(&key, &slot, 0).is_err() {
                return Redirect::Failed;
            }
        }
    } else {
        unsafe { (*sa).msg_src_ip4 = u32::from_ne_bytes(source) };
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let peer = DnsPeer { addr: orig.to_ne_bytes(), port: unsafe { (*sa).user_port } };
    let _ = DNS_PEERS.insert(&cookie, &peer, 0);
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(cfg.dns_addr);
        (*sa).user_port = u32::from(cfg.dns_port.to_be());
    }
    Redirect::Done
}

/// The next slot of this CPU's share.
#[inline(always)]
fn take_slot() -> Option<u32> {
    let next = DNS_NEXT.get_ptr_mut(0)?;
    // Per-CPU, and the socket hooks do not migrate: a plain increment.
    let n = unsafe {
        let n = *next;
        *next = n.wrapping_add(1);
        n
    };
    let cpu = unsafe { bpf_get_smp_processor_id() } % (SLOTS / DNS_SLOTS_PER_CPU);
    Some(cpu * DNS_SLOTS_PER_CPU + n % DNS_SLOTS_PER_CPU)
}

/// `recvmsg4` (UDP) and `getpeername4`: a reply from the resolver on a
/// redirected socket shows the server the agent asked.
#[inline(always)]
fn restore(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(cfg) = resolver() else {
        return 1;
    };
    let (addr, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    if !is_resolver(&cfg, addr.to_ne_bytes(), port) {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if let Some(peer) = unsafe { DNS_PEERS.get(&cookie) } {
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes(peer.addr);
            (*sa).user_port = peer.port;
        }
    }
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx)
}
