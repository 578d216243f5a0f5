//! The async runtime every command runs on: one worker thread per core by
//! default, and workers that yield the core for a moment before they sleep.
//!
//! Waking a sleeping core is slow on virtual machines: on a 2-vCPU VM a
//! thread blocked on a pipe took 17 to 50 µs to wake at the median and up to
//! 4 ms at the tail, against a few µs on bare metal. A client that sleeps whenever
//! it catches up then falls a whole token interval behind on some streams,
//! and the kernel hands it two chunks in one read. So a worker that runs out
//! of work first calls `sched_yield` in a loop for `idle_spin` (50 µs by
//! default, about what one wake-up costs there): its core stays awake, other
//! threads on that core run, and events that come meanwhile are picked up
//! without a wake-up. Receive instants come from the kernel, so the wait adds
//! no error to what is measured.

use std::time::{Duration, Instant};

/// Builds the multi-threaded runtime with `threads` workers that yield for
/// `idle_spin` before each sleep (`Duration::ZERO`: sleep at once).
pub fn build(threads: usize, idle_spin: Duration) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).enable_all();
    if !idle_spin.is_zero() {
        builder.on_thread_park(move || yield_for(idle_spin));
    }
    builder.build()
}

/// Gives the core to any other runnable thread, again and again, for `window`.
fn yield_for(window: Duration) {
    let start = Instant::now();
    while start.elapsed() < window {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_tasks_with_and_without_the_idle_spin() {
        for idle_spin in [Duration::ZERO, Duration::from_micros(50)] {
            let runtime = build(2, idle_spin).expect("runtime");
            let sum = runtime.block_on(async {
                let tasks: Vec<_> = (1..=10u64)
                    .map(|n| {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(n)).await;
                            n
                        })
                    })
                    .collect();
                let mut sum = 0;
                for task in tasks {
                    sum += task.await.expect("task");
                }
                sum
            });
            assert_eq!(sum, 55);
        }
    }

    #[test]
    fn the_spin_lasts_its_window() {
        let start = Instant::now();
        yield_for(Duration::from_millis(2));
        assert!(start.elapsed() >= Duration::from_millis(2));
    }
}
