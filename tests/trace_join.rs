//! The join end to end: the 12 concurrent vLLM requests sent to a running
//! collector over gRPC and joined onto records built from the captured client
//! timings; waiting, what is said when no span can come, and missing reasons;
//! `join RUN_DIR`; and `show`.

mod trace_support;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::time::Duration;
use trace_support::{concurrent12_records, config, record, trace_args, Timing};
use tracebench::cli::Switch;
use tracebench::record::{read_records, rewrite_records, ErrorKind, RequestError, RequestRecord};
use tracebench::testing::fixture_bytes;
use tracebench::trace::span::{decode_protobuf, SpanLine};
use tracebench::trace::{
    join_run_dir, show_request, start_collector, SpanCollector, TraceSource, WaitProgress,
    NO_EXPORT_WAIT,
};

/// What a run does at its end: observe (here all at once), wait, join each record.
async fn finish(
    mut collector: SpanCollector,
    records: &mut [RequestRecord],
    progress: &mut Vec<WaitProgress>,
) -> (
    tracebench::trace::WaitOutcome,
    tracebench::trace::JoinReport,
) {
    for record in records.iter() {
        collector.observe(record);
    }
    let outcome = collector.wait(|p| progress.push(p)).await.unwrap();
    for record in records.iter_mut() {
        collector.join(record);
    }
    (outcome, collector.report())
}

