//! The start-up phases before anything is served, in order: preflight
//! checks, policy admission, the daemon's places on disk (claimed), the
//! kernel side loaded, the sockets bound. Each returns what the next
//! needs; an error stops the start.

use std::{fs::File, io, path::PathBuf, sync::Arc};

use monitor_common::{
    maps::{KernelOffsets, RuntimeConfig},
    tamper::TamperConfig,
};
use tokio::net::{TcpListener, UnixListener};

use super::error::DaemonError;
use crate::{
    btf::{self, VMLINUX_BTF},
    cgroup::{self, Hierarchy},
    config::DaemonConfig,
    config::DNS_CLIENT_NET,
    control,
    dns::{
        self,
        learn::Lifetime,
        message::Refusal,
        ranges::InternalRanges,
        resolver::{Resolver, Settings},
    },
    domains::Domains,
    events::handle::PipelineHandle,
    events::state::{Found, StateDir},
    host,
    loader::{self, DnsMaps, LoadOptions, Loaded, PipelineMaps, PolicyMapHandles},
    metrics,
    metrics::Metrics,
    pins::{self, PinDir},
    policy::{self, PolicySet},
    reload,
};

/// Pending records (bytes) in the ring buffer that trigger a wakeup.
const WAKEUP_BYTES: u64 = 256 * 1024;

/// What preflight found out about this host.
pub struct Host {
    pub hierarchy: Hierarchy,
    pub offsets: KernelOffsets,
    pub tamper: TamperConfig,
}

/// Root, BTF, the memlock limit, tracefs, the cgroup2 hierarchy, and the
/// kernel's structure offsets read from its BTF.
pub fn preflight(config: &DaemonConfig) -> Result<Host, DaemonError> {
    host::require_root()?;
    match &config.config_file {
        Some(file) => tracing::info!(file = %file.display(), "configuration file read"),
        None => tracing::info!("no configuration file; flags and built-in defaults apply"),
    }
    host::require_btf()?;
    host::raise_memlock_limit();
    host::ensure_tracefs()?;
    let hierarchy = Hierarchy::discover()?;
    let (offsets, tamper) = btf::all_offsets(VMLINUX_BTF.as_ref(), std::process::id())?;
    Ok(Host { hierarchy, offsets, tamper })
}

/// The policy set, before anything is loaded: a broken policy, or a
/// policy the configuration names that is not defined, stops the start
/// (a reload is held to the same check, [`reload::admit`]).
pub fn admit_policies(config: &DaemonConfig) -> Result<PolicySet, DaemonError> {
    let set = policy::load_daemon_set(config.policy_dir.as_deref()).map_err(DaemonError::Policy)?;
    reload::admit(&set, &config.default_policy, &config.adopt)?;
    match &config.policy_dir {
        Some(dir) => tracing::info!(dir = %dir.display(), policies = set.policies().len(), "policies loaded"),
        None => tracing::info!("no policy directory; the embedded default policy is loaded"),
    }
    Ok(set)
}

/// The daemon's places, claimed for its lifetime.
pub struct Prepared {
    /// The trajectory parent cgroup.
    pub parent: PathBuf,
    pub state: StateDir,
    /// `None`: `--pin-dir none`, or pinning is impossible here.
    pub pins: Option<PinDir>,
    /// What the `continuity` protection reports, so far.
    pub continuity: String,
    /// One daemon per cgroup parent; released last (fields drop in order).
    _lock: File,
}

/// What a previous daemon of this cgroup parent left.
pub struct Previous {
    pub found: Vec<Found>,
    /// State files that cannot be read: the previous daemon's bindings and
    /// pins are kept so their trajectories stay judged (see resume).
    pub unreadable: Vec<PathBuf>,
}

