//! The OTLP/gRPC side of the receiver: `TraceService/Export`, with the
//! message kept as bytes until the handler so bad protobuf is answered
//! INVALID_ARGUMENT and counted like every other bad input.

use super::{wait_for_stop, Ingest, Refusal, GRPC_EXPORT_PATH, GRPC_SERVICE_NAME};
use crate::trace::span::decode_protobuf;
use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError};

pub(super) async fn serve_grpc(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    stopped: watch::Receiver<bool>,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    if let Err(error) = tonic::transport::Server::builder()
        .add_service(GrpcExport { ingest })
        .serve_with_incoming_shutdown(incoming, wait_for_stop(stopped))
        .await
    {
        eprintln!("warning: the OTLP/gRPC receiver stopped: {error}");
    }
}

/// `TraceService` with the message kept as bytes until the handler, so bad
/// protobuf is answered INVALID_ARGUMENT and counted like every other bad input.
#[derive(Clone)]
struct GrpcExport {
    ingest: Arc<Ingest>,
}

impl tonic::server::NamedService for GrpcExport {
    const NAME: &'static str = GRPC_SERVICE_NAME;
}

impl<B> Service<tonic::codegen::http::Request<B>> for GrpcExport
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        if request.uri().path() != GRPC_EXPORT_PATH {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let limit = ingest.max_message_bytes;
            let mut grpc = tonic::server::Grpc::new(RawExportCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(ExportMethod(ingest), request).await)
        })
    }
}

struct ExportMethod(Arc<Ingest>);

impl tonic::server::UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            match ingest.accept(decode_protobuf(request.get_ref())) {
                Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
                Err(Refusal::Full) => Err(tonic::Status::resource_exhausted(
                    "the span queue is full; retry later",
                )),
                Err(Refusal::TooLarge(m)) => Err(tonic::Status::resource_exhausted(m)),
                Err(Refusal::Malformed(m) | Refusal::Unsupported(m)) => {
                    Err(tonic::Status::invalid_argument(m))
                }
            }
        })
    }
}

/// Decodes a gRPC message to its raw bytes and encodes the (empty) response.
struct RawExportCodec;

struct RawDecoder;

struct ResponseEncoder;

impl Codec for RawExportCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let length = src.remaining();
        Ok(Some(src.copy_to_bytes(length)))
    }
}
