//! The pipeline on a fake kernel ([`super::fake`]) and the policy maps in
//! memory: open, step, reload and close of trajectories and the records
//! they produce, and the planning of a take-over after a restart. No root,
//! no kernel.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use monitor_common::{
    maps::{RuntimeConfig, TrajectoryValue},
    policy::{RULE_BUILTIN_TAMPER, RULE_DEFAULT},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    decode::{Decoded, RawVerdict},
    fake::FakeKernel,
    handle::PipelineHandle,
    pipeline::{OpenSpec, Owner, Pipeline, PipelineError},
    resume::{plan_resume, Fate, Survey},
    state::{Found, Progress, Saved, STATE_FORMAT},
};
use crate::{
    enforce::{Binding, Enforcer, MemoryPolicyMaps},
    metrics::Metrics,
    policy::PolicySet,
    record::{Body, Process, Record},
    sinks::{Batch, Bus, Hub},
    vocab::{EndReason, GapReason, Origin},
};

fn policies(workspace_action: &str) -> PolicySet {
    let yaml = format!(
        "name: p\nmode: enforce\ndefaults: {{file: deny, exec: allow, network: deny}}\n\
         rules:\n  file:\n    - path: ${{WORKSPACE}}/\n      access: read-write\n      action: {workspace_action}\n"
    );
    PolicySet::from_sources(&[("p.yaml".into(), yaml)]).unwrap_or_else(|d| panic!("{d:#?}"))
}

/// A running pipeline on a fake kernel, and what it publishes.
struct Running {
    kernel: FakeKernel,
    policy_maps: MemoryPolicyMaps,
    handle: PipelineHandle,
    records: mpsc::Receiver<Batch>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), PipelineError>>,
}

impl Running {
    fn start() -> Running {
        let kernel = FakeKernel::default();
        let policy_maps = MemoryPolicyMaps::default();
        let enforcer = Enforcer::new(policy_maps.clone(), policies("allow"));
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.subscriber_dropped.clone(), metrics.subscribers.clone()));
        let (bus, records) = Bus::new(hub);
        let pipeline = Pipeline::new(kernel.kernel(), enforcer, RuntimeConfig::default(), bus, metrics, None, false);
        let (handle, commands) = PipelineHandle::channel();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(pipeline.run(commands, stopped));
        Running { kernel, policy_maps, handle, records, stop, task }
    }

    async fn open(&self, id: &str, cgroup_id: u64) {
        let spec = OpenSpec {
            id: id.into(),
            cgroup: PathBuf::from(format!("/nonexistent/agent-monitor-unit/{id}")),
            cgroup_id,
            level: 3,
            command: vec!["agent".into()],
            client: Process::default(),
            binding: Binding { policy: "p".into(), vars: [("WORKSPACE".to_owned(), "/w".to_owned())].into() },
            origin: Origin::Run,
            agent: None,
            compartment: Box::default(),
            landlock: None,
        };
        self.handle.open(spec).await.unwrap();
    }

    /// A record as the kernel takes it: with the binding it reads now.
    fn exec(&self, cgroup_id: u64, argv0: &str) {
        let bound = self.kernel.state().bindings[&cgroup_id];
        self.kernel.submit(Decoded {
            ts_boot_ns: crate::clock::boottime_ns(),
            trajectory_cgroup: cgroup_id,
            step: bound.step,
            process: Process { pid: Some(7), ..Process::default() },
            body: Body::Exec {
                filename: argv0.into(),
                path: Some(argv0.into()),
                argv: vec![argv0.into()],
                filename_truncated: false,
                argv_truncated: false,
                mapping: false,
            },
            verdict: RawVerdict {
                policy: bound.policy,
                rule_id: RULE_DEFAULT,
                action: Some("allow"),
                decision: Some("allow"),
                mechanism: None,
            },
        });
    }

    /// Stops the pipeline and returns every record it published.
    async fn stop(mut self) -> Vec<Record> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
        let mut all = Vec::new();
        while let Ok(batch) = self.records.try_recv() {
            all.extend(batch.iter().cloned());
        }
        all
    }
}

