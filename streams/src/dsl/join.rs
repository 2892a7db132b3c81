//! Joins: stream-table (inner, left), table-table (inner, left, outer) and stream-stream
//! windowed (inner, left, outer).

use std::sync::{Arc, Mutex};

use super::{take, Data, KStream, KTable};
use crate::processor::{Change, Downstream, ProcessFn, Record, TaskContext};
use crate::serdes::{Serde, SerdeRef};
use crate::store::{lock, StoreSpec, StoreType};
use crate::topology::{processor_node, NodeDef, TaskBuild};
use crate::window::{JoinKind, JoinOutput, JoinWindows, StreamStreamJoin};
use crate::StreamsError;

fn keyed_for_join<K, V>(stream: &KStream<K, V>) -> Result<(), StreamsError> {
    if stream.repartition_required {
        return Err(StreamsError::Topology(
            "a join after a key change needs the stream repartitioned first: call repartition() before joining".into(),
        ));
    }
    Ok(())
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Each record joined with the table's current value for its key; records without one
    /// are dropped (Kafka's `KStream.join(KTable)`). The stream and the table's topic must
    /// be co-partitioned (checked at start).
    pub fn join_table<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, &VT) -> VR + Send + Sync + 'static,
    ) -> Result<KStream<K, VR>, StreamsError> {
        self.lookup_table(table, "KSTREAM-JOIN", move |v, t| t.map(|t| joiner(v, t)))
    }

    /// As [`Self::join_table`], but every record is kept: the joiner gets `None` when the table
    /// has no value (Kafka's `leftJoin`).
    pub fn left_join_table<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> Result<KStream<K, VR>, StreamsError> {
        self.lookup_table(table, "KSTREAM-LEFTJOIN", move |v, t| Some(joiner(v, t)))
    }

    fn lookup_table<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        prefix: &str,
        joiner: impl Fn(&V, Option<&VT>) -> Option<VR> + Send + Sync + 'static,
    ) -> Result<KStream<K, VR>, StreamsError> {
        keyed_for_join(self)?;
        let store = table.store.clone().ok_or_else(|| {
            StreamsError::Topology(
                "the table of a stream-table join must be materialized: join a table from builder.table or an aggregation"
                    .into(),
            )
        })?;
        let (key_serde, value_serde) = (table.key.clone(), table.value.clone());
        let joiner = Arc::new(joiner);
        let mut b = self.builder.lock();
        let name = b.name(prefix);
        let build_store = store.clone();
        let node = processor_node(&mut b, name, vec![self.node], vec![store], move |tb, mut ds: Downstream<K, VR>| {
            let kv = tb.kv_store(&build_store)?;
            let (key_serde, value_serde, joiner) = (key_serde.clone(), value_serde.clone(), joiner.clone());
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                let key_bytes = key_serde.serialize(&r.key)?;
                let found = lock(&kv).get(&key_bytes)?;
                let table_value = found.map(|b| value_serde.deserialize(&b)).transpose()?;
                match joiner(&r.value, table_value.as_ref()) {
                    Some(joined) => ds.forward(ctx, Record::new(r.key, joined, r.timestamp_ms)),
                    None => Ok(()),
                }
            }) as ProcessFn<K, V>)
        });
        b.nodes[node].joins = true;
        drop(b);
        Ok(KStream::new(self.builder.clone(), node, false))
    }
}

impl<K: Data + Ord, V: Data> KStream<K, V> {
    /// Records of both streams with equal keys and timestamps within `windows` (Kafka's
    /// windowed `KStream.join(KStream)`).
    pub fn join<V2: Data, VR: Data>(
        &self,
        other: &KStream<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, V2>,
    ) -> Result<KStream<K, VR>, StreamsError> {
        self.join_windowed(other, JoinKind::Inner, windows, serdes, move |l, r| match (l, r) {
            (Some(l), Some(r)) => Some(joiner(l, r)),
            _ => None,
        })
    }

