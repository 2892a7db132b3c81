//! Grouped and windowed aggregations: `count`, `reduce`, `aggregate` over a key, over time
//! windows (tumbling, hopping) and over sessions.
//!
//! Results are KTables (`Record<K, Change<A>>`). With a record cache (a positive
//! `statestore.cache.max.bytes`) updates of one key are held back and only the latest is
//! forwarded at commit or when the cache is full, as Kafka's caching stores do; with 0 every
//! update is forwarded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Data, Grouped, KStream, KTable, Materialized};
use crate::processor::{Change, Downstream, ProcessFn, Record, TaskContext};
use crate::serdes::{I64Serde, SerdeRef, SessionWindowedSerde, TimeWindowedSerde};
use crate::state::default_segment_interval_ms;
use crate::store::{lock, StoreSpec, StoreType};
use crate::topology::{processor_node, TaskBuild, TopologyBuilder};
use crate::window::{LateDecision, SessionWindow, SessionWindows, StreamTime, TimeWindow, TimeWindows, Windowed};
use crate::StreamsError;

/// `reducer(aggregate, value)` as an aggregator: the first value is the first aggregate.
pub(crate) fn reducing<K, V>(
    reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
) -> impl Fn(&K, V, Option<V>) -> V + Send + Sync + 'static {
    move |_, v, agg| match agg {
        None => v,
        Some(a) => reducer(a, v),
    }
}

/// Declares a windowed aggregation's window store (named after `materialized`, or generated)
/// and, for emit-on-window-close, its `<store>-emit-time` store; returns the window store's
/// name, the emit-time store's name and every store the node uses.
pub(crate) fn add_window_stores<A>(
    b: &mut TopologyBuilder,
    materialized: &Materialized<A>,
    retention_ms: i64,
    emit: EmitStrategy,
) -> Result<(String, String, Vec<String>), StreamsError> {
    let store = materialized.name.clone().unwrap_or_else(|| b.name("KSTREAM-AGGREGATE-STATE-STORE"));
    b.add_store(StoreSpec {
        name: store.clone(),
        store_type: StoreType::Window { retention_ms, segment_interval_ms: default_segment_interval_ms(retention_ms) },
        logging: materialized.logging,
        in_memory: materialized.in_memory,
    })?;
    let mut stores = vec![store.clone()];
    let emit_store = format!("{store}-emit-time");
    if emit == EmitStrategy::OnWindowClose {
        b.add_store(StoreSpec {
            name: emit_store.clone(),
            store_type: StoreType::KeyValue,
            logging: materialized.logging,
            in_memory: materialized.in_memory,
        })?;
        stores.push(emit_store.clone());
    }
    Ok((store, emit_store, stores))
}

/// Updates held back per key until the next flush (the forwarding half of Kafka's record
/// cache). The first `old` and the last `new` of a key are kept.
pub(crate) struct PendingForward<K, V> {
    entries: Vec<Option<(K, Change<V>, i64)>>,
    index: HashMap<Vec<u8>, usize>,
    bytes: usize,
    max_bytes: usize,
}

impl<K: Clone, V: Clone> PendingForward<K, V> {
    pub(crate) fn new(max_bytes: usize) -> Self {
        PendingForward { entries: Vec::new(), index: HashMap::new(), bytes: 0, max_bytes }
    }

    /// Records an update; forwards it at once when caching is off. Forwards everything held
    /// when the cache is full.
    #[expect(clippy::too_many_arguments, reason = "the update's parts and where it goes")]
    pub(crate) fn push(
        &mut self,
        ctx: &mut TaskContext,
        ds: &mut Downstream<K, Change<V>>,
        key_bytes: &[u8],
        key: K,
        change: Change<V>,
        timestamp_ms: i64,
        size: usize,
    ) -> Result<(), StreamsError> {
        if self.max_bytes == 0 {
            return ds.forward(ctx, Record::new(key, change, timestamp_ms));
        }
        match self.index.get(key_bytes) {
            Some(&i) => {
                if let Some((_, held, ts)) = &mut self.entries[i] {
                    held.new = change.new;
                    *ts = timestamp_ms;
                }
            }
            None => {
                self.index.insert(key_bytes.to_vec(), self.entries.len());
                self.entries.push(Some((key, change, timestamp_ms)));
                self.bytes += size + key_bytes.len() + 64;
            }
        }
        if self.bytes > self.max_bytes {
            self.flush(ctx, ds)?;
        }
        Ok(())
    }

