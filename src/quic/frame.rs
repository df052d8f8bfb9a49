//! Frames: a 4-byte big-endian length `N` (1 ≤ N ≤ max_frame), then `N` bytes of protobuf.
//!
//! Reading uses tokio-util's length-delimited codec, which rejects a length above the maximum
//! from the 4-byte header alone, before reserving anything for the body.

use bytes::{BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{
    Decoder, FramedRead, LengthDelimitedCodec, length_delimited::LengthDelimitedCodecError,
};

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
pub fn codec(max_frame: usize) -> FrameCodec {
    let inner = LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec();
    FrameCodec { inner, in_frame: false }
}

/// tokio-util's length-delimited codec, plus the one thing it does not tell: that a stream
/// ended inside a frame after its header. The inner codec takes the header out of the buffer
/// as soon as it has read it, so its own end-of-stream check finds the buffer empty and
/// reports a clean end, and a frame cut after its header would pass for the end of the stream.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    /// A header has been read and its body has not been returned yet.
    in_frame: bool,
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let before = buf.len();
        let frame = self.inner.decode(buf)?;
        // The inner codec only shrinks the buffer without returning a frame when it takes a header.
        self.in_frame = frame.is_none() && (self.in_frame || buf.len() < before);
        Ok(frame)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && !self.in_frame => Ok(None),
            None => {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the stream ended inside a frame"))
            }
        }
    }
}

/// Reads one message of type `M` from `frames`; `Ok(None)` at a clean end of stream.
pub async fn read<M, R>(
    frames: &mut FramedRead<R, FrameCodec>,
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
        // A stream that ends inside a header or a body (FrameCodec::decode_eof).
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
            pb::Request { method: "node.health".into(), since_sequence: 7, kinds: vec!["a".into()], at_sequence: None };
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
        assert!(matches!(read_bytes(&[0, 0, 0, 9, 1], 1024).await, Err(FrameError::Truncated)));
        assert!(matches!(read_bytes(&[0, 0], 1024).await, Err(FrameError::Truncated)));
        Ok(())
    }

    /// fuzz/corpus/quic_frame/regression-cut-after-header: a stream that ends right after a
    /// frame's header read as a clean end of stream (the inner codec had consumed the header),
    /// so a client would take a cut-off event stream for a finished one.
    #[tokio::test]
    async fn fuzz_regression_stream_cut_after_a_frame_header() {
        assert!(matches!(read_bytes(&[0, 0, 0, 0xf8], 1024).await, Err(FrameError::Truncated)));
        let mut whole_then_header = BytesMut::new();
        encode(&pb::Request { method: "node.health".into(), ..Default::default() }, &mut whole_then_header);
        whole_then_header.extend_from_slice(&[0, 0, 0, 3]);
        let mut frames = FramedRead::new(&whole_then_header[..], codec(1024));
        assert!(matches!(read::<pb::Request, _>(&mut frames, 1024).await, Ok(Some(_))));
        assert!(matches!(read::<pb::Request, _>(&mut frames, 1024).await, Err(FrameError::Truncated)));
    }
}
