//! Trace correlation: receive the servers' OpenTelemetry spans (embedded OTLP
//! receiver) or fetch them (Jaeger, Tempo), map each engine's request span onto
//! the common server view, and join it onto the client's request records.

pub mod backend;
pub mod client_span;
pub mod collector;
pub mod engines;
pub mod jaeger;
pub mod join;
pub mod receiver;
pub mod show;
pub mod span;
pub mod tempo;

pub use client_span::export_client_spans;
pub use collector::{
    collect_until_ctrl_c, join_run_dir, start_collector, JoinReport, SpanCollector, WaitProgress,
};
pub use receiver::ReceiverCounters;
pub use show::show_request;

use std::net::SocketAddr;
use std::time::Duration;

/// Where server spans come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceSource {
    /// The embedded OTLP receiver (point the server's exporter at it).
    Otlp,
    /// Query Jaeger by trace id after the run (`--jaeger-url`).
    Jaeger,
    /// Query Grafana Tempo by trace id after the run (`--tempo-url`).
    Tempo,
    /// Collect nothing.
    None,
}

/// `on` / `off` for a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The tracing flags of `run`, `join` and `collect`.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// Where server spans come from.
    #[arg(long, value_enum, default_value = "otlp")]
    pub trace_source: TraceSource,
    /// Address of the embedded OTLP/gRPC receiver.
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub otlp_grpc: SocketAddr,
    /// Address of the embedded OTLP/HTTP receiver (`POST /v1/traces`).
    #[arg(long, default_value = "127.0.0.1:4318")]
    pub otlp_http: SocketAddr,
    /// Send every received export on to this OTLP endpoint (`grpc://host:4317` or `http://host:4318`).
    #[arg(long, value_name = "URL")]
    pub otlp_forward: Option<String>,
    /// Jaeger query service, e.g. `http://localhost:16686` (with `--trace-source jaeger`).
    #[arg(long, value_name = "URL")]
    pub jaeger_url: Option<String>,
    /// Tempo query endpoint, e.g. `http://localhost:3200` (with `--trace-source tempo`).
    #[arg(long, value_name = "URL")]
    pub tempo_url: Option<String>,
    /// Jaeger UI base for a per-request trace link, e.g. `http://localhost:16686`.
    #[arg(long, value_name = "URL")]
    pub jaeger_ui: Option<String>,
    /// How long to wait for spans after the last response.
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration)]
    pub span_wait: Duration,
    /// After the run, export one client span per request to this OTLP endpoint.
    #[arg(long, value_name = "URL")]
    pub export_client_spans: Option<String>,
    /// Send a W3C `traceparent` (and so ask for server spans) with every request.
    #[arg(long, value_enum, default_value = "on")]
    pub trace_header: Switch,
}

impl TraceArgs {
    /// True when requests carry a `traceparent`.
    pub fn sends_trace_header(&self) -> bool {
        self.trace_header == Switch::On
    }
}
