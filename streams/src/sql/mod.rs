//! SQL over topics with DataFusion (feature `sql`).
//!
//! Entry point: [`SqlContext`]. Every topic of the cluster is a table of the default schema; a
//! table's value format (`json`, `string`, `bytes`, `csv`) and schema are inferred from a bounded
//! sample or declared with `CREATE TABLE t (…) WITH (topic = '…', format = '…')`. Every table has
//! the metadata columns `_key`, `_partition`, `_offset`, `_timestamp` and `_headers`. An ad-hoc
//! query reads a snapshot: each partition up to its high watermark when the query started.
//! Parquet directories join the same queries through DataFusion's own
//! `CREATE EXTERNAL TABLE … STORED AS PARQUET LOCATION '…'`.

pub(crate) mod catalog;
pub mod continuous;
pub(crate) mod flat_json;
pub(crate) mod format;
pub(crate) mod infer;
pub mod options;
pub(crate) mod pushdown;
pub(crate) mod scan;
pub(crate) mod table;

use std::sync::Arc;

/// The DataFusion this layer is built on, for callers that handle its batches and types.
pub use datafusion;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{self as sql_ast, CreateTableOptions, SqlOption};

use crate::{SqlPosition, StreamsError};
use catalog::{ClusterHandle, TopicSchemaProvider};
use format::METADATA_COLUMNS;
use options::TableOptions;
use scan::{ClientSettings, TopicScanExec, MALFORMED_METRIC};
use table::TopicTable;

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

impl QueryResult {
    fn empty() -> Self {
        QueryResult { schema: Arc::new(Schema::empty()), batches: Vec::new(), malformed_records: 0 }
    }
}

/// A SQL session over one cluster: DataFusion's `SessionContext` with the topics as tables.
pub struct SqlContext {
    config: SqlConfig,
    session: SessionContext,
    cluster: Arc<ClusterHandle>,
    schema: Arc<TopicSchemaProvider>,
}

impl SqlContext {
    /// A session over the cluster at `config.bootstrap_servers`. Connects lazily: a session that
    /// only reads Parquet files needs no broker.
    pub async fn connect(config: SqlConfig) -> Result<SqlContext, StreamsError> {
        let mut session_config = SessionConfig::new().with_information_schema(true);
        // Spans let plan errors point at the offending token.
        session_config.options_mut().sql_parser.collect_spans = true;
        let session = SessionContext::new_with_config(session_config);
        let bootstrap_servers: Vec<String> =
            config.bootstrap_servers.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if bootstrap_servers.is_empty() {
            return Err(StreamsError::SqlExecution("bootstrap.servers is empty".to_owned()));
        }
        let cluster =
            Arc::new(ClusterHandle::new(ClientSettings { bootstrap_servers, client_id: config.client_id.clone() }));
        let schema = Arc::new(TopicSchemaProvider::new(cluster.clone()));
        let catalog = session
            .catalog("datafusion")
            .ok_or_else(|| StreamsError::SqlExecution("internal: DataFusion has no default catalog".to_owned()))?;
        catalog.register_schema("public", schema.clone()).map_err(execution_error)?;
        Ok(SqlContext { config, session, cluster, schema })
    }

    /// The session's configuration.
    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// DataFusion's session, for registering more tables or functions.
    pub fn session(&self) -> &SessionContext {
        &self.session
    }

    /// The options of a table declared with `CREATE TABLE … WITH (topic = …)` or of a topic read
    /// by its name (inferred), `None` for other tables.
    pub async fn table_options(&self, name: &str) -> Option<TableOptions> {
        let table = self.session.table_provider(name).await.ok()?;
        table.downcast_ref::<TopicTable>().map(|t| t.options().clone())
    }

    /// Runs one statement and collects its result.
    pub async fn sql(&self, sql: &str) -> Result<QueryResult, StreamsError> {
        if let Some(result) = self.create_topic_table(sql).await? {
            return Ok(result);
        }
        if let Some(result) = self.explain_continuous(sql).await? {
            return Ok(result);
        }
        let plan = self.physical_plan(sql).await?;
        let (schema, plan, task_ctx) = plan;
        let batches = datafusion::physical_plan::collect(plan.clone(), task_ctx).await.map_err(execution_error)?;
        Ok(QueryResult { schema, batches, malformed_records: malformed_records(&plan) })
    }

