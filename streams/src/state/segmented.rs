//! Window and session stores: time divided into segments, a backend table per segment, so that
//! expiry drops whole tables (Kafka's `AbstractRocksDBSegmentedBytesStore`).
//!
//! Layout of a segment table's keys, chosen so that byte order is (key, time) order:
//! - window: `escape(key) ‖ time(window_start_ms)`
//! - window retaining duplicates: `escape(key) ‖ time(window_start_ms) ‖ sequence (u64 BE)`
//! - session: `escape(key) ‖ time(end_ms) ‖ time(start_ms)`
//!
//! `escape` doubles as a terminator: each `0x00` in the key becomes `0x00 0xFF` and the key ends
//! with `0x00 0x00`, so no escaped key is a prefix of another and comparing escaped keys compares
//! the keys. `time` is the big-endian `i64` with its sign bit flipped, so that byte order is numeric
//! order for every `i64`, negative ones included.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use super::backend::{Backend, Write};
use super::{SessionBytesStore, SessionWrite, WindowBytesStore, WindowWrite};
use crate::window::SessionWindow;
use crate::StreamsError;

const META_TABLE: &str = "meta";
const STREAM_TIME_KEY: &[u8] = b"observed_stream_time_ms";
/// The next duplicate sequence number, persisted with each batch so that a reopened store never
/// reuses one (Kafka's in-memory `seqnum` restarts at 0 and can overwrite a restored duplicate).
const SEQUENCE_KEY: &[u8] = b"next_sequence";
const SEQUENCE_BYTES: usize = 8;
const SEGMENT_TABLE_PREFIX: &str = "segment.";
const TIME_BYTES: usize = 8;
/// Entries `fetch_all` reads from a segment at a time: bounds its memory per segment.
const FETCH_ALL_CHUNK: usize = 512;

/// (segmenting time, encoded key, value or `None` to delete).
type SegmentedWrite<'a> = (i64, Vec<u8>, Option<&'a [u8]>);

/// What `scan_prefix` calls with (time, the key's bytes after the time, value).
type ScanVisitor<'a> = dyn FnMut(i64, &[u8], &[u8]) -> bool + 'a;

pub(crate) fn encode_time(time_ms: i64) -> [u8; TIME_BYTES] {
    let mut b = time_ms.to_be_bytes();
    b[0] ^= 0x80;
    b
}

pub(crate) fn decode_time(b: &[u8]) -> Option<i64> {
    let mut b: [u8; TIME_BYTES] = b.try_into().ok()?;
    b[0] ^= 0x80;
    Some(i64::from_be_bytes(b))
}

