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
        Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
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
