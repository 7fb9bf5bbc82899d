//! Privileged integration tests: the real daemon against the real kernel.
//!
//! Each test starts its own `agent-monitor daemon` (own control socket, cgroup
//! parent, events file and metrics port), runs real processes through
//! `agent-monitor run`, and asserts on what the processes saw and what the
//! daemon recorded. They must run as root (`cargo xtask test`); as any other
//! user they fail with a message saying so, never skip.

mod bypass;
mod confined;
mod continuity;
mod dns;
mod enforce;
mod escape;
mod harness;
mod limits;
mod mutate;
mod observe;
mod operator_errors;
mod policy_cli;
mod replay;
mod schema;
mod service;
mod session;
mod tamper;
mod telemetry;
