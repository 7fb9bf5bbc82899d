//! connect: cgroup `connect4`/`connect6` and, for datagrams sent without a
//! prior connect, `sendmsg4`/`sendmsg6`. Attached to the daemon's trajectory
//! parent cgroup, so they run only for tasks below it. A denied call fails
//! with `EPERM` before any packet leaves; the hooks also run for io_uring's
//! connect and sendmsg, which go through the same socket layer.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use monitor_common::event::{mechanism, redirect, ConnectEvent, ConnectOp, EventKind};

use crate::{
    dns::{self, Redirect},
    policy::{self, Verdict},
    record, trajectory,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// cgroup sock_addr verdicts: 0 rejects the call with `EPERM`.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, ConnectOp::Connect, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, ConnectOp::Connect, AF_INET6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, ConnectOp::Sendmsg, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, ConnectOp::Sendmsg, AF_INET6)
}

#[inline(always)]
fn on_addr(ctx: &SockAddrContext, op: ConnectOp, family: u32) -> i32 {
    let Some(member) = trajectory::current() else {
        return ALLOW;
    };
    let sa = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let protocol = sa.protocol as u8;
    // The verifier allows user_ip4 only in the v4 hooks and user_ip6 only in
    // the v6 ones; `family` is a constant per hook, so each program keeps
    // just one branch.
    let mut addr = [0u8; 16];
    let mut redirect = redirect::NONE;
    let judged = if family == AF_INET {
        let a = sa.user_ip4.to_ne_bytes();
        addr[..4].copy_from_slice(&a);
        match dns::resolver() {
            Some(cfg) if policy::bound(member.policy) => {
                match dns::redirect4(ctx, &cfg, &member, op == ConnectOp::Connect) {
                    Redirect::Done => redirect = redirect::DNS,
                    Redirect::Failed => redirect = redirect::DNS_REFUSED,
                    // The resolver only answers redirected packets.
                    Redirect::No if dns::is_resolver(&cfg, a, port) => redirect = redirect::DNS_REFUSED,
                    Redirect::No => {}
                }
            }
            _ => {}
        }
        policy::net4(member.policy, a, port, protocol)
    } else {
        let w = sa.user_ip6;
        addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
        addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
        // DNS to an IPv6 (or IPv4-mapped) nameserver is not redirected:
        // refused, so that it cannot leave around the resolver.
        if port == dns::DNS_PORT && dns::resolver().is_some() && policy::bound(member.policy) {
            redirect = redirect::DNS_REFUSED;
        }
        policy::net6(member.policy, addr, port, protocol)
    };
    let verdict = match redirect {
        redirect::DNS => Verdict::redirected(member.policy),
        redirect::DNS_REFUSED => Verdict::unredirectable(member.policy),
        _ => judged.verdict,
    };
    // The decision stands whether or not the record fits in the ring buffer.
    let result = if verdict.blocks() { REJECT } else { ALLOW };
    let Some(mut entry) = record::reserve::<ConnectEvent>(&member) else {
        return result;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        record::fill_header(&raw mut (*ev).header, EventKind::Connect, &member, &verdict, mechanism::CGROUP);
        (*ev).op = op as u32;
        (*ev).family = family;
        (*ev).protocol = sa.protocol;
        (*ev).sock_type = sa.type_;
        (*ev).port = port;
        (*ev).redirect = redirect;
        (*ev)._pad = 0;
        (*ev).domain = if redirect == redirect::NONE { judged.domain } else { 0 };
        (*ev).addr = addr;
    }
    record::submit(entry);
    result
}
