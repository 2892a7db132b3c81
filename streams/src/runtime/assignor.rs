//! The streams task assignor (a simpler Kafka `StreamsPartitionAssignor`): the group leader
//! assigns whole tasks (sub-topology × partition, i.e. partition p of every input topic of a
//! sub-topology together), balanced by count, sticky to the member that ran the task before and
//! otherwise preferring a member whose state directory already holds the task's state, so that
//! a rebalance moves as little state as it can.
//!
//! Each member's subscription `user_data`: version (1 byte, 1), then two task lists (the tasks
//! it runs now, then the tasks with a checkpoint in its state directory), each a count (4 bytes
//! BE) and `(sub-topology 4 bytes BE, partition 4 bytes BE)` pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use spate_client::consumer::{GroupMember, PartitionAssignor};
use spate_client::TopicPartition;

use crate::store::lock;
use crate::TaskId;

/// The protocol name, as Kafka Streams names its assignor's.
pub(crate) const PROTOCOL: &str = "stream";
const VERSION: u8 = 1;
/// Most tasks a member's user data may list (bounds what a peer's bytes make us allocate).
const MAX_TASKS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct StreamsAssignor {
    /// Each sub-topology's input topics (resolved names), by sub-topology id.
    subtopologies: Vec<(u32, Vec<String>)>,
    /// `state.dir/<application.id>`: task directories with a checkpoint hold state.
    app_dir: PathBuf,
    /// The tasks this member runs now (kept up to date by its stream thread).
    active: Mutex<BTreeSet<TaskId>>,
}

impl StreamsAssignor {
    pub(crate) fn new(subtopologies: Vec<(u32, Vec<String>)>, app_dir: PathBuf) -> Self {
        StreamsAssignor { subtopologies, app_dir, active: Mutex::new(BTreeSet::new()) }
    }

    pub(crate) fn set_active(&self, tasks: impl IntoIterator<Item = TaskId>) {
        *lock(&self.active) = tasks.into_iter().collect();
    }

    fn local_tasks(&self) -> BTreeSet<TaskId> {
        let Ok(entries) = std::fs::read_dir(&self.app_dir) else { return BTreeSet::new() };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(".checkpoint").exists())
            .filter_map(|e| parse_task_id(&e.file_name().to_string_lossy()))
            .collect()
    }
}

fn parse_task_id(name: &str) -> Option<TaskId> {
    let (st, p) = name.split_once('_')?;
    Some(TaskId { subtopology: st.parse().ok()?, partition: p.parse().ok()? })
}

fn encode(active: &BTreeSet<TaskId>, local: &BTreeSet<TaskId>) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + 8 * (active.len() + local.len()));
    b.put_u8(VERSION);
    for list in [active, local] {
        b.put_u32(list.len() as u32);
        for t in list {
            b.put_u32(t.subtopology);
            b.put_i32(t.partition);
        }
    }
    b.freeze()
}

/// Decodes a member's user data; anything malformed reads as "no tasks" (the member then just
/// gets no stickiness).
fn decode(bytes: Option<&[u8]>) -> (BTreeSet<TaskId>, BTreeSet<TaskId>) {
    let mut out = (BTreeSet::new(), BTreeSet::new());
    let Some(mut b) = bytes else { return out };
    let take = |n: usize, b: &mut &[u8]| -> Option<Vec<u8>> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head.to_vec())
    };
    let parsed = (|| {
        if take(1, &mut b)?[0] != VERSION {
            return None;
        }
        let mut lists = [BTreeSet::new(), BTreeSet::new()];
        for list in &mut lists {
            let n = u32::from_be_bytes(take(4, &mut b)?.try_into().ok()?) as usize;
            if n > MAX_TASKS || n * 8 > b.len() {
                return None;
            }
            for _ in 0..n {
                let st = u32::from_be_bytes(take(4, &mut b)?.try_into().ok()?);
                let p = i32::from_be_bytes(take(4, &mut b)?.try_into().ok()?);
                list.insert(TaskId { subtopology: st, partition: p });
            }
        }
        let [a, l] = lists;
        Some((a, l))
    })();
    if let Some(p) = parsed {
        out = p;
    }
    out
}

impl PartitionAssignor for StreamsAssignor {
    fn name(&self) -> &str {
        PROTOCOL
    }

    fn subscription_user_data(&self) -> Option<Bytes> {
        Some(encode(&lock(&self.active), &self.local_tasks()))
    }

    fn assign(
        &self,
        partitions_per_topic: &BTreeMap<String, i32>,
        members: &[GroupMember],
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut tasks: Vec<TaskId> = Vec::new();
        for (st, topics) in &self.subtopologies {
            // A sub-topology's inputs are co-partitioned (checked at start); one missing topic
            // means its tasks cannot run yet.
            let Some(n) = topics.iter().map(|t| partitions_per_topic.get(t).copied()).min().flatten() else {
                continue;
            };
            tasks.extend((0..n).map(|p| TaskId { subtopology: *st, partition: p }));
        }
        let assignment = assign_tasks(&tasks, members);
        let mut out: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
        for m in members {
            let mut partitions = Vec::new();
            for task in assignment.get(&m.member_id).into_iter().flatten() {
                let topics = self.subtopologies.iter().find(|(st, _)| *st == task.subtopology).map(|(_, t)| t);
                for topic in topics.into_iter().flatten() {
                    if partitions_per_topic.get(topic).is_some_and(|n| task.partition < *n) {
                        partitions.push(TopicPartition::new(topic.clone(), task.partition));
                    }
                }
            }
            partitions.sort();
            out.insert(m.member_id.clone(), partitions);
        }
        out
    }
}

