//! The DNS side of the bench: Debian's dnsmasq on a loopback port as the
//! daemon's upstream (`--dns-upstream`), answering [`NAME`] with 127.0.0.1
//! and nothing else, and the resolv.conf a trajectory gets in its own mount
//! namespace, naming [`NAMESERVER`], which the connect hooks redirect to
//! the daemon's resolver. No question of the bench can leave the machine:
//! dnsmasq has no upstream of its own (`--no-resolv`), and nothing listens
//! on the nameserver should the redirect fail.

use std::{
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The name the learned-address workloads resolve (a `.test` name: it can
/// never be a real one).
pub const NAME: &str = "bench.test";
/// The nameserver of the trajectories' resolv.conf, and the server the
/// resolver-latency workload asks in a trajectory; nothing listens there.
pub const NAMESERVER: &str = "127.0.0.153:53";
/// TTL of dnsmasq's answers: longer than any run, so a learned address
/// never expires during a timed loop.
const TTL_S: u32 = 3600;

/// dnsmasq on `127.0.0.1:port`, stopped when dropped.
pub struct Upstream {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Upstream {
    /// Starts dnsmasq with its log in `dir` and waits until it is serving.
    pub fn start(dir: &Path) -> Result<Upstream> {
        let log = dir.join("dnsmasq.log");
        let _ = std::fs::remove_file(&log);
        let port = free_port()?;
        // No `--log-queries`: logging every question would add its cost to
        // the baseline the resolver is compared with.
        let child = Command::new(dnsmasq())
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--user=root", "--group=root", "--pid-file="])
            .arg(format!("--port={port}"))
            .arg(format!("--local-ttl={TTL_S}"))
            .arg(format!("--address=/{NAME}/127.0.0.1"))
            .arg(format!("--log-facility={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dnsmasq (installed by `cargo xtask setup`: dnsmasq-base)")?;
        let mut up = Upstream { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&up.log).unwrap_or_default().contains("started") {
            if let Some(status) = up.child.try_wait()? {
                bail!("dnsmasq exited during startup ({status}); its log:\n{}", up.log_text());
            }
            if Instant::now() > deadline {
                bail!("dnsmasq did not start within 30 s; its log:\n{}", up.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(up)
    }

    /// `127.0.0.1:PORT`: the daemon's `--dns-upstream`, and the server the
    /// baseline asks directly.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
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

/// A loopback port free for both UDP and TCP (dnsmasq listens on both).
fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no loopback port free for both UDP and TCP")
}

/// Writes the trajectories' resolv.conf into `dir` and returns its path.
pub fn write_resolv_conf(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("resolv.conf");
    let (host, _) = NAMESERVER.split_once(':').expect("NAMESERVER is ADDR:PORT");
    std::fs::write(&path, format!("nameserver {host}\noptions timeout:2 attempts:1\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
