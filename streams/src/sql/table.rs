//! `TopicTable`: a topic as a DataFusion table.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use spate_client::admin::OffsetSpec;
use spate_client::TopicPartition;

use super::catalog::ClusterHandle;
use super::format::RecordDecoder;
use super::options::TableOptions;
use super::pushdown::{bounds_fetch, FetchBounds};
use super::scan::{PartitionRange, TopicScanExec};
use crate::StreamsError;

/// A topic read as a table: the value columns of its format, then the metadata columns.
#[derive(Debug)]
pub(crate) struct TopicTable {
    options: TableOptions,
    schema: SchemaRef,
    cluster: Arc<ClusterHandle>,
}

impl TopicTable {
    pub(crate) fn new(options: TableOptions, schema: SchemaRef, cluster: Arc<ClusterHandle>) -> Self {
        TopicTable { options, schema, cluster }
    }

    pub(crate) fn options(&self) -> &TableOptions {
        &self.options
    }

    /// The offsets of each partition the filters may need, as of now (the snapshot).
    async fn ranges(&self, bounds: &FetchBounds) -> Result<Vec<PartitionRange>, StreamsError> {
        let admin = self.cluster.admin().await?;
        let topic = self.options.topic.as_str();
        let partitions: Vec<i32> = admin
            .describe_topics(&[topic])
            .await
            .map_err(|e| self.cluster.client_error(e, &format!("describing topic {topic}")))?
            .into_iter()
            .flat_map(|t| t.partitions.into_iter().map(|p| p.partition))
            .filter(|&p| bounds.keeps_partition(p))
            .collect();
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let lookup = |spec: OffsetSpec| {
            let wanted: Vec<(TopicPartition, OffsetSpec)> = partitions
                .iter()
                .map(|&partition| (TopicPartition { topic: topic.to_owned(), partition }, spec))
                .collect();
            let admin = admin.clone();
            async move { admin.list_offsets(&wanted).await }
        };
        let context = || format!("listing offsets of topic {topic}");
        let earliest = lookup(OffsetSpec::Earliest).await.map_err(|e| self.cluster.client_error(e, &context()))?;
        let latest = lookup(OffsetSpec::Latest).await.map_err(|e| self.cluster.client_error(e, &context()))?;
        let by_time = match bounds.timestamp_start_ms {
            Some(ms) => {
                Some(lookup(OffsetSpec::Timestamp(ms)).await.map_err(|e| self.cluster.client_error(e, &context()))?)
            }
            None => None,
        };
        let mut ranges = Vec::new();
        for &partition in &partitions {
            let tp = TopicPartition { topic: topic.to_owned(), partition };
            let (Some(start), Some(end)) = (earliest.get(&tp), latest.get(&tp)) else { continue };
            let timestamp_offset = by_time.as_ref().map(|m| m.get(&tp).map_or(-1, |info| info.offset));
            if let Some((start, end)) = bounds.offset_range(start.offset, end.offset, timestamp_offset) {
                ranges.push(PartitionRange { partition, start, end });
            }
        }
        Ok(ranges)
    }
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Inexact: the filter narrows what is fetched, and DataFusion still applies it to the rows.
        Ok(filters
            .iter()
            .map(|f| {
                if bounds_fetch(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let bounds = FetchBounds::from_filters(filters);
        let ranges = self.ranges(&bounds).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let decoder = RecordDecoder::new(&self.options, self.schema.clone(), projection.map(Vec::as_slice))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(TopicScanExec::new(
            self.options.topic.clone(),
            self.cluster.settings().clone(),
            decoder,
            ranges,
            state.config().target_partitions(),
            limit,
        )))
    }
}
