//! The aya boundary: load the embedded object, attach every hook, hand out
//! the maps. [`Loaded`] is the single owner of the programs and their links;
//! dropping it detaches everything.

use std::{
    fs::File,
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        cgroup_sock::CgroupSockLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        links::{FdLink, PinnedLink},
        lsm::LsmLinkId,
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, ProgramError, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfError, EbpfLoader,
};
use monitor_common::{
    maps::{runtime, DnsSlot, KernelOffsets, LsmProbe, RuntimeConfig, TrajectoryValue},
    names,
    policy::{ExecValue, FileValue, InodeKey, Learned4Key, Learned6Key, LearnedValue, NetValue, PolicyConfig},
};

use crate::{
    errors::chain,
    hooks::{
        Attach, Hook, HookClass, Protection, HOOKS, LSM_HOOKS, MAPPING_TRACEPOINTS, MUTATE_TRACEPOINTS,
        OPEN_TRACEPOINTS, PROTECTIONS,
    },
    mounts,
    pins::{PinDir, PINNED_MAPS},
    vocab::{Mechanism, RuleClass},
};

/// The kernel programs, built by `build.rs` from `monitor-ebpf`.
pub(crate) static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));

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
    /// Offsets and the daemon's pid for the tamper hooks.
    pub tamper: monitor_common::tamper::TamperConfig,
    /// Where maps are pinned (and reused from) and links pinned; `None`:
    /// nothing outlives the daemon.
    pub pins: Option<&'a PinDir>,
}

/// State of one built-in tamper protection after startup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProtectionState {
    pub protection: &'static str,
    pub mechanism: Mechanism,
    pub detail: String,
}

/// State of one hook after startup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HookState {
    pub hook: &'static str,
    pub class: HookClass,
    pub mechanism: Mechanism,
    pub detail: String,
}

impl HookState {
    fn new(hook: &Hook, mechanism: Mechanism, detail: String) -> HookState {
        HookState { hook: hook.name, class: hook.class, mechanism, detail }
    }
}

/// The mechanism enforcing each rule class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Enforcement {
    pub file: Mechanism,
    pub exec: Mechanism,
    pub network: Mechanism,
}

impl Enforcement {
    /// Each rule class with its mechanism, in the order policies list them.
    pub fn per_class(self) -> [(RuleClass, Mechanism); 3] {
        [(RuleClass::File, self.file), (RuleClass::Exec, self.exec), (RuleClass::Network, self.network)]
    }
}

/// The policy maps, written by `crate::enforce`.
pub struct PolicyMapHandles {
    pub config: Array<MapData, PolicyConfig>,
    pub file: LpmTrie<MapData, [u8; 256], FileValue>,
    pub exec: LpmTrie<MapData, [u8; 256], ExecValue>,
    pub net4: LpmTrie<MapData, [u8; 8], NetValue>,
    pub net6: LpmTrie<MapData, [u8; 20], NetValue>,
    pub inodes: HashMap<MapData, InodeKey, FileValue>,
}

/// The maps the event pipeline owns.
pub struct PipelineMaps {
    pub events: RingBuf<MapData>,
    pub trajectories: HashMap<MapData, u64, TrajectoryValue>,
    pub trajectory_losses: PerCpuHashMap<MapData, u64, u64>,
    pub config: Array<MapData, RuntimeConfig>,
    pub losses: PerCpuArray<MapData, u64>,
}

/// The kernel maps of DNS egress the resolver uses (`dns::learn`).
pub struct DnsMaps {
    pub slots: Array<MapData, DnsSlot>,
    /// `dns_bound_key` -> slot, for sockets bound before the redirect.
    pub bound: HashMap<MapData, u64, u32>,
    pub learned4: HashMap<MapData, Learned4Key, LearnedValue>,
    pub learned6: HashMap<MapData, Learned6Key, LearnedValue>,
}

