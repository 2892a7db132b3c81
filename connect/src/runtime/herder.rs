//! The REST API's side in a worker ([`crate::rest::Herder`]): reads answer from this worker's
//! view of the config, offset and status topics; writes go into the config topic, and those
//! that Kafka Connect serialises through the leader (creating, updating and deleting
//! connectors, restarts, offsets) are refused on followers with the leader's URL, which the
//! router forwards to.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value as Json};
use spate_client::{OffsetAndMetadata, TopicPartition};

use super::config_state::{self, TargetState};
use super::stores::{self, offset_key};
use super::task::sink_group_id;
use super::worker::Shared;
use crate::config::{ConfigDef, Props};
use crate::connector::{Connector, ConnectorType};
use crate::converter::{Converter, Side};
use crate::error::ConnectError;
use crate::registry::common_config_def;
use crate::rest::{
    ConfigInfo, ConfigInfos, ConfigKeyInfo, ConfigValueInfo, ConnectorInfo, ConnectorOffsets, ConnectorStateInfo,
    ConnectorTaskId, Herder, HerderError, HerderResult, PartitionOffset, PluginInfo, ServerInfo, StateInfo, TaskInfo,
    TaskState,
};
use crate::transform::TransformChain;

/// The herder of one worker.
#[derive(Clone)]
pub struct WorkerHerder {
    shared: Arc<Shared>,
}

