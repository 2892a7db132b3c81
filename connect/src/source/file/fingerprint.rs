//! A file's identity across renames and restarts: a checksum of its first bytes.
//!
//! **The rule.** With `N` = `fingerprint.bytes`:
//! - a file with at least `N` bytes is identified by the checksum of its first `N` bytes
//!   ([`Kind::Bytes`]);
//! - a shorter file whose first line is complete (ends with `\n`) is identified by the checksum
//!   of that first line, newline included ([`Kind::FirstLine`]); when it grows to `N` bytes its
//!   identity moves to the `N`-byte checksum (the task checks the first line is unchanged and
//!   carries its position over);
//! - a shorter file without a complete first line has no identity yet and is not read.
//!
//! While two open files have the same fingerprint, only the first is read: the other is taken
//! for a copy (copytruncate's) and waits until the first one's fingerprint changes or it is let
//! go. So two files *shorter than `N`* with identical first lines are read one after the other
//! (the second once the first grows to `N` bytes or goes away); lower `fingerprint.bytes` where
//! many small files share a header line. Because a first line is a weak identity, the offset
//! of a file identified by it also stores `head_checksum`, the checksum of its first
//! `min(position, N)` bytes: a file that takes the position over (after a restart, or as the
//! next file with that first line) must start with the same bytes, or it is read as new.
//!
//! So two files with identical first lines but different first `N` bytes are distinct once
//! both have `N` bytes, and a file recreated with a new first line is a new file. The inode is
//! not used for identity across restarts: file systems reuse inode numbers. Changing
//! `fingerprint.bytes` changes every fingerprint (files are then read again).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// What a fingerprint is a checksum of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// The first `fingerprint.bytes` bytes.
    Bytes,
    /// The first line, for a file shorter than `fingerprint.bytes`.
    FirstLine,
}

/// A file's identity: 64-bit FNV-1a checksum (stable across Rust versions and platforms,
/// unlike `std`'s hasher, which matters because it is stored in the offsets topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fingerprint {
    pub(crate) checksum: u64,
    pub(crate) kind: Kind,
}

impl Fingerprint {
    /// The hex text stored in the source partition.
    pub(crate) fn hex(self) -> String {
        format!("{:016x}", self.checksum)
    }

    /// Parses the stored hex text.
    pub(crate) fn parse_hex(s: &str) -> Option<u64> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok()
    }
}

/// 64-bit FNV-1a.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The fingerprint of the bytes a file starts with (`head` holds up to `n` bytes), by the rule
/// in the module docs; `None` when the file has no identity yet.
pub(crate) fn of_head(head: &[u8], n: usize) -> Option<Fingerprint> {
    if head.len() >= n {
        return Some(Fingerprint { checksum: fnv1a(&head[..n]), kind: Kind::Bytes });
    }
    first_line(head)
}

/// The first-line fingerprint, when `head` holds a complete first line.
pub(crate) fn first_line(head: &[u8]) -> Option<Fingerprint> {
    let nl = head.iter().position(|&b| b == b'\n')?;
    Some(Fingerprint { checksum: fnv1a(&head[..=nl]), kind: Kind::FirstLine })
}

/// Reads up to `n` bytes from the start of `file` (positioned reads: the file's cursor does
/// not move). `buf` is reused between calls.
pub(crate) fn read_head<'a>(file: &File, n: usize, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    buf.resize(n, 0);
    let mut filled = 0;
    while filled < n {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(&buf[..filled])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_picks_bytes_then_first_line_then_nothing() {
        assert_eq!(of_head(b"abc", 8), None);
        let short = of_head(b"abc\nde", 8).unwrap();
        assert_eq!(short.kind, Kind::FirstLine);
        assert_eq!(short, of_head(b"abc\nxy", 8).unwrap(), "same first line, short: same identity");
        let a = of_head(b"abc\ndefgh", 8).unwrap();
        let b = of_head(b"abc\nxyzzy", 8).unwrap();
        assert_eq!(a.kind, Kind::Bytes);
        assert_ne!(a, b, "identical first lines, different first N bytes: distinct");
        assert_eq!(Fingerprint::parse_hex(&a.hex()), Some(a.checksum));
    }
}
