#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ia_fuzz::legacy_json(data));
