//! `agent-monitor run`: open a trajectory, then become the command.
//!
//! The daemon moves this process into the trajectory cgroup before it
//! answers, so by the time `exec` happens everything the command does is
//! recorded, and the exit status is the command's own.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::control::{
    client::{self, ClientError},
    protocol::{Request, Response},
};

/// Environment variable that tells the command its trajectory id.
pub const TRAJECTORY_ENV: &str = "AGENT_MONITOR_TRAJECTORY";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot execute {program:?}: {source}")]
    Exec {
        program: OsString,
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// Shell conventions: 127 not found, 126 not executable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Exec { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 127,
            RunError::Exec { .. } => 126,
            RunError::Client(_) => 1,
        }
    }
}

/// What to open.
pub struct RunSpec {
    pub trajectory: Option<String>,
    pub policy: Option<String>,
    /// `${WORKSPACE}`; the current directory when absent.
    pub workspace: Option<PathBuf>,
}

/// Never returns on success: the process image is replaced by `command`.
pub fn run(socket: &Path, spec: RunSpec, command: &[OsString]) -> RunError {
    let mut vars = BTreeMap::new();
    // Canonical, as the kernel names files: rules compare resolved paths.
    let workspace = match spec.workspace.map_or_else(std::env::current_dir, std::fs::canonicalize) {
        Ok(w) => w,
        Err(e) => return ClientError::Protocol(format!("cannot determine the workspace directory: {e}")).into(),
    };
    vars.insert("WORKSPACE".to_owned(), workspace.to_string_lossy().into_owned());
    if let Some(home) = std::env::var_os("HOME").and_then(|h| std::fs::canonicalize(h).ok()) {
        vars.insert("HOME".to_owned(), home.to_string_lossy().into_owned());
    }
    let request = Request::OpenTrajectory {
        trajectory: spec.trajectory,
        command: command.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        policy: spec.policy,
        vars,
    };
    let id = match client::request(socket, &request) {
        Ok(Response::Opened { trajectory, .. }) => trajectory,
        Ok(Response::Error { error, .. }) => return ClientError::Refused(error).into(),
        Ok(other) => return ClientError::Protocol(format!("unexpected answer: {other:?}")).into(),
        Err(e) => return e.into(),
    };
    let source = Command::new(&command[0]).args(&command[1..]).env(TRAJECTORY_ENV, &id).exec();
    RunError::Exec { program: command[0].clone(), source }
}
