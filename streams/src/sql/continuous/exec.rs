//! Running the user's SELECT over one micro-batch (or one set of closed windows) from inside a
//! stream thread: the query is planned once per task against a `MemTable` whose rows are
//! swapped before each run; each run makes a physical plan and collects it on a small runtime of
//! its own (a stream thread runs its tasks synchronously inside its own single-threaded runtime,
//! which therefore cannot also drive DataFusion's tasks).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::memory::{MemTable, PartitionData};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::analyze::{INPUT_TABLE, LOOKUP_TABLE};
use crate::StreamsError;

/// Worker threads of the shared SQL runtime: the box has few cores and the stream threads do the
/// rest; DataFusion runs one partition per query here.
const EXEC_THREADS: usize = 2;

fn runtime() -> Result<&'static tokio::runtime::Runtime, StreamsError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(EXEC_THREADS)
                .thread_name("spate-sql-exec")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| StreamsError::SqlExecution(format!("cannot start the SQL runtime: {e}")))
}

/// A planning failure: the query's fault (an unknown column, a type error).
pub(crate) fn plan_error(e: datafusion::error::DataFusionError) -> StreamsError {
    StreamsError::SqlPlan { message: e.to_string(), position: None }
}

/// Runs `f` on the SQL runtime and waits for it (from synchronous code, e.g. a processor).
pub(crate) fn block_on<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Result<T, StreamsError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| StreamsError::SqlExecution("the SQL runtime dropped a query (it panicked)".into()))
}

/// One task's copy of a continuous query's SELECT, planned once.
pub(crate) struct BatchSql {
    session: SessionContext,
    /// The rows the input table holds: one MemTable partition, swapped before each run.
    input: PartitionData,
    /// The rows of a stream-table join's table matching the run's input, likewise.
    lookup: Option<PartitionData>,
    plan: LogicalPlan,
    output_schema: SchemaRef,
}

impl BatchSql {
    /// Plans `select_sql` (which reads [`INPUT_TABLE`]) against rows of `input_schema`. An
    /// unknown column or a type error is the query's fault ([`StreamsError::SqlPlan`]).
    pub async fn plan(select_sql: &str, input_schema: SchemaRef) -> Result<BatchSql, StreamsError> {
        BatchSql::plan_with_lookup(select_sql, input_schema, None).await
    }

    /// [`Self::plan`] for a query that also reads [`LOOKUP_TABLE`] (rows of `lookup_schema`).
    pub async fn plan_with_lookup(
        select_sql: &str,
        input_schema: SchemaRef,
        lookup_schema: Option<SchemaRef>,
    ) -> Result<BatchSql, StreamsError> {
        let session = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let register = |name: &str, schema: SchemaRef| -> Result<PartitionData, StreamsError> {
            let table = MemTable::try_new(schema, vec![Vec::new()]).map_err(plan_error)?;
            let rows = table.batches[0].clone();
            session.register_table(name, Arc::new(table)).map_err(plan_error)?;
            Ok(rows)
        };
        let input = register(INPUT_TABLE, input_schema)?;
        let lookup = lookup_schema.map(|schema| register(LOOKUP_TABLE, schema)).transpose()?;
        let df = session.sql(select_sql).await.map_err(plan_error)?;
        let output_schema = Arc::new(df.schema().as_arrow().clone());
        let plan = df.into_optimized_plan().map_err(plan_error)?;
        Ok(BatchSql { session, input, lookup, plan, output_schema })
    }

    /// [`Self::plan`] from synchronous code.
    pub fn plan_blocking(select_sql: &str, input_schema: SchemaRef) -> Result<BatchSql, StreamsError> {
        BatchSql::plan_with_lookup_blocking(select_sql, input_schema, None)
    }

