//! Latency histograms shared by many client tasks.

use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;

/// A latency histogram in microseconds (1 µs .. 10 min, 3 significant digits), shared by
/// cloning; tasks record through a [`Recorder`] that merges in batches.
#[derive(Debug, Clone)]
pub struct Latencies {
    inner: Arc<Mutex<Histogram<u64>>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

/// Percentiles of a [`Latencies`], in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Latencies {
        let h = Histogram::new_with_bounds(1, 600_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()));
        Latencies {
            inner: Arc::new(Mutex::new(h)),
        }
    }

    /// A batching recorder for one task.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            target: self.clone(),
            buf: Vec::with_capacity(Recorder::BATCH),
        }
    }

    /// Percentiles so far.
    pub fn summary(&self) -> Summary {
        let h = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let ms = |v: u64| v as f64 / 1000.0;
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    fn merge(&self, samples: &[u64]) {
        let mut h = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for &s in samples {
            h.saturating_record(s.max(1));
        }
    }
}

fn unreachable_histogram() -> Histogram<u64> {
    // `Histogram::new(3)` only fails for sigfig > 5
    panic!("cannot create a histogram with 3 significant digits")
}

/// Collects samples locally and merges them into the shared histogram every
/// [`Recorder::BATCH`] samples and when dropped.
#[derive(Debug)]
pub struct Recorder {
    target: Latencies,
    buf: Vec<u64>,
}

impl Recorder {
    /// Samples buffered before a merge.
    pub const BATCH: usize = 256;

    /// Records one latency in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.buf.push(ns / 1000);
        if self.buf.len() >= Recorder::BATCH {
            self.flush();
        }
    }

    /// Merges the buffered samples now.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.target.merge(&self.buf);
            self.buf.clear();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
