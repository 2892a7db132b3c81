//! Routing and header transforms (`RegexRouter`, `InsertHeader`, `DropHeaders`, `Filter`) and
//! the predicates (`TopicNameMatches`, `HasHeaderKey`, `RecordIsTombstone`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use regex::Regex;

use super::{name_set, EntryConfig, RecordOp, Side};
use crate::error::Result;
use crate::record::{ConnectRecord, Header};
use crate::transform::Predicate;

/// Distinct topics a router remembers before it starts over; bounds the cache for
/// `topics.regex` sinks that see many topics.
const ROUTE_CACHE_TOPICS_MAX: usize = 1024;

/// Compiles `pattern` to match whole strings, as Java's `Matcher.matches()` does.
fn full_match_regex(cfg: &EntryConfig<'_>, key: &str, pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| cfg.error(key, format!("{pattern} is not a valid regular expression: {e}")))
}

/// Translates a Java replacement string (`$1`, `${name}`, `\$`) into the regex crate's syntax
/// (`${1}`, `${name}`, `$$`). Java reads as many digits after `$` as still name a group.
fn java_replacement(replacement: &str, groups: usize) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(replacement.len() + 8);
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(c) => out.push(c),
                None => return Err("ends with a lone backslash".into()),
            },
            '$' => match chars.next() {
                Some('{') => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(format!("${{{name}}} is not a group name"));
                    }
                    out.push_str(&format!("${{{name}}}"));
                }
                Some(d) if d.is_ascii_digit() => {
                    let mut n = d.to_digit(10).unwrap_or(0) as usize;
                    if n > groups {
                        return Err(format!("${n} names no group; the regex has {groups}"));
                    }
                    while let Some(next) = chars.peek().and_then(|c| c.to_digit(10)) {
                        let longer = n * 10 + next as usize;
                        if longer > groups {
                            break;
                        }
                        n = longer;
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                _ => return Err("a $ is not followed by a group number or {name}".into()),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

struct RegexRouter {
    regex: Regex,
    replacement: String,
    cache: HashMap<Arc<str>, Arc<str>>,
}

pub(super) fn regex_router(_side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let regex = full_match_regex(cfg, "regex", cfg.required("regex")?)?;
    let replacement = cfg.get("replacement").ok_or_else(|| cfg.error("replacement", "missing"))?;
    let replacement = java_replacement(replacement, regex.captures_len() - 1)
        .map_err(|e| cfg.error("replacement", format!("{replacement}: {e}")))?;
    Ok(Box::new(RegexRouter { regex, replacement, cache: HashMap::new() }))
}

impl RecordOp for RegexRouter {
    fn apply(&mut self, record: &mut ConnectRecord) -> std::result::Result<bool, String> {
        if let Some(out) = self.cache.get(&record.topic) {
            record.topic = out.clone();
            return Ok(true);
        }
        let out: Arc<str> = if self.regex.is_match(&record.topic) {
            Arc::from(self.regex.replace(&record.topic, self.replacement.as_str()).as_ref())
        } else {
            record.topic.clone()
        };
        if self.cache.len() >= ROUTE_CACHE_TOPICS_MAX {
            self.cache.clear();
        }
        self.cache.insert(record.topic.clone(), out.clone());
        record.topic = out;
        Ok(true)
    }
}

struct InsertHeader {
    header: String,
    value: Bytes,
}

pub(super) fn insert_header(_side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let header = cfg.required("header")?.trim().to_owned();
    let value = cfg.get("value.literal").ok_or_else(|| cfg.error("value.literal", "missing"))?;
    Ok(Box::new(InsertHeader { header, value: Bytes::copy_from_slice(value.as_bytes()) }))
}

impl RecordOp for InsertHeader {
    fn apply(&mut self, record: &mut ConnectRecord) -> std::result::Result<bool, String> {
        record.headers.push(Header { key: self.header.clone(), value: Some(self.value.clone()) });
        Ok(true)
    }
}

struct DropHeaders {
    headers: BTreeSet<String>,
}

pub(super) fn drop_headers(_side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let headers = cfg.list("headers");
    if headers.is_empty() {
        return Err(cfg.error("headers", "names no header to drop"));
    }
    Ok(Box::new(DropHeaders { headers: name_set(headers) }))
}

impl RecordOp for DropHeaders {
    fn apply(&mut self, record: &mut ConnectRecord) -> std::result::Result<bool, String> {
        record.headers.retain(|h| !self.headers.contains(&h.key));
        Ok(true)
    }
}

struct Filter;

pub(super) fn filter(_side: Option<Side>, _cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    Ok(Box::new(Filter))
}

impl RecordOp for Filter {
    fn apply(&mut self, _record: &mut ConnectRecord) -> std::result::Result<bool, String> {
        Ok(false)
    }
}

struct TopicNameMatches {
    regex: Regex,
}

pub(super) fn topic_name_matches(cfg: &EntryConfig<'_>) -> Result<Box<dyn Predicate>> {
    Ok(Box::new(TopicNameMatches { regex: full_match_regex(cfg, "pattern", cfg.required("pattern")?)? }))
}

impl Predicate for TopicNameMatches {
    fn test(&self, record: &ConnectRecord) -> bool {
        self.regex.is_match(&record.topic)
    }
}

struct HasHeaderKey {
    name: String,
}

pub(super) fn has_header_key(cfg: &EntryConfig<'_>) -> Result<Box<dyn Predicate>> {
    Ok(Box::new(HasHeaderKey { name: cfg.required("name")?.to_owned() }))
}

impl Predicate for HasHeaderKey {
    fn test(&self, record: &ConnectRecord) -> bool {
        record.header(&self.name).is_some()
    }
}

struct RecordIsTombstone;

pub(super) fn record_is_tombstone(_cfg: &EntryConfig<'_>) -> Result<Box<dyn Predicate>> {
    Ok(Box::new(RecordIsTombstone))
}

impl Predicate for RecordIsTombstone {
    fn test(&self, record: &ConnectRecord) -> bool {
        record.value.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Props;
    use crate::record::Value;

    fn props(keys: &[(&str, &str)]) -> Props {
        keys.iter().map(|(k, v)| (format!("t.{k}"), (*v).to_owned())).collect()
    }

    fn transform(ctor: super::super::TransformCtor, keys: &[(&str, &str)]) -> Result<Box<dyn RecordOp>> {
        ctor(None, &EntryConfig::new("t.", &props(keys)))
    }

    fn predicate(
        ctor: fn(&EntryConfig<'_>) -> Result<Box<dyn Predicate>>,
        keys: &[(&str, &str)],
    ) -> Box<dyn Predicate> {
        ctor(&EntryConfig::new("t.", &props(keys))).unwrap()
    }

    fn rec(topic: &str) -> ConnectRecord {
        ConnectRecord::new(Arc::from(topic), Some(Value::from_string("v")))
    }

    #[test]
    fn regex_router_rewrites_whole_matches_with_java_group_references() {
        let mut t = transform(regex_router, &[("regex", "(.*)-(\\d+)"), ("replacement", "$2_$1")]).unwrap();
        let mut r = rec("orders-2024");
        t.apply(&mut r).unwrap();
        assert_eq!(&*r.topic, "2024_orders");
        let mut r = rec("prefix-orders-2024x");
        t.apply(&mut r).unwrap();
        assert_eq!(&*r.topic, "prefix-orders-2024x", "only whole matches are routed");

        // Kafka's docs example: drop a prefix.
        let mut t =
            transform(regex_router, &[("regex", "dbserver1\\.inventory\\.(.*)"), ("replacement", "$1")]).unwrap();
        let mut a = rec("dbserver1.inventory.customers");
        let mut b = a.clone();
        t.apply(&mut a).unwrap();
        t.apply(&mut b).unwrap();
        assert_eq!(&*a.topic, "customers");
        assert!(Arc::ptr_eq(&a.topic, &b.topic), "routed names are cached");

        let mut t = transform(regex_router, &[("regex", "(a)"), ("replacement", "$1b\\$")]).unwrap();
        let mut r = rec("a");
        t.apply(&mut r).unwrap();
        assert_eq!(&*r.topic, "ab$");

        for (regex, replacement, key) in
            [("(", "x", "t.regex"), ("(a)", "$2", "t.replacement"), ("a", "$", "t.replacement")]
        {
            match transform(regex_router, &[("regex", regex), ("replacement", replacement)]).err().unwrap() {
                crate::ConnectError::Config { key: k, .. } => assert_eq!(k, key),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn headers_are_inserted_and_dropped() {
        let mut ins = transform(insert_header, &[("header", "source"), ("value.literal", "file")]).unwrap();
        let mut drop = transform(drop_headers, &[("headers", "a, b")]).unwrap();
        let mut r = rec("t");
        r.headers.push(Header { key: "a".into(), value: None });
        r.headers.push(Header { key: "c".into(), value: None });
        r.headers.push(Header { key: "b".into(), value: None });
        ins.apply(&mut r).unwrap();
        drop.apply(&mut r).unwrap();
        let keys: Vec<&str> = r.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["c", "source"]);
        assert_eq!(r.header("source").unwrap().value.as_deref(), Some(&b"file"[..]));
        assert!(transform(drop_headers, &[]).is_err());
        assert!(transform(insert_header, &[("header", "h")]).is_err());
    }

    #[test]
    fn filter_drops_and_predicates_test() {
        assert!(!transform(filter, &[]).unwrap().apply(&mut rec("t")).unwrap());

        let p = predicate(topic_name_matches, &[("pattern", "logs-.*")]);
        assert!(p.test(&rec("logs-app")));
        assert!(!p.test(&rec("my-logs-app")), "the whole name must match");
        assert!(topic_name_matches(&EntryConfig::new("t.", &props(&[("pattern", "[")]))).is_err());
        assert!(topic_name_matches(&EntryConfig::new("t.", &props(&[]))).is_err());

        let p = predicate(has_header_key, &[("name", "trace")]);
        let mut r = rec("t");
        assert!(!p.test(&r));
        r.headers.push(Header { key: "trace".into(), value: None });
        assert!(p.test(&r));

        let p = predicate(record_is_tombstone, &[]);
        assert!(!p.test(&r));
        r.value = None;
        assert!(p.test(&r));
    }
}
