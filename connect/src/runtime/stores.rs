//! The offset and status stores: in-memory views of `offset.storage.topic` and
//! `status.storage.topic`, fed by their [`super::kafka_log::KafkaLog`] tails, with Kafka
//! Connect's key and value layouts:
//!
//! - offsets: key `["<connector>", {source partition}]`, value `{source offset}` or null
//!   (JSON, as Kafka's `JsonConverter` without schemas writes them);
//! - statuses: `status-connector-<name>` and `status-task-<name>-<id>` →
//!   `{"state", "trace", "worker_id", "generation"}`; `status-topic-<topic>:connector-<name>`
//!   → `{"topic": {"name", "connector", "task", "discoverTimestamp"}}` (KIP-558 active topics).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};

use crate::connector::OffsetReader;

/// Source offsets of every connector.
#[derive(Debug, Default)]
pub struct OffsetState {
    /// connector → (partition as JSON text → (partition, offset)).
    by_connector: BTreeMap<String, BTreeMap<String, (Json, Json)>>,
}

/// The offsets-topic key of a connector's source partition.
pub fn offset_key(connector: &str, partition: &Json) -> Vec<u8> {
    serde_json::to_vec(&json!([connector, partition])).unwrap_or_default()
}

impl OffsetState {
    /// Applies one offsets-topic record; malformed keys are skipped.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(Json::Array(parts)) = serde_json::from_slice::<Json>(key) else { return };
        let [Json::String(connector), partition] = parts.as_slice() else { return };
        let text = partition.to_string();
        match value.map(serde_json::from_slice::<Json>) {
            Some(Ok(offset)) if !offset.is_null() => {
                self.by_connector.entry(connector.clone()).or_default().insert(text, (partition.clone(), offset));
            }
            Some(Err(_)) => {}
            _ => {
                if let Some(m) = self.by_connector.get_mut(connector) {
                    m.remove(&text);
                    if m.is_empty() {
                        self.by_connector.remove(connector);
                    }
                }
            }
        }
    }

    /// Every `(partition, offset)` of a connector.
    pub fn offsets(&self, connector: &str) -> Vec<(Json, Json)> {
        self.by_connector.get(connector).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }
}

/// An [`OffsetReader`] over the shared state for one connector.
pub struct ConnectorOffsets {
    pub state: Arc<Mutex<OffsetState>>,
    pub connector: String,
}

impl OffsetReader for ConnectorOffsets {
    fn offsets(&self) -> Vec<(Json, Json)> {
        self.state.lock().expect("offset state").offsets(&self.connector)
    }
}

/// A connector's or task's status record.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: String,
    pub trace: Option<String>,
    pub worker_id: String,
    pub generation: i64,
}

impl Status {
    /// The record value.
    pub fn to_json(&self) -> Json {
        json!({"state": self.state, "trace": self.trace, "worker_id": self.worker_id, "generation": self.generation})
    }

    fn from_json(v: &Json) -> Option<Status> {
        Some(Status {
            state: v.get("state")?.as_str()?.to_owned(),
            trace: v.get("trace").and_then(Json::as_str).map(str::to_owned),
            worker_id: v.get("worker_id").and_then(Json::as_str).unwrap_or_default().to_owned(),
            generation: v.get("generation").and_then(Json::as_i64).unwrap_or(0),
        })
    }
}

/// The status-topic key of a connector.
pub fn connector_status_key(name: &str) -> String {
    format!("status-connector-{name}")
}

/// The status-topic key of a task.
pub fn task_status_key(name: &str, task: u32) -> String {
    format!("status-task-{name}-{task}")
}

/// The status-topic key of a connector's active topic.
pub fn topic_status_key(topic: &str, connector: &str) -> String {
    format!("status-topic-{topic}:connector-{connector}")
}

/// Every status the topic holds.
#[derive(Debug, Default)]
pub struct StatusState {
    pub connectors: BTreeMap<String, Status>,
    pub tasks: BTreeMap<(String, u32), Status>,
    pub topics: BTreeMap<String, BTreeSet<String>>,
}

impl StatusState {
    /// Applies one status-topic record; a record of an older generation than the one held for
    /// the same key is ignored (a worker that lost the task writing late).
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let parsed = value.and_then(|v| serde_json::from_slice::<Json>(v).ok());
        if let Some(name) = key.strip_prefix("status-connector-") {
            match parsed.as_ref().and_then(Status::from_json) {
                Some(s)
                    if self
                        .connectors
                        .get(name)
                        .is_none_or(|old| old.generation <= s.generation || old.worker_id == s.worker_id) =>
                {
                    self.connectors.insert(name.to_owned(), s);
                }
                Some(_) => {}
                None if value.is_none() => {
                    self.connectors.remove(name);
                }
                None => {}
            }
        } else if let Some(rest) = key.strip_prefix("status-task-") {
            let Some((name, id)) = rest.rsplit_once('-') else { return };
            let Ok(id) = id.parse::<u32>() else { return };
            let k = (name.to_owned(), id);
            match parsed.as_ref().and_then(Status::from_json) {
                Some(s)
                    if self
                        .tasks
                        .get(&k)
                        .is_none_or(|old| old.generation <= s.generation || old.worker_id == s.worker_id) =>
                {
                    self.tasks.insert(k, s);
                }
                Some(_) => {}
                None if value.is_none() => {
                    self.tasks.remove(&k);
                }
                None => {}
            }
        } else if let Some(rest) = key.strip_prefix("status-topic-") {
            let Some((topic, connector)) = rest.rsplit_once(":connector-") else { return };
            if value.is_some() {
                self.topics.entry(connector.to_owned()).or_default().insert(topic.to_owned());
            } else if let Some(set) = self.topics.get_mut(connector) {
                set.remove(topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_apply_and_tombstone() {
        let mut s = OffsetState::default();
        let p = json!({"fingerprint": "ab"});
        let key = offset_key("c", &p);
        assert_eq!(std::str::from_utf8(&key).unwrap(), r#"["c",{"fingerprint":"ab"}]"#);
        s.apply(&key, Some(br#"{"position": 10}"#));
        assert_eq!(s.offsets("c"), vec![(p.clone(), json!({"position": 10}))]);
        s.apply(&key, None);
        assert!(s.offsets("c").is_empty());
        s.apply(b"not json", Some(b"{}"));
        s.apply(br#"["c"]"#, Some(b"{}"));
        assert!(s.offsets("c").is_empty());
    }

    #[test]
    fn statuses_by_key_with_generations() {
        let mut s = StatusState::default();
        let st = |state: &str, w: &str, g: i64| {
            serde_json::to_vec(
                &Status { state: state.into(), trace: None, worker_id: w.into(), generation: g }.to_json(),
            )
            .unwrap()
        };
        s.apply("status-task-my-conn-1", Some(&st("RUNNING", "w1", 3)));
        s.apply("status-task-my-conn-1", Some(&st("UNASSIGNED", "w2", 2)));
        assert_eq!(s.tasks[&("my-conn".to_owned(), 1)].state, "RUNNING");
        s.apply("status-connector-my-conn", Some(&st("RUNNING", "w1", 3)));
        s.apply("status-topic-logs:connector-my-conn", Some(b"{}"));
        assert!(s.topics["my-conn"].contains("logs"));
        s.apply("status-connector-my-conn", None);
        assert!(s.connectors.is_empty());
    }
}
