//! Sockets the network rules cannot judge: raw and packet sockets, ICMP,
//! SCTP, vsock and the rest of `docs/security.md`'s table put bytes on a
//! wire (or reach a peer) without passing the cgroup connect and sendmsg
//! hooks. Their creation is judged by `defaults.raw_sockets`
//! ([`monitor_common::tamper::judged_socket`] says which need it) and
//! recorded as a `tamper` record with the op `socket`.
//!
//! IPv4 and IPv6 sockets are judged by the cgroup `sock_create` hook on
//! every kernel (`EPERM`); the other families by BPF LSM `socket_create`
//! where it runs (`EPERM`), else by a kill at `socket(2)` entry (the
//! arguments are registers: nothing for another thread to rewrite).

use aya_ebpf::{
    helpers::generated::bpf_send_signal,
    macros::{cgroup_sock, lsm, tracepoint},
    programs::{LsmContext, SockContext, TracePointContext},
};
use monitor_common::{
    event::mechanism,
    policy::action,
    tamper::{judged_socket, sock, socket_arg, TamperOp},
};

use crate::{
    kernel::{lsm_ret, tp_arg, EPERM, SIGKILL},
    policy::{self, Verdict},
    tamper,
    trajectory::{self, Membership},
};

/// The verdict on a socket of `family`, `ty`, `protocol` created by
/// `member`; recorded unless the policy allows such sockets outright.
#[inline(always)]
fn judge(member: &Membership, family: u64, ty: u64, protocol: u64, how: u8) -> Verdict {
    let verdict = policy::raw_socket(member.policy);
    if verdict.action != action::ALLOW {
        tamper::record_verdict(member, &verdict, TamperOp::Socket, 0, socket_arg(family, ty, protocol), how);
    }
    verdict
}

/// `cgroup/sock_create`: every IPv4 and IPv6 socket a task in the
/// daemon's trajectory parent cgroup creates (kernel sockets excepted).
/// 1 lets it be created, 0 fails `socket(2)` with `EPERM`.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context's fields are readable in this program type.
    let (family, ty, protocol) =
        unsafe { (u64::from((*ctx.sock).family), u64::from((*ctx.sock).type_), u64::from((*ctx.sock).protocol)) };
    if judged_socket(family, ty, protocol) {
        return 1;
    }
    let Some(member) = trajectory::current() else {
        return 1;
    };
    if judge(&member, family, ty, protocol, mechanism::CGROUP).blocks() {
        0
    } else {
        1
    }
}

/// Whether the cgroup hook judges sockets of `family` (so the other two
/// leave them alone and nothing is recorded twice).
#[inline(always)]
fn inet(family: u64) -> bool {
    family == sock::AF_INET || family == sock::AF_INET6
}

/// `security_socket_create(family, type, protocol, kern)`.
#[lsm(hook = "socket_create")]
pub fn lsm_socket_create(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let (family, ty, protocol, kern): (u64, u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    let (family, ty, protocol) = (family & 0xffff_ffff, ty & 0xffff_ffff, protocol & 0xffff_ffff);
    if kern & 0xffff_ffff != 0 || inet(family) || judged_socket(family, ty, protocol) {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    lsm_ret(if judge(&member, family, ty, protocol, mechanism::LSM).blocks() { -EPERM } else { 0 })
}

/// `SOCK_PACKET`: an `AF_INET` socket of this obsolete type is created as
/// an `AF_PACKET` one, which the cgroup hook never sees.
const SOCK_PACKET: u64 = 10;

/// `socket(family, type, protocol)` entry, where BPF LSM does not run.
#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let arg = |n| tp_arg(&ctx, n) & 0xffff_ffff;
    let (family, ty, protocol) = (arg(0), arg(1), arg(2));
    let by_cgroup_hook = inet(family) && ty & sock::SOCK_TYPE_MASK != SOCK_PACKET;
    if by_cgroup_hook || judged_socket(family, ty, protocol) {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    if judge(&member, family, ty, protocol, mechanism::KILL).blocks() {
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}
