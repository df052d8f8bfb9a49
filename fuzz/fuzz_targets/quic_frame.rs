//! QUIC data-plane frames (`src/quic/frame.rs`): a peer's bytes as the node reads a `Request`
//! (64 KiB cap, as `quic/server.rs`), and a node's bytes as `QuicClient` reads `Response`s.
//! Checks: the 4-byte header alone decides a bad length; whatever decodes re-encodes to a
//! frame that decodes to the same message.

#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use palyra::quic::frame::{self, FrameError};
use palyra::quic::{DEFAULT_MAX_FRAME, pb};
use prost::Message;
use tokio_util::codec::FramedRead;

/// `quic/server.rs` MAX_REQUEST_FRAME: the cap on a Request frame.
const MAX_REQUEST_FRAME: usize = 64 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

async fn read_all<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8], max: usize) {
    let mut frames = FramedRead::new(data, frame::codec(max));
    let mut offset = 0usize;
    loop {
        let header = data.get(offset..offset + 4).map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
        match frame::read::<M, _>(&mut frames, max).await {
            Ok(None) => {
                assert_eq!(offset, data.len(), "a clean end only at a frame boundary");
                return;
            }
            Ok(Some(message)) => {
                let len = header.expect("a frame has a header") as usize;
                assert!((1..=max).contains(&len), "a frame of length {len} was accepted (max {max})");
                offset += 4 + len;
                let mut again = BytesMut::new();
                frame::encode(&message, &mut again);
                let mut reread = FramedRead::new(&again[..], frame::codec(max.max(again.len())));
                let round = frame::read::<M, _>(&mut reread, max.max(again.len())).await;
                match round {
                    Ok(Some(m)) => assert!(m == message, "decode(encode(m)) != m"),
                    // An empty message encodes to a zero-length frame, which the protocol refuses.
                    Err(FrameError::BadLength { .. }) => assert_eq!(message.encoded_len(), 0),
                    other => panic!("re-reading an encoded frame: {other:?}"),
                }
            }
            Err(FrameError::BadLength { .. }) => {
                let len = header.expect("a bad length needs a header") as usize;
                assert!(len == 0 || len > max, "length {len} refused though within 1..={max}");
                return;
            }
            Err(FrameError::Truncated) => {
                assert!(
                    header.is_none_or(|len| offset + 4 + len as usize > data.len()),
                    "truncated though the frame is whole"
                );
                return;
            }
            Err(FrameError::Undecodable(_)) => return,
            Err(other) => panic!("reading from memory cannot fail with {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        // The node's side: one Request, small cap.
        let mut frames = FramedRead::new(data, frame::codec(MAX_REQUEST_FRAME));
        let _ = frame::read::<pb::Request, _>(&mut frames, MAX_REQUEST_FRAME).await;
        read_all::<pb::Request>(data, MAX_REQUEST_FRAME).await;
        // The client's side: a stream of Responses, the default cap.
        read_all::<pb::Response>(data, DEFAULT_MAX_FRAME).await;
    });
});
