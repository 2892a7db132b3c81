//! `TopicScanExec`: reads a snapshot of a topic's partitions into Arrow batches.
//!
//! The offsets to read are fixed when the plan is made (each partition up to its high watermark
//! then, narrowed by the pushed-down filters). Each DataFusion output partition gets some topic
//! partitions and its own `Consumer`, assigned manually; it fetches large responses, reads the
//! fetched record batches in place (no per-record `ConsumerRecord`: keys, values and headers are
//! borrowed from the fetch response straight into the Arrow builders) in chunks of about
//! [`CHUNK_RECORDS`], and stops each partition at its end offset by position (not by the last
//! record's offset: compaction and transaction markers leave gaps).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use spate_client::consumer::FetchedBatch;
use spate_client::consumer::{AutoOffsetReset, ConsumerConfig};
use spate_client::protocol::record::BatchRecords;
use spate_client::{Consumer, TopicPartition};
use tokio::sync::mpsc;

use super::format::{RawHeaders, RawRecord, RecordDecoder};
use crate::StreamsError;

/// Records decoded into one batch: big enough that per-batch costs vanish, small enough that a
/// batch of wide records stays a few MiB.
pub(crate) const CHUNK_RECORDS: usize = 8192;
/// `max.partition.fetch.bytes` of scan consumers: few, large fetches.
const SCAN_PARTITION_FETCH_BYTES: i32 = 16 * 1024 * 1024;
/// `fetch.max.bytes` of scan consumers.
const SCAN_FETCH_MAX_BYTES: i32 = 32 * 1024 * 1024;
/// A partition that makes no progress for this long fails the query rather than hanging it.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How scans reach the cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    pub bootstrap_servers: Vec<String>,
    pub client_id: String,
}

impl ClientSettings {
    pub(crate) fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            bootstrap_servers: self.bootstrap_servers.clone(),
            client_id: self.client_id.clone(),
            fetch_max_wait_ms: 100,
            fetch_max_bytes: SCAN_FETCH_MAX_BYTES,
            max_partition_fetch_bytes: SCAN_PARTITION_FETCH_BYTES,
            max_poll_records: CHUNK_RECORDS,
            auto_offset_reset: AutoOffsetReset::Earliest,
            enable_auto_commit: false,
            group_id: None,
            ..ConsumerConfig::default()
        }
    }
}

/// The offsets `[start, end)` of one partition to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// Reads `[start, end)` ranges of a topic's partitions with one consumer, in chunks.
pub(crate) struct RangeReader {
    topic: String,
    consumer: Option<Consumer>,
    /// End offsets of the partitions not yet read to their end.
    ends: BTreeMap<i32, i64>,
    last_progress: tokio::time::Instant,
}

impl RangeReader {
    pub(crate) async fn new(
        settings: &ClientSettings,
        topic: &str,
        ranges: &[PartitionRange],
    ) -> Result<RangeReader, StreamsError> {
        let ranges: Vec<PartitionRange> = ranges.iter().copied().filter(|r| r.start < r.end).collect();
        let mut reader = RangeReader {
            topic: topic.to_owned(),
            consumer: None,
            ends: BTreeMap::new(),
            last_progress: tokio::time::Instant::now(),
        };
        if ranges.is_empty() {
            return Ok(reader);
        }
        let consumer = Consumer::new(settings.consumer_config()).await?;
        consumer.assign(ranges.iter().map(|r| reader.tp(r.partition)).collect()).await?;
        for r in &ranges {
            consumer.seek(&reader.tp(r.partition), r.start).await?;
            reader.ends.insert(r.partition, r.end);
        }
        reader.consumer = Some(consumer);
        Ok(reader)
    }

    fn tp(&self, partition: i32) -> TopicPartition {
        TopicPartition { topic: self.topic.clone(), partition }
    }

