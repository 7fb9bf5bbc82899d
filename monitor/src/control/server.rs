//! Control socket server.
//!
//! The socket is created inside a root-owned 0700 directory, so no other
//! user can reach it even during the instant between `bind` and `chmod`;
//! every connection is also checked with `SO_PEERCRED` (uid 0 only).

use std::{
    fs::{self, DirBuilder},
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};

use super::{
    protocol::{monostate, ClassEnforcement, HookStatus, ProtectionStatus, Request, Response, Status},
    watcher::Watcher,
};
use crate::{
    cgroup::{self, Hierarchy},
    enforce::Binding,
    events::{
        pipeline::{Command, EndReason, OpenSpec},
        record::{Bytes, Process},
    },
    reload::PolicyTable,
    trajectory,
};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket directory {path} is not a root-owned directory closed to other users (mode {mode:o}, uid {uid})")]
    UnsafeDir { path: PathBuf, mode: u32, uid: u32 },
    #[error("another agent-monitor daemon is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the socket at `path`, replacing a stale one left by a dead daemon.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_err = |source| ControlError::Dir { path: dir.to_owned(), source };
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(dir_err)?;
    let meta = fs::metadata(dir).map_err(dir_err)?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(ControlError::UnsafeDir { path: dir.to_owned(), mode: meta.mode() & 0o7777, uid: meta.uid() });
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        let _ = fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind { path: path.to_owned(), source })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|source| ControlError::Bind { path: path.to_owned(), source })?;
    Ok(listener)
}

/// What the server needs to open trajectories.
pub struct Context {
    pub hierarchy: Hierarchy,
    /// Directory holding the trajectory cgroups.
    pub parent: PathBuf,
    pub pipeline: mpsc::Sender<Command>,
    pub watcher: Watcher,
    /// Per-hook state from startup.
    pub hooks: Vec<HookStatus>,
    pub enforcement: ClassEnforcement,
    /// Built-in tamper protections from startup.
    pub protections: Vec<ProtectionStatus>,
    pub policies: PolicyTable,
    pub policy_dir: Option<String>,
    /// Policy of trajectories opened without one.
    pub default_policy: String,
}

pub async fn serve(listener: UnixListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, &ctx).await {
                            tracing::debug!("control connection: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("control socket accept failed: {e}"),
            },
        }
    }
}

async fn handle(stream: UnixStream, ctx: &Context) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let response = if cred.uid() != 0 {
        Response::error("the control socket is for root only")
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
        reader.read_line(&mut line).await?;
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::error(format!("invalid request: {e}")),
            Ok(Request::Status) => status(ctx).await,
            Ok(Request::OpenTrajectory { trajectory, command, policy, vars }) => match cred.pid() {
                Some(pid) if pid > 0 => {
                    let binding = Binding { policy: policy.unwrap_or_else(|| ctx.default_policy.clone()), vars };
                    open_trajectory(ctx, trajectory, command, binding, pid as u32, cred.uid(), cred.gid()).await
                }
                _ => Response::error("cannot identify the requesting process"),
            },
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await
}

async fn open_trajectory(
    ctx: &Context,
    requested: Option<String>,
    command: Vec<String>,
    binding: Binding,
    pid: u32,
    uid: u32,
    gid: u32,
) -> Response {
    let id = match requested {
        Some(id) => match trajectory::validate_id(&id) {
            Ok(()) => id,
            Err(e) => return Response::error(e.to_string()),
        },
        None => trajectory::generate_id(),
    };
    let path = ctx.parent.join(&id);
    if let Err(e) = cgroup::create(&path) {
        return Response::error(if path.exists() {
            format!("trajectory {id} already exists")
        } else {
            format!("cannot create the trajectory cgroup: {e}")
        });
    }
    let fail = |msg: String| {
        let _ = cgroup::remove_tree(&path);
        Response::error(msg)
    };
    let (cgroup_id, level) = match (cgroup::cgroup_id(&path), ctx.hierarchy.level_of(&path)) {
        (Ok(id), Some(level)) => (id, level),
        (Err(e), _) => return fail(e.to_string()),
        (_, None) => return fail(format!("{} is outside the cgroup2 mount", path.display())),
    };
    // Watch before anyone joins, so the emptying is never missed.
    if let Err(e) = ctx.watcher.watch(&path, cgroup_id) {
        return fail(format!("cannot watch {}: {e}", path.display()));
    }
    let (reply, answer) = oneshot::channel();
    let spec = OpenSpec {
        id: id.clone(),
        cgroup: path.clone(),
        cgroup_id,
        level,
        command: command.iter().map(|s| Bytes::from(s.as_str())).collect(),
        client: client_process(pid, uid, gid),
        binding: binding.clone(),
    };
    if ctx.pipeline.send(Command::Open { spec, reply }).await.is_err() {
        return fail("the daemon is shutting down".into());
    }
    match answer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return fail(e.to_string()),
        Err(_) => return fail("the daemon is shutting down".into()),
    }
    // Registered in the kernel: from here on everything the client does is
    // recorded. Now move it in.
    if let Err(e) = cgroup::move_process(&path, pid) {
        let _ = ctx.pipeline.send(Command::Close { cgroup_id, reason: EndReason::StartFailed }).await;
        return Response::error(format!("cannot move process {pid} into the trajectory: {e}"));
    }
    tracing::info!(trajectory = %id, pid, policy = %binding.policy, "trajectory opened");
    Response::Opened { ok: monostate::True, trajectory: id, cgroup: path.display().to_string(), policy: binding.policy }
}

async fn status(ctx: &Context) -> Response {
    let (reply, answer) = oneshot::channel();
    if ctx.pipeline.send(Command::List { reply }).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    let Ok(trajectories) = answer.await else {
        return Response::error("the daemon is shutting down");
    };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    Response::Status {
        ok: monostate::True,
        status: Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel,
            hooks: ctx.hooks.clone(),
            enforcement: ctx.enforcement.clone(),
            protections: ctx.protections.clone(),
            policies: ctx.policies.read().expect("not poisoned").clone(),
            policy_dir: ctx.policy_dir.clone(),
            trajectories,
        },
    }
}

/// The requesting process as a record's `process` part.
fn client_process(pid: u32, uid: u32, gid: u32) -> Process {
    let stat = fs::read(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses,
    // so split at the last ')'.
    let close = stat.iter().rposition(|&c| c == b')');
    let open = stat.iter().position(|&c| c == b'(');
    let (comm, ppid) = match (open, close) {
        (Some(o), Some(c)) if o < c => {
            let rest = String::from_utf8_lossy(&stat[c + 1..]);
            (Some(Bytes::from(&stat[o + 1..c])), rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
        }
        _ => (None, None),
    };
    Process { pid: Some(pid), tid: Some(pid), ppid, uid: Some(uid), gid: Some(gid), comm }
}