    pub(crate) fn flush(
        &mut self,
        ctx: &mut TaskContext,
        ds: &mut Downstream<K, Change<V>>,
    ) -> Result<(), StreamsError> {
        self.index.clear();
        self.bytes = 0;
        for (key, change, ts) in std::mem::take(&mut self.entries).into_iter().flatten() {
            ds.forward(ctx, Record::new(key, change, ts))?;
        }
        Ok(())
    }
}

/// Shares an operator's held-back updates and children between its processing function and
/// its flush hook.
pub(crate) type Held<K, V> = Arc<Mutex<(PendingForward<K, V>, Downstream<K, Change<V>>)>>;

/// A stream grouped by key (Kafka's `KGroupedStream`).
pub struct KGroupedStream<K, V> {
    pub(crate) stream: KStream<K, V>,
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
    /// `Grouped`'s name for the repartition topic, if one is needed.
    pub(crate) name: Option<String>,
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    pub(crate) fn new(stream: KStream<K, V>, key: SerdeRef<K>, value: SerdeRef<V>, name: Option<String>) -> Self {
        KGroupedStream { stream, key, value, name }
    }

    /// The aggregation's input: the grouped stream, repartitioned by key first if the key was
    /// changed upstream. As in Kafka, the repartition topic is named after `Grouped`'s name,
    /// else the store's (`<application.id>-<store>-repartition`).
    pub(crate) fn input(&self, store: Option<&String>) -> KStream<K, V> {
        if !self.stream.repartition_required {
            return self.stream.clone();
        }
        let name = self
            .name
            .clone()
            .or_else(|| store.cloned())
            .unwrap_or_else(|| self.stream.builder.lock().name("KSTREAM-AGGREGATE-STATE-STORE"));
        self.stream.repartition_through(name, Grouped { key: self.key.clone(), value: self.value.clone(), name: None })
    }

    /// Records per key.
    pub fn count(&self, materialized: Materialized<i64>) -> Result<KTable<K, i64>, StreamsError> {
        let materialized = materialized.or_value_serde(Arc::new(I64Serde));
        self.aggregate(|| 0i64, |_, _, n| n + 1, materialized)
    }

    /// Combines each key's values with `reducer(aggregate, value)`; the first value is the
    /// first aggregate.
    pub fn reduce(
        &self,
        reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> Result<KTable<K, V>, StreamsError> {
        self.aggregate_opt(reducing(reducer), materialized.or_value_serde(self.value.clone()))
    }

    /// Folds each key's values into an aggregate: `initializer()` for a new key, then
    /// `aggregator(key, value, aggregate)`. The materialized value serde is required.
    pub fn aggregate<A: Data>(
        &self,
        initializer: impl Fn() -> A + Send + Sync + 'static,
        aggregator: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> Result<KTable<K, A>, StreamsError> {
        self.aggregate_opt(move |k, v, agg: Option<A>| aggregator(k, v, agg.unwrap_or_else(&initializer)), materialized)
    }

    fn aggregate_opt<A: Data>(
        &self,
        f: impl Fn(&K, V, Option<A>) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> Result<KTable<K, A>, StreamsError> {
        let input = self.input(materialized.name.as_ref());
        aggregate_node(&input, self.key.clone(), materialized, move |k, v, agg| Some(f(k, v, agg)))
    }

    /// Aggregates per key and time window (tumbling or hopping).
    pub fn windowed_by(&self, windows: TimeWindows) -> TimeWindowedKStream<K, V> {
        TimeWindowedKStream {
            grouped: KGroupedStream::new(self.stream.clone(), self.key.clone(), self.value.clone(), self.name.clone()),
            windows,
            emit: EmitStrategy::OnWindowUpdate,
        }
    }

    /// Aggregates per key and session (activity separated by gaps of inactivity).
    pub fn windowed_by_session(&self, windows: SessionWindows) -> SessionWindowedKStream<K, V> {
        SessionWindowedKStream {
            grouped: KGroupedStream::new(self.stream.clone(), self.key.clone(), self.value.clone(), self.name.clone()),
            windows,
        }
    }
}

/// A keyed (non-windowed) aggregation node over `stream`: `f(key, value, aggregate)` gives
/// the new aggregate, or None to delete the key. Results are a materialized KTable.
pub(crate) fn aggregate_node<K: Data, V: Data, A: Data>(
    stream: &KStream<K, V>,
    key_serde: SerdeRef<K>,
    materialized: Materialized<A>,
    f: impl Fn(&K, V, Option<A>) -> Option<A> + Send + Sync + 'static,
) -> Result<KTable<K, A>, StreamsError> {
    let value_serde = materialized.value.clone().ok_or_else(|| {
        StreamsError::Topology("aggregate needs the aggregate's serde: Materialized::with_value_serde".into())
    })?;
    let builder = stream.builder.clone();
    let mut b = builder.lock();
    let store = materialized.name.clone().unwrap_or_else(|| b.name("KSTREAM-AGGREGATE-STATE-STORE"));
    b.add_store(StoreSpec {
        name: store.clone(),
        store_type: StoreType::KeyValue,
        logging: materialized.logging,
        in_memory: materialized.in_memory,
    })?;
    let name = b.name("KSTREAM-AGGREGATE");
    let (ks, vs) = (key_serde.clone(), value_serde.clone());
    let f = Arc::new(f);
    let build_store = store.clone();
    let node = processor_node(&mut b, name, vec![stream.node], vec![store.clone()], move |tb, ds| {
        let kv = tb.kv_store(&build_store)?;
        let state: Held<K, A> = Arc::new(Mutex::new((PendingForward::new(tb.cache_max_bytes), ds)));
        push_flusher(tb, &state);
        let (ks, vs, f) = (ks.clone(), vs.clone(), f.clone());
        Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
            let key_bytes = ks.serialize(&r.key)?;
            let mut s = lock(&kv);
            let old = s.get(&key_bytes)?.map(|b| vs.deserialize(&b)).transpose()?;
            let new = f(&r.key, r.value, old.clone());
            if new.is_none() && old.is_none() {
                return Ok(());
            }
            let new_bytes = new.as_ref().map(|n| vs.serialize(n)).transpose()?;
            let size = new_bytes.as_ref().map_or(0, Vec::len);
            s.put(&mut ctx.out, key_bytes.clone(), new_bytes, r.timestamp_ms)?;
            drop(s);
            let mut g = lock(&state);
            let (pending, ds) = &mut *g;
            pending.push(ctx, ds, &key_bytes, r.key, Change { new, old }, r.timestamp_ms, size)
        }) as ProcessFn<K, V>)
    });
    drop(b);
    Ok(KTable::new(builder, node, Some(store), key_serde, value_serde))
}

