//! This process's CPU time and peak memory, and the CPU time a hypervisor
//! stole from the machine's cores, read from the kernel.

/// User + system CPU seconds of this process so far.
pub(super) fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds stolen from all of this machine's cores so far: the `steal`
/// column of `/proc/stat` (time a virtual machine's CPUs wanted to run while the
/// hypervisor ran something else). `None` off Linux or on kernels without it.
pub(super) fn stolen_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stolen_from_stat(&stat, clock_ticks_per_second())
}

fn stolen_from_stat(stat: &str, ticks_per_s: f64) -> Option<f64> {
    // "cpu  user nice system idle iowait irq softirq steal ...", in clock ticks.
    let ticks = stat
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))?
        .split_whitespace()
        .nth(7)?
        .parse::<f64>()
        .ok()?;
    Some(ticks / ticks_per_s)
}

/// Clock ticks per second of `/proc` CPU times.
pub(super) fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Resets the kernel's peak-RSS mark so each level reports its own peak.
pub(super) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, MB.
pub(super) fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stolen_time_is_the_eighth_figure_of_the_cpu_line() {
        let stat = "cpu  1450075 67744 300341 1165474 24945 0 36050 10490 0 0\n\
                    cpu0 725000 33000 150000 582000 12000 0 18000 5245 0 0\n";
        assert_eq!(stolen_from_stat(stat, 100.0), Some(104.9));
        assert_eq!(stolen_from_stat("cpu  1 2 3 4\n", 100.0), None);
        assert_eq!(stolen_from_stat("intr 5\n", 100.0), None);
    }
}
