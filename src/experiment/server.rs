//! The server's lifecycle in an experiment: launch the alias's command in
//! its own process group (output to a log in the experiment folder), time
//! spawn → port open → ready, make the reset and profiler calls around
//! points, and stop it (SIGTERM to the group, SIGKILL after a grace period).

use super::file::Lifecycle;
use crate::units::parse_duration;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a start took, seconds from spawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStart {
    /// The TCP port accepted a connection.
    pub port_open_s: Option<f64>,
    /// The readiness URL answered 200.
    pub ready_s: f64,
    /// The first `GET /v1/models` after ready answered 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models_s: Option<f64>,
    /// The first token of the first request after the start.
    pub first_token_s: Option<f64>,
    /// The server's output, relative to the experiment folder.
    pub log: String,
    #[serde(skip)]
    pub spawned_unix_ns: u64,
}

/// One call made to the server around a point, and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub call: String,
    pub status: Option<u16>,
    /// The answer's body (first 300 bytes), or why there was none.
    pub answer: String,
}

/// The server an experiment started and still runs.
struct Running {
    command: String,
    child: Child,
    grace: Duration,
}

/// Starts, restarts and stops the experiment's servers (one at a time).
pub struct Servers {
    dir: PathBuf,
    running: Option<Running>,
    starts: u32,
    http: reqwest::Client,
}

/// Holds the process group of the running server, so a resumed experiment
/// can stop a server its killed predecessor left behind.
const PID_FILE: &str = "running.pgid";

impl Servers {
    /// The experiment's servers, logging under `dir`; stops a server a
    /// previous, killed run of the experiment left running.
    pub async fn new(dir: &Path) -> anyhow::Result<Self> {
        if let Some(pgid) = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            eprintln!("experiment: stopping the server (process group {pgid}) the interrupted run left behind");
            signal_group(pgid, libc::SIGTERM);
            for _ in 0..100 {
                if !group_alive(pgid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            signal_group(pgid, libc::SIGKILL);
            let _ = std::fs::remove_file(dir.join(PID_FILE));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            running: None,
            starts: 0,
            http: crate::client::http_client()?,
        })
    }