    /// The next fetched batches within the ranges (whole batches holding at least
    /// `CHUNK_RECORDS` records, when there are that many), or `None` when every partition is at
    /// its end offset.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Chunk>, StreamsError> {
        let Some(consumer) = &self.consumer else { return Ok(None) };
        let mut chunk = Chunk { batches: Vec::new() };
        let mut records = 0;
        while !self.ends.is_empty() && records < CHUNK_RECORDS {
            let batches = consumer.poll_batches(Duration::from_millis(500)).await?;
            if !batches.is_empty() {
                self.last_progress = tokio::time::Instant::now();
            }
            for batch in batches {
                let Some(&end) = self.ends.get(&batch.partition) else { continue };
                if batch.from_offset >= end {
                    continue;
                }
                records += batch.records_count();
                let body = batch.records().map_err(|e| batch.error(e))?;
                chunk.batches.push(ChunkBatch { body, batch, end });
            }
            let mut done = Vec::new();
            for (&partition, &end) in &self.ends {
                // The position passes control batches and compacted gaps, which the last
                // record's offset does not.
                if consumer.position(&self.tp(partition)).await? >= end {
                    done.push(partition);
                }
            }
            for partition in done {
                self.ends.remove(&partition);
                consumer.pause(&[self.tp(partition)]).await?;
            }
            if !self.ends.is_empty() && self.last_progress.elapsed() > STALL_TIMEOUT {
                return Err(StreamsError::SqlExecution(format!(
                    "reading topic {} made no progress for {}s (partitions and end offsets not reached: {:?})",
                    self.topic,
                    STALL_TIMEOUT.as_secs(),
                    self.ends
                )));
            }
        }
        Ok(if chunk.batches.is_empty() && self.ends.is_empty() { None } else { Some(chunk) })
    }
}

/// Fetched batches of one [`RangeReader::next_chunk`], each to be read up to its partition's
/// end offset.
pub(crate) struct Chunk {
    batches: Vec<ChunkBatch>,
}

struct ChunkBatch {
    /// The records, inflated once if the batch is compressed.
    body: BatchRecords,
    batch: FetchedBatch,
    /// The partition's end offset (exclusive).
    end: i64,
}

impl Chunk {
    /// The chunk's records in `[from_offset, end)` of each batch, borrowed from the batches.
    pub(crate) fn raw_records(&self) -> Result<Vec<RawRecord<'_>>, StreamsError> {
        let mut out = Vec::with_capacity(self.batches.iter().map(|b| b.batch.records_count()).sum());
        for b in &self.batches {
            for r in b.body.iter() {
                let r = r.map_err(|e| b.batch.error(e))?;
                if r.offset < b.batch.from_offset {
                    continue;
                }
                if r.offset >= b.end {
                    break;
                }
                out.push(RawRecord {
                    key: r.key,
                    value: r.value,
                    partition: b.batch.partition,
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    headers: RawHeaders::Wire(r.headers),
                });
            }
        }
        Ok(out)
    }
}

