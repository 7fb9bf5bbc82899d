//! Reading a run back: libtest's per-test lines and summary, the guest's
//! VMTEST-* markers (see `tests/vm/init.sh`), skips; and the per-kernel
//! summary table.

use std::{fmt::Write as _, time::Duration};

/// What one test run (a guest's console, or the host's `cargo test`) says.
#[derive(Debug, Default)]
pub struct Parsed {
    pub release: Option<String>,
    pub lsm: Option<String>,
    /// `hook=mechanism`, as the daemon logged them at startup.
    pub mechanisms: Vec<(String, String)>,
    pub probe_failure: Vec<String>,
    pub setup_error: Option<String>,
    pub ok: Vec<String>,
    pub failed: Vec<String>,
    pub ignored: Vec<String>,
    /// `(test, reason)` from the skip file.
    pub skips: Vec<(String, String)>,
    /// A test that started and never reported (the guest died or hung in it).
    pub running: Option<String>,
    /// libtest's `test result:` line.
    pub summary: Option<String>,
    pub rc: Option<i32>,
    /// libtest's `failures:` section: each failed test's output.
    pub failure_output: Vec<String>,
}

pub fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut in_failures = false;
    for raw in text.lines() {
        let line = strip_ansi(raw);
        let line = line.trim_end();
        if let Some(v) = line.strip_prefix("VMTEST-KERNEL ") {
            p.release = Some(v.trim().into());
        } else if let Some(v) = line.strip_prefix("VMTEST-LSM ") {
            p.lsm = Some(v.trim().into());
        } else if let Some(v) = line.strip_prefix("VMTEST-MECH ") {
            p.mechanisms.extend(mechanism(v));
        } else if line.starts_with("VMTEST-PROBE-") && !line.starts_with("VMTEST-PROBE-READY") {
            p.probe_failure.push(line.into());
        } else if let Some(v) = line.strip_prefix("VMTEST-ERROR ") {
            p.setup_error = Some(v.into());
        } else if let Some(v) = line.strip_prefix("VMTEST-SKIP ") {
            p.skips.push(skip_line(v));
        } else if let Some(v) = line.strip_prefix("VMTEST-RESULT rc=") {
            p.rc = v.trim().parse().ok();
        } else if line.starts_with("test result: ") {
            p.summary = Some(line.into());
            in_failures = false;
        } else if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ...")) {
            p.running = Some(name.into());
        } else if let Some((name, result)) = test_line(line) {
            if !record(&mut p, name, result) {
                // A kernel message printed while the test ran took the rest
                // of libtest's line; the result follows on a line of its own.
                p.running = Some(name.into());
            }
        } else if let Some(name) = p.running.clone().filter(|_| is_result(line)) {
            record(&mut p, &name, line);
        } else if line == "failures:" && p.failure_output.is_empty() {
            in_failures = true;
        } else if in_failures && !line.starts_with("VMTEST-") {
            p.failure_output.push(line.into());
        }
    }
    p
}

fn is_result(r: &str) -> bool {
    r == "ok" || r == "FAILED" || r.starts_with("ignored")
}

/// Counts one test's result; false if `result` is not one.
fn record(p: &mut Parsed, name: &str, result: &str) -> bool {
    let list = match result {
        "ok" => &mut p.ok,
        "FAILED" => &mut p.failed,
        r if r.starts_with("ignored") => &mut p.ignored,
        _ => return false,
    };
    list.push(name.into());
    p.running = None;
    true
}

/// `(hook, mechanism)` from the daemon's startup line for one hook.
pub fn mechanism(line: &str) -> Option<(String, String)> {
    let line = strip_ansi(line);
    Some((field(&line, "hook")?, field(&line, "mechanism")?))
}

/// `test a::b ... ok` → `("a::b", "ok")`.
fn test_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.split_once(" ... ")?;
    Some((name, result.trim()))
}

/// A skip file line, `test::name: reason`.
pub fn skip_line(line: &str) -> (String, String) {
    match line.split_once(": ") {
        Some((t, r)) => (t.trim().into(), r.trim().into()),
        None => (line.trim().into(), String::new()),
    }
}

/// `key="value"` or `key=value` in a tracing line.
fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[at..];
    let value = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next()?,
        None => rest.split_whitespace().next()?,
    };
    Some(value.into())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// One row of the summary table.
