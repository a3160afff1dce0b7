//! The daemon process's own uptime, resident memory and CPU time, read from /proc.

use std::time::Instant;

use ccd_protocol::types::MachineStats;

/// Clock ticks per second of /proc/self/stat's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

pub fn machine(started: Instant) -> MachineStats {
    let rss_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss_kib(&s))
        .map(|kib| kib * 1024);
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_ticks(&s))
        .map(|ticks| ticks / TICKS_PER_SECOND);
    MachineStats {
        uptime_s: started.elapsed().as_secs_f64(),
        rss_bytes,
        cpu_seconds,
    }
}

/// `VmRSS:` of /proc/self/status, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// utime + stime (fields 14 and 15) of /proc/self/stat; the command name before them may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(
            vm_rss_kib("Name:\tccd\nVmRSS:\t   15360 kB\nThreads:\t4\n"),
            Some(15360)
        );
        assert_eq!(vm_rss_kib("Name:\tccd\n"), None);
        let stat = "42 (c c) d) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(cpu_ticks(stat), Some(300.0));
        assert_eq!(cpu_ticks("42 (ccd) S 1"), None);
    }

    #[test]
    fn reads_this_process() {
        let m = machine(Instant::now());
        assert!(m.rss_bytes.is_some_and(|b| b > 0));
        assert!(m.cpu_seconds.is_some());
    }
}
