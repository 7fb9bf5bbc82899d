//! The running summary of one trajectory, written into its `trajectory_end`
//! record: counts per kind and decision, and the distinct executables,
//! written files and remote endpoints. Pure: fed every record the pipeline
//! publishes for the trajectory.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{decode::access_mode, process::ExecId};
use crate::record::{Body, Bytes, Record, Summary};

/// Entries kept per distinct-value list; beyond it the summary says
/// `truncated`. Bounds the daemon's memory per trajectory.
pub const SUMMARY_LIMIT: usize = 1024;

/// `O_CREAT | O_TRUNC`: an open that changes the file even when read-only.
const MODIFYING_FLAGS: u32 = 0o100 | 0o1000;

#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    processes: HashSet<ExecId>,
    executables: BTreeSet<Vec<u8>>,
    files_written: BTreeSet<Vec<u8>>,
    endpoints: BTreeSet<String>,
    domains_resolved: BTreeSet<Vec<u8>>,
    domains_denied: BTreeSet<Vec<u8>>,
    truncated: bool,
}

impl Tally {
    pub fn add(&mut self, r: &Record) {
        let decision = r.verdict.as_ref().and_then(|v| v.decision);
        *self.counts.entry(r.body.kind()).or_default().entry(decision.unwrap_or("none")).or_default() += 1;
        if let Some(id) = r.process.exec_id {
            if self.processes.len() < SUMMARY_LIMIT * 16 {
                self.processes.insert(id);
            } else if !self.processes.contains(&id) {
                self.truncated = true;
            }
        }
        if let Body::Dns { name, .. } = &r.body {
            let set = if decision == Some("deny") { &mut self.domains_denied } else { &mut self.domains_resolved };
            insert(set, name.as_bytes(), &mut self.truncated);
        }
        // What the trajectory did, not what it tried: denied operations are
        // in `counts` only.
        if decision == Some("deny") {
            return;
        }
        match &r.body {
            Body::Exec { filename, path, .. } => {
                let exe = path.as_ref().unwrap_or(filename);
                insert(&mut self.executables, &exe.0, &mut self.truncated);
            }
            Body::Open { path, requested, flags, result, .. } => {
                let writes = access_mode(*flags) != "read" || flags & MODIFYING_FLAGS != 0;
                if writes && *result >= 0 {
                    if let Some(p) = path.as_ref().or(requested.as_ref()) {
                        insert(&mut self.files_written, &p.0, &mut self.truncated);
                    }
                }
            }
            Body::Connect { family, addr, port, protocol, .. } => {
                let endpoint = match *family {
                    "inet6" => format!("[{addr}]:{port}/{protocol}"),
                    _ => format!("{addr}:{port}/{protocol}"),
                };
                if self.endpoints.len() < SUMMARY_LIMIT {
                    self.endpoints.insert(endpoint);
                } else if !self.endpoints.contains(&endpoint) {
                    self.truncated = true;
                }
            }
            Body::Process { exe: Some(exe), .. } => insert(&mut self.executables, &exe.0, &mut self.truncated),
            _ => {}
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            counts: self.counts.clone(),
            processes: self.processes.len() as u64,
            executables: self.executables.iter().map(|b| Bytes(b.clone())).collect(),
            files_written: self.files_written.iter().map(|b| Bytes(b.clone())).collect(),
            endpoints: self.endpoints.iter().cloned().collect(),
            domains_resolved: strings(&self.domains_resolved),
            domains_denied: strings(&self.domains_denied),
            truncated: self.truncated,
            limits: Default::default(),
        }
    }
}

fn strings(set: &BTreeSet<Vec<u8>>) -> Vec<String> {
    set.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
}

fn insert(set: &mut BTreeSet<Vec<u8>>, value: &[u8], truncated: &mut bool) {
    if set.len() < SUMMARY_LIMIT {
        if !set.contains(value) {
            set.insert(value.to_vec());
        }
    } else if !set.contains(value) {
        *truncated = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Process, Timestamp, Verdict, SCHEMA_VERSION};

    fn record(body: Body, decision: Option<&'static str>, pid: u32) -> Record {
        Record {
            v: SCHEMA_VERSION,
            ts: Timestamp(0),
            trajectory: "t".into(),
            seq: 1,
            body,
            process: Process { exec_id: Some(ExecId { start_ticks: 1, pid }), ..Process::default() },
            verdict: decision.map(|d| Verdict {
                decision: Some(d),
                action: Some(d),
                policy: None,
                rule: None,
                mechanism: None,
            }),
            step: None,
        }
    }

    fn open(path: &str, flags: u32, result: i32) -> Body {
        Body::Open {
            base: None,
            syscall: "openat",
            path: Some(Bytes::from(path)),
            requested: None,
            dfd: None,
            flags,
            access: access_mode(flags),
            mode: 0,
            result,
            path_truncated: false,
            path_unresolved: false,
            by_inode: false,
        }
    }

    #[test]
    fn counts_and_distinct_values() {
        let mut t = Tally::default();
        let exec = |p: &str| Body::Exec {
            filename: Bytes::from(p),
            path: Some(Bytes::from(p)),
            argv: vec![],
            filename_truncated: false,
            argv_truncated: false,
            mapping: false,
        };
        t.add(&record(exec("/usr/bin/make"), Some("allow"), 1));
        t.add(&record(exec("/usr/bin/make"), Some("allow"), 2));
        t.add(&record(exec("/usr/bin/curl"), Some("deny"), 3));
        t.add(&record(open("/w/out.o", 0o1101, 3), Some("allow"), 2));
        t.add(&record(open("/w/in.c", 0, 3), Some("allow"), 2));
        t.add(&record(open("/w/new", 0o100, 4), Some("audit"), 2));
        t.add(&record(open("/w/failed", 0o1, -13), Some("allow"), 2));
        t.add(&record(open("/etc/shadow", 0o2, 3), Some("deny"), 2));
        let connect = |addr: &str, family| Body::Connect {
            op: "connect",
            family,
            addr: addr.into(),
            port: 443,
            protocol: "tcp".into(),
            redirect: None,
            domain: None,
            domain_id: 0,
        };
        t.add(&record(connect("10.0.0.1", "inet"), Some("allow"), 2));
        t.add(&record(connect("::1", "inet6"), None, 2));
        let s = t.summary();
        assert_eq!(s.counts["exec"]["allow"], 2);
        assert_eq!(s.counts["exec"]["deny"], 1);
        assert_eq!(s.counts["open"].values().sum::<u64>(), 5);
        assert_eq!(s.counts["connect"]["none"], 1);
        assert_eq!(s.processes, 3);
        assert_eq!(s.executables, vec![Bytes::from("/usr/bin/make")]);
        assert_eq!(s.files_written, vec![Bytes::from("/w/new"), Bytes::from("/w/out.o")]);
        assert_eq!(s.endpoints, vec!["10.0.0.1:443/tcp".to_owned(), "[::1]:443/tcp".to_owned()]);
        assert!(!s.truncated);
    }

    #[test]
    fn lists_are_bounded() {
        let mut t = Tally::default();
        for i in 0..SUMMARY_LIMIT + 5 {
            t.add(&record(open(&format!("/w/{i}"), 0o1, 3), Some("allow"), 1));
        }
        let s = t.summary();
        assert_eq!(s.files_written.len(), SUMMARY_LIMIT);
        assert!(s.truncated);
    }
}
