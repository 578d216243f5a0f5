//! `tracebench merge SHARD_DIR... --out DIR`: the shard folders of one run
//! become one run folder, as one process sending the whole run would have
//! written it. Records are merged in completion order onto one clock (the
//! earliest shard's origin), keeping their ids and `shard`; the spans of all
//! shards are joined onto all records (a span that reached any shard's
//! receiver is found); the summary is recomputed from the merged records by
//! the streaming [`SummaryBuilder`](crate::analysis::summary::SummaryBuilder)
//! (percentiles of all records, never averaged; throughput over the union
//! window); telemetry lines keep the shard that sampled them; the report and
//! the history are written as for a run. Shards of different runs or settings
//! are refused; missing and partial shards are named and make the result partial.

use super::clock::ClockCheck;
use crate::analysis::{Slo, Summary};
use crate::record::RequestRecord;
use crate::report::run_folder::{self, RunFolder};
use crate::run::manifest::ShardInfo;
use crate::run::{write_json, write_summary, RunManifest};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One merged shard, as the merged `run.json` lists it under `shards`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedShard {
    pub index: u32,
    pub folder: String,
    pub hostname: String,
    pub partial: bool,
    pub records: u64,
    pub started_unix_ns: u64,
    pub ended_unix_ns: Option<u64>,
    pub clock: Option<ClockCheck>,
    /// The shard host's GPU summary, when it sampled one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Value>,
    /// The server metrics summary as this shard scraped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_metrics: Option<Value>,
}

/// What a merge made.
#[derive(Debug)]
pub struct Merged {
    pub run_dir: PathBuf,
    pub summary: Summary,
    /// A shard was missing or partial.
    pub partial: bool,
    pub notes: Vec<String>,
}

/// A shard folder and its `run.json`.
struct ShardFolder {
    dir: PathBuf,
    folder: RunFolder,
    manifest: RunManifest,
    info: ShardInfo,
}

