//! Host-name canonicalisation and request-target parsing.
//!
//! Every security decision in this crate is made on the *canonical* form produced here: lowercase
//! ASCII (IDNA UTS 46 `to_ascii`), no trailing dot, never an IP literal. The proxy then connects
//! to addresses resolved from exactly that canonical name, so whatever spelling a client used
//! (fullwidth letters, ideographic full stops, upper case, a trailing dot) it can only reach the
//! name that was checked.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

use crate::RefusalReason;

/// Longest raw host we even look at. DNS names are at most 253 ASCII bytes; a Unicode spelling can
/// be longer before IDNA, but not by more than 4 bytes per character.
const MAX_RAW_HOST: usize = 253 * 4;

/// Canonicalise a host name as a client sent it (no port, no brackets).
///
/// Refuses: empty or overlong names, control characters, percent-encoding, userinfo (`@`),
/// IPv6 literals and any other ASCII character outside `[A-Za-z0-9.-]`, invalid IDNA, empty
/// labels, and anything that a URL parser or resolver could read as an IPv4 address (dotted,
/// decimal `2130706433`, octal `0177.1`, hex `0x7f.1`, fullwidth digits after mapping).
pub fn canonical_host(raw: &str) -> Result<String, RefusalReason> {
    if raw.is_empty() {
        return Err(RefusalReason::EmptyHost);
    }
    if raw.len() > MAX_RAW_HOST {
        return Err(RefusalReason::HostTooLong);
    }
    // Order matters only for the reason reported; each check alone is sufficient to refuse.
    if raw.chars().any(char::is_control) {
        return Err(RefusalReason::ControlCharacter);
    }
    if raw.contains('%') {
        // A percent-decoding URL parser would turn `allowed%2ecom` into `allowed.com` and a
        // different component might decode differently: never guess, refuse.
        return Err(RefusalReason::PercentEncoding);
    }
    if raw.contains('@') {
        return Err(RefusalReason::Userinfo);
    }
    if raw.starts_with('[') || raw.contains(':') {
        return Err(RefusalReason::IpLiteral);
    }
    if let Some(c) = raw
        .chars()
        .find(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(RefusalReason::InvalidCharacter { character: c });
    }
    // One trailing dot is the DNS root and means the same name; more than one is an empty label.
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(RefusalReason::EmptyHost);
    }
    if trimmed.split('.').any(str::is_empty) {
        return Err(RefusalReason::EmptyLabel);
    }
    // STD3 rules + DNS length verification; hyphens only checked at label ends so real CDN names
    // like `r1---sn-x.googlevideo.com` stay usable.
    let ascii = Uts46::new()
        .to_ascii(
            trimmed.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map_err(|_| RefusalReason::InvalidIdna)?;
    let ascii = ascii.into_owned();
    // UTS 46 maps e.g. U+3002 to '.', so re-check the mapped form for what the raw check covered.
    if ascii.is_empty() || ascii.ends_with('.') || ascii.split('.').any(str::is_empty) {
        return Err(RefusalReason::EmptyLabel);
    }
    if ascii.len() > 253 {
        return Err(RefusalReason::HostTooLong);
    }
    // STD3 already guarantees this; re-stating it keeps the invariant the rest of the crate
    // relies on (and the Host header it writes) independent of the IDNA crate's rules.
    if let Some(c) = ascii
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Err(RefusalReason::InvalidCharacter { character: c });
    }
    if looks_like_ipv4(&ascii) {
        return Err(RefusalReason::IpLiteral);
    }
    Ok(ascii)
}

/// WHATWG URL "ends in a number": a host whose last label is all digits or `0x`-hex is parsed as
/// an IPv4 address by browsers, curl and `inet_aton`. No real TLD is numeric, so refusing these
/// costs nothing and closes every `2130706433` / `0x7f.1` / `127.1` trick at once.
fn looks_like_ipv4(ascii: &str) -> bool {
    if ascii.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let last = ascii.rsplit('.').next().unwrap_or(ascii);
    is_numeric_label(last)
}

fn is_numeric_label(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    if let Some(hex) = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        return hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    label.chars().all(|c| c.is_ascii_digit())
}

/// A checked destination: canonical host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Canonical ASCII host (see [`canonical_host`]).
    pub host: String,
    /// Destination port.
    pub port: u16,
}

/// Split `authority` (`host[:port]`) into the raw host and port, without judging the host.
/// `default_port` applies when there is no `:port` (absolute-form `http://host/`); CONNECT passes
/// `None` because RFC 9110 requires an explicit port there.
pub fn split_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<(&str, u16), RefusalReason> {
    if authority.contains('@') {
        // `allowed.com@evil.com` is userinfo `allowed.com` for host `evil.com`: never accept
        // userinfo at all, so no two parsers can disagree about which part is the host.
        return Err(RefusalReason::Userinfo);
    }
    if authority.starts_with('[') {
        return Err(RefusalReason::IpLiteral);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            if host.contains(':') {
                // Unbracketed IPv6 such as `::1:443`.
                return Err(RefusalReason::IpLiteral);
            }
            Ok((host, parse_port(port)?))
        }
        None => match default_port {
            Some(p) => Ok((authority, p)),
            None => Err(RefusalReason::MissingPort),
        },
    }
}

