//! The client address an allowlist decision uses: the TCP peer, or, when the peer is a
//! trusted proxy, the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// `None` when a trusted proxy forwarded an address that does not parse.
pub(crate) fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return None;
        };
        hops.extend(value.split(',').map(str::trim).filter(|h| !h.is_empty()));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = canonical(parse_hop(hop)?);
        if !is_trusted(&client) {
            return Some(client);
        }
    }
    Some(client)
}

/// Accepts `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` and `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// IPv4-mapped IPv6 addresses (from dual-stack listeners) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peers_forward_nothing() {
        let peer = "198.51.100.1:4000".parse().unwrap();
        let got = resolve(peer, &headers(&["18.133.218.210"]), &nets(&["10.0.0.0/8"]));
        assert_eq!(got, Some("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let peer = "10.0.0.5:4000".parse().unwrap();
        let h = headers(&["6.6.6.6, 18.133.218.210", "10.1.1.1"]);
        // 10.1.1.1 is another trusted hop; 18.133.218.210 is the real client; 6.6.6.6 was spoofed
        assert_eq!(
            resolve(peer, &h, &nets(&["10.0.0.0/8"])),
            Some("18.133.218.210".parse().unwrap())
        );
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_unknown() {
        let peer = "10.0.0.5:4000".parse().unwrap();
        assert_eq!(
            resolve(peer, &headers(&["not-an-ip"]), &nets(&["10.0.0.0/8"])),
            None
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let peer = "[::ffff:10.0.0.5]:4000".parse().unwrap();
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(peer, &headers(&["[2001:db8::1]:443"]), &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            resolve(peer, &headers(&["3.11.208.36:1234"]), &trusted),
            Some("3.11.208.36".parse().unwrap())
        );
        assert_eq!(
            resolve(peer, &HeaderMap::new(), &trusted),
            Some("10.0.0.5".parse().unwrap())
        );
    }
}
