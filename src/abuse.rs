//! Per-client limits against abuse by anonymous or guessing clients: who a
//! client is (the socket's peer address, or the `X-Forwarded-For` that a
//! trusted proxy set), the login throttle (per address and per account
//! name), concurrent connections per address, and keyed token buckets that
//! the ChatServer uses for new conversations per address and the HTTP API for
//! messages per agent.
//!
//! Every table here is bounded: buckets that have refilled are forgotten, and
//! past [`MAX_KEYS`] the oldest state is dropped rather than memory grown.

use crate::config::Config;
use crate::session::TokenBucket;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Most keys one table holds (an attacker with many addresses cannot grow it further).
pub const MAX_KEYS: usize = 100_000;
/// Inserts between sweeps of refilled buckets.
const SWEEP_EVERY: usize = 4096;

/// Token buckets by key: `rate` per second, bursts of `burst`.
pub struct Keyed<K> {
    rate: f64,
    burst: f64,
    map: Mutex<(HashMap<K, TokenBucket>, usize)>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        Keyed { rate: rate_per_sec, burst: burst.max(1.0), map: Mutex::new((HashMap::new(), 0)) }
    }

    /// Per minute, bursts of the same number.
    pub fn per_minute(n: u32) -> Self {
        Self::new(n as f64 / 60.0, n as f64)
    }

    /// `Err(wait)` while `key` has no token left; takes nothing.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let mut g = self.map.lock();
        match g.0.get_mut(key) {
            Some(b) => b.wait().map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// Takes a token for `key`, or `Err(wait)` when it has none.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        let mut g = self.map.lock();
        let (map, inserts) = &mut *g;
        if !map.contains_key(key) {
            *inserts += 1;
            if *inserts % SWEEP_EVERY == 0 || map.len() >= MAX_KEYS {
                map.retain(|_, b| !b.is_full());
                if map.len() >= MAX_KEYS {
                    log::warn!("rate limit table full ({MAX_KEYS} keys): forgetting it");
                    map.clear();
                }
            }
        }
        let b = map.entry(key.clone()).or_insert_with(|| TokenBucket::new(self.rate, self.burst));
        if b.take() {
            Ok(())
        } else {
            Err(b.wait().unwrap_or(Duration::from_secs(1)))
        }
    }
}

/// An IP network in CIDR form (`10.0.0.0/8`, `::1/128`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    pub fn parse(s: &str) -> Result<Net, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("`{s}` is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{s}`: bad prefix length"))?,
        };
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address: the socket peer, unless the peer is a trusted
/// proxy, in which case the nearest address in `X-Forwarded-For` that is not
/// itself a trusted proxy (the header's earlier entries are the client's
/// word and could be forged).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Net]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|n| n.contains(peer)) {
        return peer;
    }
    let Some(xff) = forwarded_for else { return peer };
    for hop in xff.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { return peer };
        let ip = canonical(ip);
        if !trusted.iter().any(|n| n.contains(ip)) {
            return ip;
        }
    }
    peer
}

/// Whether the connection's peer is a trusted proxy (whose forwarded headers count).
pub fn from_trusted_proxy(peer: IpAddr, trusted: &[Net]) -> bool {
    trusted.iter().any(|n| n.contains(canonical(peer)))
}

/// The node's per-client limits, shared by every worker.
pub struct Guard {
    max_conns: usize,
    conns: Mutex<HashMap<IpAddr, usize>>,
    login_addr: Keyed<IpAddr>,
    login_name: Keyed<String>,
    /// HTTP `POST` of messages, per agent.
    pub http_sends: Keyed<String>,
}

impl Guard {
    pub fn new(cfg: &Config) -> Arc<Guard> {
        Arc::new(Guard {
            max_conns: cfg.max_conns_per_address,
            conns: Mutex::new(HashMap::new()),
            login_addr: Keyed::per_minute(cfg.login_failures_per_address),
            login_name: Keyed::per_minute(cfg.login_failures_per_account),
            http_sends: Keyed::new(cfg.rate_per_sec as f64, cfg.rate_burst as f64),
        })
    }

    /// `Err(wait)` while logins from `ip` or to `name` are throttled.
    pub fn login_allowed(&self, ip: IpAddr, name: &str) -> Result<(), Duration> {
        let a = self.login_addr.check(&ip);
        let n = self.login_name.check(&name.to_lowercase());
        match (a, n) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(x), Err(y)) => Err(x.max(y)),
            (Err(x), _) | (_, Err(x)) => Err(x),
        }
    }

    /// A wrong password from `ip` for `name`: it counts against both. Only
    /// failures count, so a team behind one address signing in is never slowed.
    pub fn login_failed(&self, ip: IpAddr, name: &str) {
        let _ = self.login_addr.take(&ip);
        let _ = self.login_name.take(&name.to_lowercase());
    }

    /// Holds one of `ip`'s connection slots for as long as the returned
    /// value lives; `None` when the address already holds its maximum.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let mut conns = self.conns.lock();
        let n = conns.entry(ip).or_insert(0);
        if self.max_conns > 0 && *n >= self.max_conns {
            return None;
        }
        *n += 1;
        Some(ConnSlot { guard: self.clone(), ip })
    }
}

/// One connection's place in its address's count; released on drop.
pub struct ConnSlot {
    guard: Arc<Guard>,
    pub ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut conns = self.guard.conns.lock();
        if let Some(n) = conns.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Net> {
        list.iter().map(|s| Net::parse(s).unwrap()).collect()
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(client_ip(ip("127.0.0.1"), Some("203.0.113.7"), &trusted), ip("203.0.113.7"));
        // An untrusted peer's header is ignored.
        assert_eq!(client_ip(ip("198.51.100.1"), Some("203.0.113.7"), &trusted), ip("198.51.100.1"));
        // A forged first entry does not count: the nearest untrusted hop does.
        assert_eq!(client_ip(ip("127.0.0.1"), Some("1.2.3.4, 203.0.113.7, 10.1.1.1"), &trusted), ip("203.0.113.7"));
        assert_eq!(client_ip(ip("::ffff:127.0.0.1"), Some("2001:db8::1"), &trusted), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("garbage"), &trusted), ip("127.0.0.1"));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("nope").is_err());
    }

    #[test]
    fn a_bucket_throttles_after_its_burst_and_check_takes_nothing() {
        let k: Keyed<u8> = Keyed::per_minute(3);
        for _ in 0..5 {
            assert!(k.check(&1).is_ok());
        }
        for _ in 0..3 {
            assert!(k.take(&1).is_ok());
        }
        let wait = k.take(&1).unwrap_err();
        assert!(wait > Duration::from_secs(10) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(k.check(&1).is_err());
        assert!(k.check(&2).is_ok(), "other keys are not throttled");
    }
}
