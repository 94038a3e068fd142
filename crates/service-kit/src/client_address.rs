//! Whose request it is, by address: the socket's peer, or, when the peer is
//! a trusted proxy (nginx, ws-edge), the address it forwards in
//! `X-Forwarded-For`. Only a configured peer is believed: anybody else
//! could write any address there and get a fresh per-address limit with
//! every request. One rule for every service: the bidder's rate limits and
//! the edges' connection caps count the same address.

use crate::raw_http::RequestHead;
use axum::http::HeaderMap;
use settings::{Kind, Setting, SettingError, Settings};
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;

pub const TRUST_FORWARDED_FOR: Setting = Setting {
    key: "trust_forwarded_for",
    kind: Kind::Flag,
    default: Some("false"),
    help: "take the client address from `X-Forwarded-For`, only from `AUCTION_TRUSTED_PROXIES` \
           (behind a proxy: nginx, or ws-edge forwarding bids)",
    secret: false,
};

/// By default loopback and the private ranges a proxy or ws-edge sits in
/// (compose, Kubernetes).
pub const TRUSTED_PROXIES: Setting = Setting {
    key: "trusted_proxies",
    kind: Kind::List,
    default: Some("127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"),
    help: "comma list of addresses or networks (`addr/prefix`) whose `X-Forwarded-For` is \
           believed: nginx's and ws-edge's",
    secret: false,
};

/// The settings every service reads to find a client's address, alike.
pub const SETTINGS: &[Setting] = &[TRUST_FORWARDED_FOR, TRUSTED_PROXIES];

#[cfg(test)]
const DEFAULT_TRUSTED_PROXIES: &str = match TRUSTED_PROXIES.default {
    Some(networks) => networks,
    None => "",
};

/// An address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// `a.b.c.d`, `a.b.c.d/n`, or the same in IPv6.
    pub fn parse(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
            IpAddr::V6(v6) => (u128::from(v6), 128u32),
        };
        let (net, width) = bits(self.addr);
        let (ip, ip_width) = bits(ip.to_canonical());
        if width != ip_width {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

/// How a request's client address is found.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    /// `AUCTION_TRUST_FORWARDED_FOR`.
    pub trust_forwarded_for: bool,
    /// `AUCTION_TRUSTED_PROXIES`: the peers whose header is believed.
    pub trusted_proxies: Vec<Network>,
}

impl ClientAddress {
    /// `AUCTION_TRUST_FORWARDED_FOR` (off by default) and
    /// `AUCTION_TRUSTED_PROXIES` (loopback and the private ranges by
    /// default).
    pub fn read(settings: &Settings) -> Result<ClientAddress, SettingError> {
        Ok(ClientAddress {
            trust_forwarded_for: settings.flag(&TRUST_FORWARDED_FOR)?,
            trusted_proxies: settings
                .list(&TRUSTED_PROXIES)?
                .iter()
                .map(|text| {
                    Network::parse(text)
                        .map_err(|problem| settings.error(&TRUSTED_PROXIES, problem))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// The peer's address, or the first `X-Forwarded-For` entry when the
    /// peer is a trusted proxy (nginx and ws-edge set the header to their
    /// own client's address, overwriting whatever the client sent).
    pub fn of(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.of_forwarded(
            peer.ip(),
            headers.get("x-forwarded-for").map(|value| value.as_bytes()),
        )
    }

    /// [`of`](Self::of) for a request read on the raw socket.
    pub fn of_stream(&self, stream: &TcpStream, head: &RequestHead) -> IpAddr {
        // A socket without a peer is already gone; its request is not
        // served, whatever address it is counted under.
        let peer = stream
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
        self.of_forwarded(peer, head.header("x-forwarded-for"))
    }

    /// `peer`, or the first entry of `forwarded` (an `X-Forwarded-For`
    /// value) when `peer` is trusted and the entry is an address.
    pub fn of_forwarded(&self, peer: IpAddr, forwarded: Option<&[u8]>) -> IpAddr {
        let peer = peer.to_canonical();
        if self.trust_forwarded_for && self.trusted_proxies.iter().any(|net| net.contains(peer)) {
            let forwarded = forwarded
                .and_then(|value| std::str::from_utf8(value).ok())
                .and_then(|value| value.split(',').next())
                .and_then(|first| first.trim().parse::<IpAddr>().ok());
            if let Some(ip) = forwarded {
                return ip.to_canonical();
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(list: &str) -> Vec<Network> {
        list.split(',')
            .map(|n| Network::parse(n).unwrap())
            .collect()
    }

    #[test]
    fn networks_parse_and_match() {
        let nets = networks(DEFAULT_TRUSTED_PROXIES);
        for inside in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.9.9",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                nets.iter().any(|n| n.contains(inside.parse().unwrap())),
                "{inside}"
            );
        }
        for outside in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "11.0.0.1"] {
            assert!(
                !nets.iter().any(|n| n.contains(outside.parse().unwrap())),
                "{outside}"
            );
        }
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nonsense").is_err());
    }

    #[test]
    fn a_header_that_is_not_an_address_leaves_the_peer() {
        let clients = ClientAddress {
            trust_forwarded_for: true,
            trusted_proxies: networks(DEFAULT_TRUSTED_PROXIES),
        };
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        for value in [&b"nonsense"[..], b"", b"\xff\xfe", b" , 1.2.3.4"] {
            assert_eq!(clients.of_forwarded(peer, Some(value)), peer);
        }
        assert_eq!(clients.of_forwarded(peer, None), peer);
        assert_eq!(
            clients.of_forwarded(peer, Some(b" 2001:db8::1 , 10.0.0.1")),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        let clients = ClientAddress {
            trust_forwarded_for: true,
            trusted_proxies: networks("10.0.0.0/8"),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.9".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(
            clients.of(proxy, &headers),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(clients.of(stranger, &headers), stranger.ip());
        let off = ClientAddress {
            trust_forwarded_for: false,
            ..clients
        };
        assert_eq!(off.of(proxy, &headers), proxy.ip());
    }
}
