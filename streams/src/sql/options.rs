//! A topic table's options: the `WITH (key = 'value', …)` of `CREATE TABLE`, or the defaults an
//! inferred table gets.

use std::fmt;

use crate::StreamsError;

/// Records read per partition to infer a schema when `sample.records` is not set.
pub const DEFAULT_SAMPLE_RECORDS: usize = 1000;
/// The most records per partition `sample.records` may ask for: the sample is held in memory.
pub const MAX_SAMPLE_RECORDS: usize = 100_000;

/// How a record's value becomes columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueFormat {
    /// A JSON object per record; its fields are the columns.
    #[default]
    Json,
    /// The value as UTF-8 text in one column `value`.
    String,
    /// The value's bytes in one column `value`.
    Bytes,
    /// One CSV line per record; declared columns, else `c1..cN` (text).
    Csv,
}

impl ValueFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueFormat::Json => "json",
            ValueFormat::String => "string",
            ValueFormat::Bytes => "bytes",
            ValueFormat::Csv => "csv",
        }
    }
}

impl fmt::Display for ValueFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a record whose value does not decode becomes (`on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// NULL value columns (the metadata columns stay), counted in
    /// `spate_sql_records_malformed_total` and the query's `malformed_records`.
    #[default]
    Null,
    /// The query fails, naming the record's topic, partition and offset.
    Fail,
}

/// A topic table's options. Parsed from `WITH (…)` by [`TableOptions::parse`]; the doc comments
/// are the user docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// `topic`: the topic the table reads (default: the table's name).
    pub topic: String,
    /// `format`: `json` (default), `string`, `bytes` or `csv`.
    pub format: ValueFormat,
    /// `on_error`: `null` (default) or `fail`.
    pub on_error: OnError,
    /// `lateness`: how late (event time) a record may be and still count in its window, for
    /// continuous queries, e.g. `'5 seconds'`. Default 0.
    pub lateness_ms: i64,
    /// `idle_timeout`: a partition without records for this long stops holding the watermark back
    /// (continuous queries). Default: none (an idle partition holds it).
    pub idle_timeout_ms: Option<i64>,
    /// `sample.records`: records read per partition to infer the schema (default 1000, at most
    /// 100000).
    pub sample_records: usize,
    /// `csv.delimiter`: one ASCII character, or `\t` (default `,`).
    pub csv_delimiter: u8,
}

/// The `WITH` keys [`TableOptions::parse`] accepts.
pub const OPTION_KEYS: &[&str] =
    &["topic", "format", "on_error", "lateness", "idle_timeout", "sample.records", "csv.delimiter"];

impl TableOptions {
    /// The defaults for a table reading `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        TableOptions {
            topic: topic.into(),
            format: ValueFormat::Json,
            on_error: OnError::Null,
            lateness_ms: 0,
            idle_timeout_ms: None,
            sample_records: DEFAULT_SAMPLE_RECORDS,
            csv_delimiter: b',',
        }
    }

    /// Parses `WITH (key = 'value', …)` pairs; `table` is the default topic. Keys are
    /// case-insensitive. An unknown key or a bad value is the query's fault (`SqlPlan`).
    pub fn parse<'a>(
        table: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TableOptions, StreamsError> {
        let mut options = TableOptions::new(table);
        for (key, value) in pairs {
            let key = key.to_ascii_lowercase();
            let value = value.trim();
            match key.as_str() {
                "topic" => {
                    if value.is_empty() {
                        return Err(plan("option topic must not be empty".to_owned()));
                    }
                    options.topic = value.to_owned();
                }
                "format" => {
                    options.format = match value.to_ascii_lowercase().as_str() {
                        "json" => ValueFormat::Json,
                        "string" | "text" => ValueFormat::String,
                        "bytes" | "binary" => ValueFormat::Bytes,
                        "csv" => ValueFormat::Csv,
                        other => {
                            return Err(plan(format!("unknown format '{other}' (expected json, string, bytes or csv)")))
                        }
                    }
                }
                "on_error" => {
                    options.on_error = match value.to_ascii_lowercase().as_str() {
                        "null" => OnError::Null,
                        "fail" => OnError::Fail,
                        other => return Err(plan(format!("unknown on_error '{other}' (expected null or fail)"))),
                    }
                }
                "lateness" => {
                    options.lateness_ms = parse_interval_ms(value).map_err(|e| plan(format!("lateness: {e}")))?
                }
                "idle_timeout" => {
                    options.idle_timeout_ms =
                        Some(parse_interval_ms(value).map_err(|e| plan(format!("idle_timeout: {e}")))?)
                }
                "sample.records" => {
                    let n: usize = value
                        .parse()
                        .map_err(|_| plan(format!("sample.records '{value}' is not a non-negative integer")))?;
                    if n == 0 || n > MAX_SAMPLE_RECORDS {
                        return Err(plan(format!("sample.records {n} is out of range (1..={MAX_SAMPLE_RECORDS})")));
                    }
                    options.sample_records = n;
                }
                "csv.delimiter" => {
                    let delimiter = match value {
                        "\\t" | "tab" => b'\t',
                        v if v.len() == 1 && v.is_ascii() => v.as_bytes()[0],
                        v => return Err(plan(format!("csv.delimiter '{v}' must be one ASCII character"))),
                    };
                    options.csv_delimiter = delimiter;
                }
                other => {
                    return Err(plan(format!("unknown table option '{other}' (allowed: {})", OPTION_KEYS.join(", "))))
                }
            }
        }
        Ok(options)
    }
}