pub struct Loaded {
    // Owns the programs and the links that are not pinned; dropping
    // detaches those. Pinned links stay attached until their pin goes.
    _ebpf: Ebpf,
    /// Links pinned under the pin directory; their fds held keep each
    /// link attached until the daemon exits even once its pin is removed.
    _pinned: Vec<PinnedLink>,
    /// Hooks whose link could not be pinned: they end with the daemon.
    pub unpinned: Vec<Unpinned>,
    pub hooks: Vec<HookState>,
    pub enforcement: Enforcement,
    /// The built-in tamper protections besides file writes.
    pub protections: Vec<ProtectionState>,
    /// [`RuntimeConfig::flags`] the pipeline must keep writing.
    pub runtime_flags: u64,
    /// How long each start-up phase took, in order (logged by the daemon).
    pub timings: Vec<(&'static str, Duration)>,
}

/// Loads the object, attaches every hook (BPF LSM where it runs, the kill
/// fallbacks elsewhere), pins the links where asked, and hands out the
/// maps.
pub fn load(opts: &LoadOptions<'_>) -> Result<(Loaded, PipelineMaps, PolicyMapHandles, DnsMaps), LoadError> {
    let mut timings = Vec::new();
    let mut phase = Instant::now();
    let mut lap = |name: &'static str| {
        timings.push((name, phase.elapsed()));
        phase = Instant::now();
    };
    // Parses the kernel's BTF (aya's copy, for relocations).
    let mut loader = EbpfLoader::new();
    lap("loader_btf");
    configure(&mut loader, opts);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(LoadError::Object)?;
    lap("object_load");
    let mut links = Vec::new();

    let cgroup = File::open(opts.cgroup_parent)
        .map_err(|source| LoadError::CgroupOpen { path: opts.cgroup_parent.display().to_string(), source })?;

    let mut hooks = Vec::new();
    for hook in HOOKS {
        hooks.push(attach(&mut ebpf, hook, &cgroup, &mut links)?);
    }
    lap("attach");
    // The strongest mechanism for file and exec rules: BPF LSM if its
    // programs load, attach and demonstrably run; else the tracepoints' kill.
    let (lsm, btf) = probe_lsm(&mut ebpf, &mut links);
    let lsm_active = lsm.iter().all(|h| h.mechanism == Mechanism::LsmDeny);
    lap("lsm_probe");
    let runtime_flags = if lsm_active { runtime::LSM_FILE | runtime::LSM_EXEC } else { 0 };
    // The pipeline writes `runtime_flags` into CONFIG with the first
    // trajectory; until then no task is a member, so nothing is judged.
    if !lsm_active {
        for hook in OPEN_TRACEPOINTS.iter().chain(MAPPING_TRACEPOINTS).chain(MUTATE_TRACEPOINTS) {
            hooks.push(attach(&mut ebpf, hook, &cgroup, &mut links)?);
        }
    }
    lap("open_tracepoints");
    hooks.extend(lsm);
    name_enforcers(&mut hooks, lsm_active);
    let btf = btf.filter(|_| lsm_active);
    let protections =
        PROTECTIONS.iter().map(|p| protect(&mut ebpf, p, btf.as_ref(), &cgroup, &mut hooks, &mut links)).collect();
    lap("protections");
    let (pinned, unpinned) = match opts.pins {
        Some(pins) => pin_links(&mut ebpf, links, pins),
        None => (Vec::new(), Vec::new()),
    };
    lap("pin_links");
    // Never claim a hook whose link was lost on the way to its pin.
    for u in unpinned.iter().filter(|u| u.detached) {
        for h in hooks.iter_mut().filter(|h| h.hook == u.hook) {
            h.mechanism = Mechanism::Unavailable;
            h.detail = u.reason.clone();
        }
    }
    let file_exec = if lsm_active { Mechanism::LsmDeny } else { Mechanism::Kill };
    let enforcement = Enforcement { file: file_exec, exec: file_exec, network: Mechanism::CgroupDeny };
    let (maps, policy, dns) = take_maps(&mut ebpf)?;
    Ok((
        Loaded { _ebpf: ebpf, _pinned: pinned, unpinned, hooks, enforcement, protections, runtime_flags, timings },
        maps,
        policy,
        dns,
    ))
}

