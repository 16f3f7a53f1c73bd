//! Explicit allow-list entries for tests and intranet deployments.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddrV4};
use std::str::FromStr;

use ipnet::IpNet;

/// One allow-list entry: an address or network, optionally restricted to a
/// single port. Accepted spellings: `IP`, `CIDR`, `IP:port`, `[IPv6]` and
/// `[IPv6]:port`.
///
/// A port-specific entry only allows that port; this is what lets a test
/// allow its own loopback listener without opening the rest of loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowRule {
    net: IpNet,
    port: Option<u16>,
}

impl AllowRule {
    /// Allows every port of `net`.
    pub fn net(net: IpNet) -> Self {
        Self {
            net: canonical_net(net.trunc()),
            port: None,
        }
    }

    /// Allows a single address, on every port or only on `port`.
    pub fn addr(ip: IpAddr, port: Option<u16>) -> Self {
        Self {
            net: IpNet::from(ip.to_canonical()),
            port,
        }
    }

    /// The network this rule covers.
    pub fn network(&self) -> IpNet {
        self.net
    }

    /// The only port this rule allows, if it is port-specific.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether this rule allows connecting to `ip` on `port`. An unknown port
    /// (`None`) only matches rules without a port: failing closed.
    pub fn matches(&self, ip: IpAddr, port: Option<u16>) -> bool {
        // IPv4-mapped IPv6 reaches the IPv4 host, so it matches IPv4 rules.
        let ip = ip.to_canonical();
        self.net.contains(&ip)
            && match self.port {
                None => true,
                Some(p) => port == Some(p),
            }
    }
}

/// An IPv4-mapped IPv6 host rule is stored as the IPv4 host it denotes, so it
/// matches the canonicalised addresses `matches` compares against.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() == 128 => IpNet::from(IpAddr::V6(n.addr()).to_canonical()),
        other => other,
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_only = self.net.prefix_len() == self.net.max_prefix_len();
        match (self.net, self.port, host_only) {
            (IpNet::V6(n), Some(p), _) => write!(f, "[{}]:{p}", n.addr()),
            (net, Some(p), _) => write!(f, "{}:{p}", net.addr()),
            (net, None, true) => write!(f, "{}", net.addr()),
            (net, None, false) => write!(f, "{net}"),
        }
    }
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let bad = |why: &str| format!("invalid allow rule '{input}': {why} (expected IP, CIDR, IP:port or [IPv6]:port)");
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, tail) = rest.split_once(']').ok_or_else(|| bad("missing closing ']'"))?;
            let ip: Ipv6Addr = addr.parse().map_err(|_| bad("not an IPv6 address inside brackets"))?;
            let port = match tail {
                "" => None,
                t => Some(parse_port(t.strip_prefix(':').ok_or_else(|| bad("expected ':port' after ']'"))?, &bad)?),
            };
            return Ok(Self::addr(IpAddr::V6(ip), port));
        }
        if s.contains('/') {
            let net: IpNet = s.parse().map_err(|_| bad("not a valid CIDR network"))?;
            return Ok(Self::net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::addr(ip, None));
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            if host.contains(':') {
                return Err(bad("an IPv6 address with a port must be bracketed"));
            }
            let sa: SocketAddrV4 = format!("{host}:{}", parse_port(port, &bad)?)
                .parse()
                .map_err(|_| bad("not an IPv4 address before ':port'"))?;
            return Ok(Self::addr(IpAddr::V4(*sa.ip()), Some(sa.port())));
        }
        Err(bad("not an IP address"))
    }
}

fn parse_port(s: &str, bad: &dyn Fn(&str) -> String) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err(bad("port 0 is not a real port")),
        Ok(p) => Ok(p),
        Err(_) => Err(bad("port must be a number in 1..=65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> AllowRule {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_spelling() {
        let r = rule("127.0.0.1");
        assert_eq!(r.port(), None);
        assert!(r.matches(ip("127.0.0.1"), Some(80)));
        assert!(!r.matches(ip("127.0.0.2"), Some(80)));

        let r = rule("10.0.0.0/8");
        assert!(r.matches(ip("10.1.2.3"), Some(443)));
        assert!(!r.matches(ip("11.0.0.1"), Some(443)));

        let r = rule("127.0.0.1:8080");
        assert_eq!(r.port(), Some(8080));
        assert!(r.matches(ip("127.0.0.1"), Some(8080)));
        assert!(!r.matches(ip("127.0.0.1"), Some(8081)));

        let r = rule("[::1]:9000");
        assert!(r.matches(ip("::1"), Some(9000)));
        assert!(!r.matches(ip("::1"), Some(9001)));

        let r = rule("[fd00::1]");
        assert!(r.matches(ip("fd00::1"), Some(1)));

        let r = rule("::1");
        assert!(r.matches(ip("::1"), Some(1)));

        let r = rule("fd00::/8");
        assert!(r.matches(ip("fd12::1"), None));

        // Surrounding whitespace from config files is tolerated.
        assert_eq!(rule(" 10.0.0.1:80 "), rule("10.0.0.1:80"));
    }

    #[test]
    fn port_specific_rules_need_a_known_matching_port() {
        let r = rule("127.0.0.1:8080");
        assert!(!r.matches(ip("127.0.0.1"), None));
        assert!(rule("127.0.0.1").matches(ip("127.0.0.1"), None));
    }

    #[test]
    fn cidr_with_host_bits_is_truncated() {
        let r = rule("192.168.1.7/24");
        assert_eq!(r.network().to_string(), "192.168.1.0/24");
        assert!(r.matches(ip("192.168.1.200"), Some(80)));
    }

    #[test]
    fn mapped_addresses_match_ipv4_rules() {
        assert!(rule("127.0.0.1:80").matches(ip("::ffff:127.0.0.1"), Some(80)));
        assert!(rule("[::ffff:127.0.0.1]:80").matches(ip("127.0.0.1"), Some(80)));
    }

    #[test]
    fn rejects_garbage_with_clear_errors() {
        for (s, needle) in [
            ("", "empty"),
            ("   ", "empty"),
            ("localhost", "not an IP address"),
            ("example.com:80", "IPv4"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:70000", "1..=65535"),
            ("127.0.0.1:http", "1..=65535"),
            ("::1:80x", "bracketed"),
            ("[::1", "']'"),
            ("[::1]80", "':port'"),
            ("[127.0.0.1]:80", "IPv6"),
            ("10.0.0.0/33", "CIDR"),
            ("10.0.0.0/8:80", "CIDR"),
        ] {
            let err = s.parse::<AllowRule>().unwrap_err();
            assert!(err.contains(needle), "{s:?}: {err}");
            assert!(err.contains("expected IP, CIDR"), "{s:?}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["127.0.0.1", "127.0.0.1:8080", "10.0.0.0/8", "[::1]:9000", "::1", "fd00::/8"] {
            assert_eq!(rule(s).to_string(), s);
            assert_eq!(rule(&rule(s).to_string()), rule(s));
        }
    }
}
