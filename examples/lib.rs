//! Runnable examples of Spate, one idea each; run them with
//! `cargo run -p spate-examples --example NAME -- --bootstrap-server 127.0.0.1:9092`:
//!
//! - `produce_consume`: create a topic, produce keyed records, read them back.
