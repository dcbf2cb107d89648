//! Client addresses: which address a request really comes from when the
//! portal sits behind load balancers or reverse proxies, and the network an
//! address counts as for limits and tallies.
//!
//! The audit log, the anomaly report and every per-address rate limit key on
//! the client's address. Behind a balancer the connection's peer is the
//! balancer, so without help every researcher would look like one address.
//! Proxies add the address they received a request from to
//! `X-Forwarded-For`; a client can write anything there too. So the header is
//! believed only as far as it was written by proxies the operator named in
//! `WEIGHTGATE_TRUSTED_PROXIES`: reading from the right, each entry added by a
//! trusted hop names the next hop, and the first address that is not a trusted
//! proxy is the client.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// An address or network of proxies whose `X-Forwarded-For` entries are
/// believed: `10.0.0.5`, `10.0.0.0/8`, `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TrustedProxy(IpNet);

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            // Peers are compared as plain IPv4 when they are IPv4-mapped
            // (::ffff:a.b.c.d), so a mapped network is kept as IPv4 too.
            if let IpNet::V6(v6) = net
                && let Some(v4) = v6.addr().to_ipv4_mapped()
                && v6.prefix_len() >= 96
            {
                let v4 = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|e| e.to_string())?;
                return Ok(Self(IpNet::V4(v4.trunc())));
            }
            return Ok(Self(net.trunc()));
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(Self(IpNet::from(ip.to_canonical()))),
            Err(_) => Err(format!(
                "{s:?} is not an IP address or network (expected e.g. 10.0.0.5, 10.0.0.0/8 or fd00::/8)"
            )),
        }
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TrustedProxy {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

/// The proxies named in `WEIGHTGATE_TRUSTED_PROXIES`: addresses or networks
/// separated by commas; an empty setting names none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<TrustedProxy>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl TrustedProxies {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the listed proxies.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|t| t.contains(ip))
    }

    /// Whether some listed network is a whole address family (`0.0.0.0/0`,
    /// `::/0`), so that every client's header is believed.
    pub(crate) fn trusts_everyone(&self) -> bool {
        self.0.iter().any(|TrustedProxy(net)| net.prefix_len() == 0)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, proxy) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            proxy.fmt(f)?;
        }
        Ok(())
    }
}

/// At most this many `X-Forwarded-For` entries are examined, right to left.
/// A real chain of proxies is a handful of hops; the limit only bounds work on
/// a hostile header.
const MAX_HOPS: usize = 32;

