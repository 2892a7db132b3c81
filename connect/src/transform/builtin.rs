//! Kafka Connect's built-in transforms and predicates, with Kafka's class names, config keys
//! and schemaless semantics (a key or value is a JSON object where Kafka has a `Map`).
//!
//! Built-ins change a record in place ([`RecordOp`]) and leave it untouched when they refuse
//! it, so the chain can hand the record to the dead-letter route as it was before the failing
//! step without cloning every record up front.

use std::collections::BTreeSet;

use serde_json::{Map, Value as Json};

use crate::config::Props;
use crate::error::{ConnectError, Result};
use crate::record::{ConnectRecord, Value};
use crate::transform::Predicate;

mod field;
mod route;
mod time;

/// Kafka's package for built-in transforms; full class names are this plus the simple name.
const TRANSFORMS_PACKAGE: &str = "org.apache.kafka.connect.transforms.";
/// Kafka's package for built-in predicates.
const PREDICATES_PACKAGE: &str = "org.apache.kafka.connect.transforms.predicates.";

/// A built-in transform step working on the record in place.
pub(crate) trait RecordOp: Send {
    /// `Ok(true)` keeps the record, `Ok(false)` drops it. On `Err` (the reason, in words) the
    /// record must be exactly as it was passed in.
    fn apply(&mut self, record: &mut ConnectRecord) -> std::result::Result<bool, String>;
}

/// The keys of one chain entry (`transforms.<alias>.` or `predicates.<alias>.`), so errors
/// name the full key the user wrote.
pub(crate) struct EntryConfig<'a> {
    prefix: &'a str,
    props: &'a Props,
}

impl<'a> EntryConfig<'a> {
    /// `prefix` ends with a dot, e.g. `transforms.a.`.
    pub(crate) fn new(prefix: &'a str, props: &'a Props) -> Self {
        EntryConfig { prefix, props }
    }

    /// The full key of `key`.
    pub(crate) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A config error on `key`.
    pub(crate) fn error(&self, key: &str, reason: impl Into<String>) -> ConnectError {
        ConnectError::config(self.full_key(key), reason)
    }