pub(crate) fn escape_key(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The key and what follows its terminator, or `None` where `enc` is not an escaped key.
pub(crate) fn unescape_key(enc: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(enc.len());
    let mut i = 0;
    loop {
        let b = *enc.get(i)?;
        if b == 0 {
            match *enc.get(i + 1)? {
                0 => return Some((key, &enc[i + 2..])),
                0xFF => key.push(0),
                _ => return None,
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
}

fn segment_table(id: i64) -> String {
    format!("{SEGMENT_TABLE_PREFIX}{id}")
}

pub(crate) fn validate(name: &str, retention_ms: i64, segment_interval_ms: i64) -> Result<(), StreamsError> {
    let reason = if retention_ms < 0 {
        format!("retention {retention_ms} ms is negative")
    } else if segment_interval_ms <= 0 {
        format!("segment interval {segment_interval_ms} ms is not positive")
    } else {
        return Ok(());
    };
    Err(StreamsError::InvalidStore { store: name.to_owned(), reason })
}

#[derive(Clone)]
struct SegmentsState {
    /// Largest time written; `None` before the first write.
    stream_time_ms: Option<i64>,
    /// Ids of the segment tables that may exist.
    live: BTreeSet<i64>,
}

/// The segmented store both window and session stores are: entries whose key ends in (or, for
/// sessions, has after the escaped key) the time they are segmented and expired by.
pub(crate) struct Segments {
    name: String,
    backend: Box<dyn Backend>,
    retention_ms: i64,
    segment_interval_ms: i64,
    /// One writer at a time; readers only take `state` briefly.
    writer: Mutex<()>,
    state: RwLock<SegmentsState>,
    expired_puts_skipped: AtomicU64,
    /// `Some(next sequence number)` for a window store that retains duplicates.
    sequence: Option<AtomicU64>,
}

impl Segments {
    pub(crate) fn open(
        name: &str,
        backend: Box<dyn Backend>,
        retention_ms: i64,
        segment_interval_ms: i64,
        retain_duplicates: bool,
    ) -> Result<Self, StreamsError> {
        let corrupt = |what: String| StreamsError::store(name, "open", format!("corrupt store: {what}"));
        let mut live = BTreeSet::new();
        for table in backend.table_names()? {
            if let Some(id) = table.strip_prefix(SEGMENT_TABLE_PREFIX) {
                live.insert(id.parse::<i64>().map_err(|_| corrupt(format!("segment table named {table:?}")))?);
            }
        }
        let stream_time_ms = match backend.get(META_TABLE, STREAM_TIME_KEY)? {
            Some(b) => Some(decode_time(&b).ok_or_else(|| corrupt(format!("stream time of {} bytes", b.len())))?),
            None => None,
        };
        let sequence = if retain_duplicates {
            let next = match backend.get(META_TABLE, SEQUENCE_KEY)? {
                Some(b) => u64::from_be_bytes(
                    b.as_slice().try_into().map_err(|_| corrupt(format!("sequence of {} bytes", b.len())))?,
                ),
                None => 0,
            };
            Some(AtomicU64::new(next))
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            backend,
            retention_ms,
            segment_interval_ms,
            writer: Mutex::new(()),
            state: RwLock::new(SegmentsState { stream_time_ms, live }),
            expired_puts_skipped: AtomicU64::new(0),
            sequence,
        })
    }

    fn min_live(&self, stream_time_ms: Option<i64>) -> Option<i64> {
        stream_time_ms.map(|t| t.saturating_sub(self.retention_ms))
    }

    fn segment_id(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.segment_interval_ms)
    }

    /// First and last time of a segment, clamped to `i64`.
    fn segment_bounds(&self, id: i64) -> (i64, i64) {
        let start = i128::from(id) * i128::from(self.segment_interval_ms);
        let end = start + i128::from(self.segment_interval_ms) - 1;
        let clamp = |t: i128| i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX });
        (clamp(start), clamp(end))
    }

    fn observed_stream_time_ms(&self) -> Option<i64> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).stream_time_ms
    }

    /// Applies `(time, encoded key, value)` entries in order, skipping expired ones, and drops the
    /// segments that are expired afterwards, in one commit.
    fn write(&self, entries: &[SegmentedWrite<'_>]) -> Result<(), StreamsError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.state.read().unwrap_or_else(PoisonError::into_inner).clone();
        let old_stream_time_ms = state.stream_time_ms;
        // (segment id, entry)
        let mut kept: Vec<(i64, &SegmentedWrite<'_>)> = Vec::with_capacity(entries.len());
        let mut skipped = 0u64;
        for entry in entries {
            let (time_ms, _, value) = entry;
            // Stream time advances before the entry is judged, as Kafka's put does.
            let stream_time_ms = state.stream_time_ms.map_or(*time_ms, |t| t.max(*time_ms));
            state.stream_time_ms = Some(stream_time_ms);
            if self.min_live(Some(stream_time_ms)).is_some_and(|min| *time_ms < min) {
                skipped += u64::from(value.is_some());
                continue;
            }
            kept.push((self.segment_id(*time_ms), entry));
        }
        let min_live_ms = self.min_live(state.stream_time_ms).unwrap_or(i64::MIN);
        let expired = |id: i64| self.segment_bounds(id).1 < min_live_ms;
        // Entries whose whole segment expires by the end of the batch are never seen again.
        kept.retain(|(id, _)| !expired(*id));
        // Stable: one key's entries keep their order. Grouping by segment opens each table once.
        kept.sort_by_key(|(id, _)| *id);
        let names: BTreeMap<i64, String> = kept.iter().map(|(id, _)| (*id, segment_table(*id))).collect();
        let dropped: Vec<i64> = state.live.iter().copied().filter(|id| expired(*id)).collect();
        let dropped_names: Vec<String> = dropped.iter().map(|id| segment_table(*id)).collect();
        let stream_time_bytes = state.stream_time_ms.map(encode_time);
        let mut writes: Vec<Write<'_>> =
            kept.iter().map(|(id, (_, key, value))| Write { table: &names[id], key, value: *value }).collect();
        if state.stream_time_ms != old_stream_time_ms {
            if let Some(b) = &stream_time_bytes {
                writes.push(Write { table: META_TABLE, key: STREAM_TIME_KEY, value: Some(b) });
            }
        }
        // The caller drew this batch's numbers before calling; the counter is past all of them.
        let sequence_bytes = self.sequence.as_ref().map(|s| s.load(Ordering::Relaxed).to_be_bytes());
        if let Some(b) = &sequence_bytes {
            writes.push(Write { table: META_TABLE, key: SEQUENCE_KEY, value: Some(b) });
        }
        let drop_refs: Vec<&str> = dropped_names.iter().map(String::as_str).collect();
        if kept.is_empty() && drop_refs.is_empty() && state.stream_time_ms == old_stream_time_ms {
            // Nothing changes: no commit, and the next flush has nothing to fsync.
            self.expired_puts_skipped.fetch_add(skipped, Ordering::Relaxed);
            return Ok(());
        }
        self.backend.commit(&writes, &drop_refs)?;
        state.live.extend(names.keys());
        for id in &dropped {
            state.live.remove(id);
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        self.expired_puts_skipped.fetch_add(skipped, Ordering::Relaxed);
        Ok(())
    }

    /// `from` raised to the oldest live time and the live segments holding times in `[from, to]`,
    /// or `None` where nothing live can be in it.
    fn view(&self, from_ms: i64, to_ms: i64) -> Option<(i64, Vec<i64>)> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let min_live_ms = self.min_live(state.stream_time_ms);
        let from_ms = from_ms.max(min_live_ms.unwrap_or(i64::MIN));
        if from_ms > to_ms {
            return None;
        }
        Some((from_ms, state.live.range(self.segment_id(from_ms)..=self.segment_id(to_ms)).copied().collect()))
    }

    fn get(&self, time_ms: i64, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError> {
        if self.min_live(self.observed_stream_time_ms()).is_some_and(|min| time_ms < min) {
            return Ok(None);
        }
        self.backend.get(&segment_table(self.segment_id(time_ms)), key)
    }

    /// Visits, segment by segment, the entries `prefix ‖ time(t) ‖ rest` with `t` in
    /// `[from, to]`, where `rest` is `rest_len` bytes; `visit` gets `t`, `rest` and the value.
    fn scan_prefix(
        &self,
        op: &'static str,
        prefix: &[u8],
        from_ms: i64,
        to_ms: i64,
        rest_len: usize,
        visit: &mut ScanVisitor<'_>,
    ) -> Result<(), StreamsError> {
        let Some((from_ms, segments)) = self.view(from_ms, to_ms) else { return Ok(()) };
        let mut error = None;
        let mut go_on = true;
        for id in segments {
            let (seg_start, seg_end) = self.segment_bounds(id);
            let mut lo = prefix.to_vec();
            lo.extend_from_slice(&encode_time(from_ms.max(seg_start)));
            let mut hi = prefix.to_vec();
            hi.extend_from_slice(&encode_time(to_ms.min(seg_end)));
            hi.resize(hi.len() + rest_len, 0xFF);
            self.backend.range(&segment_table(id), Bound::Included(&lo), Bound::Included(&hi), &mut |k, v| {
                // Every key between lo and hi starts with prefix; an escaped key ends where it
                // starts, so the entry is this key's.
                let suffix = &k[prefix.len().min(k.len())..];
                match (suffix.len() == TIME_BYTES + rest_len).then(|| decode_time(&suffix[..TIME_BYTES])).flatten() {
                    Some(t) => {
                        go_on = visit(t, &suffix[TIME_BYTES..], v);
                        go_on
                    }
                    None => {
                        error = Some(StreamsError::store(&self.name, op, "corrupt store: entry key of bad length"));
                        false
                    }
                }
            })?;
            if let Some(e) = error {
                return Err(e);
            }
            if !go_on {
                break;
            }
        }
        Ok(())
    }
}

/// A segment's entries read `FETCH_ALL_CHUNK` at a time, for the merge in `fetch_all`.
struct Cursor {
    table: String,
    /// The last key read; the next chunk starts after it.
    after: Option<Vec<u8>>,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    exhausted: bool,
}

impl Cursor {
    fn fill(&mut self, backend: &dyn Backend, keep: &dyn Fn(&[u8]) -> bool) -> Result<(), StreamsError> {
        while self.buf.is_empty() && !self.exhausted {
            let from = self.after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut read = 0;
            let mut last = None;
            let buf = &mut self.buf;
            backend.range(&self.table, from, Bound::Unbounded, &mut |k, v| {
                read += 1;
                if keep(k) {
                    buf.push_back((k.to_vec(), v.to_vec()));
                }
                if read == FETCH_ALL_CHUNK {
                    last = Some(k.to_vec());
                    return false;
                }
                true
            })?;
            self.exhausted = read < FETCH_ALL_CHUNK;
            self.after = last;
        }
        Ok(())
    }
}

/// A window store; with `core.sequence` set it retains duplicates (Kafka's `retainDuplicates`,
/// for stream-stream joins): every put is a new entry, deletes are ignored.
pub(crate) struct WindowStore {
    pub(crate) core: Segments,
}

impl WindowStore {
    /// Bytes after the window start in an encoded key.
    fn rest_len(&self) -> usize {
        if self.core.sequence.is_some() {
            SEQUENCE_BYTES
        } else {
            0
        }
    }
}

fn window_key(key: &[u8], window_start_ms: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 2 + TIME_BYTES);
    escape_key(key, &mut k);
    k.extend_from_slice(&encode_time(window_start_ms));
    k
}

impl WindowBytesStore for WindowStore {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn retention_ms(&self) -> i64 {
        self.core.retention_ms
    }

    fn write_batch(&self, batch: &[WindowWrite]) -> Result<(), StreamsError> {
        let entries: Vec<_> = match &self.core.sequence {
            None => batch.iter().map(|(k, t, v)| (*t, window_key(k, *t), v.as_deref())).collect(),
            // Kafka's RocksDBWindowStore skips a null put entirely when it retains duplicates.
            Some(sequence) => batch
                .iter()
                .filter_map(|(k, t, v)| {
                    let v = v.as_deref()?;
                    let mut key = window_key(k, *t);
                    key.extend_from_slice(&sequence.fetch_add(1, Ordering::Relaxed).to_be_bytes());
                    Some((*t, key, Some(v)))
                })
                .collect(),
        };
        self.core.write(&entries)
    }

    fn fetch(&self, key: &[u8], window_start_ms: i64) -> Result<Option<Vec<u8>>, StreamsError> {
        if self.core.sequence.is_none() {
            return self.core.get(window_start_ms, &window_key(key, window_start_ms));
        }
        // With duplicates: the first one put.
        let mut first = None;
        self.fetch_range(key, window_start_ms, window_start_ms, &mut |_, v| {
            first = Some(v.to_vec());
            false
        })?;
        Ok(first)
    }

    fn fetch_range(
        &self,
        key: &[u8],
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let mut prefix = Vec::with_capacity(key.len() + 2);
        escape_key(key, &mut prefix);
        let rest_len = self.rest_len();
        self.core.scan_prefix("fetch_range", &prefix, time_from_ms, time_to_ms, rest_len, &mut |t, _, v| visit(t, v))
    }

    fn fetch_all(
        &self,
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(&[u8], i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let Some((from_ms, segments)) = self.core.view(time_from_ms, time_to_ms) else { return Ok(()) };
        let rest_len = self.rest_len();
        let in_range = |k: &[u8]| {
            k.len() >= TIME_BYTES + rest_len
                && decode_time(&k[k.len() - TIME_BYTES - rest_len..k.len() - rest_len])
                    .is_some_and(|t| from_ms <= t && t <= time_to_ms)
        };
        let mut cursors: Vec<Cursor> = segments
            .iter()
            .map(|id| Cursor { table: segment_table(*id), after: None, buf: VecDeque::new(), exhausted: false })
            .collect();
        for c in &mut cursors {
            c.fill(self.core.backend.as_ref(), &in_range)?;
        }
        // A k-way merge by encoded key, which is (key, start[, sequence]) order; k is the few live
        // segments.
        loop {
            let Some(next) = cursors
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.buf.front().map(|(k, _)| (i, k)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i)
            else {
                return Ok(());
            };
            let Some((k, v)) = cursors[next].buf.pop_front() else { return Ok(()) };
            let decoded = unescape_key(&k)
                .filter(|(_, rest)| rest.len() == TIME_BYTES + rest_len)
                .and_then(|(key, rest)| decode_time(&rest[..TIME_BYTES]).map(|t| (key, t)));
            let Some((key, t)) = decoded else {
                return Err(StreamsError::store(&self.core.name, "fetch_all", "corrupt store: bad entry key"));
            };
            if !visit(&key, t, &v) {
                return Ok(());
            }
            cursors[next].fill(self.core.backend.as_ref(), &in_range)?;
        }
    }

    fn flush(&self) -> Result<(), StreamsError> {
        self.core.backend.flush()
    }

    fn observed_stream_time_ms(&self) -> Option<i64> {
        self.core.observed_stream_time_ms()
    }

    fn expired_puts_skipped(&self) -> u64 {
        self.core.expired_puts_skipped.load(Ordering::Relaxed)
    }
}

pub(crate) struct SessionStore {
    pub(crate) core: Segments,
}

fn session_key(key: &[u8], window: SessionWindow) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 2 + 2 * TIME_BYTES);
    escape_key(key, &mut k);
    k.extend_from_slice(&encode_time(window.end_ms));
    k.extend_from_slice(&encode_time(window.start_ms));
    k
}

