//! Policy parser, validator and compiler: any bytes as a policy file must
//! give a `PolicySet` or diagnostics, never a panic; a valid policy must
//! open for a trajectory, compile (with the built-in protection added) and
//! judge consistently with the naive reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::policy::{self, judge::naive, Access, PolicyMaps, PolicySet, Protected, Vars};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(set) = PolicySet::from_sources(&[("fuzz.yaml".into(), text.to_owned())]) else { return };
    let vars: Vars = [("WORKSPACE", "/w/s"), ("HOME", "/h")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    let protected = Protected::new([("/w/s/p".into(), true), ("/h/f".into(), false)]);
    for p in set.policies() {
        let Ok(resolved) = policy::resolve(p, &vars) else { continue };
        let mut compiled = policy::compile(&resolved).expect("validated policies compile");
        let plain = PolicyMaps::new(compiled.map_entries(1));
        compiled.protect(&protected);
        let maps = PolicyMaps::new(compiled.map_entries(1));
        // Paths from the policy itself collide with its rules. A directory
        // rule's path is stored without its `/`, so the root is "": the
        // kernel never asks about an empty path, it asks about "/".
        let mut paths: Vec<String> = resolved
            .file_rules
            .iter()
            .map(|r| if r.path.path.is_empty() { "/".to_owned() } else { r.path.path.clone() })
            .collect();
        paths.extend(["/", "/w/s/p/x", "/h/f", "/etc/passwd"].map(String::from));
        for path in &paths {
            for access in [Access::Read, Access::Write] {
                let expected = naive::judge_file(&resolved, path.as_bytes(), access);
                assert_eq!(policy::judge_file(&plain, 1, path.as_bytes(), access), Some(expected));
                let got = policy::judge_file(&maps, 1, path.as_bytes(), access).expect("policy 1 exists");
                if access == Access::Write && protected.covers(path) {
                    assert_eq!(got.rule_id, monitor_common::policy::RULE_BUILTIN_TAMPER);
                } else {
                    assert_eq!(got, expected);
                }
            }
        }
    }
});
