//! The ordered byte maps that every store is built on: named tables of `key → value`, written in
//! atomic commits. Two backends: [`MemoryBackend`] (a `BTreeMap` per table behind a lock) and
//! [`RedbBackend`] (one redb file per store). Key-value, window and session stores are written
//! once on top of [`Backend`], so both kinds behave the same and are tested against one model.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition, TableHandle};

use crate::StreamsError;

/// One put (`value` is `Some`) or delete in a commit.
pub(crate) struct Write<'a> {
    pub(crate) table: &'a str,
    pub(crate) key: &'a [u8],
    pub(crate) value: Option<&'a [u8]>,
}

/// A store's tables. Reads of a table that does not exist see it empty. `visit` callbacks must not
/// call back into the same store (the in-memory backend holds its lock while visiting).
pub(crate) trait Backend: Send + Sync {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError>;
    /// Visits `from..to` in key order until `visit` returns false.
    fn range(
        &self,
        table: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    /// Applies `writes` in order, then deletes `drop_tables`, all or nothing.
    fn commit(&self, writes: &[Write<'_>], drop_tables: &[&str]) -> Result<(), StreamsError>;
    fn table_names(&self) -> Result<Vec<String>, StreamsError>;
    fn len(&self, table: &str) -> Result<u64, StreamsError>;
    /// Makes every commit so far survive a crash.
    fn flush(&self) -> Result<(), StreamsError>;
}

/// True when no key can be in `from..to` (`BTreeMap::range` panics on such bounds).
fn empty_range(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b)) | (Bound::Excluded(a), Bound::Included(b)) => {
            a >= b
        }
        _ => false,
    }
}

type MemoryTables = HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// `StoreKind::InMemory`: tables are `BTreeMap`s behind one lock; nothing survives the process.
pub(crate) struct MemoryBackend {
    tables: RwLock<MemoryTables>,
}

impl MemoryBackend {
    pub(crate) fn new() -> Self {
        Self { tables: RwLock::new(HashMap::new()) }
    }
}

