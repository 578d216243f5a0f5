//! GPU sampling: the [`GpuSource`] trait (NVML, DCGM), the sampling loop that writes
//! `telemetry.jsonl` lines and gap lines, the per-GPU run summary (idle baseline, peaks,
//! utilisation, energy) and the per-request memory attribution.

use super::sink::{LiveGauges, SamplerContext};
use crate::record::{GpuAttribution, RequestRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;

/// Schema name of every `telemetry.jsonl` line.
pub const GPU_SAMPLE_SCHEMA: &str = "tracebench.gpu_sample/1";

/// One GPU's readings at one instant; a value the source cannot give is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuReading {
    pub host: String,
    /// GPU index as the source names it (`"0"`; a MIG instance is `"0/mig3"`).
    pub gpu: String,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub memory_used_mib: Option<f64>,
    pub memory_total_mib: Option<f64>,
    pub gpu_util_pct: Option<f64>,
    pub mem_util_pct: Option<f64>,
    pub power_w: Option<f64>,
    /// The GPU's cumulative energy counter, joules.
    pub energy_j: Option<f64>,
    pub temperature_c: Option<f64>,
    pub sm_clock_mhz: Option<f64>,
}

/// A place GPU readings come from.
pub trait GpuSource: Send + 'static {
    /// `nvml` or `dcgm:<url>`: the `source` of every line.
    fn label(&self) -> String;
    /// Reads every GPU once; an error (driver failure, endpoint down) is a gap with this reason.
    fn read(&mut self) -> impl Future<Output = Result<Vec<GpuReading>, super::Unavailable>> + Send;
}

/// A sample line of `telemetry.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSampleLine {
    pub schema: String,
    pub t_ns: u64,
    pub unix_ns: u64,
    pub source: String,
    #[serde(flatten)]
    pub reading: GpuReading,
}

/// A gap line of `telemetry.jsonl`: no sample at `t_ns`, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuGapLine {
    pub schema: String,
    pub t_ns: u64,
    pub unix_ns: u64,
    pub source: String,
    pub gap: String,
}

/// Which GPU a track belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuIdentity {
    pub source: String,
    pub host: String,
    pub gpu: String,
    pub uuid: Option<String>,
    pub name: Option<String>,
}

/// The numeric part of one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuPoint {
    pub t_ns: u64,
    pub memory_used_mib: Option<f64>,
    pub memory_total_mib: Option<f64>,
    pub gpu_util_pct: Option<f64>,
    pub mem_util_pct: Option<f64>,
    pub power_w: Option<f64>,
    pub energy_j: Option<f64>,
    pub temperature_c: Option<f64>,
}

/// Every sample of one GPU, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTrack {
    pub identity: GpuIdentity,
    pub points: Vec<GpuPoint>,
}

impl GpuTrack {
    /// The idle baseline: memory used at the first sample (taken before the load starts).
    pub fn idle_memory_mib(&self) -> Option<f64> {
        self.points.iter().find_map(|point| point.memory_used_mib)
    }
}

/// A sampling attempt that produced nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuGap {
    pub t_ns: u64,
    pub source: String,
    pub reason: String,
}

/// What the GPU samplers collected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSamplerOutput {
    pub tracks: Vec<GpuTrack>,
    pub gaps: Vec<GpuGap>,
}

impl GpuSamplerOutput {
    fn record(&mut self, t_ns: u64, source: &str, reading: &GpuReading) {
        let index = match self.tracks.iter().position(|track| {
            track.identity.source == source
                && track.identity.host == reading.host
                && track.identity.gpu == reading.gpu
        }) {
            Some(index) => index,
            None => {
                self.tracks.push(GpuTrack {
                    identity: GpuIdentity {
                        source: source.to_string(),
                        host: reading.host.clone(),
                        gpu: reading.gpu.clone(),
                        uuid: reading.uuid.clone(),
                        name: reading.name.clone(),
                    },
                    points: Vec::new(),
                });
                self.tracks.len() - 1
            }
        };
        self.tracks[index].points.push(GpuPoint {
            t_ns,
            memory_used_mib: reading.memory_used_mib,
            memory_total_mib: reading.memory_total_mib,
            gpu_util_pct: reading.gpu_util_pct,
            mem_util_pct: reading.mem_util_pct,
            power_w: reading.power_w,
            energy_j: reading.energy_j,
            temperature_c: reading.temperature_c,
        });
    }

