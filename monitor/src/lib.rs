//! agent-monitor: a kernel-level monitor for AI coding agents.
//!
//! Each agent session (a *trajectory*) runs in its own cgroup v2; eBPF
//! programs filtered to those cgroups judge its exec, open and connect
//! activity against the trajectory's policy, block what the policy denies,
//! and record everything; the daemon turns the records into a
//! per-trajectory JSON Lines stream. See `docs/architecture.md`.

pub mod adopt;
pub mod app;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod defaults;
pub mod enforce;
pub mod events;
pub mod hash;
pub mod hooks;
pub mod host;
pub mod identity;
pub mod loader;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod record;
pub mod reload;
pub mod run;
pub mod sinks;
pub mod status;
pub mod trajectory;
pub mod vocab;