fn kinds(records: &[Record], trajectory: &str) -> Vec<(u64, &'static str, Option<u32>)> {
    records
        .iter()
        .filter(|r| &*r.trajectory == trajectory)
        .map(|r| (r.seq, r.body.kind(), r.step.as_ref().map(|s| s.id)))
        .collect()
}

#[tokio::test]
async fn open_step_and_close_bind_the_kernel_and_number_the_records() {
    let p = Running::start();
    p.open("t1", 42).await;
    let bound = p.kernel.state().bindings[&42];
    assert_eq!(bound.step, 0);
    assert_eq!(p.kernel.state().trajectory_losses.get(&42), Some(&0), "its loss counter starts with it");
    assert_eq!(p.kernel.state().config.trajectory_levels, 1 << 3);
    assert!(p.policy_maps.maps().instances().contains(&bound.policy), "its policy instance is written");
    assert!(matches!(open_again(&p.handle, "t1", 43).await, Err(PipelineError::Duplicate(_))));

    p.exec(42, "/bin/true");
    assert_eq!(p.handle.step("t1".into(), "build".into(), None).await.unwrap(), 1);
    assert_eq!(p.kernel.state().bindings[&42], TrajectoryValue { step: 1, ..bound });
    p.exec(42, "/bin/make");
    assert!(matches!(p.handle.step("t1".into(), "x".into(), Some(0)).await, Err(PipelineError::Step(_))));
    assert!(matches!(p.handle.step("nope".into(), "x".into(), None).await, Err(PipelineError::UnknownTrajectory(_))));
    let listed = p.handle.list().await.unwrap();
    assert_eq!((listed.len(), listed[0].records, listed[0].policy.as_str()), (1, 4, "p"));

    p.handle.close(42, EndReason::Exited).await.unwrap();
    assert!(p.handle.list().await.unwrap().is_empty(), "closed once its close is handled");
    assert!(p.kernel.state().bindings.is_empty());
    assert!(p.kernel.state().trajectory_losses.is_empty());
    assert_eq!(p.kernel.state().config.trajectory_levels, 0);
    let records = p.stop().await;
    assert_eq!(
        kinds(&records, "t1"),
        [
            (1, "trajectory_start", None),
            (2, "exec", None),
            (3, "step", Some(1)),
            (4, "exec", Some(1)),
            (5, "trajectory_end", Some(1))
        ]
    );
    let exec = &records[3];
    assert_eq!(exec.step.as_ref().unwrap().name.as_ref(), "build");
    let verdict = exec.verdict.as_ref().unwrap();
    assert_eq!((verdict.policy.as_deref(), verdict.rule.as_deref()), (Some("p"), Some("default")));
    let Body::TrajectoryEnd { reason, records: n, lost, .. } = &records[4].body else { panic!("{:?}", records[4]) };
    assert_eq!((*reason, *n, *lost), (EndReason::Exited, 4, 0));
}

/// A record whose cgroup no trajectory has is counted, not published.
#[tokio::test]
async fn a_record_of_no_trajectory_is_counted_as_lost() {
    let p = Running::start();
    p.open("t1", 42).await;
    p.kernel.state().bindings.insert(99, TrajectoryValue { policy: 0, step: 0 });
    p.exec(99, "/bin/stray");
    p.handle.list().await.unwrap();
    let records = p.stop().await;
    assert!(records.iter().all(|r| &*r.trajectory == "t1"));
}

/// Losses the kernel counts for a trajectory become a `gap` record.
#[tokio::test]
async fn kernel_losses_become_a_gap_record() {
    let p = Running::start();
    p.open("t1", 42).await;
    *p.kernel.state().trajectory_losses.get_mut(&42).unwrap() = 5;
    p.handle.close(42, EndReason::Exited).await.unwrap();
    p.handle.list().await.unwrap();
    let records = p.stop().await;
    let gap = records.iter().find(|r| r.body.kind() == "gap").expect("a gap record");
    assert_eq!(gap.body, Body::Gap { lost: 5, reason: GapReason::RingbufFull, down_ns: None, unwritten: None });
    let Body::TrajectoryEnd { lost, .. } = records.last().unwrap().body else { panic!() };
    assert_eq!(lost, 5);
}

