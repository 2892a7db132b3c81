//! Serdes: typed codecs between record bytes and values, with Kafka's byte layouts so that
//! topics written here are readable by Java clients and Kafka tools, and the other way round.
//!
//! Kafka's `null` key or value (a tombstone) is not a serde concern here: the runtime hands a
//! serde only bytes that are present.

use std::marker::PhantomData;

use crate::error::StreamsError;
use crate::window::{SessionWindow, TimeWindow, Windowed};

/// A serializer and deserializer for one type (Kafka's `Serde<T>`).
pub trait Serde<T> {
    /// Appends `value`'s bytes to `out` (so a batch can reuse one buffer).
    fn serialize_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), StreamsError>;

    /// Decodes one value that spans all of `bytes`.
    fn deserialize(&self, bytes: &[u8]) -> Result<T, StreamsError>;

    /// `value`'s bytes in a new buffer.
    fn serialize(&self, value: &T) -> Result<Vec<u8>, StreamsError> {
        let mut out = Vec::new();
        self.serialize_into(value, &mut out)?;
        Ok(out)
    }

    /// Decodes a key or value that may be Kafka's null. By default null reads as empty bytes
    /// (so a null key of a string serde is `""`); [`NullableSerde`] reads it as `None`.
    fn deserialize_nullable(&self, bytes: Option<&[u8]>) -> Result<T, StreamsError> {
        self.deserialize(bytes.unwrap_or_default())
    }

    /// Encodes a key or value; `None` writes Kafka's null (a tombstone, for a value). By default
    /// every value has bytes.
    fn serialize_nullable(&self, value: &T) -> Result<Option<Vec<u8>>, StreamsError> {
        self.serialize(value).map(Some)
    }
}

impl<T, S: Serde<T> + ?Sized + Send + Sync> Serde<T> for std::sync::Arc<S> {
    fn serialize_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        (**self).serialize_into(value, out)
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<T, StreamsError> {
        (**self).deserialize(bytes)
    }

    fn deserialize_nullable(&self, bytes: Option<&[u8]>) -> Result<T, StreamsError> {
        (**self).deserialize_nullable(bytes)
    }

    fn serialize_nullable(&self, value: &T) -> Result<Option<Vec<u8>>, StreamsError> {
        (**self).serialize_nullable(value)
    }
}

/// A shareable serde, as the DSL keeps them.
pub type SerdeRef<T> = std::sync::Arc<dyn Serde<T> + Send + Sync>;

/// `Option<T>` over a serde of `T`: Kafka's null is `None` both ways (a null key, a tombstone
/// value), so that a stream can carry and write deletions.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullableSerde<S>(pub S);

impl<T, S: Serde<T>> Serde<Option<T>> for NullableSerde<S> {
    fn serialize_into(&self, value: &Option<T>, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        match value {
            Some(v) => self.0.serialize_into(v, out),
            None => Ok(()),
        }
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Option<T>, StreamsError> {
        self.0.deserialize(bytes).map(Some)
    }

    fn deserialize_nullable(&self, bytes: Option<&[u8]>) -> Result<Option<T>, StreamsError> {
        bytes.map(|b| self.0.deserialize(b)).transpose()
    }

    fn serialize_nullable(&self, value: &Option<T>) -> Result<Option<Vec<u8>>, StreamsError> {
        value.as_ref().map(|v| self.0.serialize(v)).transpose()
    }
}

/// Raw bytes, unchanged (`Serdes.ByteArray()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSerde;

impl Serde<Vec<u8>> for BytesSerde {
    fn serialize_into(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Vec<u8>, StreamsError> {
        Ok(bytes.to_vec())
    }
}

/// UTF-8 text (`Serdes.String()`). Unlike Java's `StringDeserializer`, which silently replaces
/// invalid sequences with U+FFFD, invalid UTF-8 is an error, so the application's
/// deserialization-error handler decides what happens to the record.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringSerde;

impl Serde<String> for StringSerde {
    fn serialize_into(&self, value: &String, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<String, StreamsError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|err| StreamsError::deserialize("UTF-8 string", err.to_string()))
    }
}

fn exact<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], StreamsError> {
    bytes.try_into().map_err(|_| StreamsError::deserialize(what, format!("expected {N} bytes, got {}", bytes.len())))
}

