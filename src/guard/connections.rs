//! Caps on open connections: in total, and per client address.
//!
//! A token bucket limits how fast an address opens connections; this limits
//! how many it holds. Both are needed: a patient attacker opening one
//! connection a second still reaches 20,000 in six hours, each pinning a
//! socket, kernel buffers and a task.
//!
//! A connection from a trusted reverse proxy carries many clients, whose
//! addresses are known only from each request's headers: it counts in the
//! total at accept, and each request it forwards (and the SSE stream or
//! WebSocket that request opens) holds a place of its client's address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use super::limits::ip_key;
use crate::config::ConnectionConfig;
use crate::error::{ApiError, ErrorCode};

/// Open connections, counted.
pub struct Connections {
    max_total: usize,
    max_per_ip: usize,
    exempt: Vec<IpNet>,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with a connection open: at most `max_total` entries.
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection, or one forwarded client's request; dropping it
/// gives its places back. Shared by the HTTP connection (or request) and,
/// after an upgrade, the WebSocket that replaces it.
pub struct Admitted {
    owner: Arc<Connections>,
    /// Whether it holds a place in the total.
    total: bool,
    /// The address whose place it holds, if any.
    ip: Option<IpAddr>,
}

impl Connections {
    /// Caps from the `[connection]` section; addresses in `exempt` are
    /// counted in the total only.
    pub fn new(config: &ConnectionConfig, exempt: Vec<IpNet>) -> Connections {
        Connections {
            max_total: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            exempt,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip`, or says which cap it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, ApiError> {
        self.take(true, Some(ip))
    }

    /// Admits a new connection from a trusted proxy: under the total cap
    /// only, since the clients it carries are known per request
    /// ([`Connections::admit_client`]).
    pub fn admit_proxy(self: &Arc<Self>) -> Result<Admitted, ApiError> {
        self.take(true, None)
    }

    /// A place under the per-address cap for a client a trusted proxy
    /// forwards, held for its request or the stream the request opens.
    pub fn admit_client(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, ApiError> {
        self.take(false, Some(ip))
    }

    fn take(self: &Arc<Self>, total: bool, ip: Option<IpAddr>) -> Result<Admitted, ApiError> {
        let mut c = self.counts();
        if total && c.total >= self.max_total {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the server holds its maximum of {} connections",
                    self.max_total
                ),
            ));
        }
        // A dual-stack listener reports an IPv4 peer as ::ffff:a.b.c.d: the
        // exempt networks must match it as every other address rule does.
        let ip = ip.map(|ip| ip.to_canonical());
        let key = ip.map(ip_key);
        if let (Some(ip), Some(key)) = (ip, key) {
            let exempt = self.exempt.iter().any(|net| net.contains(&ip));
            let mine = c.per_ip.get(&key).copied().unwrap_or(0);
            if !exempt && mine >= self.max_per_ip {
                return Err(ApiError::new(
                    ErrorCode::TooManyConnections,
                    format!(
                        "this address holds its maximum of {} connections",
                        self.max_per_ip
                    ),
                ));
            }
            *c.per_ip.entry(key).or_default() += 1;
        }
        if total {
            c.total += 1;
        }
        Ok(Admitted {
            owner: self.clone(),
            total,
            ip: key,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.owner.counts();
        if self.total {
            c.total -= 1;
        }
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_ip: usize, exempt: &[&str]) -> Arc<Connections> {
        let config = ConnectionConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..ConnectionConfig::default()
        };
        let exempt = exempt.iter().map(|n| n.parse().unwrap()).collect();
        Arc::new(Connections::new(&config, exempt))
    }

    #[test]
    fn caps_per_address_and_in_total_and_gives_places_back() {
        let c = caps(2, 2, &["127.0.0.0/8"]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = c.admit(a).unwrap();
        let _second = c.admit(a).unwrap();
        assert!(matches!(c.admit(a), Err(e) if e.code == ErrorCode::TooManyConnections));
        drop(first);
        let _third = c.admit(a).unwrap();
        // The total binds exempt addresses too.
        assert!(c.admit("127.0.0.1".parse().unwrap()).is_err());
        assert_eq!(c.counts().per_ip.len(), 1);
    }

    #[test]
    fn a_proxy_counts_in_the_total_and_its_clients_per_address() {
        let c = caps(3, 1, &[]);
        let proxy = c.admit_proxy().unwrap();
        let _second_proxy = c.admit_proxy().unwrap();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = c.admit_client(a).unwrap();
        assert!(
            c.admit_client(a).is_err(),
            "the forwarded address has its cap"
        );
        let _other = c.admit_client(b).unwrap();
        // Clients are not connections: the total still has room for one.
        let direct = c.admit("198.51.100.1".parse().unwrap()).unwrap();
        assert!(c.admit_proxy().is_err(), "the total binds proxies too");
        drop((first, direct, proxy));
        let _again = c.admit_client(a).unwrap();
        assert_eq!(c.counts().total, 1);
        assert_eq!(c.counts().per_ip.len(), 2);
    }

    #[test]
    fn exempt_addresses_skip_the_per_address_cap() {
        let c = caps(10, 1, &["127.0.0.0/8"]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5)
            .flat_map(|_| [c.admit(lo).unwrap(), c.admit(mapped).unwrap()])
            .collect();
        drop(held);
        assert!(
            c.counts().per_ip.is_empty(),
            "no entry outlives its connections"
        );
    }
}
