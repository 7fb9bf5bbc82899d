//! Control socket server.
//!
//! The socket is created inside a root-owned 0700 directory, so no other
//! user can reach it even during the instant between `bind` and `chmod`;
//! every connection is also checked with `SO_PEERCRED` (uid 0 only).

use std::{
    fs::{self, DirBuilder},
    io,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use monitor_common::{policy::RULE_BUILTIN_TAMPER, tamper::TamperOp};

use super::{
    protocol::{
        monostate, Attached, ClassEnforcement, DnsStatus, HookStatus, ProtectionStatus, Request, Response, Status,
    },
    watcher::Watcher,
};
use crate::{
    account::{self, AgentIdentity, CallerGroup},
    cgroup::{self, Hierarchy},
    clock,
    enforce::Binding,
    events::{
        decode::{Decoded, RawVerdict},
        handle::PipelineHandle,
        pipeline::{OpenSpec, Owner},
        process,
    },
    limits::{Compartment, Controllers},
    policy::{Limits, Session},
    record::{Body, Bytes, Process},
    reload::PolicyTable,
    sinks::{subscribe::Item, Filter, Hub},
    trajectory,
    vocab::{EndReason, Origin},
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
/// Root-only (`0600`, in a `0700` directory) unless `group` is given: then
/// the socket is `0660` and the directory `0750`, both of group `group`.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ControlError> {
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
    let bind_err = |source| ControlError::Bind { path: path.to_owned(), source };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(dir, Some(0), Some(gid)).map_err(dir_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).map_err(dir_err)?;
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(bind_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    }
    Ok(listener)
}

/// What the server needs to open trajectories.
pub struct Context {
    pub hierarchy: Hierarchy,
    /// Directory holding the trajectory cgroups.
    pub parent: PathBuf,
    pub pipeline: PipelineHandle,
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
    /// Live record subscriptions.
    pub hub: Arc<Hub>,
    /// The resolver's `status` row; `learned` is read when asked.
    pub dns: Option<DnsStatus>,
    pub dns_learned: prometheus::IntGauge,
    /// Where each limit's controller is.
    pub controllers: Controllers,
    /// Non-root callers: members of this group may start trajectories for
    /// themselves under its policies.
    pub callers: Option<CallerGroup>,
    /// The Landlock layer each trajectory `run` starts gets, if any.
    pub landlock: Option<crate::landlock::Wanted>,
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

/// The process at the other end of a connection, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: u32,
    uid: u32,
    gid: u32,
}

impl Peer {
    /// The process as a record's `process` part.
    fn process(self) -> Process {
        match process::read_proc(self.pid) {
            Some(p) => p.process,
            None => Process {
                pid: Some(self.pid),
                tid: Some(self.pid),
                uid: Some(self.uid),
                gid: Some(self.gid),
                ..Process::default()
            },
        }
    }
}

async fn handle(stream: UnixStream, ctx: &Context) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let peer = cred.pid().filter(|&p| p > 0).map(|p| Peer { pid: p as u32, uid: cred.uid(), gid: cred.gid() });
    let member = match (&ctx.callers, peer) {
        (Some(g), Some(p)) if p.uid != 0 => is_member(p, g.gid).then_some(g),
        _ => None,
    };
    let response = if cred.uid() != 0 && member.is_none() {
        Response::error(match &ctx.callers {
            Some(g) => format!("the control socket is for root and members of group {}", g.name),
            None => "the control socket is for root only".to_owned(),
        })
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
        reader.read_line(&mut line).await?;
        match (serde_json::from_str::<Request>(&line), peer) {
            (Err(e), _) => Response::error(format!("invalid request: {e}")),
            (Ok(_), None) => Response::error("cannot identify the requesting process"),
            (Ok(request), Some(peer)) => {
                match route(&ctx.pipeline, cgroup::of_process(&ctx.hierarchy, peer.pid), request, peer).await {
                    Route::Answered(response) => response,
                    Route::Operator(request) if member.is_some() => {
                        member_request(ctx, member.expect("checked"), request, peer).await
                    }
                    Route::Operator(Request::Events { trajectory, kinds, follow }) => {
                        return subscribe(ctx, Filter { trajectory, kinds }, follow, write).await;
                    }
                    Route::Operator(request) => operator_request(ctx, request, peer).await,
                }
            }
        }
    };
    send(&mut write, &response).await
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut out = serde_json::to_vec(response)?;
    out.push(b'\n');
    if let Response::Opened { ruleset: Attached(Some(fd)), .. } = response {
        return send_with_fd(write.as_ref(), &out, fd.as_raw_fd()).await;
    }
    write.write_all(&out).await
}

