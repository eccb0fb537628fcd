//! How long the cloud would take to answer a next-token request now: the round trip, the
//! cloud's own compute, and the time to drain the hidden states still queued for upload (the
//! cloud can only answer once it holds every position). Pure: fed with measurements, asked for
//! an estimate; the link feeds it from probes, uploads and answers.

use std::time::Duration;

/// Exponentially weighted moving average of a duration in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    value: Option<f64>,
    weight: f64,
}

impl Ewma {
    /// `weight` is the share of a new sample in the average.
    pub const fn new(weight: f64) -> Self {
        Self { value: None, weight }
    }

    pub fn observe(&mut self, sample: f64) {
        if !sample.is_finite() {
            return;
        }
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + self.weight * (sample - v),
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// Measurements of one cloud link.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// Network round trip (health probes), seconds.
    rtt: Ewma,
    /// Next-token request latency beyond the round trip, seconds.
    compute: Ewma,
    /// Upload throughput, bytes per second.
    throughput: Ewma,
}

impl Default for LatencyModel {
    fn default() -> Self {
        Self { rtt: Ewma::new(0.3), compute: Ewma::new(0.2), throughput: Ewma::new(0.2) }
    }
}

/// Assumed until measured: a LAN round trip, a small model's step, a modest uplink.
const DEFAULT_RTT: f64 = 0.002;
const DEFAULT_COMPUTE: f64 = 0.010;
const DEFAULT_THROUGHPUT: f64 = 10e6;

impl LatencyModel {
    /// A health probe's round trip.
    pub fn observe_rtt(&mut self, rtt: Duration) {
        self.rtt.observe(rtt.as_secs_f64());
    }

    /// A next-token request's whole latency (its round trip is subtracted).
    pub fn observe_answer(&mut self, latency: Duration) {
        let rtt = self.rtt.get().unwrap_or(DEFAULT_RTT);
        self.compute.observe((latency.as_secs_f64() - rtt).max(0.0));
    }

    /// A chunk of `bytes` that took `busy` from leaving the edge (or from the previous ack,
    /// when the pipe was already busy) to its ack. Each sample includes a round trip, so small
    /// chunks understate throughput: the estimate errs on the slow side.
    pub fn observe_upload(&mut self, bytes: usize, busy: Duration) {
        let secs = busy.as_secs_f64();
        if bytes > 0 && secs > 0.0 {
            self.throughput.observe(bytes as f64 / secs);
        }
    }

    /// Expected time until the cloud answers a next-token request sent now, with `pending`
    /// bytes still queued ahead of it.
    pub fn estimate(&self, pending: usize) -> Duration {
        let rtt = self.rtt.get().unwrap_or(DEFAULT_RTT);
        let compute = self.compute.get().unwrap_or(DEFAULT_COMPUTE);
        let drain = pending as f64 / self.throughput.get().unwrap_or(DEFAULT_THROUGHPUT).max(1.0);
        Duration::from_secs_f64(rtt + compute + drain)
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.get().map(Duration::from_secs_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn the_average_moves_towards_new_samples() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.get(), None);
        e.observe(1.0);
        assert_eq!(e.get(), Some(1.0));
        e.observe(3.0);
        assert_eq!(e.get(), Some(2.0));
        e.observe(f64::NAN);
        assert_eq!(e.get(), Some(2.0));
    }

    #[test]
    fn a_slow_link_raises_the_estimate_and_a_recovered_one_lowers_it() {
        let mut m = LatencyModel::default();
        for _ in 0..10 {
            m.observe_rtt(ms(2));
            m.observe_answer(ms(12));
        }
        let fast = m.estimate(0);
        assert!(fast < ms(20), "{fast:?}");
        for _ in 0..10 {
            m.observe_rtt(ms(400));
        }
        assert!(m.estimate(0) > ms(350), "{:?}", m.estimate(0));
        for _ in 0..20 {
            m.observe_rtt(ms(2));
        }
        assert!(m.estimate(0) < ms(20), "{:?}", m.estimate(0));
    }

    #[test]
    fn queued_bytes_count_at_the_measured_throughput() {
        let mut m = LatencyModel::default();
        m.observe_rtt(ms(1));
        m.observe_answer(ms(1));
        // 1 MB/s uplink: 500 kB queued take about half a second to drain.
        m.observe_upload(100_000, ms(100));
        let est = m.estimate(500_000);
        assert!(est > ms(450) && est < ms(560), "{est:?}");
    }

    #[test]
    fn compute_never_goes_negative_when_an_answer_beats_the_probe() {
        let mut m = LatencyModel::default();
        m.observe_rtt(ms(50));
        m.observe_answer(ms(10));
        assert!(m.estimate(0) >= ms(50));
    }
}
