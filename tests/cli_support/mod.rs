//! Shared by the tests that drive the real `tracebench` binary: a simulator
//! process (killed on drop), free ports, and readers for the files a run writes.

#![allow(dead_code)] // each test file uses its own subset

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_tracebench");

/// `tracebench sim` on a free port, killed when dropped.
pub struct Sim {
    child: Child,
    pub url: String,
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(BIN)
            .args(["sim", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the simulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("the simulator prints its URL")
            .to_string();
        Sim { child, url }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    tracebench::testing::free_port().expect("a free loopback port")
}

/// Runs `tracebench ARGS` in `dir` and waits for it.
pub fn tracebench(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run tracebench")
}

/// The one run folder under `out`.
pub fn run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("requests.jsonl").exists())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Every line of a JSONL file.
pub fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A JSON file.
pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What `tracebench run` left behind.
pub struct Finished {
    pub out: Output,
    pub dir: PathBuf,
    pub records: Vec<Value>,
}

/// `tracebench run ARGS` in `dir`: asserts its exit code (showing stderr when
/// it differs) and reads back the run folder under `dir/results`.
pub fn run_expecting(dir: &Path, code: i32, args: &[&str]) -> Finished {
    let out = Command::new(BIN)
        .current_dir(dir)
        .arg("run")
        .args(args)
        .output()
        .expect("run tracebench");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(&dir.join("results"));
    let records = lines(&run.join("requests.jsonl"));
    Finished {
        out,
        dir: run,
        records,
    }
}

/// A file of the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// stdout and stderr of a finished command.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks a report page in headless Chromium (`scripts/check-report.sh`); skipped, loudly, without a browser.
pub fn chromium_check(report: &Path) {
    let has_browser = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|b| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {b}"))
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !has_browser {
        assert!(
            std::env::var_os("TRACEBENCH_REQUIRE_BROWSER").is_none(),
            "TRACEBENCH_REQUIRE_BROWSER is set but no chromium"
        );
        eprintln!(
            "*** SKIPPED the browser check of {}: chromium is not installed ***",
            report.display()
        );
        return;
    }
    let output = Command::new("bash")
        .arg(repo("scripts/check-report.sh"))
        .arg(report)
        .output()
        .expect("check-report");
    assert!(output.status.success(), "{}", text(&output));
}

/// The `-- query: NAME` block of docs/sqlite.md.
pub fn documented_query(name: &str) -> String {
    let doc = std::fs::read_to_string(repo("docs/sqlite.md")).unwrap();
    doc.split(&format!("-- query: {name}\n"))
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("documented")
        .to_string()
}

/// Rows of a query on the experiment's history database.
pub fn query(db: &Path, sql: &str) -> Vec<Vec<Value>> {
    let conn = rusqlite::Connection::open(db).expect("open history");
    let mut statement = conn.prepare(sql).expect("prepare");
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            Ok((0..columns)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => n.into(),
                    rusqlite::types::ValueRef::Real(f) => f.into(),
                    rusqlite::types::ValueRef::Text(t) => {
                        String::from_utf8_lossy(t).into_owned().into()
                    }
                    rusqlite::types::ValueRef::Blob(_) => Value::Null,
                })
                .collect())
        })
        .expect("query")
        .map(Result::unwrap)
        .collect()
}
