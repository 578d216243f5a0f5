//! A run's validated configuration: every raw flag checked and converted once,
//! before any request is sent. A bad value fails here with one line saying
//! what and where (exit code 2).

use crate::analysis::Slo;
use crate::cli::RunArgs;
use crate::client::ClientOptions;
use crate::record::Endpoint;
use crate::record::TtftMethod;
use crate::schedule::Schedule;
use crate::shard::Shard;
use crate::telemetry::TelemetryConfig;
use crate::workload::feed::WorkloadConfig;
use crate::workload::images::{ImageConfig, ImageSource};
use crate::workload::sessions::SyntheticSessions;
use crate::workload::sharegpt::{LengthFilters, Turns};
use crate::workload::{BodyOptions, DatasetFormat, Source};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Parser;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// When to stop sending.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopAfter {
    Requests(u64),
    #[serde(serialize_with = "as_seconds")]
    Duration(Duration),
    /// Until the workload ends (a trace replay without --requests or --duration).
    WorkloadEnd,
}

/// Everything a run needs, checked. Serialized into `run.json` (without secrets).
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub url: String,
    pub endpoint: Endpoint,
    pub model: Option<String>,
    #[serde(skip)]
    pub headers: HeaderMap,
    /// Header names given with -H (values are not written anywhere).
    pub header_names: Vec<String>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub ignore_eos: bool,
    pub temperature: Option<f64>,
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    pub schedule: Schedule,
    pub stop: StopAfter,
    pub warmup: u64,
    /// Nothing in flight this long between the warm-up and the measured requests.
    #[serde(serialize_with = "as_seconds")]
    pub idle_window: Duration,
    /// Open connections before the first request (`--preconnect`).
    pub preconnect: bool,
    pub seed: u64,
    pub source: Source,
    /// Images added to every request.
    pub images: Option<ImageConfig>,
    pub ttft_method: TtftMethod,
    pub out: PathBuf,
    pub run_id: Option<String>,
    #[serde(serialize_with = "as_seconds")]
    pub request_timeout: Duration,
    #[serde(serialize_with = "as_seconds")]
    pub first_byte_timeout: Duration,
    #[serde(serialize_with = "as_seconds")]
    pub grace_period: Duration,
    pub max_error_rate: f64,
    pub slo: Slo,
    pub tui: bool,
    /// Lines the dashboard shows above the run (an experiment's progress).
    #[serde(skip)]
    pub live_context: Vec<String>,
    pub db: Option<PathBuf>,
    #[serde(skip)]
    pub trace: crate::trace::TraceConfig,
    #[serde(skip)]
    pub telemetry: TelemetryConfig,
    /// `--shard I/N`: this process sends shard I's share of the run.
    pub shard: Option<Shard>,
    /// `--start-at`: the wall-clock instant the load starts.
    #[serde(serialize_with = "as_rfc3339")]
    pub start_at: Option<DateTime<Utc>>,
}

/// Most connections `--preconnect` opens; an open loop without
/// `--max-concurrency` gets this many.
pub const MAX_PRECONNECT: usize = 1024;

