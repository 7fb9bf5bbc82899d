//! `run --user`: the account the agent runs as, and dropping to it.
//!
//! `run` is single-threaded (no runtime), and the drop happens in its
//! `pre_exec` hook, after the daemon moved the process into the trajectory
//! cgroup: supplementary groups, gid, the capability bounding set and the
//! ambient set while still privileged, `no_new_privs`, then the uid, then
//! every remaining capability set cleared, and checked.

use std::{
    ffi::{CStr, CString},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

pub use crate::policy::session::{cap_name, cap_number};

/// Who the agent starts as, as `trajectory_start` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Capability names (`cap_net_bind_service`, ...) of the effective set.
    pub capabilities: Vec<String>,
    /// `no_new_privs`.
    pub no_new_privs: bool,
}

/// `control_socket_group` and `group_policies`: who besides root may start
/// trajectories, for themselves, and under which policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerGroup {
    /// As written (name or gid), for messages.
    pub name: String,
    pub gid: u32,
    pub policies: Vec<String>,
}

/// A resolved `USER[:GROUP]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// From the password database, when the user has an entry.
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountError {
    #[error("--user {0:?}: no such user")]
    NoUser(String),
    #[error("--user {0:?}: no such group")]
    NoGroup(String),
    #[error("--user {0:?}: uid {1} has no password entry, so its group is unknown: name it (USER:GROUP)")]
    NoPrimaryGroup(String, u32),
    #[error("--user {0:?}: expected USER or USER:GROUP (names or numeric ids)")]
    Syntax(String),
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// Looks a user up by name or, when numeric, by uid.
fn passwd(user: &str) -> Option<Passwd> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `libc::passwd` is plain data; all zeroes is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = match user.parse::<u32>() {
        // SAFETY: buffers of the sizes passed, `out` written by the call.
        Ok(uid) => unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) },
        Err(_) => {
            let name = CString::new(user).ok()?;
            // SAFETY: as above, with a NUL-terminated name.
            unsafe { libc::getpwnam_r(name.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) }
        }
    };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: the entry's strings point into `buf`, NUL-terminated.
    let (name, home) = unsafe { (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir)) };
    Some(Passwd {
        name: name.to_string_lossy().into_owned(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(home.to_string_lossy().into_owned()),
    })
}

/// A group id by name or number.
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    let name = CString::new(group).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `libc::group` is plain data; all zeroes is a valid value.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: buffers of the sizes passed, `out` written by the call.
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(gr.gr_gid)
}

