//! Policy enforcement against the real kernel: what the agent's syscall
//! returned, whether the process survived, what a listener received, and
//! the decision, rule and mechanism in the record.
//!
//! The same tests run on every kernel of the VM matrix: file and exec
//! denials are asserted according to the mechanism the daemon reports in
//! `status` (`lsm-deny`: the call fails with EPERM and the process lives;
//! `kill`: the process dies of SIGKILL without seeing the file or running
//! the binary).

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, UdpSocket},
    os::unix::process::ExitStatusExt,
    process::Output,
    time::Duration,
};

use serde_json::Value;

use crate::harness::{agent_bin, assert_stopped, metric_value, of_kind, open_of, stdout, Daemon, Workspace};

/// A workspace with the secret, `bin/forbidden` and a `public` file, and a
/// daemon with one policy `test`.
fn setup(policy: &str) -> (Workspace, Daemon) {
    let s = Workspace::new().with_forbidden_binary();
    std::fs::write(s.ws.join("public"), "public\n").unwrap();
    s.write_policy("test", policy);
    let d = s.daemon();
    (s, d)
}

fn file_exec_policy(mode: &str) -> String {
    format!(
        "name: test\nmode: {mode}\ndefaults:\n  file: allow\n  exec: allow\n  network: allow\nrules:\n  file:\n    \
         - path: ${{WORKSPACE}}/secret/\n      action: deny\n  exec:\n    - path: ${{WORKSPACE}}/bin/forbidden\n      \
         action: deny\n"
    )
}

#[test]
fn denied_file_open_is_stopped_before_the_process_reads_it() {
    let (s, d) = setup(&file_exec_policy("enforce"));
    let mechanism = d.enforcement("file");
    let key = s.secret();
    let agent = agent_bin();
    // `cat` would print the content if it ever got to read it.
    let out =
        d.run_policy("deny-file", "test", &s.ws, &["sh", "-c", "cat \"$1\"; echo rc=$?", "sh", key.to_str().unwrap()]);
    assert!(!stdout(&out).contains("SECRET-CONTENT"), "the secret leaked: {out:?}");
    let out2 = d.run_policy("deny-file-2", "test", &s.ws, &[agent.to_str().unwrap(), "open", key.to_str().unwrap()]);
    assert_stopped(&out2, &mechanism);
    // An allowed file next to it opens.
    let ok = d.run_policy(
        "allow-file",
        "test",
        &s.ws,
        &[agent.to_str().unwrap(), "open", s.ws.join("public").to_str().unwrap()],
    );
    assert_eq!(stdout(&ok).trim(), "ok", "{ok:?}");

    let recs = d.trajectory("deny-file-2");
    let r = open_of(&recs, &key);
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["policy"], "test");
    assert_eq!(r["mechanism"], mechanism.as_str());
    let rule = r["rule"].as_str().unwrap();
    assert!(rule.ends_with("test.yaml:9"), "rule points at the secret/ rule's line: {rule}");
    let recs = d.trajectory("allow-file");
    let r = open_of(&recs, &s.ws.join("public"));
    assert_eq!((r["decision"].as_str(), r["rule"].as_str()), (Some("allow"), Some("default")));
    let m = d.metrics();
    assert!(
        metric_value(
            &m,
            &format!(r#"agent_monitor_denials_total{{class="file",mechanism="{mechanism}",policy="test"}}"#)
        )
        .is_some_and(|v| v >= 2.0),
        "{m}"
    );
}

#[test]
fn symlinks_relative_paths_and_proc_fd_resolve_to_the_denied_file() {
    let (s, d) = setup(&file_exec_policy("enforce"));
    let key = s.secret();
    std::os::unix::fs::symlink(&key, s.ws.join("innocent")).unwrap();
    // A symlink from outside the denied directory, a relative path from
    // inside it, and `..` through it: each opens the secret.
    let script = "cat innocent; echo rc1=$?; (cd secret && cat key; echo rc2=$?); cat bin/../secret/key; echo rc3=$?";
    let out = d.run_policy("aliases", "test", &s.ws, &["sh", "-c", &format!("cd '{}' && {script}", s.ws.display())]);
    let text = stdout(&out);
    assert!(!text.contains("SECRET-CONTENT"), "the secret leaked through an alias: {out:?}");
    for rc in ["rc1=", "rc2=", "rc3="] {
        assert!(text.contains(rc) && !text.contains(&format!("{rc}0")), "{rc} must fail: {out:?}");
    }
    let recs = d.trajectory("aliases");
    let denied: Vec<&Value> = of_kind(&recs, "open").into_iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(denied.len(), 3, "{denied:#?}");
    for r in denied {
        assert_eq!(r["path"], key.to_str().unwrap(), "judged on the resolved path: {r}");
    }
}

