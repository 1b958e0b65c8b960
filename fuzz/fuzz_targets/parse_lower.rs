//! Arbitrary text through the whole front end: parse, AST print, check, lower every model,
//! verify and print the IR, render the diagnostics. Any panic is a bug; so is a slow input
//! (run with `-timeout=2`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The driver refuses non-UTF-8 files before parsing, so only text is worth fuzzing.
    if let Ok(src) = std::str::from_utf8(data) {
        cnnc_tests::pipeline(src);
    }
});