/// Merges the shard folders `dirs` into the run folder `out` and records it in
/// `db`. `out` must not hold a run; a `spans.jsonl` already there (the local
/// launcher's receiver) is kept and joined with the shards' spans.
pub async fn merge(dirs: &[PathBuf], out: &Path, db: Option<&Path>) -> anyhow::Result<Merged> {
    let shards = read_shards(dirs)?;
    let mut notes = Vec::new();
    let partial = completeness(&shards, &mut notes);
    if out.join(run_folder::REQUESTS).exists() {
        bail!(
            "{} already holds a run: merge into a new folder",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let origin = shards
        .iter()
        .map(|s| s.info.clock_origin_unix_ns)
        .min()
        .expect("at least one shard");
    let counts = write_records(&shards, origin, &out.join(run_folder::REQUESTS), &mut notes)?;
    for file in [run_folder::TELEMETRY, run_folder::SERVER_METRICS] {
        write_samples(&shards, origin, file, &out.join(file))?;
    }
    if append_spans(&shards, &out.join(run_folder::SPANS))? {
        let report = crate::trace::join_run_dir(out, &rejoin_config()).await?;
        notes.push(format!(
            "spans of all shards joined: {} requests joined, {} without a span",
            report.joined, report.missing
        ));
    }
    notes.extend(clock_spread(&shards));
    let first = &shards[0].manifest;
    let slo: Slo = serde_json::from_value(first.config["slo"].clone()).unwrap_or_default();
    let folder = RunFolder::open(out)?;
    let mut summary = folder.summarize(Some(&first.run_id), &slo, partial)?;
    let listed = list_shards(&shards, &counts);
    if let Some(one) = listed
        .iter()
        .find(|s| s.gpu.is_some() || s.server_metrics.is_some())
    {
        // The summary has room for one host's telemetry; every shard's is in run.json.
        summary.gpu = one.gpu.clone();
        summary.server_metrics = one.server_metrics.clone();
    }
    write_summary(out, &summary)?;
    write_manifest(&shards, listed, partial, &notes, out)?;
    if let Err(e) = crate::report::html::write_report(out) {
        notes.push(format!("the HTML report could not be written: {e:#}"));
    }
    if let Some(db) = db {
        if let Err(e) = crate::report::sqlite::import_run_dir(db, out) {
            notes.push(format!(
                "the merged run was not recorded in {}: {e:#}",
                db.display()
            ));
        }
    }
    Ok(Merged {
        run_dir: out.to_path_buf(),
        summary,
        partial,
        notes,
    })
}

/// Waits up to `timeout` until every folder of `dirs` holds a finished shard
/// (its `run.json` has an end), polling every two seconds.
pub async fn wait_for_shards(dirs: &[PathBuf], timeout: Duration) {
    let started = Instant::now();
    let finished = |dir: &PathBuf| {
        let text = std::fs::read_to_string(dir.join(run_folder::RUN)).unwrap_or_default();
        serde_json::from_str::<RunManifest>(&text).is_ok_and(|m| m.ended_unix_ns.is_some())
    };
    while started.elapsed() < timeout && !dirs.iter().all(finished) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads every shard's `run.json` and refuses folders that are not shards
/// of one run with one configuration.
fn read_shards(dirs: &[PathBuf]) -> anyhow::Result<Vec<ShardFolder>> {
    let mut shards: Vec<ShardFolder> = Vec::new();
    for dir in dirs {
        let folder = RunFolder::open(dir)?;
        let run = folder.run_json()?.with_context(|| {
            format!(
                "{} has no run.json: it is not a shard folder",
                dir.display()
            )
        })?;
        let manifest: RunManifest = serde_json::from_value(run)
            .with_context(|| format!("{}/run.json is not a tracebench run.json", dir.display()))?;
        let Some(info) = manifest.shard else {
            bail!(
                "{} is not a shard: its run.json has no `shard` (`tracebench run --shard I/N` writes one)",
                dir.display()
            );
        };
        if let Some(other) = shards.first() {
            check_same_run(other, dir, &manifest, info)?;
        }
        if let Some(twin) = shards.iter().find(|s| s.info.index == info.index) {
            bail!(
                "{} and {} are both shard {}/{}",
                twin.dir.display(),
                dir.display(),
                info.index,
                info.count
            );
        }
        shards.push(ShardFolder {
            dir: dir.clone(),
            folder,
            manifest,
            info,
        });
    }
    shards.sort_by_key(|s| s.info.index);
    Ok(shards)
}

fn check_same_run(
    first: &ShardFolder,
    dir: &Path,
    manifest: &RunManifest,
    info: ShardInfo,
) -> anyhow::Result<()> {
    let (a, b) = (first.dir.display(), dir.display());
    if manifest.run_id != first.manifest.run_id {
        bail!(
            "{a} is a shard of run `{}` but {b} of run `{}`: only shards of one run merge",
            first.manifest.run_id,
            manifest.run_id
        );
    }
    if manifest.config_hash != first.manifest.config_hash {
        bail!(
            "{a} and {b} were run with different settings (config hash {} and {}): \
             every shard of a run needs the same flags but --shard",
            first.manifest.config_hash.as_deref().unwrap_or("none"),
            manifest.config_hash.as_deref().unwrap_or("none")
        );
    }
    if info.count != first.info.count {
        bail!(
            "{a} is one of {} shards but {b} one of {}",
            first.info.count,
            info.count
        );
    }
    Ok(())
}

/// Names missing and partial shards; true when any is.
fn completeness(shards: &[ShardFolder], notes: &mut Vec<String>) -> bool {
    let count = shards[0].info.count;
    let missing: Vec<String> = (0..count)
        .filter(|i| !shards.iter().any(|s| s.info.index == *i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        notes.push(format!(
            "partial: shard {} missing; the merged run holds {} of {count} shards",
            missing.join(", "),
            shards.len()
        ));
    }
    for s in shards.iter().filter(|s| s.manifest.partial) {
        let why = match s.manifest.ended_unix_ns {
            None => "it never finished (killed, or still running)",
            Some(_) => "it was stopped before its end",
        };
        notes.push(format!(
            "partial: shard {}/{count} ({}) is partial: {why}",
            s.info.index,
            s.dir.display()
        ));
    }
    !missing.is_empty() || shards.iter().any(|s| s.manifest.partial)
}

/// A record on the merged clock: every instant moved by `shift` ns.
fn rebase(mut record: RequestRecord, shift: u64) -> RequestRecord {
    let i = &mut record.instants_ns;
    i.intended += shift;
    i.sent += shift;
    for at in [
        &mut i.written,
        &mut i.headers,
        &mut i.first_byte,
        &mut i.first_token,
        &mut i.last_token,
        &mut i.end,
    ] {
        *at = at.map(|t| t + shift);
    }
    record
}

/// The head of one shard's records in the k-way merge: ordered so that the
/// heap yields the earliest completion first.
struct Head {
    end: u64,
    shard: usize,
    record: RequestRecord,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        (self.end, self.shard) == (other.end, other.shard)
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.end, other.shard).cmp(&(self.end, self.shard))
    }
}

/// Writes the merged `requests.jsonl`: each shard's records (in their
/// completion order) merged by completion on the common clock, holding one
/// record per shard. Returns the records taken from each shard.
fn write_records(
    shards: &[ShardFolder],
    origin: u64,
    path: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<u64>> {
    let mut problems: Vec<Vec<String>> = vec![Vec::new(); shards.len()];
    let mut lines: Vec<_> = shards
        .iter()
        .zip(problems.iter_mut())
        .map(|(s, p)| Ok(s.folder.records()?.skip_unreadable(p)))
        .collect::<anyhow::Result<_>>()?;
    let shifts: Vec<u64> = shards
        .iter()
        .map(|s| s.info.clock_origin_unix_ns - origin)
        .collect();
    let mut heap = BinaryHeap::new();
    let mut next = |k: usize, heap: &mut BinaryHeap<Head>| -> anyhow::Result<()> {
        if let Some(record) = lines[k].next() {
            let mut record = rebase(record?, shifts[k]);
            record.shard = Some(shards[k].info.index);
            let end = record.instants_ns.end.unwrap_or(record.instants_ns.sent);
            heap.push(Head {
                end,
                shard: k,
                record,
            });
        }
        Ok(())
    };
    for k in 0..shards.len() {
        next(k, &mut heap)?;
    }
    let mut out = crate::record::RecordWriter::replacing(path)?;
    let mut counts = vec![0u64; shards.len()];
    while let Some(Head { shard, record, .. }) = heap.pop() {
        out.write(&record)?;
        counts[shard] += 1;
        next(shard, &mut heap)?;
    }
    out.commit()
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(lines);
    for (s, p) in shards.iter().zip(problems) {
        notes.extend(
            p.into_iter()
                .map(|p| format!("shard {}: {p}", s.info.index)),
        );
    }
    Ok(counts)
}

/// Appends every shard's `spans.jsonl` to `path`; true when it then holds any span.
fn append_spans(shards: &[ShardFolder], path: &Path) -> anyhow::Result<bool> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for s in shards {
        let from = s.folder.path(run_folder::SPANS);
        if let Ok(mut file) = std::fs::File::open(&from) {
            std::io::copy(&mut file, &mut out)
                .with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    out.flush()?;
    let has_spans = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
    if !has_spans {
        std::fs::remove_file(path).ok();
    }
    Ok(has_spans)
}

/// Writes one sample file (`telemetry.jsonl`, `server_metrics.jsonl`) of all
/// shards: each line on the merged clock, with the `shard` that sampled it
/// (`run.json`'s `shards` names each shard's host).
fn write_samples(
    shards: &[ShardFolder],
    origin: u64,
    file: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let mut out: Option<std::io::BufWriter<std::fs::File>> = None;
    for s in shards {
        let shift = s.info.clock_origin_unix_ns - origin;
        let lines = crate::jsonl::JsonLines::<Value>::open_if_present(&s.folder.path(file))?;
        for line in lines.skip_unreadable(&mut Vec::new()) {
            let mut line = line?;
            if let Some(map) = line.as_object_mut() {
                if let Some(t) = map.get("t_ns").and_then(Value::as_u64) {
                    map.insert("t_ns".into(), (t + shift).into());
                }
                map.insert("shard".into(), s.info.index.into());
            }
            let writer = match &mut out {
                Some(w) => w,
                None => out.insert(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                )),
            };
            serde_json::to_writer(&mut *writer, &line)?;
            writer.write_all(b"\n")?;
        }
    }
    if let Some(mut w) = out {
        w.flush()?;
    }
    Ok(())
}

/// The settings of the merge's join: spans from `spans.jsonl`, nothing else.
fn rejoin_config() -> crate::trace::TraceConfig {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    crate::trace::TraceConfig {
        source: crate::trace::TraceSource::Otlp,
        otlp_grpc: loopback,
        otlp_http: loopback,
        otlp_forward: None,
        backend: None,
        jaeger_ui: None,
        span_wait: Duration::ZERO,
        export_client_spans: None,
        trace_header: true,
    }
}

/// How far apart the shards' clocks and starts were.
fn clock_spread(shards: &[ShardFolder]) -> Vec<String> {
    let mut notes = Vec::new();
    let offsets: Vec<(f64, f64)> = shards
        .iter()
        .filter_map(|s| s.manifest.clock.as_ref())
        .filter_map(|c| Some((c.server_offset_ms?, c.server_offset_uncertainty_ms?)))
        .collect();
    if offsets.len() > 1 {
        let (min, max) = offsets
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), (o, _)| {
                (lo.min(*o), hi.max(*o))
            });
        let worst = offsets.iter().map(|(_, u)| *u).fold(0.0, f64::max);
        notes.push(format!(
            "clock spread: the shards' offsets from the server's clock span {:.1} ms \
             (each within ±{worst:.1} ms)",
            max - min
        ));
    }
    let origins: Vec<u64> = shards.iter().map(|s| s.info.clock_origin_unix_ns).collect();
    let starts = origins.iter().max().unwrap_or(&0) - origins.iter().min().unwrap_or(&0);
    notes.push(format!(
        "{} shards merged; their clocks started {:.1} ms apart",
        shards.len(),
        starts as f64 / 1e6
    ));
    notes
}

fn list_shards(shards: &[ShardFolder], counts: &[u64]) -> Vec<MergedShard> {
    shards
        .iter()
        .zip(counts)
        .map(|(s, records)| {
            let summary = s.folder.summary().ok();
            MergedShard {
                index: s.info.index,
                folder: s.dir.display().to_string(),
                hostname: s.manifest.host.hostname.clone(),
                partial: s.manifest.partial,
                records: *records,
                started_unix_ns: s.manifest.started_unix_ns,
                ended_unix_ns: s.manifest.ended_unix_ns,
                clock: s.manifest.clock.clone(),
                gpu: summary.as_ref().and_then(|x| x.gpu.clone()),
                server_metrics: summary.and_then(|x| x.server_metrics),
            }
        })
        .collect()
}

/// The merged `run.json`: the first shard's, over the union of the shards'
/// times, partial when any shard was, with the shard list and the notes of all.
fn write_manifest(
    shards: &[ShardFolder],
    listed: Vec<MergedShard>,
    partial: bool,
    notes: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let mut manifest = shards[0].manifest.clone();
    manifest.started_unix_ns = shards
        .iter()
        .map(|s| s.manifest.started_unix_ns)
        .min()
        .unwrap_or(manifest.started_unix_ns);
    manifest.ended_unix_ns = shards.iter().filter_map(|s| s.manifest.ended_unix_ns).max();
    manifest.partial = partial;
    manifest.shard = None;
    manifest.clock = None;
    let mut all_notes = notes.to_vec();
    let mut seen = BTreeMap::new();
    for s in shards {
        for note in &s.manifest.notes {
            seen.entry(note.clone())
                .or_insert_with(Vec::new)
                .push(s.info.index);
        }
    }
    for (note, indices) in seen {
        let which: Vec<String> = indices.iter().map(u32::to_string).collect();
        all_notes.push(format!("shard {}: {note}", which.join(", ")));
    }
    manifest.notes = all_notes;
    manifest.shards = Some(listed);
    write_json(&out.join(run_folder::RUN), &manifest)
}
