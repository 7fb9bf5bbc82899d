//! The aya boundary: load the embedded object, attach every hook, hand out
//! the maps. [`Loaded`] is the single owner of the programs and their links;
//! dropping it detaches everything.

use std::{fs::File, path::Path};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, TracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use monitor_common::{
    maps::{KernelOffsets, RuntimeConfig, TrajectoryValue},
    names,
};

use crate::hooks::{Attach, Hook, HookClass, HOOKS};

/// The kernel programs, built by `build.rs` from `monitor-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] EbpfError),
    #[error("the eBPF object has no program {program} (hook {hook})")]
    MissingProgram { hook: &'static str, program: &'static str },
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("hook {hook}: loading program {program} failed: {source}")]
    Load {
        hook: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("hook {hook}: attaching program {program} failed: {source}")]
    Attach {
        hook: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open cgroup {path} to attach socket hooks: {source}")]
    CgroupOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Inputs to [`load`].
pub struct LoadOptions<'a> {
    pub offsets: KernelOffsets,
    pub ringbuf_bytes: u32,
    pub wakeup_bytes: u64,
    /// The trajectory parent cgroup: socket hooks attach here.
    pub cgroup_parent: &'a Path,
}

/// State of one hook after startup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HookState {
    pub hook: &'static str,
    pub class: HookClass,
    /// `observe` when attached, `unavailable` otherwise.
    pub mechanism: &'static str,
    pub detail: String,
}

/// The maps the event pipeline owns.
pub struct PipelineMaps {
    pub events: RingBuf<MapData>,
    pub trajectories: HashMap<MapData, u64, TrajectoryValue>,
    pub trajectory_losses: PerCpuHashMap<MapData, u64, u64>,
    pub config: Array<MapData, RuntimeConfig>,
    pub losses: PerCpuArray<MapData, u64>,
}

pub struct Loaded {
    // Owns the programs and their links; dropping detaches.
    _ebpf: Ebpf,
    pub hooks: Vec<HookState>,
}

pub fn load(opts: &LoadOptions<'_>) -> Result<(Loaded, PipelineMaps), LoadError> {
    let mut ebpf = EbpfLoader::new()
        .override_global(names::GLOBAL_OFFSETS, &opts.offsets, true)
        .override_global(names::GLOBAL_WAKEUP_BYTES, &opts.wakeup_bytes, true)
        .map_max_entries(names::MAP_EVENTS, opts.ringbuf_bytes)
        .load(EBPF_OBJECT)
        .map_err(LoadError::Object)?;

    let cgroup = File::open(opts.cgroup_parent)
        .map_err(|source| LoadError::CgroupOpen { path: opts.cgroup_parent.display().to_string(), source })?;

    let mut hooks = Vec::with_capacity(HOOKS.len());
    for hook in HOOKS {
        hooks.push(attach(&mut ebpf, hook, &cgroup)?);
    }

    let maps = PipelineMaps {
        events: RingBuf::try_from(take(&mut ebpf, names::MAP_EVENTS)?).map_err(map_err(names::MAP_EVENTS))?,
        trajectories: HashMap::try_from(take(&mut ebpf, names::MAP_TRAJECTORIES)?)
            .map_err(map_err(names::MAP_TRAJECTORIES))?,
        trajectory_losses: PerCpuHashMap::try_from(take(&mut ebpf, names::MAP_TRAJECTORY_LOSSES)?)
            .map_err(map_err(names::MAP_TRAJECTORY_LOSSES))?,
        config: Array::try_from(take(&mut ebpf, names::MAP_CONFIG)?).map_err(map_err(names::MAP_CONFIG))?,
        losses: PerCpuArray::try_from(take(&mut ebpf, names::MAP_LOSSES)?).map_err(map_err(names::MAP_LOSSES))?,
    };
    Ok((Loaded { _ebpf: ebpf, hooks }, maps))
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { map, source }
}

fn attach(ebpf: &mut Ebpf, hook: &Hook, cgroup: &File) -> Result<HookState, LoadError> {
    let program =
        ebpf.program_mut(hook.program).ok_or(LoadError::MissingProgram { hook: hook.name, program: hook.program })?;
    let load_err = |source| LoadError::Load { hook: hook.name, program: hook.program, source };
    let attach_err = |source| LoadError::Attach { hook: hook.name, program: hook.program, source };
    match hook.attach {
        Attach::Tracepoint { category, name } => {
            if hook.optional && !tracepoint_exists(category, name) {
                return Ok(HookState {
                    hook: hook.name,
                    class: hook.class,
                    mechanism: "unavailable",
                    detail: format!("tracepoint {category}/{name} does not exist on this kernel"),
                });
            }
            let tp: &mut TracePoint = program.try_into().map_err(load_err)?;
            tp.load().map_err(load_err)?;
            tp.attach(category, name).map_err(attach_err)?;
            Ok(HookState {
                hook: hook.name,
                class: hook.class,
                mechanism: "observe",
                detail: format!("tracepoint {category}/{name}"),
            })
        }
        Attach::CgroupSockAddr => {
            let prog: &mut CgroupSockAddr = program.try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
            // On the kernels we support (ring buffers need 5.8) aya attaches
            // through a bpf_link, which the kernel always treats as
            // multi-attach: other cgroup programs (systemd's, another
            // daemon's) keep running beside ours. The link API rejects the
            // explicit ALLOW_MULTI flag, hence the default mode here.
            prog.attach(cgroup, CgroupAttachMode::default()).map_err(attach_err)?;
            Ok(HookState {
                hook: hook.name,
                class: hook.class,
                mechanism: "observe",
                detail: "cgroup sock_addr hook on the trajectory parent cgroup".into(),
            })
        }
    }
}

fn tracepoint_exists(category: &str, name: &str) -> bool {
    ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
        .iter()
        .any(|root| Path::new(root).join(category).join(name).exists())
}
