//! Shared by the tests that run a dashboard in a real terminal: tmux on a
//! socket of the test's own, and polling its screen.

use std::process::Command;
use std::time::Duration;

/// `tmux -L SOCKET ARGS`; its standard output.
pub fn tmux(socket: &str, args: &[&str]) -> String {
    let output = Command::new("tmux")
        .arg("-L")
        .arg(socket)
        .args(args)
        .output()
        .expect("run tmux");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn tmux_installed() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Polls `check` every 100 ms, at most 150 times (15 s on a loaded machine).
pub fn wait_for(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..150 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