#[tokio::test]
async fn concurrent_12_requests_join_through_the_collector() {
    let run_dir = tempfile::tempdir().unwrap();
    let mut args = trace_args(TraceSource::Otlp, Duration::from_secs(15));
    args.jaeger_ui = Some("http://localhost:16686".into());
    let collector = start_collector(&config(&args), run_dir.path())
        .await
        .unwrap();
    let (grpc_addr, _) = collector.receiver_addrs().expect("the otlp source listens");

    let mut client = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    client
        .export(decode_protobuf(&fixture_bytes("vllm/concurrent-12.spans.pb")).unwrap())
        .await
        .unwrap();
    // A span of a trace no request sent (and whose request id matches none).
    client
        .export(decode_protobuf(&fixture_bytes("vllm/untraced-chat.spans.pb")).unwrap())
        .await
        .unwrap();

    let mut phases = None;
    for _ in 0..500 {
        phases = collector.live_phases().filter(|p| p.spans == 13);
        if phases.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let phases = phases.expect("all 13 request spans reach the live means");
    assert!(phases.queue_ms > 0.0 && phases.prefill_ms > 0.0 && phases.decode_ms > 0.0);
    assert_eq!(collector.spans_seen(), 13);

    let mut records = concurrent12_records();
    let mut progress = Vec::new();
    let (outcome, report) = finish(collector, &mut records, &mut progress).await;
    assert_eq!(outcome.notes, Vec::<String>::new());
    assert_eq!(outcome.receiver, report.receiver);
    assert_eq!(
        (
            report.joined,
            report.missing,
            report.duplicates,
            report.unrelated_spans
        ),
        (12, 0, 0, 1)
    );
    assert_eq!(report.receiver.unwrap().accepted_spans, 13);
    assert_eq!(progress.last().map(|p| p.missing), Some(0));

    let mut queue_tiers: Vec<i64> = Vec::new();
    for r in &records {
        let server = r.server.as_ref().expect("joined");
        assert_eq!(server.engine, "vllm");
        assert_eq!(
            server.request_id, r.response_id,
            "span and response agree on the id"
        );
        assert_eq!(
            r.trace_url,
            Some(format!(
                "http://localhost:16686/trace/{}",
                r.trace_id.unwrap()
            ))
        );
        let d = r.decomposition.as_ref().expect("decomposed");
        let sum = d.network_ms.unwrap()
            + d.frontend_ms.unwrap()
            + d.queue_ms.unwrap()
            + d.prefill_ms.unwrap();
        let ttft = r.ttft_ms.unwrap();
        assert!(
            (sum - ttft).abs() < 1.0,
            "{}: {sum} vs {ttft}",
            r.request_id
        );
        let arrival = d.arrival_delay_ms.unwrap();
        assert!(
            arrival > 0.0 && arrival < ttft,
            "{}: arrival {arrival}",
            r.request_id
        );
        queue_tiers.push(server.queue_ms.unwrap().round() as i64);
    }
    queue_tiers.sort_unstable();
    queue_tiers.dedup();
    for tier in [0, 61, 118] {
        assert!(
            queue_tiers.contains(&tier),
            "{tier} ms not in {queue_tiers:?}"
        );
    }

    let lines = std::fs::read_to_string(run_dir.path().join("spans.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        13,
        "unrelated spans stay in spans.jsonl"
    );
}

fn now_timing() -> Timing {
    Timing {
        sent_unix_ns: tracebench::units::unix_now_ns(),
        sent: 0,
        first_token: 40_000_000,
        last_token: 90_000_000,
        end: 91_000_000,
    }
}

/// A lost request, one that failed, and one sent without a trace header.
fn lost_failed_untraced() -> Vec<RequestRecord> {
    let timing = now_timing();
    let mut failed = record(
        "failed",
        Some("0102030405060708090a0b0c0d0e0f10"),
        Some("0102030405060708"),
        &timing,
    );
    failed.error = Some(RequestError {
        kind: ErrorKind::Connect,
        message: "connection refused".into(),
        status: None,
        body_excerpt: None,
    });
    vec![
        record(
            "lost",
            Some("1112131415161718191a1b1c1d1e1f20"),
            Some("1112131415161718"),
            &timing,
        ),
        failed,
        record("untraced", None, None, &timing),
    ]
}

fn assert_other_reasons(records: &[RequestRecord]) {
    assert_eq!(
        records[1].server_missing_reason.as_deref(),
        Some("request failed before the server answered (connect)")
    );
    assert_eq!(
        records[2].server_missing_reason.as_deref(),
        Some("tracing_off")
    );
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_gets_no_export_stops_early_and_says_what_to_check() {
    let run_dir = tempfile::tempdir().unwrap();
    let args = trace_args(TraceSource::Otlp, Duration::from_secs(60));
    let collector = start_collector(&config(&args), run_dir.path())
        .await
        .unwrap();
    let (grpc, http) = collector.receiver_addrs().unwrap();
    let mut records = lost_failed_untraced();
    let mut progress: Vec<WaitProgress> = Vec::new();
    let started = tokio::time::Instant::now();
    let (outcome, report) = finish(collector, &mut records, &mut progress).await;
    let waited = started.elapsed();
    assert!(
        waited <= NO_EXPORT_WAIT && waited > NO_EXPORT_WAIT - Duration::from_secs(1),
        "stopped {NO_EXPORT_WAIT:?} after the last response, not after 60s: {waited:?}"
    );
    assert_eq!((report.joined, report.missing), (0, 3));
    assert_eq!(
        records[0].server_missing_reason.as_deref(),
        Some("no span arrived: the receiver got no OTLP export")
    );
    assert_other_reasons(&records);
    assert_eq!(outcome.notes.len(), 1, "{:?}", outcome.notes);
    let note = &outcome.notes[0];
    for needle in [
        format!("grpc://{grpc}"),
        format!("http://{http}/v1/traces"),
        "--otlp-traces-endpoint".to_string(),
        "--enable-trace".to_string(),
        "--span-wait 1m".to_string(),
    ] {
        assert!(note.contains(&needle), "{needle:?} not in {note}");
    }
    // Only the successful traced request is waited for; the countdown runs down to zero.
    assert!(progress.iter().all(|p| p.missing == 1));
    assert!(
        progress.len() >= 90,
        "polled about every 100 ms: {}",
        progress.len()
    );
    assert!(progress
        .windows(2)
        .all(|w| w[1].remaining <= w[0].remaining));
    assert_eq!(progress.last().unwrap().remaining, Duration::ZERO);
}

#[tokio::test]
async fn spans_of_other_traces_only_are_waited_for_in_full_then_named() {
    let run_dir = tempfile::tempdir().unwrap();
    let args = trace_args(TraceSource::Otlp, Duration::from_secs(1));
    let collector = start_collector(&config(&args), run_dir.path())
        .await
        .unwrap();
    let (grpc, _) = collector.receiver_addrs().unwrap();
    // Someone else's span: a trace none of the requests sent.
    TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .export(decode_protobuf(&fixture_bytes("vllm/untraced-chat.spans.pb")).unwrap())
        .await
        .unwrap();
    let mut records = lost_failed_untraced();
    let mut progress: Vec<WaitProgress> = Vec::new();
    let (outcome, report) = finish(collector, &mut records, &mut progress).await;
    assert_eq!(
        (report.joined, report.missing, report.unrelated_spans),
        (0, 3, 1)
    );
    assert_eq!(
        records[0].server_missing_reason.as_deref(),
        Some("no span arrived within 1s")
    );
    assert_other_reasons(&records);
    assert_eq!(outcome.notes.len(), 1, "{:?}", outcome.notes);
    let note = &outcome.notes[0];
    assert!(note.contains("got 1 spans"), "{note}");
    assert!(note.contains("traceparent"), "{note}");
    assert_eq!(
        progress.last().unwrap().remaining,
        Duration::ZERO,
        "the whole --span-wait"
    );
}

#[tokio::test]
async fn tracing_off_is_inert() {
    let run_dir = tempfile::tempdir().unwrap();
    for (source, header) in [
        (TraceSource::None, Switch::On),
        (TraceSource::Otlp, Switch::Off),
    ] {
        let mut args = trace_args(source, Duration::from_secs(15));
        args.trace_header = header;
        let collector = start_collector(&config(&args), run_dir.path())
            .await
            .unwrap();
        assert!(collector.receiver_addrs().is_none());
        let mut records = vec![record("a", None, None, &now_timing())];
        let mut progress = Vec::new();
        let (outcome, report) = finish(collector, &mut records, &mut progress).await;
        assert!(progress.is_empty());
        assert_eq!(outcome, Default::default());
        assert_eq!(report, Default::default());
        assert_eq!(
            records[0].server_missing_reason.as_deref(),
            Some("tracing_off")
        );
    }
}

#[tokio::test]
async fn join_run_dir_rejoins_from_spans_jsonl_and_show_renders_it() {
    let run_dir = tempfile::tempdir().unwrap();
    let mut records = concurrent12_records();
    // The fallback by request id: a proxy dropped the traceparent of request 5.
    records[4].trace_id = Some("99999999999999999999999999999999".parse().unwrap());
    rewrite_records(&run_dir.path().join("requests.jsonl"), &records).unwrap();
    let request = decode_protobuf(&fixture_bytes("vllm/concurrent-12.spans.pb")).unwrap();
    let lines: Vec<String> = SpanLine::all_of(&request.resource_spans)
        .iter()
        .map(|l| serde_json::to_string(l).unwrap())
        .collect();
    std::fs::write(run_dir.path().join("spans.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(
        run_dir.path().join("run.json"),
        r#"{"schema":"tracebench.run/1","command_line":"tracebench run --url http://127.0.0.1:8000 --concurrency 12"}"#,
    )
    .unwrap();

    let mut args = trace_args(TraceSource::Otlp, Duration::from_secs(1));
    args.jaeger_ui = Some("http://localhost:16686/".into());
    let report = join_run_dir(run_dir.path(), &config(&args)).await.unwrap();
    assert_eq!(
        (report.joined, report.missing, report.unrelated_spans),
        (12, 0, 0)
    );
    let joined = read_records(&run_dir.path().join("requests.jsonl")).unwrap();
    assert!(joined
        .iter()
        .all(|r| r.server.is_some() && r.server_missing_reason.is_none()));
    assert_eq!(
        joined[4].server.as_ref().unwrap().request_id,
        joined[4].response_id
    );

    let text = show_request(run_dir.path(), &joined[0].request_id).unwrap();
    let server = joined[0].server.as_ref().unwrap();
    for needle in [
        format!("`{}`", joined[0].request_id),
        "model `tiny`".to_string(),
        format!("| queue | {:.3} |", server.queue_ms.unwrap()),
        format!("| ttft | {:.3} |", joined[0].ttft_ms.unwrap()),
        "TTFT decomposition".to_string(),
        format!(
            "http://localhost:16686/trace/{}",
            joined[0].trace_id.unwrap()
        ),
        "tracebench run --url http://127.0.0.1:8000 --concurrency 12".to_string(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
    assert!(show_request(run_dir.path(), "no-such-request").is_err());

    std::fs::remove_file(run_dir.path().join("spans.jsonl")).unwrap();
    let error = join_run_dir(run_dir.path(), &config(&args))
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("--trace-source"), "{error:#}");
}
