//! `tracebench proxy --tui` in a real terminal: tmux runs the binary in
//! front of the simulator, requests pass through, the screen shows `run`'s
//! dashboard counting them, and `q` stops the proxy, which still writes
//! every record.

mod cli_support;
mod tmux_support;

use cli_support::{free_port, Sim, BIN};
use tmux_support::{tmux, tmux_installed, wait_for};

#[test]
fn the_dashboard_shows_what_passes_and_q_stops_the_proxy() {
    if !tmux_installed() {
        assert!(
            std::env::var_os("TRACEBENCH_REQUIRE_TMUX").is_none(),
            "TRACEBENCH_REQUIRE_TMUX is set but tmux is not installed"
        );
        eprintln!(
            "\n\n*** SKIPPED proxy dashboard: tmux is not installed (apt-get install tmux) ***\n"
        );
        return;
    }
    let sim = Sim::start(&["--ttft-ms", "20", "--itl-ms", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let command = format!(
        "{BIN} proxy --tui --listen {listen} --upstream {} --out {} --run-id tui --no-db --gpu off \
         --server-metrics off --otlp-grpc 127.0.0.1:{} --otlp-http 127.0.0.1:{} --span-wait 1s",
        sim.url,
        dir.path().display(),
        free_port(),
        free_port()
    );
    let socket = format!("tracebench-proxy-test-{}", std::process::id());
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "dash",
            "-x",
            "110",
            "-y",
            "34",
            &command,
        ],
    );
    tmux(
        &socket,
        &["set-option", "-t", "dash", "remain-on-exit", "on"],
    );
    let health = format!("http://{listen}/tracebench/health");
    assert!(
        wait_for(|| std::net::TcpStream::connect(&listen).is_ok()),
        "the proxy listens"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        tracebench::client::install_tls_provider();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        assert!(http.get(&health).send().await.unwrap().status().is_success());
        for _ in 0..6 {
            let body = serde_json::json!({"model": "tracebench-sim", "prompt": "x", "max_tokens": 8, "stream": true});
            let text = http.post(format!("http://{listen}/v1/completions")).json(&body).send().await.unwrap().text().await.unwrap();
            assert!(text.contains("[DONE]"));
        }
    });
    let mut screen = String::new();
    let drawn = wait_for(|| {
        screen = tmux(&socket, &["capture-pane", "-p", "-t", "dash"]);
        screen.contains("tracebench tui") && screen.contains("done 6")
    });
    assert!(drawn, "the dashboard counts the requests:\n{screen}");
    assert!(screen.contains("TTFT"), "{screen}");
    tmux(&socket, &["send-keys", "-t", "dash", "q"]);
    let records = dir.path().join("tui/requests.jsonl");
    let written = wait_for(|| dir.path().join("tui/summary.json").is_file());
    let final_screen = tmux(&socket, &["capture-pane", "-p", "-t", "dash"]);
    tmux(&socket, &["kill-server"]);
    assert!(
        written,
        "q stops the proxy and it writes its folder:\n{final_screen}"
    );
    assert_eq!(std::fs::read_to_string(records).unwrap().lines().count(), 6);
}
