//! Records to Arrow: a topic table's value format decoded straight into Arrow arrays, plus the
//! metadata columns every topic table has.
//!
//! Shared by the ad-hoc scan ([`super::scan`]) and continuous queries, so that a record means
//! the same row in both. Only the projected columns are built: with no value column projected
//! (`count(*)`, metadata only) values are not parsed at all, and then malformed values are
//! neither counted nor fatal.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMillisecondBuilder, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::flat_json::FlatJson;
use super::options::{OnError, TableOptions, ValueFormat};
use crate::StreamsError;

/// The metadata columns, in table order, after the value columns.
pub(crate) const KEY_COLUMN: &str = "_key";
pub(crate) const PARTITION_COLUMN: &str = "_partition";
pub(crate) const OFFSET_COLUMN: &str = "_offset";
pub(crate) const TIMESTAMP_COLUMN: &str = "_timestamp";
pub(crate) const HEADERS_COLUMN: &str = "_headers";
pub(crate) const METADATA_COLUMNS: [&str; 5] =
    [KEY_COLUMN, PARTITION_COLUMN, OFFSET_COLUMN, TIMESTAMP_COLUMN, HEADERS_COLUMN];

/// The single value column of the `string` and `bytes` formats.
pub(crate) const VALUE_COLUMN: &str = "value";

/// One record to decode, borrowed from wherever it lives (a fetch response, a state store).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub headers: RawHeaders<'a>,
}

/// A record's headers: decoded ones (a consumer record, a state store) or as fetched.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawHeaders<'a> {
    Decoded(&'a [spate_client::RecordHeader]),
    Wire(spate_client::protocol::record::HeadersView<'a>),
}

impl RawHeaders<'_> {
    pub(crate) const NONE: RawHeaders<'static> = RawHeaders::Decoded(&[]);

    fn for_each(&self, mut f: impl FnMut(&str, Option<&[u8]>)) {
        match self {
            RawHeaders::Decoded(headers) => headers.iter().for_each(|h| f(&h.key, h.value.as_deref())),
            RawHeaders::Wire(view) => view.iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

/// The metadata columns every topic table ends with:
/// - `_key` Utf8: the key as text; a key that is not UTF-8 is decoded lossily (U+FFFD for the bad
///   bytes), NULL for no key;
/// - `_partition` Int32, `_offset` Int64;
/// - `_timestamp` Timestamp(ms): the record's timestamp (CreateTime or LogAppendTime, as the
///   topic keeps it), no time zone (UTC);
/// - `_headers` Map<Utf8, Utf8>: header values decoded lossily like the key, NULL for a null
///   header value; duplicate header keys are all kept (read with `_headers['k']` for the first).
pub(crate) fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(KEY_COLUMN, DataType::Utf8, true),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new(HEADERS_COLUMN, headers_type(), false),
    ]
}

/// The type `MapBuilder::new(None, StringBuilder, StringBuilder)` builds.
fn headers_type() -> DataType {
    let entries =
        Fields::from(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)]);
    DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entries), false)), false)
}

/// The value columns of a format when none are declared and none can be inferred from records:
/// `string` and `bytes` have their one `value` column, `json` and `csv` none.
pub(crate) fn fixed_value_fields(format: ValueFormat) -> Vec<Field> {
    match format {
        ValueFormat::String => vec![Field::new(VALUE_COLUMN, DataType::Utf8, true)],
        ValueFormat::Bytes => vec![Field::new(VALUE_COLUMN, DataType::Binary, true)],
        ValueFormat::Json | ValueFormat::Csv => Vec::new(),
    }
}

/// A table's full schema: the value columns, then the metadata columns. Value columns are
/// nullable whatever was declared: a malformed record or a tombstone has none.
pub(crate) fn table_schema(value_fields: impl IntoIterator<Item = Field>) -> SchemaRef {
    let mut fields: Vec<Field> = value_fields.into_iter().map(|f| f.with_nullable(true)).collect();
    fields.extend(metadata_fields());
    Arc::new(Schema::new(fields))
}

/// Where one output column comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The i-th decoded value column (index into `projected_values`).
    Value(usize),
    Key,
    Partition,
    Offset,
    Timestamp,
    Headers,
}

