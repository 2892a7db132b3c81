//! The checkpoint file of a task: for each changelog partition, the offset up to which the local
//! stores reflect it (Kafka's `.checkpoint`, `OffsetCheckpoint`). Restoration resumes from these
//! offsets; a task without a checkpoint restores its changelogs from the start.
//!
//! Format (Kafka's): a version line `0`, a count line, then one `topic partition offset` line per
//! changelog partition.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use crate::StreamsError;

/// The checkpoint file's name inside a task directory.
pub const CHECKPOINT_FILE_NAME: &str = ".checkpoint";

const VERSION: u32 = 0;

/// Changelog offsets, keyed by (changelog topic, partition) (Kafka's `TopicPartition`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next offset to restore from, per changelog partition.
    pub offsets: BTreeMap<(String, i32), i64>,
}

/// Reads a checkpoint file. A missing file is `Ok(None)`; one that does not parse is
/// [`StreamsError::CorruptCheckpoint`] (delete the task directory to restore from the changelog).
pub fn read(path: &Path) -> Result<Option<Checkpoint>, StreamsError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StreamsError::state_directory(path, "read checkpoint", e)),
    };
    parse(&text)
        .map(Some)
        .map_err(|reason| StreamsError::CorruptCheckpoint { path: path.display().to_string(), reason })
}

fn parse(bytes: &[u8]) -> Result<Checkpoint, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let mut lines = text.lines();
    let version = lines.next().ok_or("empty file")?;
    if version.trim() != VERSION.to_string() {
        return Err(format!("unknown version {version:?}"));
    }
    let count_line = lines.next().ok_or("no count line")?;
    let count: usize = count_line.trim().parse().map_err(|_| format!("bad count line {count_line:?}"))?;
    let mut offsets = BTreeMap::new();
    for i in 0..count {
        let line = lines.next().ok_or_else(|| format!("{count} entries announced, {i} present"))?;
        let bad = || format!("bad entry line {line:?}");
        let mut fields = line.split_whitespace();
        let (Some(topic), Some(partition), Some(offset), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        let offset: i64 = offset.parse().map_err(|_| bad())?;
        if offsets.insert((topic.to_owned(), partition), offset).is_some() {
            return Err(format!("{topic}-{partition} appears twice"));
        }
    }
    if let Some(extra) = lines.find(|l| !l.trim().is_empty()) {
        return Err(format!("line {extra:?} after the {count} announced entries"));
    }
    Ok(Checkpoint { offsets })
}

/// Writes a checkpoint file atomically: a temporary file beside it, fsynced, renamed over it,
/// then the directory fsynced, so a crash leaves the old file or the new one, never a mix.
pub fn write(path: &Path, checkpoint: &Checkpoint) -> Result<(), StreamsError> {
    let mut text = format!("{VERSION}\n{}\n", checkpoint.offsets.len());
    for ((topic, partition), offset) in &checkpoint.offsets {
        // A topic name with whitespace would not read back; Kafka topic names never have any.
        if topic.is_empty() || topic.chars().any(char::is_whitespace) {
            return Err(StreamsError::state_directory(
                path,
                "write checkpoint",
                format!("changelog topic name {topic:?} is empty or has whitespace"),
            ));
        }
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let io = |op: &'static str| move |e: std::io::Error| StreamsError::state_directory(path, op, e);
    let mut file = File::create(&tmp).map_err(io("create checkpoint"))?;
    file.write_all(text.as_bytes()).map_err(io("write checkpoint"))?;
    file.sync_all().map_err(io("fsync checkpoint"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename checkpoint"))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync checkpoint directory"))
}

/// Deletes a checkpoint file (missing is fine), durably: under exactly-once a task's stores
/// run ahead of what is committed, so no checkpoint may vouch for them until the next clean
/// close writes one (Kafka deletes the checkpoint once it is read, under EOS).
pub fn delete(path: &Path) -> Result<(), StreamsError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StreamsError::state_directory(path, "delete checkpoint", e)),
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StreamsError::state_directory(path, "fsync checkpoint directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&dir.path().join(CHECKPOINT_FILE_NAME)).unwrap(), None);
    }

    #[test]
    fn kafka_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE_NAME);
        let mut cp = Checkpoint::default();
        cp.offsets.insert(("app-store-changelog".into(), 3), 42);
        write(&path, &cp).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n1\napp-store-changelog 3 42\n");
        assert!(!dir.path().join(".checkpoint.tmp").exists());
    }

    #[test]
    fn corrupt_files_say_delete_the_task_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE_NAME);
        for bad in [
            &b""[..],
            b"1\n0\n",
            b"0\n2\nt 0 1\n",
            b"0\n1\nt x 1\n",
            b"0\n1\nt 0 1 extra\n",
            b"0\n1\nt 0 1\nu 0 1\n",
            b"0\n2\nt 0 1\nt 0 2\n",
            b"0\n99999999999999999999999\n",
            b"\xff\xfe",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = read(&path).unwrap_err();
            assert!(matches!(err, StreamsError::CorruptCheckpoint { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("delete the task directory"), "{err}");
        }
    }

    #[test]
    fn whitespace_topic_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::default();
        cp.offsets.insert(("a b".into(), 0), 1);
        assert!(write(&dir.path().join(CHECKPOINT_FILE_NAME), &cp).is_err());
    }

    proptest! {
        // Each case fsyncs twice; a few dozen cases cover the format.
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn round_trip(entries in proptest::collection::btree_map(("[a-zA-Z0-9._-]{1,20}", any::<i32>()), any::<i64>(), 0..20)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(CHECKPOINT_FILE_NAME);
            let cp = Checkpoint { offsets: entries };
            write(&path, &cp).unwrap();
            prop_assert_eq!(read(&path).unwrap(), Some(cp.clone()));
            // Overwriting replaces it whole.
            write(&path, &Checkpoint::default()).unwrap();
            prop_assert_eq!(read(&path).unwrap(), Some(Checkpoint::default()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
