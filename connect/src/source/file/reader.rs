//! Splits a file into lines, reading large chunks and handing out lines as slices of them
//! (`Bytes::slice`: no copy per line), with a hard bound on memory: a line longer than
//! `max.line.bytes` keeps only its first `max.line.bytes` bytes while the rest is skipped as it
//! is read, so the reader never holds more than `max.line.bytes` + one read buffer (twice that
//! while a buffer grows).

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

/// One line (or, from [`LineReader::take_partial`], the unterminated tail of a file).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    /// Byte offset of the line's first byte.
    pub(crate) offset: u64,
    /// Byte offset just after the line's newline.
    pub(crate) end: u64,
    /// The line without `\n` or `\r\n`, at most `max.line.bytes` long.
    pub(crate) bytes: Bytes,
    /// The line was longer than `max.line.bytes` and `bytes` holds its start only.
    pub(crate) truncated: bool,
}

/// Line splitter over one file.
#[derive(Debug)]
pub(crate) struct LineReader {
    read_buf_bytes: usize,
    max_line_bytes: usize,
    /// Complete lines read and not yet handed out (ends with `\n` when not empty).
    ready: Bytes,
    /// File offset of `ready[0]`.
    ready_start: u64,
    /// Next unread index into `ready`.
    cursor: usize,
    /// The unterminated line after `ready`.
    buf: BytesMut,
    /// File offset of `buf[0]`.
    buf_start: u64,
    /// The current line outgrew `max_line_bytes`: its start offset and first bytes; the rest
    /// of it is being skipped.
    oversized: Option<(u64, Bytes)>,
    /// An oversized line completed by the last read, handed out before `ready`.
    finished: Option<Line>,
    /// File offset of the next byte to read.
    read_pos: u64,
}

impl LineReader {
    /// A reader whose next read happens at file offset `position`.
    pub(crate) fn new(position: u64, read_buf_bytes: usize, max_line_bytes: usize) -> Self {
        LineReader {
            read_buf_bytes,
            max_line_bytes,
            ready: Bytes::new(),
            ready_start: position,
            cursor: 0,
            buf: BytesMut::new(),
            buf_start: position,
            oversized: None,
            finished: None,
            read_pos: position,
        }
    }

    /// File offset of the next byte to read (the caller's file cursor must be there).
    pub(crate) fn read_pos(&self) -> u64 {
        self.read_pos
    }

    /// Drops everything buffered; the next read happens at `position`.
    pub(crate) fn reset(&mut self, position: u64) {
        *self = LineReader::new(position, self.read_buf_bytes, self.max_line_bytes);
    }

    /// The next complete line already read, if any.
    pub(crate) fn next_line(&mut self) -> Option<Line> {
        if let Some(line) = self.finished.take() {
            return Some(line);
        }
        let rest = self.ready.get(self.cursor..)?;
        let nl = find_newline(rest)?;
        let start = self.cursor;
        let newline = start + nl;
        self.cursor = newline + 1;
        let mut stop = newline;
        if stop > start && self.ready[stop - 1] == b'\r' {
            stop -= 1;
        }
        let truncated = stop - start > self.max_line_bytes;
        if truncated {
            stop = start + self.max_line_bytes;
        }
        Some(Line {
            offset: self.ready_start + start as u64,
            end: self.ready_start + newline as u64 + 1,
            bytes: self.ready.slice(start..stop),
            truncated,
        })
    }

