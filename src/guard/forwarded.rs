//! Who the client is behind a reverse proxy: `connection.trusted_proxies`
//! and the forwarding headers they set.
//!
//! The rules (docs/protocol.md, "Clients behind a reverse proxy"):
//!
//! - A request whose TCP peer is not a trusted proxy comes from the peer;
//!   its forwarding headers are ignored, since anyone can write them.
//! - From a trusted proxy, the chain is the forwarded hops, left (the
//!   original client) to right (the hop nearest to us), then the peer. It
//!   is walked from the right, and the client is the first address that is
//!   not itself a trusted proxy: the hops to its left were written by that
//!   untrusted client and may be anything.
//! - `X-Forwarded-For` wins when present, else `Forwarded: for=` (RFC
//!   7239). Several lines of one header are one list, in order.
//! - A hop that names no address (`unknown`, an obfuscated `_node`, an
//!   element without `for=`, junk) ends the walk: the client is then the
//!   last trusted hop read, so such requests share that proxy's address
//!   instead of letting junk pick one. So does a walk past [`MAX_HOPS`].
//! - If every hop is trusted, the leftmost one is the client.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::header::{HeaderMap, HeaderName, FORWARDED};
use axum::http::HeaderValue;
use ipnet::IpNet;

/// The de facto header most proxies set (nginx, HAProxy, Caddy, cloud
/// load balancers); `http` has no constant for it.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The most hops read from the right of a chain. Real chains hold a few
/// proxies; the cap keeps a header stuffed with trusted addresses from
/// costing a match against every trusted network per entry.
pub const MAX_HOPS: usize = 32;