pub(crate) fn push_flusher<K: Data, V: Data>(tb: &mut TaskBuild<'_>, state: &Held<K, V>) {
    let state = state.clone();
    tb.flushers.push(Box::new(move |ctx: &mut TaskContext| {
        let mut g = lock(&state);
        let (pending, ds) = &mut *g;
        pending.flush(ctx, ds)
    }));
}

/// When a windowed aggregation forwards results (Kafka's `EmitStrategy`, KIP-825).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitStrategy {
    /// Every update (subject to the record cache).
    OnWindowUpdate,
    /// Once per window, when it closes (`window end + grace <= stream time`): final results
    /// only. Where it got to is kept in a store with a changelog, so a restarted task neither
    /// skips nor (beyond at-least-once) repeats windows.
    OnWindowClose,
}

/// A stream grouped by key and windowed by time (Kafka's `TimeWindowedKStream`).
pub struct TimeWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: TimeWindows,
    emit: EmitStrategy,
}

impl<K: Data, V: Data> TimeWindowedKStream<K, V> {
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

    fn aggregate_opt<A: Data>(
        &self,
        f: impl Fn(&K, V, Option<A>) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> Result<KTable<Windowed<K, TimeWindow>, A>, StreamsError> {
        let value_serde = materialized.value.clone().ok_or_else(|| {
            StreamsError::Topology(
                "a windowed aggregate needs the aggregate's serde: Materialized::with_value_serde".into(),
            )
        })?;
        let windows = self.windows;
        let retention_ms = windows.size_ms().saturating_add(windows.grace_ms());
        let input = self.grouped.input(materialized.name.as_ref());
        let builder = input.builder.clone();
        let mut b = builder.lock();
        let (store, emit_store, stores) = add_window_stores(&mut b, &materialized, retention_ms, self.emit)?;
        let name = b.name("KSTREAM-WINDOWED-AGGREGATE");
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
                let assignment = windows.assign(r.timestamp_ms, &mut stream_time);
                if assignment.update.is_empty() {
                    if !assignment.expired.is_empty() {
                        let key = key_serde.serialize(&r.key).ok().map(bytes::Bytes::from);
                        ctx.drop_late(key, None, r.timestamp_ms);
                    }
                } else {
                    let key_bytes = key_serde.serialize(&r.key)?;
                    let mut s = lock(&ws);
                    for window in assignment.update {
                        let old = s.fetch(&key_bytes, window.start_ms)?.map(|b| vs.deserialize(&b)).transpose()?;
                        let new = f(&r.key, r.value.clone(), old.clone());
                        let new_bytes = vs.serialize(&new)?;
                        let size = new_bytes.len();
                        s.put_ref(&mut ctx.out, &key_bytes, window.start_ms, Some(new_bytes), r.timestamp_ms)?;
                        if emit == EmitStrategy::OnWindowUpdate {
                            let mut g = lock(&state);
                            let (pending, ds) = &mut *g;
                            let mut wk = key_bytes.clone();
                            wk.extend_from_slice(&window.start_ms.to_be_bytes());
                            let key = Windowed { key: r.key.clone(), window };
                            pending.push(ctx, ds, &wk, key, Change { new: Some(new), old }, r.timestamp_ms, size)?;
                        }
                    }
                }
                if let Some(emit_kv) = &emit_kv {
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
                Ok(())
            }) as ProcessFn<K, V>)
        });
        super::suppress::register_window_close::<Windowed<K, TimeWindow>>(&mut b, node, windows.grace_ms(), |k| {
            k.window.end_ms
        });
        drop(b);
        let windowed_key: SerdeRef<Windowed<K, TimeWindow>> =
            Arc::new(TimeWindowedSerde::new(self.grouped.key.clone(), windows.size_ms()));
        Ok(KTable::new(builder, node, None, windowed_key, value_serde))
    }
}