    /// Adds another sampler's output.
    pub fn merge(&mut self, other: GpuSamplerOutput) {
        self.tracks.extend(other.tracks);
        self.gaps.extend(other.gaps);
    }
}

/// Writes a gap line for `source` now (used when a source cannot even be opened) and returns it.
pub fn write_gap(context: &SamplerContext, source: &str, reason: &str) -> GpuGap {
    let t_ns = super::now_ns(&context.clock);
    context.sink.write(&GpuGapLine {
        schema: GPU_SAMPLE_SCHEMA.to_string(),
        t_ns,
        unix_ns: context.clock.unix_ns_of(t_ns),
        source: source.to_string(),
        gap: reason.to_string(),
    });
    GpuGap {
        t_ns,
        source: source.to_string(),
        reason: reason.to_string(),
    }
}

/// Samples `source` every interval until stopped, plus once more at the stop so the end of
/// the run is covered. `first_done` fires after the first attempt (the idle baseline).
pub async fn run_sampler<S: GpuSource>(
    mut source: S,
    mut context: SamplerContext,
    mut first_done: Option<oneshot::Sender<()>>,
) -> GpuSamplerOutput {
    let label = source.label();
    let mut output = GpuSamplerOutput::default();
    let mut ticker = tokio::time::interval(context.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            biased;
            changed = context.stop.changed() => changed.is_err() || *context.stop.borrow(),
            _ = ticker.tick() => false,
        };
        let t_ns = super::now_ns(&context.clock);
        match source.read().await {
            Ok(readings) => {
                for reading in readings {
                    publish_live(&context.live, &label, &reading);
                    output.record(t_ns, &label, &reading);
                    context.sink.write(&GpuSampleLine {
                        schema: GPU_SAMPLE_SCHEMA.to_string(),
                        t_ns,
                        unix_ns: context.clock.unix_ns_of(t_ns),
                        source: label.clone(),
                        reading,
                    });
                }
            }
            Err(super::Unavailable(reason)) => {
                context.sink.write(&GpuGapLine {
                    schema: GPU_SAMPLE_SCHEMA.to_string(),
                    t_ns,
                    unix_ns: context.clock.unix_ns_of(t_ns),
                    source: label.clone(),
                    gap: reason.clone(),
                });
                output.gaps.push(GpuGap {
                    t_ns,
                    source: label.clone(),
                    reason,
                });
            }
        }
        if let Some(first) = first_done.take() {
            let _ = first.send(());
        }
        if stopping {
            return output;
        }
    }
}

/// Local GPUs are `GPU0 ...`; GPUs of a remote exporter carry their host.
fn publish_live(live: &LiveGauges, source: &str, reading: &GpuReading) {
    let prefix = if source == "nvml" || reading.host.is_empty() {
        format!("GPU{}", reading.gpu)
    } else {
        format!("{} GPU{}", reading.host, reading.gpu)
    };
    if let Some(memory) = reading.memory_used_mib {
        live.set(&format!("{prefix} memory"), "MiB", memory);
    }
    if let Some(util) = reading.gpu_util_pct {
        live.set(&format!("{prefix} util"), "%", util);
    }
}

/// Largest and mean of the present values.
fn max_mean(values: impl Iterator<Item = f64>) -> (Option<f64>, Option<f64>) {
    let (mut max, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0u64);
    for value in values {
        max = max.max(value);
        sum += value;
        count += 1;
    }
    if count == 0 {
        (None, None)
    } else {
        (Some(max), Some(sum / count as f64))
    }
}

