//! The state directory: `state.dir/<application.id>/<task id>/<store>`, one directory per task,
//! each with a `.lock` file that an instance holds while the task's stores are open (Kafka's
//! `StateDirectory`). Two instances that share a `state.dir` (or two `StateDirectory` values on
//! one path in one process) never open one task's stores at the same time.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::StreamsError;

/// The lock file's name inside a task directory.
pub const LOCK_FILE_NAME: &str = ".lock";

/// The file in `state.dir/<application.id>` that keeps the instance's process id across
/// restarts (Kafka's `kafka-streams-process-metadata`), and the lock file of its holder.
pub const PROCESS_FILE_NAME: &str = "kafka-streams-process-metadata";
const PROCESS_LOCK_FILE_NAME: &str = "kafka-streams-process-metadata.lock";

/// The hold of an instance on the stored process id; released on drop.
#[derive(Debug)]
pub struct ProcessIdLock {
    _file: File,
}

/// `state.dir/<application.id>`.
#[derive(Debug, Clone)]
pub struct StateDirectory {
    app_dir: PathBuf,
}

/// A held lock on a task directory; released on drop.
#[derive(Debug)]
pub struct TaskDirLock {
    task_id: String,
    dir: PathBuf,
    // The open file holds the lock (an advisory `flock` on Unix); closing it releases it.
    _file: File,
}

impl TaskDirLock {
    /// The locked task.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The locked task's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A name that is one path component: not empty, `.` or `..`, no separator or NUL.
fn check_component(path: &Path, what: &'static str, name: &str) -> Result<(), StreamsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(StreamsError::state_directory(path, "open", format!("{what} {name:?} is not a directory name")));
    }
    Ok(())
}

impl StateDirectory {
    /// `state_dir/<application_id>`, created if missing.
    pub fn new(state_dir: &Path, application_id: &str) -> Result<Self, StreamsError> {
        check_component(state_dir, "application.id", application_id)?;
        let app_dir = state_dir.join(application_id);
        std::fs::create_dir_all(&app_dir).map_err(|e| StreamsError::state_directory(&app_dir, "create", e))?;
        Ok(Self { app_dir })
    }

    /// `state.dir/<application.id>`.
    pub fn application_dir(&self) -> &Path {
        &self.app_dir
    }

    /// The task's directory, created if missing.
    pub fn task_dir(&self, task_id: &str) -> Result<PathBuf, StreamsError> {
        check_component(&self.app_dir, "task id", task_id)?;
        let dir = self.app_dir.join(task_id);
        std::fs::create_dir_all(&dir).map_err(|e| StreamsError::state_directory(&dir, "create", e))?;
        Ok(dir)
    }

    /// A store's directory, `state.dir/<application.id>/<task>/<store>` (not created: opening
    /// a persistent store creates it).
    pub fn store_dir(&self, task_id: &str, store_name: &str) -> Result<PathBuf, StreamsError> {
        check_component(&self.app_dir, "task id", task_id)?;
        check_component(&self.app_dir, "store name", store_name)?;
        Ok(self.app_dir.join(task_id).join(store_name))
    }

