//! Command-line definitions (clap), nothing else.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{DEFAULT_CGROUP_PARENT, DEFAULT_CONTROL_SOCKET, DEFAULT_METRICS_ADDR};

#[derive(Debug, Parser)]
#[command(name = "agent-monitor", version, about = "Kernel-level monitor and containment for AI coding agents")]
pub struct Cli {
    /// Log filter for operator logs on stderr (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "AGENT_MONITOR_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Load the kernel programs and stream trajectory events.
    Daemon(DaemonArgs),
    /// Run a command inside a new trajectory (needs a running daemon).
    Run(RunArgs),
    /// Show the running daemon's hooks (mechanism per hook) and open trajectories.
    Status(StatusArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files (or directories of them) without loading
    /// anything; exit 0 only when every file is valid.
    Check {
        /// Files or directories (every `*.yaml`/`*.yml` inside).
        #[arg(required = true, value_name = "FILE")]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Append JSON Lines events to FILE instead of stdout (`-` is stdout).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Unix socket for `run` and other clients (root only).
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Directory below the cgroup2 mount that holds trajectory cgroups.
    #[arg(long, default_value = DEFAULT_CGROUP_PARENT)]
    pub cgroup_parent: String,
    /// Kernel ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = crate::config::DEFAULT_RINGBUF_BYTES)]
    pub ringbuf_size: u32,
    /// Directory of policy YAML files, reloaded on SIGHUP and on change
    /// [default: /etc/agent-monitor/policies if it exists; the embedded
    /// default policy is always available]
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Policy of trajectories opened without `--policy`.
    #[arg(long, default_value = crate::config::DEFAULT_POLICY)]
    pub default_policy: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Trajectory id (generated when absent).
    #[arg(long)]
    pub trajectory: Option<String>,
    /// Policy judging the trajectory (the daemon's default policy when absent).
    #[arg(long)]
    pub policy: Option<String>,
    /// ${WORKSPACE} of the policy [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// The command and its arguments, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}
