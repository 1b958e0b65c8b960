//! Token-level mutations of the example and test sources (delete, duplicate and swap token
//! ranges, extreme numbers, vocabulary tokens) through the whole front end. The first byte picks
//! the seed file, every further seven bytes one mutation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static SEEDS: OnceLock<Vec<(String, String)>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let seeds = SEEDS.get_or_init(cnnc_tests::mutate::seeds);
    if let Some(src) = cnnc_tests::mutate::mutate_from_bytes(seeds, data) {
        cnnc_tests::pipeline(&src);
    }
});
