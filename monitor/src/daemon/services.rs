//! The daemon's services: the tasks that run from start-up to shutdown
//! (the pipeline, the sink, the control and metrics servers, the cgroup
//! watcher, the reloader, the adopter), in one [`JoinSet`] under one stop
//! signal. A service that fails or panics ends the daemon with its error
//! instead of vanishing. A shutdown stops the clients first (nothing new
//! reaches the pipeline), then lets the pipeline drain and the sink flush.

use std::{collections::HashMap, fmt, future::Future, io};

use tokio::{
    sync::watch,
    task::{self, JoinError, JoinSet},
};

use crate::{events::pipeline::PipelineError, sinks::Hub};

/// One of the daemon's services, by the name its errors carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Pipeline,
    Sink,
    Metrics,
    Control,
    Watcher,
    Reload,
    Reopen,
    Adopt,
    Dns,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Pipeline => "event pipeline",
            Service::Sink => "event sink",
            Service::Metrics => "metrics endpoint",
            Service::Control => "control server",
            Service::Watcher => "trajectory cgroup watcher",
            Service::Reload => "policy reloader",
            Service::Reopen => "sink reopener",
            Service::Adopt => "adopter",
            Service::Dns => "DNS resolver",
        }
    }

    /// Serves clients or sends the pipeline commands: stopped, and waited
    /// for, before the pipeline drains.
    fn is_client(self) -> bool {
        match self {
            Service::Control | Service::Watcher | Service::Reload | Service::Reopen | Service::Adopt | Service::Dns => {
                true
            }
            Service::Pipeline | Service::Sink | Service::Metrics => false,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a service ended the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{service}: {source}")]
    Failed {
        service: Service,
        #[source]
        source: Failure,
    },
    /// It panicked (or, never here, was cancelled).
    #[error("{service} task failed: {source}")]
    Task {
        service: Service,
        #[source]
        source: JoinError,
    },
}

/// The error a service returned.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a service's task ends with: nothing, or a result.
pub trait Outcome: Send + 'static {
    fn into_result(self) -> Result<(), Failure>;
}

impl Outcome for () {
    fn into_result(self) -> Result<(), Failure> {
        Ok(())
    }
}

impl<E: Into<Failure> + Send + 'static> Outcome for Result<(), E> {
    fn into_result(self) -> Result<(), Failure> {
        self.map_err(Into::into)
    }
}

pub struct Services {
    tasks: JoinSet<Result<(), Failure>>,
    running: HashMap<task::Id, Service>,
    stop: watch::Sender<bool>,
}

impl Services {
    pub fn new() -> Self {
        Services { tasks: JoinSet::new(), running: HashMap::new(), stop: watch::Sender::new(false) }
    }

