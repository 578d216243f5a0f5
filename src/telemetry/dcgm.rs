//! An NVIDIA DCGM exporter (`http://host:9400/metrics`) as a [`GpuSource`]: each read is one
//! scrape, mapped from the documented `DCGM_FI_DEV_*` fields onto GPU readings keyed by host,
//! GPU index and (for MIG) GPU instance.

use super::gpu::{GpuReading, GpuSource};
use super::prom::{self, Exposition};
use super::sink::Notes;
use crate::client::error_chain;
use std::collections::BTreeMap;
use std::time::Duration;

/// A scrape that takes longer than this is a gap.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// DCGM marks "no value" with sentinels near the top of the int64 range (`DCGM_INT64_BLANK`
/// 0x7ffffffffffffff0 and the NOT_FOUND/NOT_SUPPORTED/NO_PERMISSION values after it) and
/// `DCGM_FP64_BLANK` (2^47) and above for floats.
fn dcgm_value(value: f64) -> Option<f64> {
    const FP64_BLANK: f64 = 140_737_488_355_328.0;
    (value.is_finite() && value < FP64_BLANK).then_some(value)
}

/// A DCGM exporter endpoint.
pub struct DcgmSource {
    url: String,
    client: reqwest::Client,
    notes: Notes,
}

impl DcgmSource {
    pub fn new(url: &str, client: reqwest::Client, notes: Notes) -> Self {
        Self {
            url: url.to_string(),
            client,
            notes,
        }
    }

    async fn scrape(&self) -> Result<String, super::Unavailable> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|error| format!("DCGM exporter unreachable: {}", error_chain(&error)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("DCGM exporter answered HTTP {status}").into());
        }
        response.text().await.map_err(|error| {
            format!("DCGM exporter body unreadable: {}", error_chain(&error)).into()
        })
    }
}

impl GpuSource for DcgmSource {
    fn label(&self) -> String {
        format!("dcgm:{}", self.url)
    }

    async fn read(&mut self) -> Result<Vec<GpuReading>, super::Unavailable> {
        let text = self.scrape().await?;
        let exposition = prom::parse(&text);
        if let Some(first) = exposition.skipped.first() {
            self.notes.push(format!(
                "GPU: {} skipped {} unreadable line(s) of each scrape (line {}: {})",
                self.url,
                exposition.skipped.len(),
                first.line,
                first.reason
            ));
        }
        let readings = readings_from(&exposition, &host_of(&self.url));
        if readings.is_empty() {
            return Err("no DCGM_FI_DEV_* GPU metrics in the exporter's answer".into());
        }
        Ok(readings)
    }
}

fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string))
        .unwrap_or_default()
}

/// Picks one field of a reading.
type FieldOf = fn(&mut GpuReading) -> &mut Option<f64>;

/// Which field of a reading a DCGM family fills, and the divisor from DCGM's unit.
const FIELDS: [(&str, FieldOf, f64); 7] = [
    ("DCGM_FI_DEV_FB_USED", |r| &mut r.memory_used_mib, 1.0),
    ("DCGM_FI_DEV_GPU_UTIL", |r| &mut r.gpu_util_pct, 1.0),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", |r| &mut r.mem_util_pct, 1.0),
    ("DCGM_FI_DEV_POWER_USAGE", |r| &mut r.power_w, 1.0),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        |r| &mut r.energy_j,
        1000.0, // mJ
    ),
    ("DCGM_FI_DEV_GPU_TEMP", |r| &mut r.temperature_c, 1.0),
    ("DCGM_FI_DEV_SM_CLOCK", |r| &mut r.sm_clock_mhz, 1.0),
];

/// Maps a DCGM scrape onto one reading per GPU (per MIG instance where DCGM splits a GPU),
/// keeping the `Hostname` (or newer `hostname`), `gpu`, `UUID` and `modelName` labels.
/// Total memory is FB_USED + FB_FREE (+ FB_RESERVED where exported, as nvidia-smi counts it).
/// `fallback_host` names the host when the exporter gives none.
pub fn readings_from(exposition: &Exposition, fallback_host: &str) -> Vec<GpuReading> {
    let mut readings: BTreeMap<(String, String), GpuReading> = BTreeMap::new();
    for (family_name, field, divisor) in FIELDS {
        for series in family_series(exposition, family_name) {
            let key = reading_key(series, fallback_host);
            let reading = readings.entry(key.clone()).or_insert_with(|| GpuReading {
                host: key.0,
                gpu: key.1,
                ..GpuReading::default()
            });
            if reading.uuid.is_none() {
                reading.uuid = series.label("UUID").map(str::to_string);
            }
            if reading.name.is_none() {
                reading.name = series.label("modelName").map(str::to_string);
            }
            *field(reading) = series
                .scalar()
                .and_then(dcgm_value)
                .map(|value| value / divisor);
        }
    }
    let memory_part = |family_name: &str, key: &(String, String)| {
        family_series(exposition, family_name)
            .iter()
            .find(|series| reading_key(series, fallback_host) == *key)
            .and_then(|series| series.scalar().and_then(dcgm_value))
    };
    for (key, reading) in readings.iter_mut() {
        if let (Some(used), Some(free)) = (
            reading.memory_used_mib,
            memory_part("DCGM_FI_DEV_FB_FREE", key),
        ) {
            let reserved = memory_part("DCGM_FI_DEV_FB_RESERVED", key).unwrap_or(0.0);
            reading.memory_total_mib = Some(used + free + reserved);
        }
    }
    readings.into_values().collect()
}

fn family_series<'a>(exposition: &'a Exposition, name: &str) -> &'a [prom::Series] {
    exposition
        .family(name)
        .map(|family| family.series.as_slice())
        .unwrap_or_default()
}

/// `(host, gpu)`: `gpu` is the index, `index/mig<GPU_I_ID>` for a MIG instance, or the UUID.
fn reading_key(series: &prom::Series, fallback_host: &str) -> (String, String) {
    let host = series
        .label("Hostname")
        .or_else(|| series.label("hostname"))
        .unwrap_or(fallback_host)
        .to_string();
    let gpu = match (series.label("gpu"), series.label("GPU_I_ID")) {
        (Some(gpu), Some(instance)) => format!("{gpu}/mig{instance}"),
        (Some(gpu), None) => gpu.to_string(),
        (None, _) => series.label("UUID").unwrap_or("?").to_string(),
    };
    (host, gpu)
}