impl Backend for MemoryBackend {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError> {
        // A poisoned lock means a visitor panicked while reading; the maps themselves are whole.
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        Ok(tables.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn range(
        &self,
        table: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        if empty_range(from, to) {
            return Ok(());
        }
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = tables.get(table) {
            for (k, v) in t.range::<[u8], _>((from, to)) {
                if !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn commit(&self, writes: &[Write<'_>], drop_tables: &[&str]) -> Result<(), StreamsError> {
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        for w in writes {
            match w.value {
                Some(v) => {
                    tables.entry(w.table.to_owned()).or_default().insert(w.key.to_vec(), v.to_vec());
                }
                None => {
                    if let Some(t) = tables.get_mut(w.table) {
                        t.remove(w.key);
                    }
                }
            }
        }
        for t in drop_tables {
            tables.remove(*t);
        }
        Ok(())
    }

    fn table_names(&self) -> Result<Vec<String>, StreamsError> {
        Ok(self.tables.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect())
    }

    fn len(&self, table: &str) -> Result<u64, StreamsError> {
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        Ok(tables.get(table).map_or(0, |t| t.len() as u64))
    }

    fn flush(&self) -> Result<(), StreamsError> {
        Ok(())
    }
}

/// The redb page cache of one persistent store. It bounds the store's memory (state larger than
/// RAM works: pages beyond it are read from disk); an instance with a hundred stores holds at most
/// this times a hundred, as Kafka Streams' per-store RocksDB block cache does.
pub const PERSISTENT_CACHE_BYTES: usize = 16 << 20;

/// The store's file inside its directory.
pub(crate) const PERSISTENT_FILE_NAME: &str = "store.redb";

type BytesTable<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// `StoreKind::Persistent`: one redb database file per store, no background threads.
///
/// Each `commit` is a redb write transaction with `Durability::None`: atomic and visible to
/// readers, but not fsynced; a crash rolls the file back to the last [`Backend::flush`], which is
/// a `Durability::Immediate` commit (an fsync). The runtime flushes before writing a checkpoint,
/// so the file is never behind its checkpoint.
pub(crate) struct RedbBackend {
    name: String,
    db: redb::Database,
    /// A batch was committed since the last flush. An idle store's flush then costs nothing,
    /// which matters with hundreds of stores flushed at every commit.
    dirty: AtomicBool,
}

impl RedbBackend {
    pub(crate) fn open(name: &str, dir: &Path) -> Result<Self, StreamsError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StreamsError::store(name, "open", format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(PERSISTENT_FILE_NAME);
        let db = redb::Database::builder().set_cache_size(PERSISTENT_CACHE_BYTES).create(&path).map_err(|e| {
            let reason = match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "{} is already open (the store was opened twice, in this process or another one)",
                    path.display()
                ),
                e => format!("{}: {e}", path.display()),
            };
            StreamsError::store(name, "open", reason)
        })?;
        Ok(Self { name: name.to_owned(), db, dirty: AtomicBool::new(false) })
    }

    fn err(&self, op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StreamsError + '_ {
        move |e| StreamsError::store(&self.name, op, e)
    }

    /// The table, or `None` where it was never written.
    fn read_table(&self, table: &str, op: &'static str) -> Result<Option<ReadTable>, StreamsError> {
        let err = self.err(op);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        match txn.open_table(BytesTable::new(table)) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(err(&e)),
        }
    }
}

impl Backend for RedbBackend {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError> {
        let Some(t) = self.read_table(table, "get")? else { return Ok(None) };
        let v = t.get(key).map_err(|e| self.err("get")(&e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn range(
        &self,
        table: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        if empty_range(from, to) {
            return Ok(());
        }
        let Some(t) = self.read_table(table, "range")? else { return Ok(()) };
        let err = self.err("range");
        for entry in t.range::<&[u8]>((from, to)).map_err(|e| err(&e))? {
            let (k, v) = entry.map_err(|e| err(&e))?;
            if !visit(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, writes: &[Write<'_>], drop_tables: &[&str]) -> Result<(), StreamsError> {
        let err = self.err("write_batch");
        let mut txn = self.db.begin_write().map_err(|e| err(&e))?;
        txn.set_durability(redb::Durability::None).map_err(|e| err(&e))?;
        {
            // Writes come grouped by table (one segment after another), so one open table at a
            // time; redb allows only one open handle per table in a transaction.
            let mut open: Option<(&str, WriteTable<'_>)> = None;
            for w in writes {
                let table = match &mut open {
                    Some((name, table)) if *name == w.table => table,
                    _ => {
                        open = None;
                        let t = txn.open_table(BytesTable::new(w.table)).map_err(|e| err(&e))?;
                        &mut open.insert((w.table, t)).1
                    }
                };
                match w.value {
                    Some(v) => drop(table.insert(w.key, v).map_err(|e| err(&e))?),
                    None => drop(table.remove(w.key).map_err(|e| err(&e))?),
                }
            }
        }
        for t in drop_tables {
            txn.delete_table(BytesTable::new(t)).map_err(|e| err(&e))?;
        }
        // A failed commit drops the transaction, which aborts it: nothing of the batch is applied.
        txn.commit().map_err(|e| err(&e))?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn table_names(&self) -> Result<Vec<String>, StreamsError> {
        let err = self.err("open");
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let names = txn.list_tables().map_err(|e| err(&e))?.map(|t| t.name().to_owned()).collect();
        Ok(names)
    }

    fn len(&self, table: &str) -> Result<u64, StreamsError> {
        let Some(t) = self.read_table(table, "approximate_num_entries")? else { return Ok(0) };
        t.len().map_err(|e| self.err("approximate_num_entries")(&e))
    }

    fn flush(&self) -> Result<(), StreamsError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let err = self.err("flush");
        let result = self.db.begin_write().map_err(|e| err(&e)).and_then(|mut txn| {
            txn.set_durability(redb::Durability::Immediate).map_err(|e| err(&e))?;
            txn.commit().map_err(|e| err(&e))
        });
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}
