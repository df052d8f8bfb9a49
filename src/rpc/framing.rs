//! gRPC message framing of request bodies, checked before tonic reads a message.
//!
//! A gRPC body is a sequence of messages, each a 5-byte prefix (compressed-flag, 4-byte
//! big-endian length) and that many bytes. tonic reserves a message's announced length as soon
//! as it reads the prefix, and reports a bad prefix or a body cut short as `INTERNAL`,
//! `OUT_OF_RANGE` or `UNIMPLEMENTED` without a reason. [`FramedRequest`] wraps every request
//! body (the gate puts it there) and refuses, before the prefix reaches tonic:
//! a compressed-flag other than 0 (the node accepts no compression), a length above the
//! method's limit, a body that ends inside a prefix or message, and, for unary methods, a
//! second message or none. Each is a [`FramingError`], mapped to a status in `status.rs`.
//!
//! It does not buffer: bytes pass through as they arrive, only the state of the current prefix
//! is kept.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;

use crate::wire::status::FramingError;

const PREFIX_LEN: usize = 5;

/// What a method accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Largest message, in bytes.
    pub max_message: usize,
    /// Exactly one message (every method whose request is not a stream).
    pub unary: bool,
}

/// A request body whose gRPC framing is checked as it passes.
pub struct FramedRequest {
    inner: Body,
    framing: Framing,
    /// Prefix bytes gathered so far (0..5) while between messages.
    prefix: [u8; PREFIX_LEN],
    have: usize,
    /// Bytes of the current message still to come (after a whole prefix).
    left: u64,
    announced: u64,
    messages: usize,
    done: bool,
}

impl std::fmt::Debug for FramedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedRequest").field("framing", &self.framing).finish_non_exhaustive()
    }
}

impl FramedRequest {
    /// Wraps `inner`, checking it against `framing`.
    pub fn new(inner: Body, framing: Framing) -> Self {
        FramedRequest {
            inner,
            framing,
            prefix: [0; PREFIX_LEN],
            have: 0,
            left: 0,
            announced: 0,
            messages: 0,
            done: false,
        }
    }

    /// Follows `data` through the framing; the first violation ends the body.
    fn check(&mut self, mut data: &[u8]) -> Result<(), FramingError> {
        while !data.is_empty() {
            if self.left > 0 {
                let take = usize::try_from(self.left).unwrap_or(usize::MAX).min(data.len());
                self.left -= take as u64;
                data = &data[take..];
                continue;
            }
            let take = (PREFIX_LEN - self.have).min(data.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have < PREFIX_LEN {
                break;
            }
            self.have = 0;
            let [flag, a, b, c, d] = self.prefix;
            if flag != 0 {
                return Err(FramingError::Compressed { flag });
            }
            let size = u64::from(u32::from_be_bytes([a, b, c, d]));
            if size > self.framing.max_message as u64 {
                return Err(FramingError::TooLarge { size, limit: self.framing.max_message });
            }
            self.messages += 1;
            if self.framing.unary && self.messages > 1 {
                return Err(FramingError::MessageCount("more than one"));
            }
            self.announced = size;
            self.left = size;
        }
        Ok(())
    }

    /// At the end of the body: a whole number of messages (one, for a unary method).
    fn finish(&self) -> Result<(), FramingError> {
        if self.have > 0 {
            return Err(FramingError::Truncated { announced: PREFIX_LEN as u64, arrived: self.have as u64 });
        }
        if self.left > 0 {
            return Err(FramingError::Truncated {
                announced: self.announced,
                arrived: self.announced - self.left,
            });
        }
        if self.framing.unary && self.messages == 0 {
            return Err(FramingError::MessageCount("none"));
        }
        Ok(())
    }
}

impl http_body::Body for FramedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(polled) => polled,
        };
        let verdict = match &polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => this.check(data),
                // Trailers end the body.
                None => this.finish(),
            },
            None => this.finish(),
            Some(Err(_)) => Ok(()),
        };
        if let Err(e) = verdict {
            this.done = true;
            tracing::debug!(error = %e, "request framing refused");
            return Poll::Ready(Some(Err(e.into())));
        }
        this.done = polled.is_none();
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        // Never claim the end while a verdict on it is pending: the end must be polled.
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framing: Framing, chunks: &[&[u8]]) -> Result<(), FramingError> {
        let mut body = FramedRequest::new(Body::empty(), framing);
        for chunk in chunks {
            body.check(chunk)?;
        }
        body.finish()
    }

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn checks_prefixes_split_anywhere_and_the_end() {
        let unary = Framing { max_message: 100, unary: true };
        let one = message(10);
        for cut in 0..one.len() {
            assert_eq!(run(unary, &[&one[..cut], &one[cut..]]), Ok(()), "cut at {cut}");
            assert!(
                matches!(
                    run(unary, &[&one[..cut]]),
                    Err(FramingError::Truncated { .. } | FramingError::MessageCount(_))
                ),
                "ends at {cut}"
            );
        }
        assert_eq!(run(unary, &[&message(0)]), Ok(()));
        assert_eq!(run(unary, &[&message(100)]), Ok(()));
        assert_eq!(run(unary, &[&[0, 0, 0, 0, 101]]), Err(FramingError::TooLarge { size: 101, limit: 100 }));
        assert_eq!(
            run(unary, &[&[0, 0xff, 0xff, 0xff, 0xff]]),
            Err(FramingError::TooLarge { size: u64::from(u32::MAX), limit: 100 })
        );
        assert_eq!(run(unary, &[&[1, 0, 0, 0, 1, 0]]), Err(FramingError::Compressed { flag: 1 }));
        assert_eq!(run(unary, &[&[9, 0, 0, 0, 1]]), Err(FramingError::Compressed { flag: 9 }));
        assert_eq!(run(unary, &[]), Err(FramingError::MessageCount("none")));
        let two = [message(1), message(1)].concat();
        assert_eq!(run(unary, &[&two]), Err(FramingError::MessageCount("more than one")));
        let stream = Framing { max_message: 100, unary: false };
        assert_eq!(run(stream, &[&two]), Ok(()));
        assert_eq!(run(stream, &[]), Ok(()));
        assert_eq!(
            run(stream, &[&message(10)[..8]]),
            Err(FramingError::Truncated { announced: 10, arrived: 3 })
        );
    }
}
