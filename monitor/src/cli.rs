//! Command-line definitions (clap), nothing else.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::defaults::DEFAULT_CONTROL_SOCKET;

#[derive(Debug, Parser)]
#[command(name = "agent-monitor", version, about = "Kernel-level monitor and containment for AI coding agents")]
pub struct Cli {
    /// Log filter for operator logs on stderr (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "AGENT_MONITOR_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Commands,
}

// The daemon's flags make `Daemon` the large variant; the command line is
// parsed once per process, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Load the kernel programs and stream trajectory events.
    Daemon(DaemonArgs),
    /// Run a command inside a new trajectory (needs a running daemon).
    Run(RunArgs),
    /// Show the running daemon's hooks (mechanism per hook) and open trajectories.
    Status(StatusArgs),
    /// Mark the start of a new step (tool call) of a trajectory: every
    /// record the kernel takes afterwards carries it.
    Step(StepArgs),
    /// Print records from the running daemon: recent ones, then with
    /// `--follow` live ones as they come.
    Events(EventsArgs),
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
    /// Judge every recorded open, exec and connect with a candidate policy
    /// and report where it decides otherwise than the recording. Exit 0
    /// when nothing recorded as allowed would now be denied, 1 otherwise,
    /// 2 on bad input.
    Replay {
        /// The candidate: a policy file, or a directory, with `:NAME` when
        /// it defines more than one policy.
        #[arg(long, value_name = "FILE_OR_DIR[:NAME]")]
        policy: String,
        /// Event streams (JSON Lines), rotated files oldest first.
        #[arg(required = true, value_name = "EVENTS.jsonl")]
        files: Vec<PathBuf>,
        /// Only this trajectory (repeatable).
        #[arg(long, value_name = "ID")]
        trajectory: Vec<String>,
        /// One JSON object per difference, then a summary object.
        #[arg(long)]
        json: bool,
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
pub struct StepArgs {
    /// The trajectory [default: the caller's own, when it runs inside one].
    #[arg(long)]
    pub trajectory: Option<String>,
    /// What the step does, e.g. "run tests" (at most 256 bytes).
    #[arg(long)]
    pub name: String,
    /// Step id (from 1) [default: one more than the trajectory's highest].
    #[arg(long)]
    pub id: Option<u32>,
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep streaming new records until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Only this trajectory's records.
    #[arg(long)]
    pub trajectory: Option<String>,
    /// Only records of this kind (repeatable): exec, open, connect,
    /// trajectory_start, trajectory_end, gap, step, process.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

/// Daemon flags. Every setting but `--config` can also be set in the config
/// file; a flag given here wins over the file (`config.rs` merges them), so
/// the defaults are applied there, not by clap.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file (YAML; keys in docs/operations.md)
    /// [default: /etc/agent-monitor/config.yaml if it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Append JSON Lines events to FILE instead of stdout (`-` is stdout).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Rotate the events file once it reaches BYTES (off by default).
    #[arg(long, value_name = "BYTES")]
    pub events_max_size: Option<u64>,
    /// Rotated events files kept, FILE.1 .. FILE.N [default: 5]
    #[arg(long, value_name = "N")]
    pub events_keep: Option<u32>,
    /// Adopt existing cgroups matching GLOB (relative to the cgroup2 mount;
    /// `*` and `?` within one path component) as trajectories, judged by
    /// POLICY [default: the default policy]. Repeatable.
    #[arg(long, value_name = "GLOB[=POLICY]")]
    pub adopt: Vec<String>,
    /// Address of the Prometheus /metrics endpoint; anything but loopback
    /// exposes it to the network [default: 127.0.0.1:9617]
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Unix socket for `run` and other clients (root only)
    /// [default: /run/agent-monitor/control.sock]
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Group (name or gid) whose members may start trajectories for
    /// themselves over the control socket, under the policies
    /// --group-policies lists [default: none, root only]
    #[arg(long, value_name = "GROUP")]
    pub control_socket_group: Option<String>,
    /// Comma-separated policies the members of --control-socket-group may
    /// choose
    #[arg(long, value_name = "NAMES")]
    pub group_policies: Option<String>,
    /// Directory below the cgroup2 mount that holds trajectory cgroups
    /// [default: agent-monitor]
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<String>,
    /// Kernel ring buffer size in bytes, a power of two [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub ringbuf_size: Option<u32>,
    /// Directory of policy YAML files, reloaded on SIGHUP and on change
    /// [default: /etc/agent-monitor/policies if it exists; the embedded
    /// default policy is always available]
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Policy of trajectories opened without `--policy` [default: default]
    #[arg(long, value_name = "NAME")]
    pub default_policy: Option<String>,
    /// bpffs directory where programs' links and maps are pinned, so the
    /// kernel keeps enforcing when the daemon is gone; "none" disables it
    /// [default: /sys/fs/bpf/agent-monitor]
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory of the per-trajectory state a restarted daemon resumes
    /// from [default: /run/agent-monitor/state]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// On a clean exit (SIGTERM, SIGINT), remove the pins: enforcement
    /// ends with the daemon and open trajectories end with reason
    /// `daemon_shutdown`. Without it, the kernel keeps enforcing and the
    /// next daemon resumes the trajectories.
    #[arg(long)]
    pub stop_enforcement_on_exit: bool,
    /// DNS server that allowed questions of trajectories are forwarded to,
    /// ADDR[:PORT] [default: the first nameserver of /etc/resolv.conf]
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub dns_upstream: Option<String>,
    /// Loopback address the daemon's resolver listens on (UDP and TCP);
    /// port 0 picks a free one [default: 127.0.0.1:0]
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_listen: Option<String>,
    /// Answer to a name the policy denies: refused or nxdomain
    /// [default: refused]
    #[arg(long, value_name = "CODE")]
    pub dns_refusal: Option<String>,
    /// Added to a DNS answer's TTL for how long its addresses stay allowed
    /// [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub dns_ttl_grace: Option<String>,
    /// Shortest time a learned address stays allowed [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub dns_ttl_min: Option<String>,
    /// Longest time a learned address stays allowed [default: 1h]
    #[arg(long, value_name = "DURATION")]
    pub dns_ttl_max: Option<String>,
    /// Ranges (comma-separated CIDRs) an answer may point into only where
    /// the domain rule says `allow_private: true` [default: loopback,
    /// link-local, private and shared ranges; docs/policy.md]
    #[arg(long, value_name = "CIDRS")]
    pub dns_internal_ranges: Option<String>,
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
    /// Run the command as this account (names or numeric ids), with its
    /// groups, no capability and `no_new_privs`; `HOME`, `USER` and
    /// `LOGNAME` become the account's, as does the policy's ${HOME}.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// The command and its arguments, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}