impl SessionBytesStore for SessionStore {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn retention_ms(&self) -> i64 {
        self.core.retention_ms
    }

    fn write_batch(&self, batch: &[SessionWrite]) -> Result<(), StreamsError> {
        let entries: Vec<_> = batch.iter().map(|(k, w, v)| (w.end_ms, session_key(k, *w), v.as_deref())).collect();
        self.core.write(&entries)
    }

    fn find_sessions(
        &self,
        key: &[u8],
        earliest_end_ms: i64,
        latest_start_ms: i64,
        visit: &mut dyn FnMut(SessionWindow, &[u8]) -> bool,
    ) -> Result<(), StreamsError> {
        let mut prefix = Vec::with_capacity(key.len() + 2);
        escape_key(key, &mut prefix);
        self.core.scan_prefix(
            "find_sessions",
            &prefix,
            earliest_end_ms,
            i64::MAX,
            TIME_BYTES,
            &mut |end_ms, rest, v| {
                // rest is exactly TIME_BYTES long (scan_prefix checked it).
                match decode_time(rest) {
                    Some(start_ms) if start_ms <= latest_start_ms => visit(SessionWindow { start_ms, end_ms }, v),
                    _ => true,
                }
            },
        )
    }

    fn fetch_session(&self, key: &[u8], window: SessionWindow) -> Result<Option<Vec<u8>>, StreamsError> {
        self.core.get(window.end_ms, &session_key(key, window))
    }