    /// [`Self::plan_with_lookup`] from synchronous code.
    pub fn plan_with_lookup_blocking(
        select_sql: &str,
        input_schema: SchemaRef,
        lookup_schema: Option<SchemaRef>,
    ) -> Result<BatchSql, StreamsError> {
        let sql = select_sql.to_owned();
        block_on(async move { BatchSql::plan_with_lookup(&sql, input_schema, lookup_schema).await })?
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// The optimized logical plan, indented (for EXPLAIN).
    pub fn display_plan(&self) -> String {
        self.plan.display_indent().to_string()
    }

    /// Whether the plan aggregates (used to refuse unwindowed aggregates).
    pub fn aggregates(&self) -> bool {
        let mut found = false;
        let _ = self.plan.apply(|node| {
            if matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Distinct(_)) {
                found = true;
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        found
    }

    fn set_rows(table: &PartitionData, rows: Vec<RecordBatch>) -> Result<(), StreamsError> {
        // Only this task's runs read the table, one at a time, and a run releases it when done.
        let mut held = table
            .try_write()
            .map_err(|_| StreamsError::SqlExecution("internal: the input table is still being read".into()))?;
        *held = rows;
        Ok(())
    }

    /// Runs the query over `rows` (from synchronous code).
    pub fn run(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, StreamsError> {
        self.run_with_lookup(rows, Vec::new())
    }

    /// Runs the query over `rows` and the joined table's `lookup_rows`.
    pub fn run_with_lookup(
        &self,
        rows: Vec<RecordBatch>,
        lookup_rows: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, StreamsError> {
        BatchSql::set_rows(&self.input, rows)?;
        if let Some(lookup) = &self.lookup {
            BatchSql::set_rows(lookup, lookup_rows)?;
        }
        let state = self.session.state();
        let plan = self.plan.clone();
        let result = block_on(async move {
            let physical = state.create_physical_plan(&plan).await?;
            datafusion::physical_plan::collect(physical, state.task_ctx()).await
        });
        BatchSql::set_rows(&self.input, Vec::new())?;
        if let Some(lookup) = &self.lookup {
            BatchSql::set_rows(lookup, Vec::new())?;
        }
        result?.map_err(super::super::execution_error)
    }
}

use datafusion::common::tree_node::TreeNode;

/// Event times in ms of a time column (TIMESTAMP of any unit, BIGINT milliseconds, or text that
/// parses as a timestamp); None where NULL or unparseable.
pub(crate) fn event_times_ms(column: &ArrayRef) -> Result<Vec<Option<i64>>, StreamsError> {
    let target = DataType::Timestamp(TimeUnit::Millisecond, None);
    let cast = match column.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => column.clone(),
        _ => datafusion::arrow::compute::cast(column, &target)
            .map_err(|e| StreamsError::SqlExecution(format!("cannot read the time column as a timestamp: {e}")))?,
    };
    let times = cast.as_primitive::<TimestampMillisecondType>();
    Ok((0..times.len()).map(|i| times.is_valid(i).then(|| times.value(i))).collect())
}

/// Whether a time column of this type can be windowed on.
pub(crate) fn is_time_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..)
            | DataType::Int64
            | DataType::Int32
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

/// Each row of `batch` as one JSON object (arrow-json's encoding: timestamps as ISO-8601 text,
/// NULLs written as `null`).
pub(crate) fn rows_as_json(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, StreamsError> {
    if batch.num_columns() == 0 {
        return Ok(vec![b"{}".to_vec(); batch.num_rows()]);
    }
    let mut writer = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::LineDelimited>(Vec::new());
    writer
        .write_batches(&[batch])
        .and_then(|_| writer.finish())
        .map_err(|e| StreamsError::SqlExecution(format!("cannot write a result row as JSON: {e}")))?;
    let bytes = writer.into_inner();
    let rows: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    if rows.len() != batch.num_rows() {
        return Err(StreamsError::SqlExecution(format!(
            "internal: {} JSON lines for {} result rows",
            rows.len(),
            batch.num_rows()
        )));
    }
    Ok(rows)
}

/// Each value of `column` as text (an output key, a lookup key): strings as they are, other
/// types as Arrow casts them to text; None where NULL.
pub(crate) fn key_texts(column: &ArrayRef) -> Result<Vec<Option<String>>, StreamsError> {
    let text = match column.data_type() {
        DataType::Utf8 => column.clone(),
        _ => datafusion::arrow::compute::cast(column, &DataType::Utf8)
            .map_err(|e| StreamsError::SqlExecution(format!("cannot write a key column as text: {e}")))?,
    };
    let text = text.as_string::<i32>();
    Ok((0..text.len()).map(|i| text.is_valid(i).then(|| text.value(i).to_owned())).collect())
}

/// `batch` restricted to `columns` (by index), renamed to `names`.
pub(crate) fn select_columns(
    batch: &RecordBatch,
    columns: &[usize],
    names: &[String],
) -> Result<RecordBatch, StreamsError> {
    let fields: Vec<Field> = columns
        .iter()
        .zip(names)
        .map(|(&i, name)| {
            let f = batch.schema().field(i).clone();
            Field::new(name.as_str(), f.data_type().clone(), true)
        })
        .collect();
    let arrays: Vec<ArrayRef> = columns.iter().map(|&i| batch.column(i).clone()).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| StreamsError::SqlExecution(format!("internal: cannot project a result batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn batch() -> RecordBatch {
        let schema =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("x", DataType::Int64, true)]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_plan_runs_again_over_new_rows() {
        let sql = BatchSql::plan_blocking(
            "SELECT k, sum(x) AS s FROM __spate_input GROUP BY k ORDER BY k NULLS LAST",
            batch().schema(),
        )
        .unwrap();
        assert!(sql.aggregates());
        for _ in 0..2 {
            let out = sql.run(vec![batch()]).unwrap();
            let rows: Vec<String> =
                out.iter().flat_map(|b| rows_as_json(b).unwrap()).map(|r| String::from_utf8(r).unwrap()).collect();
            assert_eq!(rows, vec![r#"{"k":"a","s":4}"#, r#"{"k":"b","s":2}"#, r#"{"k":null,"s":4}"#]);
        }
    }

    #[test]
    fn unknown_columns_are_plan_errors() {
        match BatchSql::plan_blocking("SELECT nope FROM __spate_input", batch().schema()) {
            Err(StreamsError::SqlPlan { message, .. }) => assert!(message.contains("nope"), "{message}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn event_times_from_several_types() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1_000), None]));
        assert_eq!(event_times_ms(&ints).unwrap(), vec![Some(1_000), None]);
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("1970-01-01T00:00:02Z"), Some("nonsense")]));
        assert_eq!(event_times_ms(&text).unwrap(), vec![Some(2_000), None]);
    }
}
