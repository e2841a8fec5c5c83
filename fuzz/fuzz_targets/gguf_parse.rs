//! Fuzz target: arbitrary bytes through the GGUF parser, then through everything a parsed
//! header promises (see `ferrolm_format::fuzz_one`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferrolm_format::fuzz_one(data);
});
