//! Sliding-window aggregations (Kafka's `SlidingWindowedKStream`, KIP-450): the operator
//! around the sans-IO [`SlidingWindows::aggregate`], with a window store.
//!
//! Each stored window's value is the newest record timestamp in it (8 bytes, big-endian)
//! followed by the aggregate's bytes: the layout of Kafka's timestamped window store
//! (`ValueAndTimestamp`), which the algorithm needs to find the records before and after a
//! new one. Querying the store directly therefore needs a value serde that skips those 8
//! bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::aggregate::{add_window_stores, push_flusher, reducing, Held, PendingForward};
use super::{Data, EmitStrategy, KGroupedStream, KTable, Materialized};
use crate::processor::{Change, ProcessFn, Record, TaskContext};
use crate::serdes::{I64Serde, SerdeRef, TimeWindowedSerde};
use crate::store::{lock, LoggedKv, LoggedWindow};
use crate::topology::processor_node;
use crate::window::{LateDecision, SlidingWindowAggregate, SlidingWindows, StreamTime, TimeWindow, Windowed};
use crate::StreamsError;

/// Bytes of the newest-record timestamp in front of each stored aggregate.
const MAX_TIMESTAMP_BYTES: usize = 8;

/// Key of the emit-on-close progress in the operator's emit-time store.
const EMIT_TIME_KEY: &[u8] = b"emitted-through-ms";

fn encode<A>(vs: &SerdeRef<A>, aggregate: &A, max_timestamp_ms: i64) -> Result<Vec<u8>, StreamsError> {
    let mut out = max_timestamp_ms.to_be_bytes().to_vec();
    vs.serialize_into(aggregate, &mut out)?;
    Ok(out)
}

fn decode<A>(vs: &SerdeRef<A>, bytes: &[u8]) -> Result<(A, i64), StreamsError> {
    let Some((stamp, aggregate)) = bytes.split_first_chunk::<MAX_TIMESTAMP_BYTES>() else {
        return Err(StreamsError::deserialize(
            "sliding-window aggregate",
            format!("{} bytes, fewer than the {MAX_TIMESTAMP_BYTES}-byte timestamp", bytes.len()),
        ));
    };
    Ok((vs.deserialize(aggregate)?, i64::from_be_bytes(*stamp)))
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    /// Aggregates per key and sliding window (Kafka's `windowedBy(SlidingWindows)`): windows
    /// of a fixed time difference that records define, both ends inclusive.
    pub fn windowed_by_sliding(&self, windows: SlidingWindows) -> SlidingWindowedKStream<K, V> {
        SlidingWindowedKStream {
            grouped: KGroupedStream::new(self.stream.clone(), self.key.clone(), self.value.clone(), self.name.clone()),
            windows,
            emit: EmitStrategy::OnWindowUpdate,
        }
    }
}

/// A stream grouped by key and windowed by sliding windows (Kafka's `SlidingWindowedKStream`).
/// Its tables are keyed by `Windowed<K, TimeWindow>` whose `end_ms` is `start_ms + time
/// difference`, inclusive (as Kafka's), and written with a
/// [`TimeWindowedSerde`] of the time difference.
pub struct SlidingWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: SlidingWindows,
    emit: EmitStrategy,
}

impl<K: Data, V: Data> SlidingWindowedKStream<K, V> {
    /// With [`EmitStrategy::OnWindowClose`], each window once, when `end + grace < stream
    /// time`; where it got to is kept in a store with a changelog.
    pub fn emit_strategy(mut self, emit: EmitStrategy) -> Self {
        self.emit = emit;
        self
    }

    pub fn count(&self, materialized: Materialized<i64>) -> Result<KTable<Windowed<K, TimeWindow>, i64>, StreamsError> {
        let materialized = materialized.or_value_serde(Arc::new(I64Serde));
        self.aggregate(|| 0i64, |_, _, n| n + 1, materialized)
    }