    fn flush(&self) -> Result<(), StreamsError> {
        self.core.backend.flush()
    }

    fn observed_stream_time_ms(&self) -> Option<i64> {
        self.core.observed_stream_time_ms()
    }

    fn expired_puts_skipped(&self) -> u64 {
        self.core.expired_puts_skipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::MemoryBackend;
    use super::*;

    fn tables(store: &WindowStore) -> Vec<String> {
        let mut t = store.core.backend.table_names().unwrap();
        t.sort();
        t
    }

    /// Whole segments go once stream time is a retention past their last millisecond.
    #[test]
    fn expired_segments_are_dropped_whole() {
        let core = Segments::open("w", Box::new(MemoryBackend::new()), 100, 50, false).unwrap();
        let store = WindowStore { core };
        let put = |t: i64| store.write_batch(&[(b"k".to_vec(), t, Some(vec![1]))]).unwrap();
        put(0); // segment 0: [0, 49]
        put(60); // segment 1: [50, 99]
        assert_eq!(tables(&store), ["meta", "segment.0", "segment.1"]);
        put(149); // min live 49: segment 0 still has a live millisecond
        assert_eq!(tables(&store), ["meta", "segment.0", "segment.1", "segment.2"]);
        put(150); // min live 50: segment 0 is expired
        assert_eq!(tables(&store), ["meta", "segment.1", "segment.2", "segment.3"]);
        assert_eq!(store.fetch(b"k", 0).unwrap(), None);
        assert_eq!(store.fetch(b"k", 60).unwrap(), Some(vec![1]));
        // A put far in the future expires everything else at once.
        put(1_000_000);
        assert_eq!(tables(&store), ["meta", "segment.20000"]);
        // A put into an expired segment creates nothing.
        put(5);
        assert_eq!(tables(&store), ["meta", "segment.20000"]);
        assert_eq!(store.expired_puts_skipped(), 1);
    }

    #[test]
    fn negative_times_have_their_own_segments() {
        let core = Segments::open("w", Box::new(MemoryBackend::new()), 1_000, 50, false).unwrap();
        let store = WindowStore { core };
        store.write_batch(&[(b"k".to_vec(), -1, Some(vec![1])), (b"k".to_vec(), -50, Some(vec![2]))]).unwrap();
        store.write_batch(&[(b"k".to_vec(), -51, Some(vec![3]))]).unwrap();
        assert_eq!(tables(&store), ["meta", "segment.-1", "segment.-2"]);
        let mut got = Vec::new();
        store
            .fetch_range(b"k", i64::MIN, i64::MAX, &mut |t, v| {
                got.push((t, v[0]));
                true
            })
            .unwrap();
        assert_eq!(got, [(-51, 3), (-50, 2), (-1, 1)]);
    }
}