/// A reload flips every binding to a new instance in one update each; the
/// old instances stay written until retired (the enforcer's tests show
/// their removal), and records name the rules that judged them.
#[tokio::test]
async fn reload_rebinds_every_trajectory_to_a_new_instance() {
    let p = Running::start();
    p.open("t1", 42).await;
    p.open("t2", 43).await;
    let before = p.kernel.state().bindings.clone();
    p.exec(42, "/bin/before");
    p.handle.step("t1".into(), "s".into(), None).await.unwrap();
    p.handle.reload(policies("deny")).await.unwrap();
    let after = p.kernel.state().bindings.clone();
    for id in [42, 43] {
        assert_ne!(after[&id].policy, before[&id].policy);
        assert!(p.policy_maps.maps().instances().contains(&before[&id].policy), "retired, not yet removed");
    }
    assert_eq!(after[&42].step, 1, "the step survives the rebind");
    p.exec(42, "/bin/after");
    // A reload that cannot compile changes nothing.
    let broken = PolicySet::from_sources(&[(
        "q.yaml".into(),
        "name: q\nmode: enforce\ndefaults: {file: allow, exec: allow, network: allow}\n".into(),
    )])
    .unwrap();
    assert!(matches!(p.handle.reload(broken).await, Err(PipelineError::Policy(_))));
    assert_eq!(p.kernel.state().bindings, after);
    let records = p.stop().await;
    let execs: Vec<&Record> = records.iter().filter(|r| r.body.kind() == "exec").collect();
    assert_eq!(execs.len(), 2);
    assert!(execs.iter().all(|r| r.verdict.as_ref().unwrap().policy.as_deref() == Some("p")));
}

/// A record the daemon makes for a trajectory (here the control server's
/// refusal) is built from what `owner` answers for a cgroup below it, and
/// published in its order with the verdict named like a kernel record's.
#[tokio::test]
async fn a_daemon_record_for_the_owner_of_a_cgroup_joins_its_stream() {
    let p = Running::start();
    p.open("t1", 42).await;
    p.handle.step("t1".into(), "build".into(), None).await.unwrap();
    let below = PathBuf::from("/nonexistent/agent-monitor-unit/t1/worker");
    let owner = p.handle.owner(below).await.unwrap().expect("t1 owns the cgroups below its own");
    let bound = p.kernel.state().bindings[&42];
    assert_eq!(owner, Owner { id: "t1".into(), cgroup_id: 42, instance: bound.policy, step: 1 });
    assert_eq!(p.handle.owner("/nonexistent/agent-monitor-unit/t10".into()).await.unwrap(), None);
    p.handle
        .publish(Decoded {
            ts_boot_ns: crate::clock::boottime_ns(),
            trajectory_cgroup: owner.cgroup_id,
            step: owner.step,
            process: Process { pid: Some(7), ..Process::default() },
            body: Body::Tamper {
                op: "control",
                target_pid: None,
                arg: 0,
                request: Some("status"),
                target_trajectory: None,
            },
            verdict: RawVerdict {
                policy: owner.instance,
                rule_id: RULE_BUILTIN_TAMPER,
                action: Some("deny"),
                decision: Some("deny"),
                mechanism: None,
            },
        })
        .await;
    p.handle.list().await.unwrap();
    let records = p.stop().await;
    assert_eq!(
        kinds(&records, "t1")[..3],
        [(1, "trajectory_start", None), (2, "step", Some(1)), (3, "tamper", Some(1))]
    );
    let verdict = records[2].verdict.as_ref().unwrap();
    assert_eq!(
        (verdict.decision, verdict.policy.as_deref(), verdict.rule.as_deref()),
        (Some("deny"), Some("p"), Some("builtin:tamper"))
    );
}