const EMIT_TIME_KEY: &[u8] = b"emitted-through-ms";

/// Emits every window that closed since the last emission, in (start, key) order, and records
/// how far it got.
#[expect(clippy::too_many_arguments, reason = "one call site; the pieces are the operator's state")]
fn emit_closed<K: Data, A: Data>(
    ctx: &mut TaskContext,
    windows: &TimeWindows,
    stream_time_ms: i64,
    emitted_through_ms: &mut Option<i64>,
    emit_kv: &Mutex<crate::store::LoggedKv>,
    ws: &Mutex<crate::store::LoggedWindow>,
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
    let close_bound = stream_time_ms.saturating_sub(windows.grace_ms());
    // Only scan when a window end was crossed: ends are `start + size` with starts on
    // multiples of the advance.
    let (size, advance) = (windows.size_ms(), windows.advance_ms());
    let next_end = if through == i64::MIN {
        i64::MIN
    } else {
        let start_after = through.saturating_sub(size);
        (start_after.div_euclid(advance) + 1).saturating_mul(advance).saturating_add(size)
    };
    if close_bound < next_end {
        return Ok(());
    }
    let from_start = if through == i64::MIN { i64::MIN } else { through.saturating_sub(size).saturating_add(1) };
    let to_start = close_bound.saturating_sub(size);
    let closed = lock(ws).fetch_all(from_start, to_start)?;
    let mut g = lock(state);
    let (_, ds) = &mut *g;
    for (key_bytes, start_ms, value) in closed {
        let window = TimeWindow { start_ms, end_ms: start_ms.saturating_add(size) };
        if window.end_ms <= through
            || window.end_ms > close_bound
            || windows.decide(window, stream_time_ms) == LateDecision::Accept
        {
            continue;
        }
        let key = key_serde.deserialize(&key_bytes)?;
        let value = vs.deserialize(&value)?;
        let ts = window.end_ms.saturating_sub(1);
        ds.forward(ctx, Record::new(Windowed { key, window }, Change { new: Some(value), old: None }, ts))?;
    }
    drop(g);
    *emitted_through_ms = Some(close_bound);
    lock(emit_kv).put(&mut ctx.out, EMIT_TIME_KEY.to_vec(), Some(close_bound.to_be_bytes().to_vec()), stream_time_ms)
}

/// A stream grouped by key and windowed by sessions (Kafka's `SessionWindowedKStream`).
pub struct SessionWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: SessionWindows,
}

impl<K: Data, V: Data> SessionWindowedKStream<K, V> {
    pub fn count(
        &self,
        materialized: Materialized<i64>,
    ) -> Result<KTable<Windowed<K, SessionWindow>, i64>, StreamsError> {
        let materialized = materialized.or_value_serde(Arc::new(I64Serde));
        self.aggregate(|| 0i64, |_, _, n| n + 1, |_, a, b| a + b, materialized)
    }

