//! `https://` servers: a real run whose requests go over TLS (reqwest with
//! rustls) to the simulator behind a TLS-terminating relay, with the test CA
//! of `tests/data/tls/` trusted through `SSL_CERT_FILE`.

mod cli_support;

use cli_support::{lines, run_dir, Sim, BIN};
use std::process::Command;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn tls_file(name: &str) -> String {
    format!("{}/tests/data/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Accepts TLS for 127.0.0.1 on a free port and relays every connection to `upstream`.
async fn tls_relay(upstream: String) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(tls_file("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_file("server.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut plain = TcpStream::connect(&upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

/// Runs 6 requests, 3 at a time, against `url` (with `flags`) in a fresh
/// folder; returns the records and run.json.
async fn run_over_tls(url: &str, flags: &[&str]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let run_in = dir.path().to_path_buf();
    let mut args: Vec<String> = ["run", "--url", url, "--requests", "6", "--concurrency", "3"]
        .iter()
        .chain(&[
            "--output-tokens",
            "8",
            "--ignore-eos",
            "--no-tui",
            "--no-db",
        ])
        .chain(&[
            "--trace-source",
            "none",
            "--server-metrics",
            "off",
            "--gpu",
            "off",
        ])
        .map(|s| s.to_string())
        .collect();
    args.extend(flags.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .current_dir(run_in)
            .env("SSL_CERT_FILE", tls_file("ca.pem"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(&dir.path().join("results"));
    let records = lines(&run.join("requests.jsonl"));
    let run_json = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap());
    (records, run_json.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_server_is_benchmarked_over_tls() {
    let sim = Sim::start(&[]);
    let upstream = sim.url.trim_start_matches("http://").trim_end_matches('/');
    let port = tls_relay(upstream.to_string()).await;
    let url = format!("https://127.0.0.1:{port}");
    let (records, run_json) = run_over_tls(&url, &["--no-preconnect"]).await;
    assert_eq!(records.len(), 6);
    for record in &records {
        assert!(record["error"].is_null(), "{record}");
        assert_eq!(record["output_tokens"], 8, "{record}");
        assert_eq!(record["chunks"], 8, "{record}");
        assert!(record["ttft_ms"].as_f64().unwrap() > 0.0, "{record}");
        assert!(record["instants_ns"]["written"].is_u64(), "{record}");
    }
    // The first three opened their connections (TCP, then TLS); the last three reused them.
    let (new, reused): (Vec<_>, Vec<_>) = records
        .iter()
        .map(|r| &r["connection"])
        .partition(|c| c["reused"] == false);
    assert_eq!((new.len(), reused.len()), (3, 3), "{records:?}");
    for connection in new {
        assert!(
            connection["connect_ms"].as_f64().unwrap() > 0.0,
            "{connection}"
        );
        assert!(connection["tls_ms"].as_f64().unwrap() > 0.0, "{connection}");
    }
    for connection in reused {
        assert!(connection["connect_ms"].is_null() && connection["tls_ms"].is_null());
    }
    // The model was discovered over TLS too.
    assert_eq!(
        run_json["server"]["models"]["data"][0]["id"], "tracebench-sim",
        "{run_json}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preconnected_tls_connections_carry_every_request() {
    let sim = Sim::start(&[]);
    let upstream = sim.url.trim_start_matches("http://").trim_end_matches('/');
    let port = tls_relay(upstream.to_string()).await;
    let (records, run_json) = run_over_tls(&format!("https://127.0.0.1:{port}"), &[]).await;
    assert_eq!(records.len(), 6);
    for record in &records {
        assert!(record["error"].is_null(), "{record}");
        assert_eq!(record["connection"]["reused"], true, "{record}");
    }
    let notes = run_json["notes"].to_string();
    assert!(
        notes.contains("preconnect: 3/3 connections opened"),
        "{notes}"
    );
}
