//! Daemon configuration: the config file (`/etc/agent-monitor/config.yaml`
//! or `--config FILE`) and the command-line flags become one validated
//! [`DaemonConfig`] here, and every filesystem location the daemon uses is
//! decided in this one place.
//!
//! A flag given on the command line wins over the file's value, which wins
//! over the built-in default. The file is checked the way policy files are:
//! unknown keys and wrong types stop the parse with file, line, column and
//! key; every value problem (of the file and of the flags) is reported at
//! once. A value the file sets is checked even when a flag overrides it, so
//! a file that is wrong does not lie in wait for the day the flag goes.
//! `docs/operations.md` documents the keys.

use std::{
    fmt, io,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use crate::defaults::*;
use crate::{
    adopt::AdoptRule,
    cli::DaemonArgs,
    policy::{Diagnostic, Pos},
    sinks::jsonl::{Output, Rotation},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub events: Output,
    pub metrics_addr: SocketAddr,
    pub control_socket: PathBuf,
    /// Directory, relative to the cgroup2 mount, holding trajectory cgroups.
    pub cgroup_parent: PathBuf,
    pub ringbuf_bytes: u32,
    /// Policy directory; `None` when the default directory does not exist
    /// (the embedded default policy alone is loaded).
    pub policy_dir: Option<PathBuf>,
    /// Policy of a trajectory opened without `--policy`.
    pub default_policy: String,
    /// Size rotation of the events file (`None`: never rotated).
    pub events_rotation: Option<Rotation>,
    /// Existing cgroups to adopt as trajectories.
    pub adopt: Vec<AdoptRule>,
    /// bpffs directory of the pins (`None`: `none`, nothing outlives the
    /// daemon).
    pub pin_dir: Option<PathBuf>,
    /// Directory of the trajectories' state files.
    pub state_dir: PathBuf,
    /// Remove the pins on a clean exit.
    pub stop_enforcement_on_exit: bool,
    pub dns: DnsConfig,
    /// Non-root callers of the control socket (`None`: root only).
    pub callers: Option<crate::account::CallerGroup>,
}

/// The DNS egress resolver's settings (`docs/operations.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// `None`: the first nameserver of `/etc/resolv.conf`, read at start.
    pub upstream: Option<SocketAddr>,
    pub listen: std::net::SocketAddrV4,
    /// Denied names get NXDOMAIN instead of REFUSED.
    pub nxdomain: bool,
    pub ttl_grace: Duration,
    pub ttl_min: Duration,
    pub ttl_max: Duration,
    /// CIDRs; `None`: the built-in list.
    pub internal_ranges: Option<Vec<String>>,
}

/// Everything wrong with the configuration, in file order, then flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", render(.0))]
pub struct ConfigError(pub Vec<Problem>);

/// One problem with one setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A command-line flag's value; `message` starts with the value.
    Flag { flag: &'static str, message: String },
    /// The config file: unreadable, malformed, or a value in it.
    File(Diagnostic),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Flag { flag, message } => write!(f, "{flag} {message}"),
            Problem::File(d) => d.fmt(f),
        }
    }
}

fn render(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(|p| format!("  {p}")).collect();
            format!("invalid configuration:\n{}", lines.join("\n"))
        }
    }
}

/// The config file as written. Every value stays a [`Spanned`] string so
/// that all value errors are reported together, each at its place.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDoc {
    #[serde(default)]
    events: Option<Str>,
    #[serde(default)]
    metrics_addr: Option<Str>,
    #[serde(default)]
    control_socket: Option<Str>,
    #[serde(default)]
    cgroup_parent: Option<Str>,
    #[serde(default)]
    ringbuf_size: Option<Str>,
    #[serde(default)]
    policy_dir: Option<Str>,
    #[serde(default)]
    default_policy: Option<Str>,
    #[serde(default)]
    events_max_size: Option<Str>,
    #[serde(default)]
    events_keep: Option<Str>,
    /// `GLOB[=POLICY]` strings, as `--adopt` takes them.
    #[serde(default)]
    adopt: Option<Vec<Str>>,
    #[serde(default)]
    pin_dir: Option<Str>,
    #[serde(default)]
    state_dir: Option<Str>,
    #[serde(default)]
    dns_upstream: Option<Str>,
    #[serde(default)]
    dns_listen: Option<Str>,
    #[serde(default)]
    dns_refusal: Option<Str>,
    #[serde(default)]
    dns_ttl_grace: Option<Str>,
    #[serde(default)]
    dns_ttl_min: Option<Str>,
    #[serde(default)]
    dns_ttl_max: Option<Str>,
    /// A comma-separated string of CIDRs, as the flag takes it.
    #[serde(default)]
    dns_internal_ranges: Option<Str>,
    #[serde(default)]
    control_socket_group: Option<Str>,
    #[serde(default)]
    group_policies: Option<Vec<Str>>,
}

