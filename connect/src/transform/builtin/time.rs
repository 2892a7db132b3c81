//! `TimestampConverter` and `TimestampRouter`, and the translation of Java's
//! `SimpleDateFormat` patterns (what Kafka's `format` and `timestamp.format` keys hold) to
//! chrono. Times are formatted and parsed in UTC, as Kafka does.

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::DateTime;
use serde_json::Value as Json;

use super::{json_type, with_object, EntryConfig, RecordOp, Side};
use crate::error::Result;
use crate::record::{ConnectRecord, Value};

const MS_PER_DAY: i64 = 86_400_000;

/// A `SimpleDateFormat` pattern compiled for chrono: the items to format with (in UTC) and
/// the items to parse with, plus which parts the pattern has, so a parse can default the rest
/// as Java does (a date-only pattern means midnight, a time-only one means 1970-01-01).
pub(super) struct JavaDateFormat {
    format: Vec<Item<'static>>,
    parse: Vec<Item<'static>>,
    has_zone: bool,
    has_year: bool,
    has_month: bool,
    has_day: bool,
    has_hour: bool,
    has_minute: bool,
}

impl JavaDateFormat {
    /// Translates the pattern letters y M d H h m s S a E D Z X and quoted literals; other
    /// letters are refused (the error names the letter).
    pub(super) fn new(pattern: &str) -> std::result::Result<Self, String> {
        let mut fmt = String::new();
        let mut parse = String::new();
        let mut this = JavaDateFormat {
            format: Vec::new(),
            parse: Vec::new(),
            has_zone: false,
            has_year: false,
            has_month: false,
            has_day: false,
            has_hour: false,
            has_minute: false,
        };
        let push_literal = |fmt: &mut String, parse: &mut String, c: char| {
            if c == '%' {
                fmt.push_str("%%");
                parse.push_str("%%");
            } else {
                fmt.push(c);
                parse.push(c);
            }
        };
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                // '' is a quote; 'text' is literal text.
                if chars.get(i + 1) == Some(&'\'') {
                    push_literal(&mut fmt, &mut parse, '\'');
                    i += 2;
                    continue;
                }
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("a quote is not closed".into()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            push_literal(&mut fmt, &mut parse, '\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            push_literal(&mut fmt, &mut parse, c);
                            i += 1;
                        }
                    }
                }
                continue;
            }
            if !c.is_ascii_alphabetic() {
                push_literal(&mut fmt, &mut parse, c);
                i += 1;
                continue;
            }
            let mut count = 1;
            while chars.get(i + count) == Some(&c) {
                count += 1;
            }
            i += count;
            let (f, p): (&str, &str) = match (c, count) {
                ('y', 2) => ("%y", "%y"),
                ('y', _) => ("%Y", "%Y"),
                ('M', 1) => ("%-m", "%m"),
                ('M', 2) => ("%m", "%m"),
                ('M', 3) => ("%b", "%b"),
                ('M', _) => ("%B", "%B"),
                ('d', 1) => ("%-d", "%d"),
                ('d', _) => ("%d", "%d"),
                ('D', _) => ("%j", "%j"),
                ('H', 1) => ("%-H", "%H"),
                ('H', _) => ("%H", "%H"),
                ('h', 1) => ("%-I", "%I"),
                ('h', _) => ("%I", "%I"),
                ('m', 1) => ("%-M", "%M"),
                ('m', _) => ("%M", "%M"),
                ('s', 1) => ("%-S", "%S"),
                ('s', _) => ("%S", "%S"),
                ('S', _) => ("%3f", "%3f"),
                ('a', _) => ("%p", "%p"),
                ('E', 1..=3) => ("%a", "%a"),
                ('E', _) => ("%A", "%A"),
                ('Z', _) => ("%z", "%z"),
                // Java writes X as `Z` for UTC, which is all Kafka formats in; parsing takes
                // `Z` or an offset with or without a colon.
                ('X', _) => ("Z", "%#z"),
                _ => return Err(format!("the pattern letter {c} is not supported")),
            };
            match c {
                'y' => this.has_year = true,
                'M' => this.has_month = true,
                'd' => this.has_day = true,
                'D' => {
                    this.has_month = true;
                    this.has_day = true
                }
                'H' | 'h' => this.has_hour = true,
                'm' => this.has_minute = true,
                'Z' | 'X' => this.has_zone = true,
                _ => {}
            }
            fmt.push_str(f);
            parse.push_str(p);
        }
        this.format = StrftimeItems::new(&fmt).parse_to_owned().map_err(|e| e.to_string())?;
        this.parse = StrftimeItems::new(&parse).parse_to_owned().map_err(|e| e.to_string())?;
        Ok(this)
    }

    /// Writes `ms` (since the epoch) into `out`, in UTC.
    pub(super) fn format_into(&self, ms: i64, out: &mut String) -> std::result::Result<(), String> {
        let t = DateTime::from_timestamp_millis(ms).ok_or_else(|| format!("{ms} ms is out of the date range"))?;
        write!(out, "{}", t.format_with_items(self.format.iter())).map_err(|_| format!("cannot format {ms} ms"))
    }

    /// Parses `s` to milliseconds since the epoch (UTC unless the pattern has a zone).
    pub(super) fn parse_ms(&self, s: &str) -> std::result::Result<i64, String> {
        let mut p = Parsed::new();
        chrono::format::parse(&mut p, s, self.parse.iter()).map_err(|e| format!("{s:?} does not match: {e}"))?;
        let defaults = |p: &mut Parsed| -> chrono::format::ParseResult<()> {
            if !self.has_year && p.year().is_none() {
                p.set_year(1970)?;
            }
            if !self.has_month && p.month().is_none() && p.ordinal().is_none() {
                p.set_month(1)?;
            }
            if !self.has_day && p.day().is_none() && p.ordinal().is_none() {
                p.set_day(1)?;
            }
            if !self.has_hour && p.hour_div_12().is_none() {
                p.set_hour(0)?;
            }
            if !self.has_minute && p.minute().is_none() {
                p.set_minute(0)?;
            }
            Ok(())
        };
        defaults(&mut p).map_err(|e| format!("{s:?}: {e}"))?;
        let ms = if self.has_zone {
            p.to_datetime().map(|t| t.timestamp_millis())
        } else {
            p.to_naive_datetime_with_offset(0).map(|t| t.and_utc().timestamp_millis())
        };
        ms.map_err(|e| format!("{s:?} is not a complete date: {e}"))
    }
}

