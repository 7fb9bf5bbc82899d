//! Bypass attempts against the file, exec and network rules: one test per
//! technique an agent could use to reach a denied file, binary or address
//! by another name or another syscall. Each says in a comment what the
//! attacker did, and asserts the syscall's outcome and the record.
//!
//! Outcomes follow the mechanism the daemon reports (`lsm-deny` or `kill`).
//! Where nothing stops a technique, the test asserts today's behaviour (the
//! bypass works, and what is recorded), so it fails the day that changes;
//! `docs/security.md` lists each with the test that covers it, together with
//! the cases already covered in `enforce.rs` (symlinks, relative paths, `..`,
//! `/proc/self/fd` after `O_PATH`, the check-then-use race, IPv4-mapped IPv6)
//! and `tamper.rs` (cgroup escape, bind mounts).

use std::{
    net::TcpListener,
    os::{fd::AsRawFd, unix::net::UnixListener},
    path::Path,
};

use serde_json::Value;

use crate::{
    harness::{assert_stopped, of_kind, stdout},
    tamper::{assert_tamper_record, Lab},
};

fn opens_of<'a>(recs: &'a [Value], path: &Path) -> Vec<&'a Value> {
    of_kind(recs, "open").into_iter().filter(|r| r["path"] == path.to_str().unwrap()).collect()
}

#[test]
fn proc_self_root_and_cwd_resolve_to_the_denied_file() {
    let lab = Lab::new();
    let files = lab.file_mechanism();
    let key = lab.ws.join("secret/key");
    // Attacker: names the secret through the magic links of procfs:
    // /proc/self/root/<absolute path>, and /proc/self/cwd/key from inside
    // the denied directory.
    let script = format!(
        "cat /proc/self/root{key}; echo rc1=$?; cd '{dir}' && cat /proc/self/cwd/key; echo rc2=$?",
        key = key.display(),
        dir = lab.ws.join("secret").display()
    );
    let out = lab.d.run_policy("proc-links", "test", &lab.ws, &["sh", "-c", &script]);
    let text = stdout(&out);
    assert!(!text.contains("SECRET-CONTENT"), "leaked through procfs: {out:?}");
    assert!(text.contains("rc1=") && !text.contains("rc1=0") && !text.contains("rc2=0"), "{out:?}");
    let recs = lab.d.trajectory("proc-links");
    let denied = opens_of(&recs, &key);
    if files == "landlock-deny" {
        // Refused by Landlock on the real file; the record names the rule
        // when the daemon can still resolve `/proc/<pid>/` (the process may
        // have exited by then: docs/security.md).
        assert_landlock_refusals(&recs, &["/proc/self/root", "/proc/self/cwd/key"], &key);
        return;
    }
    assert_eq!(denied.len(), 2, "{recs:#?}");
    for r in denied {
        assert_eq!((r["decision"].as_str(), r["mechanism"].as_str()), (Some("deny"), Some(files.as_str())), "{r}");
    }
}

/// Under the Landlock layer: each open whose request starts with one of
/// `requests` failed with EACCES, and those the daemon resolved name
/// `key` and the deny.
pub fn assert_landlock_refusals(recs: &[Value], requests: &[&str], key: &Path) {
    for want in requests {
        let r = of_kind(recs, "open")
            .into_iter()
            .find(|r| r["requested"].as_str().is_some_and(|q| q.starts_with(want)))
            .unwrap_or_else(|| panic!("no open record of {want}: {recs:#?}"));
        assert_eq!(r["result"], -13, "{r}");
        if r["path"] == key.to_str().unwrap() {
            assert_eq!((r["decision"].as_str(), r["mechanism"].as_str()), (Some("deny"), Some("landlock-deny")), "{r}");
        }
    }
}

