//! Measurement shared by every system under test: latency samples and their percentiles,
//! a rate pacer (for the 50%-load runs), a backlog window (closed-loop flow control, so a
//! producer never outruns its consumers without bound), and the progress line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Latency samples in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<f64>,
}

/// p50 / p99 / max of a set of latency samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

impl LatencySummary {
    /// p50 ≤ p99 ≤ max, as they are by definition: estimates (the hosts' summaries are
    /// sketches with about 1% error) and medians taken field by field can cross.
    pub fn monotone(mut self) -> Self {
        self.p99_ms = self.p99_ms.max(self.p50_ms);
        self.max_ms = self.max_ms.max(self.p99_ms);
        self
    }
}

impl Latencies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record_ms(&mut self, ms: f64) {
        if ms.is_finite() {
            self.samples.push(ms.max(0.0));
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.record_ms(d.as_secs_f64() * 1e3);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank percentiles; `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.samples.is_empty() {
            return None;
        }
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
            s[i]
        };
        Some(LatencySummary {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: s[s.len() - 1],
            samples: s.len() as u64,
        })
    }
}

/// Paces a producer to `rate` messages per second (token bucket without bursts beyond
/// one batch); unpaced when `rate` is `None`.
#[derive(Debug)]
pub struct Pacer {
    rate: Option<f64>,
    start: Instant,
    sent: u64,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0.0),
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Waits until `n` more messages may be sent.
    pub async fn wait(&mut self, n: u64) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(self.sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        self.sent += n;
    }
}

/// Closed-loop flow control between producers and consumers: producers wait while more
/// than `cap` messages are published but not yet consumed. Also the shared counters the
/// measurement reads.
#[derive(Debug)]
pub struct Window {
    pub produced: AtomicU64,
    pub consumed: AtomicU64,
    cap: u64,
}

impl Window {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self {
            produced: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            cap,
        })
    }

    pub fn backlog(&self) -> u64 {
        self.produced
            .load(Ordering::Relaxed)
            .saturating_sub(self.consumed.load(Ordering::Relaxed))
    }

    /// Waits (polling every millisecond) until the backlog is below the cap or `until`.
    pub async fn admit(&self, until: Instant) {
        while self.backlog() >= self.cap && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn add_produced(&self, n: u64) {
        self.produced.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_consumed(&self, n: u64) {
        self.consumed.fetch_add(n, Ordering::Relaxed);
    }
}

/// Throughput of one measured interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Messages (deliveries for fan-out) completed within the interval.
    pub count: u64,
    pub seconds: f64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.count as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Counts completions in the measured interval only: `start` is called after the warm-up,
/// `finish` at the end of the run.
#[derive(Debug)]
pub struct Interval {
    from: Option<(Instant, u64)>,
}

impl Interval {
    pub fn new() -> Self {
        Self { from: None }
    }

    pub fn start(&mut self, consumed: u64) {
        self.from = Some((Instant::now(), consumed));
    }

    pub fn started(&self) -> bool {
        self.from.is_some()
    }

    pub fn finish(&self, consumed: u64) -> Throughput {
        match self.from {
            Some((at, c0)) => Throughput {
                count: consumed.saturating_sub(c0),
                seconds: at.elapsed().as_secs_f64(),
            },
            None => Throughput {
                count: 0,
                seconds: 0.0,
            },
        }
    }
}

impl Default for Interval {
    fn default() -> Self {
        Self::new()
    }
}

/// The progress line on stderr: rewritten in place on a terminal, one line every few
/// seconds otherwise (logs, CI).
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    quiet: bool,
    last: std::sync::Mutex<Instant>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet,
            last: std::sync::Mutex::new(Instant::now() - Duration::from_secs(60)),
        }
    }

    /// Reports `what` (for example `unordered/mbx 12s/20s 9,812 msg/s backlog 1,204`).
    pub fn update(&self, what: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{what}");
            let _ = err.flush();
        } else if let Ok(mut last) = self.last.lock() {
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                let _ = writeln!(err, "{what}");
            }
        }
    }

    /// Ends the current progress line with a final message.
    pub fn done(&self, what: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err, "\r\x1b[2K{what}");
        } else {
            let _ = writeln!(err, "{what}");
        }
    }
}

/// Thousands separators for the human table and progress line.
pub fn thousands(n: f64) -> String {
    let n = n.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::new();
        for i in 1..=100 {
            l.record_ms(i as f64);
        }
        let s = l.summary().unwrap();
        assert_eq!(
            (s.p50_ms, s.p99_ms, s.max_ms, s.samples),
            (50.0, 99.0, 100.0, 100)
        );
        assert!(Latencies::new().summary().is_none());
    }

    #[test]
    fn estimates_are_made_monotone() {
        let s = LatencySummary {
            p50_ms: 5.0,
            p99_ms: 9.9,
            max_ms: 9.8,
            samples: 3,
        }
        .monotone();
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (5.0, 9.9, 9.9));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234567.4), "1,234,567");
    }

    #[test]
    fn interval_counts_only_after_start() {
        let mut i = Interval::new();
        assert_eq!(i.finish(10).count, 0);
        i.start(10);
        assert_eq!(i.finish(25).count, 15);
    }
}