/// Kafka's `unix.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnixPrecision {
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
}

impl UnixPrecision {
    fn unix_to_ms(self, n: i64) -> i64 {
        match self {
            UnixPrecision::Seconds => n.saturating_mul(1000),
            UnixPrecision::Milliseconds => n,
            UnixPrecision::Microseconds => n / 1000,
            UnixPrecision::Nanoseconds => n / 1_000_000,
        }
    }

    fn ms_to_unix(self, ms: i64) -> i64 {
        match self {
            UnixPrecision::Seconds => ms / 1000,
            UnixPrecision::Milliseconds => ms,
            UnixPrecision::Microseconds => ms.saturating_mul(1000),
            UnixPrecision::Nanoseconds => ms.saturating_mul(1_000_000),
        }
    }
}

/// Kafka's `target.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetType {
    String,
    Unix,
    Date,
    Time,
    Timestamp,
}

struct TimestampConverter {
    side: Side,
    /// Empty: the whole key or value.
    field: String,
    target: TargetType,
    format: Option<JavaDateFormat>,
    precision: UnixPrecision,
    buf: String,
}

pub(super) fn timestamp_converter(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let target = match cfg.required("target.type")?.trim() {
        "string" => TargetType::String,
        "unix" => TargetType::Unix,
        "Date" => TargetType::Date,
        "Time" => TargetType::Time,
        "Timestamp" => TargetType::Timestamp,
        other => {
            return Err(cfg.error("target.type", format!("{other} is not one of string, unix, Date, Time, Timestamp")))
        }
    };
    let format = match cfg.get("format").filter(|f| !f.trim().is_empty()) {
        Some(f) => Some(JavaDateFormat::new(f).map_err(|e| cfg.error("format", format!("{f}: {e}")))?),
        None if target == TargetType::String => {
            return Err(cfg.error("format", "TimestampConverter needs a format to write string timestamps"))
        }
        None => None,
    };
    let precision = match cfg.get("unix.precision").map(str::trim).unwrap_or("milliseconds") {
        "seconds" => UnixPrecision::Seconds,
        "milliseconds" => UnixPrecision::Milliseconds,
        "microseconds" => UnixPrecision::Microseconds,
        "nanoseconds" => UnixPrecision::Nanoseconds,
        other => {
            return Err(cfg.error(
                "unix.precision",
                format!("{other} is not one of seconds, milliseconds, microseconds, nanoseconds"),
            ))
        }
    };
    Ok(Box::new(TimestampConverter {
        side: side.unwrap_or(Side::Value),
        field: cfg.get("field").unwrap_or("").trim().to_owned(),
        target,
        format,
        precision,
        buf: String::new(),
    }))
}

