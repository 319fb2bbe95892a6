//! The address guard (SSRF): which IP addresses a delivery may connect to.
//!
//! Refused by default, IPv4 and IPv6 alike: unspecified, loopback, private (RFC 1918),
//! shared/CGNAT (RFC 6598), link-local, unique-local, site-local, multicast, broadcast, the
//! documentation, benchmarking and IETF-reserved ranges, the discard prefix, Teredo and
//! ORCHID, and the cloud metadata endpoints (AWS, GCP, Azure, OCI, DigitalOcean at
//! 169.254.169.254; AWS ECS 169.254.170.2 and EKS pod identity 169.254.170.23 and
//! fd00:ec2::23; AWS IPv6 fd00:ec2::254; Alibaba 100.100.100.200; Azure's WireServer
//! 168.63.129.16, a public address). IPv6 forms that carry an IPv4 address (IPv4-mapped
//! `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`)
//! are judged by the IPv4 address they carry.
//!
//! `webhooks.allow_cidrs` re-opens ranges: an address inside an allowed CIDR is let through
//! (for an address that carries an IPv4 one, when either is inside). Metadata addresses are
//! the exception: an allowed range that merely contains one does not re-open it; only an
//! entry naming that address alone (`169.254.169.254/32`) does, so `169.254.0.0/16` opened
//! for a link-local receiver never exposes instance credentials.
//!
//! The check runs on the resolved addresses: the HTTP client's connector
//! ([`crate::client`]) resolves with [`GuardedResolver`] and connects to exactly the
//! addresses that passed (no second lookup, no DNS rebinding). Hosts written as IP literals
//! skip resolvers, so the sender checks them with [`AddressPolicy::refusal`] before any
//! connection.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;

/// Where the reasons point operators to.
const HOW_TO_ALLOW: &str = "allow it with webhooks.allow_cidrs (--webhook-allow-cidr)";

/// Refused ranges and what they are, most specific first (the first match names the reason).
const REFUSED: &[(&str, &str)] = &[
    // IPv4
    (
        "0.0.0.0/8",
        "an unspecified (\"this network\") address (RFC 1122)",
    ),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a shared CGNAT address (RFC 6598)"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (RFC 3927)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    (
        "192.0.0.0/24",
        "an IETF protocol assignment address (RFC 6890)",
    ),
    ("192.0.2.0/24", "a documentation address (RFC 5737)"),
    ("192.88.99.0/24", "a 6to4 relay anycast address (RFC 7526)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
    ("198.51.100.0/24", "a documentation address (RFC 5737)"),
    ("203.0.113.0/24", "a documentation address (RFC 5737)"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address (RFC 1112)"),
    // IPv6 (the forms that carry an IPv4 address are judged by it, before this table)
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address (RFC 8215)"),
    ("100::/64", "a discard-only address (RFC 6666)"),
    ("2001::/32", "a Teredo address (RFC 4380)"),
    ("2001:2::/48", "a benchmarking address (RFC 5180)"),
    ("2001:10::/28", "a deprecated ORCHID address (RFC 4843)"),
    ("2001:20::/28", "an ORCHIDv2 address (RFC 7343)"),
    ("2001:db8::/32", "a documentation address (RFC 3849)"),
    ("3fff::/20", "a documentation address (RFC 9637)"),
    ("fc00::/7", "a unique-local address (RFC 4193)"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a deprecated site-local address (RFC 3879)"),
    ("ff00::/8", "a multicast address"),
];

/// Cloud metadata endpoints: refused unless the allow list names them alone.
const METADATA: &[&str] = &[
    "169.254.169.254",
    "169.254.170.2",
    "169.254.170.23",
    "100.100.100.200",
    "168.63.129.16",
    "fd00:ec2::254",
    "fd00:ec2::23",
];

static REFUSED_NETS: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    REFUSED
        .iter()
        .map(|(net, what)| (net.parse().expect("a CIDR of the refused table"), *what))
        .collect()
});

static METADATA_IPS: LazyLock<Vec<IpAddr>> = LazyLock::new(|| {
    METADATA
        .iter()
        .map(|ip| ip.parse().expect("an address of the metadata table"))
        .collect()
});

