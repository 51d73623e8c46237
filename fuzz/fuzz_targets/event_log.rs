#![no_main]

// Body in src/fuzzing.rs, also run on stable by tests/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| segmentd::fuzzing::event_log(data));