    /// Runs one statement and streams its result (for results too big to hold).
    pub async fn sql_stream(&self, sql: &str) -> Result<(SchemaRef, SendableRecordBatchStream), StreamsError> {
        let (schema, stream, _) = self.sql_stream_counted(sql).await?;
        Ok((schema, stream))
    }

    async fn physical_plan(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, Arc<dyn ExecutionPlan>, Arc<datafusion::execution::TaskContext>), StreamsError> {
        // The topic list feeds `SHOW TABLES` and `information_schema` only (table lookups by name
        // ask the cluster themselves), so it is refreshed only for them.
        let lower = sql.to_ascii_lowercase();
        if lower.contains("show") || lower.contains("information_schema") {
            if let Err(e) = self.schema.refresh_topics().await {
                tracing::debug!(error = %e, "listing topics for SHOW TABLES failed");
            }
        }
        let df = self.session.sql(sql).await.map_err(|e| self.plan_error(e))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let task_ctx = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.map_err(|e| self.plan_error(e))?;
        Ok((schema, plan, task_ctx))
    }

    /// `CREATE TABLE name (col TYPE, …) WITH (topic = '…', format = '…', …)`: a topic table with
    /// declared columns (or inferred ones when none are listed). `None` for any other statement,
    /// which DataFusion runs.
    /// `EXPLAIN INSERT INTO topic SELECT …`: what the continuous query would run (its topology and
    /// per-batch plan), as DataFusion's EXPLAIN columns `plan_type`, `plan`.
    async fn explain_continuous(&self, sql: &str) -> Result<Option<QueryResult>, StreamsError> {
        let Some(insert) = explained_insert(sql) else { return Ok(None) };
        let text = continuous::explain(self, insert).await?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan_type", datafusion::arrow::datatypes::DataType::Utf8, false),
            Field::new("plan", datafusion::arrow::datatypes::DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(vec!["continuous_plan"])),
                Arc::new(datafusion::arrow::array::StringArray::from(vec![text])),
            ],
        )
        .map_err(|e| StreamsError::SqlExecution(format!("internal: {e}")))?;
        Ok(Some(QueryResult { schema, batches: vec![batch], malformed_records: 0 }))
    }

    async fn create_topic_table(&self, sql: &str) -> Result<Option<QueryResult>, StreamsError> {
        // A statement that does not parse here is DataFusion's to report.
        let Ok(statements) = DFParser::parse_sql(sql) else { return Ok(None) };
        let statements = Vec::from(statements);
        let [DfStatement::Statement(statement)] = statements.as_slice() else { return Ok(None) };
        let sql_ast::Statement::CreateTable(create) = statement.as_ref() else { return Ok(None) };
        let CreateTableOptions::With(with) = &create.table_options else { return Ok(None) };
        let mut pairs = Vec::with_capacity(with.len());
        for option in with {
            match option {
                SqlOption::KeyValue { key, value } => {
                    pairs.push((normalize_option_key(&key.value), option_value(value)))
                }
                other => return Err(plan_at(format!("table option {other} is not `key = 'value'`"), None)),
            }
        }
        if !pairs.iter().any(|(k, _)| k == "topic" || k == "format") {
            return Ok(None);
        }
        if create.query.is_some() {
            return Err(plan_at(
                "CREATE TABLE … WITH (topic = …) AS SELECT is not supported: a topic table reads a topic; \
                 write one with a continuous INSERT INTO"
                    .to_owned(),
                None,
            ));
        }
        let name = create
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(normalize_ident)
            .ok_or_else(|| plan_at(format!("table name {} is not an identifier", create.name), None))?;
        let options = TableOptions::parse(&name, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        if self.schema.is_registered(&name) && !create.or_replace {
            if create.if_not_exists {
                return Ok(Some(QueryResult::empty()));
            }
            return Err(plan_at(format!("table '{name}' already exists"), None));
        }
        if !self.cluster.list_topics(true).await?.contains(&options.topic) {
            return Err(plan_at(format!("topic '{}' does not exist (table {name})", options.topic), None));
        }
        let table = if create.columns.is_empty() {
            self.cluster.infer_table(options).await?.0
        } else {
            let mut casts = Vec::with_capacity(create.columns.len());
            for column in &create.columns {
                let column_name = normalize_ident(&column.name);
                if METADATA_COLUMNS.contains(&column_name.as_str()) {
                    return Err(plan_at(
                        format!("column {column_name} is a metadata column every topic table has; rename it"),
                        span_position(column.name.span),
                    ));
                }
                casts.push(format!("CAST(NULL AS {}) AS \"{}\"", column.data_type, column_name.replace('"', "\"\"")));
            }
            let types =
                self.session.sql(&format!("SELECT {}", casts.join(", "))).await.map_err(|e| self.plan_error(e))?;
            let fields: Vec<Field> =
                types.schema().fields().iter().map(|f| Field::new(f.name(), f.data_type().clone(), true)).collect();
            TopicTable::new(options, format::table_schema(fields), self.cluster.clone())
        };
        self.schema.register_declared(&name, Arc::new(table), true);
        Ok(Some(QueryResult::empty()))
    }

    /// A planning failure: the query's fault, with its position when DataFusion or the parser
    /// gives one — unless the cause is ours or the cluster's (a `StreamsError` inside).
    fn plan_error(&self, e: DataFusionError) -> StreamsError {
        let (mut message, position) = match plan_error(e) {
            StreamsError::SqlPlan { message, position } => (message, position),
            other => return other,
        };
        if let Some(table) = missing_table(&message) {
            message = format!(
                "topic '{table}' does not exist and no table of that name is declared (SHOW TABLES lists them): \
                 {message}"
            );
        } else if message.contains("No field named") {
            let empty = self.schema.empty_topics();
            if !empty.is_empty() {
                message = format!(
                    "{message} (topics {empty:?} had no records to infer value columns from; declare them with \
                     CREATE TABLE … (col TYPE, …) WITH (topic = '…', format = 'json'))"
                );
            }
        }
        StreamsError::SqlPlan { message, position }
    }
}

