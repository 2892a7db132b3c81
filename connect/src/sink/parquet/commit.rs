//! The exactly-once file protocol of one Kafka partition.
//!
//! A *group* is every file of one Kafka partition written since the last rotation (one per
//! encoded partition directory). Committing it:
//!
//! 1. each file is closed and fsynced under its hidden temp name (`.<final name>.tmp`: starts
//!    with `.`, does not end in `.parquet`, so no reader's glob sees it);
//! 2. the partition's manifest (`<topics.dir>/<topic>/.spate-manifest+<topic>+<partition>`) is
//!    replaced atomically (temp + fsync + rename + directory fsync) with the list of
//!    temp → final renames and the offset after the group's last record;
//! 3. the renames are done, then every directory touched is fsynced;
//! 4. only then does `pre_commit` offer that offset to the consumer group.
//!
//! Recovery ([`recover`], from `open`) redoes the manifest's renames whose temp file still
//! exists, deletes every other temp file of the partition, and returns the manifest's offset
//! as the place to resume. The manifest's offset is never behind the committed one (step 2
//! precedes step 4), so resuming there writes every offset into exactly one visible file,
//! whatever instant a kill -9 hit, and a temp file becomes visible at most once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::writer::Storage;

/// Suffix of files being written.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// The most bytes read from a manifest (it lists one rename per open directory).
const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;

/// What a partition's last group committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// The offset after the group's last record: where the partition resumes (`None`: no
    /// group committed yet; the manifest only lists `topic_dirs`).
    pub next_offset: Option<i64>,
    /// `[temp, final]` paths relative to the sink's `path`, still to be done if the temp exists.
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// Topics other than the source one (renamed by a transform) whose directories may hold
    /// this partition's temp files: recovery looks there too. Written before the first file
    /// goes there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic_dirs: Vec<String>,
}

/// The directory of a topic's files.
pub(crate) fn topic_dir(topics_dir: &str, topic: &str) -> PathBuf {
    Path::new(topics_dir).join(topic)
}

/// Where a partition's manifest lives.
pub(crate) fn manifest_path(topics_dir: &str, topic: &str, partition: i32) -> PathBuf {
    topic_dir(topics_dir, topic).join(format!(".spate-manifest+{topic}+{partition}"))
}

/// The final name of a data file: `<topic>+<partition>+<start offset, zero-padded>.parquet`.
pub(crate) fn file_name(topic: &str, partition: i32, start_offset: i64, pad_width: usize) -> String {
    format!("{topic}+{partition}+{start_offset:0pad_width$}.parquet")
}

/// The temp name of a data file.
pub(crate) fn temp_name(final_name: &str) -> String {
    format!(".{final_name}{TEMP_SUFFIX}")
}

fn is_temp_of(name: &str, topic: &str, partition: i32) -> bool {
    name.ends_with(TEMP_SUFFIX)
        && name.strip_prefix('.').and_then(|n| n.strip_prefix(topic)).is_some_and(|n| {
            n.strip_prefix('+')
                .and_then(|n| n.strip_prefix(partition.to_string().as_str()))
                .is_some_and(|n| n.starts_with('+'))
        })
}

/// Every directory from `path`'s parent up to the root: new directories are durable only once
/// their parents are synced.
fn dirs_up(path: &Path, out: &mut BTreeSet<PathBuf>) {
    let mut d = path.parent();
    while let Some(dir) = d {
        out.insert(dir.to_path_buf());
        d = dir.parent();
    }
}

/// Writes `bytes` at `path` atomically and durably.
fn write_atomic(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!("{name}{TEMP_SUFFIX}"));
    let mut f = storage.create(&temp)?;
    f.write_all(bytes)?;
    f.sync()?;
    drop(f);
    storage.rename(&temp, path)?;
    let mut dirs = BTreeSet::new();
    dirs_up(path, &mut dirs);
    for d in dirs.iter().rev() {
        storage.sync_dir(d)?;
    }
    Ok(())
}

