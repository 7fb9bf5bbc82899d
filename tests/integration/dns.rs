//! Domain egress (`docs/policy.md`, "Domain rules"): a trajectory's DNS
//! traffic goes to the daemon's resolver, which asks a real upstream
//! (Debian's `dnsmasq`, serving test zones on a loopback port) only for
//! names the policy allows and learns the answer's addresses for the
//! kernel's connect hooks.
//!
//! The agent runs in a private mount namespace whose `/etc/resolv.conf`
//! names a loopback nameserver (`127.0.0.153`) nothing listens on, so no
//! test query can leave the machine even if the redirect broke; that the
//! redirect happened is asserted on the `dns` records (the server the agent
//! addressed) and on dnsmasq's query log.

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{free_port, of_kind, stdout, Daemon, Workspace};

/// The nameserver the agent's resolv.conf names.
const NAMESERVER: &str = "127.0.0.153";

/// A dnsmasq on `127.0.0.1:port` answering the test zones.
struct Upstream {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Upstream {
    /// `ttl`: the TTL of every answer (dnsmasq's `--local-ttl`).
    fn start(ttl: u32) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dnsmasq.log");
        let port = free_port();
        let child = Command::new(dnsmasq())
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--user=root", "--group=root", "--pid-file="])
            .arg(format!("--port={port}"))
            .arg(format!("--local-ttl={ttl}"))
            .args(["--log-queries", "--log-facility"])
            .arg(&log)
            .args([
                "--address=/allowed.test/127.0.0.2",
                "--address=/denied.test/127.0.0.2",
                "--address=/rebind.test/127.0.0.3",
                "--address=/cidr-denied.test/127.0.0.6",
                "--host-record=edge.chain.test,127.0.0.4",
                "--cname=www.chain.test,edge.chain.test",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq (installed by `cargo xtask setup`: dnsmasq-base)");
        let up = Upstream { child, port, log, _dir: dir };
        up.wait_ready();
        up
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.queries().contains("started") {
            assert!(Instant::now() < deadline, "dnsmasq did not start; its log:\n{}", self.queries());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// dnsmasq's log: one `query[A] name from addr` line per question.
    fn queries(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq() -> &'static str {
    ["/usr/sbin/dnsmasq", "/usr/local/bin/dnsmasq"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("dnsmasq")
}

/// An HTTP listener on `addr:port` that answers every request with `ok`
/// and counts them.
struct Listener {
    hits: Arc<AtomicUsize>,
}

impl Listener {
    fn start(addr: &str, port: u16) -> Listener {
        let l = TcpListener::bind((addr, port)).unwrap_or_else(|e| panic!("listen on {addr}:{port}: {e}"));
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        Listener { hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The hits once `n` have arrived, or after 10 s: the listener serves
    /// one connection at a time, so the last accept may lag the client.
    fn hits_reaching(&self, n: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.hits() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.hits()
    }
}

/// The daemon, its upstream and a workspace with the `dns` policies.
struct Lab {
    ws: Workspace,
    daemon: Daemon,
    upstream: Upstream,
    resolv: PathBuf,
}

impl Lab {
    fn start(ttl: u32, extra: &[&str]) -> Lab {
        let upstream = Upstream::start(ttl);
        let ws = Workspace::new();
        ws.write_policy("dns", POLICY);
        ws.write_policy("dns-deny", POLICY_DENY);
        let resolv = ws.dir.path().join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {NAMESERVER}\noptions timeout:10 attempts:2\n")).unwrap();
        let mut args = vec!["--policy-dir", ws.policy_dir(), "--dns-upstream"];
        let up = upstream.addr();
        args.push(&up);
        args.extend_from_slice(extra);
        let daemon = Daemon::start_with(&args);
        Lab { ws, daemon, upstream, resolv }
    }

    /// `agent-monitor run` of `script` under `policy`, in a mount namespace
    /// of its own whose `/etc/resolv.conf` is the lab's.
    fn command(&self, trajectory: &str, policy: &str, script: &str) -> Command {
        let mut c = self.daemon.run_policy_cmd(trajectory, policy, self.ws.dir.path(), &["sh", "-c", script]);
        let resolv = std::ffi::CString::new(self.resolv.to_str().unwrap()).unwrap();
        // SAFETY: only async-signal-safe calls (unshare, mount) between
        // fork and exec; the mount is made before `run` joins the
        // trajectory (whose tamper protection refuses mounts).
        unsafe {
            c.pre_exec(move || private_resolv_conf(&resolv));
        }
        c
    }

    fn run(&self, trajectory: &str, policy: &str, script: &str) -> Output {
        self.command(trajectory, policy, script).output().expect("spawn agent-monitor run")
    }
}

fn private_resolv_conf(resolv: &std::ffi::CStr) -> std::io::Result<()> {
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: plain syscalls with valid NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            resolv.as_ptr(),
            c"/etc/resolv.conf".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))
    }
}

const POLICY: &str = "\
name: dns
mode: enforce
defaults: {file: allow, exec: allow, network: deny}
rules:
  network:
    - domain: allowed.test
      allow_private: true
      action: allow
    - domain: \"*.chain.test\"
      allow_private: true
      action: allow
    # Allowed, but its answer points into loopback without allow_private:
    # dropped as DNS rebinding.
    - domain: rebind.test
      action: allow
    # An explicit CIDR deny beats an address learned from an allowed name.
    - domain: cidr-denied.test
      allow_private: true
      action: allow
    - cidr: 127.0.0.6/32
      action: deny
";

/// The same names, all denied.
const POLICY_DENY: &str = "\
name: dns-deny
mode: enforce
defaults: {file: allow, exec: allow, network: deny}
rules:
  network:
    - domain: allowed.test
      action: deny
";

fn dns_records<'a>(recs: &'a [Value], name: &str) -> Vec<&'a Value> {
    of_kind(recs, "dns").into_iter().filter(|r| r["name"] == name).collect()
}

fn has(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn domain_rules_resolve_allowed_names_refuse_others_and_learn_only_theirs() {
    let lab = Lab::start(60, &[]);
    let port = free_port();
    let allowed = Listener::start("127.0.0.2", port);
    let chain = Listener::start("127.0.0.4", port);
    let cidr_denied = Listener::start("127.0.0.6", port);
    let agent = crate::harness::agent_bin();
    let agent = agent.display();
    // getaddrinfo(3) itself through test-agent everywhere (`getent ahosts`
    // passes AI_ADDRCONFIG, which answers nothing where only loopback is
    // up, as in the guests); Python's socket.getaddrinfo too where Python
    // is (the host: the guests carry no Python, docs/testing.md).
    let python = has("python3");
    let py = if python {
        "python3 -c 'import socket; print(\"py\", sorted({a[4][0] for a in socket.getaddrinfo(\"allowed.test\", 80, socket.AF_INET)}))'"
    } else {
        "true"
    };
    let script = format!(
        "echo direct; {agent} connect 127.0.0.2 {port}; \
         echo allowed; curl -sS -m 10 http://allowed.test:{port}/; echo; \
         echo after; {agent} connect 127.0.0.2 {port}; \
         echo denied; curl -sS -m 10 http://denied.test:{port}/; echo rc=$?; \
         echo chain; curl -sS -m 10 http://www.chain.test:{port}/; echo; \
         echo tcp; dig +tcp +short +time=5 +tries=1 @{NAMESERVER} allowed.test; \
         echo rebind; dig +short +time=5 +tries=1 @{NAMESERVER} rebind.test; \
         echo cidr; curl -sS -m 10 http://cidr-denied.test:{port}/; echo rc=$?; \
         echo ahosts; {agent} resolve allowed.test; \
         echo tcp-unbound; {agent} dns-tcp {NAMESERVER} allowed.test; \
         echo reconnect; {agent} dns-reconnect {NAMESERVER} 127.0.0.154 www.chain.test; \
         echo end; {py}"
    );
    let out = lab.run("dns-main", "dns", &script);
    let text = stdout(&out);
    let recs = lab.daemon.trajectory("dns-main");

    // No lookup, no learned address: the default denies.
    let direct = text.split("allowed").next().unwrap();
    assert!(direct.contains("errno=1"), "a direct connect before any lookup must fail with EPERM:\n{text}");
    // glibc's resolver through the redirect, then the learned address.
    assert!(text.contains("allowed\nok"), "curl to allowed.test must reach the listener:\n{text}\n{}", out.status);
    let after = text.split("after").nth(1).unwrap().split("denied").next().unwrap();
    assert!(after.contains("ok") && !after.contains("errno"), "after the lookup 127.0.0.2 is allowed:\n{text}");
    assert_eq!(allowed.hits_reaching(2), 2, "the curl and the connect after the lookup reach the listener");
    // A denied name is never resolved: curl fails at resolution (exit 6).
    assert!(text.contains("rc=6"), "curl to denied.test must fail to resolve:\n{text}");
    let denied = dns_records(&recs, "denied.test");
    assert!(
        !denied.is_empty() && denied.iter().all(|r| r["decision"] == "deny" && r["rcode"] == "REFUSED"),
        "{denied:?}"
    );
    let asked = lab.upstream.queries();
    assert!(!asked.contains("] denied.test"), "a denied name must not be asked upstream:\n{asked}");
    // The CNAME chain is followed and its address learned.
    assert!(text.contains("chain\nok"), "www.chain.test must reach 127.0.0.4:\n{text}");
    assert_eq!(chain.hits_reaching(1), 1);
    let www = dns_records(&recs, "www.chain.test");
    assert!(
        www.iter().any(|r| r["cnames"][0] == "edge.chain.test" && r["answers"][0]["addr"] == "127.0.0.4"),
        "{www:?}"
    );
    // TCP DNS (dig +tcp) goes the same way.
    assert!(text.contains("tcp\n127.0.0.2"), "dig +tcp must get the answer:\n{text}");
    assert!(dns_records(&recs, "allowed.test").iter().any(|r| r["transport"] == "tcp"));
    // Rebinding into loopback without allow_private: dropped and recorded.
    let rebind = text.split("rebind").nth(1).unwrap().split("cidr").next().unwrap();
    assert!(!rebind.contains("127.0.0.3"), "the rebinding answer must be dropped:\n{text}");
    let rb = dns_records(&recs, "rebind.test");
    assert!(
        rb.iter().any(|r| r["dropped"][0]["reason"] == "dns_rebinding" && r["dropped"][0]["addr"] == "127.0.0.3"),
        "{rb:?}"
    );
    // An explicit CIDR deny beats the learned address.
    assert!(text.contains("cidr") && cidr_denied.hits() == 0, "127.0.0.6 is denied by CIDR:\n{text}");
    // TCP from a socket not bound first (glibc's fallback after a
    // truncated answer): redirected with a source that names its slot; the
    // peer it sees is the server it asked.
    let tcp = text.split("tcp-unbound").nth(1).unwrap().split("reconnect").next().unwrap();
    assert!(tcp.contains(&format!("peer {NAMESERVER}:53\nanswer rcode=0 127.0.0.2")), "{text}");
    // A UDP socket connected again to another nameserver: both answered,
    // each peer shown as asked, each question attributed (two dns records).
    let again = text.split("reconnect").nth(1).unwrap().split("end").next().unwrap();
    let expected =
        format!("peer {NAMESERVER}:53\nanswer rcode=0 127.0.0.4\npeer 127.0.0.154:53\nanswer rcode=0 127.0.0.4");
    assert!(again.contains(&expected), "{text}");
    let servers: Vec<&Value> = dns_records(&recs, "www.chain.test").into_iter().map(|r| &r["server"]).collect();
    assert!(servers.contains(&&Value::from("127.0.0.154:53")), "the second server is recorded: {servers:?}");
    let ahosts = text.split("ahosts").nth(1).unwrap();
    assert!(ahosts.contains("resolved 127.0.0.2"), "getaddrinfo must resolve:\n{text}");
    if python {
        assert!(text.contains("py ['127.0.0.2']"), "socket.getaddrinfo must resolve through the redirect:\n{text}");
    }

    // Every question was redirected: the agent addressed its nameservers,
    // the daemon asked dnsmasq.
    for r in of_kind(&recs, "dns") {
        let server = r["server"].as_str().unwrap();
        assert!(server == format!("{NAMESERVER}:53") || server == "127.0.0.154:53", "{r}");
        assert!(r["pid"].is_u64() && r["exec_id"].is_string(), "a dns record names the process: {r}");
    }
    assert!(lab.upstream.queries().contains("query[A] allowed.test"), "{}", lab.upstream.queries());
    let redirects: Vec<&Value> = of_kind(&recs, "connect").into_iter().filter(|r| r["redirect"] == "dns").collect();
    assert!(redirects.len() >= 4, "the connect hooks record each redirect: {}", redirects.len());
    // The redirected connect comes before the answer it led to.
    let first_dns = of_kind(&recs, "dns")[0]["seq"].as_u64().unwrap();
    assert!(redirects[0]["seq"].as_u64().unwrap() < first_dns, "{} then dns #{first_dns}", redirects[0]);
    crate::schema::assert_matches_schema(&recs);
    // Connects to learned addresses name the domain.
    let to_allowed: Vec<&Value> =
        of_kind(&recs, "connect").into_iter().filter(|r| r["addr"] == "127.0.0.2" && r["port"] == port).collect();
    assert_eq!(to_allowed[0]["decision"], "deny");
    assert!(to_allowed[0].get("domain").is_none(), "{}", to_allowed[0]);
    assert!(
        to_allowed[1..].iter().all(|r| r["decision"] == "allow" && r["domain"] == "allowed.test"),
        "{to_allowed:?}"
    );
    let summary = &recs.iter().find(|r| r["kind"] == "trajectory_end").unwrap()["summary"];
    assert!(summary["domains_resolved"].as_array().unwrap().iter().any(|d| d == "allowed.test"), "{summary}");
    assert!(summary["domains_denied"].as_array().unwrap().iter().any(|d| d == "denied.test"), "{summary}");
    let status = lab.daemon.status();
    assert!(status["dns"]["listen"].as_str().is_some_and(|l| l.starts_with("127.0.0.1:")), "{}", status["dns"]);
    assert!(lab.daemon.metrics().contains("agent_monitor_dns_questions_total{decision=\"deny\",policy=\"dns\"}"));
}

#[test]
fn a_learned_address_is_denied_again_after_its_ttl_plus_grace() {
    // TTL 2 s, grace 2 s: the address is allowed for 4 s after the answer
    // (room for starting test-agent under TCG), denied 6 s after the
    // connect that follows it.
    let lab = Lab::start(2, &["--dns-ttl-grace", "2s", "--dns-ttl-min", "1s"]);
    let port = free_port();
    let listener = Listener::start("127.0.0.2", port);
    let agent = crate::harness::agent_bin();
    let agent = agent.display();
    let script = format!(
        "getent hosts allowed.test; {agent} connect 127.0.0.2 {port}; sleep 6; \
         echo expired; {agent} connect 127.0.0.2 {port}; \
         echo again; getent hosts allowed.test; {agent} connect 127.0.0.2 {port}"
    );
    let text = stdout(&lab.run("dns-ttl", "dns", &script));
    let (before, rest) = text.split_once("expired").unwrap();
    let (expired, again) = rest.split_once("again").unwrap();
    assert!(before.contains("127.0.0.2") && !before.contains("errno"), "allowed right after the lookup:\n{text}");
    assert!(expired.contains("errno=1"), "denied (EPERM) after TTL plus grace:\n{text}");
    assert!(!again.contains("errno"), "a new lookup allows it again:\n{text}");
    assert_eq!(listener.hits_reaching(2), 2);
    let recs = lab.daemon.trajectory("dns-ttl");
    let learned: Vec<&Value> = dns_records(&recs, "allowed.test").into_iter().filter(|r| r["qtype"] == "A").collect();
    assert!(learned.len() == 2 && learned.iter().all(|r| r["learned_for_s"] == 4), "{learned:?}");
    lab.daemon.wait_metric("agent_monitor_dns_learned_expired_total", 1.0);
}

#[test]
fn trajectories_with_different_policies_resolving_one_name_get_their_own_verdicts() {
    let lab = Lab::start(60, &[]);
    let port = free_port();
    let listener = Listener::start("127.0.0.2", port);
    let agent = crate::harness::agent_bin();
    let script = format!("getent hosts allowed.test; echo rc=$?; {} connect 127.0.0.2 {port}", agent.display());
    let children: Vec<(usize, Child)> = (0..32)
        .map(|i| {
            let policy = if i % 2 == 0 { "dns" } else { "dns-deny" };
            let mut c = lab.command(&format!("dns-many-{i}"), policy, &script);
            (i, c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn run"))
        })
        .collect();
    for (i, child) in children {
        let out = child.wait_with_output().expect("wait run");
        let text = stdout(&out);
        if i % 2 == 0 {
            assert!(text.contains("rc=0") && !text.contains("errno"), "#{i} (dns) resolves and connects:\n{text}");
        } else {
            assert!(text.contains("rc=2") && text.contains("errno=1"), "#{i} (dns-deny) is refused both:\n{text}");
        }
    }
    assert_eq!(listener.hits_reaching(16), 16);
}

#[test]
fn dns_sent_around_the_resolver_is_refused() {
    let lab = Lab::start(60, &[]);
    let listen = lab.daemon.status()["dns"]["listen"].as_str().expect("status names the resolver").to_owned();
    let (ip, port) = listen.split_once(':').unwrap();
    let agent = crate::harness::agent_bin();
    let agent = agent.display();
    let script = format!(
        // An IPv6 nameserver is not redirected: refused.
        "echo v6; {agent} sendto ::1 53; \
         echo v6tcp; {agent} connect ::1 53; \
         echo resolver-udp; {agent} sendto {ip} {port}; \
         echo resolver-tcp; {agent} connect {ip} {port}; \
         echo upstream; dig +short +time=3 +tries=1 -p {up} @127.0.0.1 allowed.test; echo rc=$?",
        up = lab.upstream.port
    );
    let text = stdout(&lab.run("dns-around", "dns", &script));
    let part = |from: &str, to: &str| text.split(from).nth(1).unwrap().split(to).next().unwrap().to_owned();
    assert!(part("v6\n", "v6tcp").contains("errno=1"), "DNS to an IPv6 nameserver must be refused:\n{text}");
    assert!(part("v6tcp", "resolver-udp").contains("errno=1"), "{text}");
    // The resolver answers only redirected packets; a direct one is refused
    // in the kernel, so no agent can speak for another trajectory's slot.
    assert!(part("resolver-udp", "resolver-tcp").contains("errno=1"), "{text}");
    assert!(part("resolver-tcp", "upstream").contains("errno=1"), "{text}");
    // The upstream on another port is just an address the policy denies.
    assert!(!part("upstream", "rc=").contains("127.0.0.2"), "{text}");
    let recs = lab.daemon.trajectory("dns-around");
    let refused = of_kind(&recs, "connect").into_iter().filter(|r| r["redirect"] == "dns_refused").count();
    assert!(refused >= 4, "each refusal is recorded as dns_refused: {refused}");
    assert!(!lab.upstream.queries().contains("allowed.test"), "nothing reached the upstream");
}