fn plan(message: String) -> StreamsError {
    StreamsError::SqlPlan { message, position: None }
}

/// Parses an interval such as `'5 seconds'`, `'500 ms'`, `'1 minute'`, `'2h'` or `'0'` into
/// milliseconds.
pub fn parse_interval_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not an interval (expected e.g. '5 seconds', '500 ms', '1 minute')"))?;
    let unit_ms: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" if number == 0.0 => 1.0,
        "ms" | "millis" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        other => {
            return Err(format!("unknown interval unit '{other}' in '{text}' (ms, seconds, minutes, hours, days)"))
        }
    };
    let ms = number * unit_ms;
    // Up to ~100 years: beyond that the value is a typo, and i64 arithmetic on it would overflow.
    if !ms.is_finite() || ms > 3.2e12 {
        return Err(format!("interval '{text}' is too large"));
    }
    Ok(ms.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_all_keys() {
        let o = TableOptions::parse("t", []).unwrap();
        assert_eq!(o, TableOptions::new("t"));
        let o = TableOptions::parse(
            "t",
            [
                ("topic", "events"),
                ("FORMAT", "CSV"),
                ("on_error", "fail"),
                ("lateness", "5 seconds"),
                ("idle_timeout", "500 ms"),
                ("sample.records", "10"),
                ("csv.delimiter", ";"),
            ],
        )
        .unwrap();
        assert_eq!(o.topic, "events");
        assert_eq!(o.format, ValueFormat::Csv);
        assert_eq!(o.on_error, OnError::Fail);
        assert_eq!(o.lateness_ms, 5000);
        assert_eq!(o.idle_timeout_ms, Some(500));
        assert_eq!(o.sample_records, 10);
        assert_eq!(o.csv_delimiter, b';');
    }

    #[test]
    fn unknown_key_names_it_and_the_allowed_ones() {
        let err = TableOptions::parse("t", [("topik", "x")]).unwrap_err().to_string();
        assert!(err.contains("'topik'") && err.contains("sample.records"), "{err}");
        assert!(TableOptions::parse("t", [("format", "avro")]).is_err());
        assert!(TableOptions::parse("t", [("on_error", "skip")]).is_err());
        assert!(TableOptions::parse("t", [("sample.records", "0")]).is_err());
        assert!(TableOptions::parse("t", [("sample.records", "1000001")]).is_err());
        assert!(TableOptions::parse("t", [("sample.records", "-1")]).is_err());
        assert!(TableOptions::parse("t", [("csv.delimiter", ";;")]).is_err());
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval_ms("5 seconds"), Ok(5_000));
        assert_eq!(parse_interval_ms("500 ms"), Ok(500));
        assert_eq!(parse_interval_ms("1 minute"), Ok(60_000));
        assert_eq!(parse_interval_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_interval_ms("1.5 s"), Ok(1_500));
        assert_eq!(parse_interval_ms("0"), Ok(0));
        assert!(parse_interval_ms("5").is_err());
        assert!(parse_interval_ms("five seconds").is_err());
        assert!(parse_interval_ms("5 fortnights").is_err());
        assert!(parse_interval_ms("-5 s").is_err());
        assert!(parse_interval_ms("99999999999 days").is_err());
    }
}
