//! QR codes drawn as inline SVG on the server, so the TOTP setup page needs no script and no
//! image from elsewhere.
//!
//! The SVG is built here from the modules of the code, never from user HTML: it holds only
//! numbers, fixed attribute names and an escaped label. It uses presentation attributes
//! (`fill`), never `style`, so the page's strict CSP draws it.

use std::fmt::Write as _;

use qrcode::{Color, EcLevel, QrCode};

/// Modules of light margin around the code: scanners need four.
const QUIET_ZONE: usize = 4;

/// Why a QR code could not be made.
#[derive(Debug)]
pub struct QrError(pub String);

impl std::fmt::Display for QrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QR code: {}", self.0)
    }
}

impl std::error::Error for QrError {}

/// `<svg id="{id}" role="img" aria-label="{label}">` drawing `data` as a QR code: one light
/// square and one path of dark modules, scaled by the page's stylesheet through `viewBox`.
pub fn svg(data: &str, id: &str, label: &str) -> Result<String, QrError> {
    // Medium error correction: an otpauth URL stays a small code, and a phone camera at an
    // angle still reads it.
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)
        .map_err(|e| QrError(e.to_string()))?;
    let width = code.width();
    let colors = code.to_colors();
    let side = width + 2 * QUIET_ZONE;
    let mut path = String::new();
    for (y, row) in colors.chunks(width).enumerate() {
        // Runs of dark modules in a row become one rectangle each: a path a third the size.
        let mut x = 0;
        while x < row.len() {
            if row[x] != Color::Dark {
                x += 1;
                continue;
            }
            let start = x;
            while x < row.len() && row[x] == Color::Dark {
                x += 1;
            }
            // Writing to a String cannot fail.
            let _ = write!(
                path,
                "M{} {}h{}v1h-{}z",
                start + QUIET_ZONE,
                y + QUIET_ZONE,
                x - start,
                x - start
            );
        }
    }
    Ok(format!(
        concat!(
            r#"<svg id="{id}" class="qr" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{label}" "#,
            r#"viewBox="0 0 {side} {side}" width="{px}" height="{px}" shape-rendering="crispEdges">"#,
            r##"<rect width="{side}" height="{side}" fill="#fff"/>"##,
            r##"<path fill="#000" d="{path}"/></svg>"##
        ),
        id = attribute(id),
        label = attribute(label),
        side = side,
        px = side * 4,
        path = path,
    ))
}

/// Text made safe inside a double-quoted attribute.
fn attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str =
        "otpauth://totp/secureclaw:ann?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=secureclaw";

    #[test]
    fn the_svg_is_one_well_formed_element_without_style() {
        let s = svg(URL, "totp-qr", "QR code of the secret").unwrap();
        assert!(s.starts_with(r#"<svg id="totp-qr" "#), "{s}");
        assert!(s.ends_with("</svg>"), "{s}");
        assert!(!s.contains("style"), "{s}");
        assert!(!s.contains("<?xml"), "{s}");
        assert!(s.contains(r#"role="img""#));
        assert!(s.contains(r#"aria-label="QR code of the secret""#));
        // Balanced: every element opened is closed, and no text content sneaks in.
        assert_eq!(s.matches("<svg").count(), 1);
        assert_eq!(s.matches("</svg>").count(), 1);
        assert_eq!(s.matches('<').count(), 4, "{s}");
        assert_eq!(s.matches("/>").count(), 2, "{s}");
        // Nothing of the URL itself (the secret) is written into the markup.
        assert!(!s.contains("JBSWY3DP"));
    }

    #[test]
    fn the_path_draws_exactly_the_codes_dark_modules() {
        let code = QrCode::with_error_correction_level(URL.as_bytes(), EcLevel::M).unwrap();
        let width = code.width();
        let s = svg(URL, "q", "x").unwrap();
        let d = s.split(r#" d=""#).nth(1).unwrap();
        let d = d.split('"').next().unwrap();
        assert!(d.bytes().all(|b| b"0123456789Mhvz- ".contains(&b)), "{d}");
        // Paint each `M{x} {y}h{run}v1h-{run}z` rectangle onto a grid and compare it with the
        // code's own modules.
        let mut painted = vec![false; width * width];
        for rect in d.split('M').skip(1) {
            let (xy, rest) = rect.split_once('h').unwrap();
            let (x, y) = xy.split_once(' ').unwrap();
            let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
            let run: usize = rest.split('v').next().unwrap().parse().unwrap();
            assert!(rest.ends_with(&format!("v1h-{run}z")), "{rect}");
            for dx in 0..run {
                let (mx, my) = (x + dx - QUIET_ZONE, y - QUIET_ZONE);
                assert!(!painted[my * width + mx], "painted twice: {rect}");
                painted[my * width + mx] = true;
            }
        }
        let expected: Vec<bool> = code.to_colors().iter().map(|c| *c == Color::Dark).collect();
        assert_eq!(painted, expected);
    }

    #[test]
    fn attribute_text_is_escaped() {
        let s = svg("x", "a\"b", "<script>&'").unwrap();
        assert!(s.contains(r#"id="a&quot;b""#));
        assert!(s.contains("aria-label=\"&lt;script&gt;&amp;&#39;\""));
    }
}