impl WorkerHerder {
    /// The herder over a worker's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        WorkerHerder { shared }
    }

    fn not_found(name: &str) -> HerderError {
        HerderError::Error(ConnectError::NotFound(format!("Connector {name}")))
    }

    /// Fails unless this worker leads the group (writes that Kafka serialises on the leader).
    fn require_leader(&self) -> HerderResult<()> {
        let g = self.shared.group.lock().expect("group");
        if g.rebalancing && g.leader_url.is_none() {
            return Err(HerderError::Rebalancing);
        }
        if g.is_leader {
            return Ok(());
        }
        match &g.leader_url {
            Some(url) if !url.is_empty() => Err(HerderError::NotLeader { leader_url: url.clone() }),
            _ => Err(HerderError::Rebalancing),
        }
    }

    fn connector(&self, name: &str) -> HerderResult<config_state::ConnectorState> {
        self.shared.config_state.lock().expect("config").connector(name).cloned().ok_or_else(|| Self::not_found(name))
    }

    fn plugin_of(&self, config: &Props) -> Option<Arc<dyn Connector>> {
        config.get("connector.class").and_then(|c| self.shared.plugins.find(c))
    }

    fn info(&self, name: &str, c: &config_state::ConnectorState) -> ConnectorInfo {
        ConnectorInfo {
            name: name.to_owned(),
            config: c.config.clone(),
            tasks: (0..c.tasks.len() as u32).map(|task| ConnectorTaskId { connector: name.to_owned(), task }).collect(),
            kind: self.plugin_of(&c.config).map(|p| p.kind().name().to_owned()),
        }
    }

    fn status(&self, name: &str) -> HerderResult<ConnectorStateInfo> {
        let c = self.connector(name)?;
        let statuses = self.shared.status_state.lock().expect("status");
        let connector = statuses
            .connectors
            .get(name)
            .map(|s| StateInfo { state: s.state.clone(), worker_id: s.worker_id.clone(), trace: s.trace.clone() })
            .unwrap_or(StateInfo { state: "UNASSIGNED".into(), worker_id: String::new(), trace: None });
        let task_count = if c.target == TargetState::Stopped { 0 } else { c.tasks.len() as u32 };
        let tasks: Vec<TaskState> = (0..task_count)
            .map(|id| match statuses.tasks.get(&(name.to_owned(), id)) {
                Some(s) => {
                    TaskState { id, state: s.state.clone(), worker_id: s.worker_id.clone(), trace: s.trace.clone() }
                }
                None => TaskState { id, state: "UNASSIGNED".into(), worker_id: String::new(), trace: None },
            })
            .collect();
        drop(statuses);
        let metrics = self.shared.task_metrics.lock().expect("metrics");
        let local: serde_json::Map<String, Json> =
            metrics.iter().filter(|((c, _), _)| c == name).map(|((_, t), m)| (t.to_string(), m.to_json())).collect();
        Ok(ConnectorStateInfo {
            name: name.to_owned(),
            connector,
            tasks,
            kind: self.plugin_of(&c.config).map(|p| p.kind().name().to_owned()),
            metrics: if local.is_empty() {
                None
            } else {
                Some(json!({ "tasks": local, "worker_id": self.shared.worker_id }))
            },
        })
    }

    /// Every definition a connector of `plugin` takes.
    fn full_def(plugin: &Arc<dyn Connector>) -> ConfigDef {
        common_config_def(plugin.kind()).merge(&plugin.config_def())
    }

    /// Validation as `/config/validate` reports it.
    fn validate(&self, plugin: &Arc<dyn Connector>, config: &Props) -> ConfigInfos {
        let def = Self::full_def(plugin);
        let mut values = def.validate(config);
        let mut extra: Vec<(String, String)> = plugin.validate(config);
        if let Err(ConnectError::Config { key, reason }) =
            TransformChain::from_config(config, &self.shared.config.plugin_path)
        {
            extra.push((key, reason));
        }
        for side in [Side::Key, Side::Value] {
            if let Err(ConnectError::Config { key, reason }) = Converter::from_config(side, config, &Props::new()) {
                if config.get(&key).is_some_and(|v| !v.is_empty()) {
                    extra.push((key, reason));
                }
            }
        }
        if let Err(ConnectError::Config { key, reason }) = super::errors::ErrorPolicy::from_config(config) {
            extra.push((key, reason));
        }
        if plugin.kind() == ConnectorType::Sink {
            let mut probe = spate_client::ConsumerConfig::default();
            if let Err(ConnectError::Config { key, reason }) =
                super::task::apply_consumer_overrides(&mut probe, config, "consumer.override.")
            {
                extra.push((key, reason));
            }
            let topics = config.get("topics").is_some_and(|t| !t.trim().is_empty());
            let regex = config.get("topics.regex").is_some_and(|t| !t.trim().is_empty());
            if topics == regex {
                extra.push(("topics".into(), "Must configure one of topics or topics.regex".into()));
            }
        }
        let mut configs: Vec<ConfigInfo> = Vec::new();
        for key in def.keys() {
            let v = values.iter_mut().find(|v| v.name == key.name);
            let mut errors = v.as_ref().map(|v| v.errors.clone()).unwrap_or_default();
            errors.extend(extra.iter().filter(|(k, _)| *k == key.name).map(|(_, e)| e.clone()));
            configs.push(ConfigInfo {
                definition: key_info(key),
                value: ConfigValueInfo {
                    name: key.name.clone(),
                    value: v.as_ref().and_then(|v| v.value.clone()),
                    recommended_values: v.map(|v| v.recommended_values.clone()).unwrap_or_default(),
                    errors,
                    visible: true,
                },
            });
        }
        // Errors on keys outside the definitions (transforms.x.*, predicates.*) get an entry too.
        for (k, e) in &extra {
            if !def.keys().iter().any(|d| &d.name == k) {
                configs.push(ConfigInfo {
                    definition: ConfigKeyInfo {
                        name: k.clone(),
                        kind: "STRING".into(),
                        required: false,
                        default_value: None,
                        importance: "HIGH".into(),
                        documentation: String::new(),
                        group: None,
                        width: "NONE".into(),
                        display_name: k.clone(),
                        dependents: Vec::new(),
                        order_in_group: -1,
                    },
                    value: ConfigValueInfo {
                        name: k.clone(),
                        value: config.get(k).cloned(),
                        recommended_values: Vec::new(),
                        errors: vec![e.clone()],
                        visible: true,
                    },
                });
            }
        }
        let mut groups: Vec<String> = Vec::new();
        for k in def.keys() {
            if let Some(g) = &k.group {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        ConfigInfos {
            name: plugin.class().to_owned(),
            error_count: configs.iter().map(|c| c.value.errors.len()).sum(),
            groups,
            configs,
        }
    }

    async fn write_target(&self, name: &str, state: TargetState) -> HerderResult<()> {
        self.connector(name)?;
        self.shared
            .write_config(config_state::target_state_key(name), Some(config_state::target_state_value(state)))
            .await?;
        Ok(())
    }

    fn require_stopped(&self, name: &str) -> HerderResult<config_state::ConnectorState> {
        let c = self.connector(name)?;
        if c.target != TargetState::Stopped {
            return Err(HerderError::Error(ConnectError::config(
                "state",
                "Connectors must be in the STOPPED state before their offsets can be modified. This can be done for the \
                 specified connector by issuing a 'PUT' request to the '/connectors/{name}/stop' endpoint",
            )));
        }
        // Stopping is asynchronous: a task still stopping stores its offsets last, over any
        // change made now.
        let busy = self
            .shared
            .status_state
            .lock()
            .expect("status")
            .tasks
            .iter()
            .any(|((c, _), s)| c == name && matches!(s.state.as_str(), "RUNNING" | "PAUSED" | "RESTARTING"));
        if busy {
            return Err(HerderError::Error(ConnectError::Conflict(format!(
                "Connector {name} is stopping: its tasks have not all stopped yet; try again shortly"
            ))));
        }
        Ok(c)
    }

    fn kind_of(&self, c: &config_state::ConnectorState) -> HerderResult<ConnectorType> {
        self.plugin_of(&c.config)
            .map(|p| p.kind())
            .ok_or_else(|| HerderError::Error(ConnectError::config("connector.class", "unknown connector class")))
    }
}

fn key_info(key: &crate::config::ConfigKey) -> ConfigKeyInfo {
    ConfigKeyInfo {
        name: key.name.clone(),
        kind: key.ty.name().to_owned(),
        required: key.default.is_none(),
        default_value: key.default.clone(),
        importance: key.importance.name().to_owned(),
        documentation: key.documentation.clone(),
        group: key.group.clone(),
        width: "NONE".into(),
        display_name: key.name.clone(),
        dependents: Vec::new(),
        order_in_group: -1,
    }
}

fn tp_of(partition: &Json) -> Option<TopicPartition> {
    let topic = partition.get("kafka_topic")?.as_str()?;
    let p = partition.get("kafka_partition")?.as_i64()?;
    Some(TopicPartition::new(topic.to_owned(), p as i32))
}

impl Herder for WorkerHerder {
    async fn server_info(&self) -> HerderResult<ServerInfo> {
        let cluster_id = match self.shared.admin.describe_cluster().await {
            Ok(d) => d.cluster_id.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Ok(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: String::new(),
            kafka_cluster_id: cluster_id,
        })
    }

    async fn connectors(&self) -> HerderResult<Vec<String>> {
        Ok(self.shared.config_state.lock().expect("config").connectors().keys().cloned().collect())
    }

    async fn connector_info(&self, name: &str) -> HerderResult<ConnectorInfo> {
        let c = self.connector(name)?;
        Ok(self.info(name, &c))
    }

    async fn connector_config(&self, name: &str) -> HerderResult<Props> {
        Ok(self.connector(name)?.config)
    }

    async fn put_connector_config(
        &self,
        name: &str,
        mut config: Props,
        allow_replace: bool,
    ) -> HerderResult<(bool, ConnectorInfo)> {
        if name.trim().is_empty() {
            return Err(HerderError::Error(ConnectError::config("name", "connector name is empty")));
        }
        config.insert("name".into(), name.to_owned());
        let plugin = config
            .get("connector.class")
            .ok_or_else(|| {
                HerderError::Error(ConnectError::config(
                    "connector.class",
                    "Missing required configuration \"connector.class\" which has no default value.",
                ))
            })
            .and_then(|class| {
                self.shared
                    .plugins
                    .find(class)
                    .ok_or_else(|| HerderError::Error(ConnectError::UnknownPlugin { class: class.clone() }))
            })?;
        let infos = self.validate(&plugin, &config);
        if infos.error_count > 0 {
            let errors: Vec<String> = infos
                .configs
                .iter()
                .flat_map(|c| c.value.errors.iter().map(move |e| format!("{}: {e}", c.value.name)))
                .collect();
            return Err(HerderError::Error(ConnectError::config(
                "config",
                format!(
                    "Connector configuration is invalid and contains the following {} error(s):\n{}\nYou can also find the above list of errors at the endpoint `/connector-plugins/{{connectorType}}/config/validate`",
                    errors.len(),
                    errors.join("\n")
                ),
            )));
        }
        self.require_leader()?;
        let exists = self.shared.config_state.lock().expect("config").connector(name).is_some();
        if exists && !allow_replace {
            return Err(HerderError::Error(ConnectError::Conflict(format!("Connector {name} already exists"))));
        }
        self.shared
            .write_config(config_state::connector_key(name), Some(config_state::properties_value(&config)))
            .await?;
        let c = self.connector(name)?;
        Ok((!exists, self.info(name, &c)))
    }

    async fn delete_connector(&self, name: &str) -> HerderResult<()> {
        let c = self.connector(name)?;
        self.require_leader()?;
        self.shared.write_config(config_state::connector_key(name), None).await?;
        self.shared.write_config(config_state::target_state_key(name), None).await?;
        self.shared.report(stores::connector_status_key(name), None);
        for t in 0..c.tasks.len() as u32 {
            self.shared.report(stores::task_status_key(name, t), None);
        }
        Ok(())
    }

    async fn connector_status(&self, name: &str) -> HerderResult<ConnectorStateInfo> {
        self.status(name)
    }

    async fn task_configs(&self, name: &str) -> HerderResult<Vec<TaskInfo>> {
        let c = self.connector(name)?;
        Ok(c.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| TaskInfo {
                id: ConnectorTaskId { connector: name.to_owned(), task: i as u32 },
                config: t.clone(),
            })
            .collect())
    }

    async fn task_status(&self, name: &str, task: u32) -> HerderResult<TaskState> {
        let status = self.status(name)?;
        status
            .tasks
            .into_iter()
            .find(|t| t.id == task)
            .ok_or_else(|| HerderError::Error(ConnectError::NotFound(format!("Task {name}-{task}"))))
    }

    async fn connector_topics(&self, name: &str) -> HerderResult<Vec<String>> {
        self.connector(name)?;
        Ok(self
            .shared
            .status_state
            .lock()
            .expect("status")
            .topics
            .get(name)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn reset_connector_topics(&self, name: &str) -> HerderResult<()> {
        let topics = self.connector_topics(name).await?;
        for t in topics {
            self.shared.status_state.lock().expect("status").apply(&stores::topic_status_key(&t, name), None);
            self.shared.report(stores::topic_status_key(&t, name), None);
        }
        Ok(())
    }

    async fn restart_connector(
        &self,
        name: &str,
        include_tasks: bool,
        only_failed: bool,
    ) -> HerderResult<Option<ConnectorStateInfo>> {
        self.connector(name)?;
        self.require_leader()?;
        self.shared
            .write_config(
                format!("restart-connector-{name}"),
                Some(json!({"include-tasks": include_tasks, "only-failed": only_failed})),
            )
            .await?;
        if !include_tasks && !only_failed {
            return Ok(None);
        }
        let mut status = self.status(name)?;
        for t in &mut status.tasks {
            if include_tasks && (!only_failed || t.state == "FAILED") {
                t.state = "RESTARTING".into();
            }
        }
        if !only_failed || status.connector.state == "FAILED" {
            status.connector.state = "RESTARTING".into();
        }
        Ok(Some(status))
    }

    async fn restart_task(&self, name: &str, task: u32) -> HerderResult<()> {
        let c = self.connector(name)?;
        if task as usize >= c.tasks.len() {
            return Err(HerderError::Error(ConnectError::NotFound(format!("Task {name}-{task}"))));
        }
        self.require_leader()?;
        self.shared.write_config(format!("restart-task-{name}-{task}"), Some(json!({}))).await?;
        Ok(())
    }

    async fn pause_connector(&self, name: &str) -> HerderResult<()> {
        self.write_target(name, TargetState::Paused).await
    }

    async fn resume_connector(&self, name: &str) -> HerderResult<()> {
        self.write_target(name, TargetState::Started).await
    }

    async fn stop_connector(&self, name: &str) -> HerderResult<()> {
        self.write_target(name, TargetState::Stopped).await
    }

    async fn connector_offsets(&self, name: &str) -> HerderResult<ConnectorOffsets> {
        let c = self.connector(name)?;
        let offsets = match self.kind_of(&c)? {
            ConnectorType::Source => self
                .shared
                .offset_state
                .lock()
                .expect("offsets")
                .offsets(name)
                .into_iter()
                .map(|(partition, offset)| PartitionOffset { partition, offset: Some(offset) })
                .collect(),
            ConnectorType::Sink => self
                .shared
                .admin
                .list_group_offsets(&sink_group_id(name), None)
                .await
                .map_err(ConnectError::from)?
                .into_iter()
                .map(|(tp, o)| PartitionOffset {
                    partition: json!({"kafka_topic": tp.topic, "kafka_partition": tp.partition}),
                    offset: Some(json!({"kafka_offset": o.offset})),
                })
                .collect(),
        };
        Ok(ConnectorOffsets { offsets })
    }

    async fn alter_connector_offsets(&self, name: &str, offsets: ConnectorOffsets) -> HerderResult<String> {
        let c = self.require_stopped(name)?;
        self.require_leader()?;
        match self.kind_of(&c)? {
            ConnectorType::Source => {
                for o in &offsets.offsets {
                    if !o.partition.is_object() || o.offset.as_ref().is_some_and(|v| !v.is_object() && !v.is_null()) {
                        return Err(HerderError::Error(ConnectError::config(
                            "offsets",
                            "source partitions and offsets must be JSON objects (or null to remove)",
                        )));
                    }
                }
                for o in offsets.offsets {
                    let value = o.offset.filter(|v| !v.is_null()).map(|v| Bytes::from(v.to_string()));
                    let key = offset_key(name, &o.partition);
                    self.shared
                        .offset_log
                        .send(Bytes::from(key.clone()), value.clone())
                        .await
                        .map_err(HerderError::Error)?;
                    self.shared.offset_state.lock().expect("offsets").apply(&key, value.as_deref());
                }
            }
            ConnectorType::Sink => {
                let mut alter = BTreeMap::new();
                let mut delete = Vec::new();
                for o in offsets.offsets {
                    let tp = tp_of(&o.partition).ok_or_else(|| {
                        HerderError::Error(ConnectError::config(
                            "offsets",
                            "sink partitions must be {\"kafka_topic\": ..., \"kafka_partition\": ...}",
                        ))
                    })?;
                    match o.offset.as_ref().and_then(|v| v.get("kafka_offset")).and_then(Json::as_i64) {
                        Some(off) => {
                            alter.insert(tp, OffsetAndMetadata::new(off));
                        }
                        None => delete.push(tp),
                    }
                }
                let group = sink_group_id(name);
                if !alter.is_empty() {
                    for (tp, r) in
                        self.shared.admin.alter_group_offsets(&group, &alter).await.map_err(ConnectError::from)?
                    {
                        r.map_err(|e| HerderError::Error(ConnectError::Conflict(format!("altering {tp:?}: {e}"))))?;
                    }
                }
                if !delete.is_empty() {
                    self.shared.admin.delete_group_offsets(&group, &delete).await.map_err(ConnectError::from)?;
                }
            }
        }
        Ok("The offsets for this connector have been altered successfully".into())
    }

    async fn reset_connector_offsets(&self, name: &str) -> HerderResult<String> {
        let c = self.require_stopped(name)?;
        self.require_leader()?;
        match self.kind_of(&c)? {
            ConnectorType::Source => {
                let entries = self.shared.offset_state.lock().expect("offsets").offsets(name);
                for (partition, _) in entries {
                    let key = offset_key(name, &partition);
                    self.shared.offset_log.send(Bytes::from(key.clone()), None).await.map_err(HerderError::Error)?;
                    self.shared.offset_state.lock().expect("offsets").apply(&key, None);
                }
            }
            ConnectorType::Sink => {
                let group = sink_group_id(name);
                let _ = self.shared.admin.delete_groups(&[group.as_str()]).await.map_err(ConnectError::from)?;
            }
        }
        Ok("The offsets for this connector have been reset successfully".into())
    }

    async fn plugins(&self, connectors_only: bool) -> HerderResult<Vec<PluginInfo>> {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        let mut out: Vec<PluginInfo> = self
            .shared
            .plugins
            .plugins()
            .iter()
            .map(|p| PluginInfo {
                class: p.class().to_owned(),
                kind: p.kind().name().to_owned(),
                version: p.version().to_owned(),
            })
            .collect();
        if !connectors_only {
            for (class, kind) in crate::transform::plugin_classes() {
                out.push(PluginInfo { class, kind: kind.to_owned(), version: version.clone() });
            }
            for class in ["StringConverter", "ByteArrayConverter", "JsonConverter"] {
                out.push(PluginInfo { class: class.to_owned(), kind: "converter".into(), version: version.clone() });
            }
        }
        Ok(out)
    }

    async fn plugin_config(&self, plugin: &str) -> HerderResult<Vec<ConfigKeyInfo>> {
        let p = self
            .shared
            .plugins
            .find(plugin)
            .ok_or_else(|| HerderError::Error(ConnectError::NotFound(format!("Plugin {plugin}"))))?;
        Ok(p.config_def().keys().iter().map(key_info).collect())
    }

    async fn validate_config(&self, plugin: &str, config: Props) -> HerderResult<ConfigInfos> {
        let p = self
            .shared
            .plugins
            .find(plugin)
            .ok_or_else(|| HerderError::Error(ConnectError::NotFound(format!("Plugin {plugin}"))))?;
        Ok(self.validate(&p, &config))
    }
}