    /// As [`Self::join`], and every left record that matched nothing once its window closed,
    /// with `None` (Kafka's `leftJoin`, with the fix for spurious early nulls).
    pub fn left_join<V2: Data, VR: Data>(
        &self,
        other: &KStream<K, V2>,
        joiner: impl Fn(&V, Option<&V2>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, V2>,
    ) -> Result<KStream<K, VR>, StreamsError> {
        self.join_windowed(other, JoinKind::Left, windows, serdes, move |l, r| l.map(|l| joiner(l, r)))
    }

    /// As [`Self::join`], and unmatched records of either side once their window closed
    /// (Kafka's `outerJoin`).
    pub fn outer_join<V2: Data, VR: Data>(
        &self,
        other: &KStream<K, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, V2>,
    ) -> Result<KStream<K, VR>, StreamsError> {
        self.join_windowed(other, JoinKind::Outer, windows, serdes, move |l, r| Some(joiner(l, r)))
    }

    fn join_windowed<V2: Data, VR: Data>(
        &self,
        other: &KStream<K, V2>,
        kind: JoinKind,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> Option<VR> + Send + Sync + 'static,
    ) -> Result<KStream<K, VR>, StreamsError> {
        keyed_for_join(self)?;
        keyed_for_join(other)?;
        let joiner = Arc::new(joiner);
        let mut b = self.builder.lock();
        let name = b.name("KSTREAM-JOIN-WINDOWED");
        let store = serdes.store_name.clone().unwrap_or_else(|| format!("{name}-store"));
        let retention_ms = windows.retention_ms();
        b.add_store(StoreSpec {
            name: store.clone(),
            store_type: StoreType::Window {
                retention_ms,
                segment_interval_ms: crate::state::default_segment_interval_ms(retention_ms),
            },
            logging: serdes.logging,
            in_memory: false,
        })?;
        let id = b.nodes.len();
        let (left, right) = (self.node, other.node);
        let build_store = store.clone();
        let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
            let ds = Downstream::<K, VR>::new(take::<K, VR>(tb, id)?);
            let buffer = JoinBuffer {
                store: tb.window_store(&build_store)?,
                key: serdes.key.clone(),
                left: serdes.value.clone(),
                right: serdes.other.clone(),
                seq: 0,
                replayed: false,
            };
            let state = Arc::new(Mutex::new(JoinState {
                join: StreamStreamJoin::<K, V, V2>::new(windows, kind),
                ds,
                out: Vec::new(),
                buffer,
            }));
            let (ls, rs, ps) = (state.clone(), state.clone(), state);
            let (lj, rj, pj) = (joiner.clone(), joiner.clone(), joiner.clone());
            tb.punctuators.push(crate::processor::Punctuator {
                kind: crate::processor::PunctuationType::WallClockTime,
                interval_ms: crate::window::DEFAULT_OUTER_JOIN_EMIT_INTERVAL_MS,
                next_ms: None,
                fire: Box::new(move |ctx: &mut TaskContext, now_ms| {
                    let mut g = lock(&ps);
                    let s = &mut *g;
                    s.buffer.replay(&mut s.join)?;
                    s.join.punctuate(now_ms, &mut s.out);
                    emit(ctx, &mut s.ds, &mut s.out, &*pj)
                }),
            });
            tb.push_child::<K, V>(
                left,
                Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                    let mut g = lock(&ls);
                    let s = &mut *g;
                    s.buffer.replay(&mut s.join)?;
                    s.buffer.store_left(ctx, &r)?;
                    s.join.process_left(r.key, r.value, r.timestamp_ms, ctx.wall_clock_ms, &mut s.out);
                    emit(ctx, &mut s.ds, &mut s.out, &*lj)
                }),
            );
            tb.push_child::<K, V2>(
                right,
                Box::new(move |ctx: &mut TaskContext, r: Record<K, V2>| {
                    let mut g = lock(&rs);
                    let s = &mut *g;
                    s.buffer.replay(&mut s.join)?;
                    s.buffer.store_right(ctx, &r)?;
                    s.join.process_right(r.key, r.value, r.timestamp_ms, ctx.wall_clock_ms, &mut s.out);
                    emit(ctx, &mut s.ds, &mut s.out, &*rj)
                }),
            );
            Ok(())
        });
        b.add(NodeDef {
            name,
            parents: vec![left, right],
            source_topics: Vec::new(),
            sink_topic: None,
            stores: vec![store],
            joins: true,
            build,
        });
        drop(b);
        Ok(KStream::new(self.builder.clone(), id, false))
    }
}

/// Serdes of a windowed stream-stream join's two sides, and its store (Kafka's
/// `StreamJoined`). The join keeps both sides' records of the last `before + after + grace`
/// in a window store with a changelog, so a restarted or moved task joins records it saw
/// before.
pub struct StreamJoined<K, V, V2> {
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
    pub(crate) other: SerdeRef<V2>,
    pub(crate) store_name: Option<String>,
    pub(crate) logging: bool,
}

impl<K, V, V2> StreamJoined<K, V, V2> {
    pub fn with(
        key: impl Serde<K> + Send + Sync + 'static,
        value: impl Serde<V> + Send + Sync + 'static,
        other: impl Serde<V2> + Send + Sync + 'static,
    ) -> Self {
        StreamJoined {
            key: Arc::new(key),
            value: Arc::new(value),
            other: Arc::new(other),
            store_name: None,
            logging: true,
        }
    }

    /// Names the join's store (`<application.id>-<name>-changelog` is its changelog).
    pub fn with_store_name(mut self, name: impl Into<String>) -> Self {
        self.store_name = Some(name.into());
        self
    }

