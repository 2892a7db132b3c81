//! The file source.
