//! Every workload end to end against the simulator, through the real flags
//! (`RunConfig::from_args`) and the real HTTP client: ShareGPT (first turn
//! and whole conversations), sessions, trace replay (JSONL and CSV) with
//! the simulator's prefix cache, images, prefix groups, synthetic sessions,
//! a reasoning model, and two-pass TTFT. Samples are in `tests/data/workloads`.

use std::path::{Path, PathBuf};
use tracebench::cli::{Cli, Command};
use tracebench::config::RunConfig;
use tracebench::record::{read_records, RequestRecord, TtftMethod};
use tracebench::run::RunOutcome;
use tracebench::sim::{SimArgs, SimServer};

fn sample(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/workloads")
        .join(name);
    path.display().to_string()
}

async fn sim(extra: impl FnOnce(&mut SimArgs)) -> SimServer {
    let mut args = SimArgs {
        port: 0,
        decode_step_ms: 1.0,
        frontend_ms: 0.5,
        ..Default::default()
    };
    extra(&mut args);
    tracebench::sim::spawn(args).await.unwrap()
}

/// `tracebench run FLAGS` against `sim`, quiet (no dashboard, history,
/// telemetry or tracing); its outcome and records.
async fn run(sim: &SimServer, out: &Path, flags: &[&str]) -> (RunOutcome, Vec<RequestRecord>) {
    let config = config(sim, out, flags).unwrap();
    let outcome = tracebench::run::execute(config, "workload test".into())
        .await
        .unwrap();
    let records = read_records(&outcome.run_dir.join("requests.jsonl")).unwrap();
    (outcome, records)
}

fn config(sim: &SimServer, out: &Path, flags: &[&str]) -> anyhow::Result<RunConfig> {
    let url = sim.url();
    let mut argv = vec!["tracebench", "run", "--url", &url];
    argv.extend_from_slice(flags);
    let Command::Run(args) = Cli::try_parse_from(argv)?.command else {
        unreachable!()
    };
    let quiet = tracebench::testing::quiet_run(&url, out);
    Ok(RunConfig {
        trace: quiet.trace,
        telemetry: quiet.telemetry,
        db: None,
        tui: false,
        out: out.to_path_buf(),
        ..RunConfig::from_args(&args)?
    })
}

use clap::Parser as _;

