//! Where a record's row goes inside a topic's directory: Confluent's storage partitioners
//! (`default`: `partition=<kafka partition>`; `field`: `<field>=<value>` per
//! `partition.field.name`; `time`: `path.format` over a time bucket). Sans-IO: values in, path
//! strings out.

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Hive's name for a null partition value.
pub(crate) const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Where the time partitioner reads a record's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimestampExtractor {
    /// The Kafka record's timestamp.
    Record,
    /// A field of the value: epoch milliseconds, or an RFC 3339 string.
    RecordField(String),
    /// The worker's clock when the record is written.
    Wallclock,
}

/// The configured partitioner.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Partitioner {
    Default,
    Field { fields: Vec<String> },
    Time { format: PathFormat, duration_ms: i64, extractor: TimestampExtractor },
}

impl Partitioner {
    /// The columns the partitioner moves into the path (not repeated inside files).
    pub fn path_columns(&self) -> &[String] {
        match self {
            Partitioner::Field { fields } => fields,
            _ => &[],
        }
    }
}

/// One piece of a `path.format` (Joda-Time pattern letters, as Confluent's sinks use).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

/// A parsed `path.format`, e.g. `'dt'=YYYY-MM-dd/'hour'=HH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathFormat {
    tokens: Vec<Token>,
}

impl PathFormat {
    /// Parses a Joda-style pattern: `YYYY`/`yyyy`, `MM`, `dd`, `HH`, `mm`, `ss`, text in single
    /// quotes (`''` is a quote), any other non-letter as is.
    pub fn parse(pattern: &str) -> Result<PathFormat, String> {
        let mut tokens = Vec::new();
        let chars: Vec<char> = pattern.chars().collect();
        let mut lit = String::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                if chars.get(i + 1) == Some(&'\'') {
                    lit.push('\'');
                    i += 2;
                    continue;
                }
                // Quoted text; '' inside is a quote.
                i += 1;
                loop {
                    match (chars.get(i), chars.get(i + 1)) {
                        (None, _) => return Err("an unclosed quote in path.format".to_owned()),
                        (Some('\''), Some('\'')) => {
                            lit.push('\'');
                            i += 2;
                        }
                        (Some('\''), _) => {
                            i += 1;
                            break;
                        }
                        (Some(&c), _) => {
                            lit.push(c);
                            i += 1;
                        }
                    }
                }
                continue;
            }
            if !c.is_ascii_alphabetic() {
                if c == '\\' || c == '.' && chars.get(i + 1) == Some(&'.') {
                    return Err("path.format may not contain \\ or ..".to_owned());
                }
                lit.push(c);
                i += 1;
                continue;
            }
            let run = chars[i..].iter().take_while(|&&x| x == c).count();
            let token = match (c, run) {
                ('Y' | 'y', 4) => Token::Year,
                ('M', 2) => Token::Month,
                ('d', 2) => Token::Day,
                ('H', 2) => Token::Hour,
                ('m', 2) => Token::Minute,
                ('s', 2) => Token::Second,
                _ => {
                    return Err(format!(
                        "pattern {} is not supported in path.format (use YYYY, MM, dd, HH, mm, ss; quote text)",
                        c.to_string().repeat(run)
                    ))
                }
            };
            if !lit.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut lit)));
            }
            tokens.push(token);
            i += run;
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        if tokens.is_empty() {
            return Err("path.format is empty".to_owned());
        }
        // Quoted text too: the directories must stay under the topic's directory.
        for (i, t) in tokens.iter().enumerate() {
            if let Token::Literal(l) = t {
                if l.contains("..") || l.contains('\\') || (i == 0 && l.starts_with('/')) {
                    return Err("path.format may not contain .., \\ or a leading /".to_owned());
                }
            }
        }
        Ok(PathFormat { tokens })
    }

    /// The path for a time (UTC).
    /// `None`: a time outside chrono's range (a bad record field, not a panic).
    pub fn format(&self, time_ms: i64) -> Option<String> {
        let t: DateTime<Utc> = DateTime::from_timestamp_millis(time_ms)?;
        let mut out = String::with_capacity(32);
        for tok in &self.tokens {
            match tok {
                Token::Literal(s) => out.push_str(s),
                Token::Year => out.push_str(&format!("{:04}", t.year())),
                Token::Month => out.push_str(&format!("{:02}", t.month())),
                Token::Day => out.push_str(&format!("{:02}", t.day())),
                Token::Hour => out.push_str(&format!("{:02}", t.hour())),
                Token::Minute => out.push_str(&format!("{:02}", t.minute())),
                Token::Second => out.push_str(&format!("{:02}", t.second())),
            }
        }
        Some(out)
    }
}