fn as_rfc3339<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339()),
        None => s.serialize_none(),
    }
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunConfig {
    /// Checks and converts the flags of `tracebench run`.
    pub fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        let url = check_url(&args.url)?;
        let (headers, header_names) = headers(&args.headers, args.api_key.as_deref())?;
        let schedule = schedule(args)?;
        let stop = match (args.requests, args.duration) {
            (Some(_), Some(_)) => bail!("--requests and --duration: give one of them"),
            (Some(0), None) => bail!("--requests must be at least 1"),
            (Some(n), None) => StopAfter::Requests(n),
            (None, Some(d)) if d.is_zero() => bail!("--duration must be longer than 0s"),
            (None, Some(d)) => StopAfter::Duration(d),
            (None, None) if args.workload.trace_replay.is_some() => StopAfter::WorkloadEnd,
            (None, None) => StopAfter::Requests(100),
        };
        let extra_body = match &args.extra_body {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(map)) => Some(map),
                Ok(_) => bail!("--extra-body must be a JSON object, like '{{\"top_p\":0.9}}'"),
                Err(e) => bail!("--extra-body is not JSON: {e}"),
            },
        };
        let source = source(args)?;
        let images = images(args)?;
        let two_pass = args.workload.ttft_method == TtftMethod::TwoPass;
        if two_pass && source.is_sessions() {
            bail!(
                "--ttft-method two-pass sends single prompts; it cannot time multi-turn sessions"
            );
        }
        if images.is_some() && args.endpoint == Endpoint::Completions {
            bail!("--images need --endpoint chat (images are chat content parts)");
        }
        if !(0.0..=1.0).contains(&args.max_error_rate) {
            bail!("--max-error-rate must be between 0 and 1");
        }
        if let Some(run_id) = &args.run_id {
            if run_id.is_empty()
                || run_id.contains(['/', '\\'])
                || run_id.starts_with('.')
                || run_id.chars().any(char::is_control)
            {
                bail!("--run-id must be a plain folder name");
            }
        }
        if args.max_tokens == Some(0) {
            bail!("--max-tokens must be at least 1");
        }
        if let Some(shard) = args.shard {
            if args.run_id.is_none() {
                bail!("--shard {shard} needs --run-id: every shard of a run names the same run");
            }
            Shard::check_split(shard.count, &schedule)?;
            if let StopAfter::Requests(n) = stop {
                if n < u64::from(shard.count) {
                    bail!(
                        "--requests {n} over {} shards leaves some shard nothing to send",
                        shard.count
                    );
                }
            }
        }
        Ok(Self {
            url,
            endpoint: args.endpoint,
            model: args.model.clone(),
            headers,
            header_names,
            stream: !args.no_stream && !two_pass,
            max_tokens: args.max_tokens,
            ignore_eos: args.ignore_eos,
            temperature: args.temperature,
            extra_body,
            schedule,
            stop,
            warmup: args.warmup,
            idle_window: args.idle_window,
            preconnect: !args.no_preconnect,
            seed: args.seed,
            source,
            images,
            ttft_method: args.workload.ttft_method,
            out: args.out.clone(),
            run_id: args.run_id.clone(),
            request_timeout: args.request_timeout,
            first_byte_timeout: args.first_byte_timeout,
            grace_period: args.grace_period,
            max_error_rate: args.max_error_rate,
            slo: args.slo.clone().unwrap_or_default(),
            tui: !args.no_tui,
            live_context: Vec::new(),
            db: args.history.path().map(std::path::Path::to_path_buf),
            trace: crate::trace::TraceConfig::from_args(&args.trace)?,
            telemetry: TelemetryConfig::from_args(&args.telemetry)?,
            shard: args.shard,
            start_at: args.start_at,
        })
    }

    /// The connections `--preconnect` opens: as many as requests may be in
    /// flight at once, but no more than the run sends, nor than [`MAX_PRECONNECT`].
    pub fn preconnect_connections(&self) -> usize {
        let sends = match self.stop {
            StopAfter::Requests(n) => n.saturating_add(self.warmup),
            StopAfter::Duration(_) | StopAfter::WorkloadEnd => u64::MAX,
        };
        let sends = usize::try_from(sends).unwrap_or(usize::MAX);
        self.load_schedule()
            .in_flight_limit()
            .min(sends)
            .min(MAX_PRECONNECT)
    }

    /// The load this process sends: the run's, or its shard's share of it.
    pub fn load_schedule(&self) -> Schedule {
        match self.shard {
            Some(shard) => shard.schedule(&self.schedule),
            None => self.schedule.clone(),
        }
    }

    /// The seed of this process's arrivals (a shard's is derived from the run's).
    pub fn arrival_seed(&self) -> u64 {
        self.shard.map_or(self.seed, |s| s.arrival_seed(self.seed))
    }

    /// The name of this process's run folder under `out`.
    pub fn folder_name(&self, run_id: &str) -> String {
        self.shard
            .map_or_else(|| run_id.to_string(), |s| s.folder_name(run_id))
    }

    /// What the workload needs of this run.
    pub fn workload(&self, run_id: &str, model: &str) -> WorkloadConfig {
        WorkloadConfig {
            source: self.source.clone(),
            max_tokens: self.max_tokens,
            seed: self.seed,
            warmup: self.warmup,
            requests: match self.stop {
                StopAfter::Requests(n) => Some(n),
                StopAfter::Duration(_) | StopAfter::WorkloadEnd => None,
            },
            body: BodyOptions {
                endpoint: self.endpoint,
                model: model.to_string(),
                stream: self.stream,
                ignore_eos: self.ignore_eos,
                temperature: self.temperature,
                extra_body: self.extra_body.clone(),
                two_pass: self.ttft_method == TtftMethod::TwoPass,
            },
            run_id: self
                .shard
                .map_or_else(|| run_id.to_string(), |s| s.request_id_prefix(run_id)),
            shard: self.shard,
            images: self.images.clone(),
        }
    }

    /// How the client sends this run's requests.
    pub fn client_options(&self, run_id: &str, model: &str) -> ClientOptions {
        ClientOptions {
            base_url: self.url.clone(),
            endpoint: self.endpoint,
            model: model.to_string(),
            stream: self.stream,
            headers: self.headers.clone(),
            trace_header: self.trace.trace_header,
            first_byte_timeout: self.first_byte_timeout,
            request_timeout: self.request_timeout,
            run_id: run_id.to_string(),
            shard: self.shard,
        }
    }
}

