//! Length-prefixed framing: every Kafka request and response is an `int32` size followed by that
//! many bytes. The size comes from the peer, so it is checked against a configured limit before a
//! single byte is reserved for the frame.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Bytes taken by the size prefix.
pub const SIZE_PREFIX_BYTES: usize = 4;

/// Splits one complete frame off the front of `buf`, without its size prefix.
///
/// Returns `Ok(None)` while the frame is incomplete; on return it has reserved room for the rest
/// of a frame whose size is known and allowed, so callers can read straight into `buf`.
pub fn decode_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Bytes>, ProtocolError> {
    if buf.len() < SIZE_PREFIX_BYTES {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(ProtocolError::NegativeFrameSize { size });
    }
    let size = size as usize;
    if size > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge { size, max: max_frame_bytes });
    }
    let total = SIZE_PREFIX_BYTES + size;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(SIZE_PREFIX_BYTES);
    Ok(Some(buf.split_to(size).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::new();
        buf.put_i32(3);
        buf.put_slice(b"abc");
        buf.put_i32(2);
        buf.put_slice(b"x");
        assert_eq!(decode_frame(&mut buf, 10).unwrap().unwrap(), Bytes::from_static(b"abc"));
        assert!(decode_frame(&mut buf, 10).unwrap().is_none());
        buf.put_slice(b"y");
        assert_eq!(decode_frame(&mut buf, 10).unwrap().unwrap(), Bytes::from_static(b"xy"));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_oversized_and_negative_sizes_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_i32(i32::MAX);
        assert!(matches!(decode_frame(&mut buf, 1 << 20), Err(ProtocolError::FrameTooLarge { .. })));
        assert!(buf.capacity() < 1 << 20);
        let mut buf = BytesMut::new();
        buf.put_i32(-5);
        assert!(matches!(decode_frame(&mut buf, 1 << 20), Err(ProtocolError::NegativeFrameSize { .. })));
    }
}