/// Creates the cgroup parent and the state directory, takes the parent's
/// lock, prepares the pin directory, and reads the previous daemon's
/// trajectory state.
pub fn prepare(config: &DaemonConfig, hierarchy: &Hierarchy) -> Result<(Prepared, Previous), DaemonError> {
    let parent = hierarchy.mount_point.join(&config.cgroup_parent);
    cgroup::create_all(&parent)?;
    let key = pins::daemon_key(&config.cgroup_parent);
    let state = StateDir::create(config.state_dir.join(&key))
        .map_err(|e| io::Error::other(format!("state directory {}: {e}", config.state_dir.join(&key).display())))?;
    let lock = cgroup::lock_parent(&parent)?;
    let (pins, mut continuity) = match &config.pin_dir {
        None => (None, "disabled (--pin-dir none): enforcement ends with the daemon".to_owned()),
        Some(base) => match pins::layout_id(loader::EBPF_OBJECT, config.ringbuf_bytes)
            .and_then(|layout| PinDir::prepare(base, &key, &layout))
        {
            Ok(p) => {
                let d = format!("links and maps pinned under {}", p.dir().display());
                (Some(p), d)
            }
            Err(e) => (None, format!("cannot pin: {e}; enforcement ends with the daemon")),
        },
    };
    let (found, unreadable) = state.load();
    if !unreadable.is_empty() {
        continuity.push_str(&format!(
            "; {} unreadable trajectory state file(s) ({}): the previous daemon's bindings and pins are kept so \
             those trajectories stay judged, unrecorded; fix or remove the files and restart",
            unreadable.len(),
            unreadable.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok((Prepared { parent, state, pins, continuity, _lock: lock }, Previous { found, unreadable }))
}

/// What loading hands on: the owner of the programs and links, and the
/// maps for the pipeline and the enforcer.
pub struct KernelSide {
    pub loaded: Loaded,
    pub maps: PipelineMaps,
    pub policy_maps: PolicyMapHandles,
    pub dns_maps: DnsMaps,
}

/// Loads and attaches every hook, pinning the links where `prepared` has
/// a pin directory.
pub fn load(config: &DaemonConfig, host: &Host, prepared: &mut Prepared) -> Result<KernelSide, DaemonError> {
    let (loaded, maps, policy_maps, dns_maps) = loader::load(&LoadOptions {
        offsets: host.offsets,
        ringbuf_bytes: config.ringbuf_bytes,
        wakeup_bytes: WAKEUP_BYTES.min(u64::from(config.ringbuf_bytes) / 4),
        cgroup_parent: &prepared.parent,
        tamper: host.tamper,
        pins: prepared.pins.as_ref(),
    })?;
    if let Some(p) = &prepared.pins {
        if p.reused {
            prepared.continuity.push_str("; maps reused from a previous daemon of this layout");
        }
        for u in &loaded.unpinned {
            prepared.continuity.push_str(&format!("; {} not pinned: {}", u.hook, u.reason));
        }
    }
    Ok(KernelSide { loaded, maps, policy_maps, dns_maps })
}

pub struct Listeners {
    pub metrics: TcpListener,
    pub control: UnixListener,
}

/// Binds /metrics and the control socket. Before taking over from a
/// previous daemon: a start that fails here (another daemon on the
/// socket) still undoes its pins. Clients that connect now wait until the
/// server runs.
pub async fn bind(config: &DaemonConfig) -> Result<Listeners, DaemonError> {
    let metrics = metrics::bind(config.metrics_addr).await?;
    let control = control::server::bind(&config.control_socket, config.callers.as_ref().map(|g| g.gid))?;
    if !config.metrics_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %config.metrics_addr,
            "the metrics endpoint is reachable from other hosts; it has no authentication (policy names and counts)"
        );
    }
    Ok(Listeners { metrics, control })
}

/// Binds the DNS egress resolver (`dns::resolver`) with the configured
/// upstream, or the host's own (`/etc/resolv.conf`).
pub async fn resolver(
    config: &DaemonConfig,
    maps: DnsMaps,
    domains: Domains,
    pipeline: PipelineHandle,
    metrics: Arc<Metrics>,
) -> Result<Resolver, DaemonError> {
    let dns = &config.dns;
    let internal = match &dns.internal_ranges {
        Some(list) => InternalRanges::parse(list).map_err(|e| DaemonError::Dns(io::Error::other(e)))?,
        None => InternalRanges::default(),
    };
    let upstream = dns.upstream.or_else(dns::system_upstream);
    if upstream.is_none() {
        tracing::warn!(
            "no DNS upstream (--dns-upstream, or a nameserver in /etc/resolv.conf): allowed names get SERVFAIL"
        );
    }
    let settings = Settings {
        listen: dns.listen,
        upstream,
        refusal: if dns.nxdomain { Refusal::NxDomain } else { Refusal::Refused },
        lifetime: Lifetime { grace: dns.ttl_grace, min: dns.ttl_min, max: dns.ttl_max },
        internal,
        client_net: DNS_CLIENT_NET,
    };
    let resolver = Resolver::bind(settings, maps, domains, pipeline, metrics).await.map_err(DaemonError::Dns)?;
    tracing::info!(
        listen = %resolver.addr(),
        upstream = ?upstream,
        internal_ranges = %resolver.internal_ranges().join(","),
        "DNS resolver ready"
    );
    Ok(resolver)
}

/// What the kernel's runtime config holds besides the trajectory levels:
/// the flags chosen at load and where the resolver listens.
pub fn runtime(loaded: &Loaded, resolver: &Resolver) -> RuntimeConfig {
    RuntimeConfig {
        flags: loaded.runtime_flags,
        dns_addr: resolver.addr().ip().octets(),
        dns_port: resolver.addr().port(),
        dns_client_net: DNS_CLIENT_NET,
        ..RuntimeConfig::default()
    }
}
