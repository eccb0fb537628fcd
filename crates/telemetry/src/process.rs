//! The standard `process_*` metrics (CPU time, resident and virtual memory, open and maximum
//! file descriptors, start time) under the names every Prometheus client library uses, read
//! from `/proc` on each scrape. Off Linux, or when `/proc` cannot be read, the scrape simply
//! lacks them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What one read of `/proc/self` says about this process, in base units.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// From the text of `/proc/self/stat` and `/proc/self/status` and the `btime` of
    /// `/proc/stat` (boot time, seconds since the epoch). `None` for text that is not theirs.
    pub fn parse(stat: &str, status: &str, boot_time: u64) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces or parentheses
        // itself: the fields that follow start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); field n is fields[n - 3].
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = USER_HZ as f64;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
            Some(line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()? * 1024)
        };
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
            virtual_memory_bytes: kib("VmSize")?,
            resident_memory_bytes: kib("VmRSS")?,
        })
    }

    /// This process now; `None` where `/proc` is not there.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot_time = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Self::parse(&stat, &status, boot_time)
    }
}

/// Clock ticks per second of the times in `/proc/<pid>/stat`: the kernel's `USER_HZ`, which is
/// 100 on every architecture Linux runs containers on (it is ABI, unlike the kernel's own HZ).
const USER_HZ: u64 = 100;

/// The `btime` line of `/proc/stat`.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Open descriptors, and the soft limit on them (`Max open files` of `/proc/self/limits`).
fn descriptors() -> Option<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let max = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok())?;
    Some((open, max))
}

/// Registers with [`prometheus_client::registry::Registry::register_collector`]: every scrape
/// reads `/proc` afresh.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(s) = ProcessStats::read() {
            let cpu = ConstCounter::new(s.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let gauges = [
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    s.resident_memory_bytes as f64,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    s.virtual_memory_bytes as f64,
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds",
                    s.start_time_seconds,
                ),
            ];
            for (name, help, value) in gauges {
                let g = ConstGauge::new(value);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        if let Some((open, max)) = descriptors() {
            for (name, help, value) in [
                ("process_open_fds", "Number of open file descriptors", open),
                ("process_max_fds", "Maximum number of open file descriptors", max),
            ] {
                let g = ConstGauge::new(value);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_cpu_memory_and_start_time_in_base_units() {
        // A command name with a space and a parenthesis, as `(tokio-rt (1))` could be.
        let stat = "4242 (cloud worker)) S 1 4242 4242 0 -1 4194560 8000 0 0 0 \
                    250 150 0 0 20 0 9 0 12000 734003200 51200 18446744073709551615";
        let status = "Name:\tcloud-worker\nVmPeak:\t  720000 kB\nVmSize:\t  716800 kB\nVmRSS:\t  204800 kB\n";
        let s = ProcessStats::parse(stat, status, 1_700_000_000).expect("parses");
        assert_eq!(s.cpu_seconds, 4.0, "(250 + 150) ticks at 100 per second");
        assert_eq!(s.start_time_seconds, 1_700_000_120.0);
        assert_eq!(s.virtual_memory_bytes, 716_800 * 1024);
        assert_eq!(s.resident_memory_bytes, 204_800 * 1024);
        assert_eq!(ProcessStats::parse("garbage", status, 0), None);
        assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
    }

    #[test]
    fn this_process_reports_itself() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let text = crate::metrics::render(&registry);
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            line[name.len()..].trim().parse().expect("a number")
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0, "{text}");
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(value("process_cpu_seconds_total") >= 0.0, "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds counter"), "{text}");
    }
}
