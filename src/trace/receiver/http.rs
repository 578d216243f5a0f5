//! The OTLP/HTTP side of the receiver: `POST /v1/traces` with protobuf or
//! JSON, optionally gzip (capped against bombs), answered in the request's
//! content type with OTLP's `Status` body on refusal.

use super::{wait_for_stop, Ingest, Refusal};
use crate::trace::span::{decode_json, decode_protobuf};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::watch;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

pub(super) async fn serve_http(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    stopped: watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_export))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ingest);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(wait_for_stop(stopped))
        .await
    {
        eprintln!("warning: the OTLP/HTTP receiver stopped: {error}");
    }
}

async fn http_export(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            let refusal = ingest.refuse(Refusal::Unsupported(format!(
                "unsupported content type `{other}`: send application/x-protobuf or application/json"
            )));
            return refusal_response(Encoding::Json, refusal);
        }
    };
    match read_export(&ingest, &headers, body, encoding).await {
        Ok(()) => {
            let body = match encoding {
                Encoding::Protobuf => ExportTraceServiceResponse::default().encode_to_vec(),
                Encoding::Json => b"{}".to_vec(),
            };
            ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
        }
        Err(refusal) => refusal_response(encoding, refusal),
    }
}

async fn read_export(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<(), Refusal> {
    let limit = ingest.max_message_bytes;
    let raw = axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = error
            .into_inner()
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some();
        ingest.refuse(if too_large {
            Refusal::TooLarge(format!("body larger than {limit} bytes"))
        } else {
            Refusal::Malformed("could not read the body".into())
        })
    })?;
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let bytes = match content_encoding.as_str() {
        "gzip" => gunzip_capped(&raw, limit).map_err(|r| ingest.refuse(r))?,
        "identity" | "" => raw,
        other => {
            return Err(ingest.refuse(Refusal::Unsupported(format!(
                "unsupported content encoding `{other}`: send gzip or none"
            ))))
        }
    };
    ingest.accept(match encoding {
        Encoding::Protobuf => decode_protobuf(&bytes),
        Encoding::Json => decode_json(&bytes),
    })
}

/// Decompresses gzip, refusing output beyond `limit` bytes (a gzip bomb stops
/// at the cap instead of filling memory).
fn gunzip_capped(compressed: &[u8], limit: usize) -> Result<Bytes, Refusal> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refusal::Malformed(format!("bad gzip body: {e}")))?;
    if out.len() > limit {
        return Err(Refusal::TooLarge(format!(
            "body decompresses to more than {limit} bytes"
        )));
    }
    Ok(Bytes::from(out))
}

/// The `google.rpc.Status` OTLP/HTTP puts in error bodies.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn refusal_response(encoding: Encoding, refusal: Refusal) -> Response {
    let (status, code, message) = match refusal {
        Refusal::Malformed(m) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, m),
        Refusal::Unsupported(m) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            m,
        ),
        Refusal::TooLarge(m) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::ResourceExhausted,
            m,
        ),
        Refusal::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable,
            "the span queue is full; retry later".to_string(),
        ),
    };
    let rpc = RpcStatus {
        code: code as i32,
        message,
    };
    let body = match encoding {
        Encoding::Protobuf => rpc.encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": rpc.code, "message": rpc.message})
            .to_string()
            .into_bytes(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn gzip_is_capped() {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(matches!(
            gunzip_capped(&bomb, 1000),
            Err(Refusal::TooLarge(_))
        ));
        assert_eq!(gunzip_capped(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(
            gunzip_capped(b"not gzip", 1000),
            Err(Refusal::Malformed(_))
        ));
    }
}
