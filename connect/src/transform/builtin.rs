//! Kafka Connect's built-in transforms and predicates.
