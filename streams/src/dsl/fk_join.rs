//! Table-table foreign-key join (KIP-213): each left row names a right row by a key computed
//! from its value; the two tables need not be co-partitioned.
//!
//! As in Kafka: the left side sends a *subscription* (left key, hash of the left value) to a
//! topic partitioned like the right table, keyed by the foreign key; the right side keeps the
//! subscriptions in a store and answers each one, and every later right update, with a
//! *response* (the left key, the hash, the right value) to a topic partitioned like the left
//! table; the left side joins a response with its current row only if the row still hashes the
//! same, so stale responses (the row changed meanwhile) are dropped.
//!
//! Subscription value: `op (1 byte: 0 unsubscribe, 1 subscribe, 2 unsubscribe and answer) ‖
//! hash (8 bytes BE) ‖ left key`. Response value: `hash (8) ‖ present (1) ‖ right value`.
//! Subscription store key: `len(fk) (4 bytes BE) ‖ fk ‖ left key`, so one foreign key's
//! subscriptions are one prefix range.

use std::sync::Arc;

use bytes::Bytes;

use super::join::NoSerde;
use super::{source_node, Consumed, Data, KTable};
use crate::processor::{Change, Downstream, OutKind, OutRecord, ProcessFn, Record, TaskContext};
use crate::serdes::{BytesSerde, SerdeRef};
use crate::store::{lock, LoggedKv, StoreSpec, StoreType};
use crate::topology::{processor_node, NodeId, TopicName, TopologyBuilder};
use crate::StreamsError;

const UNSUBSCRIBE: u8 = 0;
const SUBSCRIBE: u8 = 1;
const UNSUBSCRIBE_AND_ANSWER: u8 = 2;

/// Most subscriptions one right-side update answers in one go (bounded memory per update).
const MAX_SUBSCRIBERS_PER_SCAN: usize = 1_000_000;

/// FNV-1a: a stable 64-bit hash of the left value bytes (stable across processes and
/// versions, unlike std's hasher).
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn subscription_key(fk: &[u8], left_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + fk.len() + left_key.len());
    k.extend_from_slice(&(fk.len() as u32).to_be_bytes());
    k.extend_from_slice(fk);
    k.extend_from_slice(left_key);
    k
}

/// The first key after every key starting with `prefix` (None: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn out(topic: &Arc<str>, key: Vec<u8>, value: Vec<u8>, timestamp_ms: i64) -> OutRecord {
    OutRecord {
        topic: topic.clone(),
        partition: None,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        timestamp_ms,
        kind: OutKind::Sink,
    }
}

fn response(hash: u64, right: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + right.map_or(0, <[u8]>::len));
    v.extend_from_slice(&hash.to_be_bytes());
    v.push(u8::from(right.is_some()));
    v.extend_from_slice(right.unwrap_or_default());
    v
}

fn bad(what: &'static str) -> StreamsError {
    StreamsError::deserialize(what, "too short (a foreign-key join's internal topic holds other data)")
}

impl<K: Data, V: Data> KTable<K, V> {
    /// Joins each row with the row of `other` whose key is `foreign_key(value)`; rows without
    /// a match are absent from the result (Kafka's `KTable.join(other, fkExtractor, joiner)`).
    pub fn join_foreign_key<KO: Data, VO: Data, VR: Data>(
        &self,
        other: &KTable<KO, VO>,
        foreign_key: impl Fn(&V) -> KO + Send + Sync + 'static,
        joiner: impl Fn(&V, &VO) -> VR + Send + Sync + 'static,
    ) -> Result<KTable<K, VR>, StreamsError> {
        self.fk_join(other, foreign_key, move |l, r| r.map(|r| joiner(l, r)))
    }