#[test]
fn o_path_then_reopen_through_proc_is_judged_on_the_real_file() {
    let (s, d) = setup(&file_exec_policy("enforce"));
    let mechanism = d.enforcement("file");
    let key = s.secret();
    // Attacker: an O_PATH descriptor (not judged, allows no I/O), then a
    // real open of /proc/self/fd/N, hoping the proc path is what is judged.
    let out =
        d.run_policy("opath", "test", &s.ws, &[agent_bin().to_str().unwrap(), "reopen-opath", key.to_str().unwrap()]);
    assert!(!stdout(&out).contains("SECRET-CONTENT"), "the secret leaked: {out:?}");
    assert_stopped(&out, &mechanism);
    let recs = d.trajectory("opath");
    if mechanism == "landlock-deny" {
        crate::bypass::assert_landlock_refusals(&recs, &["/proc/self/fd/"], &key);
        return;
    }
    let denied: Vec<&Value> = of_kind(&recs, "open").into_iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(denied.len(), 1, "{recs:#?}");
    assert_eq!(denied[0]["path"], key.to_str().unwrap(), "judged on the real file: {}", denied[0]);
}

#[test]
fn a_path_rewritten_during_the_open_cannot_smuggle_the_denied_file() {
    let (s, d) = setup(&file_exec_policy("enforce"));
    // Same length: ws/aaaaaa/key vs ws/secret/key.
    let allowed = s.ws.join("aaaaaa/key");
    std::fs::create_dir_all(allowed.parent().unwrap()).unwrap();
    std::fs::write(&allowed, "ALLOWED\n").unwrap();
    let denied = s.secret();
    let out = d.run_policy(
        "race",
        "test",
        &s.ws,
        &[agent_bin().to_str().unwrap(), "race-open", allowed.to_str().unwrap(), denied.to_str().unwrap(), "20000"],
    );
    assert!(!stdout(&out).contains("SECRET-CONTENT"), "the race smuggled the secret out: {out:?}");
    let recs = d.trajectory("race");
    // The race did reach the secret, and every open the kernel performed of
    // it was judged as the secret.
    let of_secret: Vec<&Value> =
        of_kind(&recs, "open").into_iter().filter(|r| r["path"] == denied.to_str().unwrap()).collect();
    assert!(!of_secret.is_empty(), "the race never opened the secret; the test proved nothing: {out:?}");
    for r in of_secret {
        assert_eq!(r["decision"], "deny", "{r}");
    }
}

#[test]
fn denied_exec_never_runs_the_binary() {
    let (s, d) = setup(&file_exec_policy("enforce"));
    let mechanism = d.enforcement("exec");
    let bin = s.ws.join("bin/forbidden");
    // Through a symlink elsewhere, too.
    std::os::unix::fs::symlink(&bin, s.ws.join("alias")).unwrap();
    let out = d.run_policy("deny-exec", "test", &s.ws, &[bin.to_str().unwrap(), "sleep", "0"]);
    match mechanism.as_str() {
        // `run` itself execs the binary: EPERM reaches it.
        "lsm-deny" => assert_eq!(out.status.code(), Some(126), "{out:?}"),
        "kill" => assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}"),
        other => panic!("exec rules not enforced: {other}"),
    }
    let out = d.run_policy(
        "deny-exec-alias",
        "test",
        &s.ws,
        &["sh", "-c", &format!("'{}' sleep 0; echo rc=$?", s.ws.join("alias").display())],
    );
    let rc = if mechanism == "kill" { "rc=137" } else { "rc=126" };
    assert!(stdout(&out).contains(rc), "{out:?}");

    let recs = d.trajectory("deny-exec-alias");
    let r = of_kind(&recs, "exec")
        .into_iter()
        .find(|r| r["path"] == bin.to_str().unwrap())
        .unwrap_or_else(|| panic!("no exec record of the binary: {recs:#?}"));
    assert_eq!((r["decision"].as_str(), r["mechanism"].as_str()), (Some("deny"), Some(mechanism.as_str())), "{r}");
    assert!(r["rule"].as_str().unwrap().ends_with("test.yaml:12"), "{r}");
}

