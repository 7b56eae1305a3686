//! Who the client is behind a reverse proxy: `--trusted-proxy` (addresses or CIDR ranges) and
//! `X-Forwarded-For`. Addresses are compared canonically — an IPv4 peer on a dual-stack socket
//! (`::ffff:127.0.0.1`) is `127.0.0.1` — so a proxy is recognised however it connects.

use std::net::IpAddr;
use std::str::FromStr;

/// A `--trusted-proxy` value: one address, or a range (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyRange {
    net: IpAddr,
    prefix: u8,
}

impl ProxyRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix)
                    == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address.
fn masked(v: u128, bits: u8, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => v >> (bits - p),
    }
}

impl FromStr for ProxyRange {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyRange, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an IP address or a range like 10.0.0.0/8"))?
            .to_canonical();
        let width = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {width}"))?,
        };
        Ok(ProxyRange { net, prefix })
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy itself, over every header line in order
/// (a proxy that appends its own line adds to the list; left-most entries are whatever the
/// client chose to send, so they are never believed).
pub(crate) fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[ProxyRange],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    for line in forwarded_for.rev() {
        for entry in line.rsplit(',') {
            match entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                Ok(ip) if is_trusted(ip) => continue,
                Ok(ip) => return ip,
                Err(_) => return peer, // a mangled header: count the proxy itself
            }
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ranges(list: &[&str]) -> Vec<ProxyRange> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = ranges(&["10.0.0.1"]);
        let one = |s: &'static str| std::iter::once(s);
        // Not from the proxy: the header is ignored.
        assert_eq!(
            client_ip(ip("1.2.3.4"), one("9.9.9.9"), &proxy),
            ip("1.2.3.4")
        );
        // From the proxy: the right-most untrusted entry, not the client-chosen left part.
        assert_eq!(
            client_ip(ip("10.0.0.1"), one("6.6.6.6, 5.5.5.5"), &proxy),
            ip("5.5.5.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), one("5.5.5.5, 10.0.0.1"), &proxy),
            ip("5.5.5.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), std::iter::empty(), &proxy),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), one("junk"), &proxy),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn every_header_line_counts_and_the_last_is_nearest() {
        let proxy = ranges(&["10.0.0.1"]);
        // The client sent its own line; the proxy appended the real address as a second one.
        let lines = ["6.6.6.6", "5.5.5.5"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines.into_iter(), &proxy),
            ip("5.5.5.5")
        );
    }

    #[test]
    fn mapped_addresses_and_ranges_match() {
        let local = ranges(&["127.0.0.1"]);
        // A local proxy on a dual-stack socket (`--host ::`).
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), std::iter::once("5.5.5.5"), &local),
            ip("5.5.5.5")
        );
        assert_eq!(
            client_ip(ip("::ffff:9.9.9.9"), std::iter::empty(), &local),
            ip("9.9.9.9"),
            "the peer itself is canonical too"
        );
        let nets = ranges(&["10.0.0.0/8", "fd00::/8", "::ffff:192.168.1.1"]);
        assert!(nets[0].contains(ip("10.200.3.4")) && !nets[0].contains(ip("11.0.0.1")));
        assert!(nets[1].contains(ip("fd12::1")) && !nets[1].contains(ip("fe80::1")));
        assert!(nets[2].contains(ip("192.168.1.1")));
        assert_eq!(
            client_ip(ip("10.1.1.1"), std::iter::once("5.5.5.5, 10.9.9.9"), &nets),
            ip("5.5.5.5")
        );
        assert!("0.0.0.0/0"
            .parse::<ProxyRange>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<ProxyRange>().is_err());
        assert!("nope".parse::<ProxyRange>().is_err());
    }
}
