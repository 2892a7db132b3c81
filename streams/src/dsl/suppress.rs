//! `KTable::suppress` (KIP-328): a table's updates held back per key in a
//! [`SuppressBuffer`] and forwarded when they come due: once a window closes
//! ([`Suppressed::until_window_closes`], one final result per window) or once a key's first
//! buffered update is a time limit old in stream time ([`Suppressed::until_time_limit`]).
//!
//! `until_window_closes` needs to know how the table's windows close. Kafka walks up the
//! graph from the suppression to the windowed aggregation and reads its grace
//! (`findAndVerifyWindowGrace`); here every windowed aggregation node registers a
//! [`WindowClose`] in the topology builder and `suppress` walks up single-parent table
//! operators (filter, map_values) to find it.

use std::any::{Any, TypeId};
use std::sync::Arc;

use super::{Data, KTable};
use crate::processor::{Change, Downstream, ProcessFn, Record, TaskContext};
use crate::suppress::{SuppressBuffer, Suppressed};
use crate::topology::{processor_node, NodeId, TopologyBuilder};
use crate::StreamsError;

/// The buffer time of a windowed key, given as `&dyn Any` (the key type is checked when the
/// suppression is built); `None` if it is not the registered key type.
type BufferTimeFn = Arc<dyn Fn(&dyn Any) -> Option<i64> + Send + Sync>;

/// How the windows of a windowed aggregation's output table close.
#[derive(Clone)]
pub(crate) struct WindowClose {
    /// The type of the table's key (`Windowed<K, W>`).
    key_type: TypeId,
    /// How long after its buffer time a window closes: the grace, plus the inactivity gap for
    /// sessions.
    wait_ms: i64,
    /// The buffer time of a key: the window end for exclusive ends (time windows), the end
    /// plus one for inclusive ends (sliding windows, sessions), so that a window comes due
    /// exactly when the aggregation stops updating it.
    buffer_time_ms: BufferTimeFn,
}

/// Registers `node`, whose output table has keys `KW`, as a windowed aggregation whose window
/// of a key closes `wait_ms` after `buffer_time_ms(key)` in stream time.
pub(crate) fn register_window_close<KW: 'static>(
    b: &mut TopologyBuilder,
    node: NodeId,
    wait_ms: i64,
    buffer_time_ms: impl Fn(&KW) -> i64 + Send + Sync + 'static,
) {
    let buffer_time_ms: BufferTimeFn = Arc::new(move |key| key.downcast_ref::<KW>().map(&buffer_time_ms));
    b.window_closes.insert(node, WindowClose { key_type: TypeId::of::<KW>(), wait_ms, buffer_time_ms });
}

/// The windowed aggregation above `node`, through single-parent operators.
fn find_window_close(b: &TopologyBuilder, mut node: NodeId, key_type: TypeId) -> Result<WindowClose, StreamsError> {
    let not_windowed = || StreamsError::InvalidSuppression {
        reason: "until_window_closes must follow a windowed aggregation (windowed_by, windowed_by_sliding, \
                 windowed_by_session), possibly through filter or map_values"
            .to_string(),
    };
    loop {
        if let Some(close) = b.window_closes.get(&node) {
            if close.key_type != key_type {
                return Err(not_windowed());
            }
            return Ok(close.clone());
        }
        match b.nodes.get(node).map(|def| def.parents.as_slice()) {
            Some([parent]) => node = *parent,
            _ => return Err(not_windowed()),
        }
    }
}

impl<K: Data, V: Data> KTable<K, V> {
    /// Holds back this table's updates and forwards only some (Kafka's `KTable.suppress`):
    /// with [`Suppressed::until_window_closes`] the final result of each window once it
    /// closes (the table must come from a windowed aggregation, possibly through `filter` or
    /// `map_values`), with [`Suppressed::until_time_limit`] a key's latest value once its
    /// first held update is the time limit old in stream time. Updates are buffered by the
    /// serialized key, so each window of a key is its own entry. Forwarded updates carry no
    /// old value.
    ///
    /// The buffer lives in memory in each task. Kafka backs it with a changelog topic; we do
    /// not yet, so a crash or a task moving to another instance loses what is buffered: the
    /// held-back updates, and for `until_window_closes` the final results of the windows that
    /// had not closed yet (they are never emitted).
    ///
    /// For sliding windows and sessions, whose window ends are inclusive, a window comes due
    /// when the aggregation closes it (`end + grace < stream time`); Kafka's suppression uses
    /// `end + grace <= stream time` for them too, one millisecond before the window closes, so
    /// a record at that millisecond makes Kafka emit a second "final" result.
    ///
    /// A buffer over its limits with `shut_down_when_full` fails the task with
    /// [`StreamsError::SuppressionBufferFull`], after forwarding what was already due.
    pub fn suppress(&self, suppressed: Suppressed) -> Result<KTable<K, V>, StreamsError> {
        let mut b = self.builder.lock();
        let window = if suppressed.is_until_window_closes() {
            Some(find_window_close(&b, self.node, TypeId::of::<K>())?)
        } else {
            None
        };
        let name = match suppressed.name() {
            Some(name) => name.to_string(),
            None => b.name("KTABLE-SUPPRESS"),
        };
        let suppressed = suppressed.with_name(name.clone());
        let wait_ms = window.as_ref().map(|w| w.wait_ms);
        // Refuse a bad definition when the topology is built, not in every task.
        SuppressBuffer::new(suppressed.clone(), wait_ms)?;
        let (key_serde, value_serde) = (self.key.clone(), self.value.clone());
        let node = processor_node(
            &mut b,
            name.clone(),
            vec![self.node],
            Vec::new(),
            move |_, mut ds: Downstream<K, Change<V>>| {
                let mut buffer = SuppressBuffer::new(suppressed.clone(), wait_ms)?;
                let buffer_time_ms = window.as_ref().map(|w| w.buffer_time_ms.clone());
                let (key_serde, value_serde, name) = (key_serde.clone(), value_serde.clone(), name.clone());
                let mut due = Vec::new();
                Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| {
                    let window_end_ms = match &buffer_time_ms {
                        None => None,
                        Some(f) => Some(f(&r.key as &dyn Any).ok_or_else(|| StreamsError::InvalidSuppression {
                            reason: format!("{name}: got a key that is not the windowed aggregation's"),
                        })?),
                    };
                    let key_bytes = key_serde.serialize(&r.key)?;
                    let value_bytes = r.value.new.as_ref().map(|v| value_serde.serialize(v)).transpose()?;
                    let result = buffer.process(key_bytes, value_bytes, r.timestamp_ms, window_end_ms, &mut due);
                    // Forward what came due even when the buffer is full, as Kafka does
                    // before it throws.
                    for record in due.drain(..) {
                        let key = key_serde.deserialize(&record.key)?;
                        let new = record.value.map(|v| value_serde.deserialize(&v)).transpose()?;
                        ds.forward(ctx, Record::new(key, Change { new, old: None }, record.timestamp_ms))?;
                    }
                    result
                }) as ProcessFn<K, Change<V>>)
            },
        );
        drop(b);
        Ok(KTable::new(self.builder.clone(), node, None, self.key.clone(), self.value.clone()))
    }
}
