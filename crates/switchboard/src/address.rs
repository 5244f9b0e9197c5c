//! Per-client limits on opening sessions: who the client is (its address, read from
//! `Forwarded`/`X-Forwarded-For` only when the connection comes from a trusted proxy), how many
//! sessions it holds, and how fast it may open more (`docs/protocol.md` §11).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use dashmap::DashMap;

use crate::error::ApiError;

/// A network of trusted proxies, `address/prefix-length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// `192.0.2.0/24`, `2001:db8::/32`, or a single address (`10.0.0.7`, `::1`).
    pub(crate) fn parse(text: &str) -> Option<Net> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().ok().filter(|prefix| *prefix <= bits)?,
            None => bits,
        };
        Some(Net {
            addr: canonical(addr),
            prefix,
        })
    }

    fn contains(&self, addr: IpAddr) -> bool {
        let prefix = u32::from(self.prefix);
        match (self.addr, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                prefix == 0 || (u32::from(net) ^ u32::from(addr)) >> (32 - prefix) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                prefix == 0 || (u128::from(net) ^ u128::from(addr)) >> (128 - prefix) == 0
            }
            _ => false,
        }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:192.0.2.1`) as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the connection's peer, unless that peer is a trusted proxy; then the
/// nearest address of the `Forwarded` header (or, without one, of `X-Forwarded-For`) that is not
/// a trusted proxy, read from the right (each proxy appends the address it got the request
/// from). A value that is not an address (`unknown`, an obfuscated name) stops the walk at the
/// proxy that wrote it. `None` when the peer is unknown (the app is not served by
/// [`serve`](crate::serve()) or with `ConnectInfo`).
pub(crate) fn client_addr(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[Net],
) -> Option<IpAddr> {
    let mut client = canonical(peer?.ip());
    let is_trusted = |addr: IpAddr| trusted.iter().any(|net| net.contains(addr));
    if !is_trusted(client) {
        return Some(client);
    }
    let forwarded = forwarded_for(headers);
    for hop in forwarded.iter().rev() {
        match hop {
            Some(addr) => {
                client = canonical(*addr);
                if !is_trusted(client) {
                    break;
                }
            }
            None => break,
        }
    }
    Some(client)
}

/// The `for=` addresses of every `Forwarded` header line (RFC 7239), in order, or, when there
/// is none, those of `X-Forwarded-For`; `None` for a value that is not an address.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let lines = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap_or("unknown"))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|element| !element.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let forwarded = lines("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| node_addr(value.trim().trim_matches('"')))
            })
            .collect();
    }
    lines("x-forwarded-for")
        .iter()
        .map(|element| node_addr(element))
        .collect()
}

/// The address of a node: `192.0.2.1`, `192.0.2.1:8080`, `[2001:db8::1]`, `[2001:db8::1]:8080`
/// or `2001:db8::1`.
fn node_addr(node: &str) -> Option<IpAddr> {
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// What the limits are counted by: an IPv4 address, or the /64 network of an IPv6 address (one
/// subscriber usually gets a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

impl Key {
    fn of(addr: IpAddr) -> Key {
        match canonical(addr) {
            IpAddr::V4(v4) => Key::V4(u32::from(v4)),
            IpAddr::V6(v6) => Key::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The per-address settings (see [`Builder`](crate::Builder)).
#[derive(Clone, Debug)]
pub(crate) struct AddressConfig {
    pub(crate) max_sessions: usize,
    /// Sessions an address may open per second, on average (0: no rate limit).
    pub(crate) opens_per_second: u32,
    /// Sessions an address may open at once, before the rate applies.
    pub(crate) burst: u32,
    pub(crate) trusted: Vec<Net>,
}

impl Default for AddressConfig {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            opens_per_second: 10,
            burst: 100,
            trusted: Vec::new(),
        }
    }
}

/// One address's sessions and open allowance.
struct Entry {
    live: usize,
    /// Opens allowed right now (a token bucket of `burst` tokens refilled at the rate).
    tokens: f64,
    refilled: Instant,
}

/// The per-address counts of one server.
pub(crate) struct Addresses {
    config: AddressConfig,
    entries: DashMap<Key, Entry>,
    admitted: AtomicU64,
}

/// Entries kept before a sweep forgets those with no session and a full allowance.
const SWEEP_EVERY: u64 = 4096;

impl Addresses {
    pub(crate) fn new(config: AddressConfig) -> Self {
        Self {
            config,
            entries: DashMap::new(),
            admitted: AtomicU64::new(0),
        }
    }

    /// The client address of a request (see [`client_addr`]).
    pub(crate) fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        client_addr(peer, headers, &self.config.trusted)
    }

    /// Lets `addr` open one more session, or says why not (`429`, with the seconds after which
    /// to try again). The returned slot counts the session until it is dropped.
    pub(crate) fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<AddressSlot, ApiError> {
        let key = Key::of(addr);
        let config = &self.config;
        let now = Instant::now();
        if self.admitted.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now);
        }
        let mut entry = self.entries.entry(key).or_insert_with(|| Entry {
            live: 0,
            tokens: f64::from(config.burst.max(1)),
            refilled: now,
        });
        if entry.live >= config.max_sessions {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "address_session_limit",
                format!(
                    "this address holds {} sessions, the most it may",
                    config.max_sessions
                ),
            )
            .retry_after(5));
        }
        if config.opens_per_second > 0 {
            let rate = f64::from(config.opens_per_second);
            let burst = f64::from(config.burst.max(1));
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * rate).min(burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                let wait = ((1.0 - entry.tokens) / rate).ceil().max(1.0) as u32;
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "open_rate_limited",
                    "this address opens sessions too fast",
                )
                .retry_after(wait));
            }
            entry.tokens -= 1.0;
        }
        entry.live += 1;
        Ok(AddressSlot {
            addresses: self.clone(),
            key,
        })
    }

    /// Forgets the addresses that hold no session and whose allowance is full again.
    fn sweep(&self, now: Instant) {
        let rate = f64::from(self.config.opens_per_second);
        let burst = f64::from(self.config.burst.max(1));
        self.entries.retain(|_, entry| {
            let refilled = rate == 0.0
                || entry.tokens
                    + now.saturating_duration_since(entry.refilled).as_secs_f64() * rate
                    >= burst;
            entry.live > 0 || !refilled
        });
    }

    #[cfg(test)]
    fn live(&self, addr: IpAddr) -> usize {
        self.entries
            .get(&Key::of(addr))
            .map_or(0, |entry| entry.live)
    }
}

/// Counts one session against its client's address until dropped (when the session is
/// forgotten).
pub(crate) struct AddressSlot {
    addresses: Arc<Addresses>,
    key: Key,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some(mut entry) = self.addresses.entries.get_mut(&self.key) {
            entry.live = entry.live.saturating_sub(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn peer(addr: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(addr.parse().unwrap(), 40000))
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<Net> {
        list.iter().map(|net| Net::parse(net).unwrap()).collect()
    }

    #[test]
    fn networks_parse_and_contain() {
        let net = Net::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            Net::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let v6 = Net::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(Net::parse("::1").unwrap().contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert_eq!(Net::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        // Straight from a client: its headers are its own word, not believed.
        assert_eq!(
            client_addr(peer("198.51.100.7"), &xff, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        // Through two trusted proxies: the first address from the right that is not one.
        assert_eq!(
            client_addr(peer("10.0.0.1"), &xff, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // A client that forges a header in front: what the proxy appended is what counts.
        let forged = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &forged, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // `Forwarded` wins over X-Forwarded-For, with quotes, brackets and ports.
        let forwarded = headers(&[
            ("x-forwarded-for", "5.6.7.8"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1",
            ),
        ]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &forwarded, &trusted),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        // An obfuscated hop stops the walk at the proxy that wrote it.
        let unknown = headers(&[("forwarded", "for=192.0.2.60, for=_hidden")]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &unknown, &trusted),
            Some("10.0.0.1".parse().unwrap())
        );
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(
            client_addr(peer("10.0.0.1"), &HeaderMap::new(), &trusted),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(client_addr(None, &xff, &trusted), None);
    }

    #[test]
    fn an_address_gets_its_burst_then_the_rate_and_never_more_than_its_cap() {
        let addresses = Arc::new(Addresses::new(AddressConfig {
            max_sessions: 5,
            opens_per_second: 1,
            burst: 3,
            trusted: Vec::new(),
        }));
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..3).map(|_| addresses.admit(one).unwrap()).collect();
        let refused = addresses.admit(one).err().unwrap();
        assert_eq!(
            (refused.status.as_u16(), refused.code, refused.retry_after),
            (429, "open_rate_limited", Some(1))
        );
        // Another address is not affected; an IPv6 /64 counts as one.
        let other: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _other = addresses.admit(other).unwrap();
        assert_eq!(addresses.live(same_64), 1);
        drop(slots);
        assert_eq!(addresses.live(one), 0);

        let capped = Arc::new(Addresses::new(AddressConfig {
            max_sessions: 2,
            opens_per_second: 0,
            burst: 1,
            trusted: Vec::new(),
        }));
        let held: Vec<_> = (0..2).map(|_| capped.admit(one).unwrap()).collect();
        let refused = capped.admit(one).err().unwrap();
        assert_eq!(refused.code, "address_session_limit");
        drop(held);
        assert!(capped.admit(one).is_ok());
    }
}
