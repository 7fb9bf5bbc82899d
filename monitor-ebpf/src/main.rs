//! agent-monitor's kernel programs.
//!
//! One file per hook family; every map and load-time global lives in
//! [`maps`], and small kernel helpers shared by the families in [`kernel`]. Each program is total: it never panics, and every failure path
//! ends in a defined verdict (observation hooks return 0, socket hooks allow
//! until the policy layer says otherwise). A record the ring buffer has no
//! room for is counted, globally and per trajectory, never lost silently.
#![no_std]
#![no_main]

mod connect;
mod dns;
mod exec;
mod file;
mod kernel;
mod limit;
mod lsm;
mod mapping;
mod maps;
mod mutate;
mod open;
mod pathres;
mod policy;
mod record;
mod socket;
mod tamper;
mod trajectory;

/// GPL-compatible: required for the GPL-only helpers (`bpf_probe_read_*`,
/// `bpf_send_signal`) and for BPF LSM programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable call to this: a program that loads
    // cannot panic.
    loop {}
}
