//! The standard process metrics (the names every Prometheus client library
//! uses, so stock dashboards and alerts work): memory, CPU time, file
//! descriptors and start time, read from `/proc/self` at scrape time.
//!
//! Reading at scrape time keeps them exact without a background loop; a
//! scrape every few seconds costs a few small `/proc` reads and one
//! directory listing of `/proc/self/fd`. Where `/proc` cannot be read (not
//! Linux, or a restricted sandbox) the affected series are left out rather
//! than reported as zero, so an alert on them cannot fire on made-up values.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::fs;

/// Clock ticks per second in `/proc/<pid>/stat`: Linux reports CPU times and
/// the start time to user space in USER_HZ, which is 100 on every
/// architecture Rust targets (it is part of the kernel's user-space ABI,
/// independent of the kernel's internal HZ).
const USER_HZ: f64 = 100.0;

/// Registered once per process by [`crate::Metrics::new`].
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// The process's limit on open file descriptors (the soft limit), if
/// `/proc` tells.
pub fn max_open_files() -> Option<u64> {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_max_open_files(&text))
}

/// One scrape's readings; `None` where `/proc` did not tell.
#[derive(Debug, Default, PartialEq)]
struct Readings {
    resident_memory_bytes: Option<u64>,
    virtual_memory_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl Readings {
    fn read() -> Readings {
        let status = fs::read_to_string("/proc/self/status").ok();
        let stat = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| parse_stat(&text));
        let boot_time = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text));
        Readings {
            resident_memory_bytes: status.as_deref().and_then(|s| status_kib(s, "VmRSS:")),
            virtual_memory_bytes: status.as_deref().and_then(|s| status_kib(s, "VmSize:")),
            cpu_seconds: stat.map(|s| (s.user_ticks + s.system_ticks) as f64 / USER_HZ),
            open_fds: fs::read_dir("/proc/self/fd")
                .ok()
                // The listing holds its own descriptor open while it runs;
                // that one is not the process's, so it is not counted.
                .map(|entries| (entries.count() as u64).saturating_sub(1)),
            max_fds: fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|text| parse_max_open_files(&text)),
            start_time_seconds: match (stat, boot_time) {
                (Some(stat), Some(boot)) => Some(boot as f64 + stat.start_ticks as f64 / USER_HZ),
                _ => None,
            },
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let readings = Readings::read();
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                readings.resident_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                readings.virtual_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                readings.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                readings.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                readings.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Some(seconds) = readings.cpu_seconds {
            // The text encoder appends `_total` to a counter's name.
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The fields of `/proc/self/stat` that are used.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    user_ticks: u64,
    system_ticks: u64,
    /// Since boot.
    start_ticks: u64,
}

/// `/proc/<pid>/stat`: `pid (comm) state ppid ...`. The command name may
/// hold spaces and parentheses, so fields are counted after the last `)`:
/// there, field 3 (state) is the first; utime is field 14, stime 15,
/// starttime 22 (proc(5)).
fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(Stat {
        user_ticks: field(14)?,
        system_ticks: field(15)?,
        start_ticks: field(22)?,
    })
}

/// `btime <seconds>` of `/proc/stat`: boot time since the Unix epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// A `Key:   1234 kB` line of `/proc/self/status`, in bytes.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix(key))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of the `Max open files` line of `/proc/self/limits`
/// (`unlimited` gives none: there is no limit to be near).
fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name_even_with_spaces_and_parentheses() {
        let text = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2512 0 0 0 \
                    731 245 0 0 20 0 9 0 18734 1234567 890 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                user_ticks: 731,
                system_ticks: 245,
                start_ticks: 18734,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1"), None);
        assert_eq!(parse_stat("no command name"), None);
    }

    #[test]
    fn memory_comes_from_status_in_bytes() {
        let text =
            "Name:\tsse-edge\nVmPeak:\t  999 kB\nVmSize:\t  204800 kB\nVmRSS:\t    5120 kB\n";
        assert_eq!(status_kib(text, "VmRSS:"), Some(5120 * 1024));
        assert_eq!(status_kib(text, "VmSize:"), Some(204_800 * 1024));
        assert_eq!(status_kib(text, "VmSwap:"), None);
    }

    #[test]
    fn the_soft_open_files_limit_is_the_maximum() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63421                63421                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        let text = "cpu  1 2 3\nintr 5\nctxt 99\nbtime 1700000000\nprocesses 77\n";
        assert_eq!(parse_boot_time(text), Some(1_700_000_000));
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausible_values() {
        let readings = Readings::read();
        assert!(readings.resident_memory_bytes.unwrap() > 0);
        assert!(readings.virtual_memory_bytes.unwrap() >= readings.resident_memory_bytes.unwrap());
        // stdin, stdout, stderr at least, and the file opened here.
        let file = fs::File::open("/proc/self/status").unwrap();
        let open = Readings::read().open_fds.unwrap();
        assert!(open >= 4, "open fds {open}");
        drop(file);
        assert!(readings.max_fds.unwrap_or(u64::MAX) >= open);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = readings.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "start {started}, now {now}"
        );
    }
}