/// 4-byte big-endian two's complement (`IntegerSerializer`); exactly 4 bytes are accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct I32Serde;

impl Serde<i32> for I32Serde {
    fn serialize_into(&self, value: &i32, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        out.extend_from_slice(&value.to_be_bytes());
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<i32, StreamsError> {
        Ok(i32::from_be_bytes(exact("i32", bytes)?))
    }
}

/// 8-byte big-endian two's complement (`LongSerializer`); exactly 8 bytes are accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct I64Serde;

impl Serde<i64> for I64Serde {
    fn serialize_into(&self, value: &i64, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        out.extend_from_slice(&value.to_be_bytes());
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<i64, StreamsError> {
        Ok(i64::from_be_bytes(exact("i64", bytes)?))
    }
}

/// IEEE 754 double as 8 big-endian bytes (`DoubleSerializer`). Java writes
/// `Double.doubleToLongBits`, which turns every NaN into the canonical `0x7ff8000000000000`;
/// so do we, so that equal values give equal bytes (keys, compaction) on both sides.
#[derive(Debug, Clone, Copy, Default)]
pub struct F64Serde;

/// Java's `Double.doubleToLongBits(Double.NaN)`.
const JAVA_CANONICAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

impl Serde<f64> for F64Serde {
    fn serialize_into(&self, value: &f64, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        let bits = if value.is_nan() { JAVA_CANONICAL_NAN_BITS } else { value.to_bits() };
        out.extend_from_slice(&bits.to_be_bytes());
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<f64, StreamsError> {
        Ok(f64::from_bits(u64::from_be_bytes(exact("f64", bytes)?)))
    }
}

/// JSON via serde for any type (as Kafka Streams applications usually do with Jackson).
pub struct JsonSerde<T>(PhantomData<fn() -> T>);

impl<T> JsonSerde<T> {
    /// A JSON serde for `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for JsonSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for JsonSerde<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for JsonSerde<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonSerde")
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> Serde<T> for JsonSerde<T> {
    fn serialize_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        serde_json::to_writer(out, value)
            .map_err(|err| StreamsError::Serialize { what: "JSON value", reason: err.to_string() })
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<T, StreamsError> {
        serde_json::from_slice(bytes).map_err(|err| StreamsError::deserialize("JSON value", err.to_string()))
    }
}

const TIMESTAMP_BYTES: usize = 8;

fn split_suffix<'a>(
    what: &'static str,
    bytes: &'a [u8],
    suffix_len: usize,
) -> Result<(&'a [u8], &'a [u8]), StreamsError> {
    if bytes.len() < suffix_len {
        return Err(StreamsError::deserialize(
            what,
            format!("expected at least {suffix_len} bytes, got {}", bytes.len()),
        ));
    }
    Ok(bytes.split_at(bytes.len() - suffix_len))
}

fn read_i64(bytes: &[u8]) -> i64 {
    let mut array = [0u8; TIMESTAMP_BYTES];
    array.copy_from_slice(&bytes[..TIMESTAMP_BYTES]);
    i64::from_be_bytes(array)
}

/// Keys of a time-windowed aggregation as Kafka's `TimeWindowedSerializer` writes them: the
/// inner key's bytes, then the window start as 8 big-endian bytes. The end is not written; on
/// reading it is `start + window_size_ms`, or `i64::MAX` where that is negative (Kafka's
/// `WindowKeySchema.timeWindowForSize`), so the reader must know the window size, as
/// `TimeWindowedDeserializer` must.
#[derive(Debug, Clone)]
pub struct TimeWindowedSerde<S> {
    inner: S,
    window_size_ms: i64,
}

impl<S> TimeWindowedSerde<S> {
    /// Wraps the key serde `inner`, for windows of `window_size_ms`.
    pub fn new(inner: S, window_size_ms: i64) -> Self {
        Self { inner, window_size_ms }
    }
}

impl<K, S: Serde<K>> Serde<Windowed<K, TimeWindow>> for TimeWindowedSerde<S> {
    fn serialize_into(&self, value: &Windowed<K, TimeWindow>, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        self.inner.serialize_into(&value.key, out)?;
        out.extend_from_slice(&value.window.start_ms.to_be_bytes());
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Windowed<K, TimeWindow>, StreamsError> {
        let (key, suffix) = split_suffix("time-windowed key", bytes, TIMESTAMP_BYTES)?;
        let start_ms = read_i64(suffix);
        let end_ms = time_window_end_ms(start_ms, self.window_size_ms);
        Ok(Windowed { key: self.inner.deserialize(key)?, window: TimeWindow { start_ms, end_ms } })
    }
}

/// Kafka's `WindowKeySchema.timeWindowForSize`: `start + size`, and `i64::MAX` when that is
/// negative (it overflowed, or the start was bogus).
fn time_window_end_ms(start_ms: i64, window_size_ms: i64) -> i64 {
    let end_ms = start_ms.wrapping_add(window_size_ms);
    if end_ms < 0 {
        i64::MAX
    } else {
        end_ms
    }
}

/// Keys of a session-windowed aggregation as Kafka's `SessionWindowedSerializer` writes them
/// (`SessionKeySchema.toBinary`): the inner key's bytes, the session end, then the session
/// start, each 8 big-endian bytes. Note the order: end before start.
#[derive(Debug, Clone)]
pub struct SessionWindowedSerde<S> {
    inner: S,
}

impl<S> SessionWindowedSerde<S> {
    /// Wraps the key serde `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<K, S: Serde<K>> Serde<Windowed<K, SessionWindow>> for SessionWindowedSerde<S> {
    fn serialize_into(&self, value: &Windowed<K, SessionWindow>, out: &mut Vec<u8>) -> Result<(), StreamsError> {
        self.inner.serialize_into(&value.key, out)?;
        out.extend_from_slice(&value.window.end_ms.to_be_bytes());
        out.extend_from_slice(&value.window.start_ms.to_be_bytes());
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Windowed<K, SessionWindow>, StreamsError> {
        let (key, suffix) = split_suffix("session-windowed key", bytes, 2 * TIMESTAMP_BYTES)?;
        let end_ms = read_i64(suffix);
        let start_ms = read_i64(&suffix[TIMESTAMP_BYTES..]);
        Ok(Windowed { key: self.inner.deserialize(key)?, window: SessionWindow { start_ms, end_ms } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numbers_use_javas_big_endian_layouts() {
        assert_eq!(I32Serde.serialize(&1).unwrap(), [0, 0, 0, 1]);
        assert_eq!(I32Serde.serialize(&-2).unwrap(), [0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(I64Serde.serialize(&258).unwrap(), [0, 0, 0, 0, 0, 0, 1, 2]);
        // Double.doubleToLongBits(1.5) == 0x3FF8000000000000
        assert_eq!(F64Serde.serialize(&1.5).unwrap(), [0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(I64Serde.deserialize(&[0xff; 8]).unwrap(), -1);
        assert_eq!(F64Serde.deserialize(&[0xc0, 0, 0, 0, 0, 0, 0, 0]).unwrap(), -2.0);
    }

    #[test]
    fn nan_is_written_as_javas_canonical_nan() {
        let odd_nan = f64::from_bits(0x7ff0_0000_0000_0001);
        assert!(odd_nan.is_nan());
        assert_eq!(F64Serde.serialize(&odd_nan).unwrap(), [0x7f, 0xf8, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn wrong_sizes_are_the_producers_fault() {
        let err = I64Serde.deserialize(&[1, 2, 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot deserialize i64: expected 8 bytes, got 3 (the producer wrote bytes this serde \
             does not read)"
        );
        assert!(I32Serde.deserialize(&[0; 5]).is_err());
        assert!(F64Serde.deserialize(&[]).is_err());
        assert!(StringSerde.deserialize(&[0xff, 0xfe]).is_err());
        assert!(TimeWindowedSerde::new(StringSerde, 10).deserialize(&[0; 7]).is_err());
        assert!(SessionWindowedSerde::new(StringSerde).deserialize(&[0; 15]).is_err());
    }

    #[test]
    fn time_windowed_key_is_key_then_start() {
        let serde = TimeWindowedSerde::new(StringSerde, 300);
        let key = Windowed { key: "ab".to_owned(), window: TimeWindow { start_ms: 5, end_ms: 305 } };
        let bytes = serde.serialize(&key).unwrap();
        assert_eq!(bytes, [b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(serde.deserialize(&bytes).unwrap(), key);
    }

    #[test]
    fn time_windowed_end_is_capped_like_kafka() {
        let serde = TimeWindowedSerde::new(BytesSerde, 10);
        let mut bytes = vec![7];
        bytes.extend_from_slice(&(i64::MAX - 3).to_be_bytes());
        let key = serde.deserialize(&bytes).unwrap();
        assert_eq!(key.window, TimeWindow { start_ms: i64::MAX - 3, end_ms: i64::MAX });
    }

    #[test]
    fn session_windowed_key_is_key_then_end_then_start() {
        let serde = SessionWindowedSerde::new(I32Serde);
        let key = Windowed { key: 9, window: SessionWindow { start_ms: 1, end_ms: 2 } };
        let bytes = serde.serialize(&key).unwrap();
        assert_eq!(bytes, [0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(serde.deserialize(&bytes).unwrap(), key);
    }

    #[test]
    fn json_round_trips_and_refuses_garbage() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct PageView {
            user: String,
            page: String,
        }
        let serde = JsonSerde::<PageView>::new();
        let view = PageView { user: "u".into(), page: "p".into() };
        let bytes = serde.serialize(&view).unwrap();
        assert_eq!(bytes, br#"{"user":"u","page":"p"}"#);
        assert_eq!(serde.deserialize(&bytes).unwrap(), view);
        assert!(serde.deserialize(b"{\"user\":1}").is_err());
    }

    proptest! {
        #[test]
        fn codecs_round_trip(i in any::<i32>(), l in any::<i64>(), d in any::<f64>(),
                             s in ".*", b in proptest::collection::vec(any::<u8>(), 0..64),
                             start in any::<i64>(), end in any::<i64>()) {
            prop_assert_eq!(I32Serde.deserialize(&I32Serde.serialize(&i).unwrap()).unwrap(), i);
            prop_assert_eq!(I64Serde.deserialize(&I64Serde.serialize(&l).unwrap()).unwrap(), l);
            let back = F64Serde.deserialize(&F64Serde.serialize(&d).unwrap()).unwrap();
            prop_assert!(back == d || (back.is_nan() && d.is_nan()));
            prop_assert_eq!(StringSerde.deserialize(&StringSerde.serialize(&s).unwrap()).unwrap(), s.clone());
            prop_assert_eq!(BytesSerde.deserialize(&BytesSerde.serialize(&b).unwrap()).unwrap(), b.clone());
            let session = SessionWindowedSerde::new(BytesSerde);
            let key = Windowed { key: b.clone(), window: SessionWindow { start_ms: start, end_ms: end } };
            let bytes = session.serialize(&key).unwrap();
            prop_assert_eq!(bytes.len(), b.len() + 16);
            prop_assert_eq!(session.deserialize(&bytes).unwrap(), key);
            let time = TimeWindowedSerde::new(StringSerde, 1000);
            let key = Windowed { key: s, window: TimeWindow { start_ms: start, end_ms: time_window_end_ms(start, 1000) } };
            prop_assert_eq!(time.deserialize(&time.serialize(&key).unwrap()).unwrap(), key);
        }
    }
}