#[test]
fn a_denied_file_stays_denied_under_another_name() {
    let lab = Lab::new();
    let key = lab.ws.join("secret/key");
    let files = lab.file_mechanism();
    for (id, cmd) in [("hardlink", "ln"), ("rename", "mv")] {
        let alias = lab.ws.join(format!("innocent-{id}"));
        // Attacker: gives the secret a name no rule denies (a hard link, or
        // a rename out of the denied directory) and reads it there.
        let script = format!("{cmd} '{}' '{}'; echo rc=$?; cat '{}'", key.display(), alias.display(), alias.display());
        let out = lab.d.run_policy(id, "test", &lab.ws, &["sh", "-c", &script]);
        assert!(!stdout(&out).contains("SECRET-CONTENT"), "{id} leaked: {out:?}");
        let recs = lab.d.trajectory(id);
        match files.as_str() {
            // Landlock refuses both: the secret's directory grants no
            // rights to remove from or link out of it.
            "landlock-deny" => {
                assert!(!stdout(&out).contains("rc=0"), "{id} was not refused: {out:?}");
                assert!(key.exists());
            }
            "lsm-deny" => {
                // path_link/path_rename refuse: the secret keeps its one name.
                assert!(!stdout(&out).contains("rc=0"), "{id} was not refused: {out:?}");
                let r = opens_of(&recs, &key)
                    .into_iter()
                    .find(|r| r["syscall"] == cmd.replace("ln", "link").replace("mv", "rename"))
                    .unwrap_or_else(|| panic!("no {id} record of the secret: {recs:#?}"));
                assert_eq!((r["decision"].as_str(), r["mechanism"].as_str()), (Some("deny"), Some("lsm-deny")), "{r}");
                assert!(key.exists());
            }
            // Without BPF LSM link(2) and rename(2) are not judged, but the
            // new name is the same inode, which the secret's rule names:
            // the read through it is judged by that rule and killed.
            "kill" => {
                assert!(stdout(&out).contains("rc=0"), "{out:?}");
                assert_eq!(out.status.code(), Some(128 + libc::SIGKILL), "cat must be killed: {out:?}");
                assert_by_inode(&recs, &alias, "kill");
                if id == "rename" {
                    std::fs::rename(&alias, &key).unwrap();
                }
            }
            other => panic!("file rules: unexpected mechanism {other}"),
        }
    }
    // Attacker: renames the denied directory itself and reads the secret
    // below its new name.
    let hidden = lab.ws.join("hidden");
    let moved = hidden.join("key");
    let script = format!(
        "mv '{}' '{}'; echo rc=$?; cat '{}'",
        lab.ws.join("secret").display(),
        hidden.display(),
        moved.display()
    );
    let out = lab.d.run_policy("dir-rename", "test", &lab.ws, &["sh", "-c", &script]);
    assert!(!stdout(&out).contains("SECRET-CONTENT"), "leaked through a renamed directory: {out:?}");
    if stdout(&out).contains("rc=0") {
        // Refused at the read: the key's own identity is in the map.
        let mechanism = if files == "lsm-deny" { "lsm-deny" } else { "kill" };
        assert_by_inode(&lab.d.trajectory("dir-rename"), &moved, mechanism);
        std::fs::rename(&hidden, lab.ws.join("secret")).unwrap();
    } else {
        assert!(files == "lsm-deny" || files == "landlock-deny", "only path_rename or Landlock refuse it: {out:?}");
    }
}

/// The one open record of `alias`: denied by the secret's rule through
/// the file's identity, stopped by `mechanism`.
fn assert_by_inode(recs: &[Value], alias: &Path, mechanism: &str) {
    let r = opens_of(recs, alias);
    assert_eq!(r.len(), 1, "{recs:#?}");
    assert_eq!((r[0]["decision"].as_str(), r[0]["mechanism"].as_str()), (Some("deny"), Some(mechanism)), "{}", r[0]);
    assert_eq!(r[0]["by_inode"], true, "{}", r[0]);
    assert!(r[0]["rule"].as_str().unwrap().contains("test.yaml:"), "the secret's rule: {}", r[0]);
}