/// Joules used between the last sample at or before `from` (or the first after it) and the
/// first sample at or after `to` (or the last before it): the sum of the energy counter's
/// increases between consecutive samples. A counter that went backwards (reset) adds nothing
/// for that step. `None` when fewer than two samples carry the counter.
fn energy_used_j(points: &[GpuPoint], (from, to): (u64, u64)) -> Option<f64> {
    let with_energy: Vec<(u64, f64)> = points
        .iter()
        .filter_map(|p| Some((p.t_ns, p.energy_j?)))
        .collect();
    let start = with_energy
        .iter()
        .rposition(|(t, _)| *t <= from)
        .unwrap_or(0);
    let end = with_energy
        .iter()
        .position(|(t, _)| *t >= to)
        .unwrap_or(with_energy.len().checked_sub(1)?);
    if end <= start {
        return None;
    }
    Some(
        with_energy[start..=end]
            .windows(2)
            .map(|pair| (pair[1].1 - pair[0].1).max(0.0))
            .sum(),
    )
}

fn per_token(energy_j: Option<f64>, output_tokens: u64) -> Option<f64> {
    energy_j
        .filter(|_| output_tokens > 0)
        .map(|joules| joules / output_tokens as f64)
}

/// The `summary.json` `gpu` value: per GPU idle memory, peak and peak over idle, mean and max
/// utilisation, energy and joules per output token, over the window (run-relative ns).
pub fn summarize(
    output: &GpuSamplerOutput,
    window: (u64, u64),
    output_tokens: u64,
    interval: Duration,
) -> Value {
    let mut gpus = Vec::new();
    let mut total_energy: Option<f64> = None;
    for track in &output.tracks {
        let inside: Vec<&GpuPoint> = track
            .points
            .iter()
            .filter(|p| p.t_ns >= window.0 && p.t_ns <= window.1)
            .collect();
        let idle = track.idle_memory_mib();
        let (peak, mean_memory) = max_mean(inside.iter().filter_map(|p| p.memory_used_mib));
        let (max_util, mean_util) = max_mean(inside.iter().filter_map(|p| p.gpu_util_pct));
        let (max_mem_util, mean_mem_util) = max_mean(inside.iter().filter_map(|p| p.mem_util_pct));
        let (max_power, mean_power) = max_mean(inside.iter().filter_map(|p| p.power_w));
        let (max_temperature, _) = max_mean(inside.iter().filter_map(|p| p.temperature_c));
        let energy = energy_used_j(&track.points, window);
        if let Some(joules) = energy {
            *total_energy.get_or_insert(0.0) += joules;
        }
        let identity = &track.identity;
        gpus.push(json!({
            "source": identity.source,
            "host": identity.host,
            "gpu": identity.gpu,
            "uuid": identity.uuid,
            "name": identity.name,
            "samples": inside.len(),
            "memory_total_mib": track.points.iter().rev().find_map(|p| p.memory_total_mib),
            "idle_memory_mib": idle,
            "peak_memory_mib": peak,
            "peak_over_idle_mib": peak.zip(idle).map(|(peak, idle)| peak - idle),
            "mean_memory_mib": mean_memory,
            "mean_gpu_util_pct": mean_util,
            "max_gpu_util_pct": max_util,
            "mean_mem_util_pct": mean_mem_util,
            "max_mem_util_pct": max_mem_util,
            "mean_power_w": mean_power,
            "max_power_w": max_power,
            "max_temperature_c": max_temperature,
            "energy_j": energy,
            "joules_per_output_token": per_token(energy, output_tokens),
        }));
    }
    let mut gap_reasons: Vec<&str> = Vec::new();
    for gap in &output.gaps {
        if !gap_reasons.contains(&gap.reason.as_str()) {
            gap_reasons.push(&gap.reason);
        }
    }
    json!({
        "interval_ms": interval.as_secs_f64() * 1e3,
        "gpus": gpus,
        "energy_j": total_energy,
        "output_tokens": output_tokens,
        "joules_per_output_token": per_token(total_energy, output_tokens),
        "gaps": output.gaps.len(),
        "gap_reasons": gap_reasons,
    })
}