/// Decodes records of one table into batches of the projected columns.
#[derive(Debug)]
pub(crate) struct RecordDecoder {
    topic: String,
    format: ValueFormat,
    on_error: OnError,
    csv_delimiter: u8,
    /// All value columns of the table (CSV decodes by position, so it needs all of them).
    value_schema: SchemaRef,
    /// Indices into `value_schema` of the projected value columns, ascending.
    projected_values: Vec<usize>,
    /// The projected value columns, in `projected_values` order.
    projected_value_schema: SchemaRef,
    sources: Vec<Source>,
    output_schema: SchemaRef,
    /// JSON with only flat projected columns: the one-pass scan tried before arrow-json.
    flat_json: Option<FlatJson>,
}

impl RecordDecoder {
    /// `table_schema`: the table's full schema (value columns then the metadata columns);
    /// `projection`: DataFusion's projection indices into it.
    pub(crate) fn new(
        options: &TableOptions,
        table_schema: SchemaRef,
        projection: Option<&[usize]>,
    ) -> Result<Self, StreamsError> {
        let total = table_schema.fields().len();
        let value_count = total.checked_sub(METADATA_COLUMNS.len()).ok_or_else(|| bad_schema(&table_schema))?;
        if table_schema.fields()[value_count..].iter().map(|f| f.name().as_str()).ne(METADATA_COLUMNS) {
            return Err(bad_schema(&table_schema));
        }
        let all: Vec<usize> = (0..total).collect();
        let projection = projection.unwrap_or(&all);
        let mut projected_values: Vec<usize> = projection.iter().copied().filter(|&i| i < value_count).collect();
        projected_values.sort_unstable();
        projected_values.dedup();
        let mut sources = Vec::with_capacity(projection.len());
        let mut output_fields = Vec::with_capacity(projection.len());
        for &i in projection {
            if i >= total {
                return Err(StreamsError::SqlExecution(format!(
                    "internal: projection index {i} is out of the {total} columns of table {}",
                    options.topic
                )));
            }
            output_fields.push(table_schema.field(i).clone());
            sources.push(if i < value_count {
                Source::Value(projected_values.binary_search(&i).expect("collected above"))
            } else {
                match i - value_count {
                    0 => Source::Key,
                    1 => Source::Partition,
                    2 => Source::Offset,
                    3 => Source::Timestamp,
                    _ => Source::Headers,
                }
            });
        }
        let value_schema = Arc::new(Schema::new(table_schema.fields()[..value_count].to_vec()));
        let projected_value_schema = Arc::new(value_schema.project(&projected_values).expect("indices checked"));
        let flat_json = match options.format {
            ValueFormat::Json => FlatJson::new(&projected_value_schema),
            _ => None,
        };
        Ok(RecordDecoder {
            flat_json,
            topic: options.topic.clone(),
            format: options.format,
            on_error: options.on_error,
            csv_delimiter: options.csv_delimiter,
            value_schema,
            projected_values,
            projected_value_schema,
            sources,
            output_schema: Arc::new(Schema::new(output_fields)),
        })
    }

    pub(crate) fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// Whether decoding parses values (some value column is projected).
    #[cfg(test)]
    pub(crate) fn parses_values(&self) -> bool {
        !self.projected_values.is_empty()
    }

