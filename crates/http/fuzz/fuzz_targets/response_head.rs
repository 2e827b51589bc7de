#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ikukantai_http::fuzzing::response_head(data));
