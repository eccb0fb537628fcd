//! How many cores this process may use: the CPU quota of its cgroup (a container's CPU limit),
//! else the cores the machine offers. ONNX Runtime sizes its thread pool by this, so a pod
//! limited to two cores on a sixteen-core edge device runs two threads instead of sixteen that
//! would only be throttled.
//!
//! cgroup v2: `cpu.max` holds `QUOTA PERIOD` (or `max PERIOD`). cgroup v1: `cpu.cfs_quota_us`
//! (-1 for none) and `cpu.cfs_period_us`. The limit is rounded up: 1.5 cores run 2 threads.

use std::path::Path;

/// Cores allowed by a cgroup v2 `cpu.max`; `None` when unlimited or unreadable.
pub fn from_cpu_max(text: &str) -> Option<usize> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: u64 = fields.next()?.parse().ok()?;
    if quota == "max" {
        return None;
    }
    cores(quota.parse().ok()?, period)
}

/// Cores allowed by cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
pub fn from_cfs(quota: &str, period: &str) -> Option<usize> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    cores(u64::try_from(quota).ok()?, period)
}

fn cores(quota: u64, period: u64) -> Option<usize> {
    if quota == 0 || period == 0 {
        return None;
    }
    Some(quota.div_ceil(period).max(1) as usize)
}

/// The quota of this process's cgroup, read under `root` (normally `/`): the cgroup v2 file of
/// the process's own group, then the v1 `cpu` controller's files, each at the mount point (what
/// a container sees) and at the process's own group path.
pub fn quota_cores(root: &Path) -> Option<usize> {
    let read = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/'))).ok();
    let groups = read("proc/self/cgroup").unwrap_or_default();
    let mut v2 = vec!["sys/fs/cgroup/cpu.max".to_string()];
    let mut v1 = vec!["sys/fs/cgroup/cpu".to_string(), "sys/fs/cgroup/cpu,cpuacct".to_string()];
    for line in groups.lines() {
        // `ID:CONTROLLERS:PATH`; v2 has an empty controller list.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(c), Some(p)) => (id, c, p.trim_start_matches('/')),
            _ => continue,
        };
        if controllers.is_empty() && !path.is_empty() {
            v2.insert(0, format!("sys/fs/cgroup/{path}/cpu.max"));
        } else if controllers.split(',').any(|c| c == "cpu") && !path.is_empty() {
            v1.insert(0, format!("sys/fs/cgroup/{controllers}/{path}"));
            v1.insert(0, format!("sys/fs/cgroup/cpu/{path}"));
        }
    }
    v2.iter().find_map(|p| read(p).and_then(|t| from_cpu_max(&t))).or_else(|| {
        v1.iter().find_map(|dir| {
            let quota = read(&format!("{dir}/cpu.cfs_quota_us"))?;
            let period = read(&format!("{dir}/cpu.cfs_period_us"))?;
            from_cfs(&quota, &period)
        })
    })
}

/// Cores to size thread pools by: the cgroup quota when there is one, never more than the
/// machine's cores.
pub fn usable_cores() -> usize {
    let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
    quota_cores(Path::new("/")).map_or(machine, |q| q.min(machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_round_up_to_whole_cores_and_unlimited_is_none() {
        assert_eq!(from_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(from_cpu_max("150000 100000"), Some(2));
        assert_eq!(from_cpu_max("50000 100000"), Some(1));
        assert_eq!(from_cpu_max("max 100000"), None);
        assert_eq!(from_cfs("-1", "100000"), None);
        assert_eq!(from_cfs("250000\n", "100000\n"), Some(3));
        assert_eq!(from_cfs("garbage", "100000"), None);
    }

    #[test]
    fn a_containers_cgroup_files_are_found_for_v1_and_v2() {
        let v1 = tempfile::tempdir().expect("tempdir");
        let dir = v1.path().join("sys/fs/cgroup/cpu/kubepods/pod1/c1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("cpu.cfs_quota_us"), "150000").expect("write");
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000").expect("write");
        std::fs::create_dir_all(v1.path().join("proc/self")).expect("mkdir");
        std::fs::write(
            v1.path().join("proc/self/cgroup"),
            "12:memory:/kubepods/pod1/c1\n4:cpu,cpuacct:/kubepods/pod1/c1\n",
        )
        .expect("write");
        assert_eq!(quota_cores(v1.path()), Some(2));

        let v2 = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(v2.path().join("sys/fs/cgroup")).expect("mkdir");
        std::fs::write(v2.path().join("sys/fs/cgroup/cpu.max"), "300000 100000").expect("write");
        std::fs::create_dir_all(v2.path().join("proc/self")).expect("mkdir");
        std::fs::write(v2.path().join("proc/self/cgroup"), "0::/\n").expect("write");
        assert_eq!(quota_cores(v2.path()), Some(3), "a container sees its own group at the root");

        let none = tempfile::tempdir().expect("tempdir");
        assert_eq!(quota_cores(none.path()), None);
    }
}
