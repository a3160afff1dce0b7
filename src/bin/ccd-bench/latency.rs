//! Exact latency percentiles of the kept samples.

#[derive(Clone, Debug)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

impl Latency {
    /// Exact percentiles of the samples (nanoseconds); `None` without samples.
    pub(crate) fn from_samples(mut ns: Vec<u64>) -> Option<Latency> {
        ns.sort_unstable();
        Some(Latency {
            p50: nearest_rank(&ns, 50)?,
            p99: nearest_rank(&ns, 99)?,
            max: *ns.last()?,
        })
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample with at least `pct`%
/// of all samples at or below it.
pub(crate) fn nearest_rank<T: Copy>(sorted: &[T], pct: u64) -> Option<T> {
    let n = sorted.len() as u64;
    if n == 0 {
        return None;
    }
    let rank = (n * pct).div_ceil(100).clamp(1, n);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}