#[test]
fn a_file_created_in_a_denied_directory_later_is_denied_under_another_name() {
    let lab = Lab::new();
    let files = lab.file_mechanism();
    let later = lab.ws.join("secret/later");
    let alias = lab.ws.join("innocent-later");
    let go = lab.ws.join("go");
    // Attacker: waits for a file someone else writes into the denied
    // directory after the policy loaded, links it out and reads it.
    let script = format!(
        "while [ ! -e '{go}' ]; do sleep 0.02; done; ln '{later}' '{alias}'; echo rc=$?; cat '{alias}'",
        go = go.display(),
        later = later.display(),
        alias = alias.display()
    );
    let child = lab
        .d
        .run_policy_cmd("later", "test", &lab.ws, &["sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The instance (and its walk of the secret directory) exists once the
    // trajectory has started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lab.d.records().iter().any(|r| r["trajectory"] == "later" && r["kind"] == "trajectory_start") {
        assert!(std::time::Instant::now() < deadline, "no trajectory_start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(&later, "LATER-SECRET").unwrap();
    // The daemon adds it on inotify's word, well within this.
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!stdout(&out).contains("LATER-SECRET"), "leaked: {out:?}");
    let recs = lab.d.trajectory("later");
    if files == "lsm-deny" || files == "landlock-deny" {
        assert!(!stdout(&out).contains("rc=0"), "path_link or Landlock must refuse: {out:?}");
    } else {
        assert!(stdout(&out).contains("rc=0"), "{out:?}");
        assert_by_inode(&recs, &alias, "kill");
    }
}

#[test]
fn openat2_is_judged_like_openat() {
    let lab = Lab::new();
    let files = lab.file_mechanism();
    let key = lab.ws.join("secret/key");
    // Attacker: the newer openat2(2) syscall instead of openat.
    let out = lab.attack("openat2", "test", &["openat2", key.to_str().unwrap()]);
    assert!(!stdout(&out).contains("SECRET-CONTENT"), "{out:?}");
    assert_stopped(&out, &files);
    let recs = lab.d.trajectory("openat2");
    let r = opens_of(&recs, &key);
    assert_eq!(r.len(), 1, "{recs:#?}");
    assert_eq!(r[0]["decision"], "deny");
    let syscall = if files == "lsm-deny" { "lsm" } else { "openat2" };
    assert_eq!(r[0]["syscall"], syscall, "{}", r[0]);
}

#[test]
fn io_uring_and_open_by_handle_cannot_open_a_denied_file() {
    let lab = Lab::new();
    let files = lab.file_mechanism();
    let key = lab.ws.join("secret/key");
    let unjudged = lab.protection("unjudged-opens");
    // Attacker: IORING_OP_OPENAT (no open syscall, so no open tracepoint),
    // then open_by_handle_at with a handle from name_to_handle_at.
    let ws = lab.ws.to_str().unwrap();
    for (id, args, op) in [
        ("uring", vec!["uring-open", key.to_str().unwrap()], "io_uring"),
        ("by-handle", vec!["handle-open", key.to_str().unwrap(), ws], "open_by_handle_at"),
    ] {
        let out = lab.attack(id, "test", &args);
        assert!(!stdout(&out).contains("SECRET-CONTENT"), "{id}: {out:?}");
        if files == "lsm-deny" {
            // file_open sees every open, whatever the syscall.
            assert_stopped(&out, "lsm-deny");
            let recs = lab.d.trajectory(id);
            let r = opens_of(&recs, &key);
            assert_eq!(r.len(), 1, "{id}: {recs:#?}");
            assert_eq!((r[0]["decision"].as_str(), r[0]["syscall"].as_str()), (Some("deny"), Some("lsm")));
        } else {
            // The fallback kills at io_uring_setup / open_by_handle_at under
            // an enforcing policy, before any open happens.
            assert_eq!(unjudged, "kill");
            assert_stopped(&out, "kill");
            assert_tamper_record(&lab.d, id, op, "kill");
        }
    }
    // Under an audit-mode policy nothing is blocked; without BPF LSM the
    // opens through io_uring are then neither judged nor recorded (known
    // limit), with it they are recorded as audit.
    let out = lab.attack("uring-audit", "watch", &["uring-open", key.to_str().unwrap()]);
    assert!(stdout(&out).contains("SECRET-CONTENT"), "{out:?}");
    let recs = lab.d.trajectory("uring-audit");
    let r = opens_of(&recs, &key);
    if files == "lsm-deny" {
        assert_eq!(r.len(), 1, "{recs:#?}");
        assert_eq!(r[0]["decision"], "audit");
    } else {
        assert!(r.is_empty(), "io_uring opens are now recorded without LSM: update docs/security.md: {recs:#?}");
    }
}

#[test]
fn execveat_of_a_descriptor_is_judged_on_the_binary() {
    let lab = Lab::new();
    let exec = lab.d.enforcement("exec");
    let bin = lab.ws.join("bin/forbidden");
    // Attacker: opens the denied binary with O_PATH and runs it with
    // execveat(fd, "", AT_EMPTY_PATH) (what fexecve does).
    let out = lab.attack("execveat", "test", &["execveat", bin.to_str().unwrap(), "forbidden", "sleep", "0"]);
    assert_stopped(&out, &exec);
    let recs = lab.d.trajectory("execveat");
    let r = of_kind(&recs, "exec")
        .into_iter()
        .find(|r| r["path"] == bin.to_str().unwrap())
        .unwrap_or_else(|| panic!("no exec record of the binary: {recs:#?}"));
    assert_eq!((r["decision"].as_str(), r["mechanism"].as_str()), (Some("deny"), Some(exec.as_str())), "{r}");
}

#[test]
fn a_memfd_copy_of_a_denied_binary_runs_under_a_deny_list() {
    let lab = Lab::new();
    let bin = lab.ws.join("bin/forbidden");
    // Attacker: copies the denied binary into a memfd and executes that.
    // Known limit: exec rules name paths, and the copy is not the denied
    // path. A memfd is a detached file: the kernel walk resolves it to `/`,
    // so it is judged by a `/` rule or the exec default, and only an exec
    // allow-list (defaults.exec: deny) stops copies.
    let out = lab.attack("memfd", "test", &["memfd-exec", bin.to_str().unwrap(), "forbidden", "sleep", "0"]);
    assert!(out.status.success(), "the memfd copy no longer runs: update docs/security.md: {out:?}");
    let recs = lab.d.trajectory("memfd");
    let r = of_kind(&recs, "exec")
        .into_iter()
        .find(|r| r["path"] == "/" && r["filename"].as_str().is_some_and(|f| f.starts_with("/dev/fd/")))
        .unwrap_or_else(|| panic!("no exec record of the memfd: {recs:#?}"));
    assert_eq!(r["decision"], "allow", "{r}");
}

#[test]
fn a_descriptor_passed_in_from_outside_is_not_judged() {
    let lab = Lab::new();
    let key = lab.ws.join("secret/key");
    let sock = lab.dir.path().join("fd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // Attacker: a confederate outside the trajectory opens the secret and
    // sends the descriptor over a unix socket (SCM_RIGHTS); the agent reads
    // it without opening anything. Known limit: no open happens inside the
    // trajectory, so nothing is judged or recorded.
    let sender = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let file = std::fs::File::open(&key).unwrap();
        send_fd(conn.as_raw_fd(), file.as_raw_fd());
    });
    let out = lab.attack("scm-rights", "test", &["recv-fd", sock.to_str().unwrap()]);
    sender.join().unwrap();
    assert!(stdout(&out).contains("SECRET-CONTENT"), "passed descriptors are now judged: update docs/security.md");
    let recs = lab.d.trajectory("scm-rights");
    assert!(opens_of(&recs, &lab.ws.join("secret/key")).is_empty(), "{recs:#?}");
}

fn send_fd(sock: i32, fd: i32) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; all zeroes is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: `cbuf` holds one cmsg with 4 bytes of data (CMSG_SPACE(4)
    // fits in 64 bytes); every pointer is into `msg`, `iov` or `cbuf`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        assert!(libc::sendmsg(sock, &msg, 0) >= 0, "sendmsg: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn unspecified_and_other_loopback_addresses() {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener6 = TcpListener::bind("[::]:0");
    let port6 = listener6.as_ref().map(|l| l.local_addr().unwrap().port()).unwrap_or(0);
    let policy = format!(
        "name: net\nmode: enforce\ndefaults:\n  file: allow\n  exec: allow\n  network: allow\nrules:\n  network:\n    \
         - cidr: 127.0.0.1/32\n      ports: [\"{port}\"]\n      action: deny\n    \
         - cidr: ::1/128\n      ports: [\"{port6}\"]\n      action: deny\n"
    );
    let lab = Lab::with(&[("net", &policy)]);
    let agent = crate::harness::agent_bin();
    let connect = |id: &str, ip: &str, port: u16| {
        lab.d.run_policy(id, "net", &lab.ws, &[agent.to_str().unwrap(), "connect", ip, &port.to_string()])
    };
    let eperm = |o: &std::process::Output| o.status.code() == Some(3) && stdout(o).contains("errno=1 ");

    // Attacker: 0.0.0.0 as the destination, which the kernel turns into a
    // connection to the local host: judged as 127.0.0.1, so denied.
    let o = connect("any4", "0.0.0.0", port);
    assert!(eperm(&o), "0.0.0.0 must be judged as 127.0.0.1: {o:?}");
    // The same with :: for ::1.
    if listener6.is_ok() {
        let o = connect("any6", "::", port6);
        assert!(eperm(&o), ":: must be judged as ::1: {o:?}");
    }
    // Attacker: another loopback address, 127.0.0.2, to a listener bound to
    // every address. Rules name addresses, not hosts: the /32 rule does not
    // cover it (write 127.0.0.0/8 to deny the local host), so it is allowed
    // (whether it connects depends on the loopback routes of the machine).
    let o = connect("lo2", "127.0.0.2", port);
    assert!(!eperm(&o), "{o:?}");

    let recs = lab.d.trajectory("any4");
    let r = of_kind(&recs, "connect").into_iter().find(|r| r["port"] == port).expect("connect record").clone();
    assert_eq!((r["addr"].as_str(), r["decision"].as_str()), (Some("0.0.0.0"), Some("deny")), "{r}");
    assert_eq!(r["mechanism"], "cgroup-deny");
    let recs = lab.d.trajectory("lo2");
    let r = of_kind(&recs, "connect").into_iter().find(|r| r["port"] == port).expect("connect record").clone();
    assert_eq!((r["addr"].as_str(), r["decision"].as_str()), (Some("127.0.0.2"), Some("allow")), "{r}");
}
