//! Which resolved addresses a step may reach.
//!
//! A name on the allowlist is only as good as what it resolves to: `allowed.example` pointing at
//! 127.0.0.1 or 169.254.169.254 would turn the proxy into a bridge to the host's own services or
//! the cloud metadata endpoint. So every resolved address must be public unicast; anything else
//! is refused unless the operator pinned that name to that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use serde::Deserialize;

/// The reviewed list of forbidden ranges (first match wins).
pub const FORBIDDEN_TOML: &str = include_str!("../policy/forbidden-addresses.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    range: Vec<RangeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeEntry {
    cidr: String,
    class: String,
}

/// One range, both families widened to 128 bits (IPv4 as its IPv4-mapped form).
struct Range {
    v6: bool,
    net: u128,
    bits: u32,
    class: &'static str,
}

impl Range {
    fn contains(&self, v6: bool, addr: u128) -> bool {
        let width = if self.v6 { 128 } else { 32 };
        self.v6 == v6 && (self.bits == 0 || (addr ^ self.net) >> (width - self.bits) == 0)
    }
}

/// Parse the policy text; an error names the entry.
fn parse_policy(text: &str) -> Result<Vec<Range>, String> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.range
        .into_iter()
        .map(|r| {
            let (addr, bits) = r
                .cidr
                .split_once('/')
                .ok_or_else(|| format!("`{}`: expected address/prefix", r.cidr))?;
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{}`: not an IP address", r.cidr))?;
            let bits: u32 = bits
                .parse()
                .map_err(|_| format!("`{}`: bad prefix length", r.cidr))?;
            let (v6, net, width) = match addr {
                IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
                IpAddr::V6(a) => (true, u128::from(a), 128),
            };
            if bits > width {
                return Err(format!("`{}`: prefix longer than the address", r.cidr));
            }
            if bits < width && net << bits << (128 - width) != 0 {
                return Err(format!("`{}`: host bits set below the prefix", r.cidr));
            }
            // Leaked once per process: the classes live as long as the policy.
            let class: &'static str = Box::leak(r.class.into_boxed_str());
            Ok(Range {
                v6,
                net,
                bits,
                class,
            })
        })
        .collect()
}

fn policy() -> &'static Result<Vec<Range>, String> {
    static POLICY: OnceLock<Result<Vec<Range>, String>> = OnceLock::new();
    POLICY.get_or_init(|| parse_policy(FORBIDDEN_TOML))
}

/// The reason an address is not public unicast, or `None` if it may be connected to.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    // Addresses that embed an IPv4 address reach that IPv4 host, so they are judged by it.
    if let IpAddr::V6(v6) = ip
        && let Some((v4, how)) = embedded_v4(v6)
    {
        return lookup(IpAddr::V4(v4)).map(|_| how);
    }
    lookup(ip)
}

fn lookup(ip: IpAddr) -> Option<&'static str> {
    let ranges = match policy() {
        Ok(r) => r,
        // Fail closed: an unreadable policy forbids everything (the policy test catches it).
        Err(_) => return Some("the forbidden-address policy does not parse"),
    };
    let (v6, addr) = match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    };
    ranges
        .iter()
        .find(|r| r.contains(v6, addr))
        .map(|r| r.class)
}

/// The IPv4 address inside an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        Ipv4Addr::new(
            (hi >> 8) as u8,
            (hi & 0xff) as u8,
            (lo >> 8) as u8,
            (lo & 0xff) as u8,
        )
    };
    if let Some(a) = ip.to_ipv4_mapped() {
        return Some((a, "IPv4-mapped address of a forbidden IPv4 address"));
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // The NAT64 gateway forwards to the embedded IPv4 address.
        return Some((v4(s[6], s[7]), "NAT64 address of a forbidden IPv4 address"));
    }
    if s[0] == 0x2002 {
        // 6to4 embeds the IPv4 address of the relay target in bits 16..48.
        return Some((v4(s[1], s[2]), "6to4 address of a forbidden IPv4 address"));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_shipped_policy_parses() {
        let ranges = parse_policy(FORBIDDEN_TOML).unwrap();
        assert!(ranges.len() >= 30, "{}", ranges.len());
    }

    #[test]
    fn a_broken_policy_is_refused_not_half_read() {
        for bad in [
            "[[range]]\ncidr = \"10.0.0.0\"\nclass = \"x\"\n",
            "[[range]]\ncidr = \"10.0.0.1/8\"\nclass = \"x\"\n",
            "[[range]]\ncidr = \"10.0.0.0/33\"\nclass = \"x\"\n",
            "[[range]]\ncidr = \"ten/8\"\nclass = \"x\"\n",
            "[[range]]\ncidr = \"10.0.0.0/8\"\nclas = \"typo\"\n",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad}");
        }
    }

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
