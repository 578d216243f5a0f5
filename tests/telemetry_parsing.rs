//! The Prometheus parser on every real `.prom` fixture (vLLM, SGLang, TGI, DCGM), and the DCGM
//! mapping onto GPU readings, checked against values read by eye from the files.
//! No network here: the scraping paths are in `telemetry_scrape.rs`.

use std::path::{Path, PathBuf};
use tracebench::telemetry::dcgm::readings_from;
use tracebench::telemetry::prom::{self, Exposition, MetricKind, SeriesValue};
use tracebench::telemetry::GpuReading;

use tracebench::testing::{fixture_text, FIXTURES};

fn prom_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("fixtures readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            prom_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "prom") {
            found.push(path);
        }
    }
}

fn parse_fixture(relative: &str) -> Exposition {
    let text = fixture_text(relative);
    prom::parse(&text)
}

/// Sample lines of a file, counted the way Prometheus counts samples (not comments/blank).
fn sample_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

#[test]
fn every_prom_fixture_parses_and_every_sample_is_kept_or_reported() {
    let mut files = Vec::new();
    prom_files(Path::new(FIXTURES), &mut files);
    files.sort();
    assert!(
        files.len() >= 11,
        "expected every .prom fixture, found {files:?}"
    );
    for path in files {
        let text = std::fs::read_to_string(&path).expect("fixture readable");
        let exposition = prom::parse(&text);
        let name = path.display();
        assert!(!exposition.families.is_empty(), "{name}: nothing parsed");
        // No family may be lost: only single lines that cannot be samples are skipped.
        assert!(
            exposition
                .skipped
                .iter()
                .all(|s| !s.reason.starts_with("family ")),
            "{name}: {:?}",
            exposition.skipped
        );
        // Every sample line is either in the flattened result or reported as skipped.
        assert_eq!(
            exposition.flatten().len() + exposition.skipped.len(),
            sample_lines(&text),
            "{name}"
        );
    }
}

#[test]
fn the_engine_fixtures_keep_colon_names_types_and_histograms() {
    let vllm = parse_fixture("vllm/metrics.prom");
    assert_eq!(vllm.families.len(), 92);
    assert!(vllm.skipped.is_empty());
    let ttft = vllm
        .family("vllm:time_to_first_token_seconds")
        .expect("vllm TTFT");
    assert_eq!(ttft.kind, MetricKind::Histogram);
    let SeriesValue::Histogram { buckets, count, .. } = &ttft.series[0].value else {
        panic!("TTFT is a histogram");
    };
    assert_eq!(*count, Some(34.0), "README: 34 TTFT observations");
    assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
    assert_eq!(
        vllm.scalar_sum("vllm:request_success_total"),
        Some(32.0),
        "README: 32 successes (length) + 0 aborts"
    );

    let sglang = parse_fixture("sglang-metrics/sglang-docs-llama31-8b-under-load.prom");
    assert_eq!(sglang.families.len(), 12);
    assert_eq!(sglang.scalar_sum("sglang:num_queue_reqs"), Some(2826.0));
    assert_eq!(sglang.flatten().len(), 91, "README: 91 samples");

    let tgi = parse_fixture("tgi-metrics/datadog-fixture-tgi3-payload.prom");
    assert_eq!(tgi.families.len(), 24);
    assert_eq!(tgi.flatten().len(), 1888, "README: 1,888 samples");
    assert_eq!(
        tgi.family("tgi_request_skipped_tokens").map(|f| f.kind),
        Some(MetricKind::Summary)
    );
    // Counters without `_total` and the 1,024-bucket histogram survive.
    assert_eq!(
        tgi.family("tgi_request_count").map(|f| f.kind),
        Some(MetricKind::Counter)
    );
    let next_size = tgi.family("tgi_batch_next_size").expect("batch next size");
    let SeriesValue::Histogram { buckets, .. } = &next_size.series[0].value else {
        panic!("tgi_batch_next_size is a histogram");
    };
    assert_eq!(buckets.len(), 1025, "1,024 finite buckets and +Inf");
}

#[test]
fn dcgm_quirks_cost_only_the_broken_lines() {
    let a800 = parse_fixture("dcgm/a800-8gpu-mig-blog.prom");
    assert_eq!(a800.skipped.len(), 10);
    assert!(a800
        .skipped
        .iter()
        .all(|s| s.reason.contains("value is not a number")));
    assert_eq!(
        a800.flatten().len(),
        223,
        "README: the other 223 samples parse"
    );

    let readme = parse_fixture("dcgm/dcgm-exporter-readme-excerpt.prom");
    let lines: Vec<usize> = readme.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![7, 11], "the two `...` elisions");
    assert_eq!(readme.scalar_sum("DCGM_FI_DEV_SM_CLOCK"), Some(139.0));

    let unannotated = parse_fixture("dcgm/ericsson-ccd-t4-loaded-excerpt.prom");
    assert_eq!(
        unannotated.families.len(),
        20,
        "no HELP/TYPE: 20 separate untyped families"
    );
    assert!(unannotated
        .families
        .values()
        .all(|f| f.kind == MetricKind::Untyped));
}

fn one(readings: &[GpuReading], gpu: &str) -> GpuReading {
    readings
        .iter()
        .find(|r| r.gpu == gpu)
        .cloned()
        .unwrap_or_else(|| panic!("GPU {gpu} in {readings:?}"))
}

