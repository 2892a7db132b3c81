//! A response as the client and the broker's replica fetcher decode it: the api key and version
//! the request was sent with, then the frame (header, bounds pass, body).
#![no_main]

#[expect(dead_code, reason = "the module also holds the other targets' logic")]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::response_decoder(data));
