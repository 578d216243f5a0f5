//! The proxy's checked settings: `tracebench proxy` flags become a
//! [`ProxyConfig`] exactly once, so a bad upstream URL or limit is an error
//! before anything listens.

use crate::cli::ProxyArgs;
use crate::telemetry::TelemetryConfig;
use crate::trace::{TraceConfig, TraceSource};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Smallest `--max-header-bytes` (the HTTP/1 parser needs this much buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

/// Everything the proxy needs, checked.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--upstream`: the one server every request goes to (scheme, host, port, optional path prefix).
    pub upstream: reqwest::Url,
    /// The records folder: `--out`/`--run-id`.
    pub dir: PathBuf,
    pub run_id: String,
    /// The SQLite history (`None` with `--no-db`).
    pub db: Option<PathBuf>,
    pub limits: Limits,
    /// `--grace-period`: how long Ctrl-C lets requests in flight finish.
    pub grace_period: Duration,
    /// `--tui`.
    pub tui: bool,
    pub trace: TraceConfig,
    pub telemetry: TelemetryConfig,
}

/// What one client may ask of the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `--max-body`: request bodies above this get 413.
    pub max_body: usize,
    /// `--max-headers`: most request header lines.
    pub max_headers: usize,
    /// `--max-header-bytes`: most bytes of a request head.
    pub max_header_bytes: usize,
    /// `--idle-timeout`: longest silence of the client's body or the upstream's answer.
    pub idle_timeout: Duration,
    /// `--request-timeout`: longest whole request.
    pub request_timeout: Duration,
    /// `--max-connections`: client connections served at once (more wait to be accepted).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 8 << 20,
            max_headers: 100,
            max_header_bytes: 64 << 10,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(600),
            max_connections: 10_000,
        }
    }
}

impl ProxyConfig {
    /// Checks the flags.
    pub fn from_args(args: &ProxyArgs) -> anyhow::Result<Self> {
        let upstream = parse_upstream(&args.upstream)?;
        let trace = TraceConfig::from_args(&args.trace)?;
        if matches!(trace.source, TraceSource::Jaeger | TraceSource::Tempo) {
            bail!(
                "the proxy joins spans as they arrive at its own OTLP receiver: use --trace-source otlp (or none); join a proxy's folder against Jaeger or Tempo afterwards with `tracebench join`"
            );
        }
        if args.max_header_bytes < MIN_HEADER_BYTES {
            bail!("--max-header-bytes must be at least {MIN_HEADER_BYTES}");
        }
        if args.max_connections == 0 || args.max_headers == 0 {
            bail!("--max-connections and --max-headers must be at least 1");
        }
        let run_id = args
            .run_id
            .clone()
            .unwrap_or_else(|| format!("proxy-{}", crate::run::new_run_id()));
        let dir = args.out.join(&run_id);
        Ok(Self {
            listen: args.listen,
            upstream,
            dir,
            run_id,
            db: args.history.path().map(std::path::Path::to_path_buf),
            limits: Limits {
                max_body: args.max_body,
                max_headers: args.max_headers,
                max_header_bytes: args.max_header_bytes,
                idle_timeout: args.idle_timeout,
                request_timeout: args.request_timeout,
                max_connections: args.max_connections,
            },
            grace_period: args.grace_period,
            tui: args.tui,
            trace,
            telemetry: TelemetryConfig::from_args(&args.telemetry)?,
        })
    }

    /// A proxy of `upstream` listening on a free loopback port, writing under
    /// `out`, with no history, no telemetry and the OTLP receiver on free
    /// ports (for tests and benchmarks).
    pub fn local(upstream: &str, out: &std::path::Path) -> anyhow::Result<Self> {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            args: ProxyArgs,
        }
        let free = |port: std::io::Result<u16>| -> anyhow::Result<String> {
            Ok(format!("127.0.0.1:{}", port?))
        };
        let flags = Flags::try_parse_from([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--no-db",
            "--gpu",
            "off",
            "--server-metrics",
            "off",
            "--otlp-grpc",
            &free(crate::testing::free_port())?,
            "--otlp-http",
            &free(crate::testing::free_port())?,
        ])?;
        let mut config = Self::from_args(&flags.args)?;
        config.dir = out.join(&config.run_id);
        Ok(config)
    }
}

/// The `--upstream` URL: http(s), with a host, no query.
fn parse_upstream(text: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(text).with_context(|| {
        format!("--upstream `{text}` is not a URL (e.g. http://127.0.0.1:8000)")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--upstream `{text}` must be an http:// or https:// URL with a host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--upstream `{text}` must not have a query or fragment");
    }
    Ok(url)
}

/// A byte size: `8388608`, `512KiB`, `8MiB`, `1GiB`, `8MB`, `64k`.
pub fn parse_size(text: &str) -> Result<usize, crate::units::BadValue> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| crate::units::BadValue::new(format!("`{text}` is not a size (e.g. 8MiB)")))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        other => {
            return Err(crate::units::BadValue::new(format!(
                "unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            )))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| crate::units::BadValue::new(format!("`{text}` is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_upstreams() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_upstream("http://127.0.0.1:8000").is_ok());
        assert!(parse_upstream("https://example.test/prefix").is_ok());
        assert!(parse_upstream("ftp://host").is_err());
        assert!(parse_upstream("127.0.0.1:8000").is_err());
        assert!(parse_upstream("http://h:1/?x=1").is_err());
    }
}
