//! Log lines an attacker cannot multiply: a [`Budget`] lets one line of a kind through per
//! period and counts the others into the next one, so that a client repeating a bad request a
//! million times costs a line every ten seconds, not a million lines.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Filter directives (`target=level`, comma-separated, as `RUST_LOG` and tracing-subscriber's
/// `EnvFilter` read them) that keep what no log should hold out of the dependencies' output:
/// at `trace`, tungstenite writes every WebSocket frame it sends and receives, the open frame
/// (which carries the session id) and every payload included; and hyper warns once per
/// connection that timed out, which a client opening connections could multiply.
///
/// Add them *after* the application's own directives, so that they win even over
/// `RUST_LOG=trace` (a directive for the same target replaces the one before). Switchboard's
/// own lines name sessions by their key (`session=17`), never by id, at every level.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // With tracing-subscriber and its `env-filter` feature:
/// use tracing_subscriber::EnvFilter;
///
/// let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
/// for directive in switchboard::QUIET_DEPENDENCIES.split(',') {
///     filter = filter.add_directive(directive.parse()?);
/// }
/// tracing_subscriber::fmt().with_env_filter(filter).init();
/// # Ok(())
/// # }
/// ```
///
/// An application's own request logging must leave out the query strings of the mount point's
/// URLs: polls carry the session id there (`GET /poll?sid=…`). tower-http's `TraceLayer`, for
/// one, records the whole URI by default.
pub const QUIET_DEPENDENCIES: &str =
    "tungstenite=debug,tokio_tungstenite=debug,hyper=error,hyper_util=error";

/// How often a budget lets a line through.
pub(crate) const PERIOD: Duration = Duration::from_secs(10);

/// One kind of log line's allowance (a `static` at the place that logs it).
#[derive(Debug)]
pub(crate) struct Budget {
    /// When the last line went out, in ms since [`epoch`], plus one (0: never).
    last: AtomicU64,
    skipped: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Budget {
    pub(crate) const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(lines skipped since the last one)` if a line may be written now; `None` (and the
    /// line counted as skipped) otherwise.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed().as_millis() as u64 + 1)
    }

    /// [`allow`](Self::allow) at `now`, in ms since [`epoch`] plus one.
    fn allow_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + PERIOD.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Logs at INFO through the `static` budget of the call site; the fields get `skipped`, the
/// number of lines of the kind left out since the last one.
macro_rules! info_limited {
    ($($arg:tt)+) => {{
        static BUDGET: $crate::logs::Budget = $crate::logs::Budget::new();
        if let Some(skipped) = BUDGET.allow() {
            tracing::info!(skipped, $($arg)+);
        }
    }};
}

/// Logs at WARN through the `static` budget of the call site, as [`info_limited`].
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static BUDGET: $crate::logs::Budget = $crate::logs::Budget::new();
        if let Some(skipped) = BUDGET.allow() {
            tracing::warn!(skipped, $($arg)+);
        }
    }};
}

pub(crate) use {info_limited, warn_limited};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_rest_counted() {
        let budget = Budget::new();
        let period = PERIOD.as_millis() as u64;
        assert_eq!(budget.allow_at(5), Some(0));
        assert_eq!(budget.allow_at(6), None);
        assert_eq!(budget.allow_at(4 + period), None);
        assert_eq!(budget.allow_at(5 + period), Some(2));
        assert_eq!(budget.allow_at(6 + period), None);
    }
}