impl TimestampConverter {
    /// The input in ms since the epoch: a number is a unix time in `unix.precision`, a string
    /// is parsed with `format`.
    fn input_ms(&self, v: &Json) -> std::result::Result<Option<i64>, String> {
        match v {
            Json::Null => Ok(None),
            Json::Number(n) => {
                let n = n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).ok_or("the number is out of range")?;
                Ok(Some(self.precision.unix_to_ms(n)))
            }
            Json::String(s) => match &self.format {
                Some(f) => f.parse_ms(s).map(Some),
                None => Err(format!("{s:?} is a string timestamp but the transform has no format")),
            },
            other => Err(format!("cannot read a timestamp from {}", json_type(other))),
        }
    }

    fn convert(&mut self, v: &Json) -> std::result::Result<Json, String> {
        let Some(ms) = self.input_ms(v)? else { return Ok(Json::Null) };
        Ok(match self.target {
            TargetType::String => {
                self.buf.clear();
                // `format` is required for this target at config time.
                self.format.as_ref().ok_or("no format")?.format_into(ms, &mut self.buf)?;
                Json::String(self.buf.clone())
            }
            TargetType::Unix => Json::from(self.precision.ms_to_unix(ms)),
            // Kafka's Date, Time and Timestamp are java.util.Date values; here, epoch milliseconds.
            TargetType::Date => Json::from(ms - ms.rem_euclid(MS_PER_DAY)),
            TargetType::Time => Json::from(ms.rem_euclid(MS_PER_DAY)),
            TargetType::Timestamp => Json::from(ms),
        })
    }
}

impl RecordOp for TimestampConverter {
    fn apply(&mut self, record: &mut ConnectRecord) -> std::result::Result<bool, String> {
        let side = self.side;
        if self.field.is_empty() {
            let input = match side.get(record) {
                None => return Ok(true),
                Some(Value::Json(j)) => j.clone(),
                // A text line holding only digits is a unix time (a file of epoch stamps).
                Some(v @ Value::Text(t)) => {
                    match std::str::from_utf8(t).ok().and_then(|s| s.trim().parse::<i64>().ok()) {
                        Some(n) => Json::from(n),
                        None => super::value_json(v, side)?,
                    }
                }
                Some(v) => super::value_json(v, side)?,
            };
            let out = self.convert(&input)?;
            *side.slot(record) = if out.is_null() { None } else { Some(Value::Json(out)) };
            side.clear_schema(record);
            return Ok(true);
        }
        let field = std::mem::take(&mut self.field);
        let result = with_object(record, side, "TimestampConverter", |map| {
            if let Some(v) = map.get(&field) {
                let out = self.convert(v).map_err(|e| format!("field {field}: {e}"))?;
                map.insert(field.clone(), out);
            }
            Ok(())
        });
        self.field = field;
        result.map(|()| true)
    }
}

