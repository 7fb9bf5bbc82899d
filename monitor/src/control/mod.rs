//! The control socket: a root-only unix socket speaking JSON Lines
//! ([`protocol`]). The server side opens trajectories ([`server`]) and a
//! watcher closes them when their cgroup empties ([`watcher`]).

pub mod client;
mod fdpass;
pub mod protocol;
pub mod server;
pub mod watcher;
