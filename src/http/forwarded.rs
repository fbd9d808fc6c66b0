//! The client a request came from, when proxies stand between
//! (`server.trusted_proxies`, GUARANTEES.md: "Operations"). A peer that is
//! one of the trusted proxies passes the client on in `X-Forwarded-For`
//! (each proxy appends the address it saw) or `Forwarded` (RFC 7239); the
//! client is the nearest address, walking back from the peer, that is not
//! itself a trusted proxy. A peer that is not trusted is the client,
//! whatever the headers claim. Pure.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The client of a request from `peer` with `headers`.
pub fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match forwarded_for(headers) {
        Some(hops) => hops,
        None => x_forwarded_for(headers),
    };
    // From the nearest hop back: the first one that is not a proxy of
    // ours is where the request entered. One that cannot be read ends the
    // walk at the last address known good.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => client = *ip,
            Some(ip) => return *ip,
            None => return client,
        }
    }
    client
}

/// The `X-Forwarded-For` hops, in order, over every such header; `None`
/// for one that is not an address.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// The `for=` of each `Forwarded` element, in order; None when no such
/// header is present.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let values: Vec<_> = headers.get_all("forwarded").iter().collect();
    if values.is_empty() {
        return None;
    }
    Some(
        values
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("for=?").split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.eq_ignore_ascii_case("for")
                        .then(|| parse_node(value.trim().trim_matches('"')))
                })
            })
            .collect(),
    )
}

/// An address as proxies write it: `203.0.113.7`, `203.0.113.7:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`. Anything else (`unknown`, an
/// obfuscated `_name`) is None.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_nearest_address_that_is_no_proxy_of_ours() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let proxy = ip("10.1.2.3");
        for (h, expected) in [
            // Behind one proxy; a client's own claim further back is not
            // believed past the first untrusted hop.
            (
                headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.7")]),
                "203.0.113.7",
            ),
            (
                headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.5")]),
                "203.0.113.7",
            ),
            (
                headers(&[
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-for", "10.0.0.5"),
                ]),
                "203.0.113.7",
            ),
            (
                headers(&[(
                    "forwarded",
                    "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.5",
                )]),
                "2001:db8::1",
            ),
            (
                headers(&[("forwarded", "for=203.0.113.7:80")]),
                "203.0.113.7",
            ),
            // Nothing forwarded, or only proxies: the last one known.
            (headers(&[]), "10.1.2.3"),
            (headers(&[("x-forwarded-for", "10.0.0.7")]), "10.0.0.7"),
            // A hop that is not an address stops the walk.
            (
                headers(&[("x-forwarded-for", "203.0.113.7, garbage")]),
                "10.1.2.3",
            ),
            (headers(&[("forwarded", "for=unknown")]), "10.1.2.3"),
        ] {
            assert_eq!(client(proxy, &h, &trusted), ip(expected), "{h:?}");
        }
        // A peer that is no proxy of ours is the client, whatever it says.
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(client(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        assert_eq!(client(proxy, &h, &[]), proxy);
    }
}
