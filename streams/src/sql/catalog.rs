//! The default schema (`datafusion.public`): every topic is a table, beside the tables declared
//! with `CREATE TABLE … WITH (topic = …)` and DataFusion's own (`CREATE EXTERNAL TABLE`, views).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use spate_client::admin::{AdminConfig, OffsetSpec};
use spate_client::{Admin, TopicPartition};

use super::format::table_schema;
use super::infer::infer_value_fields;
use super::options::TableOptions;
use super::scan::{ClientSettings, PartitionRange, RangeReader};
use super::table::TopicTable;
use crate::StreamsError;

/// The most value bytes one schema sample holds, whatever `sample.records` says.
pub(crate) const MAX_SAMPLE_BYTES: usize = 64 * 1024 * 1024;

/// How the SQL layer reaches the cluster: settings, and an admin client made on first use (so a
/// session that only reads Parquet files needs no broker).
pub(crate) struct ClusterHandle {
    settings: ClientSettings,
    admin: tokio::sync::Mutex<Option<Admin>>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl ClusterHandle {
    pub(crate) fn new(settings: ClientSettings) -> Self {
        ClusterHandle { settings, admin: tokio::sync::Mutex::new(None) }
    }

    pub(crate) fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    pub(crate) async fn admin(&self) -> Result<Admin, StreamsError> {
        let mut admin = self.admin.lock().await;
        if let Some(admin) = &*admin {
            return Ok(admin.clone());
        }
        let config = AdminConfig {
            bootstrap_servers: self.settings.bootstrap_servers.clone(),
            client_id: self.settings.client_id.clone(),
            request_timeout_ms: 30_000,
        };
        let created = Admin::new(config).await.map_err(|e| self.client_error(e, "connecting"))?;
        *admin = Some(created.clone());
        Ok(created)
    }

    /// A client failure, saying which cluster it was.
    pub(crate) fn client_error(&self, e: spate_client::Error, what: &str) -> StreamsError {
        StreamsError::SqlExecution(format!(
            "{what}: {e} (cluster at bootstrap.servers {})",
            self.settings.bootstrap_servers.join(",")
        ))
    }

    /// The topics of the cluster (internal ones included when asked).
    pub(crate) async fn list_topics(&self, include_internal: bool) -> Result<Vec<String>, StreamsError> {
        self.admin().await?.list_topics(include_internal).await.map_err(|e| self.client_error(e, "listing topics"))
    }

    /// Reads the first `options.sample_records` records of each partition (at most
    /// [`MAX_SAMPLE_BYTES`] of values in all) and infers the table's schema from them.
    pub(crate) async fn infer_table(
        self: &Arc<Self>,
        options: TableOptions,
    ) -> Result<(TopicTable, usize), StreamsError> {
        let admin = self.admin().await?;
        let topic = options.topic.clone();
        let described = admin
            .describe_topics(&[&topic])
            .await
            .map_err(|e| self.client_error(e, &format!("describing topic {topic}")))?;
        let partitions: Vec<TopicPartition> = described
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| TopicPartition { topic: topic.clone(), partition: p.partition }))
            .collect();
        let offsets = |spec: OffsetSpec| {
            let wanted: Vec<(TopicPartition, OffsetSpec)> = partitions.iter().map(|tp| (tp.clone(), spec)).collect();
            let admin = admin.clone();
            async move { admin.list_offsets(&wanted).await }
        };
        let context = || format!("listing offsets of topic {topic}");
        let earliest = offsets(OffsetSpec::Earliest).await.map_err(|e| self.client_error(e, &context()))?;
        let latest = offsets(OffsetSpec::Latest).await.map_err(|e| self.client_error(e, &context()))?;
        let ranges: Vec<PartitionRange> = partitions
            .iter()
            .filter_map(|tp| {
                let start = earliest.get(tp)?.offset;
                let end = latest.get(tp)?.offset.min(start.saturating_add(options.sample_records as i64));
                Some(PartitionRange { partition: tp.partition, start, end })
            })
            .collect();
        let mut values: Vec<Option<Vec<u8>>> = Vec::new();
        let mut bytes = 0;
        let mut reader = RangeReader::new(&self.settings, &topic, &ranges).await?;
        'read: while let Some(chunk) = reader.next_chunk().await? {
            for record in chunk.raw_records()? {
                bytes += record.value.map_or(0, <[u8]>::len);
                values.push(record.value.map(<[u8]>::to_vec));
                if bytes > MAX_SAMPLE_BYTES {
                    break 'read;
                }
            }
        }
        let inferred = infer_value_fields(&options, values.iter().map(|v| v.as_deref()));
        let schema = table_schema(inferred.fields);
        Ok((TopicTable::new(options, schema, self.clone()), values.len()))
    }
}

