//! `run --user`: the agent runs as an unprivileged account, with no
//! capability and `no_new_privs`, and `trajectory_start` says so.

use std::{os::unix::fs::PermissionsExt, process::Command};

use crate::harness::{of_kind, stdout, Daemon};

/// The `/proc/self/status` lines of the privilege state.
const SHOW: &str = "id -u; id -g; grep -E '^(NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status; \
                    echo \"HOME=$HOME USER=$USER LOGNAME=$LOGNAME\"";

#[test]
fn run_user_drops_to_the_account_with_no_capability_and_no_new_privileges() {
    let d = Daemon::start();
    let mut c = Command::new(crate::harness::monitor_bin());
    c.args(["run", "--control-socket"]).arg(&d.socket);
    let out = c.args(["--trajectory", "as-nobody", "--user", "nobody", "--", "sh", "-c", SHOW]).output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["65534", "65534"], "{text}");
    let status: std::collections::BTreeMap<&str, &str> =
        lines[2..].iter().filter_map(|l| l.split_once(':')).map(|(k, v)| (k, v.trim())).collect();
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status.get(key), Some(&"0000000000000000"), "{key} in {text}");
    }
    assert_eq!(status.get("NoNewPrivs"), Some(&"1"), "{text}");
    let env = lines.iter().find(|l| l.starts_with("HOME=")).unwrap_or_else(|| panic!("{text}"));
    assert!(env.starts_with("HOME=/") && env.ends_with("USER=nobody LOGNAME=nobody"), "{text}");
    let recs = d.trajectory("as-nobody");
    let start = of_kind(&recs, "trajectory_start")[0];
    assert_eq!(start["agent"]["uid"], 65534, "{start}");
    assert_eq!(start["agent"]["capabilities"], serde_json::json!([]), "{start}");
    assert_eq!(start["agent"]["no_new_privs"], true, "{start}");
    // Without --user the agent is the caller (root here), as recorded.
    let out = d.run(Some("as-caller"), &["true"]);
    assert!(out.status.success(), "{out:?}");
    let recs = d.trajectory("as-caller");
    let start = of_kind(&recs, "trajectory_start")[0];
    assert_eq!(start["agent"]["uid"], 0, "{start}");
    assert!(start["agent"]["capabilities"].as_array().unwrap().iter().any(|c| c == "cap_sys_admin"), "{start}");
}

#[test]
fn a_setuid_binary_gains_nothing_under_run_user() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let suid = dir.path().join("suid-id");
    // coreutils' `id` (the guests pack it: busybox's applet would not run
    // under another name).
    let id = Command::new("sh").args(["-c", "command -v id"]).output().unwrap();
    std::fs::copy(stdout(&id).trim(), &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // Control: dropped to nobody by setpriv (no `no_new_privs`), the
    // setuid bit makes it root, so this filesystem honours setuid.
    let control = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&suid)
        .arg("-u")
        .output()
        .unwrap();
    assert_eq!(stdout(&control).trim(), "0", "setuid must work here for the test to mean anything: {control:?}");
    let mut c = Command::new(crate::harness::monitor_bin());
    c.args(["run", "--control-socket"]).arg(&d.socket);
    let out = c.args(["--trajectory", "suid", "--user", "nobody", "--"]).arg(&suid).arg("-u").output().unwrap();
    assert_eq!(stdout(&out).trim(), "65534", "{out:?}");
    d.trajectory("suid");
}

#[test]
fn run_user_refuses_an_unknown_account_before_anything_runs() {
    let d = Daemon::start();
    let mut c = Command::new(crate::harness::monitor_bin());
    c.args(["run", "--control-socket"]).arg(&d.socket);
    let out = c.args(["--trajectory", "nouser", "--user", "no-such-user-here", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--user \"no-such-user-here\": no such user"), "{err}");
    assert!(d.records().iter().all(|r| r["trajectory"] != "nouser"), "no trajectory may open");
}

/// `/proc/self/status` of the agent as a map, after the `id` lines.
fn proc_status(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect()
}

#[test]
fn a_policy_session_user_is_applied_and_a_conflicting_user_refused() {
    let w = crate::harness::Workspace::new();
    let head = "mode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n";
    w.write_policy("unprivileged", &format!("name: unprivileged\n{head}session: {{user: nobody}}\n"));
    w.write_policy(
        "binder",
        &format!("name: binder\n{head}session:\n  user: nobody\n  capabilities: [net_bind_service]\n"),
    );
    let d = w.daemon();
    // Root without --user: the policy's account, nothing else.
    let out = d.run_policy("by-policy", "unprivileged", &w.ws, &["sh", "-c", SHOW]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("65534\n65534\n"), "{text}");
    let status = proc_status(&text);
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status.get(key).map(String::as_str), Some("0000000000000000"), "{key} in {text}");
    }
    assert_eq!(status.get("NoNewPrivs").map(String::as_str), Some("1"), "{text}");
    assert!(text.contains("USER=nobody LOGNAME=nobody"), "{text}");
    let start = d.trajectory("by-policy").into_iter().find(|r| r["kind"] == "trajectory_start").unwrap();
    assert_eq!((start["agent"]["uid"].as_u64(), start["agent"]["no_new_privs"].as_bool()), (Some(65534), Some(true)));
    // --user naming the same account passes; another is refused before
    // anything runs.
    let run_as = |id: &str, user: &str| {
        let mut c = Command::new(crate::harness::monitor_bin());
        c.args(["run", "--control-socket"]).arg(&d.socket).args(["--trajectory", id, "--policy", "unprivileged"]);
        c.args(["--user", user, "--", "id", "-u"]).output().unwrap()
    };
    let out = run_as("same-user", "65534:65534");
    assert_eq!((out.status.success(), stdout(&out).trim()), (true, "65534"), "{out:?}");
    let out = run_as("as-root", "root");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "policy \"unprivileged\" requires the agent to run as \"nobody\" (uid 65534), but --user \"root\" is uid 0"
        ),
        "{err}"
    );
    assert!(d.records().iter().all(|r| r["trajectory"] != "as-root"), "no trajectory may open");
    // A kept capability stays in every set the agent's programs inherit,
    // and is the only one.
    let out = d.run_policy("binder", "binder", &w.ws, &["sh", "-c", SHOW]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    let status = proc_status(&text);
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status.get(key).map(String::as_str), Some("0000000000000400"), "{key} in {text}");
    }
    let start = d.trajectory("binder").into_iter().find(|r| r["kind"] == "trajectory_start").unwrap();
    assert_eq!(start["agent"]["capabilities"], serde_json::json!(["cap_net_bind_service"]), "{start}");
}

