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
