//! Encrypted, content-addressed, deduplicated blob store (file pre-images for revert).
//!
//! A blob's id is HMAC-SHA256(name_key, "blob\0" || content): equal contents share one file,
//! and the id says nothing about the content or the path it came from. Files live at
//! `blobs/<2 hex>/<62 hex>` and are streamed in 64 KiB chunks:
//!
//! ```text
//! "SCBLOB01" | salt(16) | chunk_size(u32 LE)                        header, 28 bytes
//! per chunk: epoch(u32 LE) | nonce(12) | AES-256-GCM(chunk) || tag   chunk_size + 32 bytes
//! AAD = "secureclaw/v1/blob\0" || header || chunk index (u64 LE) || final flag (1 byte)
//! ```
//!
//! The AAD fixes each chunk's position and marks the last one, so chunks cannot be reordered,
//! spliced in from another blob, or cut off; a blob file renamed to another id is caught by
//! recomputing the id over the decrypted content.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, HmacStream, NONCE_LEN, TAG_LEN};
use crate::error::VaultError;
use crate::{BLOB_DIR, Inner};

const MAGIC: &[u8; 8] = b"SCBLOB01";
const HEADER_LEN: usize = 8 + 16 + 4;
const CHUNK: usize = 64 * 1024;
const CHUNK_OVERHEAD: usize = 4 + NONCE_LEN + TAG_LEN;
const DOMAIN_BLOB: &[u8] = b"secureclaw/v1/blob\0";
const NAME_PREFIX: &[u8] = b"blob\0";
/// Chunk encryptions are accounted (durably) in groups this size while streaming.
const RESERVE_GROUP: u64 = 256;

/// A blob's content address: 32 bytes, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

impl FromStr for BlobId {
    type Err = VaultError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v =
            hex::decode(s).map_err(|e| VaultError::InvalidParams(format!("blob id {s:?}: {e}")))?;
        let arr: [u8; 32] = v.try_into().map_err(|_| {
            VaultError::InvalidParams(format!("blob id {s:?}: must be 64 hex digits"))
        })?;
        Ok(Self(arr))
    }
}

impl Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub kept: u64,
    pub removed: u64,
    pub bytes_freed: u64,
}

/// A handle on the vault's blob store.
pub struct Blobs<'v> {
    inner: &'v Inner,
}

fn chunk_aad(header: &[u8], index: u64, last: bool) -> Vec<u8> {
    [DOMAIN_BLOB, header, &index.to_le_bytes(), &[u8::from(last)]].concat()
}

impl<'v> Blobs<'v> {
    pub(crate) fn new(inner: &'v Inner) -> Self {
        Self { inner }
    }

    fn root(&self) -> PathBuf {
        self.inner.dir.join(BLOB_DIR)
    }