    /// As [`Self::join_foreign_key`], keeping rows without a match (the joiner gets `None`).
    pub fn left_join_foreign_key<KO: Data, VO: Data, VR: Data>(
        &self,
        other: &KTable<KO, VO>,
        foreign_key: impl Fn(&V) -> KO + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&VO>) -> VR + Send + Sync + 'static,
    ) -> Result<KTable<K, VR>, StreamsError> {
        self.fk_join(other, foreign_key, move |l, r| Some(joiner(l, r)))
    }

    fn fk_join<KO: Data, VO: Data, VR: Data>(
        &self,
        other: &KTable<KO, VO>,
        foreign_key: impl Fn(&V) -> KO + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&VO>) -> Option<VR> + Send + Sync + 'static,
    ) -> Result<KTable<K, VR>, StreamsError> {
        let missing = || {
            StreamsError::Topology(
                "both tables of a foreign-key join must be materialized (from builder.table or an aggregation)".into(),
            )
        };
        let left_store = self.store.clone().ok_or_else(missing)?;
        let right_store = other.store.clone().ok_or_else(missing)?;
        let mut b = self.builder.lock();
        let base = b.name("KTABLE-FK-JOIN");
        let (sub_topic, resp_topic) = (format!("{base}-subscription"), format!("{base}-response"));
        let subs_store = format!("{base}-subscription-store");
        b.add_store(StoreSpec {
            name: subs_store.clone(),
            store_type: StoreType::KeyValue,
            logging: true,
            in_memory: false,
        })?;
        b.copartition.push((sub_topic.clone(), other.node));
        b.copartition.push((resp_topic.clone(), self.node));

        // Left changes → subscriptions.
        let (lk, lv, rk) = (self.key.clone(), self.value.clone(), other.key.clone());
        let fk = Arc::new(foreign_key);
        let topic = sub_topic.clone();
        let name = b.name("KTABLE-FK-JOIN-SUBSCRIBE");
        let node = processor_node(&mut b, name, vec![self.node], Vec::new(), move |tb, _: Downstream<(), ()>| {
            let topic: Arc<str> = Arc::from(TopicName::Repartition(topic.clone()).resolve(tb.application_id));
            let (lk, lv, rk, fk) = (lk.clone(), lv.clone(), rk.clone(), fk.clone());
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| {
                let left_key = lk.serialize(&r.key)?;
                let old_fk = r.value.old.as_ref().map(|v| rk.serialize(&fk(v))).transpose()?;
                let new_fk = r.value.new.as_ref().map(|v| rk.serialize(&fk(v))).transpose()?;
                let message = |op: u8, h: u64| {
                    let mut v = vec![op];
                    v.extend_from_slice(&h.to_be_bytes());
                    v.extend_from_slice(&left_key);
                    v
                };
                match (&old_fk, &new_fk, &r.value.new) {
                    (_, Some(new_fk), Some(new)) => {
                        if old_fk.as_ref().is_some_and(|o| o != new_fk) {
                            let old = old_fk.clone().expect("checked");
                            ctx.out.push(out(&topic, old, message(UNSUBSCRIBE, 0), r.timestamp_ms));
                        }
                        let h = hash(&lv.serialize(new)?);
                        ctx.out.push(out(&topic, new_fk.clone(), message(SUBSCRIBE, h), r.timestamp_ms));
                    }
                    // The row was deleted: unsubscribe, and have the answer delete the result.
                    (Some(old_fk), _, None) => {
                        ctx.out.push(out(&topic, old_fk.clone(), message(UNSUBSCRIBE_AND_ANSWER, 0), r.timestamp_ms));
                    }
                    _ => {}
                }
                Ok(())
            }) as ProcessFn<K, Change<V>>)
        });
        b.nodes[node].sink_topic = Some(TopicName::Repartition(sub_topic.clone()));

        // Right side: subscriptions in, answers out.
        let bytes: SerdeRef<Vec<u8>> = Arc::new(BytesSerde);
        let sub_source = source_node(
            &mut b,
            vec![TopicName::Repartition(sub_topic.clone())],
            Consumed::with_refs(bytes.clone(), bytes.clone()),
            "KTABLE-FK-JOIN-SUBSCRIPTION-SOURCE",
        );
        let name = b.name("KTABLE-FK-JOIN-SUBSCRIPTION-PROCESSOR");
        let stores = vec![subs_store.clone(), right_store.clone()];
        let (subs, right, topic) = (subs_store.clone(), right_store.clone(), resp_topic.clone());
        let node = processor_node(&mut b, name, vec![sub_source], stores, move |tb, _: Downstream<(), ()>| {
            let topic: Arc<str> = Arc::from(TopicName::Repartition(topic.clone()).resolve(tb.application_id));
            let (subs, right) = (tb.kv_store(&subs)?, tb.kv_store(&right)?);
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<Vec<u8>, Vec<u8>>| {
                let Some((&op, rest)) = r.value.split_first() else { return Err(bad("fk-join subscription")) };
                if rest.len() < 8 {
                    return Err(bad("fk-join subscription"));
                }
                let (h, left_key) = rest.split_at(8);
                let key = subscription_key(&r.key, left_key);
                let stored = (op == SUBSCRIBE).then(|| h.to_vec());
                lock(&subs).put(&mut ctx.out, key, stored, r.timestamp_ms)?;
                if op != UNSUBSCRIBE {
                    let h = u64::from_be_bytes(h.try_into().expect("8 bytes"));
                    let value = if op == SUBSCRIBE { lock(&right).get(&r.key)? } else { None };
                    ctx.out.push(out(&topic, left_key.to_vec(), response(h, value.as_deref()), r.timestamp_ms));
                }
                Ok(())
            }) as ProcessFn<Vec<u8>, Vec<u8>>)
        });
        b.nodes[node].sink_topic = Some(TopicName::Repartition(resp_topic.clone()));

        // Right changes → answers to every subscriber of that key.
        let (rk, rv) = (other.key.clone(), other.value.clone());
        let (subs, topic) = (subs_store.clone(), resp_topic.clone());
        let name = b.name("KTABLE-FK-JOIN-RIGHT-UPDATE");
        let node = processor_node(
            &mut b,
            name,
            vec![other.node],
            vec![subs_store.clone()],
            move |tb, _: Downstream<(), ()>| {
                let topic: Arc<str> = Arc::from(TopicName::Repartition(topic.clone()).resolve(tb.application_id));
                let subs: Arc<std::sync::Mutex<LoggedKv>> = tb.kv_store(&subs)?;
                let (rk, rv) = (rk.clone(), rv.clone());
                Ok(Box::new(move |ctx: &mut TaskContext, r: Record<KO, Change<VO>>| {
                    let fk = rk.serialize(&r.key)?;
                    let value = r.value.new.as_ref().map(|v| rv.serialize(v)).transpose()?;
                    let prefix = subscription_key(&fk, &[]);
                    let end = prefix_end(&prefix);
                    let subscribers = lock(&subs).range(Some(&prefix), end.as_deref(), MAX_SUBSCRIBERS_PER_SCAN)?;
                    for (key, h) in subscribers {
                        let left_key = key[prefix.len()..].to_vec();
                        let h =
                            u64::from_be_bytes(h.as_slice().try_into().map_err(|_| bad("fk-join subscription hash"))?);
                        ctx.out.push(out(&topic, left_key, response(h, value.as_deref()), r.timestamp_ms));
                    }
                    Ok(())
                }) as ProcessFn<KO, Change<VO>>)
            },
        );
        b.nodes[node].sink_topic = Some(TopicName::Repartition(resp_topic.clone()));

        // Left side: answers joined with the current row.
        let resp_source = source_node(
            &mut b,
            vec![TopicName::Repartition(resp_topic)],
            Consumed::with_refs(bytes.clone(), bytes),
            "KTABLE-FK-JOIN-RESPONSE-SOURCE",
        );
        let result = fk_result_node(
            &mut b,
            resp_source,
            left_store,
            self.key.clone(),
            self.value.clone(),
            other.value.clone(),
            joiner,
        );
        drop(b);
        Ok(KTable::new(self.builder.clone(), result, None, self.key.clone(), Arc::new(NoSerde)))
    }
}