    /// Makes sure `command` is the server running (restarting when asked
    /// or when the command differs); the cold start when it started one.
    pub async fn ensure(
        &mut self,
        alias: &str,
        lifecycle: &Lifecycle,
        command: &str,
        url: &str,
        restart: bool,
    ) -> Result<Option<ColdStart>, String> {
        if let Some(running) = &mut self.running {
            let alive = matches!(running.child.try_wait(), Ok(None));
            if running.command == command && alive && !restart {
                return Ok(None);
            }
        }
        self.stop().await;
        self.starts += 1;
        let log = self
            .dir
            .join(format!("server-{:02}-{alias}.log", self.starts));
        let log_name = log
            .strip_prefix(&self.dir)
            .map(|p| format!("servers/{}", p.display()))
            .unwrap_or_default();
        let grace = duration(lifecycle.stop_grace.as_ref().map(|d| d.value.as_str()), 10)?;
        let timeout = duration(
            lifecycle.ready_timeout.as_ref().map(|d| d.value.as_str()),
            600,
        )?;
        let port = super::point::url_port(url).ok_or_else(|| format!("{url} names no port"))?;
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "127.0.0.1".into());
        if port_open(&host, port).await {
            return Err(format!(
                "{host}:{port} already accepts connections before the server is launched: another process holds the port"
            ));
        }
        let spawned = Instant::now();
        let spawned_unix_ns = crate::units::unix_now_ns();
        let child = spawn(command, lifecycle, &log)?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(self.dir.join(PID_FILE), pid.to_string());
        }
        let mut running = Running {
            command: command.to_string(),
            child,
            grace,
        };
        let ready_url = ready_url(url, lifecycle.ready_url.as_deref());
        let waited = self
            .wait_ready(&mut running, &host, port, &ready_url, spawned, timeout)
            .await;
        self.running = Some(running);
        match waited {
            Ok((port_open_s, ready_s)) => Ok(Some(ColdStart {
                port_open_s,
                ready_s,
                models_s: self.models_answered(url, spawned).await,
                first_token_s: None,
                log: log_name,
                spawned_unix_ns,
            })),
            Err(reason) => {
                self.stop().await;
                Err(format!("{reason} (server log: {log_name})"))
            }
        }
    }

    /// Polls the port, then the readiness URL, until ready, exited or timed out.
    async fn wait_ready(
        &self,
        running: &mut Running,
        host: &str,
        port: u16,
        ready_url: &str,
        spawned: Instant,
        timeout: Duration,
    ) -> Result<(Option<f64>, f64), String> {
        let mut port_open_s = None;
        loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!("the server exited ({status}) before it was ready"));
            }
            if spawned.elapsed() > timeout {
                return Err(format!(
                    "the server was not ready within {}",
                    humantime::format_duration(timeout)
                ));
            }
            if port_open_s.is_none() && port_open(host, port).await {
                port_open_s = Some(spawned.elapsed().as_secs_f64());
            }
            if port_open_s.is_some() {
                let answer = self
                    .http
                    .get(ready_url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status().is_success()) {
                    return Ok((port_open_s, spawned.elapsed().as_secs_f64()));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Seconds from spawn until the first `GET /v1/models` answered 2xx.
    async fn models_answered(&self, url: &str, spawned: Instant) -> Option<f64> {
        let call = self.call(url, "GET /v1/models").await;
        call.status
            .filter(|s| (200..300).contains(s))
            .map(|_| spawned.elapsed().as_secs_f64())
    }

    /// Makes each call (`POST /reset_prefix_cache`) against `url`.
    pub async fn calls(&self, url: &str, calls: &[String]) -> Vec<Call> {
        let mut answers = Vec::new();
        for call in calls {
            answers.push(self.call(url, call).await);
        }
        answers
    }

    /// One `METHOD /path` (or `METHOD http://...`) call.
    pub async fn call(&self, url: &str, call: &str) -> Call {
        let (method, target) = call.trim().split_once(' ').unwrap_or(("POST", call.trim()));
        let target = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else {
            format!("{}{}", url.trim_end_matches('/'), target)
        };
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .unwrap_or(reqwest::Method::POST);
        let answer = self
            .http
            .request(method, &target)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let (status, answer) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                (Some(status), body.chars().take(300).collect())
            }
            Err(e) => (None, e.to_string()),
        };
        Call {
            call: call.to_string(),
            status,
            answer,
        }
    }

    /// Stops the running server, if any: SIGTERM to its group, then SIGKILL.
    pub async fn stop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        if let Some(pid) = running.child.id() {
            signal_group(pid, libc::SIGTERM);
            let exited = tokio::time::timeout(running.grace, running.child.wait()).await;
            if exited.is_err() {
                signal_group(pid, libc::SIGKILL);
                let _ = running.child.wait().await;
            }
            // Children that outlived the shell's exit; then wait until the
            // whole group is gone, so its port is free for the next start.
            signal_group(pid, libc::SIGKILL);
            for _ in 0..100 {
                if !group_alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
    }
}

/// `text` as a duration, or `default_s` seconds.
fn duration(text: Option<&str>, default_s: u64) -> Result<Duration, String> {
    match text {
        Some(text) => parse_duration(text).map_err(|e| e.0),
        None => Ok(Duration::from_secs(default_s)),
    }
}

/// The readiness URL: a full URL, a path on the server, or `/health`.
fn ready_url(url: &str, ready: Option<&str>) -> String {
    match ready {
        Some(r) if r.starts_with("http://") || r.starts_with("https://") => r.to_string(),
        Some(path) => format!("{}{path}", url.trim_end_matches('/')),
        None => format!("{}/health", url.trim_end_matches('/')),
    }
}

/// `sh -c command` in a new process group, output appended to `log`.
fn spawn(command: &str, lifecycle: &Lifecycle, log: &Path) -> Result<Child, String> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .envs(&lifecycle.env)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl(2) only, between fork and exec: the server (which the
    // shell execs) gets SIGTERM if tracebench dies without stopping it.
    unsafe {
        shell.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    shell
        .spawn()
        .map_err(|e| format!("cannot start `{command}`: {e}"))
}

/// True while any process of the group lives.
fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(-(pgid as i32), 0) == 0 }
}

fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process group we created; no memory is touched.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

async fn port_open(host: &str, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(Duration::from_millis(500), connect).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_urls() {
        assert_eq!(ready_url("http://h:1/", None), "http://h:1/health");
        assert_eq!(
            ready_url("http://h:1", Some("/v1/models")),
            "http://h:1/v1/models"
        );
        assert_eq!(
            ready_url("http://h:1", Some("http://o:2/r")),
            "http://o:2/r"
        );
    }
}
