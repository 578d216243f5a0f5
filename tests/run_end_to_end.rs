//! The real `tracebench` binary, run in a fresh temp folder against the
//! built-in simulator (also started as the real binary): the files it writes
//! follow their JSON Schemas, failures are records, Ctrl-C keeps everything,
//! and bad configuration fails before any request with exit code 2.

mod cli_support;

use cli_support::{json, lines, run_dir, run_expecting, tracebench, Sim, BIN};
use serde_json::Value;
use std::process::{Command, Stdio};

fn validator(schema: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{schema}", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("a valid schema")
}

fn assert_valid(validator: &jsonschema::Validator, value: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{value:#}");
}

#[test]
fn a_run_writes_every_file_and_they_follow_their_schemas() {
    let sim = Sim::start(&["--max-num-seqs", "4"]);
    let tmp = tempfile::tempdir().unwrap();
    let run = run_expecting(
        tmp.path(),
        0,
        &[
            "--url",
            &sim.url,
            "--concurrency",
            "8",
            "--requests",
            "40",
            "--warmup",
            "4",
            "--input-tokens",
            "64:16",
            "--output-tokens",
            "16:4",
            "--ignore-eos",
            "--no-tui",
            "--slo",
            "ttft:10s",
            "--trace-source",
            "none",
            "--server-metrics",
            "off",
            "--gpu",
            "off",
        ],
    );
    let stdout = String::from_utf8_lossy(&run.out.stdout);
    assert!(
        stdout.contains("TTFT (ms)") && stdout.contains("throughput"),
        "{stdout}"
    );
    let run_dir = run.dir.clone();
    for file in [
        "requests.jsonl",
        "requests.csv",
        "summary.json",
        "run.json",
        "report.html",
    ] {
        assert!(run_dir.join(file).is_file(), "{file} missing");
    }
    assert!(tmp.path().join("results/tracebench.db").is_file());

    let records = run.records;
    assert_eq!(records.len(), 44);
    let request_schema = validator("request.schema.json");
    let mut ids = std::collections::HashSet::new();
    for record in &records {
        assert_valid(&request_schema, record, "request record");
        assert!(record["error"].is_null(), "{record}");
        assert!(ids.insert(record["request_id"].as_str().unwrap().to_string()));
        // Exact prompt lengths: the simulator's /tokenize counted them, usage agrees.
        assert_eq!(record["input_tokens_source"], "usage");
        assert_eq!(record["output_tokens"], record["max_tokens"]);
        // Preconnect opened the 8 connections before the first request.
        assert_eq!(record["connection"]["reused"], true, "{record}");
        let sent = record["instants_ns"]["sent"].as_u64().unwrap();
        assert!(record["instants_ns"]["written"].as_u64().unwrap() >= sent);
    }
    assert_eq!(records.iter().filter(|r| r["warmup"] == true).count(), 4);

    let summary: Value = json(&run_dir.join("summary.json"));
    assert_valid(&validator("summary.schema.json"), &summary, "summary");
    assert_eq!(summary["requests"]["total"], 40);
    assert_eq!(summary["requests"]["warmup"], 4);
    assert_eq!(summary["completed"], 40);
    assert!(summary["median_ttft_ms"].as_f64().unwrap() > 0.0);
    // summary.json reads back into the library's type.
    let _: tracebench::analysis::Summary = serde_json::from_value(summary).unwrap();

    let run: Value = json(&run_dir.join("run.json"));
    assert_valid(&validator("run.schema.json"), &run, "run.json");
    let _: tracebench::run::RunManifest = serde_json::from_value(run.clone()).unwrap();
    assert_eq!(run["partial"], false);
    assert_eq!(run["model"], "tracebench-sim");
    assert!(run["server"]["version"]["version"]
        .as_str()
        .unwrap()
        .starts_with("tracebench-sim"));
    assert!(run["command_line"]
        .as_str()
        .unwrap()
        .contains("--concurrency 8"));
    assert!(
        run["notes"]
            .to_string()
            .contains("preconnect: 8/8 connections opened"),
        "{run}"
    );

    let csv = std::fs::read_to_string(run_dir.join("requests.csv")).unwrap();
    assert_eq!(csv.lines().count(), 45);
    let header = csv.lines().next().unwrap();
    for column in [
        "instants_ns.first_token",
        "instants_ns.written",
        "connection.reused",
        "connection.connect_ms",
        "connection.tls_ms",
    ] {
        assert!(header.contains(column), "{column} in {header}");
    }
}

#[test]
fn without_preconnect_the_first_wave_opens_its_connections() {
    let sim = Sim::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let run = run_expecting(
        tmp.path(),
        0,
        &[
            "--url",
            &sim.url,
            "--concurrency",
            "4",
            "--requests",
            "8",
            "--output-tokens",
            "4",
            "--no-preconnect",
            "--no-tui",
            "--trace-source",
            "none",
            "--no-db",
        ],
    );
    let request_schema = validator("request.schema.json");
    let mut new = 0;
    for record in &run.records {
        assert_valid(&request_schema, record, "request record");
        let connection = &record["connection"];
        if connection["reused"] == false {
            new += 1;
            assert!(connection["connect_ms"].as_f64().unwrap() > 0.0, "{record}");
        } else {
            assert!(connection["connect_ms"].is_null(), "{record}");
        }
        assert!(
            connection["tls_ms"].is_null(),
            "no TLS over http://: {record}"
        );
    }
    assert_eq!(new, 4, "one new connection per request of the first wave");
    let run_json: Value = json(&run.dir.join("run.json"));
    assert!(!run_json["notes"].to_string().contains("preconnect"));
}

#[test]
fn an_unreachable_server_gives_failed_records_and_exit_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let tmp = tempfile::tempdir().unwrap();
    let run = run_expecting(
        tmp.path(),
        1,
        &[
            "--url",
            &url,
            "--model",
            "m",
            "--requests",
            "5",
            "--no-tui",
            "--trace-source",
            "none",
            "--no-db",
        ],
    );
    assert_eq!(run.records.len(), 5);
    assert!(run.records.iter().all(|r| r["error"]["kind"] == "connect"));
    assert!(run.records.iter().all(|r| r["connection"].is_null()));
    let run_json: Value = json(&run.dir.join("run.json"));
    assert!(
        run_json["notes"]
            .to_string()
            .contains("preconnect: no connection opened (1 asked for)"),
        "{run_json}"
    );
    let summary: Value = json(&run.dir.join("summary.json"));
    assert_eq!(summary["errors"]["connect"], 5);
    assert!(String::from_utf8_lossy(&run.out.stdout).contains("connect 5"));
}