    /// Locks the task's directory (creating it), or [`StreamsError::TaskDirectoryLocked`] where
    /// another instance (or another lock in this process) holds it.
    pub fn lock_task(&self, task_id: &str) -> Result<TaskDirLock, StreamsError> {
        let dir = self.task_dir(task_id)?;
        let path = dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StreamsError::state_directory(&path, "open lock file", e))?;
        match file.try_lock() {
            Ok(()) => Ok(TaskDirLock { task_id: task_id.to_owned(), dir, _file: file }),
            Err(TryLockError::WouldBlock) => {
                Err(StreamsError::TaskDirectoryLocked { task_id: task_id.to_owned(), path: dir.display().to_string() })
            }
            Err(TryLockError::Error(e)) => Err(StreamsError::state_directory(&path, "lock", e)),
        }
    }

    /// Deletes the task's state (stores and checkpoint), keeping the directory and its lock
    /// file: used when local state is stale. Call it holding the task's lock, with its stores
    /// closed.
    pub fn wipe_task(&self, task_id: &str) -> Result<(), StreamsError> {
        check_component(&self.app_dir, "task id", task_id)?;
        let dir = self.app_dir.join(task_id);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StreamsError::state_directory(&dir, "list", e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StreamsError::state_directory(&dir, "list", e))?;
            if entry.file_name() == LOCK_FILE_NAME {
                continue;
            }
            let path = entry.path();
            let is_dir = entry.file_type().map_err(|e| StreamsError::state_directory(&path, "stat", e))?.is_dir();
            let removed = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(|e| StreamsError::state_directory(&path, "delete", e))?;
        }
        Ok(())
    }

    /// The process id of the instance using this directory (Kafka's `initializeProcessId`):
    /// the one stored in [`PROCESS_FILE_NAME`] (created with a new random id the first time),
    /// held with a lock for as long as the returned [`ProcessIdLock`] lives. A restarted
    /// instance gets its predecessor's id back, and so the same exactly-once
    /// `transactional.id`s, which fences a crashed predecessor and aborts its open transactions
    /// at once. Where another instance on this directory holds the id, this one gets a fresh
    /// random id that is not stored (and no lock).
    pub fn process_id(&self) -> Result<(String, Option<ProcessIdLock>), StreamsError> {
        let lock_path = self.app_dir.join(PROCESS_LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StreamsError::state_directory(&lock_path, "open lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok((uuid::Uuid::new_v4().to_string(), None)),
            Err(TryLockError::Error(e)) => return Err(StreamsError::state_directory(&lock_path, "lock", e)),
        }
        let path = self.app_dir.join(PROCESS_FILE_NAME);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("processId").and_then(|id| id.as_str()).map(str::to_owned))
                .filter(|id| uuid::Uuid::parse_str(id).is_ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StreamsError::state_directory(&path, "read", e)),
        };
        let id = match stored {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let text = serde_json::json!({ "version": 0, "processId": id }).to_string();
                let tmp = self.app_dir.join(format!("{PROCESS_FILE_NAME}.tmp"));
                let at = &path;
                let io = |op: &'static str| move |e: std::io::Error| StreamsError::state_directory(at, op, e);
                let mut out = File::create(&tmp).map_err(io("create"))?;
                std::io::Write::write_all(&mut out, text.as_bytes()).map_err(io("write"))?;
                out.sync_all().map_err(io("fsync"))?;
                drop(out);
                std::fs::rename(&tmp, &path).map_err(io("rename"))?;
                id
            }
        };
        Ok((id, Some(ProcessIdLock { _file: file })))
    }

    /// The ids of the task directories present, sorted.
    pub fn list_task_dirs(&self) -> Result<Vec<String>, StreamsError> {
        let err = |e| StreamsError::state_directory(&self.app_dir, "list", e);
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.app_dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            if entry.file_type().map_err(err)?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    ids.push(name.to_owned());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_instances_on_one_state_dir_conflict() {
        let root = tempfile::tempdir().unwrap();
        let a = StateDirectory::new(root.path(), "app").unwrap();
        let b = StateDirectory::new(root.path(), "app").unwrap();
        let lock = a.lock_task("0_1").unwrap();
        assert_eq!(lock.task_id(), "0_1");
        let err = b.lock_task("0_1").unwrap_err();
        assert!(matches!(err, StreamsError::TaskDirectoryLocked { .. }), "{err}");
        assert!(err.to_string().contains("give each its own state.dir"), "{err}");
        // Another task is free, and the lock goes with its holder.
        let _other = b.lock_task("0_2").unwrap();
        drop(lock);
        let _relocked = b.lock_task("0_1").unwrap();
    }

    #[test]
    fn wipe_keeps_the_lock_and_list_finds_tasks() {
        let root = tempfile::tempdir().unwrap();
        let sd = StateDirectory::new(root.path(), "app").unwrap();
        let lock = sd.lock_task("1_0").unwrap();
        let store_dir = sd.store_dir("1_0", "counts").unwrap();
        assert_eq!(store_dir, root.path().join("app").join("1_0").join("counts"));
        std::fs::create_dir_all(&store_dir).unwrap();
        std::fs::write(store_dir.join("f"), b"x").unwrap();
        std::fs::write(lock.dir().join(".checkpoint"), b"0\n0\n").unwrap();
        sd.task_dir("0_0").unwrap();
        assert_eq!(sd.list_task_dirs().unwrap(), vec!["0_0".to_owned(), "1_0".to_owned()]);
        sd.wipe_task("1_0").unwrap();
        let left: Vec<_> = std::fs::read_dir(lock.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOCK_FILE_NAME)]);
        // Still locked after the wipe.
        assert!(StateDirectory::new(root.path(), "app").unwrap().lock_task("1_0").is_err());
        sd.wipe_task("9_9").unwrap();
    }

    #[test]
    fn the_process_id_is_kept_for_the_next_instance_and_not_shared() {
        let root = tempfile::tempdir().unwrap();
        let a = StateDirectory::new(root.path(), "app").unwrap();
        let (id, lock) = a.process_id().unwrap();
        assert!(lock.is_some());
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        // A second instance on the same directory meanwhile: a different, unstored id.
        let b = StateDirectory::new(root.path(), "app").unwrap();
        let (other, none) = b.process_id().unwrap();
        assert!(none.is_none());
        assert_ne!(other, id);
        // Once the first lets go, the next one gets the stored id back.
        drop(lock);
        let (again, _lock) = b.process_id().unwrap();
        assert_eq!(again, id);
        // The metadata file is not taken for a task directory.
        assert!(a.list_task_dirs().unwrap().is_empty());
    }

    #[test]
    fn names_that_escape_the_directory_are_refused() {
        let root = tempfile::tempdir().unwrap();
        assert!(StateDirectory::new(root.path(), "..").is_err());
        assert!(StateDirectory::new(root.path(), "a/b").is_err());
        let sd = StateDirectory::new(root.path(), "app").unwrap();
        for bad in ["", ".", "..", "../x", "a\\b"] {
            assert!(sd.task_dir(bad).is_err(), "{bad}");
            assert!(sd.lock_task(bad).is_err(), "{bad}");
            assert!(sd.wipe_task(bad).is_err(), "{bad}");
            assert!(sd.store_dir("0_0", bad).is_err(), "{bad}");
        }
    }
}
