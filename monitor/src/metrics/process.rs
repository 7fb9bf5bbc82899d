//! `process_*` metrics of the daemon itself, read from `/proc/self` at each
//! scrape, under the names every Prometheus client library uses.
//!
//! The `prometheus` crate's own `process` feature was not used: in 0.14 it
//! reports `process_cpu_seconds_total` as an integer counter truncated to
//! whole seconds, so `rate()` of a daemon using a few percent of a CPU
//! reads as 0 most of the time, and it pulls in `procfs` for a handful of
//! fields this file reads in a few lines.

use std::sync::Mutex;

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Counter, IntGauge, Opts,
};

pub struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: IntGauge,
    /// Serialises concurrent scrapes, so the CPU counter's increments add up.
    lock: Mutex<()>,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| Counter::with_opts(Opts::new(name, help)).expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let c = ProcessCollector {
            descs: Vec::new(),
            cpu: counter("process_cpu_seconds_total", "User and system CPU time spent by the daemon, in seconds."),
            resident: gauge("process_resident_memory_bytes", "Resident memory of the daemon, in bytes."),
            virtual_memory: gauge("process_virtual_memory_bytes", "Virtual memory size of the daemon, in bytes."),
            open_fds: gauge("process_open_fds", "File descriptors the daemon has open."),
            max_fds: gauge("process_max_fds", "The daemon's limit on open file descriptors (soft RLIMIT_NOFILE)."),
            threads: gauge("process_threads", "Threads of the daemon."),
            start_time: gauge(
                "process_start_time_seconds",
                "Start time of the daemon, in seconds since the Unix epoch.",
            ),
            lock: Mutex::new(()),
        };
        if let Some(start) = start_time_seconds() {
            c.start_time.set(start);
        }
        let descs = c.parts().iter().flat_map(|m| m.desc()).cloned().collect();
        ProcessCollector { descs, ..c }
    }

    fn parts(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu,
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ]
    }

    fn update(&self) {
        if let Some(stat) = SelfStat::read() {
            let cpu = (stat.utime_ticks + stat.stime_ticks) as f64 / clock_ticks() as f64;
            let delta = cpu - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            self.resident.set(stat.rss_pages.saturating_mul(page_size()));
            self.virtual_memory.set(stat.vsize_bytes);
            self.threads.set(stat.threads);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Counts the descriptor this listing holds open, as other
            // clients do.
            self.open_fds.set(dir.count() as i64);
        }
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: a valid resource and out pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds.set(i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX));
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _serial = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.update();
        self.parts().iter().flat_map(|m| m.collect()).collect()
    }
}

/// The fields of `/proc/self/stat` this collector reports.
#[derive(Debug, PartialEq, Eq)]
struct SelfStat {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: i64,
    start_ticks: u64,
    vsize_bytes: i64,
    rss_pages: i64,
}

impl SelfStat {
    fn read() -> Option<SelfStat> {
        Self::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// `pid (comm) state ppid ...` (proc(5)): `comm` may hold spaces and
    /// parentheses, so fields are counted from the last `)`; the first
    /// field after it is field 3, `state`.
    fn parse(text: &str) -> Option<SelfStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied();
        Some(SelfStat {
            utime_ticks: field(14)?.parse().ok()?,
            stime_ticks: field(15)?.parse().ok()?,
            threads: field(20)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
            vsize_bytes: field(23)?.parse().ok()?,
            rss_pages: field(24)?.parse().ok()?,
        })
    }
}

fn clock_ticks() -> i64 {
    crate::identity::clock_ticks() as i64
}

fn page_size() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1)
}

/// Boot time (`btime` of `/proc/stat`) plus the process's start in ticks
/// after boot.
fn start_time_seconds() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: i64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    let start = SelfStat::read()?.start_ticks;
    Some(boot + i64::try_from(start).ok()? / clock_ticks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_comm() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 7 0 123456 104857600 2560 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            SelfStat::parse(line),
            Some(SelfStat {
                utime_ticks: 250,
                stime_ticks: 75,
                threads: 7,
                start_ticks: 123456,
                vsize_bytes: 104857600,
                rss_pages: 2560
            })
        );
        assert_eq!(SelfStat::parse("12 (x) S 1"), None);
    }

    #[test]
    fn reports_this_process() {
        let c = ProcessCollector::new();
        let value = |name: &str| {
            let families = c.collect();
            assert_eq!(families.len(), 7);
            let f = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{name} missing"));
            let m = &f.get_metric()[0];
            if name.ends_with("_total") {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            }
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start > now - 3600.0 && start <= now + 1.0, "start {start}, now {now}");
        // Burn a little CPU: the counter counts fractions of a second.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(value("process_cpu_seconds_total") >= 0.04);
    }
}