/// The reverse proxies trusted to name the client (`connection.trusted_proxies`).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts the proxies in `nets`; none: every peer is its own client.
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a request whose TCP peer is `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; limits,
        // bans and guest ids must see one address either way.
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let (elements, parse): (_, fn(&str) -> Option<IpAddr>) =
            if headers.contains_key(X_FORWARDED_FOR) {
                (list(headers.get_all(X_FORWARDED_FOR), false), node)
            } else {
                (list(headers.get_all(FORWARDED), true), forwarded_for)
            };
        let mut client = peer;
        for element in elements.iter().rev().take(MAX_HOPS) {
            match element.and_then(parse) {
                Some(hop) => {
                    client = hop.to_canonical();
                    if !self.trusts(client) {
                        return client;
                    }
                }
                // Nothing to trust past here: the last trusted hop stands.
                None => return client,
            }
        }
        client
    }
}

/// The elements of every line of one header, in order; a line that is not
/// visible ASCII is one element that names no one. Empty elements (`a,,b`)
/// are skipped, as RFC 9110 asks of list recipients. `quoted`: the header
/// has quoted strings (`Forwarded` does, `X-Forwarded-For` does not).
fn list<'a>(
    lines: axum::http::header::GetAll<'a, HeaderValue>,
    quoted: bool,
) -> Vec<Option<&'a str>> {
    let mut elements = Vec::new();
    for line in lines {
        match line.to_str() {
            Ok(text) => {
                let parts: Vec<&str> = if quoted {
                    split_unquoted(text, ',')
                } else {
                    text.split(',').collect()
                };
                let named = parts.into_iter().map(str::trim).filter(|e| !e.is_empty());
                elements.extend(named.map(Some));
            }
            Err(_) => elements.push(None),
        }
    }
    elements
}

/// `text` split at each `sep` outside a quoted string (`"…"`, with `\`
/// escapes), so that a quoted `,` or `;` does not split a `Forwarded` value.
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The address of one `Forwarded` element's `for=` parameter, if it names
/// one (RFC 7239: `for=192.0.2.60`, `for="[2001:db8::1]:4711"`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = split_unquoted(element, ';').into_iter().find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim())
    })?;
    match value.strip_prefix('"') {
        Some(quoted) => node(&unquote(quoted.strip_suffix('"')?)),
        None => node(value),
    }
}

/// The body of a quoted string with its `\` escapes undone.
fn unquote(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        out.extend(if c == '\\' { chars.next() } else { Some(c) });
    }
    out
}

/// A node as proxies write it: an address, optionally with a port, IPv6
/// optionally in brackets (`192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`). `unknown`, obfuscated names and
/// anything else name no one.
fn node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The client `trusted` derives for a request from `peer` with `lines`.
    fn client(trusted: &[&str], peer: &str, lines: &[(&str, &str)]) -> IpAddr {
        proxies(trusted).client(ip(peer), &headers(lines))
    }

    const LOCAL: &[&str] = &["127.0.0.1/32", "10.0.0.0/8"];

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let xff = [("x-forwarded-for", "203.0.113.9")];
        assert_eq!(client(LOCAL, "127.0.0.2", &xff), ip("127.0.0.2"));
        assert_eq!(client(&[], "127.0.0.1", &xff), ip("127.0.0.1"));
        let fwd = [("forwarded", "for=203.0.113.9")];
        assert_eq!(client(LOCAL, "198.51.100.1", &fwd), ip("198.51.100.1"));
    }

    #[test]
    fn a_trusted_peer_without_headers_is_the_client() {
        assert_eq!(client(LOCAL, "127.0.0.1", &[]), ip("127.0.0.1"));
        let empty = [("x-forwarded-for", "")];
        assert_eq!(client(LOCAL, "127.0.0.1", &empty), ip("127.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        // The client wrote a fake first hop; the proxies appended the rest.
        let xff = [("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3")];
        assert_eq!(client(LOCAL, "127.0.0.1", &xff), ip("203.0.113.9"));
        // Only the nearest proxy is trusted: the hop it names is the client,
        // even if that is another proxy.
        let only_nearest = &["127.0.0.1/32"];
        assert_eq!(client(only_nearest, "127.0.0.1", &xff), ip("10.1.2.3"));
        // Every hop trusted: the leftmost.
        let all = [("x-forwarded-for", "10.9.9.9, 10.1.2.3")];
        assert_eq!(client(LOCAL, "127.0.0.1", &all), ip("10.9.9.9"));
    }

    #[test]
    fn several_lines_are_one_list_in_order() {
        let xff = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9, 10.1.2.3"),
        ];
        assert_eq!(client(LOCAL, "127.0.0.1", &xff), ip("203.0.113.9"));
        let fwd = [
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", "for=203.0.113.7;proto=https, for=10.1.2.3"),
        ];
        assert_eq!(client(LOCAL, "127.0.0.1", &fwd), ip("203.0.113.7"));
    }

    #[test]
    fn ports_and_ipv6_forms_are_read() {
        let cases = [
            ("x-forwarded-for", "203.0.113.9:5123", "203.0.113.9"),
            ("x-forwarded-for", "2001:db8::7", "2001:db8::7"),
            ("x-forwarded-for", "[2001:db8::7]", "2001:db8::7"),
            ("x-forwarded-for", "[2001:db8::7]:443", "2001:db8::7"),
            ("x-forwarded-for", "::ffff:203.0.113.9", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9", "203.0.113.9"),
            ("forwarded", "For=\"203.0.113.9:80\"", "203.0.113.9"),
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\"",
                "2001:db8:cafe::17",
            ),
            (
                "forwarded",
                "for=\"[2001:db8::1]\";proto=https",
                "2001:db8::1",
            ),
            (
                "forwarded",
                "proto=http; for = 198.51.100.3 ;by=10.0.0.1",
                "198.51.100.3",
            ),
        ];
        for (name, value, want) in cases {
            assert_eq!(
                client(LOCAL, "127.0.0.1", &[(name, value)]),
                ip(want),
                "{value}"
            );
        }
    }

    #[test]
    fn a_hop_that_names_no_one_leaves_the_last_trusted_hop() {
        for junk in ["unknown", "_hidden", "nginx", "1.2.3", "[::1", "\"10.0.0.1"] {
            let xff = [("x-forwarded-for", format!("203.0.113.9, {junk}, 10.1.2.3"))];
            let xff: Vec<_> = xff.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(client(LOCAL, "127.0.0.1", &xff), ip("10.1.2.3"), "{junk}");
        }
        // Nothing trusted was read past the peer: the peer stands.
        let fwd = [("forwarded", "for=unknown")];
        assert_eq!(client(LOCAL, "127.0.0.1", &fwd), ip("127.0.0.1"));
        let obfuscated = [("forwarded", "for=\"_gazonk\"")];
        assert_eq!(client(LOCAL, "127.0.0.1", &obfuscated), ip("127.0.0.1"));
        let no_for = [("forwarded", "for=203.0.113.9, proto=https;by=10.0.0.1")];
        assert_eq!(client(LOCAL, "127.0.0.1", &no_for), ip("127.0.0.1"));
        // An unterminated quote swallows the rest of its line: one junk hop.
        let open = [("forwarded", "for=203.0.113.9, for=\"10.1.2.3, for=10.1.2.4")];
        assert_eq!(client(LOCAL, "127.0.0.1", &open), ip("127.0.0.1"));
    }

    #[test]
    fn a_line_that_is_not_text_names_no_one() {
        let mut map = headers(&[("x-forwarded-for", "203.0.113.9")]);
        map.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(
            proxies(LOCAL).client(ip("127.0.0.1"), &map),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_quoted_separator_does_not_split_a_forwarded_value() {
        let fwd = [(
            "forwarded",
            "for=198.51.100.3;ext=\"a,b;c\\\"d\", for=10.1.2.3",
        )];
        assert_eq!(client(LOCAL, "127.0.0.1", &fwd), ip("198.51.100.3"));
    }

    #[test]
    fn x_forwarded_for_wins_over_forwarded() {
        let both = [
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9"),
        ];
        assert_eq!(client(LOCAL, "127.0.0.1", &both), ip("203.0.113.9"));
    }

    #[test]
    fn a_walk_stops_after_max_hops() {
        let mut hops = vec!["203.0.113.9".to_owned()];
        hops.extend((0..MAX_HOPS).map(|i| format!("10.0.0.{}", i + 1)));
        let xff = hops.join(", ");
        // The client sits just past the cap: the last hop read stands.
        let got = client(LOCAL, "127.0.0.1", &[("x-forwarded-for", &xff)]);
        assert_eq!(got, ip("10.0.0.1"));
        hops.remove(1);
        let xff = hops.join(", ");
        let got = client(LOCAL, "127.0.0.1", &[("x-forwarded-for", &xff)]);
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn a_mapped_peer_is_matched_and_reported_as_ipv4() {
        let xff = [("x-forwarded-for", "203.0.113.9")];
        assert_eq!(client(LOCAL, "::ffff:127.0.0.1", &xff), ip("203.0.113.9"));
        assert_eq!(client(&[], "::ffff:192.0.2.1", &xff), ip("192.0.2.1"));
    }
}
