//! Pure IP predicates: which destinations an outbound request on a user's
//! behalf must never reach.
//!
//! The rule is a block-list of every special-purpose range from the IANA
//! registries that is not globally reachable (plus a few that are reachable but
//! are only ever abused, such as Teredo), with IPv6 transition encodings
//! checked through the IPv4 address they embed. For IPv6 anything outside the
//! global unicast space `2000::/3` is blocked as a catch-all, because IANA
//! allocates nothing routable outside it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Returns why `ip` is blocked, or `None` when it is an ordinary public
/// address. This ignores the allow-list; see [`crate::Guard::check_addr`].
pub fn is_blocked_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

/// IPv4 special-purpose ranges, `(network, prefix length, reason)`.
/// Checked in order, so more specific entries with better reasons come first
/// where ranges overlap.
const V4_RULES: &[([u8; 4], u32, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private network (10.0.0.0/8)"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT shared space (100.64.0.0/10)"),
    ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
    ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
    ([172, 16, 0, 0], 12, "private network (172.16.0.0/12)"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments (192.0.0.0/24)"),
    ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
    ([192, 88, 99, 0], 24, "deprecated 6to4 relay anycast (192.88.99.0/24)"),
    ([192, 168, 0, 0], 16, "private network (192.168.0.0/16)"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
    ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
    ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
    ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
];

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    // prefix is always 1..=32 in the table, so the shift never overflows.
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    // Exact addresses first: their reasons are the most useful in an error.
    if ip.is_unspecified() {
        return Some("unspecified address (0.0.0.0)");
    }
    if ip.is_broadcast() {
        return Some("limited broadcast (255.255.255.255)");
    }
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("cloud metadata endpoint (169.254.169.254)");
    }
    V4_RULES.iter().find(|(net, prefix, _)| in_v4(ip, *net, *prefix)).map(|(_, _, reason)| *reason)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

const fn v6(s: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
}

/// IPv6 ranges blocked outright, checked after the transition encodings.
const V6_RULES: &[(Ipv6Addr, u32, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 96, "deprecated IPv4-compatible IPv6 (::/96)"),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]), 48, "local-use NAT64 (64:ff9b:1::/48)"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0]), 64, "discard-only (100::/64)"),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 32, "Teredo (2001::/32)"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32, "documentation (2001:db8::/32)"),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 23, "IETF protocol assignments (2001::/23)"),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]), 20, "documentation (3fff::/20)"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7, "unique local address (fc00::/7)"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10, "link-local (fe80::/10)"),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]), 10, "deprecated site-local (fec0::/10)"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, "multicast (ff00::/8)"),
];

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified address (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    let o = ip.octets();
    // Transition encodings reach an IPv4 host, so they are exactly as
    // dangerous as that host: judge them by the embedded address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        // ::ffff:a.b.c.d — a dual-stack socket connects to a.b.c.d itself.
        return blocked_v4(v4);
    }
    if in_v6(ip, v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96) {
        // Well-known NAT64 prefix: the translator forwards to the last 32 bits.
        return blocked_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if o[0] == 0x20 && o[1] == 0x02 {
        // 6to4: the relay's IPv4 address is in bits 16..48.
        return blocked_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    if let Some((_, _, reason)) = V6_RULES.iter().find(|(net, prefix, _)| in_v6(ip, *net, *prefix)) {
        return Some(reason);
    }
    if !in_v6(ip, v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3) {
        return Some("reserved (outside global unicast 2000::/3)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> bool {
        let ip: IpAddr = s.parse().unwrap();
        is_blocked_ip(ip).is_some()
    }

    #[test]
    fn v4_special_ranges_are_blocked() {
        for s in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.5",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "192.88.99.1",
        ] {
            assert!(blocked(s), "{s} should be blocked");
        }
    }

    #[test]
    fn v4_public_and_range_edges_are_allowed() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "11.0.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "192.0.1.1",
            "223.255.255.255",
        ] {
            assert!(!blocked(s), "{s} should be allowed");
        }
    }

    #[test]
    fn v4_reasons_are_specific() {
        let r = |s: &str| is_blocked_ip(s.parse().unwrap()).unwrap();
        assert!(r("169.254.169.254").contains("metadata"));
        assert!(r("127.0.0.1").contains("loopback"));
        assert!(r("0.0.0.0").contains("unspecified"));
        assert!(r("255.255.255.255").contains("broadcast"));
        assert!(r("100.64.1.1").contains("carrier-grade NAT"));
    }

    #[test]
    fn v6_special_ranges_are_blocked() {
        for s in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fd00:ec2::254",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "3fff::1",
            "100::1",
            "64:ff9b:1::1",
            // IPv4-compatible (deprecated), whatever it embeds.
            "::7f00:1",
            "::8.8.8.8",
            // Outside 2000::/3.
            "4000::1",
            "5f00::1",
            "::2:0:0:1",
        ] {
            assert!(blocked(s), "{s} should be blocked");
        }
    }

    #[test]
    fn v6_embedded_v4_is_judged_by_the_v4_address() {
        // IPv4-mapped.
        assert!(blocked("::ffff:127.0.0.1"));
        assert!(blocked("::ffff:7f00:1"));
        assert!(blocked("::ffff:169.254.169.254"));
        assert!(blocked("::ffff:10.0.0.1"));
        assert!(!blocked("::ffff:8.8.8.8"));
        // NAT64 well-known prefix.
        assert!(blocked("64:ff9b::127.0.0.1"));
        assert!(blocked("64:ff9b::a9fe:a9fe"));
        assert!(blocked("64:ff9b::192.168.0.1"));
        assert!(!blocked("64:ff9b::8.8.8.8"));
        // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
        assert!(blocked("2002:7f00:1::1"));
        assert!(blocked("2002:a9fe:a9fe::1"));
        assert!(blocked("2002:c0a8:101::1"));
        assert!(!blocked("2002:808:808::1"));
    }

    #[test]
    fn v6_global_unicast_is_allowed() {
        for s in ["2606:4700:4700::1111", "2a00:1450:4001:81b::200e", "2400::1"] {
            assert!(!blocked(s), "{s} should be allowed");
        }
    }
}
