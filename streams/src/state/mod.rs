//! PLACEHOLDER (lead's stub until the `stores` branch lands): the bytes-level store traits and
//! in-memory stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::window::SessionWindow;
use crate::StreamsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Persistent,
    InMemory,
}

pub trait KeyValueBytesStore: Send + Sync {
    fn name(&self) -> &str;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError>;
    fn write_batch(&self, batch: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StreamsError>;
    fn range(
        &self,
        from: Option<&[u8]>,
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    fn approximate_num_entries(&self) -> Result<u64, StreamsError>;
    fn flush(&self) -> Result<(), StreamsError>;
}

pub trait WindowBytesStore: Send + Sync {
    fn name(&self) -> &str;
    fn retention_ms(&self) -> i64;
    fn write_batch(&self, batch: &[(Vec<u8>, i64, Option<Vec<u8>>)]) -> Result<(), StreamsError>;
    fn fetch(&self, key: &[u8], window_start_ms: i64) -> Result<Option<Vec<u8>>, StreamsError>;
    fn fetch_range(
        &self,
        key: &[u8],
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    fn fetch_all(
        &self,
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(&[u8], i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    fn flush(&self) -> Result<(), StreamsError>;
}

pub trait SessionBytesStore: Send + Sync {
    fn name(&self) -> &str;
    fn retention_ms(&self) -> i64;
    fn write_batch(&self, batch: &[(Vec<u8>, SessionWindow, Option<Vec<u8>>)]) -> Result<(), StreamsError>;
    fn find_sessions(
        &self,
        key: &[u8],
        earliest_end_ms: i64,
        latest_start_ms: i64,
        visit: &mut dyn FnMut(SessionWindow, &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    fn fetch_session(&self, key: &[u8], window: SessionWindow) -> Result<Option<Vec<u8>>, StreamsError>;
    fn flush(&self) -> Result<(), StreamsError>;
}

struct MemKv {
    name: String,
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl KeyValueBytesStore for MemKv {
    fn name(&self) -> &str {
        &self.name
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    fn write_batch(&self, batch: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StreamsError> {
        let mut m = self.map.lock().unwrap();
        for (k, v) in batch {
            match v {
                Some(v) => {
                    m.insert(k.clone(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        Ok(())
    }
    fn range(
        &self,
        from: Option<&[u8]>,
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let m = self.map.lock().unwrap();
        for (k, v) in m.iter() {
            if from.is_some_and(|f| k.as_slice() < f) {
                continue;
            }
            if to.is_some_and(|t| k.as_slice() >= t) {
                break;
            }
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
    fn approximate_num_entries(&self) -> Result<u64, StreamsError> {
        Ok(self.map.lock().unwrap().len() as u64)
    }
    fn flush(&self) -> Result<(), StreamsError> {
        Ok(())
    }
}

struct MemWindow {
    name: String,
    retention_ms: i64,
    map: Mutex<(i64, BTreeMap<(i64, Vec<u8>), Vec<u8>>)>,
}

impl WindowBytesStore for MemWindow {
    fn name(&self) -> &str {
        &self.name
    }
    fn retention_ms(&self) -> i64 {
        self.retention_ms
    }
    fn write_batch(&self, batch: &[(Vec<u8>, i64, Option<Vec<u8>>)]) -> Result<(), StreamsError> {
        let mut g = self.map.lock().unwrap();
        for (k, t, v) in batch {
            g.0 = g.0.max(*t);
            match v {
                Some(v) => {
                    g.1.insert((*t, k.clone()), v.clone());
                }
                None => {
                    g.1.remove(&(*t, k.clone()));
                }
            }
        }
        let cut = g.0.saturating_sub(self.retention_ms);
        g.1.retain(|(t, _), _| *t > cut);
        Ok(())
    }
    fn fetch(&self, key: &[u8], window_start_ms: i64) -> Result<Option<Vec<u8>>, StreamsError> {
        Ok(self.map.lock().unwrap().1.get(&(window_start_ms, key.to_vec())).cloned())
    }
    fn fetch_range(
        &self,
        key: &[u8],
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let g = self.map.lock().unwrap();
        for ((t, k), v) in g.1.range((time_from_ms, Vec::new())..) {
            if *t > time_to_ms {
                break;
            }
            if k.as_slice() == key && !visit(*t, v) {
                break;
            }
        }
        Ok(())
    }
    fn fetch_all(
        &self,
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(&[u8], i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let g = self.map.lock().unwrap();
        for ((t, k), v) in g.1.range((time_from_ms, Vec::new())..) {
            if *t > time_to_ms {
                break;
            }
            if !visit(k, *t, v) {
                break;
            }
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), StreamsError> {
        Ok(())
    }
}

struct MemSession {
    name: String,
    retention_ms: i64,
    map: Mutex<BTreeMap<(Vec<u8>, i64, i64), Vec<u8>>>,
}

impl SessionBytesStore for MemSession {
    fn name(&self) -> &str {
        &self.name
    }
    fn retention_ms(&self) -> i64 {
        self.retention_ms
    }
    fn write_batch(&self, batch: &[(Vec<u8>, SessionWindow, Option<Vec<u8>>)]) -> Result<(), StreamsError> {
        let mut m = self.map.lock().unwrap();
        for (k, w, v) in batch {
            match v {
                Some(v) => {
                    m.insert((k.clone(), w.end_ms, w.start_ms), v.clone());
                }
                None => {
                    m.remove(&(k.clone(), w.end_ms, w.start_ms));
                }
            }
        }
        Ok(())
    }
    fn find_sessions(
        &self,
        key: &[u8],
        earliest_end_ms: i64,
        latest_start_ms: i64,
        visit: &mut dyn FnMut(SessionWindow, &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let m = self.map.lock().unwrap();
        for ((k, e, s), v) in m.range((key.to_vec(), earliest_end_ms, i64::MIN)..) {
            if k.as_slice() != key {
                break;
            }
            if *s <= latest_start_ms && !visit(SessionWindow { start_ms: *s, end_ms: *e }, v) {
                break;
            }
        }
        Ok(())
    }
    fn fetch_session(&self, key: &[u8], w: SessionWindow) -> Result<Option<Vec<u8>>, StreamsError> {
        Ok(self.map.lock().unwrap().get(&(key.to_vec(), w.end_ms, w.start_ms)).cloned())
    }
    fn flush(&self) -> Result<(), StreamsError> {
        Ok(())
    }
}

pub fn open_key_value(_kind: StoreKind, name: &str, _dir: &Path) -> Result<Arc<dyn KeyValueBytesStore>, StreamsError> {
    Ok(Arc::new(MemKv { name: name.into(), map: Mutex::default() }))
}

pub fn open_window(
    _kind: StoreKind,
    name: &str,
    _dir: &Path,
    retention_ms: i64,
    _segment_interval_ms: i64,
) -> Result<Arc<dyn WindowBytesStore>, StreamsError> {
    Ok(Arc::new(MemWindow { name: name.into(), retention_ms, map: Mutex::new((i64::MIN, BTreeMap::new())) }))
}

pub fn open_session(
    _kind: StoreKind,
    name: &str,
    _dir: &Path,
    retention_ms: i64,
) -> Result<Arc<dyn SessionBytesStore>, StreamsError> {
    Ok(Arc::new(MemSession { name: name.into(), retention_ms, map: Mutex::default() }))
}

pub mod checkpoint {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::StreamsError;

    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Checkpoint {
        pub offsets: BTreeMap<(String, i32), i64>,
    }

    pub fn read(_path: &Path) -> Result<Option<Checkpoint>, StreamsError> {
        Ok(None)
    }

    pub fn write(_path: &Path, _checkpoint: &Checkpoint) -> Result<(), StreamsError> {
        Ok(())
    }
}

pub mod directory {
    use std::path::{Path, PathBuf};

    use crate::StreamsError;

    pub struct StateDirectory {
        root: PathBuf,
    }

    pub struct TaskDirLock;

    impl StateDirectory {
        pub fn new(state_dir: &Path, application_id: &str) -> Result<Self, StreamsError> {
            Ok(StateDirectory { root: state_dir.join(application_id) })
        }
        pub fn task_dir(&self, task_id: &str) -> Result<PathBuf, StreamsError> {
            Ok(self.root.join(task_id))
        }
        pub fn lock_task(&self, _task_id: &str) -> Result<TaskDirLock, StreamsError> {
            Ok(TaskDirLock)
        }
        pub fn wipe_task(&self, _task_id: &str) -> Result<(), StreamsError> {
            Ok(())
        }
    }
}
