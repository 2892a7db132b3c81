//! Length-prefixed framing: every Kafka request and response is an `int32` size followed by that
//! many bytes. The size comes from the peer, so it is checked against a configured limit before a
//! single byte is reserved for the frame.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Bytes taken by the size prefix.
pub const SIZE_PREFIX_BYTES: usize = 4;

/// The size of the frame at the front of `buf` (without its prefix), checked against the limit;
/// `Ok(None)` until the whole prefix is there. Reserves nothing: a server that budgets request
/// memory across connections takes the budget for this size before calling [`decode_frame`].
pub fn peek_frame_size(buf: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = buf.first_chunk::<SIZE_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let size = i32::from_be_bytes(*prefix);
    if size < 0 {
        return Err(ProtocolError::NegativeFrameSize { size });
    }
    let size = size as usize;
    if size > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge { size, max: max_frame_bytes });
    }
    Ok(Some(size))
}

/// Splits one complete frame off the front of `buf`, without its size prefix.
///
/// Returns `Ok(None)` while the frame is incomplete; on return it has reserved room for the rest
/// of a frame whose size is known and allowed, so callers can read straight into `buf`.
pub fn decode_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Bytes>, ProtocolError> {
    let Some(size) = peek_frame_size(buf, max_frame_bytes)? else {
        return Ok(None);
    };
    Ok(split_frame(buf, size))
}

/// Splits off the frame of `size` body bytes (checked by [`peek_frame_size`]) at the front of
/// `buf`, or reserves room for the rest of it and returns `None` while it is incomplete.
pub fn split_frame(buf: &mut BytesMut, size: usize) -> Option<Bytes> {
    let total = SIZE_PREFIX_BYTES + size;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return None;
    }
    buf.advance(SIZE_PREFIX_BYTES);
    Some(buf.split_to(size).freeze())
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

    #[test]
    fn peeking_a_size_reserves_nothing() {
        let mut buf = BytesMut::new();
        buf.put_u8(0);
        assert_eq!(peek_frame_size(&buf, 1 << 20).unwrap(), None);
        buf.put_slice(&[0x10, 0, 0]);
        let capacity = buf.capacity();
        assert_eq!(peek_frame_size(&buf, 1 << 20).unwrap(), Some(1 << 20));
        assert_eq!(buf.capacity(), capacity);
        assert!(matches!(peek_frame_size(&buf, (1 << 20) - 1), Err(ProtocolError::FrameTooLarge { .. })));
    }
}