/// Without pins kept, stopping the pipeline ends every trajectory.
#[tokio::test]
async fn a_stop_without_kept_pins_ends_each_trajectory() {
    let p = Running::start();
    p.open("t1", 42).await;
    let records = p.stop().await;
    let Body::TrajectoryEnd { reason, .. } = records.last().unwrap().body else { panic!() };
    assert_eq!(reason, EndReason::DaemonShutdown);
}

/// Opens `id` on a cgroup id of its own, for the duplicate check.
async fn open_again(handle: &PipelineHandle, id: &str, cgroup_id: u64) -> Result<(), PipelineError> {
    handle
        .open(OpenSpec {
            id: id.into(),
            cgroup: PathBuf::from("/nonexistent/other"),
            cgroup_id,
            level: 3,
            command: Vec::new(),
            client: Process::default(),
            binding: Binding { policy: "p".into(), vars: Default::default() },
            compartment: Box::default(),
            origin: Origin::Run,
            agent: None,
            landlock: None,
        })
        .await
        .map(drop)
}

// Resume planning: one case per situation the continuity tests cover.

fn found(id: &str, cgroup_id: u64, origin: Origin, progress: Progress) -> Found {
    Found {
        saved: Saved {
            format: STATE_FORMAT,
            id: id.into(),
            cgroup: PathBuf::from(format!("/sys/fs/cgroup/agents/{id}")),
            cgroup_id,
            level: 2,
            origin,
            policy: "p".into(),
            vars: Default::default(),
            started_boot_ns: 1,
            rules_digest: 77,
            agent: None,
            compartment: None,
            landlock: None,
        },
        progress,
        steps: vec![(1, "a".into()), (2, "b".into())],
    }
}

const PROGRESS: Progress = Progress { next_seq: 10, lost_reported: 3, alive_boot_ns: 5 };
const ALIVE: Survey = Survey {
    bound: Some(TrajectoryValue { policy: 4, step: 2 }),
    counted: Some(8),
    exists: true,
    populated: Some(true),
};

/// Same layout: the maps survived, so the kernel's binding, step and loss
/// counter carry on; the gap reports what it counted since the last report.
#[test]
fn resume_on_the_same_layout_continues_from_the_kernel() {
    let f = [found("t1", 42, Origin::Run, PROGRESS)];
    let written = HashMap::from([("t1".to_owned(), 7)]);
    let plan = plan_resume(&f, &[ALIVE], &[], false, Some(&written));
    assert_eq!(plan.keep_instances, [(4, "p".to_owned(), 77)]);
    let t = &plan.trajectories[0];
    assert_eq!(t.fate, Fate::Resume);
    assert!(t.rebind && !t.new_counter);
    assert_eq!((t.step, t.next_seq, t.lost_reported, t.lost_since), (2, 10, 3, 5));
    assert_eq!(t.previous_reported, None);
    assert_eq!(t.unwritten, Some(2), "numbered 1..=9, the sink wrote 7");
}

/// Another layout: new maps, nothing bound, no counter. The step comes from
/// the saved steps, a counter starts at zero, and the previous layout's
/// saved report is kept to count its drop counter against.
#[test]
fn resume_on_another_layout_starts_the_kernel_side_afresh() {
    let f = [found("t1", 42, Origin::Run, PROGRESS)];
    let s = Survey { bound: None, counted: None, ..ALIVE };
    let plan = plan_resume(&f, &[s], &[], false, None);
    assert!(plan.keep_instances.is_empty());
    let t = &plan.trajectories[0];
    assert_eq!(t.fate, Fate::Resume);
    assert!(t.rebind && t.new_counter);
    assert_eq!((t.step, t.lost_reported, t.lost_since), (2, 0, 0));
    assert_eq!(t.previous_reported, Some(3));
    assert_eq!(t.unwritten, None);
}

