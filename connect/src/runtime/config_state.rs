//! The connector configs as the `config.storage.topic` (`connect-configs`) describes them, with
//! Kafka Connect's keys and value shapes, applied record by record (sans-IO; the worker feeds
//! it what its tail of the topic reads):
//!
//! - `connector-<name>` → `{"properties": {…}}`, or null: the connector is deleted;
//! - `task-<name>-<id>` → `{"properties": {…}}`: a task config, pending until…
//! - `commit-<name>` → `{"tasks": N}`: tasks `0..N` of the pending set become the connector's;
//! - `target-state-<name>` → `{"state": "STARTED" | "PAUSED" | "STOPPED"}`;
//! - `restart-connector-<name>` → `{"include-tasks": bool, "only-failed": bool}` (Kafka's
//!   KIP-745 restart requests) and, Spate's, `restart-task-<name>-<id>` → `{}`.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use crate::config::Props;

/// What a connector should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Started,
    Paused,
    Stopped,
}

impl TargetState {
    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            TargetState::Started => "STARTED",
            TargetState::Paused => "PAUSED",
            TargetState::Stopped => "STOPPED",
        }
    }

    fn parse(s: &str) -> Option<TargetState> {
        match s {
            "STARTED" => Some(TargetState::Started),
            "PAUSED" => Some(TargetState::Paused),
            "STOPPED" => Some(TargetState::Stopped),
            _ => None,
        }
    }
}

/// A connector as the config topic has it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorState {
    pub config: Props,
    /// The config-topic offset of the connector's latest config record: a connector deleted
    /// and created again with the same config is still a new one.
    pub config_offset: i64,
    pub target: TargetState,
    /// Committed task configs (empty until the first `commit-<name>`).
    pub tasks: Vec<Props>,
}

/// A restart asked through the API, in config-topic order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRequest {
    /// The config-topic offset of the request (workers act on requests after the offset they
    /// started at).
    pub offset: i64,
    pub connector: String,
    /// `None`: the connector (and tasks per the flags); `Some(id)`: one task.
    pub task: Option<u32>,
    pub include_tasks: bool,
    pub only_failed: bool,
}

/// Restart requests kept (older ones are dropped: a worker that falls this far behind reads
/// the topic from the start anyway).
const MAX_RESTART_REQUESTS: usize = 1024;

/// The whole config state.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    connectors: BTreeMap<String, ConnectorState>,
    /// Task configs written but not yet committed, per connector.
    pending_tasks: BTreeMap<String, BTreeMap<u32, Props>>,
    /// Target states written before (or without) the connector's config.
    target_states: BTreeMap<String, TargetState>,
    restarts: Vec<RestartRequest>,
    /// The next config-topic offset to apply (Kafka's "config offset" in the group protocol).
    offset: i64,
}

/// The record key for a connector's config.
pub fn connector_key(name: &str) -> String {
    format!("connector-{name}")
}

/// The record key for a task's config.
pub fn task_key(name: &str, task: u32) -> String {
    format!("task-{name}-{task}")
}

/// The record key that commits a connector's task configs.
pub fn commit_key(name: &str) -> String {
    format!("commit-{name}")
}

/// The record key of a connector's target state.
pub fn target_state_key(name: &str) -> String {
    format!("target-state-{name}")
}

/// The value of a connector or task config record.
pub fn properties_value(props: &Props) -> Json {
    json!({ "properties": props })
}

/// The value of a target-state record (Kafka writes both fields).
pub fn target_state_value(state: TargetState) -> Json {
    // Workers older than KIP-875 only read `state` and know no STOPPED: they see PAUSED.
    let v1 = if state == TargetState::Stopped { TargetState::Paused } else { state };
    json!({ "state": v1.name(), "state.v2": state.name() })
}

/// Splits `task-<name>-<id>` style suffixes: `<name>-<id>` → (name, id).
fn split_task(rest: &str) -> Option<(&str, u32)> {
    let (name, id) = rest.rsplit_once('-')?;
    Some((name, id.parse().ok()?))
}

fn properties(value: &Json) -> Option<Props> {
    let obj = value.get("properties")?.as_object()?;
    Some(obj.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect())
}