struct TimestampRouter {
    topic_format: String,
    format: JavaDateFormat,
    buf: String,
    /// The last topic in and out, so a batch of one topic and one day allocates one name.
    last: Option<(Arc<str>, String, Arc<str>)>,
}

pub(super) fn timestamp_router(_side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let pattern = cfg.get("timestamp.format").unwrap_or("yyyyMMdd");
    Ok(Box::new(TimestampRouter {
        topic_format: cfg.get("topic.format").unwrap_or("${topic}-${timestamp}").to_owned(),
        format: JavaDateFormat::new(pattern).map_err(|e| cfg.error("timestamp.format", format!("{pattern}: {e}")))?,
        buf: String::new(),
        last: None,
    }))
}

impl RecordOp for TimestampRouter {
    fn apply(&mut self, record: &mut ConnectRecord) -> std::result::Result<bool, String> {
        let ms = record.timestamp_ms.ok_or("the record has no timestamp to route by")?;
        self.buf.clear();
        self.format.format_into(ms, &mut self.buf)?;
        if let Some((topic_in, stamp, topic_out)) = &self.last {
            if *topic_in == record.topic && *stamp == self.buf {
                record.topic = topic_out.clone();
                return Ok(true);
            }
        }
        let topic: Arc<str> =
            Arc::from(self.topic_format.replace("${topic}", &record.topic).replace("${timestamp}", &self.buf));
        self.last = Some((record.topic.clone(), self.buf.clone(), topic.clone()));
        record.topic = topic;
        Ok(true)
    }
}