/// The object's globals (kernel offsets, wakeup threshold, tamper
/// configuration), the ring buffer's size, and where its maps are pinned.
fn configure<'a>(loader: &mut EbpfLoader<'a>, opts: &'a LoadOptions<'_>) {
    loader
        .override_global(names::GLOBAL_OFFSETS, &opts.offsets, true)
        .override_global(names::GLOBAL_WAKEUP_BYTES, &opts.wakeup_bytes, true)
        .override_global(names::GLOBAL_TAMPER, &opts.tamper, true)
        .map_max_entries(names::MAP_EVENTS, opts.ringbuf_bytes);
    if let Some(pins) = opts.pins {
        // A pinned map of this layout is reused as it is (with the state a
        // previous daemon left); a missing one is created and pinned.
        for map in PINNED_MAPS {
            loader.map_pin_path(map, pins.map_path(map));
        }
    }
}

/// Says which attached hook enforces: with BPF LSM active the tracepoints
/// only record; without it an open's exit hook and the exec hook kill.
fn name_enforcers(hooks: &mut [HookState], lsm_active: bool) {
    for h in hooks.iter_mut() {
        let judges_nothing = matches!(h.class, HookClass::Connect | HookClass::Limit);
        if h.mechanism == Mechanism::Unavailable || judges_nothing || h.hook.starts_with("lsm:") {
            continue;
        }
        if lsm_active {
            h.detail.push_str("; records only, BPF LSM enforces");
        } else if h.hook.starts_with("mutate:") {
            // Landlock refuses these calls; the tracepoints record it.
            h.detail.push_str("; records what the Landlock layer refuses");
        } else if (h.class == HookClass::Open || h.hook.starts_with("mapping:")) && !h.hook.ends_with("/exit") {
            // Entry keeps the request; its exit hook judges and kills.
            h.detail.push_str("; keeps the request for the exit hook, which enforces");
        } else {
            h.mechanism = Mechanism::Kill;
        }
    }
}

/// Loads and attaches the LSM programs and checks that the kernel calls
/// them: an open and an exec by the daemon itself must each move the
/// program's invocation counter. Any failure leaves the programs unloaded
/// and says why; the programs judge nothing until the runtime flags say so.
fn probe_lsm(ebpf: &mut Ebpf, links: &mut Vec<LinkRef>) -> (Vec<HookState>, Option<Btf>) {
    let unavailable = |why: &str| -> Vec<HookState> {
        LSM_HOOKS.iter().map(|h| HookState::new(h, Mechanism::Unavailable, why.to_owned())).collect()
    };
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => return (unavailable(&format!("cannot read kernel BTF: {e}")), None),
    };
    let probed = match attach_lsm(ebpf, &btf, LSM_HOOKS, links) {
        Ok(()) => lsm_self_test(ebpf).inspect_err(|_| unload_lsm(ebpf, LSM_HOOKS)),
        Err(e) => Err(e),
    };
    match probed {
        Ok(()) => {
            let passed = |h: &Hook| {
                let detail = format!("BPF LSM security_{}: refuses with EPERM; self-test passed", h.lsm_name());
                HookState::new(h, Mechanism::LsmDeny, detail)
            };
            (LSM_HOOKS.iter().map(passed).collect(), Some(btf))
        }
        Err(why) => (unavailable(&why), None),
    }
}