    fn path_of(&self, id: &BlobId) -> PathBuf {
        let h = id.to_hex();
        self.root().join(&h[..2]).join(&h[2..])
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> VaultError {
        VaultError::io(format!("{what} {}", path.display()), e)
    }

    /// Stores `data`; returns its id. Storing the same content twice writes it once.
    pub fn put(&self, data: &[u8]) -> Result<BlobId, VaultError> {
        self.inner.require_writable()?;
        let mut mac = HmacStream::new(self.inner.keys.name_key.as_ref());
        mac.update(NAME_PREFIX);
        mac.update(data);
        let id = BlobId(mac.finish());
        if self.contains(&id) {
            return Ok(id);
        }
        let chunks = data.len().div_ceil(CHUNK).max(1) as u64;
        let epoch = self.inner.reserve_encryptions(chunks)?;
        let (tmp, mut w, header) = self.start_temp()?;
        let result = (|| {
            let mut pieces = data.chunks(CHUNK).peekable();
            if pieces.peek().is_none() {
                self.write_chunk(&mut w, &header, epoch, 0, &[], true)?;
            }
            let mut index = 0u64;
            while let Some(piece) = pieces.next() {
                let last = pieces.peek().is_none();
                self.write_chunk(&mut w, &header, epoch, index, piece, last)?;
                index += 1;
            }
            self.finish_temp(&tmp, w, &id)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| id)
    }

    /// Stores everything `reader` yields, streaming: memory use stays at a few chunks whatever
    /// the size. The plaintext never touches the disk.
    pub fn put_reader(&self, mut reader: impl Read) -> Result<BlobId, VaultError> {
        self.inner.require_writable()?;
        let (tmp, mut w, header) = self.start_temp()?;
        let result = (|| {
            let mut mac = HmacStream::new(self.inner.keys.name_key.as_ref());
            mac.update(NAME_PREFIX);
            let mut pending = zeroize::Zeroizing::new(Vec::with_capacity(CHUNK));
            let mut index = 0u64;
            let mut budget = 0u64;
            let mut epoch = 0u32;
            let mut eof = false;
            // Keep one full chunk pending until we know whether more data follows, so the final
            // chunk (possibly full-size) is the one flagged last.
            fill(&mut reader, &mut pending, &mut eof)?;
            loop {
                let mut more = zeroize::Zeroizing::new(Vec::with_capacity(CHUNK));
                if !eof {
                    fill(&mut reader, &mut more, &mut eof)?;
                }
                let last = more.is_empty();
                if budget == 0 {
                    epoch = self.inner.reserve_encryptions(RESERVE_GROUP)?;
                    budget = RESERVE_GROUP;
                }
                mac.update(&pending);
                self.write_chunk(&mut w, &header, epoch, index, &pending, last)?;
                budget -= 1;
                index += 1;
                if last {
                    break;
                }
                pending = more;
            }
            let id = BlobId(mac.finish());
            self.finish_temp(&tmp, w, &id)?;
            Ok(id)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Streams a file into the store.
    pub fn put_file(&self, path: &Path) -> Result<BlobId, VaultError> {
        let f = fs::File::open(path).map_err(|e| self.io("opening", path, e))?;
        self.put_reader(f)
    }

    fn start_temp(
        &self,
    ) -> Result<(PathBuf, std::io::BufWriter<fs::File>, [u8; HEADER_LEN]), VaultError> {
        let tmp_dir = self.root().join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| self.io("creating", &tmp_dir, e))?;
        let mut rnd = [0u8; 16];
        crypto::random_bytes(&mut rnd)?;
        let tmp = tmp_dir.join(hex::encode(rnd));
        let f = fs::File::create(&tmp).map_err(|e| self.io("creating", &tmp, e))?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        crypto::random_bytes(&mut header[8..24])?;
        header[24..].copy_from_slice(&(CHUNK as u32).to_le_bytes());
        let mut w = std::io::BufWriter::with_capacity(CHUNK + CHUNK_OVERHEAD, f);
        w.write_all(&header)
            .map_err(|e| self.io("writing", &tmp, e))?;
        Ok((tmp, w, header))
    }

    fn write_chunk(
        &self,
        w: &mut impl Write,
        header: &[u8],
        epoch: u32,
        index: u64,
        plain: &[u8],
        last: bool,
    ) -> Result<(), VaultError> {
        let nonce = crypto::random_nonce()?;
        let ct =
            self.inner
                .keys
                .cipher(epoch)?
                .seal(&nonce, &chunk_aad(header, index, last), plain)?;
        let io = |e| VaultError::io("writing a blob chunk", e);
        w.write_all(&epoch.to_le_bytes()).map_err(io)?;
        w.write_all(&nonce).map_err(io)?;
        w.write_all(&ct).map_err(io)
    }

    fn finish_temp(
        &self,
        tmp: &Path,
        w: std::io::BufWriter<fs::File>,
        id: &BlobId,
    ) -> Result<(), VaultError> {
        let f = w
            .into_inner()
            .map_err(|e| self.io("flushing", tmp, e.into_error()))?;
        f.sync_all().map_err(|e| self.io("syncing", tmp, e))?;
        drop(f);
        let dest = self.path_of(id);
        let _guard = self
            .inner
            .blob_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if dest.is_file() {
            // Same content already stored (a concurrent put, or dedup after streaming).
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        let parent = dest.parent().unwrap_or(&dest);
        let new_dir = !parent.is_dir();
        fs::create_dir_all(parent).map_err(|e| self.io("creating", parent, e))?;
        fs::rename(tmp, &dest).map_err(|e| self.io("renaming into", &dest, e))?;
        // The rename (and a new prefix directory) must be durable before the ledger refers to
        // this blob.
        let sync_dir = |d: &Path| {
            fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(|e| self.io("syncing", d, e))
        };
        sync_dir(parent)?;
        if new_dir {
            sync_dir(&self.root())?;
        }
        Ok(())
    }

    /// Whether a blob with this id is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.path_of(id).is_file()
    }

    /// Reads and fully authenticates a blob (content and id) before returning it.
    pub fn get(&self, id: &BlobId) -> Result<Vec<u8>, VaultError> {
        let mut out = Vec::new();
        self.copy_to(id, &mut out)?;
        Ok(out)
    }

    /// Streams a blob into `w`, returning its length. Every chunk is authenticated before it is
    /// written; the id check over the whole content can only complete at the end, so on error
    /// `w` may hold a prefix of a blob stored under another id: use [`Blobs::restore_to_path`]
    /// when the destination must never see unverified data.
    pub fn copy_to(&self, id: &BlobId, w: &mut impl Write) -> Result<u64, VaultError> {
        let path = self.path_of(id);
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaultError::BlobNotFound(*id));
            }
            Err(e) => return Err(self.io("opening", &path, e)),
        };
        let corrupt = |reason: &str| VaultError::BlobCorrupt {
            id: id.to_hex(),
            reason: reason.to_owned(),
        };
        let mut r = BufReader::with_capacity(2 * (CHUNK + CHUNK_OVERHEAD), f);
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut r, &mut header).map_err(|e| self.io("reading", &path, e))?;
        if got != HEADER_LEN || &header[..8] != MAGIC {
            return Err(corrupt("bad header (not a secureclaw blob, or truncated)"));
        }
        let chunk_size =
            u32::from_le_bytes([header[24], header[25], header[26], header[27]]) as usize;
        if chunk_size == 0 || chunk_size > 16 * 1024 * 1024 {
            return Err(corrupt("bad chunk size in header"));
        }
        let mut mac = HmacStream::new(self.inner.keys.name_key.as_ref());
        mac.update(NAME_PREFIX);
        let mut buf = vec![0u8; chunk_size + CHUNK_OVERHEAD];
        let mut total = 0u64;
        let mut index = 0u64;
        loop {
            let n = read_full(&mut r, &mut buf).map_err(|e| self.io("reading", &path, e))?;
            if n < CHUNK_OVERHEAD {
                return Err(corrupt(if n == 0 {
                    "the final chunk is missing (file truncated)"
                } else {
                    "a chunk is cut short (file truncated)"
                }));
            }
            let last = n < buf.len() || {
                let rest =
                    std::io::BufRead::fill_buf(&mut r).map_err(|e| self.io("reading", &path, e))?;
                rest.is_empty()
            };
            let epoch = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&buf[4..4 + NONCE_LEN]);
            let plain = zeroize::Zeroizing::new(
                self.inner
                    .keys
                    .cipher(epoch)?
                    .open(&nonce, &chunk_aad(&header, index, last), &buf[4 + NONCE_LEN..n])
                    .ok_or_else(|| {
                        corrupt(&format!(
                            "chunk {index} failed authentication (modified, reordered, truncated, or from another blob)"
                        ))
                    })?,
            );
            mac.update(&plain);
            w.write_all(&plain)
                .map_err(|e| VaultError::io("writing blob content", e))?;
            total += plain.len() as u64;
            index += 1;
            if last {
                break;
            }
        }
        if !crypto::mac_eq(&mac.finish(), id.as_bytes()) {
            return Err(corrupt(
                "content does not match its id (blob file renamed or swapped)",
            ));
        }
        Ok(total)
    }

    /// Restores a blob to `dest` atomically: it is written to a temporary file beside `dest`,
    /// fully verified, synced, then renamed over `dest`. On error `dest` is untouched.
    pub fn restore_to_path(&self, id: &BlobId, dest: &Path) -> Result<u64, VaultError> {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut rnd = [0u8; 8];
        crypto::random_bytes(&mut rnd)?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.secureclaw-restore-{}", hex::encode(rnd)));
        let result = (|| {
            let f = fs::File::create(&tmp).map_err(|e| self.io("creating", &tmp, e))?;
            let mut w = std::io::BufWriter::new(f);
            let n = self.copy_to(id, &mut w)?;
            let f = w
                .into_inner()
                .map_err(|e| self.io("flushing", &tmp, e.into_error()))?;
            f.sync_all().map_err(|e| self.io("syncing", &tmp, e))?;
            fs::rename(&tmp, dest).map_err(|e| self.io("renaming into", dest, e))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Every stored blob id.
    pub fn list(&self) -> Result<Vec<BlobId>, VaultError> {
        let mut out = Vec::new();
        self.scan(|id, _, _| {
            out.push(id);
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    /// (count, bytes on disk) of stored blobs.
    pub fn stats(&self) -> Result<(u64, u64), VaultError> {
        let (mut n, mut bytes) = (0u64, 0u64);
        self.scan(|_, _, len| {
            n += 1;
            bytes += len;
            Ok(())
        })?;
        Ok((n, bytes))
    }

    fn scan(
        &self,
        mut f: impl FnMut(BlobId, &Path, u64) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let root = self.root();
        let top = match fs::read_dir(&root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("listing", &root, e)),
        };
        for d in top {
            let d = d.map_err(|e| self.io("listing", &root, e))?;
            let prefix = d.file_name().to_string_lossy().into_owned();
            if prefix.len() != 2 || !d.path().is_dir() {
                continue;
            }
            let sub = d.path();
            for e in fs::read_dir(&sub).map_err(|e| self.io("listing", &sub, e))? {
                let e = e.map_err(|err| self.io("listing", &sub, err))?;
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                let Ok(id) = name.parse::<BlobId>() else {
                    continue;
                };
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                f(id, &e.path(), len)?;
            }
        }
        Ok(())
    }

    /// Deletes every blob not in `live`.
    ///
    /// The caller computes `live` from the run records; a blob stored after that computation
    /// but before its reference is recorded would be collected, so run gc when no run is
    /// writing (the engine does it between runs).
    pub fn gc(&self, live: &HashSet<BlobId>) -> Result<GcReport, VaultError> {
        self.inner.require_writable()?;
        let _guard = self
            .inner
            .blob_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut report = GcReport::default();
        let mut doomed = Vec::new();
        self.scan(|id, path, len| {
            if live.contains(&id) {
                report.kept += 1;
            } else {
                doomed.push((path.to_path_buf(), len));
            }
            Ok(())
        })?;
        for (path, len) in doomed {
            fs::remove_file(&path).map_err(|e| self.io("removing", &path, e))?;
            report.removed += 1;
            report.bytes_freed += len;
        }
        Ok(report)
    }
}

/// Reads until `buf` is full or EOF; returns the byte count.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Fills `out` up to one chunk from `r`, setting `eof` when the reader is exhausted.
fn fill(r: &mut impl Read, out: &mut Vec<u8>, eof: &mut bool) -> Result<(), VaultError> {
    out.resize(CHUNK, 0);
    let n = read_full(r, out).map_err(|e| VaultError::io("reading blob input", e))?;
    out.truncate(n);
    if n < CHUNK {
        *eof = true;
    }
    Ok(())
}