#[test]
fn http_errors_are_counted_and_the_run_goes_on() {
    let sim = Sim::start(&["--max-model-len", "64"]);
    let tmp = tempfile::tempdir().unwrap();
    // Every request asks for more tokens than the model's context: 400 from the server.
    let run = run_expecting(
        tmp.path(),
        0,
        &[
            "--url",
            &sim.url,
            "--requests",
            "6",
            "--concurrency",
            "3",
            "--max-tokens",
            "500",
            "--input-tokens",
            "8",
            "--no-tui",
            "--trace-source",
            "none",
            "--no-db",
            "--max-error-rate",
            "1",
        ],
    );
    assert_eq!(run.records.len(), 6);
    for record in run.records {
        assert_eq!(record["error"]["kind"], "http_status");
        assert_eq!(record["error"]["status"], 400);
        assert!(record["error"]["body_excerpt"]
            .as_str()
            .unwrap()
            .contains("max_model_len"));
    }
}

#[test]
fn ctrl_c_keeps_every_finished_request_and_marks_the_run_partial() {
    let sim = Sim::start(&["--ttft-ms", "20", "--itl-ms", "20"]);
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .current_dir(tmp.path())
        .args([
            "run",
            "--url",
            &sim.url,
            "--duration",
            "60s",
            "--concurrency",
            "4",
            "--output-tokens",
            "10",
            "--no-tui",
            "--trace-source",
            "none",
            "--no-db",
            "--grace-period",
            "5s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let results = tmp.path().join("results");
    // Wait until some records are on disk, then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let done = std::fs::read_dir(&results)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.unwrap().path().join("requests.jsonl")).ok())
            .is_some_and(|text| text.lines().count() >= 8);
        if done || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_dir = run_dir(&results);
    let records = lines(&run_dir.join("requests.jsonl"));
    assert!(records.len() >= 8);
    // In-flight requests finished within the grace period: nothing was cut.
    assert!(records.iter().all(|r| r["error"].is_null()), "{records:?}");
    let summary: Value = json(&run_dir.join("summary.json"));
    assert_eq!(summary["partial"], true);
    assert_eq!(
        summary["requests"]["total"].as_u64().unwrap() as usize,
        records.len()
    );
    let run: Value = json(&run_dir.join("run.json"));
    assert_eq!(run["partial"], true);
}

#[test]
fn bad_configuration_fails_before_any_request_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = tmp.path().join("prompts.jsonl");
    std::fs::write(&dataset, "{\"prompt\":\"fine\"}\n{\"prompt\": 3}\n").unwrap();
    let dataset = dataset.display().to_string();
    for (args, needle) in [
        (vec!["run", "--url", "not a url"], "--url"),
        (vec!["run", "--rate=-2"], "--rate"),
        (
            vec!["run", "--model", "m", "--dataset", &dataset],
            "prompts.jsonl:2",
        ),
        (vec!["run", "--arrival", "sometimes"], "sometimes"),
        (vec!["run", "--trace-source", "jaeger"], "--jaeger-url"),
        (vec!["run", "--trace-source", "tempo"], "--tempo-url"),
        (
            vec![
                "run",
                "--jaeger-url",
                "localhost:16686",
                "--trace-source",
                "jaeger",
            ],
            "--jaeger-url",
        ),
        (vec!["run", "--gpu", "ftp://x/metrics"], "--gpu"),
        (vec!["run", "--gpu-interval", "0s"], "--gpu-interval"),
        (
            vec!["run", "--server-metrics", "gopher://x"],
            "--server-metrics",
        ),
    ] {
        let out = tracebench(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The first line says what was wrong.
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(needle), "{args:?}: {stderr}");
        // Nothing was made: not the results folder, not a run folder.
        assert!(
            !tmp.path().join("results").exists(),
            "{args:?} left a folder"
        );
    }
}

#[test]
fn help_shows_the_environment_variables_of_per_environment_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tracebench(tmp.path(), &["run", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "TRACEBENCH_URL",
        "TRACEBENCH_MODEL",
        "OPENAI_API_KEY",
        "TRACEBENCH_OTLP_GRPC",
        "TRACEBENCH_OTLP_HTTP",
        "TRACEBENCH_JAEGER_URL",
        "TRACEBENCH_TEMPO_URL",
        "TRACEBENCH_DB",
        "TRACEBENCH_OUT",
    ] {
        assert!(
            help.contains(&format!("[env: {var}")),
            "{var} missing:\n{help}"
        );
    }
}

#[test]
fn environment_variables_set_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracebench"))
        .current_dir(tmp.path())
        .args(["run", "--requests", "1", "--no-tui"])
        .env("TRACEBENCH_URL", "not a url")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`not a url`"));
}

