//! The per-partition checkpoint file (recovery point and log start offset) and the atomic
//! file replace it, and the broker's other metadata files, are written with.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::LogError;

pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_VERSION_LINE: &str = "spate-log-checkpoint 1";
/// A checkpoint is three short lines; anything longer is not one of ours.
const CHECKPOINT_MAX_BYTES: u64 = 4096;

/// What survives a restart besides the segments themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Every batch below this offset was fsynced; recovery trusts it without checking CRCs.
    pub recovery_point: i64,
    pub log_start_offset: i64,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{CHECKPOINT_VERSION_LINE}\nrecovery_point {}\nlog_start_offset {}\n",
            self.recovery_point, self.log_start_offset
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != CHECKPOINT_VERSION_LINE {
            return None;
        }
        let mut field = |name: &str| -> Option<i64> {
            let value = lines.next()?.strip_prefix(name)?.strip_prefix(' ')?;
            value.parse().ok().filter(|v: &i64| *v >= 0)
        };
        let recovery_point = field("recovery_point")?;
        let log_start_offset = field("log_start_offset")?;
        if lines.next().is_some() {
            return None;
        }
        Some(Checkpoint { recovery_point, log_start_offset })
    }

    /// Reads the checkpoint of the log in `dir`; a missing or unreadable one is `None`, which
    /// makes recovery check every batch.
    pub fn read(dir: &Path) -> Result<Option<Checkpoint>, LogError> {
        let path = dir.join(CHECKPOINT_FILE);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
            Ok(meta) if meta.len() > CHECKPOINT_MAX_BYTES => {
                tracing::warn!(path = %path.display(), bytes = meta.len(), "ignoring oversized log checkpoint");
                return Ok(None);
            }
            Ok(_) => {}
        }
        let bytes = fs::read(&path).map_err(|e| io_error(&path, e))?;
        let checkpoint = Checkpoint::decode(&bytes);
        if checkpoint.is_none() {
            tracing::warn!(path = %path.display(), "ignoring unreadable log checkpoint; recovering every segment");
        }
        Ok(checkpoint)
    }

    pub fn write(&self, dir: &Path) -> Result<(), LogError> {
        write_file_atomically(&dir.join(CHECKPOINT_FILE), &self.encode())
    }
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> LogError {
    LogError::Io { path: path.to_path_buf(), source }
}

/// Fsyncs a directory, making the creation, removal and renaming of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

/// Replaces `path` with `contents` so that a crash leaves either the old file or the new one,
/// never a mix: write `path.tmp`, fsync it, rename it over `path`, fsync the directory.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<(), LogError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file =
        OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(|e| io_error(&tmp, e))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| io_error(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_reject_garbage() {
        let checkpoint = Checkpoint { recovery_point: 42, log_start_offset: 7 };
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Some(checkpoint));
        assert_eq!(Checkpoint::decode(b""), None);
        assert_eq!(Checkpoint::decode(b"spate-log-checkpoint 1\nrecovery_point -1\nlog_start_offset 0\n"), None);
        assert_eq!(Checkpoint::decode(b"spate-log-checkpoint 1\nrecovery_point 1\n"), None);
        assert_eq!(Checkpoint::decode(&[0xff; 10]), None);
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        write_file_atomically(&path, b"one").unwrap();
        write_file_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn read_treats_a_missing_or_corrupt_checkpoint_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
        fs::write(dir.path().join(CHECKPOINT_FILE), b"garbage").unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
        let checkpoint = Checkpoint { recovery_point: 3, log_start_offset: 1 };
        checkpoint.write(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), Some(checkpoint));
    }
}
