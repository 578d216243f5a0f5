//! `run.json` (`tracebench.run/1`): what ran, where and how, written when
//! the run starts (`partial: true`) and again at its end with the notes.
//! Its shape is `schemas/run.schema.json`.

use crate::client::discover::ServerInfo;
use crate::config::RunConfig;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Schema name of `run.json`.
pub const RUN_SCHEMA: &str = "tracebench.run/1";

/// Everything `run.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub schema: String,
    pub run_id: String,
    pub started_unix_ns: u64,
    /// `None` until the run has ended.
    pub ended_unix_ns: Option<u64>,
    /// True until the run ends normally, and after Ctrl-C.
    pub partial: bool,
    pub tool: Tool,
    pub host: Host,
    /// The command line as typed, secrets masked.
    pub command_line: String,
    /// The checked configuration (secrets left out).
    pub config: serde_json::Value,
    pub model: String,
    pub server: Server,
    /// What a reader of the results should know (approximations, missing pieces).
    pub notes: Vec<String>,
    /// Hash of the settings every shard of the run shares ([`crate::shard::config_hash`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// This process's shard, when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
    /// What the host knew of its clock (shards and `--start-at` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<crate::shard::clock::ClockCheck>,
    /// A merged run: the shards it was merged from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<crate::shard::merge::MergedShard>>,
}

/// A shard's place in its run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: u32,
    pub count: u32,
    /// Wall clock of the origin of the shard's `instants_ns`, ns since the Unix epoch.
    pub clock_origin_unix_ns: u64,
}

/// The tracebench that made the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
    pub git_commit: Option<String>,
}

/// The machine the client ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpus: usize,
}

/// The server as discovered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub url: String,
    pub version: Option<serde_json::Value>,
    pub models: Option<serde_json::Value>,
}

impl RunManifest {
    /// The manifest as known at the start of a run.
    pub fn at_start(
        config: &RunConfig,
        run_id: &str,
        command_line: &str,
        model: &str,
        server: &ServerInfo,
    ) -> Self {
        let config_json = serde_json::to_value(config).expect("the config serializes");
        let server = Server {
            url: config.url.clone(),
            version: server.version.clone(),
            models: server.models.clone(),
        };
        let mut manifest = Self::new(run_id, command_line, config_json, model, server);
        manifest.config_hash = Some(crate::shard::config_hash(config));
        manifest
    }

    /// A manifest of this tracebench on this host, started now (also for
    /// the proxy's records folder, whose `config` is the proxy's settings).
    pub fn new(
        run_id: &str,
        command_line: &str,
        config: serde_json::Value,
        model: &str,
        server: Server,
    ) -> Self {
        Self {
            schema: RUN_SCHEMA.to_string(),
            run_id: run_id.to_string(),
            started_unix_ns: crate::units::unix_now_ns(),
            ended_unix_ns: None,
            partial: true,
            tool: Tool {
                name: "tracebench".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                git_commit: option_env!("TRACEBENCH_GIT_COMMIT").map(str::to_string),
            },
            host: Host {
                hostname: gethostname::gethostname().to_string_lossy().into_owned(),
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                cpus: crate::cli::cores(),
            },
            command_line: command_line.to_string(),
            config,
            model: model.to_string(),
            server,
            notes: Vec::new(),
            config_hash: None,
            shard: None,
            clock: None,
            shards: None,
        }
    }

    /// Marks the run ended, complete or `partial`, with its notes.
    pub fn end(&mut self, partial: bool, notes: Vec<String>) {
        self.ended_unix_ns = Some(crate::units::unix_now_ns());
        self.partial = partial;
        self.notes = notes;
    }

    /// Writes `run.json` in `run_dir`.
    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        write_json(&run_dir.join("run.json"), self)
    }
}

/// Writes pretty JSON atomically (temp file + rename).
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
