//! `agent-monitor run`: open a trajectory, then become the command.
//!
//! The daemon moves this process into the trajectory cgroup before it
//! answers, so by the time `exec` happens everything the command does is
//! recorded, and the exit status is the command's own.

use std::{ffi::OsString, os::unix::process::CommandExt, path::Path, process::Command};

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

/// Never returns on success: the process image is replaced by `command`.
pub fn run(socket: &Path, trajectory: Option<String>, command: &[OsString]) -> RunError {
    let request = Request::OpenTrajectory {
        trajectory,
        command: command.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
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
