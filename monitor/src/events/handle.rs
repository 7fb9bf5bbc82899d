//! The one way other tasks talk to the pipeline: a cloneable handle whose
//! methods send a [`Command`] and wait for its answer. A pipeline that has
//! stopped answers every call with [`PipelineError::Stopped`].

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::{
    decode::Decoded,
    pipeline::{Command, OpenSpec, Owner, PipelineError, TrajectoryStatus},
};
use crate::{policy::PolicySet, vocab::EndReason};

/// Commands queued for the pipeline before a caller waits.
const QUEUE: usize = 64;

#[derive(Clone, Debug)]
pub struct PipelineHandle {
    commands: mpsc::Sender<Command>,
}

impl PipelineHandle {
    /// A handle and the receiver the pipeline runs on.
    pub fn channel() -> (Self, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(QUEUE);
        (PipelineHandle { commands }, rx)
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, PipelineError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| PipelineError::Stopped)?;
        answer.await.map_err(|_| PipelineError::Stopped)
    }

    /// Opens a trajectory: its `trajectory_start` is published and the
    /// kernel judges its cgroup once this returns `Ok`, with the Landlock
    /// ruleset planned for it when the spec asked for one.
    pub async fn open(&self, spec: OpenSpec) -> Result<Option<crate::landlock::Plan>, PipelineError> {
        self.ask(|reply| Command::Open { spec, reply }).await?
    }

    /// Ends a trajectory once what the kernel recorded for it is published.
    /// Queued, not waited for.
    pub async fn close(&self, cgroup_id: u64, reason: EndReason) -> Result<(), PipelineError> {
        self.commands.send(Command::Close { cgroup_id, reason }).await.map_err(|_| PipelineError::Stopped)
    }

    /// Starts a new step of `trajectory`; answers its id.
    pub async fn step(&self, trajectory: String, name: String, id: Option<u32>) -> Result<u32, PipelineError> {
        self.ask(|reply| Command::Step { trajectory, name, id, reply }).await?
    }

    /// The open trajectories, by id.
    pub async fn list(&self) -> Result<Vec<TrajectoryStatus>, PipelineError> {
        self.ask(|reply| Command::List { reply }).await
    }

    /// Publishes a record made outside the kernel (the DNS resolver's, the
    /// control server's) in its trajectory's stream. Queued, not waited for; dropped once the
    /// pipeline has stopped.
    pub async fn publish(&self, record: Decoded) {
        let _ = self.commands.send(Command::Publish(Box::new(record))).await;
    }

    /// Publishes a `limit` record the daemon made for a trajectory.
    pub async fn limit(&self, cgroup_id: u64, body: crate::record::Body) {
        let _ = self.commands.send(Command::Limit { cgroup_id, body }).await;
    }

    /// The open trajectory whose cgroup is `cgroup` or an ancestor of it.
    pub async fn owner(&self, cgroup: PathBuf) -> Result<Option<Owner>, PipelineError> {
        self.ask(|reply| Command::Owner { cgroup, reply }).await
    }

    /// Rebinds every open trajectory to `set`, or changes nothing.
    pub async fn reload(&self, set: PolicySet) -> Result<(), PipelineError> {
        self.ask(|reply| Command::Reload { set, reply }).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake pipeline answering each command, to show the handle's
    /// round trips and that a stopped pipeline is reported as such.
    #[tokio::test]
    async fn round_trips_and_a_stopped_pipeline() {
        let (handle, mut rx) = PipelineHandle::channel();
        let fake = tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Command::Step { name, reply, .. } => {
                        let _ = reply.send(if name == "bad" { Err(PipelineError::Step("bad".into())) } else { Ok(3) });
                    }
                    Command::Owner { cgroup, reply } => {
                        let _ = reply.send(cgroup.ends_with("t1").then(|| Owner {
                            id: "t1".to_owned(),
                            cgroup_id: 5,
                            instance: 2,
                            step: 0,
                        }));
                    }
                    Command::List { reply } => {
                        let _ = reply.send(Vec::new());
                    }
                    // Dropping the reply: as a pipeline that stops mid-way.
                    _ => {}
                }
            }
        });
        assert_eq!(handle.step("t1".into(), "ok".into(), None).await.unwrap(), 3);
        assert!(matches!(handle.step("t1".into(), "bad".into(), None).await, Err(PipelineError::Step(_))));
        assert_eq!(handle.owner("/cg/t1".into()).await.unwrap().map(|o| o.id).as_deref(), Some("t1"));
        assert_eq!(handle.owner("/cg/other".into()).await.unwrap(), None);
        assert!(handle.list().await.unwrap().is_empty());
        assert!(handle.close(7, EndReason::Exited).await.is_ok());
        fake.abort();
        let _ = fake.await;
        assert!(matches!(handle.list().await, Err(PipelineError::Stopped)));
        assert_eq!(PipelineError::Stopped.to_string(), "the daemon is shutting down");
    }
}
