//! Schema inference: a topic table's value columns from a bounded sample of its records.
//!
//! Sans-IO: takes the sampled values, returns fields. The sampling itself (first records of each
//! partition) is in [`super::catalog`].

use std::fmt;

use datafusion::arrow::datatypes::{DataType, Field};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::format::{fixed_value_fields, METADATA_COLUMNS};
use super::options::{TableOptions, ValueFormat};

/// The most value columns inference makes: a sample with more distinct fields is likely not a
/// table (e.g. maps keyed by ids), and each column costs a decoder.
pub(crate) const MAX_INFERRED_COLUMNS: usize = 1000;

/// What inference found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inferred {
    /// The value columns, in first-seen order.
    pub fields: Vec<Field>,
    /// Sampled values that could not be used (not an object, not JSON, not UTF-8).
    pub skipped: usize,
    /// Sampled values, tombstones excluded.
    pub sampled: usize,
}

/// Infers the value columns of a table from sampled values (tombstones are `None`).
pub(crate) fn infer_value_fields<'a>(
    options: &TableOptions,
    values: impl IntoIterator<Item = Option<&'a [u8]>>,
) -> Inferred {
    let format = options.format;
    match format {
        ValueFormat::Json => infer_json(values),
        ValueFormat::Csv => infer_csv(values, options.csv_delimiter),
        ValueFormat::String | ValueFormat::Bytes => {
            Inferred { fields: fixed_value_fields(format), skipped: 0, sampled: values.into_iter().flatten().count() }
        }
    }
}

fn infer_json<'a>(values: impl IntoIterator<Item = Option<&'a [u8]>>) -> Inferred {
    let mut objects = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut skipped, mut sampled) = (0, 0);
    for value in values.into_iter().flatten() {
        sampled += 1;
        match serde_json::from_slice::<serde_json::Value>(value) {
            Ok(v @ serde_json::Value::Object(_)) => {
                // serde_json's map sorts keys; the order of the record's own text is read apart.
                if let Ok(KeysInOrder(keys)) = serde_json::from_slice::<KeysInOrder>(value) {
                    for key in keys {
                        if !seen.contains(&key) && seen.len() < MAX_INFERRED_COLUMNS && !is_metadata(&key) {
                            seen.insert(key.clone());
                            order.push(key);
                        }
                    }
                }
                objects.push(v);
            }
            _ => skipped += 1,
        }
    }
    let schema = match arrow_json::reader::infer_json_schema_from_iterator(objects.iter().map(Ok)) {
        Ok(schema) => schema,
        // Conflicting types that arrow cannot merge (e.g. an object and a number): such a sample
        // gives no columns; declaring the table is the way out.
        Err(_) => return Inferred { fields: Vec::new(), skipped: sampled, sampled },
    };
    let fields = order
        .iter()
        .filter_map(|name| schema.field_with_name(name).ok())
        .map(|f| {
            // A field seen only as null has no type to decode into: text takes anything.
            let data_type = match f.data_type() {
                DataType::Null => DataType::Utf8,
                other => other.clone(),
            };
            Field::new(f.name(), data_type, true)
        })
        .collect();
    Inferred { fields, skipped, sampled }
}

/// A value column named like a metadata column would shadow it: the metadata column wins.
fn is_metadata(name: &str) -> bool {
    METADATA_COLUMNS.contains(&name)
}

/// The top-level keys of a JSON object, in the order of its text.
struct KeysInOrder(Vec<String>);

impl<'de> Deserialize<'de> for KeysInOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = KeysInOrder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeysInOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(KeysInOrder(keys))
            }
        }
        deserializer.deserialize_map(KeysVisitor)
    }
}

/// CSV: as many text columns `c1..cN` as the widest sampled line has fields.
pub(crate) fn infer_csv<'a>(values: impl IntoIterator<Item = Option<&'a [u8]>>, delimiter: u8) -> Inferred {
    let (mut width, mut sampled) = (0, 0);
    for value in values.into_iter().flatten() {
        sampled += 1;
        width = width.max(csv_field_count(value, delimiter)).min(MAX_INFERRED_COLUMNS);
    }
    let fields = (1..=width).map(|i| Field::new(format!("c{i}"), DataType::Utf8, true)).collect();
    Inferred { fields, skipped: 0, sampled }
}

/// Fields of one CSV line: delimiters outside double quotes, plus one.
fn csv_field_count(line: &[u8], delimiter: u8) -> usize {
    let mut quoted = false;
    let mut count = 1;
    for &b in line {
        if b == b'"' {
            quoted = !quoted;
        } else if b == delimiter && !quoted {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer_value_fields<'a>(format: ValueFormat, values: impl IntoIterator<Item = Option<&'a [u8]>>) -> Inferred {
        let mut options = TableOptions::new("t");
        options.format = format;
        super::infer_value_fields(&options, values)
    }

    #[test]
    fn json_fields_in_first_seen_order_with_merged_types() {
        let values: [Option<&[u8]>; 7] = [
            Some(br#"{"user_id": 1, "b": "x", "a": true}"#),
            None,
            Some(br#"{"a": false, "user_id": 2.5, "nested": {"k": 1}, "n": null}"#),
            Some(b"not json"),
            Some(b"[1,2]"),
            Some(br#"{"tags": ["a"], "_offset": 3}"#),
            Some(br#"{"b": 7}"#),
        ];
        let inferred = infer_value_fields(ValueFormat::Json, values);
        let names: Vec<&str> = inferred.fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["user_id", "b", "a", "nested", "n", "tags"]);
        let types: Vec<&DataType> = inferred.fields.iter().map(|f| f.data_type()).collect();
        assert_eq!(types[0], &DataType::Float64);
        assert_eq!(types[1], &DataType::Utf8, "a string and a number merge to text");
        assert_eq!(types[2], &DataType::Boolean);
        assert!(matches!(types[3], DataType::Struct(_)));
        assert_eq!(types[4], &DataType::Utf8, "null-only becomes text");
        assert!(matches!(types[5], DataType::List(_)));
        assert_eq!((inferred.skipped, inferred.sampled), (2, 6));
        assert!(inferred.fields.iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn empty_and_unusable_samples_give_no_columns() {
        assert!(infer_value_fields(ValueFormat::Json, []).fields.is_empty());
        assert!(infer_value_fields(ValueFormat::Json, [Some(&b"1"[..]), None]).fields.is_empty());
        assert_eq!(infer_value_fields(ValueFormat::String, []).fields.len(), 1);
        assert_eq!(infer_value_fields(ValueFormat::Bytes, []).fields[0].data_type(), &DataType::Binary);
    }

    #[test]
    fn csv_width_is_the_widest_line() {
        let values: [Option<&[u8]>; 3] = [Some(b"a,b"), Some(b"\"x,y\",2,3"), None];
        let inferred = infer_value_fields(ValueFormat::Csv, values);
        let names: Vec<&str> = inferred.fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["c1", "c2", "c3"]);
        assert_eq!(infer_csv([Some(&b"a;b;c;d"[..])], b';').fields.len(), 4);
    }
}
