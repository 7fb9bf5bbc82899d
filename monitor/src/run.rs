//! `agent-monitor run`: open a trajectory, then become the command.
//!
//! The daemon moves this process into the trajectory cgroup before it
//! answers, so by the time `exec` happens everything the command does is
//! recorded, and the exit status is the command's own. With `--user` the
//! process drops to that account right before `exec` (`crate::account`).

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::fd::AsRawFd,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    account::{self, Account, AccountError},
    control::{
        client::{self, ClientError},
        protocol::{Request, Response},
    },
};

/// Environment variable that tells the command its trajectory id.
pub const TRAJECTORY_ENV: &str = "AGENT_MONITOR_TRAJECTORY";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("refusing to start the command without its Landlock layer: {0}")]
    Landlock(String),
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
            RunError::Client(_) | RunError::Account(_) | RunError::Landlock(_) => 1,
        }
    }
}

/// What to open.
pub struct RunSpec {
    pub trajectory: Option<String>,
    pub policy: Option<String>,
    /// `${WORKSPACE}`; the current directory when absent.
    pub workspace: Option<PathBuf>,
    /// `USER[:GROUP]` to run the command as.
    pub user: Option<String>,
}

/// Never returns on success: the process image is replaced by `command`.
pub fn run(socket: &Path, spec: RunSpec, command: &[OsString]) -> RunError {
    let account = match spec.user.as_deref().map(account::resolve).transpose() {
        Ok(a) => a,
        Err(e) => return e.into(),
    };
    // A non-root caller (a member of the control socket's group) is its
    // own account already: `--user` naming it changes nothing, and the
    // daemon refuses any other.
    // SAFETY: these calls cannot fail.
    let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
    let account = account.filter(|a| euid == 0 || a.uid != uid);
    let mut vars = BTreeMap::new();
    // Canonical, as the kernel names files: rules compare resolved paths.
    let workspace = match spec.workspace.map_or_else(std::env::current_dir, std::fs::canonicalize) {
        Ok(w) => w,
        Err(e) => return ClientError::Protocol(format!("cannot determine the workspace directory: {e}")).into(),
    };
    vars.insert("WORKSPACE".to_owned(), workspace.to_string_lossy().into_owned());
    // ${HOME} is the agent's: the account's home with `--user`.
    let home = match &account {
        Some(a) => a.home.clone().map(Into::into),
        None => std::env::var_os("HOME"),
    };
    // Canonical where it exists; an account's home that does not (nobody's
    // `/nonexistent`) is taken as written, so its rules still expand.
    let home = home.map(PathBuf::from).filter(|h| h.is_absolute()).map(|h| std::fs::canonicalize(&h).unwrap_or(h));
    if let Some(home) = home {
        vars.insert("HOME".to_owned(), home.to_string_lossy().into_owned());
    }
    let request = Request::OpenTrajectory {
        trajectory: spec.trajectory,
        command: command.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        policy: spec.policy,
        vars,
        agent: Some(account.as_ref().map_or_else(account::current, account::dropped)),
        user: spec.user.clone(),
    };
    let (id, policy_user, keep, landlock) = match client::request(socket, &request) {
        Ok(Response::Opened { trajectory, user, capabilities, landlock, ruleset, .. }) => match (landlock, ruleset.0) {
            (Some(_), None) => return RunError::Landlock("the daemon sent no ruleset".into()),
            (Some(_), Some(fd)) => (trajectory, user, capabilities, Some(fd)),
            (None, _) => (trajectory, user, capabilities, None),
        },
        Ok(Response::Error { error, .. }) => return ClientError::Refused(error).into(),
        Ok(other) => return ClientError::Protocol(format!("unexpected answer: {other:?}")).into(),
        Err(e) => return e.into(),
    };
    // The policy's `session.user` when `--user` did not name one (the
    // daemon checked that they agree).
    let account = match (account, policy_user) {
        (Some(a), _) => Some(a),
        (None, Some(user)) => match account::resolve(&user) {
            Ok(a) => Some(a),
            Err(e) => return e.into(),
        },
        (None, None) => None,
    };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).env(TRAJECTORY_ENV, &id);
    if let Some(account) = account {
        become_account(&mut cmd, account, account::cap_mask(&keep));
    }
    // Applied last, after the account drop, so nothing `run` does is judged
    // by it; the descriptor stays open until the `exec` closes it.
    if let Some(ruleset) = &landlock {
        restrict(&mut cmd, ruleset.as_raw_fd());
    }
    let source = cmd.exec();
    RunError::Exec { program: command[0].clone(), source }
}

/// Makes `cmd` restrict itself with the Landlock ruleset `fd` right before
/// it executes (a failure there fails the `exec`: the command never runs
/// without its layer).
fn restrict(cmd: &mut Command, fd: i32) {
    // SAFETY: the hook makes three syscalls; `run` has one thread.
    unsafe {
        cmd.pre_exec(move || crate::landlock::sys::restrict_self(fd));
    }
}

/// Makes `cmd` drop to `account` before it executes (`run` has one thread,
/// so the hook runs in the only one), with the account's environment and
/// the capabilities of the mask `keep`.
fn become_account(cmd: &mut Command, account: Account, keep: u64) {
    if let Some(name) = &account.name {
        cmd.env("USER", name).env("LOGNAME", name);
    }
    if let Some(home) = &account.home {
        cmd.env("HOME", home);
    }
    let last_cap = account::last_cap();
    // SAFETY: the hook only makes syscalls (and formats an error on
    // failure); no other thread exists to hold a lock it could need.
    unsafe {
        cmd.pre_exec(move || account::drop_to(&account, last_cap, keep));
    }
}
