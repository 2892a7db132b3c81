//! Record batches as the broker validates them on produce and as consumers decode fetched data.
#![no_main]

#[expect(dead_code, reason = "the module also holds the other targets' logic")]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::batch_validator(data));