type Str = Spanned<String>;

/// A parsed config file and the name it is reported under.
struct ConfigFile {
    path: PathBuf,
    doc: ConfigDoc,
}

impl DaemonConfig {
    /// Flags plus `--config FILE`, or [`DEFAULT_CONFIG_FILE`] when it exists.
    pub fn from_args(args: &DaemonArgs) -> Result<Self, ConfigError> {
        Self::from_args_with_default(args, Path::new(DEFAULT_CONFIG_FILE))
    }

    /// [`Self::from_args`] with another default config file location, for
    /// tests that must not depend on the host's `/etc`.
    pub fn from_args_with_default(args: &DaemonArgs, default_file: &Path) -> Result<Self, ConfigError> {
        let (path, explicit) = match &args.config {
            Some(path) => (path.as_path(), true),
            None => (default_file, false),
        };
        let file = match ConfigFile::read(path, explicit) {
            Ok(f) => Some(f),
            Err(ReadError::Missing) => None,
            Err(ReadError::Invalid(e)) => return Err(e),
        };
        Resolver { file: file.as_ref(), problems: Vec::new() }.resolve(args)
    }
}

enum ReadError {
    /// The default file does not exist: built-in defaults apply.
    Missing,
    Invalid(ConfigError),
}

impl ConfigFile {
    /// Reads and parses `path`. A missing file is an error when it was
    /// named explicitly (`--config`), and [`ReadError::Missing`] otherwise.
    fn read(path: &Path, explicit: bool) -> Result<ConfigFile, ReadError> {
        let invalid = |d| ReadError::Invalid(ConfigError(vec![Problem::File(d)]));
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => return Err(ReadError::Missing),
            Err(e) => return Err(invalid(Diagnostic::new(path, Pos::FILE, "", format!("cannot read: {e}")))),
        };
        let doc = parse(path, &text).map_err(invalid)?;
        Ok(ConfigFile { path: path.to_owned(), doc })
    }
}

/// Parses the file's structure. A structural error (bad YAML, unknown key,
/// wrong type) stops the parse, so it is the only diagnostic. An empty file
/// (or one of comments only) configures nothing.
fn parse(file: &Path, text: &str) -> Result<ConfigDoc, Diagnostic> {
    let mut options = serde_saphyr::options! {};
    options.with_snippet = false;
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, Option<ConfigDoc>>(de).map_err(|e| {
            field = field_path(e.path());
            e.into_inner()
        })
    })
    .map(Option::unwrap_or_default)
    .map_err(|e| {
        let e = e.without_snippet();
        let message = serde_saphyr::MessageFormatter::format_message(&serde_saphyr::DefaultMessageFormatter, e);
        Diagnostic::new(file, e.location().map(Pos::from).unwrap_or(Pos::FILE), field, message.into_owned())
    })
}

/// The key as users write it. `Spanned` deserializes through an inner
/// `value` field, which is not a key of the file (the same reasoning as the
/// policy schema's path).
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let keys: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } if key != "value" => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            _ => None,
        })
        .collect();
    keys.join(".")
}

/// One setting: its flag, its key in the file, how a file value is parsed,
/// and the check every value passes whichever source it came from. Messages
/// start with the offending value.
struct Setting<T> {
    flag: &'static str,
    key: &'static str,
    parse: fn(&str) -> Result<T, String>,
    check: fn(&T) -> Result<(), String>,
}

/// The settings, in the order of [`ConfigDoc`].
const EVENTS: Setting<Output> =
    Setting { flag: "--events", key: "events", parse: |s| file_path(s, true).map(output), check: |_| Ok(()) };

const METRICS_ADDR: Setting<SocketAddr> = Setting {
    flag: "--metrics-addr",
    key: "metrics_addr",
    parse: |s| s.parse().map_err(|_| format!("{s:?}: expected an address and port, e.g. 127.0.0.1:9617")),
    check: |_| Ok(()),
};

