//! The simulator's HTTP API in vLLM's shapes: chat and text completions
//! (streaming or not), `/v1/models`, `/tokenize`, `/health`, `/version` and
//! `/metrics`, plus vLLM's error bodies. The tokenizer counts one token per
//! whitespace-separated word.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::engine::{EngineHandle, PacedTokens, TokenSource};
use super::prompt::{image_tokens, prompt_token_count, prompt_words, Message, Prompt};
use super::request::TOKEN_TEXT;
use super::request::{Api, RequestInfo};
use super::stream::{Generation, ResponseContext, SseStream, SYSTEM_FINGERPRINT};
use crate::client::traceparent::TraceParent;

/// `max_tokens` when the request gives none.
const DEFAULT_MAX_TOKENS: u64 = 128;

/// How output tokens are timed.
#[derive(Debug)]
pub(crate) enum Pacing {
    /// The batching engine, reached after `frontend` of API-server work.
    Engine {
        engine: EngineHandle,
        frontend: Duration,
    },
    Deterministic {
        ttft: Duration,
        itl: Duration,
    },
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub max_model_len: u32,
    pub pacing: Pacing,
    pub response: Arc<ResponseContext>,
    pub ids: Mutex<StdRng>,
    /// `/health` answers 503 until then (`--ready-after`).
    pub ready_at: std::time::Instant,
    pub prefix_cache: Option<super::prefix::PrefixCache>,
    pub reasoning_tokens: u32,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/health", get(health))
        // vLLM's admin calls, accepted so experiments can reset and profile.
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route("/start_profile", post(|| async { StatusCode::OK }))
        .route("/stop_profile", post(|| async { StatusCode::OK }))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Empties the prefix cache (when `--prefix-caching` keeps one), as vLLM does.
async fn reset_prefix_cache(State(state): State<Arc<AppState>>) -> StatusCode {
    if let Some(cache) = &state.prefix_cache {
        cache.reset();
    }
    StatusCode::OK
}

/// 200 once the start-up delay (`--ready-after`) has passed, 503 before.
async fn health(State(state): State<Arc<AppState>>) -> StatusCode {
    if std::time::Instant::now() >= state.ready_at {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// An error response in vLLM's shape.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}

impl ApiError {
    pub(super) fn bad_request(message: String, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message,
            param: param.map(str::to_owned),
        }
    }

    /// A body that is not the expected JSON (FastAPI's request validation).
    fn invalid_body(error: &serde_json::Error, body: &[u8]) -> Self {
        let (message, param) = if error.is_data() {
            (format!("1 validation error:\n  {error}"), "body".to_owned())
        } else {
            let loc = format!("body.{}", byte_offset(body, error.line(), error.column()));
            let message = format!(
                "1 validation error:\n  {{'type': 'json_invalid', 'loc': '{loc}', 'msg': 'JSON decode error', 'input': '<dict of 0 items>', 'ctx': {{'error': {:?}}}}}",
                error.to_string()
            );
            (message, loc)
        };
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "Bad Request",
            message,
            param: Some(param),
        }
    }

    fn unavailable() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "ServiceUnavailableError",
            message: "the simulator is shutting down".into(),
            param: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.status.as_u16(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Byte offset of serde_json's 1-based line and column.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let before: usize = body
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    before + column
}

/// Stable token ids for `/tokenize` (FNV-1a of the word).
fn token_id(word: &str) -> u32 {
    let hash = word.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    hash % 32_000
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
    #[serde(default)]
    continuous_usage_stats: bool,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<Prompt>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    // Other fields (`ignore_eos`, ...) are accepted and ignored: the simulator
    // always generates `max_tokens` tokens.
}

fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(name) if name != state.response.model => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            message: format!(
                "The model `{name}` does not exist. Valid aliases: {}.",
                state.response.model
            ),
            param: Some("model".into()),
        }),
        _ => Ok(()),
    }
}

