//! A qsocket WebSocket session (server role, echo listener) over an in-memory pipe: the input
//! is the raw bytes a client sends after the HTTP upgrade — WebSocket frames, masked or not —
//! after a 4-byte header (see `qsocket::session::fuzzing`). Checks: no panic; the session ends
//! within 5 s; its byte budgets are all given back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// `QSOCKET_FUZZ_OPTS_MASK` (e.g. `0xfd`: limit profiles 0 and 1 only) is and-ed into the
/// input's options byte, to keep fuzzing past a known hang in the tight profiles.
fn opts_mask() -> u8 {
    static MASK: OnceLock<u8> = OnceLock::new();
    *MASK.get_or_init(|| {
        std::env::var("QSOCKET_FUZZ_OPTS_MASK")
            .ok()
            .and_then(|m| u8::from_str_radix(m.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0xff)
    })
}

fuzz_target!(|data: &[u8]| {
    match (opts_mask(), data.split_first()) {
        (0xff, _) | (_, None) => {
            qsocket::session::fuzzing::run_ws_session(data);
        }
        (mask, Some((&opts, rest))) => {
            let mut input = Vec::with_capacity(data.len());
            input.push(opts & mask);
            input.extend_from_slice(rest);
            qsocket::session::fuzzing::run_ws_session(&input);
        }
    }
});