/// Attaches one tamper protection: its BPF LSM hooks where BPF LSM runs
/// (falling back if one fails to load), else its killing tracepoints.
/// Never claims more than what is attached.
fn protect(
    ebpf: &mut Ebpf,
    p: &Protection,
    lsm: Option<&Btf>,
    cgroup: &File,
    hooks: &mut Vec<HookState>,
    links: &mut Vec<LinkRef>,
) -> ProtectionState {
    let state = |mechanism, detail: String| ProtectionState { protection: p.name, mechanism, detail };
    let mut why_not_lsm = String::from("no BPF LSM on this kernel");
    if let Some(btf) = lsm {
        if p.lsm.is_empty() {
            return state(Mechanism::LsmDeny, p.lsm_scope.into());
        }
        match attach_lsm(ebpf, btf, p.lsm, links) {
            Ok(()) => {
                for h in p.lsm {
                    let detail = format!("BPF LSM security_{}: tamper protection {}", h.lsm_name(), p.name);
                    hooks.push(HookState::new(h, Mechanism::LsmDeny, detail));
                }
                return state(Mechanism::LsmDeny, p.lsm_scope.into());
            }
            Err(e) => why_not_lsm = e,
        }
    }
    if p.fallback.is_empty() {
        return state(Mechanism::Unavailable, format!("{why_not_lsm}: {}", p.fallback_scope));
    }
    let mut missing = Vec::new();
    for h in p.fallback {
        match attach(ebpf, h, cgroup, links) {
            Ok(mut st) => {
                if st.mechanism == Mechanism::Unavailable {
                    missing.push(h.name);
                } else {
                    st.mechanism = Mechanism::Kill;
                    st.detail.push_str(&format!("; tamper protection {}: kills the caller", p.name));
                }
                hooks.push(st);
            }
            Err(e) => {
                missing.push(h.name);
                hooks.push(HookState::new(h, Mechanism::Unavailable, chain(&e)));
            }
        }
    }
    let mut detail = format!("{why_not_lsm}; {}", p.fallback_scope);
    if !missing.is_empty() {
        detail.push_str(&format!(" (not attached: {})", missing.join(", ")));
    }
    state(Mechanism::Kill, detail)
}

/// Loads and attaches BPF LSM programs; on any failure, unloads them all
/// and says which failed and why.
fn attach_lsm(ebpf: &mut Ebpf, btf: &Btf, hooks: &'static [Hook], links: &mut Vec<LinkRef>) -> Result<(), String> {
    for hook in hooks {
        let Attach::Lsm { name } = hook.attach else { continue };
        let attached = (|| -> Result<(), String> {
            let prog: &mut Lsm = ebpf
                .program_mut(hook.program)
                .ok_or("program missing from the object")?
                .try_into()
                .map_err(|e: ProgramError| e.to_string())?;
            prog.load(name, btf).map_err(|e| format!("load failed: {}", chain(&e)))?;
            let id = prog.attach().map_err(|e| format!("attach failed: {}", chain(&e)))?;
            links.push(LinkRef::Lsm(hook, id));
            Ok(())
        })();
        if let Err(e) = attached {
            unload_lsm(ebpf, hooks);
            return Err(format!("{}: {e}", hook.name));
        }
    }
    Ok(())
}

/// Unloads the programs of `hooks` that are loaded, detaching them.
fn unload_lsm(ebpf: &mut Ebpf, hooks: &[Hook]) {
    for hook in hooks {
        let lsm: Option<&mut Lsm> = ebpf.program_mut(hook.program).and_then(|p| p.try_into().ok());
        if let Some(p) = lsm {
            let _ = p.unload();
        }
    }
}

/// Triggers `file_open` and `bprm_check_security` and reads the programs'
/// invocation counters.
fn lsm_self_test(ebpf: &mut Ebpf) -> Result<(), String> {
    let counts = |ebpf: &mut Ebpf| -> Result<[u64; 2], String> {
        let map = ebpf.map_mut(names::MAP_LSM_PROBE).ok_or("no LSM probe map")?;
        let probe: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map).map_err(|e| e.to_string())?;
        let sum = |i: LsmProbe| probe.get(&(i as u32), 0).map(|v| v.iter().sum::<u64>()).map_err(|e| e.to_string());
        Ok([sum(LsmProbe::FileOpen)?, sum(LsmProbe::BprmCheck)?])
    };
    let before = counts(ebpf)?;
    let _ = File::open("/proc/self/stat");
    let exe = std::env::current_exe().map_err(|e| format!("self-test: {e}"))?;
    let _ = std::process::Command::new(exe)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let after = counts(ebpf)?;
    if after[0] > before[0] && after[1] > before[1] {
        Ok(())
    } else {
        Err("the LSM programs attached but the kernel never called them: BPF LSM is built but `bpf` is not in the \
             active LSM list (/sys/kernel/security/lsm; add it to the lsm= boot parameter)"
            .into())
    }
}