#[test]
fn audit_mode_records_the_same_decisions_and_blocks_nothing() {
    let (s, d) = setup(&file_exec_policy("audit"));
    let key = s.secret();
    let out = d.run_policy(
        "audit",
        "test",
        &s.ws,
        &[
            "sh",
            "-c",
            &format!("cat '{}' && '{}' sleep 0 && echo ran", key.display(), s.ws.join("bin/forbidden").display()),
        ],
    );
    assert!(stdout(&out).contains("SECRET-CONTENT") && stdout(&out).contains("ran"), "{out:?}");
    let recs = d.trajectory("audit");
    let r = open_of(&recs, &key);
    assert_eq!((r["decision"].as_str(), r["action"].as_str()), (Some("audit"), Some("deny")), "{r}");
    assert!(r.get("mechanism").is_none(), "{r}");
    let e =
        of_kind(&recs, "exec").into_iter().find(|r| r["path"] == s.ws.join("bin/forbidden").to_str().unwrap()).unwrap();
    assert_eq!(e["decision"], "audit");
}

/// Listens on `addr` and reports whether anything connected within the
/// test's lifetime.
fn tcp_listener(addr: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind(addr).expect("bind listener");
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn accepted(l: &TcpListener) -> bool {
    std::thread::sleep(Duration::from_millis(100));
    l.accept().is_ok()
}

#[test]
fn network_rules_deny_tcp_v4_v6_mapped_and_udp_with_eperm() {
    let (deny4, p_deny) = tcp_listener("127.0.0.1:0");
    let (allow4, p_allow) = tcp_listener("127.0.0.1:0");
    let (deny6, p_deny6) = tcp_listener("[::1]:0");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let p_udp = udp.local_addr().unwrap().port();
    let policy = format!(
        "name: test\nmode: enforce\ndefaults:\n  file: allow\n  exec: allow\n  network: allow\nrules:\n  network:\n    \
         - cidr: 127.0.0.1/32\n      ports: [\"{p_deny}\"]\n      action: deny\n    \
         - cidr: ::1/128\n      ports: [\"{p_deny6}\"]\n      action: deny\n    \
         - cidr: 127.0.0.0/8\n      ports: [\"{p_udp}\"]\n      protocol: udp\n      action: deny\n"
    );
    let (s, d) = setup(&policy);
    let agent = agent_bin();
    let agent = agent.to_str().unwrap();
    let run = |id: &str, args: &[&str]| {
        let mut cmd = vec![agent];
        cmd.extend_from_slice(args);
        d.run_policy(id, "test", &s.ws, &cmd)
    };
    let eperm = |o: &Output| o.status.code() == Some(3) && stdout(o).contains("errno=1 ");

    let o = run("tcp4-deny", &["connect", "127.0.0.1", &p_deny.to_string()]);
    assert!(eperm(&o), "TCP v4 must fail with EPERM: {o:?}");
    assert!(!accepted(&deny4), "the listener must receive nothing");
    let o = run("tcp4-allow", &["connect", "127.0.0.1", &p_allow.to_string()]);
    assert_eq!(stdout(&o).trim(), "ok", "{o:?}");
    assert!(accepted(&allow4));
    let o = run("tcp6-deny", &["connect", "::1", &p_deny6.to_string()]);
    assert!(eperm(&o), "TCP v6 must fail with EPERM: {o:?}");
    assert!(!accepted(&deny6));
    // The v4 rule applies to the same address written as IPv4-mapped IPv6.
    let o = run("mapped-deny", &["connect", "::ffff:127.0.0.1", &p_deny.to_string()]);
    assert!(eperm(&o), "v4-mapped v6 must be judged by the v4 rule: {o:?}");
    assert!(!accepted(&deny4));
    let o = run("udp-deny", &["sendto", "127.0.0.1", &p_udp.to_string()]);
    assert!(eperm(&o), "UDP sendto must fail with EPERM: {o:?}");
    let mut buf = [0u8; 16];
    assert!(udp.recv(&mut buf).is_err(), "the UDP listener must receive nothing");
    // The UDP rule does not catch TCP to the same port.
    let o = run("tcp-udp-port", &["connect", "127.0.0.1", &p_udp.to_string()]);
    assert!(!eperm(&o), "{o:?}");

    for (id, decision, addr) in [
        ("tcp4-deny", "deny", "127.0.0.1"),
        ("tcp4-allow", "allow", "127.0.0.1"),
        ("tcp6-deny", "deny", "::1"),
        ("mapped-deny", "deny", "::ffff:127.0.0.1"),
        ("udp-deny", "deny", "127.0.0.1"),
    ] {
        let recs = d.trajectory(id);
        let c = of_kind(&recs, "connect");
        let r = c.iter().find(|r| r["addr"] == addr).unwrap_or_else(|| panic!("{id}: no connect record: {recs:#?}"));
        assert_eq!(r["decision"], decision, "{id}: {r}");
        if decision == "deny" {
            assert_eq!(r["mechanism"], "cgroup-deny", "{id}: {r}");
            assert!(r["rule"].as_str().unwrap().contains("test.yaml:"), "{id}: {r}");
        }
    }
    let m = d.metrics();
    assert_eq!(
        metric_value(&m, r#"agent_monitor_denials_total{class="network",mechanism="cgroup-deny",policy="test"}"#),
        Some(4.0),
        "{m}"
    );
}

#[test]
fn reload_takes_effect_for_a_running_trajectory_and_a_broken_edit_is_refused() {
    let policy = |denied: &str| {
        format!(
            "name: test\nmode: enforce\ndefaults:\n  file: allow\n  exec: allow\n  network: allow\nrules:\n  file:\n    \
             - path: ${{WORKSPACE}}/{denied}\n      action: deny\n"
        )
    };
    let (s, d) = setup(&policy("secret/"));
    let public = s.ws.join("public");
    let step = |n: u32| s.ws.join(format!("go{n}"));
    // One trajectory that opens `public` each time the test says go.
    let script = format!(
        "for n in 1 2 3; do while [ ! -e '{ws}/go'$n ]; do sleep 0.02; done; cat '{p}' >/dev/null; echo step$n=$?; done",
        ws = s.ws.display(),
        p = public.display()
    );
    let mut child = d
        .run_policy_cmd("reload", "test", &s.ws, &["sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Each step's result is read before the policy changes: under TCG the
    // shell may take longer than any fixed sleep to reach its `cat`.
    let mut results = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut go = |n: u32| {
        std::fs::write(step(n), "").unwrap();
        results.next().unwrap_or_else(|| panic!("the agent ended before step {n}")).unwrap()
    };

    let step1 = go(1);
    // Deny `public` from now on.
    std::fs::write(s.policies.join("test.yaml"), policy("public")).unwrap();
    // SAFETY: a signal to the test's own daemon child.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    d.wait_metric(r#"agent_monitor_policy_reloads_total{result="success"}"#, 1.0);
    let step2 = go(2);
    // A broken edit: refused, the previous rules keep denying.
    std::fs::write(s.policies.join("test.yaml"), "name: test\nmode: enforce\nrules: [\n").unwrap();
    // SAFETY: a signal to the test's own daemon child.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    d.wait_metric(r#"agent_monitor_policy_reloads_total{result="failure"}"#, 1.0);
    let step3 = go(3);
    child.wait().unwrap();
    assert_eq!(step1, "step1=0", "allowed before the reload");
    assert!(step2.starts_with("step2=") && step2 != "step2=0", "denied after the reload: {step2}");
    assert!(step3.starts_with("step3=") && step3 != "step3=0", "still denied after the refused edit: {step3}");
    d.wait_log("policy reload refused");

    let recs = d.trajectory("reload");
    let opens: Vec<&Value> =
        of_kind(&recs, "open").into_iter().filter(|r| r["path"] == public.to_str().unwrap()).collect();
    let decisions: Vec<&str> = opens.iter().map(|r| r["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["allow", "deny", "deny"], "{opens:#?}");
}

#[test]
fn status_reports_the_mechanism_per_class_and_the_loaded_policies() {
    let (_s, d) = setup(&file_exec_policy("enforce"));
    let st = d.status();
    let e = &st["enforcement"];
    assert_eq!(e["network"], "cgroup-deny", "{st:#}");
    let lsm_active =
        std::fs::read_to_string("/sys/kernel/security/lsm").is_ok_and(|l| l.split(',').any(|x| x == "bpf"));
    // The VM guests booted with `bpf` in `lsm=` set this: there BPF LSM must
    // be what enforces, not the fallback.
    let expect_lsm = std::env::var_os("AGENT_MONITOR_EXPECT_LSM").is_some();
    for class in ["file", "exec"] {
        let m = e[class].as_str().unwrap();
        assert!(m == "lsm-deny" || m == "kill" || (class == "file" && m == "landlock-deny"), "{class}: {m}");
        if expect_lsm {
            assert_eq!(m, "lsm-deny", "{class}: BPF LSM is active on this kernel but not enforcing: {st:#}");
        }
        if !lsm_active {
            // No BPF LSM (or securityfs not mounted to tell): never claimed.
            assert_ne!(m, "lsm-deny", "{class} claims {m} without bpf in the LSM list: {st:#}");
        }
    }
    let names: Vec<&str> = st["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "test"], "the embedded default is always loaded: {st:#}");
    let text = String::from_utf8(
        std::process::Command::new(crate::harness::monitor_bin())
            .args(["status", "--control-socket"])
            .arg(&d.socket)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(text.contains("lsm:file_open") && text.contains("cgroup-deny"), "{text}");
}