/// The group of the test's non-root callers: a gid no account has, so that
/// membership comes only from `setpriv --groups`.
const CALLERS_GID: &str = "4242";

/// `agent-monitor ARGS...` as uid 65534 with the supplementary `groups`
/// (`--clear-groups` when empty).
fn as_nobody(groups: &str, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.arg(format!("--groups={groups}"));
    }
    c.arg(crate::harness::monitor_bin()).args(args).output().unwrap()
}

#[test]
fn members_of_the_control_socket_group_start_trajectories_as_themselves_only() {
    use std::os::unix::fs::MetadataExt;
    let w = crate::harness::Workspace::new();
    let head = "mode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n";
    w.write_policy("allowed", &format!("name: allowed\n{head}"));
    w.write_policy("other", &format!("name: other\n{head}"));
    let d = crate::harness::Daemon::start_with(&[
        "--policy-dir",
        w.policy_dir(),
        "--control-socket-group",
        CALLERS_GID,
        "--group-policies",
        "allowed",
    ]);
    // The socket and its directory are the group's; the test's own
    // temporary directory above them is opened for traversal only.
    let gid: u32 = CALLERS_GID.parse().unwrap();
    let sock = std::fs::metadata(&d.socket).unwrap();
    let dir = std::fs::metadata(d.socket.parent().unwrap()).unwrap();
    assert_eq!((sock.uid(), sock.gid(), sock.mode() & 0o777), (0, gid, 0o660));
    assert_eq!((dir.uid(), dir.gid(), dir.mode() & 0o777), (0, gid, 0o750));
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = d.socket.to_str().unwrap().to_owned();
    let run = |groups: &str, id: &str, extra: &[&str]| {
        let mut args = vec!["run", "--control-socket", &socket, "--trajectory", id, "--workspace", "/tmp"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "id", "-u"]);
        as_nobody(groups, &args)
    };
    // A member starts a trajectory under a policy of its group, as itself.
    let out = run(CALLERS_GID, "member", &["--policy", "allowed"]);
    assert_eq!((out.status.success(), stdout(&out).trim()), (true, "65534"), "{out:?}");
    let start = d.trajectory("member").into_iter().find(|r| r["kind"] == "trajectory_start").unwrap();
    assert_eq!((start["agent"]["uid"].as_u64(), start["agent"]["gid"].as_u64()), (Some(65534), Some(65534)));
    assert_eq!(start["agent"]["groups"], serde_json::json!([gid]), "{start}");
    assert_eq!(start["agent"]["capabilities"], serde_json::json!([]), "{start}");
    assert_eq!((start["uid"].as_u64(), start["policy"].as_str()), (Some(65534), Some("allowed")), "{start}");
    let refused = |out: &std::process::Output, needle: &str| {
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err}");
    };
    // Not another policy (nor the default one, which is not listed), not
    // another account.
    let out = run(CALLERS_GID, "member-other", &["--policy", "other"]);
    refused(&out, "policy \"other\" is not one members of group 4242 may choose (group_policies: allowed)");
    refused(&run(CALLERS_GID, "member-default", &[]), "policy \"default\" is not one members of group 4242 may choose");
    let out = run(CALLERS_GID, "member-root", &["--policy", "allowed", "--user", "root"]);
    refused(&out, "--user \"root\" is uid 0: members of group 4242 start trajectories as themselves (uid 65534)");
    // Nothing but `run`: not status, not the events of any trajectory.
    refused(&as_nobody(CALLERS_GID, &["status", "--control-socket", &socket]), "`status` is for root");
    let out = as_nobody(CALLERS_GID, &["events", "--control-socket", &socket, "--trajectory", "member"]);
    refused(&out, "`events` is for root");
    // A non-member cannot even reach the socket.
    let out = run("", "outsider", &["--policy", "allowed"]);
    refused(&out, "ermission denied");
    let ids: Vec<String> = d.records().iter().filter_map(|r| r["trajectory"].as_str().map(str::to_owned)).collect();
    assert!(ids.iter().all(|t| t == "member"), "only the member's trajectory opened: {ids:?}");
}