fn fk_result_node<K: Data, V: Data, VO: Data, VR: Data>(
    b: &mut TopologyBuilder,
    parent: NodeId,
    left_store: String,
    lk: SerdeRef<K>,
    lv: SerdeRef<V>,
    rv: SerdeRef<VO>,
    joiner: impl Fn(&V, Option<&VO>) -> Option<VR> + Send + Sync + 'static,
) -> NodeId {
    let joiner = Arc::new(joiner);
    let name = b.name("KTABLE-FK-JOIN-RESULT");
    let store = left_store.clone();
    processor_node(b, name, vec![parent], vec![left_store], move |tb, mut ds: Downstream<K, Change<VR>>| {
        let left = tb.kv_store(&store)?;
        let (lk, lv, rv, joiner) = (lk.clone(), lv.clone(), rv.clone(), joiner.clone());
        Ok(Box::new(move |ctx: &mut TaskContext, r: Record<Vec<u8>, Vec<u8>>| {
            if r.value.len() < 9 {
                return Err(bad("fk-join response"));
            }
            let h = u64::from_be_bytes(r.value[..8].try_into().expect("8 bytes"));
            let right = (r.value[8] == 1).then(|| rv.deserialize(&r.value[9..])).transpose()?;
            let key = lk.deserialize(&r.key)?;
            let current = lock(&left).get(&r.key)?;
            let new = match current {
                // The row is gone: the result is deleted.
                None => None,
                // The row changed since this answer was asked for: a newer answer follows.
                Some(bytes) if hash(&bytes) != h => return Ok(()),
                Some(bytes) => joiner(&lv.deserialize(&bytes)?, right.as_ref()),
            };
            ds.forward(ctx, Record::new(key, Change { new, old: None }, r.timestamp_ms))
        }) as ProcessFn<Vec<u8>, Vec<u8>>)
    })
}