const CONTROL_SOCKET: Setting<PathBuf> =
    Setting { flag: "--control-socket", key: "control_socket", parse: |s| file_path(s, false), check: |p| absolute(p) };

const CONTROL_SOCKET_GROUP: Setting<(String, u32)> = Setting {
    flag: "--control-socket-group",
    key: "control_socket_group",
    parse: |s| match crate::account::group_id(s) {
        Some(gid) if gid != 0 => Ok((s.to_owned(), gid)),
        Some(_) => Err(format!("{s:?}: group 0 is root's; name the group of the non-root callers")),
        None => Err(format!("{s:?}: no such group on this host")),
    },
    check: |_| Ok(()),
};

const CGROUP_PARENT: Setting<String> = Setting {
    flag: "--cgroup-parent",
    key: "cgroup_parent",
    parse: |s| Ok(s.to_owned()),
    check: |s| {
        let plain = Path::new(s).components().all(|c| matches!(c, Component::Normal(_)));
        match !s.is_empty() && plain {
            true => Ok(()),
            false => Err(format!(
                "{s:?}: expected a relative path of plain names below the cgroup2 mount, e.g. agent-monitor"
            )),
        }
    },
};

const RINGBUF_SIZE: Setting<u32> = Setting {
    flag: "--ringbuf-size",
    key: "ringbuf_size",
    parse: |s| s.parse().map_err(|_| format!("{s:?}: expected a number of bytes")),
    check: |n| match n.is_power_of_two() && *n >= 4096 {
        true => Ok(()),
        false => Err(format!("{n}: expected a power of two of at least 4096 bytes")),
    },
};

const POLICY_DIR: Setting<PathBuf> = Setting {
    flag: "--policy-dir",
    key: "policy_dir",
    parse: |s| file_path(s, false),
    check: |p| match p.is_dir() {
        true => Ok(()),
        false => Err(format!("{:?}: not a directory", p.display().to_string())),
    },
};

const DEFAULT_POLICY_NAME: Setting<String> = Setting {
    flag: "--default-policy",
    key: "default_policy",
    parse: |s| Ok(s.to_owned()),
    check: |s| match s.is_empty() {
        false => Ok(()),
        true => Err("\"\": expected a policy name".into()),
    },
};

const EVENTS_MAX_SIZE: Setting<u64> = Setting {
    flag: "--events-max-size",
    key: "events_max_size",
    parse: |s| s.parse().map_err(|_| format!("{s:?}: expected a number of bytes")),
    check: |n| match *n >= 4096 {
        true => Ok(()),
        false => Err(format!("{n}: expected at least 4096 bytes")),
    },
};

const EVENTS_KEEP: Setting<u32> = Setting {
    flag: "--events-keep",
    key: "events_keep",
    parse: |s| s.parse().map_err(|_| format!("{s:?}: expected a number of files")),
    check: |n| match (1..=1000).contains(n) {
        true => Ok(()),
        false => Err(format!("{n}: expected 1 to 1000 files")),
    },
};

const PIN_DIR: Setting<PathBuf> = Setting {
    flag: "--pin-dir",
    key: "pin_dir",
    parse: |s| if s == "none" { Ok(PathBuf::from("none")) } else { file_path(s, false) },
    check: |p| match p.is_absolute() || p == Path::new("none") {
        true => Ok(()),
        false => Err(format!("{:?}: expected an absolute path or none", p.display().to_string())),
    },
};

const STATE_DIR: Setting<PathBuf> =
    Setting { flag: "--state-dir", key: "state_dir", parse: |s| file_path(s, false), check: |p| absolute(p) };

const DNS_UPSTREAM: Setting<SocketAddr> = Setting {
    flag: "--dns-upstream",
    key: "dns_upstream",
    parse: |s| {
        s.parse::<SocketAddr>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("{s:?}: expected an address, optionally with a port, e.g. 127.0.0.1:53"))
    },
    check: |_| Ok(()),
};

const DNS_LISTEN: Setting<std::net::SocketAddrV4> = Setting {
    flag: "--dns-listen",
    key: "dns_listen",
    parse: |s| s.parse().map_err(|_| format!("{s:?}: expected an IPv4 address and port, e.g. 127.0.0.1:0")),
    check: |a| match a.ip().is_loopback() {
        true => Ok(()),
        false => Err(format!("{a}: the resolver must listen on a loopback address (127.0.0.0/8)")),
    },
};

