//! Sharded runs through the real binary against the simulator: `run
//! --shards N` sends what one process sends (the same prompts at the same
//! positions, as the server counted them), the merge is the summary of all
//! records, dataset units stay whole, mismatched shards are refused, and a
//! killed shard makes the merge partial.

mod cli_support;

use cli_support::{free_port, json, lines, tracebench, Sim, BIN};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn validator(schema: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{schema}", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("a valid schema")
}

fn assert_valid(schema: &str, value: &Value) {
    let errors: Vec<String> = validator(schema)
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{value:#}");
}

fn ok(out: &Output) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

fn failed(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    text
}

/// Records of a run folder keyed by their position in the whole run.
fn by_index(dir: &Path) -> BTreeMap<u64, Value> {
    lines(&dir.join("requests.jsonl"))
        .into_iter()
        .map(|r| (r["index"].as_u64().unwrap(), r))
        .collect()
}

fn stat(summary: &Value, metric: &str, which: &str) -> f64 {
    summary["metrics"][metric][which].as_f64().unwrap()
}

/// Numbers equal within a relative 1e-9 (sums taken in another order), all else exactly.
fn assert_same(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                "{path}: {x} vs {y}"
            );
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                assert_same(&x[k], &y[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_same(p, q, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn four_shards_send_what_one_process_sends_and_merge_exactly() {
    let grpc = free_port();
    let sim = Sim::start(&[
        "--ttft-ms",
        "20",
        "--itl-ms",
        "5",
        "--otlp-endpoint",
        &format!("grpc://127.0.0.1:{grpc}"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let grpc_addr = format!("127.0.0.1:{grpc}");
    let run = |shards: &str, run_id: &str| {
        let out = tracebench(
            tmp.path(),
            &[
                "run",
                "--url",
                &sim.url,
                "--seed",
                "7",
                "--concurrency",
                "8",
                "--requests",
                "80",
                "--warmup",
                "4",
                "--input-tokens",
                "48:20",
                "--max-tokens",
                "8",
                "--gpu",
                "off",
                "--server-metrics",
                "off",
                "--otlp-grpc",
                &grpc_addr,
                "--otlp-http",
                "127.0.0.1:0",
                "--span-wait",
                "10s",
                "--no-db",
                "--shards",
                shards,
                "--run-id",
                run_id,
            ],
        );
        ok(&out);
        tmp.path().join("results").join(run_id)
    };
    let one = run("1", "one");
    let four = run("4", "four");

    // The same prompt at every position of the run: the server's own count
    // of each prompt's tokens (the lengths are drawn per position) agrees.
    let (a, b) = (by_index(&one), by_index(&four));
    assert_eq!(a.len(), 84);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (index, ra) in &a {
        let rb = &b[index];
        assert_eq!(ra["input_tokens_source"], "usage");
        assert_eq!(
            (&ra["input_tokens"], &ra["warmup"]),
            (&rb["input_tokens"], &rb["warmup"]),
            "position {index}"
        );
        // Positions go round robin; ids and trace ids say which shard sent them.
        let shard = rb["shard"].as_u64().unwrap();
        assert_eq!(shard, index % 4);
        assert!(rb["request_id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("four-s{shard}-")));
        assert!(rb["trace_id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{shard:04x}")));
    }
    let distinct: BTreeSet<&str> = b
        .values()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), 84);

    let (sa, sb) = (
        json(&one.join("summary.json")),
        json(&four.join("summary.json")),
    );
    assert_eq!(sa["requests"], sb["requests"]);
    assert_eq!(sb["requests"]["total"], 80);
    assert_eq!(sa["total_input_tokens"], sb["total_input_tokens"]);
    assert_eq!(sa["total_output_tokens"], sb["total_output_tokens"]);
    assert_eq!(
        sb["join"]["joined"], 80,
        "the spans of every shard are joined"
    );
    // Within the simulator's jitter on this machine: three standard
    // deviations of the noisier of the two runs (and at least 1 ms).
    for metric in ["ttft_ms", "tpot_ms", "e2e_ms", "itl_chunk_ms"] {
        let std = stat(&sa, metric, "std").max(stat(&sb, metric, "std"));
        let tolerance = (3.0 * std).max(1.0);
        for which in ["mean", "p50"] {
            let (x, y) = (stat(&sa, metric, which), stat(&sb, metric, which));
            assert!(
                (x - y).abs() <= tolerance,
                "{metric} {which}: {x} vs {y} (±{tolerance})"
            );
        }
    }

    // The merged summary is the summary of the records, concatenated shard by shard.
    let mut records: Vec<tracebench::record::RequestRecord> = b
        .values()
        .map(|r| serde_json::from_value(r.clone()).unwrap())
        .collect();
    records.sort_by_key(|r| (r.shard, r.index));
    let recomputed = tracebench::analysis::summarize("four", &records, &Default::default(), false);
    assert_same(&serde_json::to_value(&recomputed).unwrap(), &sb, "summary");
    // Throughput is over the union window: first send to last end of any shard.
    let measured = records.iter().filter(|r| !r.warmup);
    let first = measured.clone().map(|r| r.instants_ns.sent).min().unwrap();
    let last = measured.map(|r| r.instants_ns.end.unwrap()).max().unwrap();
    assert!((sb["duration_s"].as_f64().unwrap() - (last - first) as f64 / 1e9).abs() < 1e-9);

    let run_json = json(&four.join("run.json"));
    assert_valid("run.schema.json", &run_json);
    assert_eq!(run_json["partial"], false);
    assert_eq!(run_json["shards"].as_array().unwrap().len(), 4);
    assert!(
        run_json["notes"].to_string().contains("clocks started"),
        "{run_json}"
    );
    let shard_json = json(&tmp.path().join("results/four.shard-2-of-4/run.json"));
    assert_valid("run.schema.json", &shard_json);
    assert_eq!(shard_json["shard"]["index"], 2);
    assert_eq!(shard_json["config_hash"], run_json["config_hash"]);
    assert!(
        shard_json["clock"]["server_offset_ms"].is_number(),
        "{shard_json}"
    );
    assert_eq!(
        shard_json["config"]["schedule"]["concurrency"], 8,
        "the run's config"
    );
    for record in b.values().take(3) {
        assert_valid("request.schema.json", record);
    }
    assert!(four.join("report.html").is_file());
}

#[test]
fn shards_send_every_dataset_line_where_one_process_sends_it() {
    let sim = Sim::start(&["--ttft-ms", "2", "--itl-ms", "1"]);
    let tmp = tempfile::tempdir().unwrap();
    // Line k has 4(k+1) words, so the server's prompt count tells the lines apart.
    let dataset: String = (0..30)
        .map(|k| {
            format!(
                "{{\"prompt\": \"{}\"}}\n",
                "word ".repeat(4 * (k + 1)).trim()
            )
        })
        .collect();
    std::fs::write(tmp.path().join("lines.jsonl"), dataset).unwrap();
    let out = tracebench(
        tmp.path(),
        &[
            "run",
            "--url",
            &sim.url,
            "--dataset",
            "lines.jsonl",
            "--requests",
            "60",
            "--concurrency",
            "3",
            "--max-tokens",
            "2",
            "--gpu",
            "off",
            "--server-metrics",
            "off",
            "--trace-header",
            "off",
            "--no-db",
            "--shards",
            "3",
            "--run-id",
            "lines",
        ],
    );
    ok(&out);
    let records = by_index(&tmp.path().join("results/lines"));
    assert_eq!(records.len(), 60, "the run's 60 requests, no more");
    // Position p is shard p mod 3's and carries line p mod 30, as one process sends it.
    let mut positions: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in records.values() {
        let index = r["index"].as_u64().unwrap();
        assert_eq!(r["shard"].as_u64().unwrap(), index % 3, "position {index}");
        positions
            .entry(r["input_tokens"].as_u64().unwrap())
            .or_default()
            .push(index);
    }
    assert_eq!(positions.len(), 30, "every line is sent: {positions:?}");
    for (tokens, at) in &positions {
        assert_eq!(at.len(), 2, "two passes over the dataset");
        assert_eq!(
            at[1] - at[0],
            30,
            "the line of {tokens} tokens at its positions"
        );
    }
}

/// `run --shard I/3 --run-id ID EXTRA`, quietly, against `url` in `dir`.
fn shard(dir: &Path, url: &str, shard: &str, run_id: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--url",
        url,
        "--concurrency",
        "3",
        "--requests",
        "3",
        "--max-tokens",
        "2",
        "--gpu",
        "off",
        "--server-metrics",
        "off",
        "--trace-header",
        "off",
        "--no-tui",
        "--no-db",
        "--shard",
        shard,
        "--run-id",
        run_id,
    ];
    args.extend_from_slice(extra);
    tracebench(dir, &args)
}

#[test]
fn merge_refuses_shards_of_other_runs_or_settings_and_names_missing_ones() {
    let sim = Sim::start(&["--ttft-ms", "2", "--itl-ms", "1"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(&shard(dir, &sim.url, "0/3", "r", &[]));
    ok(&shard(dir, &sim.url, "1/3", "r", &["--seed", "9"]));
    ok(&shard(dir, &sim.url, "2/3", "r", &[]));
    ok(&shard(dir, &sim.url, "1/3", "other", &[]));
    let merge = |folders: &[&str], out: &str| {
        let mut args = vec!["merge"];
        args.extend_from_slice(folders);
        args.extend_from_slice(&["--out", out, "--no-db"]);
        tracebench(dir, &args)
    };
    let e = failed(&merge(
        &["results/r.shard-0-of-3", "results/r.shard-1-of-3"],
        "m1",
    ));
    assert!(e.contains("different settings (config hash"), "{e}");
    let e = failed(&merge(
        &["results/r.shard-0-of-3", "results/other.shard-1-of-3"],
        "m2",
    ));
    assert!(
        e.contains("is a shard of run `r` but") && e.contains("run `other`"),
        "{e}"
    );
    let e = failed(&merge(
        &["results/r.shard-0-of-3", "results/r.shard-0-of-3"],
        "m3",
    ));
    assert!(e.contains("are both shard 0/3"), "{e}");
    ok(&tracebench(
        dir,
        &[
            "run",
            "--url",
            &sim.url,
            "--requests",
            "1",
            "--gpu",
            "off",
            "--server-metrics",
            "off",
            "--trace-header",
            "off",
            "--no-tui",
            "--no-db",
            "--run-id",
            "single",
        ],
    ));
    let e = failed(&merge(&["results/single"], "m4"));
    assert!(e.contains("is not a shard"), "{e}");
    assert!(
        !dir.join("m1").join("requests.jsonl").exists(),
        "nothing merged"
    );

    // Two of three shards merge, and the result says which one is missing.
    let text = ok(&tracebench(
        dir,
        &[
            "merge",
            "results/r.shard-0-of-3",
            "results/r.shard-2-of-3",
            "--out",
            "m5",
            "--db",
            "history.db",
        ],
    ));
    assert!(text.contains("merged (partial)"), "{text}");
    let run = json(&dir.join("m5/run.json"));
    assert_eq!(run["partial"], true);
    assert!(
        run["notes"].to_string().contains("shard 1/3 missing"),
        "{run}"
    );
    let summary = json(&dir.join("m5/summary.json"));
    assert_eq!(
        (
            summary["partial"].clone(),
            summary["requests"]["total"].clone()
        ),
        (true.into(), 2.into())
    );
    // The merged run is in the history, partial, with its records.
    let db = rusqlite::Connection::open(dir.join("history.db")).unwrap();
    let (partial, requests): (bool, i64) = db
        .query_row(
            "SELECT partial, requests FROM runs WHERE run_id = 'r'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((partial, requests), (true, 2));
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM requests WHERE run_id = 'r'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(rows, 2);
    let e = failed(&merge(&["results/r.shard-0-of-3"], "m5"));
    assert!(e.contains("already holds a run"), "{e}");
}

/// `tracebench run --shards 2` in `dir` against `url` (2 streams, no GPU,
/// no trace header, no history) with `extra` flags, its output piped.
fn spawn_launcher(dir: &Path, url: &str, run_id: &str, extra: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .current_dir(dir)
        .args(["run", "--url", url, "--concurrency", "2", "--gpu", "off"])
        .args([
            "--trace-header",
            "off",
            "--no-db",
            "--shards",
            "2",
            "--run-id",
            run_id,
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits, 30 s at most (else fails saying `what`), until every file of
/// `paths` holds a record.
fn wait_for_records(paths: &[PathBuf], what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let written = |path: &PathBuf| std::fs::metadata(path).map_or(0, |m| m.len()) > 0;
    while !paths.iter().all(written) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The child processes of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

#[test]
fn a_killed_shard_leaves_a_partial_merge_that_names_it() {
    // 40 tokens 10 ms apart: each request takes about 0.4 s.
    let sim = Sim::start(&["--ttft-ms", "10", "--itl-ms", "10"]);
    let tmp = tempfile::tempdir().unwrap();
    let launcher = spawn_launcher(
        tmp.path(),
        &sim.url,
        "killed",
        &[
            "--requests",
            "12",
            "--max-tokens",
            "40",
            "--server-metrics",
            "off",
        ],
    );
    let first_record = tmp
        .path()
        .join("results/killed.shard-1-of-2/requests.jsonl");
    wait_for_records(&[first_record], "shard 1 wrote no record");
    let children = children_of(launcher.id());
    assert_eq!(children.len(), 2, "{children:?}");
    let victim = children
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|arg| arg == b"1/2")
        })
        .expect("shard 1's process");
    assert!(unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) } == 0);
    let out = launcher.wait_with_output().unwrap();
    let text = ok(&out);
    assert!(text.contains("shard 1 was killed"), "{text}");
    assert!(text.contains("merged (partial)"), "{text}");
    let merged = tmp.path().join("results/killed");
    let run = json(&merged.join("run.json"));
    assert_eq!(run["partial"], true);
    assert!(
        run["notes"].to_string().contains("shard 1/2")
            && run["notes"].to_string().contains("never finished"),
        "{run}"
    );
    let summary = json(&merged.join("summary.json"));
    assert_eq!(summary["partial"], true);
    let records = lines(&merged.join("requests.jsonl"));
    let from_killed = records.iter().filter(|r| r["shard"] == 1).count();
    assert!(from_killed >= 1, "what the killed shard finished is kept");
    assert_eq!(
        records.iter().filter(|r| r["shard"] == 0).count(),
        6,
        "shard 0 finished"
    );
}

#[test]
fn ctrl_c_reaches_every_shard_and_the_merge_says_partial() {
    let sim = Sim::start(&["--ttft-ms", "10", "--itl-ms", "10"]);
    let tmp = tempfile::tempdir().unwrap();
    let launcher = spawn_launcher(
        tmp.path(),
        &sim.url,
        "stopped",
        &[
            "--duration",
            "60s",
            "--max-tokens",
            "20",
            "--grace-period",
            "5s",
        ],
    );
    let records = (0..2).map(|i| {
        tmp.path()
            .join(format!("results/stopped.shard-{i}-of-2/requests.jsonl"))
    });
    wait_for_records(&records.collect::<Vec<_>>(), "the shards sent nothing");
    // As a terminal's Ctrl-C does: SIGINT to the launcher (its children have
    // their own process group, so only the launcher can pass it on).
    assert!(unsafe { libc::kill(launcher.id() as libc::pid_t, libc::SIGINT) } == 0);
    let out = launcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{text}");
    let run = json(&tmp.path().join("results/stopped/run.json"));
    assert_eq!(run["partial"], true);
    for i in 0..2 {
        assert!(
            run["notes"].to_string().contains(&format!("shard {i}/2")),
            "shard {i} stopped: {run}"
        );
    }
    let records = lines(&tmp.path().join("results/stopped/requests.jsonl"));
    assert!(records.iter().any(|r| r["shard"] == 0) && records.iter().any(|r| r["shard"] == 1));
    // Both shards scraped the server's /metrics; every line says which shard took it.
    let samples = lines(&tmp.path().join("results/stopped/server_metrics.jsonl"));
    let shards: BTreeSet<u64> = samples
        .iter()
        .map(|l| l["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shards, BTreeSet::from([0, 1]));
    assert_valid("server_metrics.schema.json", &samples[0]);
}