fn parse_port(s: &str) -> Result<u16, RefusalReason> {
    // Digits only: `u16::from_str` would accept a leading `+`.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RefusalReason::InvalidPort);
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(RefusalReason::InvalidPort),
        Ok(p) => Ok(p),
    }
}

/// A parsed absolute-form request target (`http://host[:port]/path?query`).
#[derive(Debug, PartialEq, Eq)]
pub struct AbsoluteTarget<'a> {
    /// The authority exactly as sent.
    pub authority: &'a str,
    /// Origin-form to send upstream (`/path?query`, never empty, fragment removed).
    pub origin_form: String,
}

/// Parse an absolute-form target. Only `http://`: HTTPS goes through CONNECT, and any other
/// scheme is not something this proxy speaks.
pub fn parse_absolute(target: &str) -> Result<AbsoluteTarget<'_>, RefusalReason> {
    let rest = match target.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &target[7..],
        _ => {
            if target.starts_with('/') {
                return Err(RefusalReason::NotAProxyRequest);
            }
            return Err(RefusalReason::UnsupportedScheme);
        }
    };
    // Backslash counts as a path separator for WHATWG parsers of http URLs but not for others, so
    // `http://evil.com\@allowed.com/` has two readings: cut the authority there and refuse below.
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let tail = tail.split('#').next().unwrap_or("");
    let origin_form = if tail.is_empty() {
        "/".to_owned()
    } else if tail.starts_with('/') {
        tail.to_owned()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        // A backslash right after the authority: ambiguous between parsers, refuse.
        return Err(RefusalReason::InvalidCharacter { character: '\\' });
    };
    Ok(AbsoluteTarget {
        authority,
        origin_form,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn canonical_basic() {
        assert_eq!(canonical_host("Example.COM.").unwrap(), "example.com");
        assert_eq!(canonical_host("bücher.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(
            canonical_host("r1---sn-a.googlevideo.com").unwrap(),
            "r1---sn-a.googlevideo.com"
        );
    }

    #[test]
    fn numeric_forms_are_ip_literals() {
        for h in [
            "2130706433",
            "0x7f.1",
            "127.1",
            "0177.0.0.1",
            "1.2.3.4",
            "a.0x",
            "１２７.０.０.１",
        ] {
            assert_eq!(canonical_host(h), Err(RefusalReason::IpLiteral), "{h}");
        }
    }

    #[test]
    fn absolute_form() {
        let t = parse_absolute("http://a.test:8080/x?y#frag").unwrap();
        assert_eq!(t.authority, "a.test:8080");
        assert_eq!(t.origin_form, "/x?y");
        assert_eq!(parse_absolute("HTTP://a.test").unwrap().origin_form, "/");
        assert_eq!(
            parse_absolute("http://a.test?q").unwrap().origin_form,
            "/?q"
        );
        assert_eq!(
            parse_absolute("https://a.test/"),
            Err(RefusalReason::UnsupportedScheme)
        );
        assert_eq!(
            parse_absolute("/index.html"),
            Err(RefusalReason::NotAProxyRequest)
        );
        // A WHATWG parser reads host `evil.com` here, a naive one `a.test`: refuse outright.
        assert!(parse_absolute("http://evil.com\\@a.test/").is_err());
    }

    #[test]
    fn authority() {
        assert_eq!(
            split_authority("a.test:443", None).unwrap(),
            ("a.test", 443)
        );
        assert_eq!(split_authority("a.test", Some(80)).unwrap(), ("a.test", 80));
        assert_eq!(
            split_authority("a.test", None),
            Err(RefusalReason::MissingPort)
        );
        assert_eq!(
            split_authority("a.test:+80", None),
            Err(RefusalReason::InvalidPort)
        );
        assert_eq!(
            split_authority("a.test:0", None),
            Err(RefusalReason::InvalidPort)
        );
        assert_eq!(
            split_authority("a.test:65536", None),
            Err(RefusalReason::InvalidPort)
        );
        assert_eq!(
            split_authority("[::1]:443", None),
            Err(RefusalReason::IpLiteral)
        );
        assert_eq!(
            split_authority("::1:443", None),
            Err(RefusalReason::IpLiteral)
        );
        assert_eq!(
            split_authority("a.test@evil.test:443", None),
            Err(RefusalReason::Userinfo)
        );
    }
}
