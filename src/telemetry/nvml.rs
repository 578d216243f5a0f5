//! NVML as a [`GpuSource`]: reads every local NVIDIA GPU through `libnvidia-ml` (loaded at run
//! time by nvml-wrapper, so a machine without the driver only gets a note). Reads are blocking
//! driver calls and run on tokio's blocking pool.

use super::gpu::{GpuReading, GpuSource};
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use std::sync::Arc;

const MIB: f64 = 1024.0 * 1024.0;

/// Every GPU NVML sees on this host.
pub struct NvmlSource {
    nvml: Arc<Nvml>,
    host: String,
    devices: u32,
}

impl NvmlSource {
    /// Loads NVML and counts the GPUs; the error says why NVML cannot be used.
    pub fn open() -> Result<Self, super::Unavailable> {
        let nvml = Nvml::init().map_err(describe)?;
        let devices = nvml.device_count().map_err(describe)?;
        if devices == 0 {
            return Err("NVML found no GPU".into());
        }
        Ok(Self {
            nvml: Arc::new(nvml),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            devices,
        })
    }

    /// The driver version, for notes.
    pub fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }
}

/// NVML's error in a sentence a user can act on.
fn describe(error: NvmlError) -> String {
    match error {
        NvmlError::LibloadingError(inner) => format!("libnvidia-ml.so not found: {inner}"),
        NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".to_string(),
        NvmlError::NoPermission => "no permission to query the GPU".to_string(),
        other => format!("NVML error: {other}"),
    }
}

/// One device's readings. Memory is required (no memory, no sample); every other value that
/// the GPU does not support is left `None`.
fn read_device(nvml: &Nvml, host: &str, index: u32) -> Result<GpuReading, String> {
    let device = nvml
        .device_by_index(index)
        .map_err(|e| format!("GPU {index}: {}", describe(e)))?;
    let memory = device
        .memory_info()
        .map_err(|e| format!("GPU {index}: {}", describe(e)))?;
    let utilization = device.utilization_rates().ok();
    Ok(GpuReading {
        host: host.to_string(),
        gpu: index.to_string(),
        uuid: device.uuid().ok(),
        name: device.name().ok(),
        memory_used_mib: Some(memory.used as f64 / MIB),
        memory_total_mib: Some(memory.total as f64 / MIB),
        gpu_util_pct: utilization.as_ref().map(|u| f64::from(u.gpu)),
        mem_util_pct: utilization.as_ref().map(|u| f64::from(u.memory)),
        power_w: device
            .power_usage()
            .ok()
            .map(|milliwatts| f64::from(milliwatts) / 1e3),
        energy_j: device
            .total_energy_consumption()
            .ok()
            .map(|millijoules| millijoules as f64 / 1e3),
        temperature_c: device
            .temperature(TemperatureSensor::Gpu)
            .ok()
            .map(f64::from),
        sm_clock_mhz: device.clock_info(Clock::SM).ok().map(f64::from),
    })
}

impl GpuSource for NvmlSource {
    fn label(&self) -> String {
        "nvml".to_string()
    }

    async fn read(&mut self) -> Result<Vec<GpuReading>, super::Unavailable> {
        let nvml = Arc::clone(&self.nvml);
        let host = self.host.clone();
        let devices = self.devices;
        tokio::task::spawn_blocking(move || {
            (0..devices)
                .map(|index| read_device(&nvml, &host, index))
                .collect::<Result<Vec<_>, String>>()
                .map_err(super::Unavailable)
        })
        .await
        .map_err(|error| format!("NVML read did not finish: {error}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs an NVIDIA GPU and driver: `cargo test nvml_reads_a_real_gpu -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn nvml_reads_a_real_gpu() {
        let mut source = NvmlSource::open().expect("NVML available");
        println!(
            "driver {:?}, {} GPU(s)",
            source.driver_version(),
            source.devices
        );
        let mut previous_energy = None;
        for _ in 0..3 {
            let readings = source.read().await.expect("a reading");
            assert_eq!(readings.len(), source.devices as usize);
            for reading in &readings {
                println!("{}", serde_json::to_string(reading).unwrap());
                let used = reading.memory_used_mib.expect("memory used");
                let total = reading.memory_total_mib.expect("memory total");
                assert!(
                    used >= 0.0 && used <= total && total > 1024.0,
                    "{used} of {total} MiB"
                );
                if let Some(util) = reading.gpu_util_pct {
                    assert!((0.0..=100.0).contains(&util));
                }
            }
            let energy = readings[0].energy_j;
            if let (Some(before), Some(now)) = (previous_energy, energy) {
                assert!(now >= before, "the energy counter only grows");
            }
            previous_energy = energy;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}