/// Words of a text: the simulator's tokens.
fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn sharegpt() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(sample("sharegpt.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharegpt_first_turns_ask_for_the_replys_length_and_skip_what_the_filters_refuse() {
    let sim = sim(|_| {}).await;
    let out = tempfile::tempdir().unwrap();
    let (outcome, records) = run(
        &sim,
        out.path(),
        &["--dataset", &sample("sharegpt.json"), "--requests", "8"],
    )
    .await;
    assert_eq!(outcome.summary.requests.ok, 8);
    // Usable in file order: the "hi" prompt is too short, "no_reply" has no reply.
    let all = sharegpt();
    let usable: Vec<&serde_json::Value> = all
        .iter()
        .filter(|c| !matches!(c["id"].as_str(), Some("hi" | "no_reply")))
        .collect();
    assert_eq!(usable.len(), 6);
    for (record, conversation) in records.iter().zip(usable.iter().cycle()) {
        let turns = conversation["conversations"].as_array().unwrap();
        let first_human = turns.iter().position(|t| t["from"] == "human").unwrap();
        let reply = turns[first_human + 1]["value"].as_str().unwrap();
        let prompt = turns[first_human]["value"].as_str().unwrap();
        assert_eq!(
            record.max_tokens,
            Some(words(reply)),
            "{}",
            record.request_id
        );
        // The system prompt goes along as a system message.
        let system = turns
            .iter()
            .find(|t| t["from"] == "system")
            .map_or(0, |t| words(t["value"].as_str().unwrap()));
        assert_eq!(record.input_tokens, Some(words(prompt) + system));
        assert!(record.session_id.is_none());
    }
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_send_their_history_with_the_actual_replies_in_order_on_one_slot() {
    let sim = sim(|_| {}).await;
    let out = tempfile::tempdir().unwrap();
    let (outcome, records) = run(
        &sim,
        out.path(),
        &[
            "--dataset",
            &sample("sessions.jsonl"),
            "--requests",
            "3",
            "--concurrency",
            "2",
        ],
    )
    .await;
    assert_eq!(
        outcome.summary.requests.ok, 9,
        "3 sessions of 3, 2 and 4 turns"
    );
    let file = std::fs::read_to_string(sample("sessions.jsonl")).unwrap();
    for line in file.lines() {
        let session: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = session["session_id"].as_str().unwrap();
        let mut turns: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| r.session_id.as_deref() == Some(id))
            .collect();
        turns.sort_by_key(|r| r.turn);
        let planned = session["turns"].as_array().unwrap();
        assert_eq!(turns.len(), planned.len(), "{id}");
        let mut history = 0;
        for (i, (record, turn)) in turns.iter().zip(planned).enumerate() {
            assert_eq!(record.turn, Some(i as u32));
            let asked = match turn.get("prompt") {
                Some(p) => words(p.as_str().unwrap()),
                None => turn["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| words(m["content"].as_str().unwrap()))
                    .sum(),
            };
            // The prompt is everything before plus this turn: the replies the
            // simulator really sent (" tok" per token) are in the history.
            history += asked;
            assert_eq!(record.input_tokens, Some(history), "{id} turn {i}");
            history += record.output_tokens.unwrap();
            if i > 0 {
                let previous = turns[i - 1];
                let waited = record.instants_ns.sent - previous.instants_ns.end.unwrap();
                let think = turn["delay_ms"].as_u64().unwrap() * 1_000_000;
                assert!(
                    waited >= think,
                    "{id} turn {i} waited {waited} ns, think time {think}"
                );
            }
        }
    }
    let by_turn = &outcome.summary.workload.as_ref().unwrap().by_turn;
    assert_eq!(by_turn["0"].requests, 3);
    assert_eq!(by_turn["3"].requests, 1);
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharegpt_conversations_as_sessions_and_synthetic_sessions() {
    let sim = sim(|_| {}).await;
    let out = tempfile::tempdir().unwrap();
    let (_, records) = run(
        &sim,
        out.path(),
        &[
            "--dataset",
            &sample("sharegpt.json"),
            "--sharegpt-turns",
            "all",
            "--requests",
            "6",
            "--run-id",
            "all",
        ],
    )
    .await;
    let haiku: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| r.session_id.as_deref() == Some("0Uq4XwJ_0"))
        .collect();
    assert_eq!(haiku.len(), 3, "three human turns");
    let (_, records) = run(
        &sim,
        out.path(),
        &[
            "--turns",
            "3",
            "--think-time",
            "10ms",
            "--input-tokens",
            "20",
            "--output-tokens",
            "5",
            "--requests",
            "4",
            "--concurrency",
            "2",
            "--run-id",
            "synthetic",
        ],
    )
    .await;
    assert_eq!(records.len(), 12);
    for record in &records {
        let turn = record.turn.unwrap() as u64;
        // Each turn adds 20 prompt words to the history and 5 reply tokens.
        assert_eq!(record.input_tokens, Some(20 * (turn + 1) + 5 * turn));
    }
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_replay_keeps_the_timestamps_and_shared_hash_blocks_hit_the_prefix_cache() {
    let sim = sim(|args| args.prefix_caching = true).await;
    let out = tempfile::tempdir().unwrap();
    let (outcome, records) = run(
        &sim,
        out.path(),
        &[
            "--trace-replay",
            &sample("mooncake-trace.jsonl"),
            "--time-scale",
            "0.5",
        ],
    )
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(sample("mooncake-trace.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.len(),
        lines.len(),
        "the whole trace, no --requests needed"
    );
    let mut records = records;
    records.sort_by_key(|r| r.index);
    let first_intended = records[0].instants_ns.intended;
    let first_ts = lines[0]["timestamp"].as_u64().unwrap();
    for (record, line) in records.iter().zip(&lines) {
        let expected = (line["timestamp"].as_u64().unwrap() - first_ts) * 1_000_000 / 2;
        let intended = record.instants_ns.intended - first_intended;
        assert!(
            intended.abs_diff(expected) < 1_000_000,
            "{intended} vs {expected}"
        );
        assert_eq!(record.input_tokens, line["input_length"].as_u64());
        assert_eq!(record.max_tokens, line["output_length"].as_u64());
    }
    // Each group's first request fills the cache; the later ones reuse the
    // shared blocks (whole 16-word simulator blocks of their 512-token blocks).
    for (i, (record, line)) in records.iter().zip(&lines).enumerate() {
        let shared = line["hash_ids"].as_array().unwrap().len() as u64 - 1;
        let cached = record.cached_tokens.unwrap();
        match i < 3 {
            true => assert_eq!(cached, 0, "line {i}"),
            false => assert_eq!(cached, shared * 512, "line {i}"),
        }
    }
    let cache = outcome
        .summary
        .workload
        .as_ref()
        .unwrap()
        .cache
        .as_ref()
        .unwrap();
    assert!(cache.hit_rate > 0.3, "{}", cache.hit_rate);
    assert!(outcome.summary.metrics.contains_key("cached_tokens"));

    let (_, csv) = run(
        &sim,
        out.path(),
        &["--trace-replay", &sample("trace.csv"), "--run-id", "csv"],
    )
    .await;
    let mut csv = csv;
    csv.sort_by_key(|r| r.index);
    let offsets: Vec<u64> = csv
        .iter()
        .map(|r| (r.instants_ns.intended - csv[0].instants_ns.intended) / 1_000_000)
        .collect();
    assert_eq!(offsets, [0, 150, 300, 320, 700, 900]);
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_prefix_groups_reasoning_and_two_pass() {
    let sim = sim(|args| {
        args.prefix_caching = true;
        args.reasoning_tokens = 3;
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let (outcome, records) = run(
        &sim,
        out.path(),
        &[
            "--images",
            "2",
            "--image-size",
            "64x64:1,128x96:1",
            "--image-format",
            "png",
            "--input-tokens",
            "16",
            "--output-tokens",
            "8",
            "--requests",
            "10",
            "--run-id",
            "images",
        ],
    )
    .await;
    for record in &records {
        let images = record.images.unwrap();
        assert_eq!(images.count, 2);
        assert!([2 * 64 * 64, 64 * 64 + 128 * 96, 2 * 128 * 96].contains(&images.pixels.unwrap()));
        // The simulator counts the images' bytes as prompt tokens.
        assert!(record.input_tokens.unwrap() > 16 + images.bytes.unwrap() / 64 / 2);
        // A reasoning model: three reasoning tokens, then the answer.
        assert_eq!(
            (record.reasoning_tokens, record.answer_tokens),
            (Some(3), Some(5))
        );
        assert!(record.ttfo_ms.unwrap() >= record.ttft_ms.unwrap());
    }
    let workload = outcome.summary.workload.unwrap();
    assert_eq!(workload.ttft_by_image_count["2"].count, 10);
    assert!(outcome.summary.metrics.contains_key("ttfo_ms"));

    let (outcome, records) = run(
        &sim,
        out.path(),
        &[
            "--prefix-groups",
            "2",
            "--shared-prefix-tokens",
            "64",
            "--input-tokens",
            "80",
            "--requests",
            "12",
            "--run-id",
            "groups",
        ],
    )
    .await;
    let hits = records
        .iter()
        .filter(|r| r.cached_tokens == Some(64))
        .count();
    assert_eq!(
        hits, 10,
        "all but each group's first reuse its 64-token prefix"
    );
    assert!(outcome.summary.workload.unwrap().cache.unwrap().hit_rate > 0.5);

    let (_, records) = run(
        &sim,
        out.path(),
        &[
            "--ttft-method",
            "two-pass",
            "--input-tokens",
            "16",
            "--output-tokens",
            "8",
            "--requests",
            "3",
            "--run-id",
            "two-pass",
        ],
    )
    .await;
    for record in &records {
        assert_eq!(record.ttft_method, TtftMethod::TwoPass);
        assert!(!record.stream);
        // TTFT is the first pass's E2E, inside the full answer's E2E.
        let (ttft, e2e) = (record.ttft_ms.unwrap(), record.e2e_ms.unwrap());
        assert!(ttft > 0.0 && ttft < e2e, "{ttft} {e2e}");
        assert_eq!(record.tpot_ms, Some((e2e - ttft) / 7.0));
        // Each pass has its own tag first: the second finds nothing cached.
        assert_eq!(record.cached_tokens, Some(0));
    }
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workload_files_are_refused_before_any_request_naming_file_and_entry() {
    let sim = sim(|_| {}).await;
    let out = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let sharegpt = write(
        "bad-sharegpt.json",
        "[\n{\"id\": \"a\", \"conversations\": [{\"from\": \"human\", \"value\": \"hello there you\"}, {\"from\": \"gpt\", \"value\": \"hi how are you\"}]},\n{\"id\": \"b\", \"conversations\": [{\"from\": \"human\", \"value\": 42}]}\n]\n",
    );
    let negative = write(
        "negative.jsonl",
        "{\"timestamp\": -1, \"input_length\": 5, \"output_length\": 2}\n",
    );
    let disorder = write(
        "disorder.jsonl",
        "{\"timestamp\": 50, \"input_length\": 5, \"output_length\": 2}\n{\"timestamp\": 10, \"input_length\": 5, \"output_length\": 2}\n",
    );
    let sessions = write("sessions.jsonl", "{\"session_id\": \"s\", \"turns\": [{\"prompt\": \"x\"}]}\n{\"session_id\": \"empty\", \"turns\": []}\n");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("broken.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    let images = images.display().to_string();
    for (flags, needles) in [
        (
            vec!["--dataset", &sharegpt],
            vec![
                "bad-sharegpt.json: entry 2 (line 3)",
                "conversations[0] needs a string `value`",
            ],
        ),
        (
            vec!["--trace-replay", &negative],
            vec!["negative.jsonl:1", "`timestamp` is -1"],
        ),
        (
            vec!["--trace-replay", &disorder],
            vec!["disorder.jsonl:2", "before the previous line's 50"],
        ),
        (
            vec!["--dataset", &sessions],
            vec!["sessions.jsonl:2", "session `empty` has no turns"],
        ),
        (
            vec!["--image-dir", &images],
            vec!["broken.jpg", "unreadable image"],
        ),
    ] {
        let error = match config(&sim, out.path(), &flags) {
            Err(e) => e,
            Ok(config) => tracebench::run::execute(config, "bad".into())
                .await
                .unwrap_err(),
        };
        let error = format!("{error:#}");
        for needle in needles {
            assert!(error.contains(needle), "{flags:?}: {error}");
        }
    }
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "no run folder was made"
    );
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_session_turn_carries_its_session_id_and_keeps_the_reply() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
        }
        let body = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \\\"you\\\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(body.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&request).to_lowercase()
    });
    let session = tracebench::workload::sessions::parse(
        &serde_json::json!({"session_id": "s-42", "turns": [{"prompt": "hello"}, {"prompt": "more"}]}),
        Some(4),
        Path::new("."),
    )
    .unwrap();
    let body = std::sync::Arc::new(tracebench::workload::BodyOptions::new(
        tracebench::record::Endpoint::Chat,
        "m",
    ));
    let mut run =
        tracebench::workload::sessions::SessionRun::new(session, 0, false, body, "r".into());
    let (request, _) = run.next_turn().unwrap();
    let options =
        tracebench::client::ClientOptions::new(&url, tracebench::record::Endpoint::Chat, "m", "r");
    let client =
        tracebench::client::Client::new(options, tracebench::clock::RunClock::start()).unwrap();
    let record = client
        .send(
            &request,
            std::time::Instant::now(),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await;
    let head = server.await.unwrap();
    assert!(head.contains("x-session-id: s-42\r\n"), "{head}");
    assert!(record.ok(), "{:?}", record.error);
    assert_eq!(
        record.reply.as_deref(),
        Some("Hi \"you\""),
        "the answer only, not the reasoning"
    );
    assert_eq!(
        (record.session_id.as_deref(), record.turn),
        (Some("s-42"), Some(0))
    );
    assert_eq!(
        record.reasoning_tokens,
        Some(1),
        "one reasoning chunk, chunks counted as tokens"
    );
    assert!(record.ttfo_ms.unwrap() >= record.ttft_ms.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_checked_at_its_start_and_a_later_bad_line_ends_the_run_keeping_its_records(
) {
    let sim = sim(|args| {
        args.ttft_ms = Some(0.0);
        args.itl_ms = Some(0.0);
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 1,500 lines of 12 kB (over the 16 MiB checked whole); line 1,400 is bad.
    let words = "word ".repeat(2400);
    let mut text = String::new();
    for line in 1..=1500 {
        match line {
            1400 => text.push_str("{\"prompt\": 7}\n"),
            _ => text.push_str(&format!(
                "{{\"prompt\": \"{line} {words}\", \"max_tokens\": 1}}\n"
            )),
        }
    }
    let path = dir.path().join("big.jsonl");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    let (outcome, records) = run(
        &sim,
        out.path(),
        &[
            "--dataset",
            &path,
            "--requests",
            "2000",
            "--concurrency",
            "16",
        ],
    )
    .await;
    assert_eq!(
        records.len(),
        1399,
        "every request before the bad line, none after"
    );
    assert!(records.iter().all(|r| r.ok()));
    let manifest: tracebench::run::RunManifest =
        serde_json::from_slice(&std::fs::read(outcome.run_dir.join("run.json")).unwrap()).unwrap();
    let notes = manifest.notes.join("\n");
    assert!(
        notes.contains("is large: its first 1024 entries were checked before the run"),
        "{notes}"
    );
    assert!(
        notes.contains("the workload stopped at request 1399"),
        "{notes}"
    );
    assert!(
        notes.contains("big.jsonl:1400: needs a non-empty string `prompt`"),
        "{notes}"
    );
    sim.shutdown().await.unwrap();
}
