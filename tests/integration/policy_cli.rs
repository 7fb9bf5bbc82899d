//! `agent-monitor policy check` through the real binary: the shipped
//! examples pass; each broken fixture fails naming file, line, column and
//! field.

use std::process::Command;

use crate::harness::monitor_bin;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn check(paths: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(monitor_bin()).current_dir(root()).args(["policy", "check"]).args(paths).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn shipped_policies_are_valid() {
    let (code, err) = check(&["policies/default.yaml", "policies/reviewer.yaml", "policies/audit.yaml"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(&["policies"]);
    assert_eq!(code, Some(0), "the directory as a whole is valid: {err}");
}

#[test]
fn broken_policies_report_file_line_column_and_field() {
    let cases = [
        ("bad_cidr.yaml", "bad_cidr.yaml:12:13: rules.network[1].cidr: invalid CIDR"),
        ("bad_port_range.yaml", "bad_port_range.yaml:11:20: rules.network[0].ports[1]: invalid port range"),
        ("relative_path.yaml", "relative_path.yaml:10:13: rules.exec[0].path: relative path"),
        ("unknown_action.yaml", "unknown_action.yaml:12:15: rules.file[0].action: unknown action"),
        ("unknown_field.yaml", "unknown_field.yaml:11:7: rules.file[0].acess: unknown field"),
        ("unknown_variable.yaml", "unknown_variable.yaml:10:13: rules.file[0].path: unknown variable"),
        ("wrong_type.yaml", "wrong_type.yaml:11:14: rules.network[0].ports:"),
        ("duplicate", "duplicate/b.yaml:3:7: name: duplicate policy name"),
        ("bad_domain.yaml", "bad_domain.yaml:12:15: rules.network[1].domain: invalid domain \"exa mple.com\""),
        ("domain_and_cidr.yaml", "domain_and_cidr.yaml:13:15: rules.network[1].domain: a network rule has either"),
        ("allow_private_on_cidr.yaml", "allow_private_on_cidr.yaml:11:22: rules.network[0].allow_private:"),
    ];
    for (file, expected) in cases {
        let (code, err) = check(&[&format!("tests/fixtures/policies/{file}")]);
        assert_eq!(code, Some(1), "{file} must fail: {err}");
        assert!(err.contains(expected), "{file}: expected {expected:?} in:\n{err}");
    }
    // One broken file makes the whole check fail, valid ones included.
    let (code, _) = check(&["policies/default.yaml", "tests/fixtures/policies/bad_cidr.yaml"]);
    assert_eq!(code, Some(1));
}
