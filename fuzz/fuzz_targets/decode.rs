//! Kernel record decoder: any bytes from the ring buffer must decode or be
//! refused with an error, never panic, and a decoded record must serialise.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = monitor::events::decode::decode(data) {
        serde_json::to_string(&d.body).expect("a decoded body serialises");
    }
});
