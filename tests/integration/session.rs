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
