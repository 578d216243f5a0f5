//! The tracing settings, checked once from the command line's trace flags:
//! where spans come from, where the receiver listens, and the URLs of the
//! trace backends, the forwarder and the client span export.

use crate::cli::{Switch, TraceArgs};
use anyhow::bail;
use std::net::SocketAddr;
use std::time::Duration;

/// Where server spans come from (also the `--trace-source` values).
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

/// A trace backend to query by trace id, with its base URL (no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUrl {
    Jaeger(String),
    Tempo(String),
}

/// An OTLP endpoint to send spans to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtlpEndpoint {
    /// `grpc://host:port`, kept as the `http://host:port` a gRPC channel dials.
    Grpc(String),
    /// `http(s)://host:port[/path]`, completed with `/v1/traces` when it has no path.
    Http(String),
}

impl OtlpEndpoint {
    /// Reads `grpc://host:port` or `http(s)://host:port[/path]`; `flag` names
    /// the flag in the error.
    pub fn parse(text: &str, flag: &str) -> anyhow::Result<Self> {
        if let Some(rest) = text.strip_prefix("grpc://") {
            let address = rest.trim_end_matches('/');
            let url = format!("http://{address}");
            match reqwest::Url::parse(&url) {
                Ok(parsed) if parsed.host_str().is_some() && parsed.path() == "/" => {
                    Ok(Self::Grpc(url))
                }
                _ => bail!("{flag} {text}: give grpc://HOST:PORT"),
            }
        } else if text.starts_with("http://") || text.starts_with("https://") {
            check_http_url(text, flag)?;
            Ok(Self::Http(otlp_http_traces_url(text)))
        } else {
            bail!("{flag} {text}: the URL must start with grpc://, http:// or https://")
        }
    }

    /// The URL spans are sent to.
    pub fn url(&self) -> &str {
        match self {
            OtlpEndpoint::Grpc(url) | OtlpEndpoint::Http(url) => url,
        }
    }
}

/// An OTLP/HTTP base URL completed with `/v1/traces` when it has no path.
fn otlp_http_traces_url(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.trim_end_matches('/').contains('/') {
        url.to_string()
    } else {
        format!("{}/v1/traces", url.trim_end_matches('/'))
    }
}

/// An http(s) URL with a host, returned without a trailing slash.
fn check_http_url(text: &str, flag: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(text);
    match parsed {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
            Ok(text.trim_end_matches('/').to_string())
        }
        _ => bail!("{flag} `{text}` must be an http:// or https:// URL with a host"),
    }
}

/// The checked tracing settings of `run`, `join` and `collect`.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    pub source: TraceSource,
    /// `--otlp-grpc`: where the embedded OTLP/gRPC receiver listens.
    pub otlp_grpc: SocketAddr,
    /// `--otlp-http`: where the embedded OTLP/HTTP receiver listens.
    pub otlp_http: SocketAddr,
    /// `--otlp-forward`: every received export goes on to it.
    pub otlp_forward: Option<OtlpEndpoint>,
    /// The backend to query: set exactly when the source is Jaeger or Tempo.
    pub backend: Option<BackendUrl>,
    /// `--jaeger-ui`: base of the per-request trace link.
    pub jaeger_ui: Option<String>,
    /// `--span-wait`: how long to wait for spans after the last response.
    pub span_wait: Duration,
    /// `--export-client-spans`: where the client's own spans go after the run.
    pub export_client_spans: Option<OtlpEndpoint>,
    /// `--trace-header`: requests carry a `traceparent`.
    pub trace_header: bool,
}