    /// No changelog: a restarted task forgets the records it had buffered.
    pub fn with_logging_disabled(mut self) -> Self {
        self.logging = false;
        self
    }
}

struct JoinState<K, V, V2, VR> {
    join: StreamStreamJoin<K, V, V2>,
    ds: Downstream<K, VR>,
    out: Vec<JoinOutput<K, V, V2>>,
    buffer: JoinBuffer<K, V, V2>,
}

/// Where a windowed join's inputs are kept: a window store of `side (1 byte: 0 left, 1
/// right) ‖ sequence (8 bytes BE) ‖ key` at the record's timestamp. The in-memory join state
/// is rebuilt from it when the task starts (after the store is restored from its changelog):
/// stored records are replayed in timestamp order without emitting anything, so matches and
/// null-padded results already emitted before are not emitted again.
struct JoinBuffer<K, V, V2> {
    store: Arc<Mutex<crate::store::LoggedWindow>>,
    key: SerdeRef<K>,
    left: SerdeRef<V>,
    right: SerdeRef<V2>,
    seq: u64,
    replayed: bool,
}

impl<K: Data + Ord, V: Data, V2: Data> JoinBuffer<K, V, V2> {
    fn stored_key(&mut self, side: u8, key: &K) -> Result<Vec<u8>, StreamsError> {
        let mut k = vec![side];
        k.extend_from_slice(&self.seq.to_be_bytes());
        self.seq += 1;
        self.key.serialize_into(key, &mut k)?;
        Ok(k)
    }

    fn store_left(&mut self, ctx: &mut TaskContext, r: &Record<K, V>) -> Result<(), StreamsError> {
        let key = self.stored_key(0, &r.key)?;
        let value = self.left.serialize(&r.value)?;
        lock(&self.store).put(&mut ctx.out, key, r.timestamp_ms, Some(value), r.timestamp_ms)
    }

    fn store_right(&mut self, ctx: &mut TaskContext, r: &Record<K, V2>) -> Result<(), StreamsError> {
        let key = self.stored_key(1, &r.key)?;
        let value = self.right.serialize(&r.value)?;
        lock(&self.store).put(&mut ctx.out, key, r.timestamp_ms, Some(value), r.timestamp_ms)
    }

    /// Rebuilds the join from the store, once per task.
    fn replay(&mut self, join: &mut StreamStreamJoin<K, V, V2>) -> Result<(), StreamsError> {
        if self.replayed {
            return Ok(());
        }
        self.replayed = true;
        let entries = lock(&self.store).fetch_all(i64::MIN, i64::MAX)?;
        let mut discard = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        for (stored, ts, value) in entries {
            if stored.len() < 9 {
                return Err(StreamsError::deserialize("join store key", "shorter than side and sequence"));
            }
            let seq = u64::from_be_bytes(stored[1..9].try_into().expect("8 bytes"));
            self.seq = self.seq.max(seq + 1);
            records.push((ts, seq, stored, value));
        }
        // In arrival order within a timestamp, as first processed.
        records.sort_by_key(|(ts, seq, _, _)| (*ts, *seq));
        for (ts, _, stored, value) in records {
            let key = self.key.deserialize(&stored[9..])?;
            // A clock that lets every sweep run, so records whose windows closed are
            // dropped here rather than emitted again.
            if stored[0] == 0 {
                join.process_left(key, self.left.deserialize(&value)?, ts, i64::MAX, &mut discard);
            } else {
                join.process_right(key, self.right.deserialize(&value)?, ts, i64::MAX, &mut discard);
            }
            join.reset_emit_timer();
            discard.clear();
        }
        Ok(())
    }
}

/// Combines the two sides of a join (either may be missing); None: no output.
type Joiner<V, V2, VR> = dyn Fn(Option<&V>, Option<&V2>) -> Option<VR> + Send + Sync;

fn emit<K: Data, V, V2, VR: Data>(
    ctx: &mut TaskContext,
    ds: &mut Downstream<K, VR>,
    out: &mut Vec<JoinOutput<K, V, V2>>,
    joiner: &Joiner<V, V2, VR>,
) -> Result<(), StreamsError> {
    for o in out.drain(..) {
        let (key, joined, ts) = match o {
            JoinOutput::Joined { key, left, right, timestamp_ms } => {
                (key, joiner(Some(&left), Some(&right)), timestamp_ms)
            }
            JoinOutput::LeftOnly { key, left, timestamp_ms } => (key, joiner(Some(&left), None), timestamp_ms),
            JoinOutput::RightOnly { key, right, timestamp_ms } => (key, joiner(None, Some(&right)), timestamp_ms),
        };
        if let Some(v) = joined {
            ds.forward(ctx, Record::new(key, v, ts))?;
        }
    }
    Ok(())
}