/// Writes `line` with `fd` attached to its first byte (`SCM_RIGHTS`).
async fn send_with_fd(stream: &UnixStream, line: &[u8], fd: RawFd) -> io::Result<()> {
    let mut sent = 0;
    while sent < line.len() {
        stream.writable().await?;
        let attach = sent == 0;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            crate::control::fdpass::send(stream.as_raw_fd(), &line[sent..], attach.then_some(fd))
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where a request goes, decided by who makes it.
enum Route {
    /// From inside a trajectory: answered already (its own step, or a
    /// refusal), or the caller could not be placed.
    Answered(Response),
    /// From outside every trajectory: the operator's requests, all of them.
    Operator(Request),
}

/// Routes a request of `peer`, a process in cgroup `caller` (`None`:
/// unreadable).
async fn route(pipeline: &PipelineHandle, caller: Option<PathBuf>, request: Request, peer: Peer) -> Route {
    match caller_trajectory(pipeline, caller).await {
        Err(response) => Route::Answered(response),
        Ok(Some(own)) => Route::Answered(agent_request(pipeline, own, request, peer).await),
        Ok(None) => Route::Operator(request),
    }
}

/// The trajectory the caller runs in, if any, from its cgroup as read in
/// `/proc/<pid>/cgroup` while it is connected; a process in a trajectory
/// cannot move out of it (cgroupfs is closed to it by the built-in
/// protection), so what was read is where it is.
async fn caller_trajectory(pipeline: &PipelineHandle, caller: Option<PathBuf>) -> Result<Option<Owner>, Response> {
    let Some(path) = caller else {
        return Err(Response::error("cannot read the requesting process's cgroup"));
    };
    pipeline.owner(path).await.map_err(|e| Response::error(e.to_string()))
}

/// A process inside a trajectory may only annotate its own trajectory's
/// steps: anything else would let the agent open a trajectory under a
/// laxer policy, read other sessions' records, or learn what is enforced.
/// Each refusal is a `tamper` record in the trajectory's stream.
async fn agent_request(pipeline: &PipelineHandle, own: Owner, request: Request, peer: Peer) -> Response {
    let refusal = match request {
        Request::Step { trajectory, name, id } if trajectory.as_deref().is_none_or(|t| t == own.id) => {
            return step(pipeline, own.id, name, id).await;
        }
        Request::Step { trajectory: Some(ref other), .. } => {
            format!("a process in trajectory {} may only annotate its own steps, not {other}", own.id)
        }
        _ => format!("requests from inside trajectory {} are limited to `step` for that trajectory", own.id),
    };
    tracing::warn!(
        trajectory = %own.id,
        op = request.op(),
        target = request.trajectory().unwrap_or("-"),
        pid = peer.pid,
        "agent request refused"
    );
    pipeline.publish(refusal_record(&own, &request, peer)).await;
    Response::error(refusal)
}

/// The `tamper` record of a request refused to `peer` in trajectory `own`:
/// `op: control`, denied by the built-in tamper rule under the
/// trajectory's policy. The request named as an agent sent it: its `op`,
/// and its trajectory only if that is a valid id (an agent's string is
/// not written into the stream unchecked).
fn refusal_record(own: &Owner, request: &Request, peer: Peer) -> Decoded {
    let target = request.trajectory().filter(|t| trajectory::validate_id(t).is_ok());
    Decoded {
        ts_boot_ns: clock::boottime_ns(),
        trajectory_cgroup: own.cgroup_id,
        step: own.step,
        process: peer.process(),
        body: Body::Tamper {
            op: TamperOp::Control.as_str(),
            target_pid: None,
            arg: 0,
            request: Some(request.op()),
            target_trajectory: target.map(str::to_owned),
        },
        verdict: RawVerdict {
            policy: own.instance,
            rule_id: RULE_BUILTIN_TAMPER,
            action: Some("deny"),
            decision: Some("deny"),
            mechanism: None,
        },
    }
}

/// Whether the process `peer` has group `gid`, as its effective group
/// (`SO_PEERCRED`) or a supplementary one (`/proc/<pid>/status`, read while
/// it is connected).
fn is_member(peer: Peer, gid: u32) -> bool {
    if peer.gid == gid {
        return true;
    }
    let status = fs::read_to_string(format!("/proc/{}/status", peer.pid)).unwrap_or_default();
    let groups = status.lines().find_map(|l| l.strip_prefix("Groups:")).unwrap_or("");
    groups.split_whitespace().any(|g| g.parse() == Ok(gid))
}

/// A member of the control socket group, outside every trajectory, may
/// start a trajectory for itself under one of the group's policies, and
/// nothing else. The agent is the caller, as the kernel says it is.
async fn member_request(ctx: &Context, group: &CallerGroup, request: Request, peer: Peer) -> Response {
    let Request::OpenTrajectory { trajectory, command, policy, vars, agent: _, user } = request else {
        return Response::error(format!(
            "members of group {} may only start trajectories (`run`); `{}` is for root",
            group.name,
            request.op()
        ));
    };
    let policy = policy.unwrap_or_else(|| ctx.default_policy.clone());
    if !group.policies.contains(&policy) {
        return Response::error(format!(
            "policy {policy:?} is not one members of group {} may choose (group_policies: {})",
            group.name,
            group.policies.join(", ")
        ));
    }
    if let Some(spec) = &user {
        match account::resolve(spec) {
            Ok(a) if a.uid == peer.uid => {}
            Ok(a) => {
                return Response::error(format!(
                    "--user {spec:?} is uid {}: members of group {} start trajectories as themselves (uid {})",
                    a.uid, group.name, peer.uid
                ))
            }
            Err(e) => return Response::error(e.to_string()),
        }
    }
    let Some(agent) = account::of_process(peer.pid) else {
        return Response::error("cannot read the requesting process's identity");
    };
    let start = Start { command, agent: Some(agent), user: None };
    open_trajectory(ctx, trajectory, start, Binding { policy, vars }, peer).await
}

async fn operator_request(ctx: &Context, request: Request, peer: Peer) -> Response {
    match request {
        Request::Status => status(ctx).await,
        Request::OpenTrajectory { trajectory, command, policy, vars, agent, user } => {
            let binding = Binding { policy: policy.unwrap_or_else(|| ctx.default_policy.clone()), vars };
            let start = Start { command, agent, user };
            open_trajectory(ctx, trajectory, start, binding, peer).await
        }
        Request::Step { trajectory: Some(t), name, id } => step(&ctx.pipeline, t, name, id).await,
        Request::Step { trajectory: None, .. } => {
            Response::error("`trajectory` is required outside a trajectory (the caller is in none)")
        }
        Request::Events { .. } => unreachable!("streamed by the caller"),
    }
}

async fn step(pipeline: &PipelineHandle, trajectory: String, name: String, id: Option<u32>) -> Response {
    match pipeline.step(trajectory.clone(), name, id).await {
        Ok(step) => Response::Stepped { ok: monostate::True, trajectory, step },
        Err(e) => Response::error(e.to_string()),
    }
}

/// Streams records to a subscriber until it disconnects (or, without
/// `follow`, once the recent records are sent). A write that fails ends
/// the subscription; a slow reader loses records for itself only and is
/// told how many in a `subscription_gap` line.
async fn subscribe(
    ctx: &Context,
    filter: Filter,
    follow: bool,
    mut write: tokio::net::unix::OwnedWriteHalf,
) -> io::Result<()> {
    if let Err(e) = filter.validate() {
        return send(&mut write, &Response::error(e)).await;
    }
    let mut sub = ctx.hub.subscribe(filter, follow);
    send(&mut write, &Response::Subscribed { ok: monostate::True, follow }).await?;
    let mut buf = Vec::with_capacity(1 << 16);
    for batch in std::mem::take(&mut sub.history) {
        encode(&mut buf, &sub.filter, &batch)?;
        write.write_all(&buf).await?;
    }
    if !follow {
        return Ok(());
    }
    while let Some(item) = sub.next().await {
        match item {
            Item::Batch(batch) => encode(&mut buf, &sub.filter, &batch)?,
            Item::Missed(missed) => {
                buf.clear();
                serde_json::to_writer(&mut buf, &serde_json::json!({"kind": "subscription_gap", "missed": missed}))?;
                buf.push(b'\n');
            }
        }
        write.write_all(&buf).await?;
    }
    Ok(())
}

fn encode(buf: &mut Vec<u8>, filter: &Filter, batch: &[crate::record::Record]) -> io::Result<()> {
    buf.clear();
    for r in batch.iter().filter(|r| filter.matches(r)) {
        serde_json::to_writer(&mut *buf, r)?;
        buf.push(b'\n');
    }
    Ok(())
}

/// What `run` says about the command it starts.
struct Start {
    command: Vec<String>,
    /// Who the command starts as, by the client's account.
    agent: Option<AgentIdentity>,
    /// `--user` as given.
    user: Option<String>,
}

/// The `session:` and `limits:` of the policy a trajectory asks for, as
/// loaded now (an unknown policy has neither; opening it fails anyway).
fn terms(ctx: &Context, policy: &str) -> (Session, Limits) {
    let table = ctx.policies.read().expect("not poisoned");
    table.iter().find(|p| p.name == policy).map(|p| (p.session.clone(), p.limits)).unwrap_or_default()
}

/// Checks a start against its policy's `session:` and `limits:` before
/// anything is created: who the agent runs as (and its `${HOME}`), and
/// whether this host can apply the limits.
fn admit(
    ctx: &Context,
    user: Option<&str>,
    agent: Option<AgentIdentity>,
    binding: &mut Binding,
    peer: Peer,
) -> Result<(account::SessionPlan, Limits), String> {
    let (session, limits) = terms(ctx, &binding.policy);
    let plan = account::plan(&binding.policy, &session, user, agent, peer.uid)?;
    ctx.controllers.check(&binding.policy, &limits).map_err(|e| e.to_string())?;
    // ${HOME} is the agent's: the policy's account's, when it chose one.
    if let Some(home) = plan.user.as_ref().and_then(|(_, h)| h.as_ref()).filter(|h| h.is_absolute()) {
        let home = fs::canonicalize(home).unwrap_or_else(|_| home.clone());
        binding.vars.insert("HOME".to_owned(), home.to_string_lossy().into_owned());
    }
    Ok((plan, limits))
}

/// Writes the limits into the new trajectory cgroup at `path` and watches
/// its files (the emptying, and forks refused at the pids limit), all
/// before anyone joins, so nothing is missed. On failure the limits'
/// cgroups are removed again.
fn prepare(ctx: &Context, policy: &str, limits: &Limits, path: &Path, cgroup_id: u64) -> Result<Compartment, String> {
    let compartment = ctx
        .controllers
        .apply(policy, path, limits)
        .map_err(|e| format!("cannot apply the limits of policy {policy:?}: {e}"))?;
    let watched = ctx.watcher.watch(path, cgroup_id).map_err(|e| format!("cannot watch {}: {e}", path.display()));
    let watched = watched.and_then(|()| match compartment.pids_events() {
        Some(events) => {
            ctx.watcher.watch_limit(&events, cgroup_id).map_err(|e| format!("cannot watch {}: {e}", events.display()))
        }
        None => Ok(()),
    });
    watched.inspect_err(|_| compartment.remove())?;
    Ok(compartment)
}

async fn open_trajectory(
    ctx: &Context,
    requested: Option<String>,
    start: Start,
    mut binding: Binding,
    peer: Peer,
) -> Response {
    let pid = peer.pid;
    let (plan, limits) = match admit(ctx, start.user.as_deref(), start.agent, &mut binding, peer) {
        Ok(admitted) => admitted,
        Err(e) => return Response::error(e),
    };
    let (id, path) = match create_cgroup(ctx, requested) {
        Ok(created) => created,
        Err(e) => return Response::error(e),
    };
    let fail = |msg: String| {
        let _ = cgroup::remove_tree(&path);
        Response::error(msg)
    };
    let (cgroup_id, level) = match (cgroup::cgroup_id(&path), ctx.hierarchy.level_of(&path)) {
        (Ok(id), Some(level)) => (id, level),
        (Err(e), _) => return fail(e.to_string()),
        (_, None) => return fail(format!("{} is outside the cgroup2 mount", path.display())),
    };
    if let Err(e) = sees_client(ctx, pid) {
        return fail(e);
    }
    let compartment = match prepare(ctx, &binding.policy, &limits, &path, cgroup_id) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let fail = |msg: String| {
        compartment.remove();
        fail(msg)
    };
    let spec = OpenSpec {
        id: id.clone(),
        cgroup: path.clone(),
        cgroup_id,
        level,
        command: start.command.iter().map(|s| Bytes::from(s.as_str())).collect(),
        client: peer.process(),
        binding: binding.clone(),
        origin: Origin::Run,
        agent: plan.agent.map(Box::new),
        compartment: Box::new(compartment.clone()),
        landlock: ctx.landlock.clone(),
    };
    let layer = match ctx.pipeline.open(spec).await {
        Ok(layer) => layer,
        Err(e) => return fail(e.to_string()),
    };
    let ruleset = match layer.as_ref().map(|plan| ruleset(&id, plan, pid)).transpose() {
        Ok(fd) => fd,
        Err(e) => {
            let _ = ctx.pipeline.close(cgroup_id, EndReason::StartFailed).await;
            return Response::error(e.to_string());
        }
    };
    // Registered in the kernel: from here on everything the client does is
    // recorded. Now move it in: the v1 limit cgroups first, so it is
    // limited before it is the trajectory's.
    if let Err(e) = compartment.join(pid).and_then(|()| cgroup::move_process(&path, pid)) {
        let _ = ctx.pipeline.close(cgroup_id, EndReason::StartFailed).await;
        return Response::error(format!("cannot move process {pid} into the trajectory: {e}"));
    }
    tracing::info!(trajectory = %id, pid, policy = %binding.policy, "trajectory opened");
    Response::Opened {
        ok: monostate::True,
        trajectory: id,
        cgroup: path.display().to_string(),
        policy: binding.policy,
        user: plan.user.map(|(u, _)| u),
        capabilities: plan.capabilities,
        landlock: layer.as_ref().map(crate::landlock::Layer::of),
        ruleset: Attached(ruleset),
    }
}

/// The Landlock layer is planned through the client's own view of the
/// files: a daemon that cannot see it must not plan a layer from nothing.
fn sees_client(ctx: &Context, pid: u32) -> Result<(), String> {
    let view = crate::landlock::view_of(pid);
    match (&ctx.landlock, std::fs::read_dir(&view)) {
        (Some(_), Err(e)) => Err(format!(
            "cannot read the client's files through {} for its Landlock layer: {e} (the daemon needs CAP_SYS_PTRACE \
             and CAP_DAC_READ_SEARCH)",
            view.display()
        )),
        _ => Ok(()),
    }
}

/// The trajectory's id (the one requested, or a new one) and its new cgroup.
fn create_cgroup(ctx: &Context, requested: Option<String>) -> Result<(String, PathBuf), String> {
    let id = match requested {
        Some(id) => trajectory::validate_id(&id).map(|()| id).map_err(|e| e.to_string())?,
        None => trajectory::generate_id(),
    };
    let path = ctx.parent.join(&id);
    match cgroup::create(&path) {
        Ok(()) => Ok((id, path)),
        Err(_) if path.exists() => Err(format!("trajectory {id} already exists")),
        Err(e) => Err(format!("cannot create the trajectory cgroup: {e}")),
    }
}

/// Builds the Landlock ruleset `plan` describes, for `run` to apply.
fn ruleset(
    id: &str,
    plan: &crate::landlock::Plan,
    pid: u32,
) -> Result<Arc<OwnedFd>, crate::landlock::sys::LandlockError> {
    let (fd, built) = crate::landlock::sys::build(plan, &crate::landlock::view_of(pid))?;
    if !built.skipped.is_empty() {
        tracing::debug!(trajectory = %id, skipped = ?built.skipped, "paths gone since the plan: no grant");
    }
    Ok(Arc::new(fd))
}

async fn status(ctx: &Context) -> Response {
    let trajectories = match ctx.pipeline.list().await {
        Ok(list) => list,
        Err(e) => return Response::error(e.to_string()),
    };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    Response::Status {
        ok: monostate::True,
        status: Box::new(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel,
            hooks: ctx.hooks.clone(),
            enforcement: ctx.enforcement.clone(),
            protections: ctx.protections.clone(),
            policies: ctx.policies.read().expect("not poisoned").clone(),
            policy_dir: ctx.policy_dir.clone(),
            trajectories,
            dns: ctx.dns.clone().map(|d| DnsStatus { learned: ctx.dns_learned.get(), ..d }),
            limits: ctx.controllers.status(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::events::pipeline::{Command, PipelineError};

    /// The cgroup of the one trajectory the fake pipeline has open, `t1`.
    const T1: &str = "/sys/fs/cgroup/agent-monitor/t1";

    /// `t1` as the fake pipeline answers its owner: at step 2, under
    /// policy instance 3.
    fn t1() -> Owner {
        Owner { id: "t1".to_owned(), cgroup_id: 11, instance: 3, step: 2 }
    }

    /// The test process, as the peer of every request.
    fn me() -> Peer {
        Peer { pid: std::process::id(), uid: 0, gid: 0 }
    }

    /// What the fake pipeline got: each command by name, and the records
    /// published.
    #[derive(Default)]
    struct Seen {
        commands: Vec<&'static str>,
        published: Vec<Decoded>,
    }

    type Log = Arc<Mutex<Seen>>;

    /// A pipeline with trajectory `t1` open: it answers ownership and
    /// steps (every step is number 7), and logs each command it gets.
    fn fake_pipeline() -> (PipelineHandle, Log) {
        let (handle, mut rx) = PipelineHandle::channel();
        let log = Log::default();
        let seen = log.clone();
        tokio::spawn(async move {
            // Logged before the answer: a caller that has its answer
            // finds its command in the log.
            let note = |name| seen.lock().expect("not poisoned").commands.push(name);
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Command::Owner { cgroup, reply } => {
                        note("owner");
                        let _ = reply.send(cgroup.starts_with(T1).then(t1));
                    }
                    Command::Step { trajectory, reply, .. } => {
                        note("step");
                        let _ = reply.send(if trajectory == "t1" { Ok(7) } else { Err(PipelineError::Stopped) });
                    }
                    Command::Publish(d) => {
                        note("publish");
                        seen.lock().expect("not poisoned").published.push(*d);
                    }
                    // Not logged: the tests' barrier, answered once what was
                    // queued before it (a publish is not waited for) is in.
                    Command::List { reply } => {
                        let _ = reply.send(Vec::new());
                    }
                    // Anything else reaching the pipeline from an agent is
                    // the failure the tests look for; no answer is needed.
                    _ => note("other"),
                }
            }
        });
        (handle, log)
    }

    /// Waits until the fake pipeline has handled every command sent so far.
    async fn settle(pipeline: &PipelineHandle) {
        pipeline.list().await.expect("the fake pipeline runs");
    }

    /// How many kinds of request there are, numbered by [`kind`].
    const KINDS: usize = 4;

    /// A new kind of request does not compile here until it is numbered,
    /// and [`samples`] must then hold one (checked by the tests).
    fn kind(request: &Request) -> usize {
        match request {
            Request::OpenTrajectory { .. } => 0,
            Request::Status => 1,
            Request::Step { .. } => 2,
            Request::Events { .. } => 3,
        }
    }

    /// What a process inside `t1` is answered: a step, or a refusal (its
    /// error, and the trajectory its `tamper` record names).
    #[derive(Debug, PartialEq)]
    enum Expect {
        Stepped,
        Refused(&'static str, Option<&'static str>),
    }

    /// Every kind of request, as a process in `t1` might make it.
    fn samples() -> Vec<(Request, Expect)> {
        let limited = "are limited to `step` for that trajectory";
        let step = |trajectory: Option<&str>| Request::Step {
            trajectory: trajectory.map(str::to_owned),
            name: "build".into(),
            id: None,
        };
        let open = |trajectory: Option<&str>| Request::OpenTrajectory {
            trajectory: trajectory.map(str::to_owned),
            command: vec!["sh".into()],
            policy: Some("lax".into()),
            vars: [("WORKSPACE".to_owned(), "/".to_owned())].into(),
            agent: None,
            user: None,
        };
        let events = |trajectory: Option<&str>| Request::Events {
            trajectory: trajectory.map(str::to_owned),
            kinds: vec![],
            follow: true,
        };
        vec![
            (open(None), Expect::Refused(limited, None)),
            (open(Some("t2")), Expect::Refused(limited, Some("t2"))),
            (Request::Status, Expect::Refused(limited, None)),
            (events(None), Expect::Refused(limited, None)),
            (events(Some("t1")), Expect::Refused(limited, Some("t1"))),
            (events(Some("t2")), Expect::Refused(limited, Some("t2"))),
            // Not an id: not written into the stream.
            (events(Some("../t2\n")), Expect::Refused(limited, None)),
            (step(Some("t2")), Expect::Refused("may only annotate its own steps, not t2", Some("t2"))),
            (step(Some("t1")), Expect::Stepped),
            (step(None), Expect::Stepped),
        ]
    }

    #[test]
    fn samples_cover_every_kind_of_request() {
        let kinds: BTreeSet<usize> = samples().iter().map(|(r, _)| kind(r)).collect();
        assert_eq!(kinds, (0..KINDS).collect());
    }

    /// The agent's side of the trust boundary: from inside a trajectory
    /// (here a cgroup below `t1`'s), only a step of its own trajectory
    /// reaches the pipeline; every other request is refused before it does,
    /// and the refusal is a `tamper` record in `t1`'s stream.
    #[tokio::test]
    async fn inside_a_trajectory_every_request_but_its_own_step_is_refused() {
        let (pipeline, log) = fake_pipeline();
        for (request, expect) in samples() {
            *log.lock().unwrap() = Seen::default();
            let caller = Some(PathBuf::from(T1).join("worker"));
            let Route::Answered(response) = route(&pipeline, caller, request.clone(), me()).await else {
                panic!("{request:?} from inside t1 was routed as the operator's");
            };
            settle(&pipeline).await;
            let seen = std::mem::take(&mut *log.lock().unwrap());
            match (expect, response) {
                (Expect::Stepped, Response::Stepped { trajectory, step, .. }) => {
                    assert_eq!((trajectory.as_str(), step), ("t1", 7), "{request:?}");
                    assert_eq!(seen.commands, ["owner", "step"], "{request:?}");
                }
                (Expect::Refused(why, target), Response::Error { error, .. }) => {
                    assert!(error.contains("trajectory t1") && error.contains(why), "{request:?}: {error}");
                    assert_eq!(seen.commands, ["owner", "publish"], "{request:?} reached the pipeline");
                    assert_refusal_record(&seen.published[0], &request, target);
                }
                (expect, response) => panic!("{request:?}: expected {expect:?}, got {response:?}"),
            }
        }
    }

    /// A refusal's record: `t1`'s, at its step, by the requesting process,
    /// denied by the built-in tamper rule of `t1`'s policy instance.
    fn assert_refusal_record(d: &Decoded, request: &Request, target: Option<&str>) {
        let body = Body::Tamper {
            op: "control",
            target_pid: None,
            arg: 0,
            request: Some(request.op()),
            target_trajectory: target.map(str::to_owned),
        };
        assert_eq!(d.body, body, "{request:?}");
        assert_eq!((d.trajectory_cgroup, d.step, d.process.pid), (11, 2, Some(std::process::id())));
        let deny = RawVerdict {
            policy: 3,
            rule_id: RULE_BUILTIN_TAMPER,
            action: Some("deny"),
            decision: Some("deny"),
            mechanism: None,
        };
        assert_eq!(d.verdict, deny);
    }

    /// Outside every trajectory each request is the operator's, untouched;
    /// a caller whose cgroup cannot be read, or a stopped pipeline, gets
    /// an error instead.
    #[tokio::test]
    async fn outside_or_unplaced_callers() {
        let (pipeline, log) = fake_pipeline();
        for (request, _) in samples() {
            let outside = Some(PathBuf::from("/sys/fs/cgroup/user.slice"));
            match route(&pipeline, outside, request.clone(), me()).await {
                Route::Operator(routed) => assert_eq!(routed, request),
                Route::Answered(response) => panic!("{request:?} from outside answered {response:?}"),
            }
            let Route::Answered(Response::Error { error, .. }) = route(&pipeline, None, request.clone(), me()).await
            else {
                panic!("{request:?} from an unknown cgroup was not refused");
            };
            assert!(error.contains("cannot read the requesting process's cgroup"), "{error}");
        }
        assert!(log.lock().unwrap().commands.iter().all(|c| *c == "owner"));
        let (stopped, rx) = PipelineHandle::channel();
        drop(rx);
        let Route::Answered(Response::Error { error, .. }) =
            route(&stopped, Some(PathBuf::from(T1)), Request::Status, me()).await
        else {
            panic!("a stopped pipeline answered");
        };
        assert_eq!(error, "the daemon is shutting down");
    }
}
