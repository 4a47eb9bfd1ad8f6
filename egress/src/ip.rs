//! Which resolved addresses a step may reach.
//!
//! A name on the allowlist is only as good as what it resolves to: `allowed.example` pointing at
//! 127.0.0.1 or 169.254.169.254 would turn the proxy into a bridge to the host's own services or
//! the cloud metadata endpoint. So every resolved address must be public unicast; anything else
//! is refused unless the operator pinned that name to that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The reason an address is not public unicast, or `None` if it may be connected to.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let n = u32::from(ip);
    let in_net = |net: u32, bits: u32| (n ^ net) >> (32 - bits) == 0;
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("cloud metadata endpoint");
    }
    if ip.is_broadcast() {
        return Some("broadcast");
    }
    let class = match () {
        _ if o[0] == 0 => "unspecified / this network (0.0.0.0/8)",
        _ if o[0] == 10 => "private (10.0.0.0/8)",
        _ if in_net(0x6440_0000, 10) => "carrier-grade NAT (100.64.0.0/10)",
        _ if o[0] == 127 => "loopback (127.0.0.0/8)",
        _ if in_net(0xa9fe_0000, 16) => "link-local (169.254.0.0/16)",
        _ if in_net(0xac10_0000, 12) => "private (172.16.0.0/12)",
        _ if in_net(0xc000_0000, 24) => "IETF protocol assignments (192.0.0.0/24)",
        _ if in_net(0xc000_0200, 24) => "documentation (192.0.2.0/24)",
        _ if in_net(0xc058_6300, 24) => "6to4 relay anycast (192.88.99.0/24)",
        _ if in_net(0xc0a8_0000, 16) => "private (192.168.0.0/16)",
        _ if in_net(0xc612_0000, 15) => "benchmarking (198.18.0.0/15)",
        _ if in_net(0xc633_6400, 24) => "documentation (198.51.100.0/24)",
        _ if in_net(0xcb00_7100, 24) => "documentation (203.0.113.0/24)",
        _ if in_net(0xe000_0000, 4) => "multicast (224.0.0.0/4)",
        _ if in_net(0xf000_0000, 4) => "reserved (240.0.0.0/4)",
        _ => return None,
    };
    Some(class)
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some("cloud metadata endpoint");
    }
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // Addresses that embed an IPv4 address reach that IPv4 host, so they are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4).map(|_| "IPv4-mapped address of a forbidden IPv4 address");
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 well-known prefix 64:ff9b::/96: the gateway forwards to the embedded IPv4.
        let v4 = Ipv4Addr::new(
            (s[6] >> 8) as u8,
            (s[6] & 0xff) as u8,
            (s[7] >> 8) as u8,
            (s[7] & 0xff) as u8,
        );
        return v4_class(v4).map(|_| "NAT64 address of a forbidden IPv4 address");
    }
    if s[0] == 0x2002 {
        // 6to4 embeds the IPv4 address of the relay target in bits 16..48.
        let v4 = Ipv4Addr::new(
            (s[1] >> 8) as u8,
            (s[1] & 0xff) as u8,
            (s[2] >> 8) as u8,
            (s[2] & 0xff) as u8,
        );
        return v4_class(v4).map(|_| "6to4 address of a forbidden IPv4 address");
    }
    let class = match () {
        _ if s[0] & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        _ if s[0] & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        _ if s[0] & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        _ if s[0] & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        _ if s[0] == 0x2001 && s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        _ if s[0] == 0x3fff && s[1] & 0xf000 == 0 => "documentation (3fff::/20)",
        _ if s[0] == 0x2001 && s[1] < 0x0200 => {
            // 2001::/23 IETF protocol assignments, including Teredo (2001::/32), which tunnels
            // to an embedded, obfuscated IPv4 address.
            "IETF protocol assignments (2001::/23)"
        }
        _ if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1 => "local-use NAT64 (64:ff9b:1::/48)",
        _ if s[0] == 0x0100 && s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ if s[0] == 0x5f00 => "SRv6 SIDs (5f00::/16)",
        // Everything else outside global unicast 2000::/3 (including deprecated IPv4-compatible
        // ::a.b.c.d) is reserved or special-purpose.
        _ if s[0] & 0xe000 != 0x2000 => "reserved (outside 2000::/3)",
        _ => return None,
    };
    Some(class)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn table() {
        let forbidden = [
            "0.0.0.0",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fd00:ec2::254",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "::127.0.0.1",
            "100::1",
            "64:ff9b:1::1",
        ];
        for a in forbidden {
            assert!(
                forbidden_class(a.parse().unwrap()).is_some(),
                "{a} must be forbidden"
            );
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:808:808::",
        ];
        for a in public {
            assert_eq!(
                forbidden_class(a.parse().unwrap()),
                None,
                "{a} must be allowed"
            );
        }
    }
}