/// The client's address: the connection's `peer` unless it is a trusted
/// proxy, in which case the nearest untrusted address in `forwarded_for` (the
/// `X-Forwarded-For` header values as bytes, in the order received).
///
/// An entry that is not an address ("unknown", garbage, bytes that are not
/// UTF-8) ends the walk: the last trusted hop is then the best known client
/// address. Entries are split before they are decoded, so a client's bad
/// bytes spoil only its own entries, never the ones a proxy added after
/// them. If every entry is a trusted proxy, the leftmost one is the client.
pub(crate) fn client_address<'a>(
    TrustedProxies(trusted): &TrustedProxies,
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let entries = forwarded_for
        .rev()
        .flat_map(|value| value.rsplit(|&b| b == b','))
        .take(MAX_HOPS);
    for entry in entries {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_entry) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.9:4711`, `[2001:db8::1]:4711`), as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            // "[2001:db8::1]" without a port.
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

/// The network a client address stands for when counting requests: an IPv4
/// address itself, an IPv6 address's /64 (`2001:db8:1:2::/64`).
pub(crate) fn network_key(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        list.join(",").parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve(trusted: &[&str], peer: &str, headers: &[&str]) -> String {
        client_address(&proxies(trusted), ip(peer), headers.iter().map(|h| h.as_bytes())).to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(resolve(&[], "198.51.100.7", &["203.0.113.9"]), "198.51.100.7");
        assert_eq!(
            resolve(&["10.0.0.0/8"], "198.51.100.7", &["203.0.113.9"]),
            "198.51.100.7"
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        // The client put a forged entry first; the balancer appended the real one.
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.2", &["1.2.3.4, 203.0.113.9"]),
            "203.0.113.9"
        );
        // Two trusted hops: an edge proxy and the balancer.
        assert_eq!(
            resolve(
                &["10.0.0.0/8", "192.0.2.10"],
                "10.0.0.2",
                &["1.2.3.4, 203.0.113.9, 192.0.2.10"]
            ),
            "203.0.113.9"
        );
        // The same entries split over two header lines.
        assert_eq!(
            resolve(
                &["10.0.0.0/8", "192.0.2.10"],
                "10.0.0.2",
                &["1.2.3.4, 203.0.113.9", "192.0.2.10"]
            ),
            "203.0.113.9"
        );
    }

    #[test]
    fn no_header_or_garbage_leaves_the_last_trusted_hop() {
        assert_eq!(resolve(&["10.0.0.0/8"], "10.0.0.2", &[]), "10.0.0.2");
        assert_eq!(resolve(&["10.0.0.0/8"], "10.0.0.2", &["unknown"]), "10.0.0.2");
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.2", &["203.0.113.9, 10.1.1.1, garbage"]),
            "10.0.0.2"
        );
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.2", &["10.9.9.9"]),
            "10.9.9.9",
            "when every hop is trusted the leftmost is the client"
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.2", &["203.0.113.9:4711"]),
            "203.0.113.9"
        );
        assert_eq!(
            resolve(&["fd00::/8"], "fd00::1", &["[2001:db8::1]:4711"]),
            "2001:db8::1"
        );
        assert_eq!(
            resolve(&["fd00::/8"], "fd00::1", &["[2001:db8::1]"]),
            "2001:db8::1"
        );
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        assert_eq!(
            resolve(&["10.0.0.0/8"], "::ffff:10.0.0.2", &["::ffff:203.0.113.9"]),
            "203.0.113.9"
        );
        assert_eq!(
            resolve(&["127.0.0.1"], "::ffff:127.0.0.1", &["203.0.113.9"]),
            "203.0.113.9"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_spoil_only_their_own_entry() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let resolve =
            |headers: &[&[u8]]| client_address(&trusted, ip("10.0.0.2"), headers.iter().copied()).to_string();
        // The client's bad bytes come before the address the proxy appended.
        assert_eq!(resolve(&[b"\xff\xfe, 203.0.113.9"]), "203.0.113.9");
        // A bad second line stops the walk at the trusted hop; it never
        // reaches the address the client wrote on the first line.
        assert_eq!(resolve(&[b"6.6.6.6", b"\xff"]), "10.0.0.2");
        assert_eq!(resolve(&[b"6.6.6.6", b"\xff, 203.0.113.9"]), "203.0.113.9");
    }

    #[test]
    fn a_long_hostile_header_is_read_only_so_far() {
        let long = vec!["10.0.0.1"; 10_000].join(",");
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.2", &[&format!("203.0.113.9,{long}")]),
            "10.0.0.1"
        );
    }

    #[test]
    fn settings_parse_addresses_and_networks_and_refuse_the_rest() {
        assert_eq!(
            "10.1.2.3/8".parse::<TrustedProxy>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            " 192.0.2.10 ".parse::<TrustedProxy>().unwrap().to_string(),
            "192.0.2.10/32"
        );
        assert_eq!(
            "fd00::/8".parse::<TrustedProxy>().unwrap().to_string(),
            "fd00::/8"
        );
        let err = "lb.internal".parse::<TrustedProxy>().unwrap_err();
        assert!(err.contains("not an IP address or network"), "{err}");
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
        // An IPv4-mapped network means the IPv4 network.
        assert_eq!(
            "::ffff:10.0.0.0/104".parse::<TrustedProxy>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            resolve(&["::ffff:10.0.0.0/104"], "10.0.0.2", &["203.0.113.9"]),
            "203.0.113.9"
        );

        let list: TrustedProxies = " 10.0.0.0/8 , 192.0.2.10,".parse().unwrap();
        assert_eq!(list.to_string(), "10.0.0.0/8,192.0.2.10/32");
        assert_eq!("".parse::<TrustedProxies>().unwrap(), TrustedProxies::default());
        assert!(!list.trusts_everyone() && !list.is_empty());
        assert!(
            "10.0.0.0/8, ::/0"
                .parse::<TrustedProxies>()
                .unwrap()
                .trusts_everyone()
        );
        assert!("0.0.0.0/0".parse::<TrustedProxies>().unwrap().trusts_everyone());
        let err = "10.0.0.0/8,lb".parse::<TrustedProxies>().unwrap_err();
        assert!(err.contains("\"lb\""), "{err}");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        assert_eq!(network_key(addr("203.0.113.9")), "203.0.113.9");
        assert_eq!(network_key(addr("::ffff:203.0.113.9")), "203.0.113.9");
        assert_eq!(network_key(addr("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(
            network_key(addr("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            network_key(addr("2001:db8:1:2::1"))
        );
        assert_ne!(
            network_key(addr("2001:db8:1:3::1")),
            network_key(addr("2001:db8:1:2::1"))
        );
    }

    fn addr(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }
}