impl TraceConfig {
    /// Checks the trace flags: the URLs' forms, and that `--trace-source jaeger`
    /// comes with `--jaeger-url` and `tempo` with `--tempo-url`.
    pub fn from_args(args: &TraceArgs) -> anyhow::Result<Self> {
        let jaeger_url = args
            .jaeger_url
            .as_deref()
            .map(|u| check_http_url(u, "--jaeger-url"))
            .transpose()?;
        let tempo_url = args
            .tempo_url
            .as_deref()
            .map(|u| check_http_url(u, "--tempo-url"))
            .transpose()?;
        let backend = match args.trace_source {
            TraceSource::Jaeger => Some(BackendUrl::Jaeger(jaeger_url.ok_or_else(|| {
                anyhow::anyhow!(
                    "--trace-source jaeger needs --jaeger-url (e.g. http://localhost:16686)"
                )
            })?)),
            TraceSource::Tempo => Some(BackendUrl::Tempo(tempo_url.ok_or_else(|| {
                anyhow::anyhow!(
                    "--trace-source tempo needs --tempo-url (e.g. http://localhost:3200)"
                )
            })?)),
            TraceSource::Otlp | TraceSource::None => None,
        };
        let endpoint = |url: &Option<String>, flag: &str| {
            url.as_deref()
                .map(|u| OtlpEndpoint::parse(u, flag))
                .transpose()
        };
        Ok(Self {
            source: args.trace_source,
            otlp_grpc: args.otlp_grpc,
            otlp_http: args.otlp_http,
            otlp_forward: endpoint(&args.otlp_forward, "--otlp-forward")?,
            backend,
            jaeger_ui: args
                .jaeger_ui
                .as_deref()
                .map(|u| check_http_url(u, "--jaeger-ui"))
                .transpose()?,
            span_wait: args.span_wait,
            export_client_spans: endpoint(&args.export_client_spans, "--export-client-spans")?,
            trace_header: args.trace_header == Switch::On,
        })
    }

    /// True when nothing is collected or joined: `--trace-source none` or
    /// `--trace-header off`.
    pub fn is_off(&self) -> bool {
        !self.trace_header || self.source == TraceSource::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        trace: TraceArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<TraceConfig> {
        let argv = std::iter::once("t").chain(flags.iter().copied());
        TraceConfig::from_args(&Flags::try_parse_from(argv)?.trace)
    }

    fn error(flags: &[&str]) -> String {
        format!("{:#}", config(flags).unwrap_err())
    }

    #[test]
    fn backends_need_their_url_in_http_form() {
        assert!(error(&["--trace-source", "jaeger"]).contains("--jaeger-url"));
        assert!(error(&["--trace-source", "tempo"]).contains("--tempo-url"));
        assert!(error(&["--jaeger-url", "localhost:16686"]).contains("http://"));
        assert!(error(&["--tempo-url", "ftp://tempo"]).contains("--tempo-url"));
        assert!(error(&["--jaeger-ui", "not a url"]).contains("--jaeger-ui"));
        let jaeger = config(&[
            "--trace-source",
            "jaeger",
            "--jaeger-url",
            "http://j:16686/",
        ]);
        assert_eq!(
            jaeger.unwrap().backend,
            Some(BackendUrl::Jaeger("http://j:16686".into()))
        );
        let otlp = config(&["--tempo-url", "https://t:3200"]).unwrap();
        assert_eq!(otlp.source, TraceSource::Otlp);
        assert_eq!(otlp.backend, None);
        assert!(!otlp.is_off());
        assert!(config(&["--trace-header", "off"]).unwrap().is_off());
    }

    #[test]
    fn otlp_endpoints_are_grpc_or_http() {
        let forward = config(&["--otlp-forward", "grpc://collector:4317/"]).unwrap();
        assert_eq!(
            forward.otlp_forward,
            Some(OtlpEndpoint::Grpc("http://collector:4317".into()))
        );
        let export = config(&["--export-client-spans", "http://c:4318"]).unwrap();
        assert_eq!(
            export.export_client_spans,
            Some(OtlpEndpoint::Http("http://c:4318/v1/traces".into()))
        );
        assert!(error(&["--otlp-forward", "collector:4317"]).contains("grpc://"));
        assert!(error(&["--export-client-spans", "ftp://x"]).contains("--export-client-spans"));
        assert!(error(&["--otlp-forward", "grpc://"]).contains("grpc://HOST:PORT"));
        assert!(error(&["--otlp-forward", "grpc://h:4317/path"]).contains("grpc://HOST:PORT"));
    }

    #[test]
    fn http_urls_get_the_traces_path() {
        assert_eq!(
            otlp_http_traces_url("http://h:4318"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            otlp_http_traces_url("http://h:4318/"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            otlp_http_traces_url("https://h/custom/path"),
            "https://h/custom/path"
        );
    }
}
