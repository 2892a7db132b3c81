//! A projected scan of flat JSON objects: for a chunk of values whose projected columns are all
//! `BIGINT`, `DOUBLE`, `VARCHAR` or `BOOLEAN`, one pass over each value's bytes finds the
//! projected top-level keys and builds their Arrow arrays, skipping (but still validating) every
//! other field without building anything for it.
//!
//! It is only a shortcut: arrow-json's decoder stays the definition of what a value means. The
//! scan accepts a chunk only when every value is strictly valid JSON (RFC 8259, valid UTF-8, one
//! object and nothing after it) whose projected fields are in the plain forms whose meaning is
//! not in doubt: an integer literal that fits for `BIGINT`, a finite number for `DOUBLE`, a string
//! without escapes for `VARCHAR`, `true`/`false` for `BOOLEAN`, or `null`. Anything else in the
//! chunk — escapes in a projected key or string, a number for a `VARCHAR` column (arrow-json
//! coerces it), a duplicate projected key, nesting deeper than [`MAX_DEPTH`], a malformed value —
//! makes the scan give the whole chunk back, and the caller decodes it with arrow-json.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Schema};

/// Nesting the scan skips through in fields it does not project; deeper values go to arrow-json.
pub(crate) const MAX_DEPTH: usize = 64;
/// Projected columns the scan handles (a bit set marks those seen in a value).
const MAX_COLUMNS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int64,
    Float64,
    Utf8,
    Boolean,
}

/// One projected field's value in the value being scanned (a string as its byte range).
#[derive(Debug, Clone, Copy)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(usize, usize),
    Bool(bool),
}

enum Builder {
    Int64(Int64Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Boolean(BooleanBuilder),
}

/// The scan for one projection (see the module docs).
#[derive(Debug)]
pub(crate) struct FlatJson {
    names: Vec<Vec<u8>>,
    kinds: Vec<Kind>,
}

impl FlatJson {
    /// The scan for `projected` (the projected value columns), or None when a column's type is
    /// not one it builds.
    pub(crate) fn new(projected: &Schema) -> Option<FlatJson> {
        let fields = projected.fields();
        if fields.is_empty() || fields.len() > MAX_COLUMNS {
            return None;
        }
        let kinds = fields
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => Some(Kind::Int64),
                DataType::Float64 => Some(Kind::Float64),
                DataType::Utf8 => Some(Kind::Utf8),
                DataType::Boolean => Some(Kind::Boolean),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FlatJson { names: fields.iter().map(|f| f.name().as_bytes().to_vec()).collect(), kinds })
    }

