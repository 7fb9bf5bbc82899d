//! Daemon configuration: command-line flags become a validated
//! [`DaemonConfig`] here, and every filesystem location the daemon uses is
//! decided in this one place.

use std::{
    net::SocketAddr,
    path::{Component, Path, PathBuf},
};

use crate::{cli::DaemonArgs, sinks::jsonl::Output};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/agent-monitor/control.sock";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9617";
pub const DEFAULT_CGROUP_PARENT: &str = "agent-monitor";
pub const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;
pub const DEFAULT_POLICY_DIR: &str = "/etc/agent-monitor/policies";
pub const DEFAULT_POLICY: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub events: Output,
    pub metrics_addr: SocketAddr,
    pub control_socket: PathBuf,
    /// Directory, relative to the cgroup2 mount, holding trajectory cgroups.
    pub cgroup_parent: PathBuf,
    pub ringbuf_bytes: u32,
    /// Policy directory; `None` when the default directory does not exist
    /// (the embedded default policy alone is loaded).
    pub policy_dir: Option<PathBuf>,
    /// Policy of a trajectory opened without `--policy`.
    pub default_policy: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--cgroup-parent {0:?}: expected a relative path of plain names below the cgroup2 mount, e.g. agent-monitor"
    )]
    CgroupParent(String),
    #[error("--ringbuf-size {0}: expected a power of two of at least 4096 bytes")]
    RingbufSize(u32),
    #[error("--control-socket {0:?}: expected an absolute path")]
    ControlSocket(String),
    #[error("--policy-dir {0:?}: not a directory")]
    PolicyDir(String),
}

impl DaemonConfig {
    pub fn from_args(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let parent = Path::new(&args.cgroup_parent);
        if args.cgroup_parent.is_empty() || !parent.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ConfigError::CgroupParent(args.cgroup_parent.clone()));
        }
        if !args.ringbuf_size.is_power_of_two() || args.ringbuf_size < 4096 {
            return Err(ConfigError::RingbufSize(args.ringbuf_size));
        }
        if !args.control_socket.is_absolute() {
            return Err(ConfigError::ControlSocket(args.control_socket.display().to_string()));
        }
        let policy_dir = match &args.policy_dir {
            Some(dir) if dir.is_dir() => Some(dir.clone()),
            Some(dir) => return Err(ConfigError::PolicyDir(dir.display().to_string())),
            None => Some(PathBuf::from(DEFAULT_POLICY_DIR)).filter(|d| d.is_dir()),
        };
        Ok(DaemonConfig {
            events: match &args.events {
                None => Output::Stdout,
                Some(p) if p.as_os_str() == "-" => Output::Stdout,
                Some(p) => Output::File(p.clone()),
            },
            metrics_addr: args.metrics_addr,
            control_socket: args.control_socket.clone(),
            cgroup_parent: parent.to_owned(),
            ringbuf_bytes: args.ringbuf_size,
            policy_dir,
            default_policy: args.default_policy.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Commands};

    fn parse(extra: &[&str]) -> Result<DaemonConfig, ConfigError> {
        let cli = Cli::try_parse_from(["agent-monitor", "daemon"].iter().chain(extra)).unwrap();
        let Commands::Daemon(args) = cli.command else { panic!() };
        DaemonConfig::from_args(&args)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.events, Output::Stdout);
        assert_eq!(c.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert!(c.metrics_addr.ip().is_loopback());
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    }

    #[test]
    fn rejects_escaping_cgroup_parent_and_bad_sizes() {
        for bad in ["../x", "/abs", "", "a/../b"] {
            assert!(matches!(parse(&["--cgroup-parent", bad]), Err(ConfigError::CgroupParent(_))), "{bad}");
        }
        assert_eq!(parse(&["--ringbuf-size", "5000"]), Err(ConfigError::RingbufSize(5000)));
        assert!(parse(&["--control-socket", "rel.sock"]).is_err());
        assert_eq!(
            parse(&["--policy-dir", "/nonexistent/policies"]),
            Err(ConfigError::PolicyDir("/nonexistent/policies".into()))
        );
    }
}