const DNS_REFUSAL: Setting<bool> = Setting {
    flag: "--dns-refusal",
    key: "dns_refusal",
    parse: |s| match s {
        "refused" => Ok(false),
        "nxdomain" => Ok(true),
        _ => Err(format!("{s:?}: expected refused or nxdomain")),
    },
    check: |_| Ok(()),
};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: expected a duration such as 5s or 1h ({e})"))
}

const DNS_TTL_GRACE: Setting<Duration> =
    Setting { flag: "--dns-ttl-grace", key: "dns_ttl_grace", parse: duration, check: |_| Ok(()) };
const DNS_TTL_MIN: Setting<Duration> =
    Setting { flag: "--dns-ttl-min", key: "dns_ttl_min", parse: duration, check: |_| Ok(()) };
const DNS_TTL_MAX: Setting<Duration> = Setting {
    flag: "--dns-ttl-max",
    key: "dns_ttl_max",
    parse: duration,
    check: |d| match d.is_zero() {
        false => Ok(()),
        true => Err("0s: a learned address must stay allowed for some time".into()),
    },
};

const DNS_INTERNAL_RANGES: Setting<Vec<String>> = Setting {
    flag: "--dns-internal-ranges",
    key: "dns_internal_ranges",
    parse: |s| Ok(s.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()),
    check: |list| crate::dns::ranges::InternalRanges::parse(list).map(|_| ()),
};

fn absolute(p: &Path) -> Result<(), String> {
    match p.is_absolute() {
        true => Ok(()),
        false => Err(format!("{:?}: expected an absolute path", p.display().to_string())),
    }
}

struct Resolver<'a> {
    file: Option<&'a ConfigFile>,
    problems: Vec<Problem>,
}

