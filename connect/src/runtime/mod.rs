//! The worker runtime.