    /// Decodes records into ONE RecordBatch of `output_schema`. A malformed value becomes NULL
    /// value columns and is counted (`on_error = 'null'`, also in
    /// `spate_sql_records_malformed_total`), or fails the call naming topic-partition@offset
    /// (`on_error = 'fail'`). A tombstone (no value) has NULL value columns and is not malformed.
    pub(crate) fn decode(&self, records: &[RawRecord<'_>]) -> Result<(RecordBatch, u64), StreamsError> {
        let (values, malformed) = if self.projected_values.is_empty() {
            (Vec::new(), 0)
        } else {
            match self.format {
                ValueFormat::String => self.decode_strings(records)?,
                ValueFormat::Bytes => {
                    let mut builder = BinaryBuilder::with_capacity(
                        records.len(),
                        records.iter().map(|r| r.value.map_or(0, <[u8]>::len)).sum(),
                    );
                    for r in records {
                        builder.append_option(r.value);
                    }
                    (vec![Arc::new(builder.finish()) as ArrayRef], 0)
                }
                ValueFormat::Json | ValueFormat::Csv => self.decode_structured(records)?,
            }
        };
        if malformed > 0 {
            metrics::counter!("spate_sql_records_malformed_total", "topic" => self.topic.clone()).increment(malformed);
        }
        let mut columns = Vec::with_capacity(self.sources.len());
        for source in &self.sources {
            columns.push(match *source {
                Source::Value(i) => values[i].clone(),
                Source::Key => {
                    let mut b = StringBuilder::with_capacity(
                        records.len(),
                        records.iter().map(|r| r.key.map_or(0, <[u8]>::len)).sum(),
                    );
                    for r in records {
                        match r.key {
                            Some(k) => b.append_value(String::from_utf8_lossy(k)),
                            None => b.append_null(),
                        }
                    }
                    Arc::new(b.finish()) as ArrayRef
                }
                Source::Partition => {
                    let mut b = Int32Builder::with_capacity(records.len());
                    records.iter().for_each(|r| b.append_value(r.partition));
                    Arc::new(b.finish())
                }
                Source::Offset => {
                    let mut b = Int64Builder::with_capacity(records.len());
                    records.iter().for_each(|r| b.append_value(r.offset));
                    Arc::new(b.finish())
                }
                Source::Timestamp => {
                    let mut b = TimestampMillisecondBuilder::with_capacity(records.len());
                    records.iter().for_each(|r| b.append_value(r.timestamp_ms));
                    Arc::new(b.finish())
                }
                Source::Headers => {
                    let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
                    for r in records {
                        r.headers.for_each(|key, value| {
                            b.keys().append_value(key);
                            match value {
                                Some(v) => b.values().append_value(String::from_utf8_lossy(v)),
                                None => b.values().append_null(),
                            }
                        });
                        b.append(true).map_err(|e| internal(&e))?;
                    }
                    Arc::new(b.finish())
                }
            });
        }
        let batch = RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(records.len())),
        )
        .map_err(|e| internal(&e))?;
        Ok((batch, malformed))
    }

    fn decode_strings(&self, records: &[RawRecord<'_>]) -> Result<(Vec<ArrayRef>, u64), StreamsError> {
        let mut malformed = 0;
        let mut builder =
            StringBuilder::with_capacity(records.len(), records.iter().map(|r| r.value.map_or(0, <[u8]>::len)).sum());
        for r in records {
            match r.value.map(std::str::from_utf8) {
                None => builder.append_null(),
                Some(Ok(s)) => builder.append_value(s),
                Some(Err(e)) => {
                    self.malformed(r, &e.to_string())?;
                    malformed += 1;
                    builder.append_null();
                }
            }
        }
        Ok((vec![Arc::new(builder.finish())], malformed))
    }

    /// JSON and CSV: all present values of the chunk go through one Arrow decoder; when that
    /// fails, each value is tried alone to find the bad ones, and the good ones are decoded
    /// together and scattered back between NULL rows.
    fn decode_structured(&self, records: &[RawRecord<'_>]) -> Result<(Vec<ArrayRef>, u64), StreamsError> {
        // The common case in one pass; anything it does not decide is arrow-json's below.
        if let Some(columns) = self.flat_json.as_ref().and_then(|flat| flat.decode(records.iter().map(|r| r.value))) {
            return Ok((columns, 0));
        }
        let present: Vec<usize> = (0..records.len()).filter(|&i| records[i].value.is_some()).collect();
        let value = |i: usize| records[i].value.unwrap_or_default();
        let (good, batch, malformed) = match self.decode_values(present.iter().map(|&i| value(i)), present.len()) {
            Ok(batch) => (present, batch, 0),
            Err(_) => {
                let mut good = Vec::with_capacity(present.len());
                let mut malformed = 0;
                for i in present {
                    match self.decode_values(std::iter::once(value(i)), 1) {
                        Ok(_) => good.push(i),
                        Err(e) => {
                            self.malformed(&records[i], &e.to_string())?;
                            malformed += 1;
                        }
                    }
                }
                let batch = self.decode_values(good.iter().map(|&i| value(i)), good.len()).map_err(|e| {
                    StreamsError::SqlExecution(format!(
                        "internal: values of {} that decode one by one do not decode together: {e}",
                        self.topic
                    ))
                })?;
                (good, batch, malformed)
            }
        };
        if good.len() == records.len() {
            return Ok((batch.columns().to_vec(), malformed));
        }
        if good.is_empty() {
            let columns = self
                .projected_value_schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), records.len()))
                .collect();
            return Ok((columns, malformed));
        }
        // Row r of the output takes row indices[r] of the decoded batch, or NULL.
        let mut indices: Vec<Option<u32>> = vec![None; records.len()];
        for (row, &i) in good.iter().enumerate() {
            indices[i] = Some(row as u32);
        }
        let indices = UInt32Array::from(indices);
        let columns = batch
            .columns()
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(&e))?;
        Ok((columns, malformed))
    }

    /// Decodes exactly `count` values into a batch of the projected value columns, or fails if any
    /// value is not exactly one row of this format.
    fn decode_values<'v>(
        &self,
        values: impl Iterator<Item = &'v [u8]>,
        count: usize,
    ) -> Result<RecordBatch, ArrowError> {
        let batch = match self.format {
            ValueFormat::Json => {
                let mut decoder = arrow_json::ReaderBuilder::new(self.projected_value_schema.clone())
                    .with_batch_size(count.max(1))
                    .with_strict_mode(false)
                    .with_coerce_primitive(true)
                    .build_decoder()?;
                for (i, v) in values.enumerate() {
                    let read = decoder.decode(v)?;
                    // The newline ends a number or literal the value ends with, so that the next
                    // value cannot run into it.
                    let read_nl = decoder.decode(b"\n")?;
                    if read != v.len() || read_nl != 1 || decoder.has_partial_record() || decoder.len() != i + 1 {
                        return Err(ArrowError::JsonError("not exactly one JSON value".to_owned()));
                    }
                }
                decoder.flush()?
            }
            ValueFormat::Csv => {
                let mut decoder = datafusion::arrow::csv::ReaderBuilder::new(self.value_schema.clone())
                    .with_header(false)
                    .with_delimiter(self.csv_delimiter)
                    .with_truncated_rows(true)
                    .with_batch_size(count.max(1))
                    .with_projection(self.projected_values.clone())
                    .build_decoder();
                for v in values {
                    let capacity = decoder.capacity();
                    let read = decoder.decode(v)?;
                    let read_nl = decoder.decode(b"\n")?;
                    if read != v.len() || read_nl != 1 || decoder.capacity() + 1 != capacity {
                        return Err(ArrowError::CsvError("not exactly one CSV line".to_owned()));
                    }
                }
                decoder.flush()?
            }
            ValueFormat::String | ValueFormat::Bytes => {
                return Err(ArrowError::InvalidArgumentError("not a structured format".to_owned()))
            }
        };
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(self.projected_value_schema.clone()));
        if batch.num_rows() != count {
            return Err(ArrowError::InvalidArgumentError(format!("{} rows for {count} values", batch.num_rows())));
        }
        Ok(batch)
    }

    /// A malformed value: an error under `on_error = 'fail'`, else nothing (the caller counts it).
    fn malformed(&self, record: &RawRecord<'_>, reason: &str) -> Result<(), StreamsError> {
        match self.on_error {
            OnError::Null => Ok(()),
            OnError::Fail => Err(StreamsError::SqlExecution(format!(
                "record {}-{}@{} does not decode as {}: {reason} (the table has on_error = 'fail'; with \
                 on_error = 'null' it would have NULL value columns)",
                self.topic, record.partition, record.offset, self.format
            ))),
        }
    }
}