/// Which addresses deliveries may connect to: everything public, plus the allowed ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// `allow`: ranges re-opened (`webhooks.allow_cidrs`); empty refuses every range above.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// Why a delivery may not connect to `ip`, or `None` when it may. The reason names the
    /// address, what it is and how to allow it.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let carried = match (ip, canonical(ip)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => Some(v4),
            _ => embedded_v4(ip),
        };
        let judged = carried.map_or(ip, IpAddr::V4);
        let carrying = carried.map_or(String::new(), |v4| format!(" (it carries {v4})"));
        if METADATA_IPS.contains(&judged) {
            let named = |net: &IpNet| net.prefix_len() == net.max_prefix_len();
            if self
                .allow
                .iter()
                .any(|net| named(net) && (net.contains(&ip) || net.contains(&judged)))
            {
                return None;
            }
            return Some(format!(
                "{ip} is a cloud metadata address{carrying}; allow it only by naming it alone \
                 in webhooks.allow_cidrs ({judged}/{})",
                if judged.is_ipv4() { 32 } else { 128 }
            ));
        }
        let (_, what) = REFUSED_NETS.iter().find(|(net, _)| net.contains(&judged))?;
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&judged))
        {
            return None;
        }
        Some(format!("{ip} is {what}{carrying}; {HOW_TO_ALLOW}"))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-compatible (`::a.b.c.d`, not `::` or
/// `::1`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`). Mapped addresses are
/// made IPv4 by [`canonical`] first.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

/// No address of a host was allowed: every address and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedAddresses {
    pub host: String,
    pub reasons: Vec<String>,
}

impl fmt::Display for RefusedAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            return write!(f, "{} resolved to no address", self.host);
        }
        write!(
            f,
            "{} resolved only to refused addresses: {}",
            self.host,
            self.reasons.join("; ")
        )
    }
}

impl std::error::Error for RefusedAddresses {}

