//! The daemon under test, started as an operator would (`agent-monitor
//! daemon` with a policy directory, an events file, a metrics address and a
//! control socket), and what the bench reads from it: `status --json`,
//! `/metrics`, the events file, and its CPU time and memory from `/proc`.

use std::{
    io::{Read, Seek, SeekFrom, Write},
    net::TcpListener,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cgroup::cgroup2_mount;

pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    pub socket: PathBuf,
    pub events: PathBuf,
    metrics_port: u16,
    cgroup_parent: String,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts the daemon with its files under `dir` and waits until its
    /// control socket accepts connections.
    pub fn start(bin: &Path, dir: &Path, policies: &Path) -> Result<Daemon> {
        Self::start_with(bin, dir, policies, &[])
    }

    /// [`Self::start`] with extra `agent-monitor daemon` arguments.
    pub fn start_with(bin: &Path, dir: &Path, policies: &Path, extra: &[&str]) -> Result<Daemon> {
        let socket = dir.join("ctl/control.sock");
        let events = dir.join("events.jsonl");
        let stderr = dir.join("daemon.stderr");
        let _ = std::fs::remove_file(&events);
        let metrics_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cgroup_parent = format!("agent-monitor-bench-{}", std::process::id());
        let child = super::workload_command(bin)
            .arg("daemon")
            .arg("--policy-dir")
            .arg(policies)
            .arg("--events")
            .arg(&events)
            .arg("--control-socket")
            .arg(&socket)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}"), "--cgroup-parent", &cgroup_parent])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--stop-enforcement-on-exit")
            .args(extra)
            .env("AGENT_MONITOR_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut d =
            Daemon { child: Some(child), bin: bin.to_owned(), socket, events, metrics_port, cgroup_parent, stderr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&d.socket).is_ok() {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().expect("running").try_wait()? {
                d.child = None;
                bail!("the daemon exited during startup ({status}):\n{}", d.stderr_text());
            }
            if Instant::now() > deadline {
                bail!("the daemon was not ready within 30 s:\n{}", d.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the daemon.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.pid());
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM and wait; removes the (empty) trajectory parent cgroup the
    /// daemon leaves behind.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let status = child.wait()?;
        if let Some(mount) = cgroup2_mount() {
            let _ = std::fs::remove_dir(mount.join(&self.cgroup_parent));
        }
        if !status.success() {
            bail!("the daemon exited with {status}:\n{}", self.stderr_text());
        }
        Ok(())
    }

    /// `agent-monitor status --json`.
    pub fn status(&self) -> Result<Value> {
        let out = Command::new(&self.bin)
            .args(["status", "--json", "--control-socket"])
            .arg(&self.socket)
            .output()
            .context("cannot run agent-monitor status")?;
        if !out.status.success() {
            bail!("agent-monitor status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Value of one series (exact `name{labels}` text) of `/metrics`.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no series {series} in /metrics"))
    }

    /// Waits for `trajectory_end` of `id` and returns it.
    pub fn wait_end(&self, id: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.try_end(id)? {
                return Ok(end);
            }
            if Instant::now() > deadline {
                bail!("no trajectory_end for {id} within {} s:\n{}", timeout.as_secs(), self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `trajectory_end` of `id` if it has been written: the stream's last
    /// record once the bench's only trajectory is over.
    pub fn try_end(&self, id: &str) -> Result<Option<Value>> {
        let want = format!("\"trajectory\":\"{id}\"");
        match last_line(&self.events)? {
            Some(line) if line.contains(&want) && line.contains("\"kind\":\"trajectory_end\"") => {
                Ok(Some(serde_json::from_str(&line)?))
            }
            _ => Ok(None),
        }
    }

    /// Empties the events file between runs (the sink appends, so it keeps
    /// writing at the new end) to bound the disk space a run takes.
    pub fn truncate_events(&self) -> Result<()> {
        std::fs::OpenOptions::new().write(true).open(&self.events)?.set_len(0)?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The last complete line of `path`, read from the end (the file can be
/// large; a `trajectory_end` with its summary can be hundreds of KiB).
fn last_line(path: &Path) -> Result<Option<String>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    let mut window = 64 * 1024;
    loop {
        let from = len.saturating_sub(window);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return Ok(None) };
        match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(start) => return Ok(Some(String::from_utf8_lossy(&buf[start + 1..end]).into_owned())),
            None if from == 0 => return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned())),
            None => window *= 4,
        }
    }
}

/// CPU time of every thread of `pid`, user + system, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm; utime and stime are fields 14
    // and 15 of the whole line, 12 and 13 after it.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Memory of the daemon, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    /// High-water mark of `rss` since the daemon started.
    pub hwm: u64,
    /// Resident pages of the ring buffer mapping(s), part of `rss`.
    pub ring: u64,
}

impl Memory {
    pub fn without_ring(&self) -> u64 {
        self.rss.saturating_sub(self.ring)
    }
}

/// `VmRSS`/`VmHWM` from `/proc/PID/status`; the ring buffer's share from
/// the `Rss` of the daemon's BPF map mappings in `/proc/PID/smaps`.
pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut ring = 0;
    let mut in_bpf = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_bpf = line.contains("bpf");
        } else if in_bpf {
            if let Some(v) = line.strip_prefix("Rss:") {
                ring += v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024;
            }
        }
    }
    Ok(Memory { rss: kb("VmRSS:"), hwm: kb("VmHWM:"), ring })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_finds_long_lines_and_skips_an_unfinished_one() {
        let path = std::env::temp_dir().join(format!("xtask-bench-last-line-{}", std::process::id()));
        let long = "x".repeat(300 * 1024);
        std::fs::write(&path, format!("first\n{long}\nunfinished")).unwrap();
        assert_eq!(last_line(&path).unwrap().as_deref(), Some(long.as_str()));
        std::fs::write(&path, "only\n").unwrap();
        assert_eq!(last_line(&path).unwrap().as_deref(), Some("only"));
        std::fs::write(&path, "").unwrap();
        assert_eq!(last_line(&path).unwrap(), None);
        std::fs::remove_file(&path).unwrap();
    }
}