fn instants(record: &Value, name: &str) -> u64 {
    record["instants_ns"][name].as_u64().unwrap()
}

#[test]
fn an_open_loop_over_its_cap_delays_arrivals_and_drops_none() {
    // Each request takes about 100 ms and at most 2 may be in flight: about 20
    // requests/s get through, while 50/s arrive. The rest wait; none is dropped.
    let sim = Sim::start(&["--ttft-ms", "20", "--itl-ms", "20"]);
    let tmp = tempfile::tempdir().unwrap();
    let run = run_expecting(
        tmp.path(),
        0,
        &[
            "--url",
            &sim.url,
            "--rate",
            "50",
            "--arrival",
            "constant",
            "--max-concurrency",
            "2",
            "--requests",
            "20",
            "--output-tokens",
            "5",
            "--no-tui",
            "--no-db",
            "--trace-source",
            "none",
            "--gpu",
            "off",
            "--server-metrics",
            "off",
        ],
    );
    let mut records = run.records;
    assert_eq!(records.len(), 20);
    assert!(records.iter().all(|r| r["error"].is_null()));
    records.sort_by_key(|r| r["index"].as_u64().unwrap());
    // Intended instants follow the arrival process: one every 20 ms.
    let intended: Vec<u64> = records.iter().map(|r| instants(r, "intended")).collect();
    for pair in intended.windows(2) {
        let gap_ms = (pair[1] - pair[0]) as f64 / 1e6;
        assert!((gap_ms - 20.0).abs() < 0.5, "arrival gap {gap_ms} ms");
    }
    // The cap shows as schedule lag, growing along the run.
    let lag = |r: &Value| r["schedule_lag_ms"].as_f64().unwrap();
    assert!(lag(&records[19]) > 400.0, "last lag {}", lag(&records[19]));
    assert!(lag(&records[19]) > lag(&records[5]));
}