    /// The projected columns of `values` (None: a tombstone, NULL columns), or None when some
    /// value is outside what the scan decides (the caller then uses arrow-json for the chunk).
    pub(crate) fn decode<'v>(&self, values: impl ExactSizeIterator<Item = Option<&'v [u8]>>) -> Option<Vec<ArrayRef>> {
        let rows = values.len();
        let mut builders: Vec<Builder> = self
            .kinds
            .iter()
            .map(|k| match k {
                Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(rows)),
                Kind::Float64 => Builder::Float64(Float64Builder::with_capacity(rows)),
                Kind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
                Kind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(rows)),
            })
            .collect();
        let mut cells = vec![Cell::Null; self.kinds.len()];
        for value in values {
            cells.iter_mut().for_each(|c| *c = Cell::Null);
            if let Some(bytes) = value {
                let ascii = self.scan(bytes, &mut cells)?;
                // The value must be UTF-8. Outside strings the scan accepts ASCII only, so a
                // value whose strings are ASCII is; any other is checked whole.
                if !ascii {
                    std::str::from_utf8(bytes).ok()?;
                }
                for (builder, cell) in builders.iter_mut().zip(&cells) {
                    match (builder, *cell) {
                        (Builder::Int64(b), Cell::Int(v)) => b.append_value(v),
                        (Builder::Float64(b), Cell::Float(v)) => b.append_value(v),
                        (Builder::Boolean(b), Cell::Bool(v)) => b.append_value(v),
                        // Between two ASCII quotes of valid UTF-8: valid UTF-8 itself (checked
                        // rather than assumed all the same; fast for ASCII).
                        (Builder::Utf8(b), Cell::Str(start, end)) => {
                            b.append_value(std::str::from_utf8(bytes.get(start..end)?).ok()?)
                        }
                        (Builder::Int64(b), _) => b.append_null(),
                        (Builder::Float64(b), _) => b.append_null(),
                        (Builder::Boolean(b), _) => b.append_null(),
                        (Builder::Utf8(b), _) => b.append_null(),
                    }
                }
            } else {
                for builder in &mut builders {
                    match builder {
                        Builder::Int64(b) => b.append_null(),
                        Builder::Float64(b) => b.append_null(),
                        Builder::Boolean(b) => b.append_null(),
                        Builder::Utf8(b) => b.append_null(),
                    }
                }
            }
        }
        Some(
            builders
                .into_iter()
                .map(|b| match b {
                    Builder::Int64(mut b) => Arc::new(b.finish()) as ArrayRef,
                    Builder::Float64(mut b) => Arc::new(b.finish()),
                    Builder::Boolean(mut b) => Arc::new(b.finish()),
                    Builder::Utf8(mut b) => Arc::new(b.finish()),
                })
                .collect(),
        )
    }

    /// Scans one value into `cells` (all Null on entry); says whether its strings were all
    /// ASCII (when not, the caller checks the value is UTF-8).
    fn scan(&self, bytes: &[u8], cells: &mut [Cell]) -> Option<bool> {
        let mut p = Scanner { b: bytes, i: 0, ascii: true };
        let mut seen: u64 = 0;
        p.ws();
        p.expect(b'{')?;
        p.ws();
        if p.peek()? == b'}' {
            p.i += 1;
        } else {
            loop {
                let (start, end) = p.plain_string()?;
                p.ws();
                p.expect(b':')?;
                p.ws();
                let key = &bytes[start..end];
                match self.names.iter().position(|n| n.as_slice() == key) {
                    Some(j) => {
                        if seen & (1 << j) != 0 {
                            return None;
                        }
                        seen |= 1 << j;
                        cells[j] = p.cell(self.kinds[j])?;
                    }
                    None => p.skip_value(0)?,
                }
                p.ws();
                match p.next()? {
                    b',' => p.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        p.ws();
        (p.i == bytes.len()).then_some(p.ascii)
    }
}

/// An integer literal of at most 18 digits (so it cannot overflow), sign included; None for
/// longer ones, which `str::parse` decides.
fn integer(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = v * 10 + i64::from(d.wrapping_sub(b'0'));
    }
    Some(if negative { -v } else { v })
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// No byte of 0x80 or above in the strings passed so far.
    ascii: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string without escapes or control characters: its contents' byte range.
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => return Some((start, self.i - 1)),
                b'\\' => return None,
                c if c < 0x20 => return None,
                c if c >= 0x80 => self.ascii = false,
                _ => {}
            }
        }
    }

    /// Any valid string (escapes checked, not decoded).
    fn skip_string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.b.get(self.i..self.i + 4)?;
                        // Four hex digits exactly (`from_str_radix` alone would take a `+`).
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        let unit = u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                        // Surrogates (paired or not) are left to arrow-json's rules.
                        if (0xD800..=0xDFFF).contains(&unit) {
                            return None;
                        }
                        self.i += 4;
                    }
                    _ => return None,
                },
                c if c < 0x20 => return None,
                c if c >= 0x80 => self.ascii = false,
                _ => {}
            }
        }
    }

    /// A number in JSON's grammar: its byte range and whether it is an integer (no fraction or
    /// exponent).
    fn number(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            self.next()?.is_ascii_digit().then_some(())?;
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.next()?.is_ascii_digit().then_some(())?;
            self.digits();
        }
        Some((start, self.i, integer))
    }

    /// The text of `number`'s range: ASCII by construction.
    fn text(&self, start: usize, end: usize) -> Option<&str> {
        std::str::from_utf8(self.b.get(start..end)?).ok()
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    /// A projected field's value, in the forms the scan decides (see the module docs).
    fn cell(&mut self, kind: Kind) -> Option<Cell> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(Cell::Null);
        }
        match kind {
            Kind::Int64 => match self.number()? {
                (start, end, true) => {
                    integer(self.b.get(start..end)?).or_else(|| self.text(start, end)?.parse().ok()).map(Cell::Int)
                }
                _ => None,
            },
            Kind::Float64 => {
                let (start, end, _) = self.number()?;
                let v: f64 = self.text(start, end)?.parse().ok()?;
                v.is_finite().then_some(Cell::Float(v))
            }
            Kind::Utf8 => self.plain_string().map(|(s, e)| Cell::Str(s, e)),
            Kind::Boolean => match self.peek()? {
                b't' => self.literal(b"true").map(|_| Cell::Bool(true)),
                b'f' => self.literal(b"false").map(|_| Cell::Bool(false)),
                _ => None,
            },
        }
    }

    /// Skips one valid JSON value, nested at `depth`.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            b'{' if depth < MAX_DEPTH => {
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip_string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;
    use datafusion::arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("score", DataType::Float64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ok", DataType::Boolean, true),
        ])
    }

    /// arrow-json's reading of one value, as `format.rs` decodes it: None when it refuses it.
    fn arrow_json(schema: &Schema, value: &[u8]) -> Option<Vec<ArrayRef>> {
        let mut decoder = arrow_json::ReaderBuilder::new(Arc::new(schema.clone()))
            .with_strict_mode(false)
            .with_coerce_primitive(true)
            .build_decoder()
            .ok()?;
        let read = decoder.decode(value).ok()?;
        let read_nl = decoder.decode(b"\n").ok()?;
        if read != value.len() || read_nl != 1 || decoder.has_partial_record() || decoder.len() != 1 {
            return None;
        }
        Some(decoder.flush().ok()??.columns().to_vec())
    }

    /// Whenever the scan decides a value, arrow-json must accept it and read the same row.
    fn agrees(value: &[u8]) -> bool {
        let schema = schema();
        let flat = FlatJson::new(&schema).unwrap();
        let Some(fast) = flat.decode(std::iter::once(Some(value))) else { return false };
        let slow = arrow_json(&schema, value)
            .unwrap_or_else(|| panic!("the scan decided {:?}, arrow-json refuses it", String::from_utf8_lossy(value)));
        for (f, s) in fast.iter().zip(&slow) {
            assert_eq!(f.to_data(), s.to_data(), "value {:?}", String::from_utf8_lossy(value));
        }
        true
    }

    #[test]
    fn plain_objects_are_decided_and_equal_arrow_json() {
        for v in [
            &br#"{"user_id": 7, "score": 2.5, "name": "ann", "ok": true}"#[..],
            br#" {"name":"b", "x": {"y": [1, {"z": "\"q\u00e9\""}, null]}, "user_id": -0} "#,
            br#"{"score": 3, "ok": false, "other": 1e300, "w": [], "v": {}}"#,
            br#"{}"#,
            br#"{"user_id": null, "score": null, "name": null, "ok": null}"#,
            "{\"name\": \"caf\u{e9} \u{1F600}\", \"score\": -1.25E-3}".as_bytes(),
            br#"{"user_id": 9223372036854775807, "score": 1e5}"#,
            br#"{"user_id": -9223372036854775808}"#,
            br#"{"user_id": 999999999999999999}"#,
            br#"{"user_id": -100000000000000000}"#,
            br#"{"user_id": 0}"#,
            "{\"caf\u{e9}\": \"\u{e9}\", \"user_id\": 3, \"name\": \"ok\"}".as_bytes(),
        ] {
            assert!(agrees(v), "{:?} went to arrow-json", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn doubtful_or_bad_values_go_to_arrow_json() {
        for v in [
            &br#"{"user_id": 2.5}"#[..],            // a fraction for BIGINT: arrow-json's rules
            br#"{"user_id": "12"}"#,                // a string for BIGINT
            br#"{"name": 12}"#,                     // coerced to text by arrow-json
            br#"{"name": "a\nb"}"#,                 // an escape in a projected string
            br#"{"us\u0065r_id": 1}"#,              // an escape in a key
            br#"{"user_id": 1, "user_id": 2}"#,     // a duplicate projected key
            br#"{"user_id": 9223372036854775808}"#, // does not fit
            br#"{"score": 1e400}"#,                 // not finite
            br#"{"user_id": 1} {"user_id": 2}"#,    // two values
            br#"[1, 2]"#,                           // not an object
            br#"{"user_id": 1"#,                    // truncated
            br#"{"x": tru}"#,                       // malformed, in a skipped field
            br#"{"x": 01}"#,                        // leading zero
            br#"{"x": "a\qb"}"#,                    // bad escape
            br#"{"x": [1,]}"#,                      // trailing comma
            br#"{"x": "\ud83d\ude00"}"#,            // a surrogate pair: arrow-json's rules
            br#"{"ok": "true"}"#,                   // a string for BOOLEAN
            b"{\"name\": \"\xff\"}",                // not UTF-8
            b"{\"x\": \"\xc3\", \"user_id\": 1}",   // not UTF-8, in a skipped field
            b"{\"\xe9\": 1, \"user_id\": 1}",       // not UTF-8, in a skipped key
            br#"{"user_id": -}"#,                   // a sign without digits
            br#"{"x": "\u+041"}"#,                  // not four hex digits
            b"{\"x\": \"tab\there\"}",              // a raw control character
        ] {
            let flat = FlatJson::new(&schema()).unwrap();
            assert!(flat.decode(std::iter::once(Some(v))).is_none(), "{:?} was decided", String::from_utf8_lossy(v));
        }
        let deep = format!("{{\"x\": {}{}}}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(FlatJson::new(&schema()).unwrap().decode(std::iter::once(Some(deep.as_bytes()))).is_none());
    }

    #[test]
    fn tombstones_are_null_rows_and_rows_stay_aligned() {
        let flat = FlatJson::new(&schema()).unwrap();
        let values: Vec<Option<&[u8]>> =
            vec![Some(br#"{"user_id": 1}"#), None, Some(br#"{"name": "c", "user_id": 3}"#)];
        let columns = flat.decode(values.into_iter()).unwrap();
        assert_eq!(columns[0].len(), 3);
        assert_eq!(columns[0].null_count(), 1);
        assert!(columns[0].is_null(1));
        assert_eq!(columns[2].null_count(), 2);
        assert!(columns[2].is_valid(2));
    }

    #[test]
    fn nested_or_other_typed_columns_have_no_scan() {
        let nested = Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            true,
        )]);
        assert!(FlatJson::new(&nested).is_none());
        assert!(FlatJson::new(&Schema::empty()).is_none());
    }

    /// Random mutations of plain values: every value the scan decides reads as arrow-json reads it.
    #[test]
    fn random_values_the_scan_decides_equal_arrow_json() {
        let seeds: [&[u8]; 4] = [
            br#"{"user_id": 12, "score": -0.5e1, "name": "zo\u00eb", "ok": true, "tags": ["a", {"b": null}]}"#,
            br#"{"name": "x", "nested": {"user_id": 5}, "user_id": 6}"#,
            br#"{"score": 10, "extra": "\"quoted\"", "ok": false}"#,
            b"{\"name\": \"\xc3\xa9t\xc3\xa9\", \"user_id\": -42}",
        ];
        let alphabet = b"{}[]\",:0123456789-+.eE tfnrul\\\"xa\xc3\xa9\n";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut decided = 0;
        for round in 0..20_000 {
            let mut v = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + rand(3) {
                let at = rand(v.len() + 1);
                match rand(3) {
                    0 if at < v.len() => {
                        v.remove(at);
                    }
                    1 => v.insert(at, alphabet[rand(alphabet.len())]),
                    _ if at < v.len() => v[at] = alphabet[rand(alphabet.len())],
                    _ => {}
                }
            }
            if agrees(&v) {
                decided += 1;
            }
        }
        // Most mutations break a value; enough survive to mean something.
        assert!(decided > 1_000, "only {decided} values decided");
    }
}
