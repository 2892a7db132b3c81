//! Unit tests of the sans-IO parts: record → row, the per-key plan, SQL text.
