//! The protobuf codec of every Palyra service (build.rs points tonic's generated code here).
//!
//! It is tonic-prost's codec with one difference: a request message that does not decode (bytes
//! that are not protobuf, a varint where a string belongs, a string that is not UTF-8) is the
//! caller's mistake, so it is `INVALID_ARGUMENT` with a reason and prost's description of what
//! is wrong (see [`crate::wire::status::undecodable_request`]). tonic-prost answers `INTERNAL`, as the
//! gRPC status-code table suggests for library-generated parse errors; the node answers
//! `INVALID_ARGUMENT` on every malformed input. A response that does not decode (only ever seen
//! by a client of a broken server) stays `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::wire::status::{undecodable_request, undecodable_response};

/// [`tonic::codec::Codec`] for `application/grpc+proto` with prost, encoding `T` and decoding `U`.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec { _types: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder { _type: PhantomData }
    }
}

/// Decodes one `U`, saying which message and field did not decode.
#[derive(Debug, Clone)]
pub struct MessageDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            // buf lint (STANDARD) names every RPC's messages `XxxRequest` / `XxxResponse`, so the
            // type says which side this decoder runs on.
            if std::any::type_name::<U>().ends_with("Response") {
                undecodable_response(&e)
            } else {
                undecodable_request(&e)
            }
        })
    }
}
