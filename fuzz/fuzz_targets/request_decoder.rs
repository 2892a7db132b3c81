//! A request frame (without its size prefix) as the broker handles it: header, bounds pass,
//! body of the request type for the api key, and record batch validation for Produce.
#![no_main]

#[expect(dead_code, reason = "the module also holds the other targets' logic")]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::request_decoder(data));