impl Resolver<'_> {
    /// The flag's value if given, else the file's, else `None`; both are
    /// checked when present.
    fn get<T>(&mut self, s: Setting<T>, written: Option<&Str>, flag: Option<T>) -> Option<T> {
        let from_file = match (self.file, written) {
            (Some(file), Some(w)) => match (s.parse)(&w.value).and_then(|v| (s.check)(&v).map(|()| v)) {
                Ok(v) => Some(v),
                Err(message) => {
                    self.problems.push(Problem::File(Diagnostic::new(&file.path, Pos::of(w), s.key, message)));
                    None
                }
            },
            _ => None,
        };
        match flag {
            Some(v) => match (s.check)(&v) {
                Ok(()) => Some(v),
                Err(message) => {
                    self.problems.push(Problem::Flag { flag: s.flag, message });
                    None
                }
            },
            None => from_file,
        }
    }

    fn resolve(mut self, args: &DaemonArgs) -> Result<DaemonConfig, ConfigError> {
        let empty = ConfigDoc::default();
        let doc = self.file.map_or(&empty, |f| &f.doc);
        // In file order, so that the problems are reported in it.
        let events = self.get(EVENTS, doc.events.as_ref(), args.events.clone().map(output));
        let metrics_addr = self.get(METRICS_ADDR, doc.metrics_addr.as_ref(), args.metrics_addr);
        let control_socket = self.get(CONTROL_SOCKET, doc.control_socket.as_ref(), args.control_socket.clone());
        let cgroup_parent = self.get(CGROUP_PARENT, doc.cgroup_parent.as_ref(), args.cgroup_parent.clone());
        let ringbuf_bytes = self.get(RINGBUF_SIZE, doc.ringbuf_size.as_ref(), args.ringbuf_size);
        let policy_dir = self.get(POLICY_DIR, doc.policy_dir.as_ref(), args.policy_dir.clone());
        let default_policy = self.get(DEFAULT_POLICY_NAME, doc.default_policy.as_ref(), args.default_policy.clone());
        let events_max_size = self.get(EVENTS_MAX_SIZE, doc.events_max_size.as_ref(), args.events_max_size);
        let events_keep = self.get(EVENTS_KEEP, doc.events_keep.as_ref(), args.events_keep);
        let pin_dir = self.get(PIN_DIR, doc.pin_dir.as_ref(), args.pin_dir.clone());
        let state_dir = self.get(STATE_DIR, doc.state_dir.as_ref(), args.state_dir.clone());
        let adopt = self.adopt(doc.adopt.as_deref(), &args.adopt);
        let dns = self.dns(doc, args);
        let callers = self.callers(doc, args);
        if events_max_size.is_some() && !matches!(events, Some(Output::File(_))) {
            self.problems.push(Problem::Flag {
                flag: "--events-max-size",
                message: "needs an events file (--events FILE): stdout is not rotated".into(),
            });
        }
        if !self.problems.is_empty() {
            return Err(ConfigError(self.problems));
        }
        let default = |s: &str| s.parse().expect("valid built-in default");
        Ok(DaemonConfig {
            config_file: self.file.map(|f| f.path.clone()),
            events: events.unwrap_or(Output::Stdout),
            metrics_addr: metrics_addr.unwrap_or_else(|| default(DEFAULT_METRICS_ADDR)),
            control_socket: control_socket.unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            cgroup_parent: cgroup_parent.unwrap_or_else(|| DEFAULT_CGROUP_PARENT.into()).into(),
            ringbuf_bytes: ringbuf_bytes.unwrap_or(DEFAULT_RINGBUF_BYTES),
            policy_dir: policy_dir.or_else(|| Some(PathBuf::from(DEFAULT_POLICY_DIR)).filter(|d| d.is_dir())),
            default_policy: default_policy.unwrap_or_else(|| DEFAULT_POLICY.into()),
            events_rotation: events_max_size
                .map(|max_bytes| Rotation { max_bytes, keep: events_keep.unwrap_or(DEFAULT_EVENTS_KEEP) }),
            adopt,
            pin_dir: match pin_dir {
                Some(p) if p == Path::new("none") => None,
                Some(p) => Some(p),
                None => Some(DEFAULT_PIN_DIR.into()),
            },
            state_dir: state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            stop_enforcement_on_exit: args.stop_enforcement_on_exit,
            dns,
            callers,
        })
    }

    /// A setting whose flag arrives as a string: parsed like the file's
    /// value, then resolved as [`Self::get`] does.
    fn get_str<T>(&mut self, s: Setting<T>, written: Option<&Str>, flag: Option<&str>) -> Option<T> {
        let flag = match flag.map(s.parse) {
            Some(Ok(v)) => Some(v),
            Some(Err(message)) => {
                self.problems.push(Problem::Flag { flag: s.flag, message });
                None
            }
            None => None,
        };
        self.get(s, written, flag)
    }

    /// The resolver's settings.
    fn dns(&mut self, doc: &ConfigDoc, args: &DaemonArgs) -> DnsConfig {
        let upstream = self.get_str(DNS_UPSTREAM, doc.dns_upstream.as_ref(), args.dns_upstream.as_deref());
        let listen = self.get_str(DNS_LISTEN, doc.dns_listen.as_ref(), args.dns_listen.as_deref());
        let nxdomain = self.get_str(DNS_REFUSAL, doc.dns_refusal.as_ref(), args.dns_refusal.as_deref());
        let grace = self.get_str(DNS_TTL_GRACE, doc.dns_ttl_grace.as_ref(), args.dns_ttl_grace.as_deref());
        let min = self.get_str(DNS_TTL_MIN, doc.dns_ttl_min.as_ref(), args.dns_ttl_min.as_deref());
        let max = self.get_str(DNS_TTL_MAX, doc.dns_ttl_max.as_ref(), args.dns_ttl_max.as_deref());
        let internal =
            self.get_str(DNS_INTERNAL_RANGES, doc.dns_internal_ranges.as_ref(), args.dns_internal_ranges.as_deref());
        let (ttl_min, ttl_max) = (min.unwrap_or(DEFAULT_DNS_TTL_MIN), max.unwrap_or(DEFAULT_DNS_TTL_MAX));
        if ttl_min > ttl_max {
            self.problems.push(Problem::Flag {
                flag: "--dns-ttl-min",
                message: format!("{ttl_min:?}: longer than the longest lifetime, --dns-ttl-max {ttl_max:?}"),
            });
        }
        DnsConfig {
            upstream,
            listen: listen.unwrap_or_else(|| DEFAULT_DNS_LISTEN.parse().expect("valid built-in default")),
            nxdomain: nxdomain.unwrap_or(false),
            ttl_grace: grace.unwrap_or(DEFAULT_DNS_TTL_GRACE),
            ttl_min,
            ttl_max,
            internal_ranges: internal,
        }
    }

    /// `control_socket_group` (resolved to a gid on this host) with its
    /// `group_policies`, which it needs; flags win over the file's keys.
    fn callers(&mut self, doc: &ConfigDoc, args: &DaemonArgs) -> Option<crate::account::CallerGroup> {
        let group =
            self.get_str(CONTROL_SOCKET_GROUP, doc.control_socket_group.as_ref(), args.control_socket_group.as_deref());
        let policies: Option<Vec<String>> = match (&args.group_policies, &doc.group_policies) {
            (Some(flag), _) => {
                Some(flag.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            }
            (None, Some(list)) => Some(list.iter().map(|s| s.value.clone()).collect()),
            (None, None) => None,
        };
        match (group, policies) {
            (Some((name, gid)), Some(policies)) if !policies.is_empty() => {
                Some(crate::account::CallerGroup { name, gid, policies })
            }
            (Some(_), _) => {
                self.problems.push(Problem::Flag {
                    flag: "--control-socket-group",
                    message: "needs group_policies (--group-policies): the policies its members may choose".into(),
                });
                None
            }
            // A group given but invalid is reported already.
            (None, Some(_)) if args.control_socket_group.is_none() && doc.control_socket_group.is_none() => {
                self.problems.push(Problem::Flag {
                    flag: "--group-policies",
                    message: "needs control_socket_group (--control-socket-group): whose policies they are".into(),
                });
                None
            }
            (None, _) => None,
        }
    }

    /// `--adopt` flags replace the file's `adopt` list when given; every
    /// entry of both is checked.
    fn adopt(&mut self, written: Option<&[Str]>, flags: &[String]) -> Vec<AdoptRule> {
        let mut from_file = Vec::new();
        if let (Some(file), Some(list)) = (self.file, written) {
            for w in list {
                match AdoptRule::parse(&w.value) {
                    Ok(r) => from_file.push(r),
                    Err(message) => {
                        self.problems.push(Problem::File(Diagnostic::new(&file.path, Pos::of(w), "adopt", message)))
                    }
                }
            }
        }
        let mut from_flags = Vec::new();
        for f in flags {
            match AdoptRule::parse(f) {
                Ok(r) => from_flags.push(r),
                Err(message) => self.problems.push(Problem::Flag { flag: "--adopt", message }),
            }
        }
        if flags.is_empty() {
            from_file
        } else {
            from_flags
        }
    }
}