    pub fn reduce(
        &self,
        reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> Result<KTable<Windowed<K, TimeWindow>, V>, StreamsError> {
        self.aggregate_opt(reducing(reducer), materialized.or_value_serde(self.grouped.value.clone()))
    }

    pub fn aggregate<A: Data>(
        &self,
        initializer: impl Fn() -> A + Send + Sync + 'static,
        aggregator: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> Result<KTable<Windowed<K, TimeWindow>, A>, StreamsError> {
        self.aggregate_opt(move |k, v, agg| aggregator(k, v, agg.unwrap_or_else(&initializer)), materialized)
    }

    /// `f(key, value, aggregate)` with `None` for an empty window.
    fn aggregate_opt<A: Data>(
        &self,
        f: impl Fn(&K, V, Option<A>) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> Result<KTable<Windowed<K, TimeWindow>, A>, StreamsError> {
        let value_serde = materialized.value.clone().ok_or_else(|| {
            StreamsError::Topology(
                "a sliding-window aggregate needs the aggregate's serde: Materialized::with_value_serde".into(),
            )
        })?;
        let windows = self.windows;
        let retention_ms = windows.retention_ms();
        let input = self.grouped.input(materialized.name.as_ref());
        let builder = input.builder.clone();
        let mut b = builder.lock();
        let (store, emit_store, stores) = add_window_stores(&mut b, &materialized, retention_ms, self.emit)?;
        let name = b.name("KSTREAM-SLIDINGWINDOWAGGREGATE");
        let (key_serde, vs) = (self.grouped.key.clone(), value_serde.clone());
        let f = Arc::new(f);
        let emit = self.emit;
        let build_store = store.clone();
        let node = processor_node(&mut b, name, vec![input.node], stores, move |tb, ds| {
            let ws = tb.window_store(&build_store)?;
            let emit_kv = if emit == EmitStrategy::OnWindowClose { Some(tb.kv_store(&emit_store)?) } else { None };
            let state: Held<Windowed<K, TimeWindow>, A> =
                Arc::new(Mutex::new((PendingForward::new(tb.cache_max_bytes), ds)));
            if emit == EmitStrategy::OnWindowUpdate {
                push_flusher(tb, &state);
            }
            let (key_serde, vs, f) = (key_serde.clone(), vs.clone(), f.clone());
            let mut stream_time = StreamTime::new();
            // Windows ending at or before this were emitted (emit-on-close); loaded lazily.
            let mut emitted_through_ms: Option<i64> = None;
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                let key_bytes = key_serde.serialize(&r.key)?;
                let (from_ms, to_ms) = windows.fetch_range_ms(r.timestamp_ms);
                let existing = lock(&ws)
                    .fetch_range(&key_bytes, from_ms, to_ms)?
                    .into_iter()
                    .map(|(start_ms, bytes)| {
                        let (aggregate, max_timestamp_ms) = decode(&vs, &bytes)?;
                        let window = TimeWindow { start_ms, end_ms: start_ms + windows.time_difference_ms() };
                        Ok(SlidingWindowAggregate { window, aggregate: Some(aggregate), max_timestamp_ms })
                    })
                    .collect::<Result<Vec<_>, StreamsError>>()?;
                let update = match windows.aggregate(
                    r.timestamp_ms,
                    &existing,
                    &mut stream_time,
                    || None,
                    |agg: &Option<A>| Some(f(&r.key, r.value.clone(), agg.clone())),
                ) {
                    Ok(update) => update,
                    Err(StreamsError::InvalidTimestamp { timestamp_ms, .. }) => {
                        // Only timestamps within `2 * diff` of i64::MAX get here (sources
                        // refuse negative ones): no window can hold them.
                        tracing::warn!(timestamp_ms, "skipping a record whose timestamp no sliding window can hold");
                        ctx.counters.dropped_other += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                if let Some(emit_kv) = &emit_kv {
                    // Before this record's writes: they never touch a closed window, and the
                    // closed windows are read before the writes can move the store's
                    // retention past them.
                    emit_closed(
                        ctx,
                        &windows,
                        stream_time.ms(),
                        &mut emitted_through_ms,
                        emit_kv,
                        &ws,
                        &key_serde,
                        &vs,
                        &state,
                    )?;
                }
                if update.decision != LateDecision::Accept {
                    ctx.drop_late(Some(bytes::Bytes::from(key_bytes)), None, r.timestamp_ms);
                    return Ok(());
                }
                // What each window held before this record, for the updates' old values.
                let mut current: HashMap<i64, Option<A>> =
                    existing.into_iter().map(|w| (w.window.start_ms, w.aggregate)).collect();
                let mut s = lock(&ws);
                for put in update.puts {
                    let SlidingWindowAggregate { window, aggregate: Some(aggregate), max_timestamp_ms } = put else {
                        // Every put adds the record or copies a stored (non-empty) window.
                        continue;
                    };
                    let bytes = encode(&vs, &aggregate, max_timestamp_ms)?;
                    let size = bytes.len();
                    s.put(&mut ctx.out, key_bytes.clone(), window.start_ms, Some(bytes), max_timestamp_ms)?;
                    if emit == EmitStrategy::OnWindowUpdate {
                        let old = current.insert(window.start_ms, Some(aggregate.clone())).flatten();
                        let mut g = lock(&state);
                        let (pending, ds) = &mut *g;
                        let mut wk = key_bytes.clone();
                        wk.extend_from_slice(&window.start_ms.to_be_bytes());
                        let key = Windowed { key: r.key.clone(), window };
                        let change = Change { new: Some(aggregate), old };
                        pending.push(ctx, ds, &wk, key, change, max_timestamp_ms, size)?;
                    }
                }
                Ok(())
            }) as ProcessFn<K, V>)
        });
        let diff_ms = windows.time_difference_ms();
        // Sliding-window ends are inclusive: a window closes when `end + grace < stream time`.
        super::suppress::register_window_close::<Windowed<K, TimeWindow>>(&mut b, node, windows.grace_ms(), |k| {
            k.window.end_ms.saturating_add(1)
        });
        drop(b);
        let windowed_key: SerdeRef<Windowed<K, TimeWindow>> =
            Arc::new(TimeWindowedSerde::new(self.grouped.key.clone(), diff_ms));
        Ok(KTable::new(builder, node, None, windowed_key, value_serde))
    }
}

/// Emits every window that closed (`end < stream time - grace`) since the last emission, in
/// (start, key) order, with its newest record's timestamp, and records how far it got.
#[expect(clippy::too_many_arguments, reason = "one call site; the pieces are the operator's state")]
fn emit_closed<K: Data, A: Data>(
    ctx: &mut TaskContext,
    windows: &SlidingWindows,
    stream_time_ms: i64,
    emitted_through_ms: &mut Option<i64>,
    emit_kv: &Mutex<LoggedKv>,
    ws: &Mutex<LoggedWindow>,
    key_serde: &SerdeRef<K>,
    vs: &SerdeRef<A>,
    state: &Held<Windowed<K, TimeWindow>, A>,
) -> Result<(), StreamsError> {
    if stream_time_ms < 0 {
        return Ok(());
    }
    let through = match emitted_through_ms {
        Some(t) => *t,
        None => {
            let stored = lock(emit_kv).get(EMIT_TIME_KEY)?;
            let t = match stored.as_deref().map(<[u8; 8]>::try_from) {
                Some(Ok(b)) => i64::from_be_bytes(b),
                _ => i64::MIN,
            };
            *emitted_through_ms = Some(t);
            t
        }
    };
    // The largest closed window end.
    let closed_through = stream_time_ms.saturating_sub(windows.grace_ms()).saturating_sub(1);
    if closed_through <= through {
        return Ok(());
    }
    let diff = windows.time_difference_ms();
    let from_start = if through == i64::MIN { i64::MIN } else { through.saturating_sub(diff).saturating_add(1) };
    let to_start = closed_through.saturating_sub(diff);
    let closed = lock(ws).fetch_all(from_start, to_start)?;
    let mut g = lock(state);
    let (_, ds) = &mut *g;
    for (key_bytes, start_ms, bytes) in closed {
        let window = TimeWindow { start_ms, end_ms: start_ms.saturating_add(diff) };
        if window.end_ms <= through || !windows.is_closed(window, stream_time_ms) {
            continue;
        }
        let key = key_serde.deserialize(&key_bytes)?;
        let (value, max_timestamp_ms) = decode(vs, &bytes)?;
        let change = Change { new: Some(value), old: None };
        ds.forward(ctx, Record::new(Windowed { key, window }, change, max_timestamp_ms))?;
    }
    drop(g);
    *emitted_through_ms = Some(closed_through);
    lock(emit_kv).put(&mut ctx.out, EMIT_TIME_KEY.to_vec(), Some(closed_through.to_be_bytes().to_vec()), stream_time_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_carry_the_newest_timestamp_before_the_aggregate() {
        let vs: SerdeRef<i64> = Arc::new(I64Serde);
        let bytes = encode(&vs, &7, 42).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[..8], &42i64.to_be_bytes());
        assert_eq!(decode(&vs, &bytes).unwrap(), (7, 42));
        // A value too short for its timestamp (e.g. a store written by another operator) is
        // an error, not a panic.
        let err = decode(&vs, &[0; 7]).unwrap_err();
        assert!(err.to_string().contains("sliding-window aggregate"), "{err}");
    }
}
