//! Booting one guest under QEMU with its serial console captured to a log
//! file, within a time bound.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// How the QEMU process ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// QEMU exited by itself (guest powered off, or rebooted after a panic).
    Exited,
    /// Killed after the time bound.
    TimedOut,
}

pub struct Boot<'a> {
    pub bzimage: &'a Path,
    pub initramfs: &'a Path,
    pub lsm: &'a str,
    pub log: &'a Path,
    pub timeout: Duration,
    /// Echo test progress lines to the terminal, prefixed with this.
    pub label: &'a str,
}

pub fn boot(b: &Boot<'_>) -> Result<(Exit, Duration)> {
    // TCG, not KVM: with KVM this nested setup hangs after the TSC line
    // (PLATFORM.md). `panic=-1` plus `-no-reboot` turns a guest panic into a
    // QEMU exit; `quiet` keeps kernel chatter from splitting test lines.
    // A CPU stuck in the kernel (a guest once spun on both CPUs until the
    // time bound) or a task blocked for two minutes panics the guest
    // instead of waiting for the bound; the stack traces `quiet` keeps off
    // the console (every CPU's, for a soft lockup) are in the kernel's log
    // buffer, which `panic_print=0x20` replays onto the console at the panic.
    // `watchdog_thresh=60` (the maximum) reports a soft lockup after 120 s
    // instead of 20: under TCG guest time is host time, so a guest CPU the
    // host does not run for 20 s, or one crawling through a long kernel
    // path, looks stuck, and a report ends the whole guest's run.
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet softlockup_panic=1 softlockup_all_cpu_backtrace=1 hung_task_panic=1 \
         watchdog_thresh=60 panic_print=0x20 lsm={}{}",
        b.lsm,
        ["VMTEST_FILTER", "VMTEST_REPEAT"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!(" {k}={v}")))
            .collect::<String>()
    );
    let log = File::create(b.log).with_context(|| format!("cannot create {}", b.log.display()))?;
    let start = Instant::now();
    // `thread=single`: one host thread runs both guest CPUs in turn. With
    // QEMU 7.2's multi-threaded TCG (one thread per guest CPU) a 6.12
    // guest took an `int3` oops in kernel text being live-patched
    // (`syscall_exit_to_user_mode_prepare`, while the daemon attached its
    // tracepoints), most likely a guest CPU running code the other had just
    // patched; with one thread no two guest CPUs run at once.
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=single", "-m", "2G", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(b.bzimage)
        .arg("-initrd")
        .arg(b.initramfs)
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let mut tail = Tail::open(b.log)?;
    let deadline = start + b.timeout;
    let exit = loop {
        tail.echo(b.label);
        if child.try_wait()?.is_some() {
            break Exit::Exited;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Exit::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    tail.echo(b.label);
    Ok((exit, start.elapsed()))
}

/// Follows the console log and echoes the lines a person watching wants:
/// the markers and libtest's per-test results, each result with the
/// seconds since the previous one (libtest completes a line when its test
/// ends; one test at a time, so that is the test's wall time, to the
/// polling interval).
struct Tail {
    file: File,
    pending: String,
    last: Instant,
}

impl Tail {
    fn open(path: &Path) -> Result<Tail> {
        Ok(Tail { file: File::open(path)?, pending: String::new(), last: Instant::now() })
    }

    fn echo(&mut self, label: &str) {
        let mut buf = Vec::new();
        if self.file.read_to_end(&mut buf).is_err() {
            let _ = self.file.seek(SeekFrom::End(0));
            return;
        }
        self.pending.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=i).collect();
            let line = line.trim_end();
            // The mechanism lines are long and end up in the summary anyway.
            let wanted = line.starts_with("VMTEST-") && !line.starts_with("VMTEST-MECH");
            if line.starts_with("test ") && line.contains(" ... ") {
                eprintln!("[{label}] {line} ({:.0} s)", self.last.elapsed().as_secs_f64());
                self.last = Instant::now();
            } else if wanted || line.starts_with("test ") || line.contains("Kernel panic") {
                eprintln!("[{label}] {line}");
                if line.starts_with("VMTEST-TESTS-BEGIN") {
                    self.last = Instant::now();
                }
            }
        }
    }
}