/// `datafusion.public`: declared tables first, then every topic (hidden internal topics can still
/// be named).
#[derive(Debug)]
pub(crate) struct TopicSchemaProvider {
    cluster: Arc<ClusterHandle>,
    /// Tables registered by name: `CREATE TABLE … WITH (topic …)`, `CREATE EXTERNAL TABLE`, views.
    registered: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
    /// The topics as last listed (`table_names` cannot do I/O).
    topics: RwLock<Vec<String>>,
    /// Tables inferred from a non-empty sample, reused for the session.
    inferred: Mutex<HashMap<String, Arc<TopicTable>>>,
    /// Topics whose sample had no records when last planned: a missing column there is
    /// explained in the plan error.
    empty: Mutex<BTreeSet<String>>,
}

impl TopicSchemaProvider {
    pub(crate) fn new(cluster: Arc<ClusterHandle>) -> Self {
        TopicSchemaProvider {
            cluster,
            registered: RwLock::new(HashMap::new()),
            topics: RwLock::new(Vec::new()),
            inferred: Mutex::new(HashMap::new()),
            empty: Mutex::new(BTreeSet::new()),
        }
    }

    /// Lists the topics again (for `SHOW TABLES` and `information_schema`).
    pub(crate) async fn refresh_topics(&self) -> Result<(), StreamsError> {
        let topics = self.cluster.list_topics(false).await?;
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = topics;
        Ok(())
    }

    /// Registers a declared table, replacing one of that name when `replace`.
    pub(crate) fn register_declared(&self, name: &str, table: Arc<dyn TableProvider>, replace: bool) -> bool {
        let mut registered = self.registered.write().unwrap_or_else(|e| e.into_inner());
        if registered.contains_key(name) && !replace {
            return false;
        }
        registered.insert(name.to_owned(), table);
        true
    }

    pub(crate) fn is_registered(&self, name: &str) -> bool {
        self.registered.read().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// Topics planned with no records to infer columns from.
    pub(crate) fn empty_topics(&self) -> BTreeSet<String> {
        self.empty.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn topic_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, StreamsError> {
        if let Some(table) = self.inferred.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(Some(table.clone()));
        }
        let topics = self.cluster.list_topics(true).await?;
        if !topics.iter().any(|t| t == name) {
            return Ok(None);
        }
        let (table, sampled) = self.cluster.infer_table(TableOptions::new(name)).await?;
        let table = Arc::new(table);
        let mut empty = self.empty.lock().unwrap_or_else(|e| e.into_inner());
        if sampled > 0 {
            empty.remove(name);
            self.inferred.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), table.clone());
        } else {
            // Not cached: once records arrive, the next statement infers again.
            empty.insert(name.to_owned());
        }
        Ok(Some(table))
    }
}

#[async_trait]
impl SchemaProvider for TopicSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> =
            self.registered.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        names.extend(self.topics.read().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        names.into_iter().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.registered.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(Some(table.clone()));
        }
        self.topic_table(name).await.map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.registered.write().unwrap_or_else(|e| e.into_inner()).insert(name, table))
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.registered.write().unwrap_or_else(|e| e.into_inner()).remove(name))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.is_registered(name) || self.topics.read().unwrap_or_else(|e| e.into_inner()).iter().any(|t| t == name)
    }
}
