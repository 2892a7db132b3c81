//! Consumer groups: the coordinator of Kafka's classic group protocol and the internal
//! `__consumer_offsets` topic that makes group state durable.
//!
//! - [`state`]: the sans-IO state machine (joins, syncs, heartbeats, leaves, offsets, timers).
//! - [`store`]: the `__consumer_offsets` record formats (Kafka's own).
//! - [`coordinator`]: the shell that owns the state machine, parks JoinGroup/SyncGroup
//!   responses, appends records and loads a partition's groups when this broker becomes its
//!   leader.

pub mod coordinator;
pub mod state;
pub mod store;

pub use coordinator::GroupCoordinator;

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Whether `topic` is internal to the broker: listed as `is_internal` in Metadata, written only
/// by the broker itself, never deleted by clients.
pub fn is_internal_topic(topic: &str) -> bool {
    topic == OFFSETS_TOPIC || topic == crate::txn::TRANSACTION_STATE_TOPIC
}

/// Java's `String.hashCode`: over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32))
}

/// The `__consumer_offsets` partition of a group, as Kafka computes it:
/// `Utils.abs(groupId.hashCode) % partitions` (`Utils.abs(Integer.MIN_VALUE)` is 0).
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let h = java_string_hash(group_id);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_java() {
        // Values from Java's "…".hashCode().
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("my-group"), -1_906_497_762);
        // A non-BMP character is two UTF-16 units: "😀" is \ud83d\ude00.
        assert_eq!(java_string_hash("😀"), 0xd83d * 31 + 0xde00);
    }

    #[test]
    fn partition_is_abs_hash_mod_count() {
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("x", 1), 0);
    }
}