/// The connector's resolver: tokio's `lookup_host` (the system resolver), then the
/// refused addresses dropped; fails with every reason when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }

    /// The allowed addresses of `host` (port 0: the client sets the URL's).
    pub async fn lookup(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let resolved = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|err| format!("resolving {host}: {err}"))?;
        let mut allowed = Vec::new();
        let mut reasons = Vec::new();
        for addr in resolved {
            match self.policy.refusal(addr.ip()) {
                None => allowed.push(addr),
                Some(reason) if !reasons.contains(&reason) => reasons.push(reason),
                Some(_) => {}
            }
        }
        if allowed.is_empty() {
            return Err(Box::new(RefusedAddresses {
                host: host.to_owned(),
                reasons,
            }));
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn policy(allow: &[&str]) -> AddressPolicy {
        AddressPolicy::new(allow.iter().map(|n| n.parse().expect("a CIDR")).collect())
    }

    #[test]
    fn both_ends_of_every_refused_range_are_refused_and_allowing_the_range_reopens_them() {
        for (cidr, _) in REFUSED {
            let net: IpNet = cidr.parse().expect("a CIDR");
            for addr in [net.network(), net.broadcast()] {
                let reason = policy(&[])
                    .refusal(addr)
                    .unwrap_or_else(|| panic!("{addr} ({cidr}) was let through"));
                assert!(reason.starts_with(&format!("{addr} is ")), "{reason}");
                assert!(reason.contains("webhooks.allow_cidrs"), "{reason}");
                assert_eq!(
                    policy(&[cidr]).refusal(addr),
                    None,
                    "{addr} with {cidr} allowed"
                );
            }
        }
    }

    #[test]
    fn each_address_gets_the_reason_of_its_range() {
        let table = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.1.2.3", "a private address (RFC 1918)"),
            ("172.16.0.1", "a private address (RFC 1918)"),
            ("172.31.255.254", "a private address (RFC 1918)"),
            ("192.168.1.1", "a private address (RFC 1918)"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.254", "CGNAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.1.1", "link-local"),
            ("192.0.0.8", "IETF protocol assignment"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("192.88.99.1", "6to4 relay"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "the broadcast address"),
            ("::", "the unspecified address"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("100::1", "discard-only"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:20::1", "ORCHIDv2"),
            ("64:ff9b:1::1", "local-use NAT64"),
            // IPv6 forms carrying an IPv4 address are judged by it
            (
                "::ffff:127.0.0.1",
                "loopback address (it carries 127.0.0.1)",
            ),
            (
                "::ffff:10.0.0.1",
                "private address (RFC 1918) (it carries 10.0.0.1)",
            ),
            ("::127.0.0.1", "loopback address (it carries 127.0.0.1)"),
            (
                "::192.168.0.1",
                "private address (RFC 1918) (it carries 192.168.0.1)",
            ),
            ("64:ff9b::7f00:1", "loopback address (it carries 127.0.0.1)"),
            (
                "64:ff9b::a9fe:101",
                "link-local address (RFC 3927) (it carries 169.254.1.1)",
            ),
            (
                "2002:c0a8:101::1",
                "private address (RFC 1918) (it carries 192.168.1.1)",
            ),
            ("2002:7f00:1::", "loopback address (it carries 127.0.0.1)"),
        ];
        for (addr, words) in table {
            let reason = policy(&[]).refusal(ip(addr));
            let reason = reason.unwrap_or_else(|| panic!("{addr} was let through"));
            assert!(reason.starts_with(&format!("{} is ", ip(addr))), "{reason}");
            assert!(reason.contains(words), "{addr}: {reason} lacks {words:?}");
        }
    }

    #[test]
    fn the_reason_says_what_the_address_is_and_how_to_allow_it() {
        assert_eq!(
            policy(&[]).refusal(ip("10.1.2.3")).as_deref(),
            Some(
                "10.1.2.3 is a private address (RFC 1918); allow it with webhooks.allow_cidrs \
                 (--webhook-allow-cidr)"
            )
        );
    }

    #[test]
    fn public_addresses_pass_in_every_form() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(policy(&[]).refusal(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn metadata_addresses_are_refused_even_inside_an_allowed_range() {
        let ranges = policy(&["169.254.0.0/16", "100.64.0.0/10", "fd00::/8", "0.0.0.0/0"]);
        for addr in METADATA {
            let reason = policy(&[]).refusal(ip(addr)).expect("refused");
            assert!(reason.contains("cloud metadata address"), "{reason}");
            let reason = ranges.refusal(ip(addr)).expect("still refused");
            assert!(reason.contains("naming it alone"), "{reason}");
            let alone = if addr.contains(':') { "/128" } else { "/32" };
            assert!(reason.contains(&format!("{addr}{alone}")), "{reason}");
            assert_eq!(policy(&[&format!("{addr}{alone}")]).refusal(ip(addr)), None);
        }
        // in IPv6 clothing too
        for addr in [
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::",
        ] {
            let reason = ranges.refusal(ip(addr)).expect("refused");
            assert!(reason.contains("carries 169.254.169.254"), "{reason}");
            assert_eq!(policy(&["169.254.169.254/32"]).refusal(ip(addr)), None);
        }
        // the link-local range around them still opens
        assert_eq!(ranges.refusal(ip("169.254.1.1")), None);
    }

    #[test]
    fn an_allowed_ipv4_range_opens_its_ipv6_forms_and_nothing_else() {
        let allowed = policy(&["127.0.0.0/8"]);
        assert_eq!(allowed.refusal(ip("127.0.0.1")), None);
        assert_eq!(allowed.refusal(ip("::ffff:127.0.0.1")), None);
        assert!(allowed.refusal(ip("::1")).is_some());
        assert!(allowed.refusal(ip("10.0.0.1")).is_some());
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses_and_fails_with_the_reasons() {
        let closed = GuardedResolver::new(Arc::new(policy(&[])));
        let err = closed.lookup("localhost").await.expect_err("refused");
        let refused = err
            .downcast_ref::<RefusedAddresses>()
            .expect("RefusedAddresses");
        assert_eq!(refused.host, "localhost");
        let text = err.to_string();
        assert!(
            text.contains("localhost resolved only to refused addresses"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1 is a loopback address"), "{text}");

        let v4_only = GuardedResolver::new(Arc::new(policy(&["127.0.0.0/8"])));
        let addrs = v4_only.lookup("localhost").await.expect("allowed");
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip() == ip("127.0.0.1")), "{addrs:?}");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_an_error_naming_it() {
        let resolver = GuardedResolver::new(Arc::new(policy(&[])));
        let err = resolver
            .lookup("nonexistent.invalid")
            .await
            .expect_err("no such name");
        assert!(err.downcast_ref::<RefusedAddresses>().is_none());
        assert!(
            err.to_string()
                .starts_with("resolving nonexistent.invalid: "),
            "{err}"
        );
    }

    #[test]
    fn no_address_at_all_is_said_plainly() {
        let none = RefusedAddresses {
            host: "example.test".to_owned(),
            reasons: Vec::new(),
        };
        assert_eq!(none.to_string(), "example.test resolved to no address");
    }
}