    /// The value of `key`, if set.
    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.props.get(&self.full_key(key)).map(String::as_str)
    }

    /// The value of the first of `keys` that is set (a key and its deprecated names).
    fn get_any(&self, keys: &[&str]) -> Option<&'a str> {
        keys.iter().find_map(|k| self.get(k))
    }

    /// A value that must be set and not blank.
    fn required(&self, key: &str) -> Result<&'a str> {
        match self.get(key) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(self.error(key, "must not be empty")),
            None => Err(self.error(key, "missing required configuration with no default value")),
        }
    }

    /// A comma-separated list, items trimmed, empty items dropped.
    fn list(&self, key: &str) -> Vec<String> {
        split_list(self.get(key).unwrap_or(""))
    }

    /// A boolean with a default.
    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(self.error(key, format!("{v} is not true or false"))),
        }
    }

    /// The keys of this entry with the prefix stripped (for plugins that take their own config).
    pub(crate) fn stripped(&self) -> Props {
        self.props
            .range(self.prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(self.prefix))
            .map(|(k, v)| (k[self.prefix.len()..].to_owned(), v.clone()))
            .collect()
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Whether a transform works on the record's key or its value (Kafka's `$Key`/`$Value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Key,
    Value,
}

impl Side {
    fn slot(self, record: &mut ConnectRecord) -> &mut Option<Value> {
        match self {
            Side::Key => &mut record.key,
            Side::Value => &mut record.value,
        }
    }

    fn get(self, record: &ConnectRecord) -> Option<&Value> {
        match self {
            Side::Key => record.key.as_ref(),
            Side::Value => record.value.as_ref(),
        }
    }

    /// The schema no longer describes the changed key or value.
    fn clear_schema(self, record: &mut ConnectRecord) {
        match self {
            Side::Key => record.key_schema = None,
            Side::Value => record.value_schema = None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Key => "key",
            Side::Value => "value",
        }
    }
}

/// Which built-in a class name names, with its canonical (Kafka) class name.
pub(crate) struct Resolved {
    pub(crate) class_name: String,
    kind: Kind,
}

enum Kind {
    Transform(TransformCtor, Option<Side>),
    Predicate(PredicateCtor),
}

type TransformCtor = fn(Option<Side>, &EntryConfig<'_>) -> Result<Box<dyn RecordOp>>;

/// Built-in transforms: simple name, whether it has `$Key`/`$Value` variants, constructor.
const TRANSFORMS: &[(&str, bool, TransformCtor)] = &[
    ("InsertField", true, field::insert_field),
    ("ReplaceField", true, field::replace_field),
    ("MaskField", true, field::mask_field),
    ("ExtractField", true, field::extract_field),
    ("ValueToKey", false, field::value_to_key),
    ("HoistField", true, field::hoist_field),
    ("Flatten", true, field::flatten),
    ("Cast", true, field::cast),
    ("HeaderFrom", true, field::header_from),
    ("TimestampConverter", true, time::timestamp_converter),
    ("TimestampRouter", false, time::timestamp_router),
    ("RegexRouter", false, route::regex_router),
    ("InsertHeader", false, route::insert_header),
    ("DropHeaders", false, route::drop_headers),
    ("Filter", false, route::filter),
];

type PredicateCtor = fn(&EntryConfig<'_>) -> Result<Box<dyn Predicate>>;

const PREDICATES: &[(&str, PredicateCtor)] = &[
    ("TopicNameMatches", route::topic_name_matches),
    ("HasHeaderKey", route::has_header_key),
    ("RecordIsTombstone", route::record_is_tombstone),
];

/// Looks up a transform class: Kafka's full name (`org.apache.kafka.connect.transforms.Cast$Value`)
/// or the simple one (`Cast$Value`).
pub(crate) fn resolve_transform(class: &str) -> Option<Resolved> {
    let class = class.trim();
    let simple = class.strip_prefix(TRANSFORMS_PACKAGE).unwrap_or(class);
    let (name, side) = match simple.split_once('$') {
        Some((n, "Key")) => (n, Some(Side::Key)),
        Some((n, "Value")) => (n, Some(Side::Value)),
        Some(_) => return None,
        None => (simple, None),
    };
    let &(_, sided, ctor) = TRANSFORMS.iter().find(|(n, _, _)| *n == name)?;
    if sided != side.is_some() {
        return None;
    }
    Some(Resolved { class_name: format!("{TRANSFORMS_PACKAGE}{simple}"), kind: Kind::Transform(ctor, side) })
}

/// Looks up a predicate class by full or simple name.
pub(crate) fn resolve_predicate(class: &str) -> Option<Resolved> {
    let class = class.trim();
    let simple = class.strip_prefix(PREDICATES_PACKAGE).unwrap_or(class);
    let &(canonical, ctor) = PREDICATES.iter().find(|(n, _)| *n == simple)?;
    Some(Resolved { class_name: format!("{PREDICATES_PACKAGE}{canonical}"), kind: Kind::Predicate(ctor) })
}

impl Resolved {
    /// Builds the transform from its keys.
    pub(crate) fn build_transform(&self, config: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
        match self.kind {
            Kind::Transform(ctor, side) => ctor(side, config),
            Kind::Predicate(_) => Err(ConnectError::Internal(format!("{} is a predicate", self.class_name))),
        }
    }

    /// Builds the predicate from its keys.
    pub(crate) fn build_predicate(&self, config: &EntryConfig<'_>) -> Result<Box<dyn Predicate>> {
        match self.kind {
            Kind::Predicate(ctor) => ctor(config),
            Kind::Transform(..) => Err(ConnectError::Internal(format!("{} is a transform", self.class_name))),
        }
    }
}

/// Names every built-in transform class (for error messages and plugin listings).
pub(crate) fn transform_classes() -> impl Iterator<Item = String> {
    TRANSFORMS.iter().flat_map(|&(name, sided, _)| {
        let names: Vec<String> = if sided {
            vec![format!("{TRANSFORMS_PACKAGE}{name}$Key"), format!("{TRANSFORMS_PACKAGE}{name}$Value")]
        } else {
            vec![format!("{TRANSFORMS_PACKAGE}{name}")]
        };
        names
    })
}

/// Names every built-in predicate class.
pub(crate) fn predicate_classes() -> impl Iterator<Item = String> {
    PREDICATES.iter().map(|(name, _)| format!("{PREDICATES_PACKAGE}{name}"))
}

/// Runs `f` on the key or value as a JSON object. `Text`/`Bytes` holding JSON are parsed
/// first and replaced by the (changed) object only when `f` succeeds; `f` must not change the
/// object when it fails. A null key or value is passed through, as Kafka does for tombstones;
/// anything else that is not an object is refused with `purpose` in the reason.
fn with_object(
    record: &mut ConnectRecord,
    side: Side,
    purpose: &str,
    f: impl FnOnce(&mut Map<String, Json>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let slot = side.slot(record);
    match slot {
        None => return Ok(()),
        Some(Value::Json(Json::Object(map))) => f(map)?,
        Some(Value::Json(other)) => return Err(not_an_object(side, purpose, other)),
        Some(v) => {
            let mut parsed = match value_json(v, side)? {
                Json::Object(map) => map,
                other => return Err(not_an_object(side, purpose, &other)),
            };
            f(&mut parsed)?;
            *slot = Some(Value::Json(Json::Object(parsed)));
        }
    }
    side.clear_schema(record);
    Ok(())
}

/// Reads the key or value as a JSON object without changing it: `f` gets the object borrowed
/// (a `Json` value) or parsed (`Text`/`Bytes`); `Ok(None)` for a null key or value.
fn read_object<T>(
    record: &ConnectRecord,
    side: Side,
    purpose: &str,
    f: impl FnOnce(&Map<String, Json>) -> T,
) -> std::result::Result<Option<T>, String> {
    match side.get(record) {
        None => Ok(None),
        Some(Value::Json(Json::Object(map))) => Ok(Some(f(map))),
        Some(Value::Json(other)) => Err(not_an_object(side, purpose, other)),
        Some(v) => match value_json(v, side)? {
            Json::Object(map) => Ok(Some(f(&map))),
            other => Err(not_an_object(side, purpose, &other)),
        },
    }
}

fn not_an_object(side: Side, purpose: &str, found: &Json) -> String {
    format!("{purpose} needs the {} to be a JSON object, found {}", side.name(), json_type(found))
}

/// A JSON value's type in words, for errors.
fn json_type(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// A record's key or value as JSON, for transforms that take it whole.
fn value_json(v: &Value, side: Side) -> std::result::Result<Json, String> {
    v.to_json().map_err(|e| format!("the {} is {e}", side.name()))
}

/// Header bytes for a JSON value: strings as their text, null as a null header, anything else
/// as JSON text (what Kafka's `SimpleHeaderConverter` writes for structured values).
fn header_bytes(j: &Json) -> Option<bytes::Bytes> {
    match j {
        Json::Null => None,
        Json::String(s) => Some(bytes::Bytes::copy_from_slice(s.as_bytes())),
        other => Some(bytes::Bytes::from(other.to_string())),
    }
}

/// A set of header names or fields.
fn name_set(names: Vec<String>) -> BTreeSet<String> {
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_simple_class_names_resolve_to_kafkas_names() {
        let full = resolve_transform("org.apache.kafka.connect.transforms.InsertField$Value").unwrap();
        assert_eq!(full.class_name, "org.apache.kafka.connect.transforms.InsertField$Value");
        let short = resolve_transform("Cast$Key").unwrap();
        assert_eq!(short.class_name, "org.apache.kafka.connect.transforms.Cast$Key");
        assert!(resolve_transform("RegexRouter").is_some());
        assert!(resolve_transform("InsertField").is_none(), "InsertField needs $Key or $Value");
        assert!(resolve_transform("RegexRouter$Value").is_none());
        assert!(resolve_transform("Nope").is_none());
        assert_eq!(
            resolve_predicate("org.apache.kafka.connect.transforms.predicates.TopicNameMatches").unwrap().class_name,
            "org.apache.kafka.connect.transforms.predicates.TopicNameMatches"
        );
        assert!(resolve_predicate("HasHeaderKey").is_some());
        assert!(transform_classes().any(|c| c.ends_with("Flatten$Value")));
        assert_eq!(predicate_classes().count(), 3);
    }

    #[test]
    fn stripped_keeps_only_the_entrys_keys() {
        let props: Props = [("transforms.a.script", "x.rhai"), ("transforms.ab.script", "no"), ("transforms.a.x", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let cfg = EntryConfig::new("transforms.a.", &props);
        let s = cfg.stripped();
        assert_eq!(s.len(), 2);
        assert_eq!(s["script"], "x.rhai");
    }
}