/// Scans a snapshot of a topic (see the module docs).
#[derive(Debug)]
pub(crate) struct TopicScanExec {
    topic: String,
    settings: ClientSettings,
    decoder: Arc<RecordDecoder>,
    /// Topic partitions per output partition.
    groups: Vec<Vec<PartitionRange>>,
    limit: Option<usize>,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

/// The metric (in `EXPLAIN ANALYZE` and [`super::QueryResult::malformed_records`]) counting
/// records whose value did not decode.
pub(crate) const MALFORMED_METRIC: &str = "malformed_records";

impl TopicScanExec {
    pub(crate) fn new(
        topic: String,
        settings: ClientSettings,
        decoder: RecordDecoder,
        ranges: Vec<PartitionRange>,
        target_partitions: usize,
        limit: Option<usize>,
    ) -> Self {
        let groups = split_ranges(ranges, target_partitions);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(decoder.output_schema()),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        TopicScanExec {
            topic,
            settings,
            decoder: Arc::new(decoder),
            groups,
            limit,
            metrics: ExecutionPlanMetricsSet::new(),
            properties: Arc::new(properties),
        }
    }
}

/// Spreads partition ranges over at most `target` groups, largest first onto the least loaded
/// group; always at least one group (maybe empty) so the plan has a partition to execute.
fn split_ranges(mut ranges: Vec<PartitionRange>, target: usize) -> Vec<Vec<PartitionRange>> {
    let n = ranges.len().min(target.max(1)).max(1);
    ranges.sort_by_key(|r| std::cmp::Reverse(r.end - r.start));
    let mut groups: Vec<(i64, Vec<PartitionRange>)> = vec![(0, Vec::new()); n];
    for r in ranges {
        let lightest = groups.iter_mut().min_by_key(|(load, _)| *load).expect("n >= 1");
        lightest.0 += r.end - r.start;
        lightest.1.push(r);
    }
    groups
        .into_iter()
        .map(|(_, mut g)| {
            g.sort_by_key(|r| r.partition);
            g
        })
        .collect()
}

impl DisplayAs for TopicScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> =
            self.groups.iter().flatten().map(|r| format!("{}:[{}..{})", r.partition, r.start, r.end)).collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "TopicScanExec: topic={}, partitions=[{}]", self.topic, ranges.join(", "))?;
                let schema = self.decoder.output_schema();
                let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                write!(f, ", projection=[{}]", columns.join(", "))?;
                if let Some(limit) = self.limit {
                    write!(f, ", limit={limit}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => write!(f, "topic={}", self.topic),
        }
    }
}

impl ExecutionPlan for TopicScanExec {
    fn name(&self) -> &str {
        "TopicScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("TopicScanExec has no children".to_owned()))
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let ranges = self
            .groups
            .get(partition)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("TopicScanExec has no partition {partition}")))?;
        let malformed = MetricBuilder::new(&self.metrics).counter(MALFORMED_METRIC, partition);
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let (tx, rx) = mpsc::channel::<DfResult<RecordBatch>>(2);
        let task = ScanTask {
            topic: self.topic.clone(),
            settings: self.settings.clone(),
            decoder: self.decoder.clone(),
            ranges,
            limit: self.limit,
            malformed,
            output_rows,
        };
        let handle = SpawnedTask::spawn(async move {
            let error_tx = tx.clone();
            if let Err(e) = task.run(tx).await {
                let _ = error_tx.send(Err(DataFusionError::External(Box::new(e)))).await;
            }
        });
        // The task lives as long as the stream: dropping the stream (a LIMIT above satisfied, the
        // query cancelled) aborts the fetching.
        let stream = futures_util::stream::unfold((rx, handle), |(mut rx, handle)| async move {
            rx.recv().await.map(|batch| (batch, (rx, handle)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.decoder.output_schema(), stream)))
    }
}

struct ScanTask {
    topic: String,
    settings: ClientSettings,
    decoder: Arc<RecordDecoder>,
    ranges: Vec<PartitionRange>,
    limit: Option<usize>,
    malformed: Count,
    output_rows: Count,
}

impl ScanTask {
    async fn run(self, tx: mpsc::Sender<DfResult<RecordBatch>>) -> Result<(), StreamsError> {
        let mut rows_left = self.limit.unwrap_or(usize::MAX);
        if rows_left == 0 {
            return Ok(());
        }
        let mut reader = RangeReader::new(&self.settings, &self.topic, &self.ranges).await?;
        while let Some(chunk) = reader.next_chunk().await? {
            let raws = chunk.raw_records()?;
            if raws.is_empty() {
                continue;
            }
            let (mut batch, malformed) = self.decoder.decode(&raws)?;
            drop(raws);
            drop(chunk);
            self.malformed.add(malformed as usize);
            if batch.num_rows() > rows_left {
                batch = batch.slice(0, rows_left);
            }
            rows_left -= batch.num_rows();
            self.output_rows.add(batch.num_rows());
            // A closed channel: the stream was dropped, nobody wants more.
            if tx.send(Ok(batch)).await.is_err() || rows_left == 0 {
                return Ok(());
            }
        }
        Ok(())
    }
}
