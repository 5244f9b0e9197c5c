//! Benchmark payloads: `b|<sender timestamp ns>|<index>|<padding>` (broadcast) or the same with
//! `e|` (echo), padded to a fixed size. The timestamp counts nanoseconds since this process's
//! [`epoch`], which every client of the same `load` process shares.

use std::sync::OnceLock;
use std::time::Instant;

/// Size of every measured payload in bytes.
pub const PAYLOAD_SIZE: usize = 100;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide time origin of payload timestamps.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Builds a payload with prefix `kind` (`'b'` broadcast, `'e'` echo, `'w'` warm-up broadcast
/// `b|w|...`), timestamp `ts_ns` and index `idx`, padded with `x` to [`PAYLOAD_SIZE`] bytes.
pub fn make(kind: char, ts_ns: u64, idx: u64) -> String {
    let mut s = match kind {
        'w' => format!("b|w|{idx}|"),
        k => format!("{k}|{ts_ns}|{idx}|"),
    };
    while s.len() < PAYLOAD_SIZE {
        s.push('x');
    }
    s
}

/// The text the transports scenario (9) carries after the header of each broadcast instead of
/// `x` padding: Korean and emoji, so that every transport has to carry multi-byte UTF-8 (which an
/// event stream may split anywhere between two chunks) intact.
pub const UNICODE_TEXT: &str = "안녕하세요, 스위치보드! 🎉👋 실시간";

/// Builds a broadcast payload `b|<ts_ns>|<idx>|` followed by [`UNICODE_TEXT`] (no padding).
pub fn make_unicode(ts_ns: u64, idx: u64) -> String {
    format!("b|{ts_ns}|{idx}|{UNICODE_TEXT}")
}

/// Whether the text after the header of a measured payload is what [`make`] or [`make_unicode`]
/// put there (all `x`, or [`UNICODE_TEXT`]); a payload without the header fields counts as intact
/// (it is not a measured one).
pub fn tail_intact(p: &str) -> bool {
    match p.splitn(4, '|').nth(3) {
        Some(tail) => tail == UNICODE_TEXT || tail.bytes().all(|b| b == b'x'),
        None => true,
    }
}

/// What a received payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A measured message: its kind (`'b'` or `'e'`), send timestamp and index.
    Measured {
        /// `'b'` or `'e'`.
        kind: char,
        /// Send time, nanoseconds since [`epoch`].
        ts_ns: u64,
        /// Index assigned by the sender.
        idx: u64,
    },
    /// A warm-up broadcast (proves the receiver is in the room).
    Warmup,
    /// Not a benchmark payload.
    Unknown,
}

/// Parses a payload made by [`make`].
pub fn parse(p: &str) -> Parsed {
    let mut parts = p.splitn(4, '|');
    let kind = match parts.next() {
        Some("b") => 'b',
        Some("e") => 'e',
        _ => return Parsed::Unknown,
    };
    let Some(ts) = parts.next() else {
        return Parsed::Unknown;
    };
    if ts == "w" {
        return Parsed::Warmup;
    }
    let (Ok(ts_ns), Some(Ok(idx))) = (ts.parse(), parts.next().map(str::parse)) else {
        return Parsed::Unknown;
    };
    Parsed::Measured { kind, ts_ns, idx }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = make('b', 123_456_789, 42);
        assert_eq!(p.len(), PAYLOAD_SIZE);
        assert_eq!(
            parse(&p),
            Parsed::Measured {
                kind: 'b',
                ts_ns: 123_456_789,
                idx: 42
            }
        );
        assert_eq!(parse(&make('w', 0, 1)), Parsed::Warmup);
        assert_eq!(parse("hello"), Parsed::Unknown);
        assert!(tail_intact(&p));
        let u = make_unicode(7, 3);
        assert_eq!(
            parse(&u),
            Parsed::Measured {
                kind: 'b',
                ts_ns: 7,
                idx: 3
            }
        );
        assert!(tail_intact(&u));
        assert!(!tail_intact(&u.replace('👋', "?")));
        assert!(!tail_intact("b|1|2|xxy"));
    }
}
