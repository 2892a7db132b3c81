//! The four Kafka compression codecs. Compression happens on the client only; the broker stores
//! and serves compressed batches as they arrived. Decompression is bounded: a batch that claims to
//! inflate past the caller's limit is an error, not an allocation.

use std::io::{Read, Write};

use crate::error::ProtocolError;

/// Codec ids as stored in the low three bits of a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_attributes(attributes: i16) -> Result<Self, ProtocolError> {
        match attributes & 0x07 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            codec => Err(ProtocolError::UnsupportedCompression { codec }),
        }
    }

    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "uncompressed" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!("unknown compression codec '{other}' (expected none, gzip, snappy, lz4 or zstd)")),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Java's `SnappyOutputStream` frames blocks behind this header ("xerial" framing); librdkafka
/// and kafka-python read both framed and raw snappy, so we write the framed form and read both.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

pub fn compress(codec: Compression, input: &[u8], out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let io = |e: std::io::Error| ProtocolError::Decompression { codec: codec.name(), reason: e.to_string() };
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(io)?;
        }
        Compression::Snappy => {
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| ProtocolError::Decompression { codec: "snappy", reason: e.to_string() })?;
                out.extend_from_slice(&(compressed.len() as i32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
        }
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(out);
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(|e| ProtocolError::Decompression { codec: "lz4", reason: e.to_string() })?;
        }
        Compression::Zstd => {
            let compressed = zstd::bulk::compress(input, 1).map_err(io)?;
            out.extend_from_slice(&compressed);
        }
    }
    Ok(())
}

/// Decompresses `input`, failing once the output would exceed `max_bytes`.
pub fn decompress(codec: Compression, input: &[u8], max_bytes: usize) -> Result<Vec<u8>, ProtocolError> {
    match codec {
        Compression::None => {
            if input.len() > max_bytes {
                return Err(ProtocolError::DecompressedTooLarge { codec: "none", max: max_bytes });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => read_bounded("gzip", flate2::read::MultiGzDecoder::new(input), max_bytes),
        Compression::Lz4 => read_bounded("lz4", lz4_flex::frame::FrameDecoder::new(input), max_bytes),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(input)
                .map_err(|e| ProtocolError::Decompression { codec: "zstd", reason: e.to_string() })?;
            read_bounded("zstd", decoder, max_bytes)
        }
        Compression::Snappy => snappy_decompress(input, max_bytes),
    }
}

fn read_bounded(codec: &'static str, reader: impl Read, max_bytes: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    let limit = max_bytes as u64 + 1;
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| ProtocolError::Decompression { codec, reason: e.to_string() })?;
    if out.len() > max_bytes {
        return Err(ProtocolError::DecompressedTooLarge { codec, max: max_bytes });
    }
    Ok(out)
}

fn snappy_raw(block: &[u8], out: &mut Vec<u8>, max_bytes: usize) -> Result<(), ProtocolError> {
    let corrupt = |e: snap::Error| ProtocolError::Decompression { codec: "snappy", reason: e.to_string() };
    let len = snap::raw::decompress_len(block).map_err(corrupt)?;
    if out.len() + len > max_bytes {
        return Err(ProtocolError::DecompressedTooLarge { codec: "snappy", max: max_bytes });
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(corrupt)?;
    Ok(())
}

fn snappy_decompress(input: &[u8], max_bytes: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    if input.len() >= 16 && input[..8] == XERIAL_MAGIC {
        let mut rest = &input[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(ProtocolError::Decompression { codec: "snappy", reason: "truncated block header".into() });
            }
            let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let len = usize::try_from(len).map_err(|_| ProtocolError::Decompression {
                codec: "snappy",
                reason: format!("negative block length {len}"),
            })?;
            rest = &rest[4..];
            if rest.len() < len {
                return Err(ProtocolError::Decompression { codec: "snappy", reason: "truncated block".into() });
            }
            snappy_raw(&rest[..len], &mut out, max_bytes)?;
            rest = &rest[len..];
        }
    } else {
        snappy_raw(input, &mut out, max_bytes)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    proptest! {
        #[test]
        fn every_codec_round_trips(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            for codec in ALL {
                let mut out = Vec::new();
                compress(codec, &data, &mut out).unwrap();
                prop_assert_eq!(&decompress(codec, &out, data.len()).unwrap(), &data);
            }
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let data = vec![0u8; 1 << 20];
        for codec in ALL {
            let mut out = Vec::new();
            compress(codec, &data, &mut out).unwrap();
            assert!(
                matches!(decompress(codec, &out, 1000), Err(ProtocolError::DecompressedTooLarge { .. })),
                "{codec}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in ALL {
            let _ = decompress(codec, b"\x82SNAPPY\0\0\0\0\x01\0\0\0\x01\x7f\xff\xff\xffgarbage", 1 << 20);
            let _ = decompress(codec, &[0xff; 64], 1 << 20);
        }
    }

    #[test]
    fn reads_raw_snappy_as_librdkafka_writes_it() {
        let data = b"hello hello hello hello".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(decompress(Compression::Snappy, &raw, 1 << 20).unwrap(), data);
    }
}