impl ConfigState {
    /// Applies one record read at `offset` (`value` `None` is a tombstone). Unknown keys and
    /// malformed values are skipped: the topic may hold records of other versions.
    pub fn apply(&mut self, offset: i64, key: &str, value: Option<&Json>) {
        self.offset = self.offset.max(offset + 1);
        if let Some(name) = key.strip_prefix("connector-") {
            match value.and_then(properties) {
                Some(config) => {
                    let target = self.target_states.get(name).copied().unwrap_or(TargetState::Started);
                    let entry = self.connectors.entry(name.to_owned()).or_insert_with(|| ConnectorState {
                        config: Props::new(),
                        config_offset: offset,
                        target,
                        tasks: Vec::new(),
                    });
                    entry.config = config;
                    entry.config_offset = offset;
                }
                None if value.is_none() => {
                    self.connectors.remove(name);
                    self.pending_tasks.remove(name);
                    self.target_states.remove(name);
                }
                None => {}
            }
        } else if let Some(rest) = key.strip_prefix("task-") {
            if let (Some((name, id)), Some(props)) = (split_task(rest), value.and_then(properties)) {
                self.pending_tasks.entry(name.to_owned()).or_default().insert(id, props);
            }
        } else if let Some(name) = key.strip_prefix("commit-") {
            let Some(count) = value.and_then(|v| v.get("tasks")).and_then(Json::as_u64) else { return };
            let pending = self.pending_tasks.remove(name).unwrap_or_default();
            if let Some(c) = self.connectors.get_mut(name) {
                let tasks: Option<Vec<Props>> = (0..count as u32).map(|i| pending.get(&i).cloned()).collect();
                // A commit whose task configs are not all there is inconsistent (Kafka logs and
                // waits for the next); keep the previous tasks.
                if let Some(tasks) = tasks {
                    c.tasks = tasks;
                }
            }
        } else if let Some(name) = key.strip_prefix("target-state-") {
            let state = value
                .and_then(|v| v.get("state.v2").or_else(|| v.get("state")))
                .and_then(Json::as_str)
                .and_then(TargetState::parse);
            match state {
                Some(state) => {
                    self.target_states.insert(name.to_owned(), state);
                    if let Some(c) = self.connectors.get_mut(name) {
                        c.target = state;
                    }
                }
                None if value.is_none() => {
                    self.target_states.remove(name);
                }
                None => {}
            }
        } else if let Some(name) = key.strip_prefix("restart-connector-") {
            let flag = |k: &str| value.and_then(|v| v.get(k)).and_then(Json::as_bool).unwrap_or(false);
            self.push_restart(RestartRequest {
                offset,
                connector: name.to_owned(),
                task: None,
                include_tasks: flag("include-tasks"),
                only_failed: flag("only-failed"),
            });
        } else if let Some(rest) = key.strip_prefix("restart-task-") {
            if let Some((name, id)) = split_task(rest) {
                self.push_restart(RestartRequest {
                    offset,
                    connector: name.to_owned(),
                    task: Some(id),
                    include_tasks: false,
                    only_failed: false,
                });
            }
        }
    }

    fn push_restart(&mut self, r: RestartRequest) {
        if self.restarts.len() >= MAX_RESTART_REQUESTS {
            self.restarts.remove(0);
        }
        self.restarts.push(r);
    }

    /// The next offset to apply.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Every connector, by name.
    pub fn connectors(&self) -> &BTreeMap<String, ConnectorState> {
        &self.connectors
    }

    /// One connector.
    pub fn connector(&self, name: &str) -> Option<&ConnectorState> {
        self.connectors.get(name)
    }

    /// Restart requests at or after `offset`.
    pub fn restarts_since(&self, offset: i64) -> impl Iterator<Item = &RestartRequest> {
        self.restarts.iter().filter(move |r| r.offset >= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Props {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn tasks_apply_only_when_committed_and_deletes_clear_everything() {
        let mut s = ConfigState::default();
        let c = props(&[("connector.class", "FileStreamSource"), ("file", "/x")]);
        s.apply(0, &connector_key("my-conn"), Some(&properties_value(&c)));
        s.apply(1, &task_key("my-conn", 0), Some(&properties_value(&props(&[("file", "/x")]))));
        assert!(s.connector("my-conn").unwrap().tasks.is_empty());
        s.apply(2, &commit_key("my-conn"), Some(&json!({"tasks": 1})));
        assert_eq!(s.connector("my-conn").unwrap().tasks.len(), 1);
        // A commit naming a task that was never written keeps the old tasks.
        s.apply(3, &commit_key("my-conn"), Some(&json!({"tasks": 2})));
        assert_eq!(s.connector("my-conn").unwrap().tasks.len(), 1);
        s.apply(4, &target_state_key("my-conn"), Some(&target_state_value(TargetState::Paused)));
        assert_eq!(s.connector("my-conn").unwrap().target, TargetState::Paused);
        s.apply(5, "restart-connector-my-conn", Some(&json!({"include-tasks": true, "only-failed": false})));
        s.apply(6, "restart-task-my-conn-0", Some(&json!({})));
        let r: Vec<_> = s.restarts_since(6).collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].task, Some(0));
        assert_eq!(s.restarts_since(0).count(), 2);
        s.apply(7, &connector_key("my-conn"), None);
        assert!(s.connector("my-conn").is_none());
        assert_eq!(s.offset(), 8);
        // Garbage is skipped.
        s.apply(8, "connector-x", Some(&json!(42)));
        s.apply(9, "task-nodash", Some(&json!({"properties": {}})));
        assert!(s.connectors().is_empty());
    }

    #[test]
    fn target_state_written_before_the_config_applies_to_it() {
        let mut s = ConfigState::default();
        s.apply(0, &target_state_key("c"), Some(&target_state_value(TargetState::Stopped)));
        s.apply(1, &connector_key("c"), Some(&properties_value(&props(&[("a", "b")]))));
        assert_eq!(s.connector("c").unwrap().target, TargetState::Stopped);
    }
}
