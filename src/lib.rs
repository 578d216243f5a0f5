//! tracebench: load-test OpenAI-compatible LLM servers and explain every
//! request by joining what the client saw (TTFT, ITL, TPOT, E2E) with the
//! server's own OpenTelemetry span (queue, prefill, decode).
//!
//! The modules are the pipeline's stages, in the order data flows:
//! [`workload`] → [`schedule`] → [`client`] → [`record`] → [`trace`] (join) →
//! [`analysis`] → [`report`], with [`telemetry`] sampled beside the run and
//! [`sim`] as a built-in engine to run against. [`proxy`] feeds the same
//! records, join and sinks from requests some other client sends.

pub mod analysis;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod dispatch;
pub mod experiment;
pub mod hash;
pub mod jsonl;
pub mod proxy;
pub mod record;
pub mod report;
pub mod run;
pub mod runtime;
pub mod schedule;
pub mod selfcheck;
pub mod shard;
pub mod sim;
pub mod study;
pub mod telemetry;
pub mod testing;
pub mod trace;
pub mod tui;
pub mod units;
pub mod workload;