/// Takes the maps the daemon keeps using out of the object.
fn take_maps(ebpf: &mut Ebpf) -> Result<(PipelineMaps, PolicyMapHandles, DnsMaps), LoadError> {
    let policy = PolicyMapHandles {
        config: take(ebpf, names::MAP_POLICY_CONFIG)?,
        file: take(ebpf, names::MAP_POLICY_FILE)?,
        exec: take(ebpf, names::MAP_POLICY_EXEC)?,
        net4: take(ebpf, names::MAP_POLICY_NET4)?,
        net6: take(ebpf, names::MAP_POLICY_NET6)?,
        inodes: take(ebpf, names::MAP_POLICY_INODES)?,
    };
    let maps = PipelineMaps {
        events: take(ebpf, names::MAP_EVENTS)?,
        trajectories: take(ebpf, names::MAP_TRAJECTORIES)?,
        trajectory_losses: take(ebpf, names::MAP_TRAJECTORY_LOSSES)?,
        config: take(ebpf, names::MAP_CONFIG)?,
        losses: take(ebpf, names::MAP_LOSSES)?,
    };
    let dns = DnsMaps {
        slots: take(ebpf, names::MAP_DNS_SLOTS)?,
        bound: take(ebpf, names::MAP_DNS_BOUND)?,
        learned4: take(ebpf, names::MAP_LEARNED4)?,
        learned6: take(ebpf, names::MAP_LEARNED6)?,
    };
    Ok((maps, policy, dns))
}

/// Takes map `name` out of the object as the typed map `T`.
fn take<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { map: name, source })
}

fn attach(
    ebpf: &mut Ebpf,
    hook: &'static Hook,
    cgroup: &File,
    links: &mut Vec<LinkRef>,
) -> Result<HookState, LoadError> {
    let program =
        ebpf.program_mut(hook.program).ok_or(LoadError::MissingProgram { hook: hook.name, program: hook.program })?;
    let load_err = |source| LoadError::Load { hook: hook.name, program: hook.program, source };
    let attach_err = |source| LoadError::Attach { hook: hook.name, program: hook.program, source };
    match hook.attach {
        Attach::Tracepoint { category, name } => {
            if hook.optional && !mounts::tracepoint_exists(category, name) {
                let detail = format!("tracepoint {category}/{name} does not exist on this kernel");
                return Ok(HookState::new(hook, Mechanism::Unavailable, detail));
            }
            let tp: &mut TracePoint = program.try_into().map_err(load_err)?;
            let start = Instant::now();
            // Hooks may share a program (the open exits): load it once.
            if tp.fd().is_err() {
                tp.load().map_err(load_err)?;
            }
            let loaded = start.elapsed();
            links.push(LinkRef::TracePoint(hook, tp.attach(category, name).map_err(attach_err)?));
            tracing::debug!(
                hook = hook.name,
                load_ms = loaded.as_millis(),
                total_ms = start.elapsed().as_millis(),
                "attached"
            );
            Ok(HookState::new(hook, Mechanism::Observe, format!("tracepoint {category}/{name}")))
        }
        Attach::CgroupSockAddr => {
            let prog: &mut CgroupSockAddr = program.try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
            // On the kernels we support (ring buffers need 5.8) aya attaches
            // through a bpf_link, which the kernel always treats as
            // multi-attach: other cgroup programs (systemd's, another
            // daemon's) keep running beside ours. The link API rejects the
            // explicit ALLOW_MULTI flag, hence the default mode here.
            links.push(LinkRef::CgroupSockAddr(
                hook,
                prog.attach(cgroup, CgroupAttachMode::default()).map_err(attach_err)?,
            ));
            if [names::PROG_RECVMSG4, names::PROG_GETPEERNAME4].contains(&hook.program) {
                // Judges nothing: shows a redirected DNS socket the
                // nameserver it asked (docs/architecture.md, "Domain egress").
                let detail = "cgroup sock_addr hook; restores the nameserver's address on redirected DNS sockets";
                return Ok(HookState::new(hook, Mechanism::Observe, detail.into()));
            }
            let detail = "cgroup sock_addr hook on the trajectory parent cgroup; refuses with EPERM";
            Ok(HookState::new(hook, Mechanism::CgroupDeny, detail.into()))
        }
        Attach::RawTracepoint { name } => {
            let tp: &mut RawTracePoint = program.try_into().map_err(load_err)?;
            tp.load().map_err(load_err)?;
            links.push(LinkRef::RawTracePoint(hook, tp.attach(name).map_err(attach_err)?));
            Ok(HookState::new(hook, Mechanism::Observe, format!("raw tracepoint {name}")))
        }
        Attach::CgroupSock => {
            let prog: &mut CgroupSock = program.try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
            links
                .push(LinkRef::CgroupSock(hook, prog.attach(cgroup, CgroupAttachMode::default()).map_err(attach_err)?));
            let detail = "cgroup sock_create hook on the trajectory parent cgroup; refuses IPv4/IPv6 sockets the \
                          network rules cannot judge (raw, ICMP, SCTP) with EPERM unless defaults.raw_sockets allows \
                          them";
            Ok(HookState::new(hook, Mechanism::CgroupDeny, detail.into()))
        }
        Attach::Lsm { .. } => unreachable!("LSM hooks are attached by attach_lsm"),
    }
}

