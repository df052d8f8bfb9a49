//! Frames: a 4-byte big-endian length `N` (1 ≤ N ≤ max_frame), then `N` bytes of protobuf.
//!
//! Reading uses tokio-util's length-delimited codec, which rejects a length above the maximum
//! from the 4-byte header alone, before reserving anything for the body.

use bytes::{BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec, length_delimited::LengthDelimitedCodecError};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Length 0 or above the maximum.
    #[error("frame length must be between 1 and {max} bytes")]
    BadLength {
        /// The maximum.
        max: usize,
    },
    /// The bytes are not the expected message.
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    /// The stream ended before a whole frame.
    #[error("the stream ended before a whole frame")]
    Truncated,
    /// The transport failed.
    #[error("stream: {0}")]
    Io(String),
}

/// The codec for frames of at most `max_frame` bytes.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// Reads one message of type `M` from `frames`; `Ok(None)` at a clean end of stream.
pub async fn read<M, R>(
    frames: &mut FramedRead<R, LengthDelimitedCodec>,
    max_frame: usize,
) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio_stream::StreamExt;
    match frames.next().await {
        None => Ok(None),
        Some(Ok(bytes)) if bytes.is_empty() => Err(FrameError::BadLength { max: max_frame }),
        Some(Ok(bytes)) => M::decode(bytes).map(Some).map_err(|e| FrameError::Undecodable(e.to_string())),
        Some(Err(e)) if e.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) => {
            Err(FrameError::BadLength { max: max_frame })
        }
        // tokio-util reports a stream that ends inside a frame as an `Other` error "bytes
        // remaining on stream" (its default `decode_eof`), not as UnexpectedEof.
        Some(Err(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                || (e.kind() == std::io::ErrorKind::Other && e.to_string().contains("bytes remaining")) =>
        {
            Err(FrameError::Truncated)
        }
        Some(Err(e)) => Err(FrameError::Io(e.to_string())),
    }
}

/// Appends `message` as one frame to `buf`.
pub fn encode(message: &impl Message, buf: &mut BytesMut) {
    let len = message.encoded_len();
    buf.reserve(4 + len);
    // Our messages are far below 4 GiB (events carry no values; health is tiny).
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer was just reserved.
    let _ = message.encode(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::pb;

    async fn read_bytes(bytes: &[u8], max: usize) -> Result<Option<pb::Request>, FrameError> {
        let mut frames = FramedRead::new(bytes, codec(max));
        read::<pb::Request, _>(&mut frames, max).await
    }

    #[tokio::test]
    async fn round_trips_and_checks_the_length_before_the_body() -> Result<(), FrameError> {
        let request =
            pb::Request { method: "node.health".into(), since_sequence: 7, kinds: vec!["a".into()] };
        let mut buf = BytesMut::new();
        encode(&request, &mut buf);
        assert_eq!(&buf[..4], &(request.encoded_len() as u32).to_be_bytes());
        assert_eq!(read_bytes(&buf, 1024).await?, Some(request));
        assert_eq!(read_bytes(&[], 1024).await?, None);
        // A header announcing more than the maximum fails at once, with no body sent.
        assert!(matches!(read_bytes(&u32::MAX.to_be_bytes(), 1024).await, Err(FrameError::BadLength { .. })));
        assert!(matches!(read_bytes(&1025u32.to_be_bytes(), 1024).await, Err(FrameError::BadLength { .. })));
        assert!(matches!(read_bytes(&0u32.to_be_bytes(), 1024).await, Err(FrameError::BadLength { .. })));
        // Undecodable and truncated input are errors, never panics.
        assert!(matches!(read_bytes(&[0, 0, 0, 2, 0xff, 0xff], 1024).await, Err(FrameError::Undecodable(_))));
        assert!(read_bytes(&[0, 0, 0, 9, 1], 1024).await.is_err());
        Ok(())
    }
}
