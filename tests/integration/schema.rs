//! The stream a real trajectory produces validates against the JSON Schema
//! shipped in `docs/events.schema.json`.

use std::net::TcpListener;

use crate::harness::{agent_bin, monitor_bin, Daemon};

/// Asserts every record validates against `docs/events.schema.json`.
pub fn assert_matches_schema(recs: &[serde_json::Value]) {
    let validator = validator();
    for r in recs {
        let errors: Vec<String> = validator.iter_errors(r).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "record does not match the schema: {r}\n{}", errors.join("\n"));
    }
}

fn validator() -> jsonschema::Validator {
    let schema_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).expect("the schema itself is valid")
}

#[test]
fn real_stream_matches_the_published_schema() {
    let validator = validator();
    let d = Daemon::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A file name that is not UTF-8 exercises the base64 form of bytes (not
    // in the daemon's directory: it holds write-protected files).
    let scratch = tempfile::tempdir().unwrap();
    let odd = scratch.path().join("odd");
    let script = format!(
        "f=$(printf '{odd}\\377'); : > \"$f\"; cat \"$f\"; {monitor} step --name 'read files' --control-socket {sock}; \
         cat /etc/hostname >/dev/null; {agent} connect 127.0.0.1 {port}",
        odd = odd.display(),
        agent = agent_bin().display(),
        monitor = monitor_bin().display(),
        sock = d.socket.display(),
    );
    assert!(d.run(Some("schema-1"), &["sh", "-c", &script]).status.success());
    let recs = d.trajectory("schema-1");
    assert_matches_schema(&recs);
    for kind in ["trajectory_start", "exec", "open", "connect", "step", "trajectory_end"] {
        assert!(recs.iter().any(|r| r["kind"] == kind), "no {kind} record to validate");
    }
    let mut raw = odd.to_str().unwrap().as_bytes().to_vec();
    raw.push(0xff);
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&raw);
    assert!(
        recs.iter().any(|r| r["kind"] == "open" && r["path"]["base64"] == encoded.as_str()),
        "non-UTF-8 path recorded losslessly as base64"
    );
    // A record that breaks the contract is rejected: the schema is not vacuous.
    let mut broken = recs[1].clone();
    broken["seq"] = serde_json::json!(0);
    assert!(!validator.is_valid(&broken));
    let mut extra = recs[1].clone();
    extra["surprise"] = serde_json::json!(1);
    assert!(!validator.is_valid(&extra), "unknown fields are rejected");
}
