//! Kafka Connect's group protocol, version 0 (`default`, eager): what a worker tells the
//! leader in JoinGroup (its REST URL and how far it has read the config topic) and what the
//! leader hands each worker in SyncGroup (its connectors and tasks). Layouts follow Kafka's
//! `ConnectProtocol` so the bytes on the broker look like Kafka Connect's; decoding checks every
//! length against what is left.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol name in JoinGroup.
pub const PROTOCOL_NAME: &str = "default";
/// The group protocol type.
pub const PROTOCOL_TYPE: &str = "connect";
/// In an assignment's task list, the connector instance itself (Kafka's `CONNECTOR_TASK`).
pub const CONNECTOR_TASK: i32 = -1;
/// Assignment error: none.
pub const NO_ERROR: i16 = 0;
/// Assignment error: the leader's config is behind a member's; everyone rereads and rejoins.
pub const CONFIG_MISMATCH: i16 = 1;

/// A worker's JoinGroup metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerState {
    pub url: String,
    pub config_offset: i64,
}

/// The leader's answer to one worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    pub error: i16,
    pub leader: String,
    pub leader_url: String,
    pub config_offset: i64,
    /// `(connector, task ids)`; [`CONNECTOR_TASK`] stands for the connector instance.
    pub assignment: Vec<(String, Vec<i32>)>,
}

impl Assignment {
    /// The connectors this worker runs.
    pub fn connectors(&self) -> impl Iterator<Item = &str> {
        self.assignment.iter().filter(|(_, t)| t.contains(&CONNECTOR_TASK)).map(|(c, _)| c.as_str())
    }

    /// The tasks this worker runs.
    pub fn tasks(&self) -> impl Iterator<Item = (&str, u32)> {
        self.assignment.iter().flat_map(|(c, t)| t.iter().filter(|&&t| t >= 0).map(move |&t| (c.as_str(), t as u32)))
    }
}

/// Upper bounds on decoded counts: a corrupt or hostile member cannot make us allocate more.
const MAX_ENTRIES: usize = 100_000;

fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_i16(s.len().min(i16::MAX as usize) as i16);
    buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn get_string(buf: &mut &[u8]) -> Result<String, String> {
    if buf.remaining() < 2 {
        return Err("truncated string length".into());
    }
    let len = buf.get_i16();
    if len < 0 {
        return Ok(String::new());
    }
    let len = len as usize;
    if buf.remaining() < len {
        return Err(format!("string of {len} bytes with {} left", buf.remaining()));
    }
    let s = std::str::from_utf8(&buf[..len]).map_err(|_| "string is not UTF-8".to_owned())?.to_owned();
    buf.advance(len);
    Ok(s)
}

fn get_count(buf: &mut &[u8]) -> Result<usize, String> {
    if buf.remaining() < 4 {
        return Err("truncated array length".into());
    }
    let n = buf.get_i32();
    if n < 0 {
        return Ok(0);
    }
    let n = n as usize;
    if n > MAX_ENTRIES {
        return Err(format!("array of {n} entries is above the limit {MAX_ENTRIES}"));
    }
    Ok(n)
}

/// Encodes JoinGroup metadata.
pub fn encode_worker_state(s: &WorkerState) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    put_string(&mut buf, &s.url);
    buf.put_i64(s.config_offset);
    buf.freeze()
}

/// Decodes JoinGroup metadata.
pub fn decode_worker_state(mut buf: &[u8]) -> Result<WorkerState, String> {
    if buf.remaining() < 2 {
        return Err("truncated version".into());
    }
    let _version = buf.get_i16();
    let url = get_string(&mut buf)?;
    if buf.remaining() < 8 {
        return Err("truncated config offset".into());
    }
    Ok(WorkerState { url, config_offset: buf.get_i64() })
}

/// Encodes an assignment.
pub fn encode_assignment(a: &Assignment) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i16(a.error);
    put_string(&mut buf, &a.leader);
    put_string(&mut buf, &a.leader_url);
    buf.put_i64(a.config_offset);
    buf.put_i32(a.assignment.len() as i32);
    for (connector, tasks) in &a.assignment {
        put_string(&mut buf, connector);
        buf.put_i32(tasks.len() as i32);
        for t in tasks {
            buf.put_i32(*t);
        }
    }
    buf.freeze()
}

/// Decodes an assignment.
pub fn decode_assignment(mut buf: &[u8]) -> Result<Assignment, String> {
    if buf.remaining() < 4 {
        return Err("truncated header".into());
    }
    let _version = buf.get_i16();
    let error = buf.get_i16();
    let leader = get_string(&mut buf)?;
    let leader_url = get_string(&mut buf)?;
    if buf.remaining() < 8 {
        return Err("truncated config offset".into());
    }
    let config_offset = buf.get_i64();
    let n = get_count(&mut buf)?;
    let mut assignment = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let connector = get_string(&mut buf)?;
        let m = get_count(&mut buf)?;
        if buf.remaining() < m * 4 {
            return Err("truncated task list".into());
        }
        let tasks = (0..m).map(|_| buf.get_i32()).collect();
        assignment.push((connector, tasks));
    }
    Ok(Assignment { error, leader, leader_url, config_offset, assignment })
}

/// The eager round-robin assignment (Kafka's `EagerAssignor`): connector instances first, then
/// tasks, dealt over the members sorted by id, continuing the same cycle. `units` lists
/// `(connector, task count)` for connectors that should run (stopped ones have none).
pub fn assign_round_robin(
    members: &[String],
    units: &[(String, u32)],
    leader: &str,
    leader_url: &str,
    config_offset: i64,
) -> Vec<(String, Assignment)> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    let mut per_member: Vec<std::collections::BTreeMap<String, Vec<i32>>> = vec![Default::default(); sorted.len()];
    if !sorted.is_empty() {
        let mut next = 0usize;
        for (connector, _) in units {
            per_member[next % sorted.len()].entry(connector.clone()).or_default().push(CONNECTOR_TASK);
            next += 1;
        }
        for (connector, tasks) in units {
            for t in 0..*tasks {
                per_member[next % sorted.len()].entry(connector.clone()).or_default().push(t as i32);
                next += 1;
            }
        }
    }
    sorted
        .into_iter()
        .zip(per_member)
        .map(|(m, a)| {
            (
                m.clone(),
                Assignment {
                    error: NO_ERROR,
                    leader: leader.to_owned(),
                    leader_url: leader_url.to_owned(),
                    config_offset,
                    assignment: a.into_iter().collect(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_robin_spreads_connectors_then_tasks() {
        let members = vec!["w2".to_owned(), "w1".to_owned()];
        let units = vec![("a".to_owned(), 3), ("b".to_owned(), 1)];
        let out = assign_round_robin(&members, &units, "w1", "http://w1", 7);
        assert_eq!(out[0].0, "w1");
        let w1 = &out[0].1;
        let w2 = &out[1].1;
        assert_eq!(w1.connectors().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(w2.connectors().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(w1.tasks().count() + w2.tasks().count(), 4);
        assert_eq!(w1.tasks().count(), 2);
        let back = decode_assignment(&encode_assignment(w1)).unwrap();
        assert_eq!(&back, w1);
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_assignment(&bytes);
            let _ = decode_worker_state(&bytes);
        }

        #[test]
        fn worker_state_round_trips(url in "[a-z:/0-9.]{0,40}", offset in any::<i64>()) {
            let s = WorkerState { url, config_offset: offset };
            prop_assert_eq!(decode_worker_state(&encode_worker_state(&s)).unwrap(), s);
        }
    }
}