impl Default for RunConfig {
    /// What `tracebench run` does without flags (environment variables included).
    fn default() -> Self {
        let cli =
            crate::cli::Cli::try_parse_from(["tracebench", "run"]).expect("the defaults parse");
        let crate::cli::Command::Run(args) = cli.command else {
            unreachable!("parsed as `run`")
        };
        Self::from_args(&args).expect("the defaults are valid")
    }
}

/// An http(s) URL with a host, without a trailing slash.
fn check_url(text: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(text).with_context(|| format!("--url `{text}` is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--url `{text}` must be an http:// or https:// address with a host");
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn headers(raw: &[String], api_key: Option<&str>) -> anyhow::Result<(HeaderMap, Vec<String>)> {
    let mut map = HeaderMap::new();
    let mut names = Vec::new();
    for item in raw {
        let (name, value) = item
            .split_once(':')
            .with_context(|| format!("-H `{item}` must look like `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("-H `{item}`: bad header name"))?;
        let mut value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("-H `{item}`: bad header value"))?;
        value.set_sensitive(true);
        names.push(name.to_string());
        map.append(name, value);
    }
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key has characters a header cannot carry")?;
        value.set_sensitive(true);
        map.insert(AUTHORIZATION, value);
    }
    Ok((map, names))
}

/// Where the prompts come from: a dataset, a trace, or synthetic prompts
/// (alone, in prefix groups, or as sessions), each flag checked against the others.
fn source(args: &RunArgs) -> anyhow::Result<Source> {
    let w = &args.workload;
    let readable = |flag: &str, path: &std::path::Path| {
        std::fs::metadata(path)
            .map(drop)
            .with_context(|| format!("{flag} {}: cannot read it", path.display()))
    };
    if let Some(path) = &args.tokenizer {
        readable("--tokenizer", path)?;
    }
    let synthetic_only = [
        (w.turns.is_some(), "--turns"),
        (w.think_time.is_some(), "--think-time"),
        (args.shared_prefix_tokens > 0, "--shared-prefix-tokens"),
        (w.prefix_groups != 1, "--prefix-groups"),
    ];
    let given = synthetic_only
        .iter()
        .find(|(given, _)| *given)
        .map(|(_, flag)| *flag);
    if let (Some(flag), true) = (given, args.dataset.is_some() || w.trace_replay.is_some()) {
        bail!("{flag} shapes synthetic prompts; it does not apply to --dataset or --trace-replay");
    }
    if w.think_time.is_some() && w.turns.is_none() {
        bail!("--think-time is the wait between turns: it needs --turns");
    }
    match (&args.dataset, &w.trace_replay) {
        (Some(_), Some(_)) => bail!("--dataset and --trace-replay: give one of them"),
        (None, Some(path)) => {
            readable("--trace-replay", path)?;
            if !(w.time_scale > 0.0 && w.time_scale.is_finite()) {
                bail!("--time-scale must be a positive number (0.5 replays twice as fast)");
            }
            Ok(Source::Trace {
                path: path.clone(),
                time_scale: w.time_scale,
                tokenizer: args.tokenizer.clone(),
            })
        }
        (Some(path), None) => {
            readable("--dataset", path)?;
            let format = match w.dataset_format {
                Some(format) => format,
                None => detect_format(path)?,
            };
            if args.tokenizer.is_some() && format != DatasetFormat::Sharegpt {
                bail!("--tokenizer counts synthetic, ShareGPT and trace prompts; a {format:?} dataset is sent as written");
            }
            if w.sharegpt_turns == Turns::All && format != DatasetFormat::Sharegpt {
                bail!("--sharegpt-turns applies to a ShareGPT --dataset");
            }
            Ok(Source::Dataset {
                path: path.clone(),
                format,
                sharegpt_turns: w.sharegpt_turns,
                filters: LengthFilters {
                    min_tokens: w.sharegpt_min_tokens,
                    max_prompt_tokens: w.sharegpt_max_prompt_tokens,
                    max_total_tokens: w.sharegpt_max_total_tokens,
                },
                tokenizer: args.tokenizer.clone(),
            })
        }
        (None, None) => {
            if args.shared_prefix_tokens >= args.input_tokens.mean {
                bail!("--shared-prefix-tokens must be smaller than --input-tokens");
            }
            if w.prefix_groups == 0 || (w.prefix_groups > 1 && args.shared_prefix_tokens == 0) {
                bail!("--prefix-groups G needs G >= 1 and --shared-prefix-tokens N > 0");
            }
            Ok(Source::Synthetic {
                input_tokens: args.input_tokens.into(),
                output_tokens: args.output_tokens.into(),
                shared_prefix_tokens: args.shared_prefix_tokens,
                prefix_groups: w.prefix_groups,
                tokenizer: args.tokenizer.clone(),
                sessions: w.turns.map(|turns| SyntheticSessions {
                    turns: turns.into(),
                    think_time: w.think_time.unwrap_or_default(),
                }),
            })
        }
    }
}

/// The dataset's format, told from its first entry.
fn detect_format(path: &std::path::Path) -> anyhow::Result<DatasetFormat> {
    use crate::workload::reader::{EntryReader, Layout};
    let mut reader = EntryReader::open(path)?;
    let first = reader.next_entry()?;
    let format = match (&first, reader.layout()) {
        (_, Layout::Array) => Some(DatasetFormat::Sharegpt),
        (Some(entry), Layout::Lines) => DatasetFormat::detect(&entry.value),
        (None, _) => bail!("dataset {} has no entries", path.display()),
    };
    format.with_context(|| {
        format!(
            "cannot tell what {} holds from its first entry: give --dataset-format prompts, sharegpt or sessions",
            path.display()
        )
    })
}

/// `--images` with `--image-size` / `--image-format`, or from `--image-dir`.
fn images(args: &RunArgs) -> anyhow::Result<Option<ImageConfig>> {
    let w = &args.workload;
    let per_request = match (w.images, &w.image_dir) {
        (0, Some(_)) => 1,
        (n, _) => n,
    };
    if per_request == 0 {
        if w.image_size.is_some() || w.image_format.is_some() {
            bail!("--image-size and --image-format shape generated images: add --images N");
        }
        return Ok(None);
    }
    let source = match &w.image_dir {
        Some(dir) => {
            if w.image_size.is_some() || w.image_format.is_some() {
                bail!(
                    "--image-size and --image-format shape generated images, not --image-dir files"
                );
            }
            ImageSource::folder(dir)?
        }
        None => ImageSource::Generated {
            sizes: w
                .image_size
                .clone()
                .unwrap_or_else(|| "512x512".parse().expect("a valid size")),
            format: w
                .image_format
                .unwrap_or(crate::workload::images::ImageFormat::Jpeg),
        },
    };
    Ok(Some(ImageConfig {
        per_request,
        source,
    }))
}

fn schedule(args: &RunArgs) -> anyhow::Result<Schedule> {
    if args.workload.trace_replay.is_some() {
        if args.concurrency.is_some() || args.rate.is_some() || args.batch_size.is_some() {
            bail!("--trace-replay sends at the trace's timestamps: leave out --concurrency, --rate and --batch-size (--max-concurrency may cap it)");
        }
        if args.max_concurrency == Some(0) {
            bail!("--max-concurrency must be at least 1");
        }
        return Ok(Schedule::Replay {
            max_concurrency: args.max_concurrency,
        });
    }
    if args.max_concurrency.is_some() && args.rate.is_none() {
        bail!("--max-concurrency caps an open-loop --rate run; with --concurrency it is implied");
    }
    Ok(match (args.concurrency, args.rate, args.batch_size) {
        (_, Some(rate), _) => {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be a positive number of requests per second");
            }
            if !(args.burstiness > 0.0 && args.burstiness.is_finite()) {
                bail!("--burstiness must be > 0");
            }
            if args.max_concurrency == Some(0) {
                bail!("--max-concurrency must be at least 1");
            }
            Schedule::Open {
                rate,
                arrival: args.arrival,
                burstiness: args.burstiness,
                max_concurrency: args.max_concurrency,
            }
        }
        (_, _, Some(0)) => bail!("--batch-size must be at least 1"),
        (_, _, Some(size)) => Schedule::Batch { size },
        (Some(0), _, _) => bail!("--concurrency must be at least 1"),
        (concurrency, None, None) => Schedule::Closed {
            concurrency: concurrency.unwrap_or(1),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn config(flags: &[&str]) -> anyhow::Result<RunConfig> {
        let mut argv = vec!["tracebench", "run"];
        argv.extend_from_slice(flags);
        let Command::Run(args) = Cli::try_parse_from(argv)?.command else {
            unreachable!()
        };
        RunConfig::from_args(&args)
    }

    fn error(flags: &[&str]) -> String {
        format!("{:#}", config(flags).unwrap_err())
    }

    #[test]
    fn defaults_are_a_closed_loop_of_one() {
        let c = config(&[]).unwrap();
        assert_eq!(c.schedule, Schedule::Closed { concurrency: 1 });
        assert_eq!(c.stop, StopAfter::Requests(100));
        assert!(c.stream);
        assert_eq!(c.url, "http://127.0.0.1:8000");
    }

    #[test]
    fn load_shapes() {
        let open = config(&[
            "--rate",
            "5",
            "--arrival",
            "gamma",
            "--burstiness",
            "0.5",
            "--max-concurrency",
            "3",
        ])
        .unwrap();
        assert!(
            matches!(open.schedule, Schedule::Open { rate, max_concurrency: Some(3), .. } if rate == 5.0)
        );
        assert_eq!(
            config(&["--batch-size", "4"]).unwrap().schedule,
            Schedule::Batch { size: 4 }
        );
        let timed = config(&["--duration", "90s"]).unwrap();
        assert_eq!(timed.stop, StopAfter::Duration(Duration::from_secs(90)));
    }

    #[test]
    fn preconnect_is_on_and_opens_what_the_load_keeps_busy() {
        let c = config(&["--concurrency", "500", "--requests", "2000"]).unwrap();
        assert!(c.preconnect);
        assert_eq!(c.preconnect_connections(), 500);
        let few = config(&["--concurrency", "500", "--requests", "10", "--warmup", "5"]).unwrap();
        assert_eq!(
            few.preconnect_connections(),
            15,
            "no more than the run sends"
        );
        let uncapped = config(&["--rate", "50", "--duration", "1m"]).unwrap();
        assert_eq!(uncapped.preconnect_connections(), MAX_PRECONNECT);
        let capped = config(&["--rate", "50", "--max-concurrency", "64"]).unwrap();
        assert_eq!(capped.preconnect_connections(), 64);
        assert_eq!(
            config(&["--batch-size", "8"])
                .unwrap()
                .preconnect_connections(),
            8
        );
        assert!(!config(&["--no-preconnect"]).unwrap().preconnect);
        assert!(
            config(&["--no-preconnect", "--preconnect"])
                .unwrap()
                .preconnect
        );
    }

    #[test]
    fn bad_values_say_what_and_where() {
        assert!(error(&["--url", "localhost:8000"]).contains("--url"));
        assert!(error(&["--url", "ftp://x"]).contains("http"));
        assert!(error(&["--rate", "0"]).contains("--rate"));
        assert!(error(&["--concurrency", "0"]).contains("--concurrency"));
        assert!(error(&["--concurrency", "2", "--rate", "1"]).contains("cannot be used with"));
        assert!(error(&["--max-concurrency", "2"]).contains("--max-concurrency"));
        assert!(error(&["--extra-body", "[1]"]).contains("JSON object"));
        assert!(error(&["--extra-body", "{"]).contains("not JSON"));
        assert!(error(&["-H", "nocolon"]).contains("Name: value"));
        assert!(error(&["--dataset", "/nonexistent/prompts.jsonl"]).contains("--dataset"));
        assert!(error(&["--duration", "60"]).contains("no unit"));
        assert!(error(&["--requests", "5", "--duration", "5s"]).contains("one of them"));
        assert!(error(&["--endpoint", "embeddings"]).contains("embeddings"));
    }

    #[test]
    fn api_key_becomes_a_hidden_header_and_is_not_serialized() {
        let c = config(&["--api-key", "sk-secret", "-H", "X-Team: infra"]).unwrap();
        assert_eq!(c.headers["authorization"], "Bearer sk-secret");
        assert!(c.headers["authorization"].is_sensitive());
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            !json.contains("sk-secret") && !json.contains("infra"),
            "{json}"
        );
        assert!(json.contains("x-team"));
    }
}