/// Output tokens for the request, validated and capped like vLLM does.
fn output_tokens(
    state: &AppState,
    requested: Option<u64>,
    prompt_tokens: u32,
) -> Result<u32, ApiError> {
    let max_model_len = state.max_model_len;
    if let Some(asked) = requested {
        if asked > max_model_len as u64 {
            return Err(ApiError::bad_request(
                format!("max_tokens={asked} cannot be greater than max_model_len={max_model_len}. Please request fewer output tokens. (parameter=max_tokens, value={asked})"),
                Some("max_tokens"),
            ));
        }
        if asked == 0 {
            return Err(ApiError::bad_request(
                format!("max_tokens must be at least 1, got {asked}. (parameter=max_tokens, value={asked})"),
                Some("max_tokens"),
            ));
        }
    }
    if prompt_tokens >= max_model_len {
        return Err(ApiError::bad_request(
            format!("This model's maximum context length is {max_model_len} tokens. However, your request has {prompt_tokens} input tokens. Please reduce the length of the input."),
            None,
        ));
    }
    let asked = requested.unwrap_or(DEFAULT_MAX_TOKENS);
    Ok(asked.min((max_model_len - prompt_tokens) as u64) as u32)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create_completion(&state, Api::Chat, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create_completion(&state, Api::Completions, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn create_completion(
    state: &AppState,
    api: Api,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let request: CompletionRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid_body(&e, body))?;
    check_model(state, request.model.as_deref())?;
    let messages = request.messages.as_deref().unwrap_or_default();
    let words = match (api, &request.prompt) {
        (Api::Chat, _) => prompt_words(None, Some(messages))?,
        (Api::Completions, Some(Prompt::TokenIds(_))) => Vec::new(),
        (Api::Completions, prompt) => prompt_words(prompt.as_ref(), None)?,
    };
    let prompt_tokens = match (api, &request.prompt) {
        (Api::Chat, _) => words.len() as u32 + image_tokens(messages),
        (Api::Completions, prompt) => prompt_token_count(prompt.as_ref(), None)?,
    };
    let cached_tokens = state.prefix_cache.as_ref().map(|c| c.cached(&words));
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            "the simulator serves n=1 only".into(),
            Some("n"),
        ));
    }
    let requested = match api {
        Api::Chat => request.max_completion_tokens.or(request.max_tokens),
        Api::Completions => request.max_tokens,
    };
    let max_tokens = output_tokens(state, requested, prompt_tokens)?;
    let client_request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let id_suffix = match &client_request_id {
        Some(id) => id.clone(),
        None => {
            let mut rng = state.ids.lock().unwrap_or_else(|e| e.into_inner());
            format!("{:016x}", rng.random::<u64>())
        }
    };
    let response_id = match api {
        Api::Chat => format!("chatcmpl-{id_suffix}"),
        Api::Completions => format!("cmpl-{id_suffix}"),
    };
    let options = request.stream_options.unwrap_or_default();
    let mut info = RequestInfo {
        api,
        response_id,
        client_request_id,
        created: crate::units::unix_now_ns() / 1_000_000_000,
        prompt_tokens,
        max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        stream: request.stream,
        include_usage: options.include_usage,
        continuous_usage: options.include_usage && options.continuous_usage_stats,
        cached_tokens,
        reasoning_tokens: state.reasoning_tokens,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse),
        arrival,
        enqueued: arrival,
    };
    let source = match &state.pacing {
        Pacing::Engine { engine, frontend } => {
            tokio::time::sleep(*frontend).await;
            info.enqueued = Instant::now();
            TokenSource::Engine(
                engine
                    .submit(prompt_tokens - cached_tokens.unwrap_or(0), max_tokens)
                    .ok_or_else(ApiError::unavailable)?,
            )
        }
        Pacing::Deterministic { ttft, itl } => TokenSource::Paced(PacedTokens::new(
            arrival,
            *ttft,
            *itl,
            max_tokens,
            state.response.metrics.clone(),
        )),
    };
    let mut generation = Generation::new(info, source, state.response.clone());
    if generation.info.stream {
        let mut response = Body::from_stream(SseStream::new(generation)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        return Ok(response);
    }
    if !generation.run_to_end().await {
        return Err(ApiError::unavailable());
    }
    let body = complete_body(&generation.info, &state.response.model);
    generation.stamp_write();
    generation.finish();
    Ok(body)
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    total_tokens: u32,
    completion_tokens: u32,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<()>,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u32,
}

#[derive(Serialize)]
struct ChatMessage {
    role: &'static str,
    content: String,
    refusal: Option<()>,
    annotations: Option<()>,
    audio: Option<()>,
    function_call: Option<()>,
    reasoning: Option<()>,
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: ChatMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
    stop_reason: Option<()>,
    token_ids: Option<()>,
    routed_experts: Option<()>,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoice; 1],
    service_tier: Option<()>,
    system_fingerprint: &'static str,
    usage: Usage,
    prompt_logprobs: Option<()>,
    prompt_token_ids: Option<()>,
    prompt_text: Option<()>,
    kv_transfer_params: Option<()>,
    ec_transfer_params: Option<()>,
    metrics: Option<()>,
}

