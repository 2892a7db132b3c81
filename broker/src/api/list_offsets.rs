//! ListOffsets (key 2): earliest (-2), latest (-1), max timestamp (-3, KIP-734) and by timestamp;
//! with `isolation_level` read_committed, latest is the last stable offset.

use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use spate_client::protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use spate_client::protocol::ErrorCode;
use spate_client::ProtocolError;

use super::{decode, leader_partition, Reply, RequestContext};
use crate::broker::Broker;
use crate::partition::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// Kafka's `isolation_level` value for `read_committed`.
const READ_COMMITTED: i8 = 1;

/// `read_committed` lookups see the log below the last stable offset, others below the high
/// watermark (KIP-98).
fn lookup(p: &Partition, timestamp: i64, isolation_level: i8) -> Result<(i64, i64), ErrorCode> {
    let offsets = p.offsets();
    let visible_end = if isolation_level == READ_COMMITTED { p.last_stable_offset() } else { offsets.high_watermark };
    let below_hw = |found: Option<(i64, i64)>| match found {
        Some((offset, ts)) if offset < visible_end => (offset, ts),
        _ => (-1, -1),
    };
    match timestamp {
        EARLIEST => Ok((offsets.log_start_offset, -1)),
        LATEST => Ok((visible_end, -1)),
        MAX_TIMESTAMP => p.max_timestamp_offset().map(below_hw).map_err(|e| e.code()),
        ts if ts >= 0 => p.offset_for_timestamp(ts).map(below_hw).map_err(|e| e.code()),
        _ => Err(ErrorCode::INVALID_REQUEST),
    }
}

pub(super) fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: ListOffsetsRequest = decode("ListOffsets request", ctx, body)?;
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
                    let found = leader_partition(broker, t.name.as_str(), p.partition_index).and_then(|part| {
                        lookup(&part, p.timestamp, request.isolation_level).map(|(o, ts)| (o, ts, part.leader_epoch()))
                    });
                    match found {
                        // leader_epoch exists from v4 on; older versions must leave it unset.
                        Ok((offset, ts, epoch)) if ctx.version >= 4 => {
                            r.with_offset(offset).with_timestamp(ts).with_leader_epoch(epoch)
                        }
                        Ok((offset, ts, _)) => r.with_offset(offset).with_timestamp(ts),
                        Err(code) => r.with_error_code(code.0).with_offset(-1).with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    Ok(Reply::Now(ctx.respond(&ListOffsetsResponse::default().with_topics(topics))))
}