/// The run-relative interval a request occupied.
pub fn busy_interval(record: &RequestRecord) -> (u64, u64) {
    let sent = record.instants_ns.sent;
    (sent, record.instants_ns.end.unwrap_or(sent).max(sent))
}

/// Marks a request that ran while another was in flight: its memory cannot be told apart.
pub fn mark_overlapped(record: &mut RequestRecord) {
    record.gpu = Some(GpuAttribution::Unattributed(OVERLAPPED.to_string()));
}

/// The reason of a request that shared the GPU with another.
pub const OVERLAPPED: &str = "overlapped";

/// Sets `record.gpu`: `Alone` with the peak memory (per GPU, summed over GPUs) while the
/// request ran and its excess over the idle baseline; `"no_samples"` when no sample fell
/// inside it. A request marked [`OVERLAPPED`] keeps its mark; without any GPU sample at all
/// the record has no GPU attribution.
pub fn attribute(output: &GpuSamplerOutput, record: &mut RequestRecord) {
    if output.tracks.iter().all(|track| track.points.is_empty()) {
        record.gpu = None;
        return;
    }
    if record.gpu.is_some() {
        return;
    }
    let (start, end) = busy_interval(record);
    let (mut peak_total, mut idle_total, mut found) = (0.0, 0.0, false);
    for track in &output.tracks {
        let peak = track
            .points
            .iter()
            .filter(|p| p.t_ns >= start && p.t_ns <= end)
            .filter_map(|p| p.memory_used_mib)
            .reduce(f64::max);
        if let (Some(peak), Some(idle)) = (peak, track.idle_memory_mib()) {
            peak_total += peak;
            idle_total += idle;
            found = true;
        }
    }
    record.gpu = Some(if found {
        GpuAttribution::Alone {
            peak_memory_mib: peak_total,
            memory_over_idle_mib: peak_total - idle_total,
        }
    } else {
        GpuAttribution::Unattributed("no_samples".to_string())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::RunClock;
    use crate::telemetry::sink::{JsonlSink, Notes};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tokio::sync::watch;

    /// A source that answers from a script, one entry per read, and notes when it was read.
    struct ScriptedSource {
        script: VecDeque<Result<Vec<GpuReading>, crate::telemetry::Unavailable>>,
        reads: Arc<Mutex<Vec<tokio::time::Instant>>>,
    }

    impl GpuSource for ScriptedSource {
        fn label(&self) -> String {
            "scripted".into()
        }
        async fn read(&mut self) -> Result<Vec<GpuReading>, crate::telemetry::Unavailable> {
            self.reads.lock().unwrap().push(tokio::time::Instant::now());
            self.script
                .pop_front()
                .unwrap_or_else(|| Err("script ended".into()))
        }
    }

    fn reading(gpu: &str, memory: f64, util: f64, energy: f64) -> GpuReading {
        GpuReading {
            host: "h".into(),
            gpu: gpu.into(),
            memory_used_mib: Some(memory),
            memory_total_mib: Some(80_000.0),
            gpu_util_pct: Some(util),
            energy_j: Some(energy),
            ..GpuReading::default()
        }
    }

    fn record(sent: u64, end: u64) -> RequestRecord {
        let line = json!({
            "schema": "tracebench.request/1", "run_id": "r", "request_id": "x", "index": 0, "warmup": false,
            "endpoint": "chat", "model": "m", "stream": true, "trace_id": null, "span_id": null,
            "max_tokens": null, "input_tokens": null, "input_tokens_source": null, "output_tokens": null,
            "output_tokens_source": null, "status": 200, "response_id": null, "finish_reason": null,
            "error": null, "sent_unix_ns": 0,
            "instants_ns": {"intended": sent, "sent": sent, "headers": null, "first_byte": null,
                "first_token": null, "last_token": null, "end": end},
            "ttft_ms": null, "e2e_ms": null, "e2e_end_ms": null, "tpot_ms": null, "schedule_lag_ms": 0.0,
            "chunks": 0, "itl_chunk_ms": [], "itl_token_ms": null, "server": null,
            "server_missing_reason": null, "decomposition": null, "trace_url": null, "gpu": null
        });
        serde_json::from_value(line).expect("a valid record")
    }

    fn track(gpu: &str, points: &[(u64, f64)]) -> GpuTrack {
        GpuTrack {
            identity: GpuIdentity {
                source: "nvml".into(),
                host: "h".into(),
                gpu: gpu.into(),
                uuid: None,
                name: None,
            },
            points: points
                .iter()
                .map(|&(t_ns, memory)| GpuPoint {
                    t_ns,
                    memory_used_mib: Some(memory),
                    ..GpuPoint::default()
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn sampler_keeps_the_interval_writes_gaps_and_goes_on() {
        tokio::time::pause();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.jsonl");
        let clock = RunClock::start();
        let (stop, stop_rx) = watch::channel(false);
        let reads = Arc::new(Mutex::new(Vec::new()));
        let script = vec![
            Ok(vec![
                reading("0", 1000.0, 0.0, 10.0),
                reading("1", 2000.0, 0.0, 20.0),
            ]),
            Ok(vec![
                reading("0", 1500.0, 50.0, 11.0),
                reading("1", 2500.0, 60.0, 21.0),
            ]),
            Err("NVML: GPU is lost".into()),
            Ok(vec![
                reading("0", 1800.0, 90.0, 13.0),
                reading("1", 2100.0, 80.0, 22.0),
            ]),
        ];
        let source = ScriptedSource {
            script: script.into(),
            reads: reads.clone(),
        };
        let context = SamplerContext {
            interval: Duration::from_millis(100),
            clock,
            sink: JsonlSink::create(&path, Notes::default()).unwrap(),
            live: LiveGauges::default(),
            stop: stop_rx,
            notes: Notes::default(),
        };
        let live = context.live.clone();
        let (first_tx, first_rx) = oneshot::channel();
        let sampler = tokio::spawn(run_sampler(source, context, Some(first_tx)));
        first_rx.await.expect("first attempt reported");
        tokio::time::sleep(Duration::from_millis(350)).await;
        stop.send(true).unwrap();
        let output = sampler.await.unwrap();

        // Reads at 0, 100, 200, 300 ms, then the final one at the stop (350 ms, rounded up to
        // the timer's millisecond), not at the next tick.
        let reads = reads.lock().unwrap().clone();
        let offsets: Vec<u128> = reads.iter().map(|t| (*t - reads[0]).as_millis()).collect();
        assert_eq!(offsets[..4], [0, 100, 200, 300]);
        assert_eq!(offsets.len(), 5);
        assert!((350..400).contains(&offsets[4]), "{offsets:?}");

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2 + 2 + 1 + 2 + 1);
        assert_eq!(lines[4]["gap"], "NVML: GPU is lost");
        assert_eq!(lines[7]["gap"], "script ended");
        assert!(lines
            .iter()
            .all(|l| l["schema"] == GPU_SAMPLE_SCHEMA && l["source"] == "scripted"));
        let times: Vec<u64> = lines.iter().map(|l| l["t_ns"].as_u64().unwrap()).collect();
        assert_eq!(
            times[5] - times[0],
            300_000_000,
            "t_ns follows the run clock"
        );
        assert_eq!(lines[3]["memory_used_mib"], 2500.0);

        assert_eq!(output.gaps.len(), 2);
        assert_eq!(output.tracks.len(), 2);
        assert_eq!(output.tracks[0].points.len(), 3);
        assert_eq!(output.tracks[0].idle_memory_mib(), Some(1000.0));
        let gauges = live.snapshot();
        let memory = gauges
            .iter()
            .find(|g| g.name == "h GPU0 memory")
            .expect("memory gauge");
        assert_eq!(memory.history, vec![1000.0, 1500.0, 1800.0]);
    }

    #[test]
    fn summary_uses_the_window_the_baseline_and_energy_deltas() {
        let mut gpu0 = track(
            "0",
            &[
                (0, 1000.0),
                (100, 1200.0),
                (200, 3000.0),
                (300, 2000.0),
                (400, 5000.0),
            ],
        );
        let energies = [5.0, 6.0, 9.0, 2.0, 4.0]; // counter reset between 200 and 300
        for (point, energy) in gpu0.points.iter_mut().zip(energies) {
            point.energy_j = Some(energy);
            point.gpu_util_pct = Some(energy * 10.0);
        }
        let output = GpuSamplerOutput {
            tracks: vec![gpu0],
            gaps: vec![GpuGap {
                t_ns: 50,
                source: "nvml".into(),
                reason: "lost".into(),
            }],
        };
        let summary = summarize(&output, (100, 300), 10, Duration::from_millis(100));
        let gpu = &summary["gpus"][0];
        assert_eq!(gpu["idle_memory_mib"], 1000.0);
        assert_eq!(gpu["peak_memory_mib"], 3000.0);
        assert_eq!(gpu["peak_over_idle_mib"], 2000.0);
        assert_eq!(gpu["samples"], 3);
        assert_eq!(gpu["max_gpu_util_pct"], 90.0);
        assert_eq!(gpu["mean_gpu_util_pct"], (60.0 + 90.0 + 20.0) / 3.0);
        // 100 → 200: +3 J, 200 → 300: reset, adds nothing.
        assert_eq!(gpu["energy_j"], 3.0);
        assert_eq!(gpu["joules_per_output_token"], 0.3);
        assert_eq!(summary["energy_j"], 3.0);
        assert_eq!(summary["gaps"], 1);
        assert_eq!(summary["gap_reasons"][0], "lost");
    }

    #[test]
    fn energy_bridges_samples_just_outside_the_window() {
        let mut points: Vec<GpuPoint> = track("0", &[(0, 1.0), (100, 1.0), (200, 1.0)]).points;
        for (point, energy) in points.iter_mut().zip([10.0, 14.0, 20.0]) {
            point.energy_j = Some(energy);
        }
        assert_eq!(energy_used_j(&points, (50, 150)), Some(10.0));
        assert_eq!(energy_used_j(&points[..1], (0, 150)), None);
    }

    #[test]
    fn attribution_is_alone_overlapped_or_no_samples() {
        let output = GpuSamplerOutput {
            tracks: vec![
                track(
                    "0",
                    &[
                        (0, 1000.0),
                        (100, 1400.0),
                        (200, 1300.0),
                        (500, 1900.0),
                        (600, 1000.0),
                    ],
                ),
                track(
                    "1",
                    &[
                        (0, 500.0),
                        (100, 700.0),
                        (200, 600.0),
                        (500, 900.0),
                        (600, 500.0),
                    ],
                ),
            ],
            gaps: Vec::new(),
        };
        let mut records = vec![
            record(50, 250),  // alone: peaks 1400 + 700
            record(300, 450), // alone, but no sample inside
            record(480, 700), // overlapped another (marked while the run went)
        ];
        mark_overlapped(&mut records[2]);
        for record in &mut records {
            attribute(&output, record);
        }
        assert_eq!(
            records[0].gpu,
            Some(GpuAttribution::Alone {
                peak_memory_mib: 2100.0,
                memory_over_idle_mib: 600.0
            })
        );
        assert_eq!(
            records[1].gpu,
            Some(GpuAttribution::Unattributed("no_samples".into()))
        );
        assert_eq!(
            records[2].gpu,
            Some(GpuAttribution::Unattributed("overlapped".into()))
        );
    }

    #[test]
    fn attribution_leaves_records_alone_without_samples() {
        let mut record = record(0, 10);
        mark_overlapped(&mut record);
        attribute(&GpuSamplerOutput::default(), &mut record);
        assert_eq!(record.gpu, None);
    }
}