#[derive(Serialize)]
struct TextChoice {
    index: u32,
    text: String,
    logprobs: Option<()>,
    finish_reason: &'static str,
    stop_reason: Option<()>,
    token_ids: Option<()>,
    prompt_logprobs: Option<()>,
    prompt_token_ids: Option<()>,
    routed_experts: Option<()>,
}

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [TextChoice; 1],
    service_tier: Option<()>,
    system_fingerprint: &'static str,
    usage: Usage,
    kv_transfer_params: Option<()>,
    ec_transfer_params: Option<()>,
    metrics: Option<()>,
}

/// A non-streaming response body.
fn complete_body(info: &RequestInfo, model: &str) -> Response {
    let text = TOKEN_TEXT.repeat(info.max_tokens as usize);
    let usage = Usage {
        prompt_tokens: info.prompt_tokens,
        total_tokens: info.prompt_tokens + info.max_tokens,
        completion_tokens: info.max_tokens,
        prompt_tokens_details: info
            .cached_tokens
            .map(|cached_tokens| PromptDetails { cached_tokens }),
        completion_tokens_details: None,
    };
    match info.api {
        Api::Chat => Json(ChatCompletion {
            id: &info.response_id,
            object: "chat.completion",
            created: info.created,
            model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content: text,
                    refusal: None,
                    annotations: None,
                    audio: None,
                    function_call: None,
                    reasoning: None,
                },
                logprobs: None,
                finish_reason: "length",
                stop_reason: None,
                token_ids: None,
                routed_experts: None,
            }],
            service_tier: None,
            system_fingerprint: SYSTEM_FINGERPRINT,
            usage,
            prompt_logprobs: None,
            prompt_token_ids: None,
            prompt_text: None,
            kv_transfer_params: None,
            ec_transfer_params: None,
            metrics: None,
        })
        .into_response(),
        Api::Completions => Json(TextCompletion {
            id: &info.response_id,
            object: "text_completion",
            created: info.created,
            model,
            choices: [TextChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason: "length",
                stop_reason: None,
                token_ids: None,
                prompt_logprobs: None,
                prompt_token_ids: None,
                routed_experts: None,
            }],
            service_tier: None,
            system_fingerprint: SYSTEM_FINGERPRINT,
            usage,
            kv_transfer_params: None,
            ec_transfer_params: None,
            metrics: None,
        })
        .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<Prompt>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: TokenizeRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid_body(&e, &body))?;
    check_model(&state, request.model.as_deref())?;
    let tokens: Vec<u32> = match &request.prompt {
        Some(Prompt::TokenIds(ids)) => ids.clone(),
        prompt => prompt_words(prompt.as_ref(), request.messages.as_deref())?
            .into_iter()
            .map(token_id)
            .collect(),
    };
    Ok(Json(serde_json::json!({
        "count": tokens.len(),
        "max_model_len": state.max_model_len,
        "tokens": tokens,
        "token_strs": null,
    })))
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let created = crate::units::unix_now_ns() / 1_000_000_000;
    let permission_id = {
        let mut rng = state.ids.lock().unwrap_or_else(|e| e.into_inner());
        format!("modelperm-{:016x}", rng.random::<u64>())
    };
    let model = &state.response.model;
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": model,
            "parent": null,
            "max_model_len": state.max_model_len,
            "permission": [{
                "id": permission_id,
                "object": "model_permission",
                "created": created,
                "allow_create_engine": false,
                "allow_sampling": true,
                "allow_logprobs": true,
                "allow_search_indices": false,
                "allow_view": true,
                "allow_fine_tuning": false,
                "organization": "*",
                "group": null,
                "is_blocking": false,
            }],
        }],
    }))
    .into_response()
}

async fn version() -> Response {
    Json(serde_json::json!({ "version": concat!("tracebench-sim ", env!("CARGO_PKG_VERSION")) }))
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=1.0.0; charset=utf-8",
        )],
        state.response.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_points_at_the_byte_like_vllm() {
        let body = br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":true"#;
        let error = serde_json::from_slice::<CompletionRequest>(body).expect_err("malformed");
        let api_error = ApiError::invalid_body(&error, body);
        assert_eq!(api_error.param.as_deref(), Some("body.89"));
        assert_eq!(api_error.kind, "Bad Request");
        assert!(api_error.message.contains("json_invalid"));
        assert_eq!(byte_offset(b"ab\ncd", 2, 1), 4);
    }
}