/// The start of the `duration_ms` bucket holding `time_ms` (`None` when it would be below
/// `i64::MIN`: a bad record field).
pub(crate) fn bucket_start(time_ms: i64, duration_ms: i64) -> Option<i64> {
    time_ms.checked_sub(time_ms.rem_euclid(duration_ms.max(1)))
}

/// `default`'s directory.
pub(crate) fn default_path(kafka_partition: i32) -> String {
    format!("partition={kafka_partition}")
}

/// A `<name>=<value>` path segment, escaped as Hive escapes partition values (`/`, `=`, `%`,
/// quotes and control characters as `%XX`), so any value stays one directory and reads back
/// with hive partitioning.
pub(crate) fn push_segment(out: &mut String, name: &str, value: Option<&str>) {
    if !out.is_empty() {
        out.push('/');
    }
    escape_into(out, name);
    out.push('=');
    match value {
        None => out.push_str(HIVE_NULL),
        Some("") => out.push_str(HIVE_NULL),
        Some(v) => escape_into(out, v),
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        let special = matches!(c, '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^')
            || (c as u32) < 0x20
            || c as u32 == 0x7f;
        if special {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    // "." and ".." would escape the directory tree; a leading dot hides the directory.
    if s.starts_with('.') {
        let start = out.len() - s.len();
        out.replace_range(start..start + 1, "%2E");
    }
}

/// Milliseconds since the epoch from an RFC 3339 string.
pub(crate) fn parse_time_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_format_parses_and_formats_utc() {
        let f = PathFormat::parse("'dt'=YYYY-MM-dd/'hour'=HH").unwrap();
        // 2024-03-05T07:08:09Z
        let t = 1_709_622_489_000;
        assert_eq!(f.format(t).unwrap(), "dt=2024-03-05/hour=07");
        let g = PathFormat::parse("'year'=yyyy/'month'=MM/'day'=dd/'minute'=mm/ss").unwrap();
        assert_eq!(g.format(t).unwrap(), "year=2024/month=03/day=05/minute=08/09");
        assert_eq!(PathFormat::parse("'it''s'=YYYY").unwrap().format(0).unwrap(), "it's=1970");
        assert!(PathFormat::parse("'dt'=YYYY-MM-dd EEE").is_err());
        assert!(PathFormat::parse("'dt").is_err());
        assert!(PathFormat::parse("").is_err());
        assert!(PathFormat::parse("../YYYY").is_err());
    }

    #[test]
    fn buckets_floor_including_before_epoch() {
        assert_eq!(bucket_start(3_600_000 * 5 + 17, 3_600_000), Some(3_600_000 * 5));
        assert_eq!(bucket_start(-1, 1000), Some(-1000));
        assert_eq!(bucket_start(i64::MIN + 1, 1000), None);
        assert_eq!(PathFormat::parse("YYYY").unwrap().format(i64::MAX), None);
        for bad in ["'..'/YYYY", "'/abs'/YYYY", "YYYY/'a\\\\b'"] {
            assert!(PathFormat::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(bucket_start(42, 0), Some(42));
    }

    #[test]
    fn segments_escape_like_hive() {
        let mut p = String::new();
        push_segment(&mut p, "country", Some("FR"));
        push_segment(&mut p, "city", Some("a/b=c%"));
        push_segment(&mut p, "n", None);
        push_segment(&mut p, "dot", Some(".."));
        assert_eq!(p, "country=FR/city=a%2Fb%3Dc%25/n=__HIVE_DEFAULT_PARTITION__/dot=%2E.");
        assert_eq!(default_path(3), "partition=3");
    }

    #[test]
    fn partition_columns_and_times() {
        assert!(Partitioner::Default.path_columns().is_empty());
        let f = Partitioner::Field { fields: vec!["a".into()] };
        assert_eq!(f.path_columns(), ["a".to_owned()]);
        let t = Partitioner::Time {
            format: PathFormat::parse("YYYY").unwrap(),
            duration_ms: 1000,
            extractor: TimestampExtractor::RecordField("ts".into()),
        };
        assert!(t.path_columns().is_empty());
        assert_eq!(parse_time_ms("1970-01-01T00:00:01Z"), Some(1000));
    }
}