/// Balanced, sticky: each member keeps up to `ceil(tasks / members)` of the tasks it ran; the
/// rest go first to members holding their state, then to the least loaded.
fn assign_tasks(tasks: &[TaskId], members: &[GroupMember]) -> BTreeMap<String, Vec<TaskId>> {
    let mut out: BTreeMap<String, Vec<TaskId>> = members.iter().map(|m| (m.member_id.clone(), Vec::new())).collect();
    if members.is_empty() {
        return out;
    }
    let target = tasks.len().div_ceil(members.len());
    let info: BTreeMap<&str, (BTreeSet<TaskId>, BTreeSet<TaskId>)> =
        members.iter().map(|m| (m.member_id.as_str(), decode(m.subscription.user_data.as_deref()))).collect();
    let mut unassigned: BTreeSet<TaskId> = tasks.iter().copied().collect();
    for (member, (active, _)) in &info {
        for task in active {
            if out[*member].len() >= target {
                break;
            }
            if unassigned.remove(task) {
                out.get_mut(*member).expect("listed").push(*task);
            }
        }
    }
    for task in unassigned.clone() {
        let holder = info
            .iter()
            .filter(|(m, (_, local))| local.contains(&task) && out[**m].len() < target)
            .min_by_key(|(m, _)| out[**m].len())
            .map(|(m, _)| m.to_string());
        if let Some(m) = holder {
            unassigned.remove(&task);
            out.get_mut(&m).expect("listed").push(task);
        }
    }
    for task in unassigned {
        let m = out.iter().min_by_key(|(m, t)| (t.len(), (*m).clone())).map(|(m, _)| m.clone()).expect("members exist");
        out.get_mut(&m).expect("listed").push(task);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_client::consumer::Subscription;

    fn member(id: &str, active: &[(u32, i32)], local: &[(u32, i32)]) -> GroupMember {
        let set = |l: &[(u32, i32)]| l.iter().map(|&(s, p)| TaskId { subtopology: s, partition: p }).collect();
        GroupMember {
            member_id: id.into(),
            group_instance_id: None,
            subscription: Subscription {
                user_data: Some(encode(&set(active), &set(local))),
                ..Subscription::default()
            },
        }
    }

    fn tasks(n: i32) -> Vec<TaskId> {
        (0..n).map(|p| TaskId { subtopology: 0, partition: p }).collect()
    }

    #[test]
    fn a_new_member_takes_tasks_without_moving_the_others_more_than_needed() {
        let a = member("a", &[(0, 0), (0, 1), (0, 2)], &[]);
        let b = member("b", &[(0, 3), (0, 4), (0, 5)], &[]);
        let c = member("c", &[], &[]);
        let out = assign_tasks(&tasks(6), &[a, b, c]);
        assert_eq!(out["a"].len(), 2);
        assert_eq!(out["b"].len(), 2);
        assert_eq!(out["c"].len(), 2);
        assert!(out["a"].iter().all(|t| t.partition <= 2));
        assert!(out["b"].iter().all(|t| t.partition >= 3));
    }

    #[test]
    fn a_lost_members_tasks_go_where_their_state_is() {
        let a = member("a", &[(0, 0)], &[(0, 0), (0, 2)]);
        let b = member("b", &[(0, 1)], &[(0, 1), (0, 3)]);
        let out = assign_tasks(&tasks(4), &[a, b]);
        assert_eq!(out["a"], vec![TaskId { subtopology: 0, partition: 0 }, TaskId { subtopology: 0, partition: 2 }]);
        assert_eq!(out["b"], vec![TaskId { subtopology: 0, partition: 1 }, TaskId { subtopology: 0, partition: 3 }]);
    }

    #[test]
    fn malformed_user_data_is_no_stickiness_not_a_failure() {
        let mut m = member("a", &[], &[]);
        m.subscription.user_data = Some(Bytes::from_static(&[1, 0xff, 0xff, 0xff, 0xff]));
        let out = assign_tasks(&tasks(3), &[m]);
        assert_eq!(out["a"].len(), 3);
    }

    #[test]
    fn every_task_is_assigned_once_and_balanced() {
        for n_members in 1..5 {
            for n_tasks in 0..13 {
                let members: Vec<GroupMember> = (0..n_members).map(|i| member(&format!("m{i}"), &[], &[])).collect();
                let out = assign_tasks(&tasks(n_tasks), &members);
                let all: Vec<TaskId> = out.values().flatten().copied().collect();
                let unique: BTreeSet<TaskId> = all.iter().copied().collect();
                assert_eq!(all.len(), n_tasks as usize);
                assert_eq!(unique.len(), n_tasks as usize);
                let (min, max) = (out.values().map(Vec::len).min().unwrap(), out.values().map(Vec::len).max().unwrap());
                assert!(max - min <= 1, "{out:?}");
            }
        }
    }
}