impl<K: Data, V: Data> KTable<K, V> {
    /// Rows of both tables with equal keys (Kafka's `KTable.join`); updates of either side
    /// update the result.
    pub fn join<V2: Data, VR: Data>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
    ) -> Result<KTable<K, VR>, StreamsError> {
        self.table_join(other, "KTABLE-JOIN", move |l, r| match (l, r) {
            (Some(l), Some(r)) => Some(joiner(l, r)),
            _ => None,
        })
    }

    /// Every row of this table, joined with the other's row when there is one.
    pub fn left_join<V2: Data, VR: Data>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(&V, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> Result<KTable<K, VR>, StreamsError> {
        self.table_join(other, "KTABLE-LEFTJOIN", move |l, r| l.map(|l| joiner(l, r)))
    }

    /// Every row of either table, joined with the other's when there is one.
    pub fn outer_join<V2: Data, VR: Data>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> Result<KTable<K, VR>, StreamsError> {
        self.table_join(
            other,
            "KTABLE-OUTERJOIN",
            move |l, r| {
                if l.is_none() && r.is_none() {
                    None
                } else {
                    Some(joiner(l, r))
                }
            },
        )
    }

    fn table_join<V2: Data, VR: Data>(
        &self,
        other: &KTable<K, V2>,
        prefix: &str,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> Option<VR> + Send + Sync + 'static,
    ) -> Result<KTable<K, VR>, StreamsError> {
        let missing = || {
            StreamsError::Topology(
                "both tables of a table-table join must be materialized (from builder.table or an aggregation)".into(),
            )
        };
        let left_store = self.store.clone().ok_or_else(missing)?;
        let right_store = other.store.clone().ok_or_else(missing)?;
        let joiner = Arc::new(joiner);
        let mut b = self.builder.lock();
        let name = b.name(prefix);
        let id = b.nodes.len();
        let (left, right) = (self.node, other.node);
        let (lk, lv, rk, rv) = (self.key.clone(), self.value.clone(), other.key.clone(), other.value.clone());
        let (ls_name, rs_name) = (left_store.clone(), right_store.clone());
        let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
            let ds = Arc::new(Mutex::new(Downstream::<K, Change<VR>>::new(take::<K, Change<VR>>(tb, id)?)));
            let (left_kv, right_kv) = (tb.kv_store(&ls_name)?, tb.kv_store(&rs_name)?);
            {
                let (ds, joiner, rk, rv) = (ds.clone(), joiner.clone(), rk.clone(), rv.clone());
                tb.push_child::<K, Change<V>>(
                    left,
                    Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| {
                        let other =
                            lock(&right_kv).get(&rk.serialize(&r.key)?)?.map(|b| rv.deserialize(&b)).transpose()?;
                        let change = Change {
                            new: joiner(r.value.new.as_ref(), other.as_ref()),
                            old: joiner(r.value.old.as_ref(), other.as_ref()),
                        };
                        if change.new.is_none() && change.old.is_none() {
                            return Ok(());
                        }
                        lock(&ds).forward(ctx, Record::new(r.key, change, r.timestamp_ms))
                    }),
                );
            }
            let (lk, lv) = (lk.clone(), lv.clone());
            let joiner = joiner.clone();
            tb.push_child::<K, Change<V2>>(
                right,
                Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V2>>| {
                    let other = lock(&left_kv).get(&lk.serialize(&r.key)?)?.map(|b| lv.deserialize(&b)).transpose()?;
                    let change = Change {
                        new: joiner(other.as_ref(), r.value.new.as_ref()),
                        old: joiner(other.as_ref(), r.value.old.as_ref()),
                    };
                    if change.new.is_none() && change.old.is_none() {
                        return Ok(());
                    }
                    lock(&ds).forward(ctx, Record::new(r.key, change, r.timestamp_ms))
                }),
            );
            Ok(())
        });
        b.add(NodeDef {
            name,
            parents: vec![left, right],
            source_topics: Vec::new(),
            sink_topic: None,
            stores: vec![left_store, right_store],
            joins: true,
            build,
        });
        drop(b);
        Ok(KTable::new(self.builder.clone(), id, None, self.key.clone(), Arc::new(NoSerde)))
    }
}

/// A table's value serde where none is known (a join result that is not materialized): using
/// it is a topology error, reported as such.
pub(crate) struct NoSerde;

impl<T> crate::serdes::Serde<T> for NoSerde {
    fn serialize_into(&self, _value: &T, _out: &mut Vec<u8>) -> Result<(), StreamsError> {
        Err(StreamsError::Topology("this table has no value serde: map_values it with one first".into()))
    }

    fn deserialize(&self, _bytes: &[u8]) -> Result<T, StreamsError> {
        Err(StreamsError::Topology("this table has no value serde: map_values it with one first".into()))
    }
}