/// The epoch day of a date, for tests.
#[cfg(test)]
fn day_ms(y: i32, m: u32, d: u32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Props;

    fn build(ctor: super::super::TransformCtor, keys: &[(&str, &str)]) -> Result<Box<dyn RecordOp>> {
        let props: Props = keys.iter().map(|(k, v)| (format!("transforms.t.{k}"), (*v).to_owned())).collect();
        ctor(Some(Side::Value), &EntryConfig::new("transforms.t.", &props))
    }

    fn rec(value: Json) -> ConnectRecord {
        ConnectRecord::new(Arc::from("orders"), Some(Value::Json(value)))
    }

    fn value(r: &ConnectRecord) -> &Json {
        match &r.value {
            Some(Value::Json(j)) => j,
            other => panic!("not JSON: {other:?}"),
        }
    }

    #[test]
    fn java_patterns_format_and_parse_in_utc() {
        let ms = day_ms(2017, 1, 2) + 3_600_000 * 13 + 60_000 * 4 + 5_000 + 67;
        let f = JavaDateFormat::new("yyyy-MM-dd'T'HH:mm:ss.SSSX").unwrap();
        let mut s = String::new();
        f.format_into(ms, &mut s).unwrap();
        assert_eq!(s, "2017-01-02T13:04:05.067Z");
        assert_eq!(f.parse_ms("2017-01-02T13:04:05.067Z").unwrap(), ms);
        assert_eq!(f.parse_ms("2017-01-02T15:04:05.067+02:00").unwrap(), ms);

        let f = JavaDateFormat::new("yyyy-MM-dd HH:mm:ss Z").unwrap();
        s.clear();
        f.format_into(ms - 67, &mut s).unwrap();
        assert_eq!(s, "2017-01-02 13:04:05 +0000");
        assert_eq!(f.parse_ms("2017-01-02 14:04:05 +0100").unwrap(), ms - 67);

        let f = JavaDateFormat::new("yyyyMMdd").unwrap();
        assert_eq!(f.parse_ms("20170102").unwrap(), day_ms(2017, 1, 2));
        let f = JavaDateFormat::new("HH:mm").unwrap();
        assert_eq!(f.parse_ms("01:30").unwrap(), 5_400_000);
        let f = JavaDateFormat::new("dd/MMM/yyyy:HH:mm:ss 'o''clock' %").unwrap();
        s.clear();
        f.format_into(day_ms(2000, 10, 10), &mut s).unwrap();
        assert_eq!(s, "10/Oct/2000:00:00:00 o'clock %");
        assert!(JavaDateFormat::new("yyyy-MM-dd G").is_err());
        assert!(JavaDateFormat::new("'open").is_err());
    }

    #[test]
    fn timestamp_converter_converts_between_all_target_types() {
        let ms = day_ms(2017, 1, 2) + 45_296_789; // 12:34:56.789
        let mut to_string =
            build(timestamp_converter, &[("field", "ts"), ("target.type", "string"), ("format", "yyyy-MM-dd HH:mm")])
                .unwrap();
        let mut r = rec(json!({"ts": ms, "x": 1}));
        to_string.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"ts": "2017-01-02 12:34", "x": 1}));

        let mut to_unix = build(
            timestamp_converter,
            &[("field", "ts"), ("target.type", "unix"), ("format", "yyyy-MM-dd HH:mm"), ("unix.precision", "seconds")],
        )
        .unwrap();
        to_unix.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"ts": (ms - 56_789) / 1000, "x": 1}));

        let mut whole = build(timestamp_converter, &[("target.type", "Date")]).unwrap();
        let mut r = rec(json!(ms));
        whole.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!(day_ms(2017, 1, 2)));
        let mut time = build(timestamp_converter, &[("target.type", "Time")]).unwrap();
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::from_string(ms.to_string())));
        time.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!(45_296_789));
        let mut ts =
            build(timestamp_converter, &[("target.type", "Timestamp"), ("unix.precision", "microseconds")]).unwrap();
        let mut r = rec(json!(ms * 1000));
        ts.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!(ms));

        // A string that does not match the format is refused and the record left as it was.
        let mut parse =
            build(timestamp_converter, &[("field", "ts"), ("target.type", "unix"), ("format", "yyyy-MM-dd")]).unwrap();
        let mut r = rec(json!({"ts": "yesterday"}));
        let before = r.clone();
        assert!(parse.apply(&mut r).unwrap_err().contains("field ts"));
        assert_eq!(r, before);
        let mut r = rec(json!({"ts": "2017-01-02"}));
        parse.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"ts": day_ms(2017, 1, 2)}));
    }

    #[test]
    fn timestamp_converter_config_errors_name_the_key() {
        let key = |keys: &[(&str, &str)]| match build(timestamp_converter, keys).err().unwrap() {
            crate::ConnectError::Config { key, .. } => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(&[]), "transforms.t.target.type");
        assert_eq!(key(&[("target.type", "string")]), "transforms.t.format");
        assert_eq!(key(&[("target.type", "unix"), ("unix.precision", "days")]), "transforms.t.unix.precision");
        assert_eq!(key(&[("target.type", "date")]), "transforms.t.target.type");
        assert_eq!(key(&[("target.type", "unix"), ("format", "qq")]), "transforms.t.format");
    }

    #[test]
    fn timestamp_router_names_topics_by_record_time() {
        let mut t = build(timestamp_router, &[]).unwrap();
        let mut r = rec(json!({}));
        r.timestamp_ms = Some(day_ms(2017, 1, 2) + 5);
        t.apply(&mut r).unwrap();
        assert_eq!(&*r.topic, "orders-20170102");

        let mut t =
            build(timestamp_router, &[("topic.format", "${timestamp}.${topic}"), ("timestamp.format", "yyyy-MM")])
                .unwrap();
        let mut a = rec(json!({}));
        a.timestamp_ms = Some(day_ms(2017, 1, 2));
        let mut b = a.clone();
        t.apply(&mut a).unwrap();
        t.apply(&mut b).unwrap();
        assert_eq!(&*a.topic, "2017-01.orders");
        assert!(Arc::ptr_eq(&a.topic, &b.topic), "the same name is shared");

        let mut r = rec(json!({}));
        assert!(t.apply(&mut r).unwrap_err().contains("timestamp"));
    }
}