/// Bindings no state file explains go, unless a state file could not be
/// read: then they may be its trajectory's, and stay judging.
#[test]
fn unexplained_bindings_go_unless_a_state_file_is_unreadable() {
    let f = [found("t1", 42, Origin::Run, PROGRESS)];
    let stray = [(99, Some(TrajectoryValue { policy: 9, step: 0 }))];
    let plan = plan_resume(&f, &[ALIVE], &stray, false, None);
    assert_eq!(plan.unbind, [99]);
    assert_eq!(plan.keep_instances.len(), 1);
    let plan = plan_resume(&f, &[ALIVE], &stray, true, None);
    assert!(plan.unbind.is_empty());
    assert_eq!(plan.keep_instances[1], (9, "(unreadable state)".to_owned(), 0));
    // Nothing found at all: the same rule.
    let plan = plan_resume(&[], &[], &stray, true, None);
    assert_eq!((plan.unbind.len(), plan.keep_instances.len()), (0, 1));
}

/// A `run` cgroup emptied while no daemon ran ends with `exited` (and its
/// cgroup is removed); an adopted one stays open (processes may join it);
/// a cgroup that is gone ends with `cgroup_removed` and is not rebound.
#[test]
fn resume_closes_what_ended_while_down() {
    let f = [
        found("run", 42, Origin::Run, PROGRESS),
        found("adopted", 43, Origin::Adopt, PROGRESS),
        found("gone", 44, Origin::Run, PROGRESS),
    ];
    let empty = Survey { populated: Some(false), ..ALIVE };
    let gone = Survey { exists: false, populated: None, ..ALIVE };
    let plan = plan_resume(&f, &[empty, empty, gone], &[], false, None);
    let fates: Vec<(Fate, bool)> = plan.trajectories.iter().map(|t| (t.fate, t.rebind)).collect();
    assert_eq!(
        fates,
        [
            (Fate::Close { reason: EndReason::Exited, remove_cgroup: true }, true),
            (Fate::Resume, true),
            (Fate::Close { reason: EndReason::CgroupRemoved, remove_cgroup: false }, false),
        ]
    );
    // Its gap still reports what the kernel counted before it ended.
    assert_eq!(plan.trajectories[2].lost_since, 5);
}

/// On a fake kernel: a saved trajectory whose cgroup is gone gets its
/// restart gap and ends; the stray binding of a previous daemon is removed.
#[tokio::test]
async fn resume_applies_the_plan() {
    let kernel = FakeKernel::default();
    kernel.state().bindings.insert(44, TrajectoryValue { policy: 4, step: 2 });
    kernel.state().bindings.insert(99, TrajectoryValue { policy: 9, step: 0 });
    kernel.state().trajectory_losses.insert(44, 8);
    let metrics = Metrics::new();
    let hub = Arc::new(Hub::new(metrics.subscriber_dropped.clone(), metrics.subscribers.clone()));
    let (bus, mut records) = Bus::new(hub);
    let enforcer = Enforcer::new(MemoryPolicyMaps::default(), policies("allow"));
    let mut pipeline = Pipeline::new(kernel.kernel(), enforcer, RuntimeConfig::default(), bus, metrics, None, true);
    let resumed =
        pipeline.resume(vec![found("gone", 44, Origin::Run, PROGRESS)], "p", |_, _| Ok(()), &[], false, None).await;
    assert!(resumed.is_empty());
    assert!(kernel.state().bindings.is_empty(), "{:?}", kernel.state().bindings);
    let mut all = Vec::new();
    while let Ok(batch) = records.try_recv() {
        all.extend(batch.iter().cloned());
    }
    assert_eq!(kinds(&all, "gone"), [(10, "gap", Some(2)), (11, "trajectory_end", Some(2))]);
    let Body::Gap { lost, reason, .. } = &all[0].body else { panic!() };
    assert_eq!((*lost, *reason), (5, GapReason::DaemonRestart));
    let Body::TrajectoryEnd { reason, .. } = &all[1].body else { panic!() };
    assert_eq!(*reason, EndReason::CgroupRemoved);
}