    /// The stop signal every service watches: `true` once the daemon stops.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn spawn<T: Outcome>(&mut self, service: Service, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.tasks.spawn(async move { task.await.into_result() });
        self.running.insert(handle.id(), service);
    }

    /// A service on a thread of its own (the sink): waited for on the
    /// blocking pool, its panic carried over as the task's.
    pub fn spawn_thread<T: Outcome>(&mut self, service: Service, thread: std::thread::JoinHandle<T>) {
        let handle = self.tasks.spawn_blocking(move || match thread.join() {
            Ok(outcome) => outcome.into_result(),
            Err(panic) => std::panic::resume_unwind(panic),
        });
        self.running.insert(handle.id(), service);
    }

    /// The next service to end and how it ended; a failure is logged.
    async fn next(&mut self) -> Option<(Service, Result<(), ServiceError>)> {
        let joined = self.tasks.join_next_with_id().await?;
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let service = self.running.remove(&id).expect("every task is spawned with its name");
        let result = match joined {
            Ok((_, Ok(()))) => Ok(()),
            Ok((_, Err(source))) => Err(ServiceError::Failed { service, source }),
            Err(source) => Err(ServiceError::Task { service, source }),
        };
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        Some((service, result))
    }

    /// Runs until `shutdown` resolves or a service ends the daemon: one
    /// fails or panics, or the pipeline ends (it only returns early on a
    /// fatal error).
    pub async fn until(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                Some((service, result)) = self.next() => {
                    result?;
                    if service == Service::Pipeline {
                        return Ok(());
                    }
                    tracing::debug!(service = %service, "service ended");
                }
            }
        }
    }

    /// Stops every service and waits for each: the clients first, then
    /// (the subscriptions of `hub` ended) the rest; the pipeline drains
    /// and, once it is gone, the sink flushes. The first failure is
    /// returned; every one is logged.
    pub async fn stop(mut self, hub: &Hub) -> Result<(), ServiceError> {
        self.stop.send_replace(true);
        let mut result = Ok(());
        while self.running.values().any(|s| s.is_client()) {
            let Some((_, ended)) = self.next().await else { break };
            result = result.and(ended);
        }
        hub.close();
        while let Some((_, ended)) = self.next().await {
            result = result.and(ended);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use prometheus::{IntCounter, IntGauge};

    use super::*;
    use crate::sinks::Filter;

    fn hub() -> Hub {
        Hub::new(IntCounter::new("dropped", "-").unwrap(), IntGauge::new("subscribers", "-").unwrap())
    }

    /// A service that ends when told to stop.
    async fn until_stopped(mut stop: watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    #[tokio::test]
    async fn a_failing_service_ends_the_daemon_with_its_error() {
        let mut services = Services::new();
        services.spawn(Service::Control, until_stopped(services.stop_signal()));
        services.spawn(Service::Metrics, async { Err::<(), _>(io::Error::other("address gone")) });
        let err = services.until(std::future::pending()).await.unwrap_err();
        assert!(matches!(err, ServiceError::Failed { service: Service::Metrics, .. }), "{err:?}");
        assert_eq!(err.to_string(), "metrics endpoint: address gone");
        assert!(services.stop(&hub()).await.is_ok(), "the failure was taken by `until`");
    }

    async fn reloader_bug() {
        panic!("reloader bug")
    }

    #[tokio::test]
    async fn a_panicking_service_ends_the_daemon_naming_it() {
        let mut services = Services::new();
        services.spawn(Service::Reload, reloader_bug());
        let err = services.until(std::future::pending()).await.unwrap_err();
        assert!(matches!(err, ServiceError::Task { service: Service::Reload, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("policy reloader task failed") && text.contains("reloader bug"), "{text}");
        // On a thread of its own too (the sink).
        let mut services = Services::new();
        services.spawn_thread(Service::Sink, std::thread::spawn(|| -> io::Result<()> { panic!("sink bug") }));
        let err = services.until(std::future::pending()).await.unwrap_err();
        assert!(matches!(err, ServiceError::Task { service: Service::Sink, .. }), "{err:?}");
        assert!(err.to_string().contains("sink bug"), "{err}");
    }

    /// A service with nothing to do (the adopter without rules) ends
    /// quietly; the pipeline's end, or the shutdown, ends the daemon.
    #[tokio::test]
    async fn only_the_pipeline_or_the_shutdown_ends_a_quiet_run() {
        let mut services = Services::new();
        services.spawn(Service::Adopt, async {});
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let run = tokio::spawn(async move {
            let ended = services.until(shutdown).await;
            (services, ended)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!run.is_finished(), "the adopter's end ended the daemon");
        tx.send(()).unwrap();
        let (services, ended) = run.await.unwrap();
        assert!(ended.is_ok() && services.stop(&hub()).await.is_ok());

        let mut services = Services::new();
        services.spawn(Service::Control, until_stopped(services.stop_signal()));
        services.spawn(Service::Pipeline, async { Ok::<(), PipelineError>(()) });
        assert!(services.until(std::future::pending()).await.is_ok());
        assert!(services.stop(&hub()).await.is_ok());
    }

    /// The shutdown order: the clients end before the subscriptions do,
    /// and the sink flushes once the pipeline has let go of it. An error
    /// met while stopping is returned.
    #[tokio::test]
    async fn stop_drains_clients_then_pipeline_then_sink() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let note = |log: &Arc<Mutex<Vec<&'static str>>>, what| log.lock().unwrap().push(what);
        let hub = hub();
        let mut services = Services::new();
        let (mut stop, l) = (services.stop_signal(), log.clone());
        services.spawn(Service::Control, async move {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            note(&l, "client stopped");
        });
        let (mut sub, l) = (hub.subscribe(Filter { trajectory: None, kinds: vec![] }, true), log.clone());
        services.spawn(Service::Metrics, async move {
            while sub.next().await.is_some() {}
            note(&l, "subscriptions ended");
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let (mut stop, l) = (services.stop_signal(), log.clone());
        services.spawn(Service::Pipeline, async move {
            let _ = stop.wait_for(|s| *s).await;
            note(&l, "pipeline drained");
            drop(tx);
            Err::<(), _>(PipelineError::Stopped)
        });
        let l = log.clone();
        services.spawn_thread(
            Service::Sink,
            std::thread::spawn(move || -> io::Result<()> {
                while rx.blocking_recv().is_some() {}
                note(&l, "sink flushed");
                Ok(())
            }),
        );
        let err = services.stop(&hub).await.unwrap_err();
        assert!(matches!(err, ServiceError::Failed { service: Service::Pipeline, .. }), "{err:?}");
        let log = log.lock().unwrap().clone();
        let at = |what| log.iter().position(|l| *l == what).unwrap_or_else(|| panic!("{what}: {log:?}"));
        assert!(at("client stopped") < at("subscriptions ended"), "{log:?}");
        assert!(at("pipeline drained") < at("sink flushed"), "{log:?}");
    }
}
