//! Broker metrics through the `metrics` facade, under Kafka's JMX names mapped the way the
//! Prometheus JMX exporter maps them (`kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec`
//! → `kafka_server_brokertopicmetrics_messagesin_total`). Whatever recorder the process installs
//! receives them (the `spate` binary's Prometheus endpoint, `metrics.listener`); with none they
//! cost a no-op call.
//!
//! Counters and histograms on the hot path are handles made once (per partition, per API key) so
//! recording is an atomic add, not a registry lookup. Gauges (sizes, offsets, counts, lag) are
//! set by [`Broker::refresh_metrics`], which the endpoint calls right before each scrape.

use std::sync::OnceLock;
use std::time::Duration;

use crate::broker::Broker;
use metrics::{counter, gauge, histogram, Counter, Histogram};

/// Per-topic throughput handles, held by each local partition (partitions of a topic share the
/// underlying counters: same name and labels).
pub(crate) struct TopicMetrics {
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl TopicMetrics {
    pub fn new(topic: &str) -> TopicMetrics {
        let topic = topic.to_string();
        TopicMetrics {
            messages_in: counter!("kafka_server_brokertopicmetrics_messagesin_total", "topic" => topic.clone()),
            bytes_in: counter!("kafka_server_brokertopicmetrics_bytesin_total", "topic" => topic.clone()),
            bytes_out: counter!("kafka_server_brokertopicmetrics_bytesout_total", "topic" => topic),
        }
    }
}

/// Requests served and their time from decoding to a ready response, per API.
pub(crate) struct RequestMetrics {
    by_key: Vec<Option<(Counter, Histogram)>>,
}

impl RequestMetrics {
    /// The process-wide table, made at the first request (after `main` installed a recorder).
    pub fn get() -> &'static RequestMetrics {
        static TABLE: OnceLock<RequestMetrics> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut by_key = Vec::new();
            for &(key, _, _) in crate::api::SUPPORTED_APIS {
                let index = usize::try_from(key as i16).unwrap_or(0);
                if by_key.len() <= index {
                    by_key.resize_with(index + 1, || None);
                }
                let name = format!("{key:?}");
                by_key[index] = Some((
                    counter!("kafka_network_requestmetrics_requests_total", "request" => name.clone()),
                    histogram!("kafka_network_requestmetrics_totaltime_seconds", "request" => name),
                ));
            }
            RequestMetrics { by_key }
        })
    }

    pub fn record(&self, api_key: i16, elapsed: Duration) {
        if let Some(Some((count, time))) = usize::try_from(api_key).ok().and_then(|i| self.by_key.get(i)) {
            count.increment(1);
            time.record(elapsed.as_secs_f64());
        }
    }
}

/// fdatasync of one partition's log by the flusher (Kafka's `LogFlushRateAndTimeMs`).
pub(crate) fn log_flush_time() -> &'static Histogram {
    static H: OnceLock<Histogram> = OnceLock::new();
    H.get_or_init(|| histogram!("kafka_log_logflushstats_logflush_seconds"))
}

/// How long a dirty partition waited for its fsync to start (the round before it running):
/// with `kafka_log_logflushstats_logflush_seconds`, the flusher's share of acks=all latency.
pub(crate) fn log_flush_wait_time() -> &'static Histogram {
    static H: OnceLock<Histogram> = OnceLock::new();
    H.get_or_init(|| histogram!("spate_log_flush_wait_seconds"))
}

/// ISR changes this broker proposed as a leader (Kafka's `IsrShrinksPerSec`/`IsrExpandsPerSec`).
pub(crate) fn isr_change(shrink: bool) {
    let (shrinks, expands) = isr_counters();
    if shrink {
        shrinks.increment(1)
    } else {
        expands.increment(1)
    }
}

fn isr_counters() -> &'static (Counter, Counter) {
    static C: OnceLock<(Counter, Counter)> = OnceLock::new();
    C.get_or_init(|| {
        (
            counter!("kafka_server_replicamanager_isrshrinks_total"),
            counter!("kafka_server_replicamanager_isrexpands_total"),
        )
    })
}

impl Broker {
    /// Sets the gauges from the broker's current state; the metrics endpoint calls it before
    /// rendering each scrape, so gauges cost nothing between scrapes.
    pub fn refresh_metrics(&self) {
        // Registered (at zero) before anything happens, so dashboards see them from the start.
        let _ = (isr_counters(), log_flush_time(), log_flush_wait_time(), RequestMetrics::get());
        let image = self.image();
        let node = self.config.node_id;
        let (mut partitions, mut leaders, mut under_replicated, mut under_min_isr) = (0u64, 0u64, 0u64, 0u64);
        for topic in self.all_topics() {
            let min_isr = topic.configs.min_insync_replicas(&self.config);
            for p in topic.local_partitions() {
                partitions += 1;
                let offsets = p.offsets();
                let labels = [("topic", p.tp.topic.clone()), ("partition", p.tp.partition.to_string())];
                gauge!("kafka_log_log_size", &labels).set(p.size_bytes() as f64);
                gauge!("kafka_log_log_logstartoffset", &labels).set(offsets.log_start_offset as f64);
                gauge!("kafka_log_log_logendoffset", &labels).set(offsets.log_end_offset as f64);
                gauge!("kafka_cluster_partition_highwatermark", &labels).set(offsets.high_watermark as f64);
                if p.is_leader() {
                    leaders += 1;
                    let (isr, replicas) = image
                        .partition(&p.tp.topic, p.tp.partition)
                        .map_or((0, 0), |ip| (ip.isr.len(), ip.replicas.len()));
                    let under = isr < replicas;
                    under_replicated += u64::from(under);
                    under_min_isr += u64::from(isr < min_isr);
                    gauge!("kafka_cluster_partition_underreplicated", &labels).set(f64::from(u8::from(under)));
                }
            }
        }
        gauge!("kafka_server_replicamanager_partitioncount").set(partitions as f64);
        gauge!("kafka_server_replicamanager_leadercount").set(leaders as f64);
        gauge!("kafka_server_replicamanager_underreplicatedpartitions").set(under_replicated as f64);
        gauge!("kafka_server_replicamanager_underminisrpartitioncount").set(under_min_isr as f64);
        // Cluster-wide, from the metadata image (Kafka reports it on the active controller).
        let offline = image.topics.values().flat_map(|t| &t.partitions).filter(|p| !p.has_leader()).count();
        gauge!("kafka_controller_kafkacontroller_offlinepartitionscount").set(offline as f64);
        gauge!("kafka_controller_kafkacontroller_activebrokercount").set(image.live_brokers().count() as f64);
        let is_controller = self.controller.leader_id() == Some(node);
        gauge!("kafka_controller_kafkacontroller_activecontrollercount").set(f64::from(u8::from(is_controller)));
        // Consumer groups this broker coordinates: committed offsets, and the lag where this
        // broker also leads the partition (elsewhere: its leader's high watermark minus this).
        for (group, topic, partition, committed) in self.groups.committed_offsets() {
            let labels = [("consumergroup", group), ("topic", topic.clone()), ("partition", partition.to_string())];
            gauge!("kafka_consumergroup_current_offset", &labels).set(committed as f64);
            if let Some(p) = self.partition(&topic, partition).filter(|p| p.is_leader()) {
                let lag = (p.high_watermark() - committed).max(0);
                gauge!("kafka_consumergroup_lag", &labels).set(lag as f64);
            }
        }
    }
}
