//! Caps on open connections: in total, and per client address.
//!
//! A token bucket limits how fast an address opens connections; this limits
//! how many it holds. Both are needed: a patient attacker opening one
//! connection a second still reaches 20,000 in six hours, each pinning a
//! socket, kernel buffers and a task.

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

/// One admitted connection; dropping it gives its place back. Shared by the
/// HTTP connection and, after an upgrade, the WebSocket that replaces it.
pub struct Admitted {
    owner: Arc<Connections>,
    ip: IpAddr,
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
        let key = ip_key(ip);
        let exempt = self.exempt.iter().any(|net| net.contains(&ip));
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the server holds its maximum of {} connections",
                    self.max_total
                ),
            ));
        }
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
        c.total += 1;
        *c.per_ip.entry(key).or_default() += 1;
        Ok(Admitted {
            owner: self.clone(),
            ip: key,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.owner.counts();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
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
    fn exempt_addresses_skip_the_per_address_cap() {
        let c = caps(10, 1, &["127.0.0.0/8"]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| c.admit(lo).unwrap()).collect();
        drop(held);
        assert!(
            c.counts().per_ip.is_empty(),
            "no entry outlives its connections"
        );
    }
}