/// The groups `name` belongs to, `gid` first.
fn group_list(name: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = CString::new(name) else { return vec![gid] };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` holds `n` entries; the call writes at most that
        // many and sets `n` to the count (or the size needed).
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n <= asked {
            return vec![gid];
        }
    }
}

/// Resolves `USER[:GROUP]`.
pub fn resolve(spec: &str) -> Result<Account, AccountError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) if !u.is_empty() && !g.is_empty() => (u, Some(g)),
        Some(_) => return Err(AccountError::Syntax(spec.to_owned())),
        None if !spec.is_empty() => (spec, None),
        None => return Err(AccountError::Syntax(spec.to_owned())),
    };
    let pw = passwd(user);
    let uid = match (&pw, user.parse::<u32>()) {
        (Some(p), _) => p.uid,
        (None, Ok(uid)) => uid,
        (None, Err(_)) => return Err(AccountError::NoUser(spec.to_owned())),
    };
    let gid = match (grp, &pw) {
        (Some(g), _) => group_id(g).ok_or_else(|| AccountError::NoGroup(spec.to_owned()))?,
        (None, Some(p)) => p.gid,
        (None, None) => return Err(AccountError::NoPrimaryGroup(spec.to_owned(), uid)),
    };
    let groups = match &pw {
        // With an explicit group the primary one is replaced, as `su -g`.
        Some(p) => {
            let mut g = group_list(&p.name, gid);
            if grp.is_some() {
                g.retain(|&x| x != p.gid || x == gid);
            }
            g
        }
        None => vec![gid],
    };
    Ok(Account { uid, gid, groups, name: pw.as_ref().map(|p| p.name.clone()), home: pw.map(|p| p.home) })
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> std::io::Result<[CapData; 2]> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: a version-3 header and the two data words it describes.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(data)
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Becomes `account` with `no_new_privs` and no capability but those of
/// the mask `keep` (kept in the permitted, effective, inheritable, ambient
/// and bounding sets, so they survive `exec`): for the `pre_exec` hook of a
/// single-threaded process (a raw `setresuid` changes the calling thread
/// only). `last_cap` is read beforehand.
pub fn drop_to(account: &Account, last_cap: u32, keep: u64) -> std::io::Result<()> {
    // prctl's unused arguments must be 0 as whole words: an `int` literal
    // in a variadic call leaves the register's upper half undefined.
    const Z: libc::c_ulong = 0;
    // SAFETY: plain syscalls on this (only) thread with valid arguments.
    unsafe {
        check(libc::setgroups(account.groups.len(), account.groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(account.gid, account.gid, account.gid), "setresgid")?;
        for cap in (0..=last_cap).filter(|c| keep & (1 << c) == 0) {
            check(libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), Z, Z, Z), "dropping the bounding set")?;
        }
        let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        check(libc::prctl(libc::PR_CAP_AMBIENT, clear_all, Z, Z, Z), "clearing the ambient set")?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, Z, Z, Z), "no_new_privs")?;
        // The permitted set survives the change of uid only with this.
        let keepcaps = libc::c_ulong::from(keep != 0);
        check(libc::prctl(libc::PR_SET_KEEPCAPS, keepcaps, Z, Z, Z), "keeping capabilities")?;
        check(libc::setresuid(account.uid, account.uid, account.uid), "setresuid")?;
        let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let set = |half: u32| CapData { effective: half, permitted: half, inheritable: half };
        let data = [set(keep as u32), set((keep >> 32) as u32)];
        check(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) as libc::c_int, "capset")?;
        // Ambient capabilities stay effective across `exec` of a file
        // without file capabilities, which is every agent's program.
        let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
        for cap in (0..64u64).filter(|c| keep & (1 << c) != 0) {
            check(
                libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, Z, Z),
                "raising an ambient capability",
            )?;
        }
        check(libc::prctl(libc::PR_SET_KEEPCAPS, Z, Z, Z, Z), "keeping capabilities")?;
    }
    let left = capget()?;
    let mask = |f: fn(&CapData) -> u32| u64::from(f(&left[0])) | u64::from(f(&left[1])) << 32;
    if [mask(|d| d.effective), mask(|d| d.permitted), mask(|d| d.inheritable)] != [keep; 3] {
        return Err(std::io::Error::other("capabilities other than the kept ones remain after dropping them"));
    }
    Ok(())
}

/// The mask of capability names (without `cap_`); unknown names are none.
pub fn cap_mask(names: &[String]) -> u64 {
    names.iter().filter_map(|n| cap_number(n)).fold(0, |m, c| m | 1 << c)
}

/// What `run` becomes under a policy's `session:`, decided by the daemon.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionPlan {
    /// Who the agent starts as, for `trajectory_start`.
    pub agent: Option<AgentIdentity>,
    /// The account for a `run` without `--user` to drop to, and its home
    /// (`${HOME}` of the policy).
    pub user: Option<(String, Option<PathBuf>)>,
    /// Capabilities the agent keeps.
    pub capabilities: Vec<String>,
}

/// Checks a trajectory's start against `session` of `policy`: `asked` is
/// `run --user` as given, `agent` who the client says the agent starts as,
/// `caller_uid` the client's uid. Without `session.user` nothing changes;
/// with it, `--user` must name the same uid, and a root caller without
/// `--user` is told to drop to it.
pub fn plan(
    policy: &str,
    session: &crate::policy::Session,
    asked: Option<&str>,
    agent: Option<AgentIdentity>,
    caller_uid: u32,
) -> Result<SessionPlan, String> {
    let Some(required) = &session.user else {
        return Ok(SessionPlan { agent, user: None, capabilities: Vec::new() });
    };
    let want = resolve(required).map_err(|e| {
        format!("policy {policy:?} requires session.user {required:?}, which this host cannot resolve: {e}")
    })?;
    let caps = session.capabilities.clone();
    let identity =
        |a: &Account| AgentIdentity { capabilities: caps.iter().map(|c| format!("cap_{c}")).collect(), ..dropped(a) };
    match asked {
        Some(spec) => {
            let got = resolve(spec).map_err(|e| e.to_string())?;
            if got.uid != want.uid {
                return Err(format!(
                    "policy {policy:?} requires the agent to run as {required:?} (uid {}), but --user {spec:?} is uid {}",
                    want.uid, got.uid
                ));
            }
            Ok(SessionPlan { agent: Some(identity(&got)), user: None, capabilities: caps })
        }
        // A non-root caller already is the account.
        None if caller_uid == want.uid => Ok(SessionPlan { agent, user: None, capabilities: Vec::new() }),
        None if caller_uid == 0 => Ok(SessionPlan {
            agent: Some(identity(&want)),
            user: Some((required.clone(), want.home.clone())),
            capabilities: caps,
        }),
        None => Err(format!(
            "policy {policy:?} requires the agent to run as {required:?} (uid {}); the caller is uid {caller_uid} and \
             cannot change to it",
            want.uid
        )),
    }
}

/// This process's identity: what the agent starts with when `run` does
/// not change it.
pub fn current() -> AgentIdentity {
    // SAFETY: these calls cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: a zero-length query returns the count; then a buffer that size.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) }.max(0) as usize;
    let mut groups = vec![0 as libc::gid_t; n];
    // SAFETY: `groups` holds `n` entries.
    let got = unsafe { libc::getgroups(n as libc::c_int, groups.as_mut_ptr()) }.max(0) as usize;
    groups.truncate(got);
    let effective = capget().map_or(0, |d| u64::from(d[0].effective) | u64::from(d[1].effective) << 32);
    let z: libc::c_ulong = 0;
    // SAFETY: a query without side effects.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, z, z, z, z) } == 1;
    AgentIdentity { uid, gid, groups, capabilities: cap_names(effective), no_new_privs: nnp }
}

/// The identity of process `pid`, from `/proc/<pid>/status`: what a
/// non-root caller's agent starts with (`None` if it is gone).
pub fn of_process(pid: u32) -> Option<AgentIdentity> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    // Real, effective, saved, filesystem: the effective id.
    let id = |k: &str| field(k)?.split_whitespace().nth(1)?.parse::<u32>().ok();
    let groups = field("Groups:")?.split_whitespace().filter_map(|g| g.parse().ok()).collect();
    let effective = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(AgentIdentity {
        uid: id("Uid:")?,
        gid: id("Gid:")?,
        groups,
        capabilities: cap_names(effective),
        no_new_privs: field("NoNewPrivs:") == Some("1"),
    })
}

/// The identity `account` starts with after [`drop_to`].
pub fn dropped(account: &Account) -> AgentIdentity {
    AgentIdentity {
        uid: account.uid,
        gid: account.gid,
        groups: account.groups.clone(),
        capabilities: Vec::new(),
        no_new_privs: true,
    }
}

fn cap_names(mask: u64) -> Vec<String> {
    (0..64u32).filter(|b| mask & (1 << b) != 0).map(cap_name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs_resolve_by_name_and_number() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_deref()), (0, 0, Some("root")));
        assert_eq!(resolve("0").unwrap().uid, 0);
        let nobody = resolve("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        assert_eq!(resolve("65534:0").unwrap().gid, 0);
        assert_eq!(
            resolve("12345:12345").unwrap(),
            Account { uid: 12345, gid: 12345, groups: vec![12345], name: None, home: None }
        );
        assert!(matches!(resolve("12345"), Err(AccountError::NoPrimaryGroup(_, 12345))));
        assert!(matches!(resolve("no-such-user-here"), Err(AccountError::NoUser(_))));
        assert!(matches!(resolve("root:no-such-group-here"), Err(AccountError::NoGroup(_))));
        for bad in ["", ":", "root:", ":root"] {
            assert!(matches!(resolve(bad), Err(AccountError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn a_policy_session_decides_the_account() {
        let none = crate::policy::Session::default();
        let me = current();
        let p = plan("p", &none, None, Some(me.clone()), 0).unwrap();
        assert_eq!(p, SessionPlan { agent: Some(me.clone()), user: None, capabilities: vec![] });
        let session =
            crate::policy::Session { user: Some("nobody".into()), capabilities: vec!["net_bind_service".into()] };
        // Root without --user drops to the policy's account.
        let p = plan("p", &session, None, Some(me.clone()), 0).unwrap();
        assert_eq!(p.user.as_ref().map(|u| u.0.as_str()), Some("nobody"));
        let agent = p.agent.unwrap();
        assert_eq!((agent.uid, agent.capabilities), (65534, vec!["cap_net_bind_service".to_owned()]));
        // --user naming the same uid passes; another one is refused.
        assert!(plan("p", &session, Some("65534:65534"), None, 0).unwrap().user.is_none());
        let err = plan("p", &session, Some("root"), None, 0).unwrap_err();
        assert_eq!(
            err,
            "policy \"p\" requires the agent to run as \"nobody\" (uid 65534), but --user \"root\" is uid 0"
        );
        assert!(plan("p", &session, None, None, 1000).unwrap_err().contains("the caller is uid 1000"));
        assert_eq!(plan("p", &session, None, None, 65534).unwrap().user, None);
        let ghost = crate::policy::Session { user: Some("no-such-user-here".into()), capabilities: vec![] };
        assert!(plan("p", &ghost, None, None, 0).unwrap_err().contains("which this host cannot resolve"));
        assert_eq!(cap_mask(&["net_bind_service".into(), "kill".into()]), 1 << 10 | 1 << 5);
    }

    #[test]
    fn capability_masks_read_as_names() {
        assert_eq!(cap_names(1 << 10 | 1 << 21), ["cap_net_bind_service", "cap_sys_admin"]);
        assert_eq!(cap_names(1 << 63), ["cap_63"]);
    }
}