#[derive(Debug)]
pub struct Row {
    pub kernel: String,
    pub release: String,
    pub lsm: String,
    pub passed: usize,
    pub failed: usize,
    /// `(test, reason)`: skip-file entries and `#[ignore]`d tests.
    pub skipped: Vec<(String, String)>,
    /// Grouped, for the table: `observe ×9`.
    pub mechanisms: String,
    /// `(hook, mechanism)` as the daemon reported them.
    pub hooks: Vec<(String, String)>,
    pub duration: Duration,
    /// Why the row failed, when it did.
    pub problem: Option<String>,
}

impl Row {
    /// A row for a guest that could not even be run.
    pub fn failed(kernel: &str, problem: String) -> Row {
        Row::from_parsed(kernel, &Parsed::default(), Duration::ZERO).with_problem(problem)
    }

    fn with_problem(mut self, problem: String) -> Row {
        self.problem = Some(problem);
        self
    }

    pub fn from_parsed(kernel: &str, p: &Parsed, duration: Duration) -> Row {
        let mut skipped: Vec<(String, String)> = p.skips.clone();
        skipped.extend(p.ignored.iter().map(|t| (t.clone(), "#[ignore]".into())));
        let passed = p.ok.iter().filter(|t| !p.skips.iter().any(|(s, _)| s == *t)).count();
        Row {
            kernel: kernel.into(),
            release: p.release.clone().unwrap_or_else(|| "?".into()),
            lsm: p.lsm.clone().unwrap_or_else(|| "?".into()),
            passed,
            failed: p.failed.len(),
            skipped,
            mechanisms: mechanisms(&p.mechanisms),
            hooks: p.mechanisms.clone(),
            duration,
            problem: None,
        }
    }
}

/// `observe ×9`, or `observe ×8; unavailable: open:creat` when hooks differ.
fn mechanisms(m: &[(String, String)]) -> String {
    if m.is_empty() {
        return "?".into();
    }
    let mut kinds: Vec<(&str, Vec<&str>)> = Vec::new();
    for (hook, mech) in m {
        match kinds.iter_mut().find(|(k, _)| k == mech) {
            Some((_, hooks)) => hooks.push(hook),
            None => kinds.push((mech, vec![hook])),
        }
    }
    kinds.sort_by_key(|(_, hooks)| std::cmp::Reverse(hooks.len()));
    kinds
        .iter()
        .enumerate()
        .map(
            |(i, (k, hooks))| {
                if i == 0 {
                    format!("{k} ×{}", hooks.len())
                } else {
                    format!("{k}: {}", hooks.join(", "))
                }
            },
        )
        .collect::<Vec<_>>()
        .join("; ")
}

/// The summary as a Markdown table plus the skip list.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| kernel | release | lsm (in guest) | result | passed | failed | skipped | mechanisms | duration |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let result = if r.problem.is_some() || r.failed > 0 { "FAIL" } else { "ok" };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {result} | {} | {} | {} | {} | {:.0} s |",
            r.kernel,
            r.release,
            r.lsm,
            r.passed,
            r.failed,
            r.skipped.len(),
            r.mechanisms,
            r.duration.as_secs_f64()
        );
    }
    s.push_str(&hooks_table(rows));
    if rows.iter().all(|r| r.skipped.is_empty()) {
        s.push_str("\nNo test was skipped or ignored on any kernel.\n");
    }
    for r in rows.iter().filter(|r| !r.skipped.is_empty()) {
        let _ = writeln!(s, "\nSkipped on {}:", r.kernel);
        for (t, why) in &r.skipped {
            let _ = writeln!(s, "- {t}: {why}");
        }
    }
    for r in rows {
        if let Some(p) = &r.problem {
            let _ = writeln!(s, "\n{} failed: {p}", r.kernel);
        }
    }
    s
}