fn bad_schema(schema: &Schema) -> StreamsError {
    StreamsError::SqlExecution(format!(
        "internal: a topic table's schema must end with the metadata columns {METADATA_COLUMNS:?}, got {:?}",
        schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
    ))
}

fn internal(e: &ArrowError) -> StreamsError {
    StreamsError::SqlExecution(format!("internal: building a batch failed: {e}"))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray, Int64Array, MapArray};
    use datafusion::arrow::datatypes::Int64Type;

    use super::*;

    fn rec(offset: i64, value: Option<&'static [u8]>) -> RawRecord<'static> {
        RawRecord { key: None, value, partition: 0, offset, timestamp_ms: 1000 + offset, headers: RawHeaders::NONE }
    }

    fn json_schema() -> SchemaRef {
        table_schema([
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ])
    }

    fn decoder(
        format: ValueFormat,
        on_error: OnError,
        schema: SchemaRef,
        projection: Option<&[usize]>,
    ) -> RecordDecoder {
        let mut options = TableOptions::new("t");
        options.format = format;
        options.on_error = on_error;
        RecordDecoder::new(&options, schema, projection).unwrap()
    }

    #[test]
    fn json_good_chunk_decodes_projected_fields_only() {
        let d = decoder(ValueFormat::Json, OnError::Null, json_schema(), Some(&[5, 0, 2]));
        let records = [
            rec(0, Some(br#"{"id": 1, "name": "a", "score": 1.5, "extra": [1,2]}"#)),
            rec(1, Some(br#"{"score": 2, "id": 2}"#)),
            rec(2, Some(b"{\"id\":\n3}")),
        ];
        let (batch, malformed) = d.decode(&records).unwrap();
        assert_eq!(malformed, 0);
        assert_eq!(
            batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
            ["_offset", "id", "score"]
        );
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().values(), &[0, 1, 2]);
        assert_eq!(batch.column(1).as_primitive::<Int64Type>().values(), &[1, 2, 3]);
        let score = batch.column(2).as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        assert_eq!((score.value(0), score.value(1), score.is_null(2)), (1.5, 2.0, true));
    }

    #[test]
    fn json_malformed_values_are_null_and_counted_never_a_panic() {
        let d = decoder(ValueFormat::Json, OnError::Null, json_schema(), None);
        let bad: [&'static [u8]; 10] = [
            b"{\"id\": 1",             // truncated
            b"not json",               // not JSON
            b"5",                      // JSON but not an object
            b"[1, 2]",                 // an array
            b"\"text\"",               // a string
            b"{\"id\": \"abc\"}",      // type mismatch
            b"",                       // empty
            b"{\"id\": 1}{\"id\": 2}", // two objects in one value
            b"   ",                    // blank
            b"\xff\xfe",               // not UTF-8
        ];
        let mut records = vec![rec(0, Some(br#"{"id": 10, "name": "x"}"#)), rec(1, None)];
        for (i, b) in bad.iter().enumerate() {
            records.push(rec(2 + i as i64, Some(b)));
        }
        records.push(rec(99, Some(br#"{"id": 11}"#)));
        let (batch, malformed) = d.decode(&records).unwrap();
        assert_eq!(malformed, bad.len() as u64);
        assert_eq!(batch.num_rows(), records.len());
        let id = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(id.value(0), 10);
        assert!(id.is_null(1), "a tombstone has NULL columns");
        for row in 2..2 + bad.len() {
            assert!(id.is_null(row), "row {row}");
        }
        assert_eq!(id.value(records.len() - 1), 11);
        let offsets = batch.column(3 + 2).as_primitive::<Int64Type>();
        assert_eq!(offsets.value(records.len() - 1), 99, "metadata columns stay");
    }

    #[test]
    fn json_top_level_null_is_malformed_or_null_but_never_misaligned() {
        let d = decoder(ValueFormat::Json, OnError::Null, json_schema(), Some(&[0]));
        let records = [rec(0, Some(b"null")), rec(1, Some(br#"{"id": 2}"#))];
        let (batch, _) = d.decode(&records).unwrap();
        let id = batch.column(0).as_primitive::<Int64Type>();
        assert!(id.is_null(0));
        assert_eq!(id.value(1), 2);
    }

    #[test]
    fn on_error_fail_names_topic_partition_and_offset() {
        let d = decoder(ValueFormat::Json, OnError::Fail, json_schema(), Some(&[0]));
        let records = [rec(0, Some(br#"{"id": 1}"#)), rec(7, Some(b"{oops")), rec(8, None)];
        let err = d.decode(&records).unwrap_err().to_string();
        assert!(err.contains("t-0@7") && err.contains("on_error = 'fail'"), "{err}");
        // A tombstone is not malformed, even under fail.
        assert!(d.decode(&[rec(8, None)]).is_ok());
    }

    #[test]
    fn no_value_column_projected_parses_nothing() {
        let d = decoder(ValueFormat::Json, OnError::Fail, json_schema(), Some(&[4]));
        assert!(!d.parses_values());
        let (batch, malformed) = d.decode(&[rec(0, Some(b"garbage")), rec(1, None)]).unwrap();
        assert_eq!((batch.num_rows(), malformed), (2, 0));
        // count(*): no column at all.
        let d = decoder(ValueFormat::Json, OnError::Fail, json_schema(), Some(&[]));
        let (batch, _) = d.decode(&[rec(0, Some(b"garbage")), rec(1, None)]).unwrap();
        assert_eq!((batch.num_rows(), batch.num_columns()), (2, 0));
    }

    #[test]
    fn metadata_columns() {
        let headers = [
            spate_client::RecordHeader { key: "h1".into(), value: Some(bytes::Bytes::from_static(b"v1")) },
            spate_client::RecordHeader { key: "h2".into(), value: None },
        ];
        let records = [
            RawRecord {
                key: Some(b"k1"),
                value: None,
                partition: 2,
                offset: 5,
                timestamp_ms: 1_700_000_000_000,
                headers: RawHeaders::Decoded(&headers),
            },
            RawRecord {
                key: Some(b"\xffk"),
                value: None,
                partition: 2,
                offset: 6,
                timestamp_ms: 7,
                headers: RawHeaders::NONE,
            },
            RawRecord { key: None, value: None, partition: 2, offset: 7, timestamp_ms: 8, headers: RawHeaders::NONE },
        ];
        let d = decoder(ValueFormat::Bytes, OnError::Null, table_schema(fixed_value_fields(ValueFormat::Bytes)), None);
        let (batch, _) = d.decode(&records).unwrap();
        assert_eq!(batch.schema(), d.output_schema());
        let keys = batch.column(1).as_string::<i32>();
        assert_eq!(keys.value(0), "k1");
        assert_eq!(keys.value(1), "\u{fffd}k");
        assert!(keys.is_null(2));
        assert_eq!(batch.column(2).as_primitive::<datafusion::arrow::datatypes::Int32Type>().value(0), 2);
        let ts = batch.column(4).as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        assert_eq!(ts.value(0), 1_700_000_000_000);
        let map: &MapArray = batch.column(5).as_map();
        assert_eq!(map.value_length(0), 2);
        assert_eq!(map.value_length(1), 0);
        let entries = map.value(0);
        assert_eq!(entries.column(0).as_string::<i32>().value(1), "h2");
        assert!(entries.column(1).is_null(1));
        assert!(batch.column(0).is_null(0), "tombstone: NULL value");
    }

    #[test]
    fn string_and_bytes_formats() {
        let s = decoder(
            ValueFormat::String,
            OnError::Null,
            table_schema(fixed_value_fields(ValueFormat::String)),
            Some(&[0]),
        );
        let records = [rec(0, Some(b"hello")), rec(1, Some(b"\xff\xfe")), rec(2, None)];
        let (batch, malformed) = s.decode(&records).unwrap();
        assert_eq!(malformed, 1);
        let v = batch.column(0).as_string::<i32>();
        assert_eq!(v.value(0), "hello");
        assert!(v.is_null(1) && v.is_null(2));
        let s = decoder(
            ValueFormat::String,
            OnError::Fail,
            table_schema(fixed_value_fields(ValueFormat::String)),
            Some(&[0]),
        );
        assert!(s.decode(&records).unwrap_err().to_string().contains("t-0@1"));
        let b = decoder(
            ValueFormat::Bytes,
            OnError::Fail,
            table_schema(fixed_value_fields(ValueFormat::Bytes)),
            Some(&[0]),
        );
        let (batch, malformed) = b.decode(&records).unwrap();
        assert_eq!(malformed, 0);
        assert_eq!(batch.column(0).as_binary::<i32>().value(1), b"\xff\xfe");
    }

    #[test]
    fn csv_format() {
        let schema = table_schema([
            Field::new("c1", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("c3", DataType::Utf8, true),
        ]);
        let d = decoder(ValueFormat::Csv, OnError::Null, schema.clone(), Some(&[1, 2]));
        let records = [
            rec(0, Some(b"a,1,x")),
            rec(1, Some(b"\"b,q\",2,\"y\"")),
            rec(2, Some(b"c,notanumber,z")),
            rec(3, Some(b"d,4")),
            rec(4, None),
            rec(5, Some(b"e,5,z,extra")),
            rec(6, Some(b"f,6,\"open")),
            rec(7, Some(b"g,7,w")),
        ];
        let (batch, malformed) = d.decode(&records).unwrap();
        let n: &Int64Array = batch.column(0).as_primitive();
        assert_eq!(n.value(0), 1);
        assert_eq!(n.value(1), 2);
        assert!(n.is_null(2), "type mismatch");
        assert_eq!(n.value(3), 4, "a short line has NULL trailing columns");
        assert!(n.is_null(4) && n.is_null(5) && n.is_null(6));
        assert_eq!(n.value(7), 7);
        assert_eq!(malformed, 3);
        assert!(batch.column(1).as_string::<i32>().is_null(3));
        let d = decoder(ValueFormat::Csv, OnError::Fail, schema, Some(&[1]));
        assert!(d.decode(&records).unwrap_err().to_string().contains("t-0@2"));
    }

    #[test]
    fn bad_projection_and_schema_are_errors() {
        let mut options = TableOptions::new("t");
        options.format = ValueFormat::Json;
        assert!(RecordDecoder::new(&options, json_schema(), Some(&[99])).is_err());
        assert!(RecordDecoder::new(&options, Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true)])), None)
            .is_err());
    }
}