    /// Reads one chunk from `file` (whose cursor is at [`LineReader::read_pos`]). Call when
    /// [`LineReader::next_line`] returned `None`. Returns the bytes read (0 at end of file).
    pub(crate) fn fill(&mut self, file: &mut impl Read) -> io::Result<usize> {
        if self.finished.is_some() || self.cursor < self.ready.len() {
            return Ok(0);
        }
        let old = self.buf.len();
        self.buf.resize(old + self.read_buf_bytes, 0);
        let n = loop {
            match file.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        self.read_pos += n as u64;
        if n == 0 {
            if self.buf.is_empty() {
                // An idle file keeps no buffer: many quiet files must not cost a chunk each.
                self.buf = BytesMut::new();
            }
            return Ok(0);
        }
        if let Some(last) = self.buf[old..].iter().rposition(|&b| b == b'\n') {
            let cut = old + last + 1;
            let chunk = self.buf.split_to(cut).freeze();
            let chunk_start = self.buf_start;
            self.buf_start += cut as u64;
            let mut skip = 0;
            if let Some((offset, prefix)) = self.oversized.take() {
                // The chunk's first line ends the oversized one; hand out what was kept.
                let first_nl = find_newline(&chunk).unwrap_or(chunk.len() - 1);
                skip = first_nl + 1;
                self.finished = Some(Line { offset, end: chunk_start + skip as u64, bytes: prefix, truncated: true });
            }
            self.ready = chunk;
            self.ready_start = chunk_start;
            self.cursor = skip;
        } else if self.oversized.is_some() {
            self.buf_start += self.buf.len() as u64;
            self.buf.clear();
        }
        if self.oversized.is_none() && self.buf.len() > self.max_line_bytes {
            // Keep the line's start (copied, so the big buffer can be reused) and skip the rest.
            let prefix = Bytes::copy_from_slice(&self.buf[..self.max_line_bytes]);
            self.oversized = Some((self.buf_start, prefix));
            self.buf_start += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(n)
    }

    /// The unterminated last line, for a file that is being let go (nothing more will be
    /// written to it).
    pub(crate) fn take_partial(&mut self) -> Option<Line> {
        if let Some(line) = self.next_line() {
            return Some(line);
        }
        if let Some((offset, prefix)) = self.oversized.take() {
            return Some(Line { offset, end: self.read_pos, bytes: prefix, truncated: true });
        }
        if self.buf.is_empty() {
            return None;
        }
        let offset = self.buf_start;
        self.buf_start = self.read_pos;
        let mut bytes = self.buf.split().freeze();
        if bytes.last() == Some(&b'\r') {
            bytes.truncate(bytes.len() - 1);
        }
        let truncated = bytes.len() > self.max_line_bytes;
        bytes.truncate(self.max_line_bytes);
        Some(Line { offset, end: self.read_pos, bytes, truncated })
    }

    /// Bytes held (for the memory bound's test).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.oversized.as_ref().map_or(0, |(_, p)| p.len())
    }
}

/// The index of the first `\n`, eight bytes at a time (the classic "has zero byte" word
/// trick: `memchr` is not a dependency, and a byte loop is the source's hottest code).
fn find_newline(haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = ONES * b'\n' as u64;
    let (words, rest) = haystack.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let w = u64::from_le_bytes(*word) ^ NEWLINES;
        // A high bit for each zero byte of `w`; bits above the first one may be false, and in
        // little-endian order "above" is later, so the lowest bit is the first newline.
        let zeros = w.wrapping_sub(ONES) & !w & HIGHS;
        if zeros != 0 {
            return Some(i * 8 + (zeros.trailing_zeros() / 8) as usize);
        }
    }
    rest.iter().position(|&b| b == b'\n').map(|j| words.len() * 8 + j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_lines(data: &[u8], read: usize, max: usize) -> Vec<Line> {
        let mut r = LineReader::new(0, read, max);
        let mut src = data;
        let mut out = Vec::new();
        loop {
            while let Some(l) = r.next_line() {
                out.push(l);
            }
            if r.fill(&mut src).unwrap() == 0 {
                break;
            }
        }
        out.extend(r.take_partial());
        out
    }

    #[test]
    fn find_newline_matches_a_byte_loop() {
        let mut data: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        data.retain(|&b| b != b'\n');
        for at in [None, Some(0), Some(7), Some(8), Some(9), Some(63), Some(150), Some(data.len() - 1)] {
            let mut d = data.clone();
            if let Some(at) = at {
                d[at] = b'\n';
                let last = d.len() - 1;
                d[last] = b'\n';
            }
            for start in 0..9 {
                let s = &d[start.min(d.len())..];
                assert_eq!(find_newline(s), s.iter().position(|&b| b == b'\n'), "at {at:?} start {start}");
            }
        }
        // Bytes next to the newline that the word trick could mistake for one.
        assert_eq!(find_newline(b"\x0b\x09\x0a\x8a\x0b\x0b\x0b\x0b\x0a"), Some(2));
        assert_eq!(find_newline(b"\x8a\x8a\x8a\x8a\x8a\x8a\x8a\x8a\x0b"), None);
    }

    #[test]
    fn splits_lines_across_chunks_with_offsets_and_crlf() {
        let lines = all_lines(b"one\r\ntwo\n\nthree\nfour", 3, 100);
        let got: Vec<_> = lines.iter().map(|l| (l.offset, l.end, &l.bytes[..])).collect();
        assert_eq!(got, vec![(0, 5, &b"one"[..]), (5, 9, b"two"), (9, 10, b""), (10, 16, b"three"), (16, 20, b"four")]);
    }

    #[test]
    fn long_lines_keep_their_start_and_skip_the_rest() {
        let mut data = b"ok\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 1000));
        data.extend(b"\nafter\n");
        data.extend(std::iter::repeat_n(b'y', 30));
        for read in [4, 7, 64, 4096] {
            let lines = all_lines(&data, read, 10);
            assert_eq!(lines.len(), 4, "read size {read}");
            assert_eq!(&lines[1].bytes[..], b"xxxxxxxxxx");
            assert!(lines[1].truncated);
            assert_eq!((lines[1].offset, lines[1].end), (3, 1004));
            assert_eq!((&lines[2].bytes[..], lines[2].offset, lines[2].truncated), (&b"after"[..], 1004, false));
            assert_eq!((lines[3].bytes.len(), lines[3].truncated), (10, true));
        }
    }
}