/// A hook whose link is not pinned.
#[derive(Clone, Debug)]
pub struct Unpinned {
    pub hook: &'static str,
    pub reason: String,
    /// The link was lost trying: the hook no longer runs.
    pub detached: bool,
}

/// A link attached during [`load`], to pin once every decision is taken
/// (programs unloaded after a failed LSM probe have lost theirs).
enum LinkRef {
    TracePoint(&'static Hook, TracePointLinkId),
    Lsm(&'static Hook, LsmLinkId),
    CgroupSockAddr(&'static Hook, CgroupSockAddrLinkId),
    RawTracePoint(&'static Hook, RawTracePointLinkId),
    CgroupSock(&'static Hook, CgroupSockLinkId),
}

/// Pins every link still attached. A link taken from its program but not
/// pinned would detach when dropped, so a tracepoint link is only taken
/// where the kernel makes it a `bpf_link` (5.15 and later); older kernels'
/// perf-event attachments stay owned by the program and end with the
/// daemon, which the second list reports.
fn pin_links(ebpf: &mut Ebpf, links: Vec<LinkRef>, pins: &PinDir) -> (Vec<PinnedLink>, Vec<Unpinned>) {
    let perf_links = kernel_at_least(5, 15);
    let mut pinned = Vec::new();
    let mut unpinned = Vec::new();
    for link in links {
        let (hook, fd): (&'static Hook, Result<Option<FdLink>, String>) = match link {
            LinkRef::TracePoint(hook, id) => {
                if !perf_links {
                    unpinned.push(Unpinned {
                        hook: hook.name,
                        reason: "tracepoint links need Linux 5.15 to be pinned".into(),
                        detached: false,
                    });
                    continue;
                }
                let tp: Option<&mut TracePoint> = ebpf.program_mut(hook.program).and_then(|p| p.try_into().ok());
                let fd = tp.map(|tp| tp.take_link(id).map_err(|e| e.to_string()));
                (
                    hook,
                    fd.transpose().and_then(|l| l.map(|l| FdLink::try_from(l).map_err(|e| e.to_string())).transpose()),
                )
            }
            LinkRef::Lsm(hook, id) => {
                let p: Option<&mut Lsm> = ebpf.program_mut(hook.program).and_then(|p| p.try_into().ok());
                (hook, Ok(p.and_then(|p| p.take_link(id).ok()).map(FdLink::from)))
            }
            LinkRef::CgroupSockAddr(hook, id) => {
                let p: Option<&mut CgroupSockAddr> = ebpf.program_mut(hook.program).and_then(|p| p.try_into().ok());
                let fd = p.map(|p| p.take_link(id).map_err(|e| e.to_string()));
                (
                    hook,
                    fd.transpose().and_then(|l| l.map(|l| FdLink::try_from(l).map_err(|e| e.to_string())).transpose()),
                )
            }
            LinkRef::CgroupSock(hook, id) => {
                let p: Option<&mut CgroupSock> = ebpf.program_mut(hook.program).and_then(|p| p.try_into().ok());
                let fd = p.map(|p| p.take_link(id).map_err(|e| e.to_string()));
                (
                    hook,
                    fd.transpose().and_then(|l| l.map(|l| FdLink::try_from(l).map_err(|e| e.to_string())).transpose()),
                )
            }
            LinkRef::RawTracePoint(hook, id) => {
                let p: Option<&mut RawTracePoint> = ebpf.program_mut(hook.program).and_then(|p| p.try_into().ok());
                (hook, Ok(p.and_then(|p| p.take_link(id).ok()).map(FdLink::from)))
            }
        };
        match fd {
            // Unloaded after a failed probe: nothing to keep.
            Ok(None) => {}
            Ok(Some(fd)) => match fd.pin(pins.link_path(hook.name)) {
                Ok(p) => pinned.push(p),
                Err(e) => unpinned.push(Unpinned {
                    hook: hook.name,
                    reason: format!("pinning its link failed, the hook is detached: {}", chain(&e)),
                    detached: true,
                }),
            },
            Err(e) => unpinned.push(Unpinned {
                hook: hook.name,
                reason: format!("cannot take its link to pin it, the hook is detached: {e}"),
                detached: true,
            }),
        }
    }
    (pinned, unpinned)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str) -> &'static Hook {
        HOOKS.iter().chain(OPEN_TRACEPOINTS).chain(LSM_HOOKS).find(|h| h.name == name).unwrap()
    }

    /// The hooks as attached, before [`name_enforcers`].
    fn attached() -> Vec<HookState> {
        let observe = |name| HookState::new(hook(name), Mechanism::Observe, "tracepoint".into());
        vec![
            observe("exec"),
            HookState::new(hook("connect:connect4"), Mechanism::CgroupDeny, "cgroup".into()),
            observe("open:openat"),
            observe("open:openat/exit"),
            HookState::new(hook("open:creat"), Mechanism::Unavailable, "missing".into()),
            HookState::new(hook("lsm:file_open"), Mechanism::LsmDeny, "lsm".into()),
        ]
    }

    fn mechanisms(hooks: &[HookState]) -> Vec<(&str, &str)> {
        hooks.iter().map(|h| (h.hook, h.mechanism.as_str())).collect()
    }

    #[test]
    fn without_bpf_lsm_the_exec_and_open_exit_tracepoints_kill() {
        let mut hooks = attached();
        name_enforcers(&mut hooks, false);
        assert_eq!(
            mechanisms(&hooks),
            [
                ("exec", "kill"),
                ("connect:connect4", "cgroup-deny"),
                ("open:openat", "observe"),
                ("open:openat/exit", "kill"),
                ("open:creat", "unavailable"),
                ("lsm:file_open", "lsm-deny"),
            ]
        );
        assert!(
            hooks[2].detail.ends_with("keeps the request for the exit hook, which enforces"),
            "{}",
            hooks[2].detail
        );
        assert_eq!(hooks[4].detail, "missing", "an unavailable hook keeps its reason");
    }

    #[test]
    fn with_bpf_lsm_the_tracepoints_only_record() {
        let mut hooks = attached();
        name_enforcers(&mut hooks, true);
        assert_eq!(mechanisms(&hooks), mechanisms(&attached()));
        assert_eq!(hooks[0].detail, "tracepoint; records only, BPF LSM enforces");
        assert_eq!((hooks[1].detail.as_str(), hooks[5].detail.as_str()), ("cgroup", "lsm"));
    }
}
