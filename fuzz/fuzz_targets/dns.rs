//! The resolver's DNS message handling: any bytes as an agent's query must
//! parse or be refused, never panic, and a refusal of a parsed query must
//! parse back as an answer to it; any bytes as an upstream reply to a fixed
//! question must be filtered or refused, and what the filter keeps must be
//! on the question's chain and pass `keep`, in a reply that parses again.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use monitor::dns::message::{filter_reply, parse_query, refusal, Refusal};

/// A query for `allowed.test` A, id 0x1234, RD set.
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07allowed\x04test\x00\x00\x01\x00\x01";

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = parse_query(data) {
        for code in [Refusal::Refused, Refusal::NxDomain, Refusal::ServFail] {
            let reply = refusal(data, code).expect("a parsed query can be refused");
            let (_, answer) = filter_reply(&q, &reply, |_, _| true).expect("a refusal answers its query");
            assert_eq!(answer.rcode, code.as_str());
            assert!(answer.addresses.is_empty());
        }
    }
    let question = parse_query(QUERY).expect("the fixed query parses");
    let keep = |_: &str, a: IpAddr| !a.is_loopback();
    if let Ok((filtered, answer)) = filter_reply(&question, data, keep) {
        for a in &answer.addresses {
            assert!(!a.addr.is_loopback(), "kept an address keep refused: {a:?}");
            assert!(a.name == "allowed.test" || answer.cnames.contains(&a.name), "off the chain: {a:?}");
        }
        let (_, again) = filter_reply(&question, &filtered, keep).expect("a filtered reply parses again");
        assert_eq!(again.addresses, answer.addresses, "filtering is idempotent");
    }
});
