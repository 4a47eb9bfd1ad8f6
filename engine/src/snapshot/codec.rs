//! A compact binary form of a [`Manifest`] for the sealed stat cache and the in-flight record.
//!
//! JSON of a 100,000-path manifest is ~30 MB and takes longer to parse than the scan it saves;
//! this form is ~100 bytes a path (sorted paths share their prefix with the previous one,
//! hashes and blob ids are raw bytes, integers are LEB128) and decodes in a few milliseconds.
//! It is stored as one sealed vault value (one AEAD over the whole blob), like the JSON was.
//! Values written in JSON by earlier versions are still read.

use std::collections::BTreeMap;

use super::{Entry, EntryKind, Manifest, RelPath};

const MAGIC: &[u8; 6] = b"SCMF\x00\x01";

const F_SHA_RAW: u8 = 1;
const F_SHA_TEXT: u8 = 2;
const F_BLOB: u8 = 4;
const F_TARGET: u8 = 8;
const F_CAPS: u8 = 16;
const F_UNCAPTURED: u8 = 32;

/// Whether `bytes` is in this form (else it is JSON).
pub(crate) fn is_binary(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

fn put_uvar(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvar(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn kind_of(tag: u8) -> Option<EntryKind> {
    Some(match tag {
        b'f' => EntryKind::File,
        b'd' => EntryKind::Dir,
        b'l' => EntryKind::Symlink,
        b'p' => EntryKind::Fifo,
        b's' => EntryKind::Socket,
        b'c' => EntryKind::CharDevice,
        b'b' => EntryKind::BlockDevice,
        _ => return None,
    })
}

/// Encodes `m`, with `extra` (a small header the caller reads back with [`decode`]) first.
pub(crate) fn encode(extra: &[u8], m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + m.entries.len() * 112);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, extra);
    out.extend_from_slice(&m.scanned_at_ns.to_le_bytes());
    put_uvar(&mut out, m.entries.len() as u64);
    let mut prev: &[u8] = &[];
    for (p, e) in &m.entries {
        let shared = prev.iter().zip(&p.0).take_while(|(a, b)| a == b).count();
        put_uvar(&mut out, shared as u64);
        put_bytes(&mut out, &p.0[shared..]);
        prev = &p.0;
        out.push(e.kind.tag());
        // Raw only when the text is exactly what `hex::encode` gives back (64 lowercase
        // digits), so that decoding restores it byte for byte.
        let raw_sha = e
            .sha256
            .as_deref()
            .filter(|s| {
                s.len() == 64
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .and_then(|s| {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(s, &mut raw).ok().map(|_| raw)
            });
        let mut flags = 0u8;
        match (&e.sha256, raw_sha) {
            (Some(_), Some(_)) => flags |= F_SHA_RAW,
            (Some(_), None) => flags |= F_SHA_TEXT,
            _ => {}
        }
        if e.blob.is_some() {
            flags |= F_BLOB;
        }
        if e.target.is_some() {
            flags |= F_TARGET;
        }
        if e.file_caps {
            flags |= F_CAPS;
        }
        if e.uncaptured.is_some() {
            flags |= F_UNCAPTURED;
        }
        out.push(flags);
        put_uvar(&mut out, u64::from(e.mode));
        put_uvar(&mut out, e.size);
        put_uvar(&mut out, e.ino);
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.ctime_ns.to_le_bytes());
        match (&e.sha256, raw_sha) {
            (_, Some(raw)) => out.extend_from_slice(&raw),
            (Some(text), None) => put_bytes(&mut out, text.as_bytes()),
            _ => {}
        }
        if let Some(b) = &e.blob {
            out.extend_from_slice(b.as_bytes());
        }
        if let Some(t) = &e.target {
            put_bytes(&mut out, &t.0);
        }
        if let Some(u) = &e.uncaptured {
            put_bytes(&mut out, u.as_bytes());
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn uvar(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.uvar()?).ok()
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
    fn i128(&mut self) -> Option<i128> {
        Some(i128::from_le_bytes(self.take(16)?.try_into().ok()?))
    }
    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// 32 bytes as 64 lowercase hex digits (`hex::encode` goes through a char iterator: it was a
/// tenth of decoding a large manifest).
fn hex32(raw: &[u8]) -> Option<String> {
    let mut out = [0u8; 64];
    hex::encode_to_slice(raw, &mut out).ok()?;
    String::from_utf8(out.to_vec()).ok()
}

/// Decodes what [`encode`] wrote: the caller's header and the manifest. `None`: not this form,
/// or damaged (a sealed value is authenticated, so only a bug or an older format gets here).
pub(crate) fn decode(bytes: &[u8]) -> Option<(Vec<u8>, Manifest)> {
    let mut r = Reader {
        buf: bytes.strip_prefix(MAGIC)?,
        at: 0,
    };
    let extra = r.bytes()?.to_vec();
    let scanned_at_ns = r.i128()?;
    let n = r.len()?;
    let mut entries = Vec::with_capacity(n.min(bytes.len()));
    let mut prev: Vec<u8> = Vec::new();
    for _ in 0..n {
        let shared = r.len()?;
        let mut path = prev.get(..shared)?.to_vec();
        path.extend_from_slice(r.bytes()?);
        let kind = kind_of(r.byte()?)?;
        let flags = r.byte()?;
        let mode = u32::try_from(r.uvar()?).ok()?;
        let size = r.uvar()?;
        let ino = r.uvar()?;
        let mtime_ns = r.i128()?;
        let ctime_ns = r.i128()?;
        let sha256 = if flags & F_SHA_RAW != 0 {
            Some(hex32(r.take(32)?)?)
        } else if flags & F_SHA_TEXT != 0 {
            Some(r.text()?)
        } else {
            None
        };
        let blob = if flags & F_BLOB != 0 {
            Some(hex32(r.take(32)?)?.parse().ok()?)
        } else {
            None
        };
        let target = if flags & F_TARGET != 0 {
            Some(RelPath(r.bytes()?.to_vec()))
        } else {
            None
        };
        let uncaptured = if flags & F_UNCAPTURED != 0 {
            Some(r.text()?)
        } else {
            None
        };
        prev.clone_from(&path);
        entries.push((
            RelPath(path),
            Entry {
                kind,
                mode,
                size,
                sha256,
                blob,
                target,
                ino,
                mtime_ns,
                ctime_ns,
                file_caps: flags & F_CAPS != 0,
                uncaptured,
            },
        ));
    }
    if r.at != r.buf.len() {
        return None;
    }
    // Encoded from a map, so already sorted and unique; collecting a sorted Vec is linear.
    let entries: BTreeMap<RelPath, Entry> = entries.into_iter().collect();
    if entries.len() != n {
        return None;
    }
    Some((
        extra,
        Manifest {
            scanned_at_ns,
            entries,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            size: 0,
            sha256: None,
            blob: None,
            target: None,
            ino: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            file_caps: false,
            uncaptured: None,
        }
    }

    #[test]
    fn every_field_round_trips() {
        let blob: secureclaw_vault::BlobId = "ab".repeat(32).parse().unwrap();
        let mut m = Manifest {
            scanned_at_ns: -5,
            entries: BTreeMap::new(),
        };
        let mut f = entry(EntryKind::File);
        f.size = u64::MAX;
        f.ino = 1 << 40;
        f.mtime_ns = i128::MIN;
        f.ctime_ns = i128::MAX;
        f.sha256 = Some(hex::encode([7u8; 32]));
        f.blob = Some(blob);
        f.file_caps = true;
        m.entries.insert(RelPath(b"a/b".to_vec()), f);
        let mut odd = entry(EntryKind::File);
        // Not 64 lowercase hex digits: kept as text, byte for byte.
        odd.sha256 = Some("ABCDEF".into());
        odd.uncaptured = Some("too large \u{e9}".into());
        m.entries.insert(RelPath(b"a/b\xff\n".to_vec()), odd);
        let mut upper = entry(EntryKind::File);
        upper.sha256 = Some("AB".repeat(32));
        m.entries.insert(RelPath(b"a/c".to_vec()), upper);
        let mut l = entry(EntryKind::Symlink);
        l.target = Some(RelPath(b"../x\x00y".to_vec()));
        m.entries.insert(RelPath(b"l".to_vec()), l);
        for k in [
            EntryKind::Dir,
            EntryKind::Fifo,
            EntryKind::Socket,
            EntryKind::CharDevice,
            EntryKind::BlockDevice,
        ] {
            m.entries.insert(
                RelPath(format!("k{}", k.tag() as char).into_bytes()),
                entry(k),
            );
        }
        let bytes = encode(b"step-1", &m);
        assert!(is_binary(&bytes));
        let (extra, back) = decode(&bytes).unwrap();
        assert_eq!(extra, b"step-1");
        assert_eq!(back.scanned_at_ns, m.scanned_at_ns);
        assert_eq!(back.entries, m.entries);
        assert_eq!(back.hash(), m.hash());
    }

    #[test]
    fn truncated_or_trailing_bytes_are_refused() {
        let mut m = Manifest::default();
        for i in 0..20 {
            let mut e = entry(EntryKind::File);
            e.sha256 = Some(hex::encode([i as u8; 32]));
            m.entries.insert(RelPath(format!("d/f{i}").into_bytes()), e);
        }
        let bytes = encode(b"", &m);
        for cut in [bytes.len() - 1, bytes.len() / 2, MAGIC.len() + 1] {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        assert!(decode(b"{\"entries\": []}").is_none());
    }
}