/// Steps 2 and 3 for files already closed and fsynced under their temp names.
pub(crate) fn commit_group(
    storage: &dyn Storage,
    manifest: &Path,
    renames: Vec<(PathBuf, PathBuf)>,
    next_offset: i64,
    topic_dirs: &[String],
) -> std::io::Result<()> {
    // The temp files' directories (new encoded-partition chains included) are durable before
    // a manifest lists them: otherwise a power loss could keep the manifest and lose a temp
    // file whose rename recovery then cannot redo.
    let mut dirs = BTreeSet::new();
    for (temp, _) in &renames {
        dirs_up(temp, &mut dirs);
    }
    for d in dirs.iter().rev() {
        storage.sync_dir(d)?;
    }
    let m = Manifest { next_offset: Some(next_offset), renames, topic_dirs: topic_dirs.to_vec() };
    write_atomic(storage, manifest, &serde_json::to_vec(&m).map_err(std::io::Error::other)?)?;
    apply_renames(storage, &m.renames, true)
}

/// `strict` (the normal commit path): a listed temp file that is missing is an error, not
/// a rename already done (only recovery may find one done).
fn apply_renames(storage: &dyn Storage, renames: &[(PathBuf, PathBuf)], strict: bool) -> std::io::Result<()> {
    let mut dirs = BTreeSet::new();
    for (temp, target) in renames {
        if storage.exists(temp) {
            storage.rename(temp, target)?;
        } else if strict {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} vanished before its commit", temp.display()),
            ));
        }
        dirs_up(target, &mut dirs);
    }
    // Deepest first: a new directory's entry in its parent is synced after its own contents.
    for d in dirs.iter().rev() {
        storage.sync_dir(d)?;
    }
    Ok(())
}

/// Records that a partition moved on without writing files (tombstones, dead-lettered
/// records): the manifest's offset advances so a restart does not go back before it.
pub(crate) fn advance(
    storage: &dyn Storage,
    manifest: &Path,
    next_offset: Option<i64>,
    topic_dirs: &[String],
) -> std::io::Result<()> {
    let m = Manifest { next_offset, renames: Vec::new(), topic_dirs: topic_dirs.to_vec() };
    write_atomic(storage, manifest, &serde_json::to_vec(&m).map_err(std::io::Error::other)?)
}

/// What recovery found: where to resume (`None`: never committed a group here) and the
/// renamed topics' directories the partition wrote to.
pub(crate) type Recovered = (Option<i64>, Vec<String>);

/// Recovery of one partition (see the module docs).
pub(crate) fn recover(
    storage: &dyn Storage,
    topics_dir: &str,
    topic: &str,
    partition: i32,
) -> Result<Recovered, String> {
    let mpath = manifest_path(topics_dir, topic, partition);
    let manifest = match storage.read(&mpath).map_err(|e| format!("reading {}: {e}", mpath.display()))? {
        None => None,
        Some(bytes) if bytes.len() > MAX_MANIFEST_BYTES => {
            return Err(format!("{} is over {MAX_MANIFEST_BYTES} bytes", mpath.display()))
        }
        Some(bytes) => Some(serde_json::from_slice::<Manifest>(&bytes).map_err(|e| {
            format!("{} is corrupt ({e}); remove it to rewrite from the committed offsets", mpath.display())
        })?),
    };
    if let Some(m) = &manifest {
        if m.renames.iter().any(|(t, _)| storage.exists(t)) {
            apply_renames(storage, &m.renames, false)
                .map_err(|e| format!("redoing the renames of {}: {e}", mpath.display()))?;
        }
    }
    // Every temp file left is from a group that never reached its manifest: drop it.
    let topic_dirs: Vec<String> = manifest.as_ref().map(|m| m.topic_dirs.clone()).unwrap_or_default();
    let mut files = Vec::new();
    for t in std::iter::once(topic).chain(topic_dirs.iter().map(String::as_str)) {
        let dir = topic_dir(topics_dir, t);
        files.extend(storage.list_files(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))?);
    }
    let mut removed = BTreeSet::new();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if is_temp_of(&name, topic, partition) {
            storage.remove(&f).map_err(|e| format!("removing {}: {e}", f.display()))?;
            if let Some(d) = f.parent() {
                removed.insert(d.to_path_buf());
            }
        }
    }
    for d in removed {
        storage.sync_dir(&d).map_err(|e| format!("syncing {}: {e}", d.display()))?;
    }
    if let Some(m) = &manifest {
        if !m.renames.is_empty() {
            // Done: a later recovery must not look at these names again.
            advance(storage, &mpath, m.next_offset, &topic_dirs)
                .map_err(|e| format!("writing {}: {e}", mpath.display()))?;
        }
    }
    Ok((manifest.and_then(|m| m.next_offset), topic_dirs))
}

