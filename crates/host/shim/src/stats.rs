//! The guest's cgroup statistics in containerd's cgroup v1 metrics
//! message (`io.containerd.cgroups.v1.Metrics`), which CRI's
//! ContainerStats reads.

use cocoon_pod::kata::agent::StatsContainerResponse;
use containerd_shim_protos::cgroups::metrics as m;

/// The type URL containerd's shims use for the message.
pub const METRICS_V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

/// Converts what the agent reported.
pub fn metrics_v1(s: &StatsContainerResponse) -> m::Metrics {
    let mut out = m::Metrics::new();
    let Some(cg) = s.cgroup_stats.as_ref() else {
        return out;
    };
    if let Some(p) = cg.pids_stats.as_ref() {
        out.pids = Some(m::PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        })
        .into();
    }
    if let Some(c) = cg.cpu_stats.as_ref() {
        let u = c.cpu_usage.clone().unwrap_or_default();
        let t = c.throttling_data.clone().unwrap_or_default();
        out.cpu = Some(m::CPUStat {
            usage: Some(m::CPUUsage {
                total: u.total_usage,
                kernel: u.usage_in_kernelmode,
                user: u.usage_in_usermode,
                per_cpu: u.percpu_usage,
                ..Default::default()
            })
            .into(),
            throttling: Some(m::Throttle {
                periods: t.periods,
                throttled_periods: t.throttled_periods,
                throttled_time: t.throttled_time,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into();
    }
    if let Some(mem) = cg.memory_stats.as_ref() {
        let entry = |d: Option<&cocoon_pod::kata::agent::MemoryData>| {
            let d = d.cloned().unwrap_or_default();
            Some(m::MemoryEntry {
                limit: d.limit,
                usage: d.usage,
                max: d.max_usage,
                failcnt: d.failcnt,
                ..Default::default()
            })
            .into()
        };
        let stat = |k: &str| mem.stats.get(k).copied().unwrap_or_default();
        out.memory = Some(m::MemoryStat {
            cache: mem.cache,
            rss: stat("rss").max(stat("anon")),
            mapped_file: stat("mapped_file").max(stat("file_mapped")),
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            total_inactive_file: stat("inactive_file"),
            usage: entry(mem.usage.as_ref()),
            swap: entry(mem.swap_usage.as_ref()),
            kernel: entry(mem.kernel_usage.as_ref()),
            ..Default::default()
        })
        .into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_pod::kata::agent as a;

    #[test]
    fn guest_cgroup_stats_become_containerds_metrics() {
        let mut mem = a::MemoryStats {
            cache: 7,
            usage: Some(a::MemoryData {
                usage: 100,
                max_usage: 150,
                failcnt: 1,
                limit: 1000,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        mem.stats.insert("anon".into(), 60);
        mem.stats.insert("pgfault".into(), 9);
        let r = StatsContainerResponse {
            cgroup_stats: Some(a::CgroupStats {
                cpu_stats: Some(a::CpuStats {
                    cpu_usage: Some(a::CpuUsage {
                        total_usage: 500,
                        usage_in_kernelmode: 200,
                        usage_in_usermode: 300,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                })
                .into(),
                memory_stats: Some(mem).into(),
                pids_stats: Some(a::PidsStats {
                    current: 3,
                    limit: 64,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let m = metrics_v1(&r);
        assert_eq!((m.pids.current, m.pids.limit), (3, 64));
        let u = &m.cpu.usage;
        assert_eq!((u.total, u.kernel, u.user), (500, 200, 300));
        assert_eq!(
            (m.memory.cache, m.memory.rss, m.memory.pg_fault),
            (7, 60, 9)
        );
        let e = &m.memory.usage;
        assert_eq!((e.usage, e.max, e.failcnt, e.limit), (100, 150, 1, 1000));
        // No cgroup stats: an empty message, not an error.
        assert!(metrics_v1(&StatsContainerResponse::new()).pids.is_none());
    }
}
