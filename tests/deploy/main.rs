//! Tests of `deploy/` with the host tools that consume its files: `promtool`
//! and a real Prometheus scraping a real daemon (Debian's `prometheus`),
//! `systemd-analyze` and `strace` for the systemd unit. Run as root, like
//! the integration tests (`cargo xtask test`).
//!
//! A test target of its own, apart from `tests/integration`: these check
//! files and tools of the host, not kernels, so the VM matrix, which runs
//! the `integration` executable in guests without these tools, does not
//! run them. What depends on the kernel (the daemon under the unit's
//! capabilities) is in `tests/integration/service.rs` and runs everywhere.

#[allow(dead_code)]
#[path = "../integration/confined.rs"]
mod confined;
mod files;
#[allow(dead_code)]
#[path = "../integration/harness.rs"]
mod harness;
mod prometheus;