#[cfg(test)]
mod tests {
    use super::super::writer::LocalStorage;
    use super::*;

    #[test]
    fn names_and_temp_detection() {
        assert_eq!(file_name("t", 3, 42, 10), "t+3+0000000042.parquet");
        let tmp = temp_name(&file_name("t", 3, 42, 10));
        assert_eq!(tmp, ".t+3+0000000042.parquet.tmp");
        assert!(!tmp.ends_with(".parquet"));
        assert!(is_temp_of(&tmp, "t", 3));
        assert!(!is_temp_of(&tmp, "t", 31));
        assert!(!is_temp_of(&tmp, "t+3", 42));
        assert!(!is_temp_of(".t+30+0000000042.parquet.tmp", "t", 3));
        assert!(!is_temp_of("t+3+0000000042.parquet", "t", 3));
    }

    #[test]
    fn recover_redoes_listed_renames_and_drops_other_temps() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().to_path_buf());
        let a_tmp = PathBuf::from("topics/t/partition=0/.t+0+0000000000.parquet.tmp");
        let a = PathBuf::from("topics/t/partition=0/t+0+0000000000.parquet");
        let b_tmp = PathBuf::from("topics/t/x=1/.t+0+0000000000.parquet.tmp");
        let b = PathBuf::from("topics/t/x=1/t+0+0000000000.parquet");
        let stale = PathBuf::from("topics/t/x=1/.t+0+0000000100.parquet.tmp");
        let other_partition = PathBuf::from("topics/t/x=1/.t+1+0000000000.parquet.tmp");
        for p in [&a_tmp, &b_tmp, &stale, &other_partition] {
            s.create(p).unwrap().sync().unwrap();
        }
        // Killed after the manifest and the first rename.
        let m = Manifest {
            next_offset: Some(100),
            renames: vec![(a_tmp.clone(), a.clone()), (b_tmp.clone(), b.clone())],
            topic_dirs: Vec::new(),
        };
        write_atomic(&s, &manifest_path("topics", "t", 0), &serde_json::to_vec(&m).unwrap()).unwrap();
        s.rename(&a_tmp, &a).unwrap();
        assert_eq!(recover(&s, "topics", "t", 0).unwrap().0, Some(100));
        assert!(s.exists(&a) && s.exists(&b));
        assert!(!s.exists(&a_tmp) && !s.exists(&b_tmp) && !s.exists(&stale));
        assert!(s.exists(&other_partition), "another partition's temp file is not ours to drop");
        // The manifest no longer lists renames; a temp with a listed name is never renamed twice.
        s.create(&b_tmp).unwrap().sync().unwrap();
        assert_eq!(recover(&s, "topics", "t", 0).unwrap().0, Some(100));
        assert!(!s.exists(&b_tmp));
        assert_eq!(recover(&s, "topics", "t", 5).unwrap().0, None);
    }

    #[test]
    fn corrupt_manifest_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().to_path_buf());
        let p = manifest_path("topics", "t", 0);
        let mut f = s.create(&p).unwrap();
        f.write_all(b"{not json").unwrap();
        f.sync().unwrap();
        assert!(recover(&s, "topics", "t", 0).unwrap_err().contains("corrupt"));
    }
}