#[test]
fn dcgm_readings_of_a_loaded_t4() {
    let readings = readings_from(
        &parse_fixture("dcgm/ericsson-ccd-t4-loaded-excerpt.prom"),
        "fallback",
    );
    assert_eq!(readings.len(), 1);
    let t4 = &readings[0];
    assert_eq!(t4.host, "cp-bm14r7");
    assert_eq!(t4.name.as_deref(), Some("Tesla T4"));
    assert_eq!(
        t4.uuid.as_deref(),
        Some("GPU-6d5c0ac5-74d7-3130-46f1-e93ed57f469a")
    );
    assert_eq!(t4.memory_used_mib, Some(5120.0));
    assert_eq!(t4.memory_total_mib, Some(5120.0 + 9791.0 + 447.0));
    assert_eq!(t4.gpu_util_pct, Some(91.0));
    assert_eq!(t4.mem_util_pct, Some(73.0));
    assert_eq!(t4.power_w, Some(68.244));
    assert_eq!(t4.energy_j, Some(15_152_422.938));
    assert_eq!(t4.temperature_c, Some(74.0));
    assert_eq!(t4.sm_clock_mhz, Some(660.0));
}

#[test]
fn dcgm_readings_of_every_single_gpu_fixture() {
    for (file, host, total) in [
        ("kops-aws-l4-1gpu.prom", "i-030791dc5a37cd257", 23033.0),
        ("upcloud-uks-l40s-1gpu.prom", "gpu1-wl8sg", 45459.0 + 608.0),
        (
            "linode-lke-rtx4000ada-pod-labels.prom",
            "lke529760-766837-0a634ab30000",
            f64::NAN,
        ),
    ] {
        let readings = readings_from(&parse_fixture(&format!("dcgm/{file}")), "fallback");
        assert_eq!(readings.len(), 1, "{file}");
        let gpu = &readings[0];
        assert_eq!((gpu.host.as_str(), gpu.gpu.as_str()), (host, "0"), "{file}");
        for (field, value) in [
            ("memory", gpu.memory_used_mib),
            ("util", gpu.gpu_util_pct),
            ("power", gpu.power_w),
            ("energy", gpu.energy_j),
            ("temperature", gpu.temperature_c),
            ("clock", gpu.sm_clock_mhz),
        ] {
            assert!(value.is_some(), "{file}: {field} missing");
        }
        if !total.is_nan() {
            assert_eq!(gpu.memory_total_mib, Some(total), "{file}");
        }
    }
}

#[test]
fn dcgm_vgpu_guest_has_no_power_or_temperature() {
    let readings = readings_from(
        &parse_fixture("dcgm/vmware-vks-vgpu-a100-10c.prom"),
        "fallback",
    );
    let guest = one(&readings, "0");
    assert_eq!(guest.name.as_deref(), Some("GRID A100-10C"));
    assert_eq!(guest.memory_used_mib, Some(0.0));
    assert_eq!(
        guest.memory_total_mib,
        Some(9323.0 + 916.0),
        "free + reserved of a 10 GiB slice"
    );
    assert_eq!(guest.power_w, None);
    assert_eq!(guest.temperature_c, None);
}

#[test]
fn dcgm_mig_instances_are_separate_gpus() {
    let readings = readings_from(&parse_fixture("dcgm/a800-8gpu-mig-blog.prom"), "fallback");
    let names: Vec<&str> = readings.iter().map(|r| r.gpu.as_str()).collect();
    for expected in ["0/mig3", "0/mig5", "0/mig6", "1", "7"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let mig = one(&readings, "0/mig3");
    assert_eq!(mig.memory_used_mib, Some(10.0));
    assert_eq!(mig.memory_total_mib, Some(10.0 + 19957.0));
    assert_eq!(one(&readings, "7").memory_used_mib, Some(2.0));
    assert!(readings.iter().all(|r| r.host == "msxf-hpc-64-35-ai"));
}

#[test]
fn dcgm_blank_sentinels_are_null_and_the_url_host_fills_in() {
    let readme = parse_fixture("dcgm/dcgm-exporter-readme-excerpt.prom");
    let readings = readings_from(&readme, "gpu-node");
    let gpu = one(&readings, "0");
    assert_eq!(
        gpu.host, "gpu-node",
        "the README sample has no Hostname label"
    );
    assert_eq!(gpu.sm_clock_mhz, Some(139.0));
    // MEMORY_TEMP holds DCGM's blank sentinel but is not one of the mapped fields; the
    // sentinel rule itself:
    let sentinel = prom::parse("DCGM_FI_DEV_GPU_TEMP{gpu=\"0\"} 9223372036854775794\n");
    assert_eq!(one(&readings_from(&sentinel, "h"), "0").temperature_c, None);
}

#[test]
fn dcgm_documented_field_names_sample() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dcgm-documented-fields.prom"
    ))
    .expect("test data readable");
    let exposition = prom::parse(&text);
    assert!(exposition.skipped.is_empty(), "{:?}", exposition.skipped);
    let readings = readings_from(&exposition, "fallback");
    assert_eq!(readings.len(), 2);
    let busy = one(&readings, "0");
    assert_eq!(busy.host, "node-a", "lowercase `hostname` label");
    assert_eq!(busy.memory_used_mib, Some(73000.0));
    assert_eq!(busy.memory_total_mib, Some(81559.0));
    assert_eq!(busy.gpu_util_pct, Some(97.0));
    assert_eq!(busy.mem_util_pct, Some(44.0));
    assert_eq!(busy.power_w, Some(512.25));
    assert_eq!(busy.energy_j, Some(912_345.678));
    assert_eq!(busy.temperature_c, Some(61.0));
    assert_eq!(busy.sm_clock_mhz, Some(1980.0));
    assert_eq!(one(&readings, "1").memory_used_mib, Some(134.0));
}
