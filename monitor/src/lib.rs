//! agent-monitor: a kernel-level monitor for AI coding agents.
//!
//! Each agent session (a *trajectory*) runs in its own cgroup v2; eBPF
//! programs filtered to those cgroups record its exec, open and connect
//! activity, and the daemon turns the records into a per-trajectory JSON
//! Lines stream. See `docs/architecture.md` for the data path.

pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod hooks;
pub mod host;
pub mod loader;
pub mod metrics;
pub mod policy;
pub mod run;
pub mod sinks;
pub mod status;
pub mod trajectory;