    /// Folds each session's values; when a record bridges sessions, their aggregates are
    /// combined with `merger(key, a, b)` (Kafka's `Merger`).
    pub fn aggregate<A: Data>(
        &self,
        initializer: impl Fn() -> A + Send + Sync + 'static,
        aggregator: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        merger: impl Fn(&K, A, A) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> Result<KTable<Windowed<K, SessionWindow>, A>, StreamsError> {
        let value_serde = materialized.value.clone().ok_or_else(|| {
            StreamsError::Topology(
                "a session aggregate needs the aggregate's serde: Materialized::with_value_serde".into(),
            )
        })?;
        let windows = self.windows;
        let input = self.grouped.input(materialized.name.as_ref());
        let builder = input.builder.clone();
        let mut b = builder.lock();
        let store = materialized.name.clone().unwrap_or_else(|| b.name("KSTREAM-AGGREGATE-STATE-STORE"));
        b.add_store(StoreSpec {
            name: store.clone(),
            store_type: StoreType::Session { retention_ms: windows.retention_ms() },
            logging: materialized.logging,
            in_memory: materialized.in_memory,
        })?;
        let name = b.name("KSTREAM-SESSION-WINDOWED-AGGREGATE");
        let (key_serde, vs) = (self.grouped.key.clone(), value_serde.clone());
        let (initializer, aggregator, merger) = (Arc::new(initializer), Arc::new(aggregator), Arc::new(merger));
        let build_store = store.clone();
        let node = processor_node(&mut b, name, vec![input.node], vec![store], move |tb, ds| {
            let ss = tb.session_store(&build_store)?;
            let state: Held<Windowed<K, SessionWindow>, A> =
                Arc::new(Mutex::new((PendingForward::new(tb.cache_max_bytes), ds)));
            push_flusher(tb, &state);
            let (key_serde, vs) = (key_serde.clone(), vs.clone());
            let (initializer, aggregator, merger) = (initializer.clone(), aggregator.clone(), merger.clone());
            let mut stream_time = StreamTime::new();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                let key_bytes = key_serde.serialize(&r.key)?;
                let (earliest_end, latest_start) = windows.search_range_ms(r.timestamp_ms);
                let mut s = lock(&ss);
                let existing = s.find_sessions(&key_bytes, earliest_end, latest_start)?;
                let sessions: Vec<SessionWindow> = existing.iter().map(|(w, _)| *w).collect();
                let merge = windows.merge(r.timestamp_ms, &sessions, &mut stream_time);
                if merge.decision != LateDecision::Accept {
                    drop(s);
                    ctx.drop_late(Some(bytes::Bytes::from(key_bytes)), None, r.timestamp_ms);
                    return Ok(());
                }
                let mut agg = initializer();
                for (w, bytes) in &existing {
                    if merge.merged.contains(w) {
                        agg = merger(&r.key, agg, vs.deserialize(bytes)?);
                    }
                }
                let agg = aggregator(&r.key, r.value, agg);
                let mut g = lock(&state);
                let (pending, ds) = &mut *g;
                for removed in &merge.removed {
                    let old =
                        existing.iter().find(|(w, _)| w == removed).map(|(_, b)| vs.deserialize(b)).transpose()?;
                    s.put(&mut ctx.out, key_bytes.clone(), *removed, None, r.timestamp_ms)?;
                    let mut wk = key_bytes.clone();
                    wk.extend_from_slice(&removed.end_ms.to_be_bytes());
                    wk.extend_from_slice(&removed.start_ms.to_be_bytes());
                    let key = Windowed { key: r.key.clone(), window: *removed };
                    pending.push(ctx, ds, &wk, key, Change { new: None, old }, r.timestamp_ms, 0)?;
                }
                let new_bytes = vs.serialize(&agg)?;
                let size = new_bytes.len();
                let old =
                    existing.iter().find(|(w, _)| *w == merge.window).map(|(_, b)| vs.deserialize(b)).transpose()?;
                s.put(&mut ctx.out, key_bytes.clone(), merge.window, Some(new_bytes), r.timestamp_ms)?;
                drop(s);
                let mut wk = key_bytes;
                wk.extend_from_slice(&merge.window.end_ms.to_be_bytes());
                wk.extend_from_slice(&merge.window.start_ms.to_be_bytes());
                let key = Windowed { key: r.key, window: merge.window };
                pending.push(ctx, ds, &wk, key, Change { new: Some(agg), old }, r.timestamp_ms, size)
            }) as ProcessFn<K, V>)
        });
        // Session ends are inclusive: a session closes when `end + gap + grace < stream time`.
        let wait_ms = windows.inactivity_gap_ms().saturating_add(windows.grace_ms());
        super::suppress::register_window_close::<Windowed<K, SessionWindow>>(&mut b, node, wait_ms, |k| {
            k.window.end_ms.saturating_add(1)
        });
        drop(b);
        let windowed_key: SerdeRef<Windowed<K, SessionWindow>> =
            Arc::new(SessionWindowedSerde::new(self.grouped.key.clone()));
        Ok(KTable::new(builder, node, None, windowed_key, value_serde))
    }
}
