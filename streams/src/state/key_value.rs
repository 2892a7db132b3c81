//! The key-value store: one table of the backend.

use std::ops::Bound;

use super::backend::{Backend, Write};
use super::KeyValueBytesStore;
use crate::StreamsError;

const TABLE: &str = "kv";

pub(crate) struct KeyValueStore {
    name: String,
    backend: Box<dyn Backend>,
}

impl KeyValueStore {
    pub(crate) fn new(name: &str, backend: Box<dyn Backend>) -> Self {
        Self { name: name.to_owned(), backend }
    }
}

impl KeyValueBytesStore for KeyValueStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError> {
        self.backend.get(TABLE, key)
    }

    fn write_batch(&self, batch: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StreamsError> {
        if batch.is_empty() {
            return Ok(());
        }
        let writes: Vec<Write<'_>> =
            batch.iter().map(|(k, v)| Write { table: TABLE, key: k, value: v.as_deref() }).collect();
        self.backend.commit(&writes, &[])
    }

    fn range(
        &self,
        from: Option<&[u8]>,
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let from = from.map_or(Bound::Unbounded, Bound::Included);
        let to = to.map_or(Bound::Unbounded, Bound::Excluded);
        self.backend.range(TABLE, from, to, visit)
    }

    fn approximate_num_entries(&self) -> Result<u64, StreamsError> {
        self.backend.len(TABLE)
    }

    fn flush(&self) -> Result<(), StreamsError> {
        self.backend.flush()
    }
}
