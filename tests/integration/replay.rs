//! `agent-monitor policy replay` on a real stream: replayed against the
//! policy that recorded it, nothing differs (the judge the replay uses
//! agrees with the kernel on every operation the trajectory made); against
//! a stricter candidate, exactly the operations its new rule denies are
//! reported, and the exit status says so.

use std::process::Command;

use serde_json::Value;

use crate::harness::{monitor_bin, stdout, Workspace};

const POLICY: &str = "mode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\nrules:\n  file:\n    \
                      - {path: \"${WORKSPACE}/secret/\", action: deny}\n  network:\n    \
                      - {cidr: 127.0.0.0/8, action: allow}\n";

fn replay(candidate: &str, events: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut c = Command::new(monitor_bin());
    c.args(["policy", "replay", "--policy", candidate, "--trajectory", "recorded"]).args(extra).arg(events);
    c.output().unwrap()
}

#[test]
fn a_stream_replays_without_difference_against_its_policy_and_names_each_new_denial() {
    let w = Workspace::new();
    w.write_policy("rec", &format!("name: rec\n{POLICY}"));
    std::fs::create_dir_all(w.ws.join("notes")).unwrap();
    std::fs::write(w.ws.join("notes/a.txt"), "a\n").unwrap();
    let d = w.daemon();
    let ws = w.ws.display().to_string();
    let script = format!("cat {ws}/notes/a.txt; cat {ws}/secret/key; echo x > {ws}/out.txt; ls {ws} >/dev/null");
    let out = d.run_policy("recorded", "rec", &w.ws, &["sh", "-c", &script]);
    assert!(stdout(&out).starts_with("a\n"), "{out:?}");
    d.trajectory("recorded");
    // The recording policy itself: nothing differs, and much was judged.
    let own = w.policies.join("rec.yaml");
    let out = replay(own.to_str().unwrap(), &d.events, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let last = text.lines().last().unwrap();
    let judged: u64 = last.split_whitespace().next().unwrap().parse().unwrap();
    assert!(judged >= 10 && last.contains(" judged, 0 difference(s), 0 unknown"), "{text}");
    // A candidate that also denies notes/: exactly that open would now be
    // denied, by the new rule; exit 1.
    let cand = w.root.join("cand.yaml");
    let stricter = POLICY.replace("  network:\n", "    - {path: \"${WORKSPACE}/notes/\", action: deny}\n  network:\n");
    std::fs::write(&cand, format!("name: cand\n{stricter}")).unwrap();
    let out = replay(cand.to_str().unwrap(), &d.events, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (summary, diffs) = lines.split_last().unwrap();
    assert_eq!(diffs.len(), 1, "{lines:#?}");
    let dif = &diffs[0];
    assert_eq!((dif["difference"].as_str(), dif["kind"].as_str()), (Some("would_deny"), Some("open")), "{dif}");
    assert_eq!(dif["object"], format!("{ws}/notes/a.txt"), "{dif}");
    assert_eq!(dif["candidate"]["rule"], format!("{}:7", cand.display()), "{dif}");
    assert_eq!(summary["summary"]["differences"], 1, "{summary}");
    // Bad input: exit 2, naming the problem.
    let out = replay("/nonexistent/p.yaml", &d.events, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/p.yaml: cannot read"), "{out:?}");
}