/// One line per hook, one column per kernel: the mechanism the daemon
/// reported for that hook there (`-` when it reported none).
fn hooks_table(rows: &[Row]) -> String {
    let mut hooks: Vec<&str> = Vec::new();
    for (hook, _) in rows.iter().flat_map(|r| &r.hooks) {
        if !hooks.contains(&hook.as_str()) {
            hooks.push(hook);
        }
    }
    if hooks.is_empty() {
        return String::new();
    }
    let mut s = String::from("\nMechanism per hook, as the daemon reported it:\n\n| hook |");
    for r in rows {
        let _ = write!(s, " {} |", r.kernel);
    }
    s.push_str("\n| --- |");
    s.push_str(&" --- |".repeat(rows.len()));
    s.push('\n');
    for hook in hooks {
        let _ = write!(s, "| {hook} |");
        for r in rows {
            let mech = r.hooks.iter().find(|(h, _)| h == hook).map_or("-", |(_, m)| m.as_str());
            let _ = write!(s, " {mech} |");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0
VMTEST-BEGIN\r
VMTEST-KERNEL 6.1.0-56-cloud-amd64
VMTEST-LSM lockdown,capability,landlock,bpf
VMTEST-MECH \x1b[2m2025-01-01T00:00:00Z\x1b[0m \x1b[32m INFO\x1b[0m monitor::daemon: tracepoint sched/sched_process_exec \x1b[3mhook\x1b[0m\x1b[2m=\x1b[0m\"exec\" \x1b[3mmechanism\x1b[0m\x1b[2m=\x1b[0m\"observe\"
VMTEST-MECH INFO monitor::daemon: tracepoint syscalls/sys_enter_creat hook=\"open:creat\" mechanism=\"unavailable\"
VMTEST-MECH INFO monitor::daemon: x hook=\"open:openat\" mechanism=\"observe\"
VMTEST-TESTS-BEGIN

running 4 tests
test observe::a ... ok
test observe::b ... FAILED
test observe::c ... ok
test observe::d ... ignored, needs a disk

failures:

---- observe::b stdout ----
thread 'observe::b' panicked at tests/integration/observe.rs:1:1:
daemon exited during startup

failures:
    observe::b

test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 3.00s

VMTEST-TESTS-END
VMTEST-SKIP observe::c: kernel lacks BPF LSM
VMTEST-RESULT rc=101
VMTEST-END
";

    #[test]
    fn a_console_log_parses_into_a_row() {
        let p = parse(CONSOLE);
        assert_eq!(p.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(p.lsm.as_deref(), Some("lockdown,capability,landlock,bpf"));
        assert_eq!(p.rc, Some(101));
        assert_eq!(p.failed, ["observe::b"]);
        assert!(p.failure_output.iter().any(|l| l.contains("daemon exited during startup")));
        assert!(p.summary.as_deref().unwrap().starts_with("test result: FAILED. 2 passed"));
        let row = Row::from_parsed("6.1", &p, Duration::from_secs(60));
        assert_eq!((row.passed, row.failed), (1, 1), "the skipped test is not counted as passed");
        assert_eq!(row.skipped.len(), 2);
        assert!(row.skipped.contains(&("observe::c".into(), "kernel lacks BPF LSM".into())));
        assert_eq!(row.mechanisms, "observe ×2; unavailable: open:creat");
        let t = table(&[row]);
        assert!(
            t.contains("| 6.1 | 6.1.0-56-cloud-amd64 | lockdown,capability,landlock,bpf | FAIL | 1 | 1 | 2 |"),
            "{t}"
        );
        assert!(t.contains("- observe::c: kernel lacks BPF LSM"), "{t}");
        assert!(t.contains("| hook | 6.1 |\n| --- | --- |\n| exec | observe |\n| open:creat | unavailable |"), "{t}");
    }

    #[test]
    fn a_kernel_message_inside_a_test_line_does_not_lose_the_test() {
        let hung = parse("test a::b ... ok\ntest a::c ... [   37.9] rcu: INFO: rcu_preempt detected stalls\n[   64.2] watchdog: BUG: soft lockup - CPU#0 stuck for 44s!\n");
        assert_eq!(hung.running.as_deref(), Some("a::c"), "the hang is blamed on the test that was running");
        let late = parse("test a::c ... [   37.9] rcu: INFO: stall\nok\ntest a::d ... ok\n");
        assert_eq!(late.ok, ["a::c", "a::d"]);
        assert_eq!(late.running, None);
    }

    #[test]
    fn a_console_without_markers_has_no_result() {
        let p = parse("test a::b ... ok\ntest a::c ... \nKernel panic - not syncing: VFS\n");
        assert_eq!(p.rc, None);
        assert_eq!(p.running.as_deref(), Some("a::c"));
        assert!(p.summary.is_none());
    }
}
