//! Why the daemon did not start, or why it stopped.

use std::io;

use super::services::ServiceError;
use crate::{
    btf::BtfError, cgroup::CgroupError, control::server::ControlError, host::HostError, loader::LoadError,
    policy::Diagnostic, reload::AdmitError,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid policies, not starting:\n{}", .0.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<Diagnostic>),
    /// A policy the configuration names is not defined.
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// The DNS egress resolver could not bind its sockets.
    #[error("DNS resolver: {0}")]
    Dns(#[source] io::Error),
    /// A service failed or panicked; it names the service.
    #[error(transparent)]
    Service(#[from] ServiceError),
}
