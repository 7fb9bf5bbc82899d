//! agent-monitor: a kernel-level monitor for AI coding agents.
//!
//! Each agent session (a *trajectory*) runs in its own cgroup v2; eBPF
//! programs filtered to those cgroups judge its exec, open and connect
//! activity against the trajectory's policy, block what the policy denies,
//! and record everything; the daemon turns the records into a
//! per-trajectory JSON Lines stream. See `docs/architecture.md`.

// Public: what the binary (`app`), the integration tests, the older
// layout's build (`tests/previous_layout`) and the fuzz targets (`fuzz/`:
// the record decoder, the policy language and its reference judges) name.
// Everything else is the daemon's inside, free to change.
mod account;
mod adopt;
pub mod app;
mod btf;
pub mod cgroup;
mod cli;
mod clock;
pub mod config;
mod control;
mod daemon;
pub mod defaults;
pub mod dns;
mod domains;
mod enforce;
mod errors;
pub mod events;
mod hash;
mod hooks;
mod host;
mod identity;
mod inodes;
mod landlock;
mod limits;
mod loader;
mod metrics;
mod mounts;
pub mod pins;
pub mod policy;
mod record;
mod reload;
mod replay;
mod run;
mod sinks;
mod status;
mod trajectory;
mod vocab;