#[test]
fn static_batches_wait_for_the_whole_batch() {
    let sim = Sim::start(&["--ttft-ms", "10", "--itl-ms", "10"]);
    let tmp = tempfile::tempdir().unwrap();
    let run = run_expecting(
        tmp.path(),
        0,
        &[
            "--url",
            &sim.url,
            "--batch-size",
            "4",
            "--requests",
            "12",
            "--output-tokens",
            "3",
            "--no-tui",
            "--no-db",
            "--trace-source",
            "none",
            "--gpu",
            "off",
            "--server-metrics",
            "off",
        ],
    );
    let mut records = run.records;
    records.sort_by_key(|r| r["index"].as_u64().unwrap());
    let batches: Vec<&[Value]> = records.chunks(4).collect();
    assert_eq!(batches.len(), 3);
    for batch in &batches {
        // One intended instant per batch.
        assert!(batch
            .iter()
            .all(|r| instants(r, "intended") == instants(&batch[0], "intended")));
    }
    for pair in batches.windows(2) {
        let previous_end = pair[0].iter().map(|r| instants(r, "end")).max().unwrap();
        let next_start = pair[1].iter().map(|r| instants(r, "sent")).min().unwrap();
        assert!(
            next_start >= previous_end,
            "a batch started before the previous one ended"
        );
    }
}

#[test]
fn selfcheck_measures_each_level_against_the_simulators_truth() {
    let dir = tempfile::tempdir().unwrap();
    let output = tracebench(
        dir.path(),
        &[
            "selfcheck",
            "--levels",
            "1,20",
            "--rounds",
            "2",
            "--tokens",
            "8",
            "--json",
            "figures.json",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Whether the targets are met depends on the machine's load; the figures must exist either way.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "selfcheck failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("worker threads"), "{stdout}");
    let figures = json(&dir.path().join("figures.json"));
    let levels = figures.as_array().expect("one entry per level");
    assert_eq!(levels.len(), 2);
    for (figure, level) in levels.iter().zip([1u64, 20]) {
        assert_eq!(figure["concurrency"], level);
        assert_eq!(figure["requests"], level * 2, "{figure}");
        assert_eq!(figure["failed"], 0, "{figure}");
        assert_eq!(figure["streams_in_flight"], level, "{figure}");
        let number = |key: &str| {
            figure[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key}: {figure}"))
        };
        // Client arrival can never precede the simulator's write by more than clock noise.
        assert!(number("ttft_error_p50_ms") > -1.0, "{figure}");
        assert!(number("itl_error_p99_ms") >= 0.0, "{figure}");
        assert!(
            (0.0..=1.0).contains(&number("merged_chunk_share")),
            "{figure}"
        );
        assert!(number("client_cpu_s") > 0.0, "{figure}");
        assert!(number("sim_cpu_s") >= 0.0, "{figure}");
        let busy = number("machine_busy");
        assert!((0.0..=1.05).contains(&busy), "{figure}");
        // Linux always has the steal column; a machine that is not virtual reads 0.
        assert!(number("stolen_cpu_s") >= 0.0, "{figure}");
        // The measured first wave found the preconnected connections; the cold
        // one opened a connection per request.
        let (warm, cold) = (&figure["first_wave"], &figure["first_wave_no_preconnect"]);
        assert_eq!(
            (&warm["requests"], &warm["reused"]),
            (&level.into(), &level.into())
        );
        assert!(warm["connect_p99_ms"].is_null(), "{figure}");
        assert_eq!(
            (&cold["requests"], &cold["reused"]),
            (&level.into(), &0.into())
        );
        assert_eq!(cold["failed"], 0, "{figure}");
        assert!(cold["connect_p99_ms"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(
            cold["ttft_error_p99_ms"].as_f64().unwrap() > -1.0,
            "{figure}"
        );
    }
    assert!(
        stdout.contains("     1 ") && stdout.contains("    20 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("first wave, preconnect: 20 reused, 0 new")
            && stdout.contains("first wave, no preconnect: 0 reused, 20 new, connect p99"),
        "{stdout}"
    );
}
