//! The metadata log's records and how each one changes a [`MetadataImage`].
//!
//! Application is deterministic: no clock, no randomness, no I/O. Everything that needs a choice
//! (topic ids, replica placement, new leaders, the cluster id) is decided by the controller leader
//! and written into the record, so every node that applies the same log holds the same image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::{BrokerRegistration, MetadataImage, PartitionImage, TopicImage};

/// One change to the cluster metadata, as stored in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// Names the cluster; only the first one takes effect.
    SetClusterId {
        cluster_id: String,
    },
    /// Adds or replaces a broker's registration (a new incarnation replaces the old one).
    RegisterBroker {
        registration: BrokerRegistration,
    },
    FenceBroker {
        broker_id: i32,
    },
    /// Forgets a decommissioned broker's registration (and its dynamic configs).
    UnregisterBroker {
        broker_id: i32,
    },
    /// Replaces a broker's dynamic configs (empty: none left).
    BrokerConfigs {
        broker_id: i32,
        configs: BTreeMap<String, String>,
    },
    UnfenceBroker {
        broker_id: i32,
    },
    /// A new topic with its full assignment.
    CreateTopic {
        topic: TopicImage,
    },
    DeleteTopic {
        name: String,
    },
    /// Partitions appended to `name`, numbered from its current count.
    CreatePartitions {
        name: String,
        partitions: Vec<PartitionImage>,
    },
    /// Replaces the topic's config overrides.
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// The whole new state of one partition (leader, ISR, epochs).
    ChangePartition {
        topic: String,
        partition: i32,
        state: PartitionImage,
    },
    /// Producer ids `first_id .. first_id + count` now belong to `broker_id`.
    AllocateProducerIds {
        broker_id: i32,
        first_id: i64,
        count: i64,
    },
}

/// Applies one record. A record naming something that no longer exists changes nothing (the
/// leader only writes valid records, but a record must never be able to stop the state machine).
pub fn apply_record(image: &mut MetadataImage, record: &MetadataRecord) {
    match record {
        MetadataRecord::SetClusterId { cluster_id } => {
            if image.cluster_id.is_empty() {
                image.cluster_id.clone_from(cluster_id);
            }
        }
        MetadataRecord::RegisterBroker { registration } => {
            image.brokers.insert(registration.id, registration.clone());
        }
        MetadataRecord::FenceBroker { broker_id } => {
            if let Some(b) = image.brokers.get_mut(broker_id) {
                b.fenced = true;
            }
        }
        MetadataRecord::UnregisterBroker { broker_id } => {
            image.brokers.remove(broker_id);
            image.broker_configs.remove(broker_id);
        }
        MetadataRecord::BrokerConfigs { broker_id, configs } => {
            if configs.is_empty() {
                image.broker_configs.remove(broker_id);
            } else {
                image.broker_configs.insert(*broker_id, configs.clone());
            }
        }
        MetadataRecord::UnfenceBroker { broker_id } => {
            if let Some(b) = image.brokers.get_mut(broker_id) {
                b.fenced = false;
            }
        }
        MetadataRecord::CreateTopic { topic } => {
            image.topics.entry(topic.name.clone()).or_insert_with(|| topic.clone());
        }
        MetadataRecord::DeleteTopic { name } => {
            image.topics.remove(name);
        }
        MetadataRecord::CreatePartitions { name, partitions } => {
            if let Some(t) = image.topics.get_mut(name) {
                t.partitions.extend(partitions.iter().cloned());
            }
        }
        MetadataRecord::AlterTopicConfigs { name, configs } => {
            if let Some(t) = image.topics.get_mut(name) {
                t.configs.clone_from(configs);
            }
        }
        MetadataRecord::ChangePartition { topic, partition, state } => {
            let slot = usize::try_from(*partition)
                .ok()
                .and_then(|p| image.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(p)));
            if let Some(slot) = slot {
                *slot = state.clone();
            }
        }
        MetadataRecord::AllocateProducerIds { first_id, count, .. } => {
            // Monotone: a block is never handed out twice, even if records were reordered by a bug.
            let end = first_id.saturating_add(*count);
            image.next_producer_id = image.next_producer_id.max(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::types::NO_LEADER;
    use uuid::Uuid;

    fn partition(replicas: &[i32]) -> PartitionImage {
        PartitionImage {
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader: replicas[0],
            ..PartitionImage::default()
        }
    }

    #[test]
    fn records_apply_in_order_and_ignore_missing_targets() {
        let mut image = MetadataImage::default();
        let topic = TopicImage {
            name: "t".into(),
            id: Uuid::from_u128(7),
            configs: BTreeMap::new(),
            partitions: vec![partition(&[1, 2])],
        };
        apply_record(&mut image, &MetadataRecord::SetClusterId { cluster_id: "a".into() });
        apply_record(&mut image, &MetadataRecord::SetClusterId { cluster_id: "b".into() });
        assert_eq!(image.cluster_id, "a");
        apply_record(&mut image, &MetadataRecord::CreateTopic { topic: topic.clone() });
        apply_record(
            &mut image,
            &MetadataRecord::CreatePartitions { name: "t".into(), partitions: vec![partition(&[2, 1])] },
        );
        assert_eq!(image.topics["t"].partitions.len(), 2);
        let changed = PartitionImage { leader: NO_LEADER, leader_epoch: 1, partition_epoch: 1, ..partition(&[1, 2]) };
        apply_record(
            &mut image,
            &MetadataRecord::ChangePartition { topic: "t".into(), partition: 0, state: changed.clone() },
        );
        assert_eq!(image.partition("t", 0), Some(&changed));
        // Targets that do not exist change nothing.
        let before = image.clone();
        apply_record(
            &mut image,
            &MetadataRecord::ChangePartition { topic: "t".into(), partition: 9, state: changed.clone() },
        );
        apply_record(&mut image, &MetadataRecord::FenceBroker { broker_id: 42 });
        apply_record(&mut image, &MetadataRecord::AlterTopicConfigs { name: "x".into(), configs: BTreeMap::new() });
        assert_eq!(image, before);
        apply_record(&mut image, &MetadataRecord::AllocateProducerIds { broker_id: 1, first_id: 0, count: 10 });
        apply_record(&mut image, &MetadataRecord::AllocateProducerIds { broker_id: 1, first_id: 0, count: 5 });
        assert_eq!(image.next_producer_id, 10);
        apply_record(&mut image, &MetadataRecord::DeleteTopic { name: "t".into() });
        assert!(image.topics.is_empty());
    }
}