/// A path written in the config file: absolute, because the daemon's
/// working directory is nobody's business (`/` under systemd). `-` means
/// stdout where `allow_stdout`.
fn file_path(s: &str, allow_stdout: bool) -> Result<PathBuf, String> {
    match Path::new(s) {
        _ if allow_stdout && s == "-" => Ok(s.into()),
        p if p.is_absolute() => Ok(p.to_owned()),
        _ => Err(format!("{s:?}: expected an absolute path{}", if allow_stdout { " or - (stdout)" } else { "" })),
    }
}

fn output(p: PathBuf) -> Output {
    if p.as_os_str() == "-" {
        Output::Stdout
    } else {
        Output::File(p)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Commands};

    /// No file at the default location: only flags and built-in defaults.
    const NO_DEFAULT: &str = "/nonexistent/agent-monitor/config.yaml";

    fn parse_with(default_file: &Path, extra: &[&str]) -> Result<DaemonConfig, ConfigError> {
        let cli = Cli::try_parse_from(["agent-monitor", "daemon"].iter().chain(extra)).unwrap();
        let Commands::Daemon(args) = cli.command else { panic!() };
        DaemonConfig::from_args_with_default(&args, default_file)
    }

    fn parse(extra: &[&str]) -> Result<DaemonConfig, ConfigError> {
        parse_with(Path::new(NO_DEFAULT), extra)
    }

    fn flag_problem(flag: &'static str, message: &str) -> ConfigError {
        ConfigError(vec![Problem::Flag { flag, message: message.into() }])
    }

    /// A config file in a temporary directory.
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn problems(r: Result<DaemonConfig, ConfigError>) -> Vec<String> {
        r.unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.config_file, None);
        assert_eq!(c.events, Output::Stdout);
        assert_eq!(c.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert!(c.metrics_addr.ip().is_loopback());
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.cgroup_parent, PathBuf::from(DEFAULT_CGROUP_PARENT));
        assert_eq!(c.ringbuf_bytes, DEFAULT_RINGBUF_BYTES);
        assert_eq!(c.default_policy, DEFAULT_POLICY);
    }

    #[test]
    fn rejects_escaping_cgroup_parent_and_bad_sizes() {
        for bad in ["../x", "/abs", "", "a/../b"] {
            assert_eq!(
                parse(&["--cgroup-parent", bad]),
                Err(flag_problem(
                    "--cgroup-parent",
                    &format!(
                        "{bad:?}: expected a relative path of plain names below the cgroup2 mount, e.g. agent-monitor"
                    )
                )),
                "{bad}"
            );
        }
        assert_eq!(
            parse(&["--ringbuf-size", "5000"]).unwrap_err().to_string(),
            "--ringbuf-size 5000: expected a power of two of at least 4096 bytes"
        );
        assert!(parse(&["--control-socket", "rel.sock"]).is_err());
        assert_eq!(
            parse(&["--policy-dir", "/nonexistent/policies"]).unwrap_err().to_string(),
            "--policy-dir \"/nonexistent/policies\": not a directory"
        );
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let (dir, path) = file(&format!(
            "# comment\nevents: /var/log/agent-monitor/events.jsonl\nmetrics_addr: 0.0.0.0:9700\nringbuf_size: 65536\n\
             cgroup_parent: agents/monitor\ncontrol_socket: /run/am/control.sock\npolicy_dir: {}\n\
             default_policy: reviewer\n",
            std::env::temp_dir().display()
        ));
        let c = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
        assert_eq!(c.events, Output::File("/var/log/agent-monitor/events.jsonl".into()));
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9700");
        assert_eq!(c.ringbuf_bytes, 65536);
        assert_eq!(c.cgroup_parent, PathBuf::from("agents/monitor"));
        assert_eq!(c.control_socket, PathBuf::from("/run/am/control.sock"));
        assert_eq!(c.policy_dir, Some(std::env::temp_dir()));
        assert_eq!(c.default_policy, "reviewer");

        let c = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:9800",
            "--events",
            "-",
            "--ringbuf-size",
            "8192",
        ])
        .unwrap();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9800");
        assert_eq!(c.events, Output::Stdout);
        assert_eq!(c.ringbuf_bytes, 8192);
        assert_eq!(c.default_policy, "reviewer", "keys without a flag on the command line keep the file's value");
        drop(dir);
    }

    #[test]
    fn the_default_file_is_read_when_present_and_optional_when_absent() {
        let (_dir, path) = file("metrics_addr: 127.0.0.1:9701\n");
        let c = parse_with(&path, &[]).unwrap();
        assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9701");
        assert_eq!(parse(&[]).unwrap().config_file, None);
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        let p = problems(parse(&["--config", "/nonexistent/am.yaml"]));
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("/nonexistent/am.yaml: cannot read: No such file"), "{p:?}");
    }

    #[test]
    fn empty_and_comment_only_files_configure_nothing() {
        for text in ["", "\n", "# all defaults\n", "---\n"] {
            let (_dir, path) = file(text);
            let c = parse(&["--config", path.to_str().unwrap()]).unwrap();
            assert_eq!(c, DaemonConfig { config_file: Some(path.clone()), ..parse(&[]).unwrap() }, "{text:?}");
        }
    }

    #[test]
    fn structural_errors_name_file_line_column_and_key() {
        let (_dir, path) = file("events: \"-\"\nmetrics_adr: 127.0.0.1:1\n");
        let p = problems(parse(&["--config", path.to_str().unwrap()]));
        assert_eq!(p.len(), 1, "{p:?}");
        let expected = format!("{}:2:1: metrics_adr: unknown field `metrics_adr`", path.display());
        assert!(p[0].starts_with(&expected), "{p:?}");

        let (_dir, path) = file("ringbuf_size: [1, 2]\n");
        let p = problems(parse(&["--config", path.to_str().unwrap()]));
        assert!(p[0].starts_with(&format!("{}:1:15: ringbuf_size: ", path.display())), "{p:?}");

        // A bare `-` is YAML for a list item: stdout must be quoted.
        let (_dir, path) = file("events: -\n");
        let p = problems(parse(&["--config", path.to_str().unwrap()]));
        assert!(p[0].starts_with(&format!("{}:1:9: ", path.display())), "{p:?}");
    }

    #[test]
    fn every_value_error_of_the_file_and_the_flags_is_reported_at_once() {
        let (_dir, path) = file(
            "events: relative.jsonl\nmetrics_addr: localhost\ncontrol_socket: run/x.sock\ncgroup_parent: ../up\n\
             ringbuf_size: 5000\npolicy_dir: /nonexistent/policies\ndefault_policy: \"\"\n",
        );
        let p = problems(parse(&["--config", path.to_str().unwrap(), "--ringbuf-size", "4097"]));
        let f = path.display();
        assert_eq!(
            p,
            [
                format!("{f}:1:9: events: \"relative.jsonl\": expected an absolute path or - (stdout)"),
                format!("{f}:2:15: metrics_addr: \"localhost\": expected an address and port, e.g. 127.0.0.1:9617"),
                format!("{f}:3:17: control_socket: \"run/x.sock\": expected an absolute path"),
                format!(
                    "{f}:4:16: cgroup_parent: \"../up\": expected a relative path of plain names below the cgroup2 \
                     mount, e.g. agent-monitor"
                ),
                format!("{f}:5:15: ringbuf_size: 5000: expected a power of two of at least 4096 bytes"),
                "--ringbuf-size 4097: expected a power of two of at least 4096 bytes".to_owned(),
                format!("{f}:6:13: policy_dir: \"/nonexistent/policies\": not a directory"),
                format!("{f}:7:17: default_policy: \"\": expected a policy name"),
            ]
        );
        let all = parse(&["--config", path.to_str().unwrap()]).unwrap_err().to_string();
        assert!(all.starts_with("invalid configuration:\n  "), "{all}");
    }

    #[test]
    fn help_shows_the_defaults_applied_here() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli.find_subcommand_mut("daemon").unwrap().render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for default in [
            DEFAULT_CONFIG_FILE,
            DEFAULT_METRICS_ADDR,
            DEFAULT_CONTROL_SOCKET,
            DEFAULT_CGROUP_PARENT,
            &DEFAULT_RINGBUF_BYTES.to_string(),
            DEFAULT_POLICY_DIR,
            DEFAULT_POLICY,
        ] {
            assert!(
                help.contains(&format!("[default: {default}")),
                "`daemon --help` lacks [default: {default}]:\n{help}"
            );
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.yaml");
        let text = std::fs::read_to_string(&shipped).unwrap();
        // Its policy directory need not exist on this machine: point it at
        // one that does, and check that this is the only edit.
        let policies = tempfile::tempdir().unwrap();
        let edited = text.replace(DEFAULT_POLICY_DIR, policies.path().to_str().unwrap());
        assert_ne!(edited, text, "the example names the policy directory");
        let (_dir, path) = file(&edited);
        let c = parse(&["--config", path.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.events, Output::File("/var/log/agent-monitor/events.jsonl".into()), "the unit's LogsDirectory");
        assert!(c.metrics_addr.ip().is_loopback());
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET), "the unit's RuntimeDirectory");
    }

    #[test]
    fn the_control_socket_group_needs_its_policies_and_a_real_group() {
        let c = parse(&["--control-socket-group", "4242", "--group-policies", "a, b"]).unwrap();
        let group =
            crate::account::CallerGroup { name: "4242".into(), gid: 4242, policies: vec!["a".into(), "b".into()] };
        assert_eq!(c.callers, Some(group));
        assert_eq!(parse(&[]).unwrap().callers, None);
        let p = problems(parse(&["--control-socket-group", "4242"]));
        assert_eq!(
            p,
            ["--control-socket-group needs group_policies (--group-policies): the policies its members may choose"]
        );
        let p = problems(parse(&["--group-policies", "a"]));
        assert!(p[0].starts_with("--group-policies needs control_socket_group"), "{p:?}");
        let p = problems(parse(&["--control-socket-group", "no-such-group-here", "--group-policies", "a"]));
        assert_eq!(p, ["--control-socket-group \"no-such-group-here\": no such group on this host"]);
        let p = problems(parse(&["--control-socket-group", "root", "--group-policies", "a"]));
        assert!(p[0].contains("group 0 is root's"), "{p:?}");
        let (_dir, path) = file("control_socket_group: 4242\ngroup_policies: [sandboxed]\n");
        let c = parse_with(&path, &[]).unwrap();
        assert_eq!(c.callers.unwrap().policies, ["sandboxed"]);
    }
}
