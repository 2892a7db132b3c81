//! Multiline events (`multiline.start.pattern`, `multiline.timeout.ms`): a line matching the
//! pattern starts a new event, any other line is appended to the current one with `\n`. An
//! event is complete when the next one starts, or when no line was appended for the timeout
//! (the writer may be done), or when its file is let go. Events are bounded by
//! `max.line.bytes` like lines: appending stops there and the event is marked truncated.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use regex::bytes::Regex;

use super::reader::Line;

/// The event being assembled.
#[derive(Debug)]
struct Pending {
    offset: u64,
    end: u64,
    /// The first line, kept as a slice while the event has one line (the common case).
    first: Bytes,
    /// The joined lines once a second one arrives.
    joined: Option<BytesMut>,
    truncated: bool,
    last_line_at: Instant,
}

/// Multiline assembler for one file.
#[derive(Debug)]
pub(crate) struct Multiline {
    start: Regex,
    timeout: Duration,
    max_bytes: usize,
    pending: Option<Pending>,
}

impl Multiline {
    pub(crate) fn new(start: Regex, timeout: Duration, max_bytes: usize) -> Self {
        Multiline { start, timeout, max_bytes, pending: None }
    }

    /// Adds a line read at `now`; returns the event it completed, if any.
    pub(crate) fn push(&mut self, line: Line, now: Instant) -> Option<Line> {
        if self.start.is_match(&line.bytes) {
            let done = self.take();
            self.pending = Some(Pending {
                offset: line.offset,
                end: line.end,
                first: line.bytes,
                joined: None,
                truncated: line.truncated,
                last_line_at: now,
            });
            return done;
        }
        let Some(p) = self.pending.as_mut() else {
            // Lines before the first start line form an event of their own.
            self.pending = Some(Pending {
                offset: line.offset,
                end: line.end,
                first: line.bytes,
                joined: None,
                truncated: line.truncated,
                last_line_at: now,
            });
            return None;
        };
        p.end = line.end;
        p.last_line_at = now;
        p.truncated |= line.truncated;
        let joined = p.joined.get_or_insert_with(|| BytesMut::from(&p.first[..]));
        let room = self.max_bytes.saturating_sub(joined.len());
        if room == 0 {
            p.truncated = true;
            return None;
        }
        joined.extend_from_slice(b"\n");
        let take = line.bytes.len().min(room - 1);
        joined.extend_from_slice(&line.bytes[..take]);
        if take < line.bytes.len() {
            p.truncated = true;
        }
        None
    }

    /// The pending event when it timed out at `now`.
    pub(crate) fn flush_due(&mut self, now: Instant) -> Option<Line> {
        let due = self.pending.as_ref().is_some_and(|p| now.saturating_duration_since(p.last_line_at) >= self.timeout);
        if due {
            self.take()
        } else {
            None
        }
    }

    /// When the pending event times out.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.last_line_at + self.timeout)
    }

    /// The pending event, complete or not.
    pub(crate) fn take(&mut self) -> Option<Line> {
        let p = self.pending.take()?;
        let bytes = match p.joined {
            Some(j) => j.freeze(),
            None => p.first,
        };
        Some(Line { offset: p.offset, end: p.end, bytes, truncated: p.truncated })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(offset: u64, text: &str) -> Line {
        Line {
            offset,
            end: offset + text.len() as u64 + 1,
            bytes: Bytes::copy_from_slice(text.as_bytes()),
            truncated: false,
        }
    }

    #[test]
    fn joins_continuations_and_times_out() {
        let t0 = Instant::now();
        let mut m = Multiline::new(Regex::new(r"^\d").unwrap(), Duration::from_millis(100), 1000);
        assert_eq!(m.push(line(0, "1 start"), t0), None);
        assert_eq!(m.push(line(8, "  at a"), t0), None);
        let first = m.push(line(15, "2 next"), t0).unwrap();
        assert_eq!((&first.bytes[..], first.offset, first.end), (&b"1 start\n  at a"[..], 0, 15));
        assert_eq!(m.flush_due(t0 + Duration::from_millis(50)), None);
        let second = m.flush_due(t0 + Duration::from_millis(100)).unwrap();
        assert_eq!((&second.bytes[..], second.end), (&b"2 next"[..], 22));
    }

    #[test]
    fn events_are_bounded() {
        let t0 = Instant::now();
        let mut m = Multiline::new(Regex::new("^S").unwrap(), Duration::from_secs(1), 10);
        m.push(line(0, "S1234"), t0);
        m.push(line(6, "abcdef"), t0);
        m.push(line(13, "more"), t0);
        let e = m.take().unwrap();
        assert_eq!(&e.bytes[..], b"S1234\nabcd");
        assert!(e.truncated);
        assert_eq!(e.end, 18);
    }
}