/// A planning failure: the query's fault, with its position when DataFusion or the parser gives
/// one — unless the cause is ours or the cluster's (a `StreamsError` inside).
pub(crate) fn plan_error(e: DataFusionError) -> StreamsError {
    if let Some(inner) = streams_error(&e) {
        return inner;
    }
    let position = e
        .diagnostic()
        .and_then(|d| d.span)
        .and_then(|span| position_at(span.start.line, span.start.column))
        .or_else(|| parse_position(&e.to_string()));
    StreamsError::SqlPlan { message: e.strip_backtrace(), position }
}

/// Option keys as written: `sample_records` for `sample.records` (a bare identifier cannot hold a
/// dot; `"sample.records"` quoted works too).
fn normalize_option_key(key: &str) -> String {
    match key.to_ascii_lowercase().as_str() {
        "sample_records" => "sample.records".to_owned(),
        "csv_delimiter" => "csv.delimiter".to_owned(),
        other => other.to_owned(),
    }
}

fn option_value(value: &sql_ast::Expr) -> String {
    match value {
        sql_ast::Expr::Value(v) => match &v.value {
            sql_ast::Value::SingleQuotedString(s) | sql_ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        sql_ast::Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

/// DataFusion's identifier normalization: unquoted names are lower-cased.
fn normalize_ident(ident: &sql_ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn span_position(span: datafusion::sql::sqlparser::tokenizer::Span) -> Option<SqlPosition> {
    position_at(span.start.line, span.start.column)
}

/// Line 0 marks an empty span (no position known).
fn position_at(line: u64, column: u64) -> Option<SqlPosition> {
    (line > 0).then_some(SqlPosition { line, column })
}

/// sqlparser's "… at Line: 3, Column: 14".
fn parse_position(message: &str) -> Option<SqlPosition> {
    let rest = &message[message.rfind("Line: ")? + "Line: ".len()..];
    let (line, rest) = rest.split_once(',')?;
    let column = rest.trim_start().strip_prefix("Column: ")?;
    let column: String = column.chars().take_while(char::is_ascii_digit).collect();
    Some(SqlPosition { line: line.trim().parse().ok()?, column: column.parse().ok()? })
}

/// The table of DataFusion's "table 'datafusion.public.x' not found".
fn missing_table(message: &str) -> Option<String> {
    let start = message.find("table '")? + "table '".len();
    let rest = &message[start..];
    let end = rest.find("' not found")?;
    let qualified = &rest[..end];
    Some(qualified.rsplit('.').next().unwrap_or(qualified).to_owned())
}

/// A `StreamsError` our code put inside a DataFusion error (a scan or a table lookup), rebuilt.
fn streams_error(e: &DataFusionError) -> Option<StreamsError> {
    let mut current: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(inner) = current.downcast_ref::<StreamsError>() {
            return Some(match inner {
                StreamsError::SqlPlan { message, position } => {
                    StreamsError::SqlPlan { message: message.clone(), position: *position }
                }
                StreamsError::SqlExecution(message) => StreamsError::SqlExecution(message.clone()),
                other => StreamsError::SqlExecution(other.to_string()),
            });
        }
        current = current.source()?;
    }
}

/// Records that decoded to NULL columns, over every topic scan of an executed plan.
fn malformed_records(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = if plan.is::<TopicScanExec>() {
        plan.metrics().and_then(|m| m.sum_by_name(MALFORMED_METRIC)).map_or(0, |v| v.as_usize() as u64)
    } else {
        0
    };
    own + plan.children().into_iter().map(malformed_records).sum::<u64>()
}

fn plan_at(message: String, position: Option<SqlPosition>) -> StreamsError {
    StreamsError::SqlPlan { message, position }
}

/// A failure while running a query.
pub(crate) fn execution_error(e: DataFusionError) -> StreamsError {
    streams_error(&e).unwrap_or_else(|| StreamsError::SqlExecution(e.strip_backtrace()))
}

/// Counts the records of a streamed statement that did not decode and became NULL columns (see
/// [`SqlContext::sql_stream_counted`]): what [`QueryResult::malformed_records`] is for `sql`.
pub struct MalformedCounter {
    plan: Option<Arc<dyn ExecutionPlan>>,
}

impl MalformedCounter {
    /// Records that became NULL columns so far: the total once the stream has ended.
    pub fn malformed_records(&self) -> u64 {
        self.plan.as_ref().map_or(0, malformed_records)
    }
}

impl SqlContext {
    /// [`SqlContext::sql_stream`] and a counter of the records that did not decode, to read once
    /// the stream has ended (`spate sql` prints results batch by batch and warns after).
    pub async fn sql_stream_counted(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, SendableRecordBatchStream, MalformedCounter), StreamsError> {
        let mut done = self.create_topic_table(sql).await?;
        if done.is_none() {
            done = self.explain_continuous(sql).await?;
        }
        if let Some(result) = done {
            let stream = datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                result.schema.clone(),
                futures_util::stream::iter(result.batches.into_iter().map(Ok)),
            );
            return Ok((result.schema, Box::pin(stream), MalformedCounter { plan: None }));
        }
        let (schema, plan, task_ctx) = self.physical_plan(sql).await?;
        let stream = datafusion::physical_plan::execute_stream(plan.clone(), task_ctx).map_err(execution_error)?;
        Ok((schema, stream, MalformedCounter { plan: Some(plan) }))
    }

    /// A DataFusion error from a streamed result, as [`SqlContext::sql`] would report it.
    pub fn stream_error(e: DataFusionError) -> StreamsError {
        execution_error(e)
    }
}

/// The `INSERT …` of an `EXPLAIN INSERT …` statement (a continuous query to explain).
fn explained_insert(sql: &str) -> Option<&str> {
    let t = sql.trim_start();
    let rest = t.get(..7).filter(|w| w.eq_ignore_ascii_case("explain")).and_then(|_| t.get(7..))?;
    let insert = rest.trim_start();
    (insert.len() < rest.len() && insert.get(..6).is_some_and(|w| w.eq_ignore_ascii_case("insert"))).then_some(insert)
}

#[cfg(test)]
mod tests {
    #[test]
    fn explain_of_an_insert_is_a_continuous_explain() {
        assert_eq!(super::explained_insert("  explain\n INSERT INTO o SELECT 1"), Some("INSERT INTO o SELECT 1"));
        assert_eq!(super::explained_insert("EXPLAIN SELECT 1"), None);
        assert_eq!(super::explained_insert("EXPLAININSERT"), None);
        assert_eq!(super::explained_insert("INSERT INTO o SELECT 1"), None);
        assert_eq!(super::explained_insert("é"), None);
    }
}
