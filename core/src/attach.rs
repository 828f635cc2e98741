//! Attachments: per-file encryption, chunking, manifests, and the receiving side's
//! bookkeeping for verified, resumable transfers.
//!
//! A file is encrypted once, with its own random 256-bit key, by its sender:
//!
//! - It is cut into chunks of [`CHUNK_BYTES`] plaintext bytes (the last may be shorter;
//!   an empty file has no chunks). Chunk `i` is sealed with ChaCha20-Poly1305 under the
//!   file's key, nonce `i` (little-endian, 8 bytes) ‖ `0,0,0` ‖ `1` if it is the last chunk
//!   else `0`, and the attachment id as associated data. A chunk can therefore not be moved
//!   to another position, another file, or be the end of a truncated file.
//! - Each encrypted chunk is hashed (SHA-256); the *chunk list* is those hashes in order,
//!   and its SHA-256 is the `chunks_root`.
//! - The [`AttachmentRef`] (id, name, type, size, key, `chunks_root`, the hash of the whole
//!   plaintext) travels inside the sealed mail, so only the mail's recipients learn the key.
//!   The whole-file hash is BLAKE3 for files sealed now, SHA-256 in mails from before
//!   ([`FileHashAlg`]): the receiver computes it over every byte while it stores the file,
//!   and BLAKE3 costs it a fraction of SHA-256's time in the browser.
//!
//! Whoever holds encrypted chunks without the key (the relay, a co-recipient, a storage
//! node) can still check each chunk against the chunk list, and the chunk list against the
//! root. A receiver fetches the chunk list first ([`Download::accept_hashes`]), then chunks
//! in any order; each is checked on arrival ([`Download::accept_chunk`]) and a bad one is
//! refused and asked for again. The set of verified chunks is plain data, persisted with
//! the download, so a broken transfer resumes where it stopped. At the end [`FileCheck`]
//! decrypts the chunks in order and compares the whole file's hash; only then is the file
//! complete. Everything on the wire is at most 64 KiB: a chunk frame carries
//! [`CHUNK_BYTES`] + 16 bytes of ciphertext, a hash page [`HASHES_PER_PAGE`] hashes.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chacha4::ChaCha20Poly1305x4;
use crate::mail::Millis;

/// Plaintext bytes per chunk (60 KiB): with the 16-byte tag and the frame around it, a
/// chunk is one peer frame of less than 64 KiB.
pub const CHUNK_BYTES: usize = 60 * 1024;
/// Bytes a chunk's encryption adds (the Poly1305 tag).
pub const CHUNK_OVERHEAD: usize = 16;
/// Chunk hashes per page of the chunk list on the wire (32 KiB).
pub const HASHES_PER_PAGE: usize = 1024;
/// Largest attachment, in bytes (16 GiB).
pub const MAX_ATTACHMENT_BYTES: u64 = 16 << 30;
/// Longest file name kept, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest media type kept, in bytes.
pub const MAX_MIME_BYTES: usize = 127;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// An attachment's identity: 16 random bytes chosen by the sender. Lower-case hex in
/// JSON (signaling frames, stored records), 16 bytes in `postcard` (peer frames, mails).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentId(pub [u8; 16]);

impl Serialize for AttachmentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for AttachmentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            AttachmentId::from_hex(&s)
                .ok_or_else(|| serde::de::Error::custom("an attachment id is 32 hex digits"))
        } else {
            <[u8; 16]>::deserialize(d).map(AttachmentId)
        }
    }
}

impl AttachmentId {
    /// Lower-case hex, as used in storage keys and the UI contract.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(AttachmentId(out))
    }
}

impl fmt::Display for AttachmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AttachmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttachmentId({})", self.to_hex())
    }
}

/// What a mail says about one attached file. It travels inside the sealed mail: `key` is
/// the file's secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub id: AttachmentId,
    /// File name as the sender chose it (no path).
    pub name: String,
    /// Media type, e.g. `image/png`; `application/octet-stream` when unknown.
    pub mime: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// ChaCha20-Poly1305 key of this file's chunks.
    pub key: [u8; 32],
    /// SHA-256 of the chunk list (the SHA-256 of each encrypted chunk, in order).
    pub chunks_root: Hash,
    /// Hash of the whole plaintext file, with [`AttachmentRef::file_hash_alg`].
    pub file_hash: Hash,
    /// Whether the file travels with the mail (at most the inline limit) or stays on the
    /// sender's node until each recipient fetches it.
    pub inline: bool,
    /// Which hash `file_hash` is. Mails and records from before the field existed have
    /// none: SHA-256 (see [`crate::mail::Mail::from_postcard`] for encoded mails).
    #[serde(default)]
    pub file_hash_alg: FileHashAlg,
}

/// The hash of an attachment's whole plaintext.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileHashAlg {
    /// SHA-256: files sealed before BLAKE3 was used.
    #[default]
    Sha256,
    /// BLAKE3 (32-byte output): files sealed now.
    Blake3,
}

/// Hashes a whole file as it streams by, with the given [`FileHashAlg`].
#[derive(Clone)]
enum FileHasher {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl FileHasher {
    fn new(alg: FileHashAlg) -> Self {
        match alg {
            FileHashAlg::Sha256 => FileHasher::Sha256(Sha256::new()),
            FileHashAlg::Blake3 => FileHasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            FileHasher::Sha256(h) => h.update(bytes),
            FileHasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    fn finalize(self) -> Hash {
        match self {
            FileHasher::Sha256(h) => h.finalize().into(),
            FileHasher::Blake3(h) => h.finalize().into(),
        }
    }
}

/// The whole-file hash that [`FileSealer`] gives files sealed now.
pub const SEALING_FILE_HASH: FileHashAlg = FileHashAlg::Blake3;

/// The whole-file hash of `bytes` with `alg` (as [`FileSealer`] computes it).
pub fn file_hash(alg: FileHashAlg, bytes: &[u8]) -> Hash {
    let mut h = FileHasher::new(alg);
    h.update(bytes);
    h.finalize()
}

impl fmt::Debug for AttachmentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentRef")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("size", &self.size)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

impl AttachmentRef {
    /// Number of chunks of this file.
    pub fn chunk_count(&self) -> u32 {
        chunk_count(self.size)
    }
    /// Plaintext length of chunk `index`.
    pub fn plain_len(&self, index: u32) -> usize {
        plain_len(self.size, index)
    }
    /// Encrypted length of chunk `index`, as it travels and is stored.
    pub fn cipher_len(&self, index: u32) -> usize {
        self.plain_len(index) + CHUNK_OVERHEAD
    }
    /// Encrypted bytes of the whole file.
    pub fn cipher_size(&self) -> u64 {
        cipher_size(self.size)
    }
    /// Checks the fields a sender controls; a mail with a bad attachment is refused.
    pub fn validate(&self) -> Result<(), AttachError> {
        check_name(&self.name)?;
        check_mime(&self.mime)?;
        check_size(self.size)
    }
}

/// Number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64) -> u32 {
    size.div_ceil(CHUNK_BYTES as u64) as u32
}

/// Plaintext length of chunk `index` of a file of `size` bytes (0 past its end).
pub fn plain_len(size: u64, index: u32) -> usize {
    let start = u64::from(index) * CHUNK_BYTES as u64;
    size.saturating_sub(start).min(CHUNK_BYTES as u64) as usize
}

/// Encrypted bytes of a file of `size` plaintext bytes (all its chunks).
pub fn cipher_size(size: u64) -> u64 {
    size + u64::from(chunk_count(size)) * CHUNK_OVERHEAD as u64
}

/// Encrypted length of chunk `index` of a file of `size` bytes, if the file has it.
pub fn cipher_len(size: u64, index: u32) -> Option<usize> {
    (index < chunk_count(size)).then(|| plain_len(size, index) + CHUNK_OVERHEAD)
}

/// A chunk list from its bytes (the hashes concatenated, as stored and sent); `None` if
/// the length is not a whole number of hashes.
pub fn hashes_from_bytes(bytes: &[u8]) -> Option<Vec<Hash>> {
    (bytes.len() % 32 == 0).then(|| {
        bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect()
    })
}

fn check_name(name: &str) -> Result<(), AttachError> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        return Err(AttachError::BadName);
    }
    Ok(())
}

fn check_mime(mime: &str) -> Result<(), AttachError> {
    let ok = mime.len() <= MAX_MIME_BYTES
        && mime.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && mime.chars().all(|c| c.is_ascii_graphic())
        });
    if ok {
        Ok(())
    } else {
        Err(AttachError::BadMime)
    }
}

fn check_size(size: u64) -> Result<(), AttachError> {
    if size > MAX_ATTACHMENT_BYTES {
        return Err(AttachError::TooLarge(size));
    }
    Ok(())
}

/// The media type to record for a file: what the browser said if it is well-formed,
/// else `application/octet-stream`.
pub fn normalize_mime(mime: &str) -> String {
    let m = mime.trim().to_ascii_lowercase();
    if check_mime(&m).is_ok() {
        m
    } else {
        "application/octet-stream".to_string()
    }
}

/// A file name safe to keep: the last path component, control characters removed,
/// shortened to [`MAX_NAME_BYTES`] on a character boundary; `attachment` if nothing is left.
pub fn normalize_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out: String = last.chars().filter(|c| !c.is_control()).collect();
    while out.len() > MAX_NAME_BYTES {
        out.pop();
    }
    let out = out.trim().to_string();
    if out.is_empty() || out == "." || out == ".." {
        "attachment".to_string()
    } else {
        out
    }
}

/// Why an attachment or a piece of one was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("the file name is empty, too long or contains a path")]
    BadName,
    #[error("the media type is not of the form type/subtype")]
    BadMime,
    #[error("the file is {0} bytes; the largest attachment is {MAX_ATTACHMENT_BYTES} bytes")]
    TooLarge(u64),
    #[error("chunk {index} should be {expected} bytes, got {got}")]
    WrongLength {
        index: u32,
        expected: usize,
        got: usize,
    },
    #[error("chunk {index} is out of order (expected chunk {expected})")]
    OutOfOrder { index: u32, expected: u32 },
    #[error("chunk {index} does not exist (the file has {count} chunks)")]
    NoSuchChunk { index: u32, count: u32 },
    #[error("chunk {0} does not match its hash")]
    ChunkHashMismatch(u32),
    #[error("chunk {0} does not decrypt")]
    ChunkUnreadable(u32),
    #[error("the chunk list does not match the mail")]
    ChunkListMismatch,
    #[error("the chunk list page at {start} is not the one expected (at {expected})")]
    UnexpectedPage { start: u32, expected: u32 },
    #[error("the chunk list is not known yet")]
    NoChunkList,
    #[error("the file is incomplete: {missing} chunks missing")]
    Incomplete { missing: u32 },
    #[error("the finished file does not match the hash in the mail")]
    FileHashMismatch,
}

fn nonce(index: u32, last: bool) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&u64::from(index).to_le_bytes());
    n[11] = u8::from(last);
    n.into()
}

/// The chunks' AEAD: standard ChaCha20-Poly1305, with the ChaCha20 that makes four blocks at
/// a time (see [`crate::chacha4`]).
fn cipher(key: &[u8; 32]) -> ChaCha20Poly1305x4 {
    ChaCha20Poly1305x4::new(&(*key).into())
}

/// One encrypted chunk, as sent and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunk {
    pub index: u32,
    pub data: Vec<u8>,
    pub hash: Hash,
}

/// Encrypts a file chunk by chunk, in order, as it is read: the sender's side. Memory use
/// is one chunk plus 32 bytes per chunk for the chunk list.
pub struct FileSealer {
    id: AttachmentId,
    name: String,
    mime: String,
    size: u64,
    key: [u8; 32],
    cipher: ChaCha20Poly1305x4,
    file: FileHasher,
    hashes: Vec<Hash>,
}

impl FileSealer {
    /// Starts sealing a file of `size` bytes. `id` and `key` come from the driver's random
    /// source. `name` and `mime` are normalized here.
    pub fn new(
        id: AttachmentId,
        key: [u8; 32],
        name: &str,
        mime: &str,
        size: u64,
    ) -> Result<Self, AttachError> {
        check_size(size)?;
        Ok(FileSealer {
            id,
            name: normalize_name(name),
            mime: normalize_mime(mime),
            size,
            key,
            cipher: cipher(&key),
            file: FileHasher::new(SEALING_FILE_HASH),
            hashes: Vec::with_capacity(chunk_count(size) as usize),
        })
    }

    pub fn chunk_count(&self) -> u32 {
        chunk_count(self.size)
    }

    /// Index of the next chunk to push, or `None` when all are done.
    pub fn next_index(&self) -> Option<u32> {
        let i = self.hashes.len() as u32;
        (i < self.chunk_count()).then_some(i)
    }

    /// Byte range of the file that the next chunk covers.
    pub fn next_range(&self) -> Option<Range<u64>> {
        let i = self.next_index()?;
        let start = u64::from(i) * CHUNK_BYTES as u64;
        Some(start..start + plain_len(self.size, i) as u64)
    }

    /// Encrypts the next chunk; `plain` must be exactly the bytes of [`Self::next_range`].
    pub fn push(&mut self, plain: &[u8]) -> Result<SealedChunk, AttachError> {
        let count = self.chunk_count();
        let index = self.next_index().ok_or(AttachError::NoSuchChunk {
            index: count,
            count,
        })?;
        let expected = plain_len(self.size, index);
        if plain.len() != expected {
            return Err(AttachError::WrongLength {
                index,
                expected,
                got: plain.len(),
            });
        }
        self.file.update(plain);
        let data = self
            .cipher
            .encrypt(
                &nonce(index, index + 1 == count),
                Payload {
                    msg: plain,
                    aad: &self.id.0,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a chunk cannot fail");
        let hash = sha256(&data);
        self.hashes.push(hash);
        Ok(SealedChunk { index, data, hash })
    }

    /// The mail's description of the file and its chunk list, once every chunk is pushed.
    pub fn finish(self, inline: bool) -> Result<(AttachmentRef, Vec<Hash>), AttachError> {
        let missing = self.chunk_count() - self.hashes.len() as u32;
        if missing > 0 {
            return Err(AttachError::Incomplete { missing });
        }
        let att = AttachmentRef {
            id: self.id,
            name: self.name,
            mime: self.mime,
            size: self.size,
            key: self.key,
            chunks_root: chunks_root(&self.hashes),
            file_hash: self.file.finalize(),
            inline,
            file_hash_alg: SEALING_FILE_HASH,
        };
        Ok((att, self.hashes))
    }
}

/// SHA-256 of a chunk list.
pub fn chunks_root(hashes: &[Hash]) -> Hash {
    let mut h = Sha256::new();
    for c in hashes {
        h.update(c);
    }
    h.finalize().into()
}

/// The chunk-list page starting at `start` (at most [`HASHES_PER_PAGE`] hashes).
pub fn hash_page(hashes: &[Hash], start: u32) -> &[Hash] {
    let s = (start as usize).min(hashes.len());
    &hashes[s..(s + HASHES_PER_PAGE).min(hashes.len())]
}

/// What [`Download::accept_chunk`] did with a chunk that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A chunk not held before: store it.
    New,
    /// Already held (a repeat): nothing to store.
    Duplicate,
}

/// The receiving side of one attachment: which chunks are held and verified. Plain data,
/// persisted after every batch of stored chunks, so a transfer resumes from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub id: AttachmentId,
    size: u64,
    chunks_root: Hash,
    /// The chunk list as received so far (complete and checked when `list_ok`). Not
    /// persisted: after a restart it is fetched again (32 bytes per 60 KiB chunk).
    #[serde(skip)]
    hashes: Vec<Hash>,
    #[serde(skip)]
    list_ok: bool,
    /// One bit per chunk: held and verified.
    have: Vec<u64>,
    held: u32,
}

impl Download {
    pub fn new(att: &AttachmentRef) -> Self {
        Self::for_file(att.id, att.size, att.chunks_root)
    }

    /// The receiving side of a file known only by its size and chunk-list root (a storage
    /// node keeps files without their keys).
    pub fn for_file(id: AttachmentId, size: u64, chunks_root: Hash) -> Self {
        Download {
            id,
            size,
            chunks_root,
            hashes: Vec::new(),
            list_ok: false,
            have: vec![0; (chunk_count(size) as usize).div_ceil(64)],
            held: 0,
        }
    }

    /// The chunk list is known and checked (an empty file has an empty one).
    fn has_list(&self) -> bool {
        self.list_ok || self.chunk_count() == 0
    }

    pub fn chunk_count(&self) -> u32 {
        chunk_count(self.size)
    }

    /// The file's plaintext size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the next chunk-list page starts, while the list is incomplete.
    pub fn next_hash_page(&self) -> Option<u32> {
        (!self.has_list()).then_some(self.hashes.len() as u32)
    }

    /// The whole chunk list, once received and checked against the mail.
    pub fn hashes(&self) -> Option<&[Hash]> {
        self.has_list().then_some(&self.hashes[..])
    }

    /// Takes one page of the chunk list. Pages must come in order; the last one completes
    /// the list, which is then checked against the mail's `chunks_root` (and forgotten if
    /// it does not match, so it is fetched again).
    pub fn accept_hashes(&mut self, start: u32, page: &[Hash]) -> Result<(), AttachError> {
        if self.has_list() {
            return Ok(());
        }
        let expected = self.hashes.len() as u32;
        let count = self.chunk_count();
        if start != expected
            || page.is_empty()
            || page.len() > HASHES_PER_PAGE
            || u64::from(start) + page.len() as u64 > u64::from(count)
        {
            return Err(AttachError::UnexpectedPage { start, expected });
        }
        self.hashes.extend_from_slice(page);
        if self.hashes.len() as u32 == count {
            if chunks_root(&self.hashes) != self.chunks_root {
                self.hashes.clear();
                return Err(AttachError::ChunkListMismatch);
            }
            self.list_ok = true;
        }
        Ok(())
    }

    /// Checks an arriving encrypted chunk against the chunk list. A chunk that does not
    /// verify is refused (and stays missing, to be fetched again).
    pub fn accept_chunk(&mut self, index: u32, data: &[u8]) -> Result<Accepted, AttachError> {
        self.accept_hashed_chunk(index, data, || sha256(data))
    }

    /// [`Download::accept_chunk`] with the chunk's SHA-256 computed by the caller (a driver
    /// with a faster SHA-256 than this crate's, such as the browser's native one). `hash`
    /// is asked for only once the chunk's index and length are right.
    pub fn accept_hashed_chunk(
        &mut self,
        index: u32,
        data: &[u8],
        hash: impl FnOnce() -> Hash,
    ) -> Result<Accepted, AttachError> {
        let count = self.chunk_count();
        if index >= count {
            return Err(AttachError::NoSuchChunk { index, count });
        }
        if !self.has_list() {
            return Err(AttachError::NoChunkList);
        }
        let expected = plain_len(self.size, index) + CHUNK_OVERHEAD;
        if data.len() != expected {
            return Err(AttachError::WrongLength {
                index,
                expected,
                got: data.len(),
            });
        }
        if hash() != self.hashes[index as usize] {
            return Err(AttachError::ChunkHashMismatch(index));
        }
        if self.has(index) {
            return Ok(Accepted::Duplicate);
        }
        self.have[index as usize / 64] |= 1 << (index % 64);
        self.held += 1;
        Ok(Accepted::New)
    }

    /// A copy without the chunk list: what is persisted (the list is not), cheap to clone
    /// for every stored chunk.
    pub fn persisted(&self) -> Download {
        Download {
            id: self.id,
            size: self.size,
            chunks_root: self.chunks_root,
            hashes: Vec::new(),
            list_ok: false,
            have: self.have.clone(),
            held: self.held,
        }
    }

    /// Marks a chunk as not held (its stored copy was lost or did not decrypt): it will be
    /// fetched again.
    pub fn forget_chunk(&mut self, index: u32) {
        if index < self.chunk_count() && self.has(index) {
            self.have[index as usize / 64] &= !(1 << (index % 64));
            self.held -= 1;
        }
    }

    pub fn has(&self, index: u32) -> bool {
        index < self.chunk_count() && self.have[index as usize / 64] & (1 << (index % 64)) != 0
    }

    /// Chunks held and verified.
    pub fn chunks_held(&self) -> u32 {
        self.held
    }

    /// Plaintext bytes held and verified (for progress).
    pub fn bytes_held(&self) -> u64 {
        let count = self.chunk_count();
        if count == 0 {
            return 0;
        }
        let full = u64::from(self.held) * CHUNK_BYTES as u64;
        // Only the last chunk may be short.
        if self.has(count - 1) {
            full - (CHUNK_BYTES - plain_len(self.size, count - 1)) as u64
        } else {
            full
        }
    }

    /// Every chunk held and verified (the whole-file check is still to come).
    pub fn is_complete(&self) -> bool {
        self.has_list() && self.held == self.chunk_count()
    }

    /// The next request of a transfer keeping at most `window` chunks in flight: once no
    /// more than half the window is out (`requested`, not arrived, plus `unstored`, arrived
    /// and not stored yet), the missing chunks not requested yet to fill it, as ranges in
    /// order, added to `requested`. Empty when the window is still busy or nothing is left.
    pub fn next_request(
        &self,
        requested: &mut std::collections::BTreeSet<u32>,
        unstored: u32,
        window: u32,
    ) -> Vec<(u32, u32)> {
        let in_flight = requested.len() as u32 + unstored;
        if in_flight > window / 2 {
            return Vec::new();
        }
        let mut want = window - in_flight;
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for r in self.missing(window + in_flight) {
            for i in r {
                if want == 0 {
                    break;
                }
                if requested.insert(i) {
                    want -= 1;
                    match ranges.last_mut() {
                        Some((_, end)) if *end == i => *end += 1,
                        _ => ranges.push((i, i + 1)),
                    }
                }
            }
        }
        ranges
    }

    /// Up to `max_chunks` missing chunks, as ranges in order, to ask for next.
    pub fn missing(&self, max_chunks: u32) -> Vec<Range<u32>> {
        let mut out: Vec<Range<u32>> = Vec::new();
        let mut budget = max_chunks;
        let mut i = 0;
        let count = self.chunk_count();
        while i < count && budget > 0 {
            // Skip whole words of held chunks.
            if i % 64 == 0 && self.have[i as usize / 64] == u64::MAX {
                i += 64;
                continue;
            }
            if !self.has(i) {
                match out.last_mut() {
                    Some(r) if r.end == i => r.end += 1,
                    _ => out.push(i..i + 1),
                }
                budget -= 1;
            }
            i += 1;
        }
        out
    }
}

/// The whole-file check: decrypts the chunks in order and compares the file's hash with
/// the mail's. Yields each chunk's plaintext for the driver to hand on (to a file being
/// saved, a preview), so memory stays one chunk.
pub struct FileCheck {
    att: AttachmentRef,
    cipher: ChaCha20Poly1305x4,
    next: u32,
    file: FileHasher,
}

impl fmt::Debug for FileCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCheck")
            .field("attachment", &self.att.id)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl FileCheck {
    /// The index [`FileCheck::push`] expects next.
    pub fn next_index(&self) -> u32 {
        self.next
    }

    pub fn new(att: &AttachmentRef) -> Self {
        FileCheck {
            att: att.clone(),
            cipher: cipher(&att.key),
            next: 0,
            file: FileHasher::new(att.file_hash_alg),
        }
    }

    /// Decrypts the next chunk (index must be the next one in order).
    pub fn push(&mut self, index: u32, data: &[u8]) -> Result<Vec<u8>, AttachError> {
        let count = self.att.chunk_count();
        if index >= count {
            return Err(AttachError::NoSuchChunk { index, count });
        }
        if index != self.next {
            return Err(AttachError::OutOfOrder {
                index,
                expected: self.next,
            });
        }
        let plain = open_chunk(&self.att, &self.cipher, index, data)?;
        self.file.update(&plain);
        self.next += 1;
        Ok(plain)
    }

    /// Succeeds only if every chunk was pushed and the file's hash matches the mail.
    pub fn finish(self) -> Result<(), AttachError> {
        let missing = self.att.chunk_count() - self.next;
        if missing > 0 {
            return Err(AttachError::Incomplete { missing });
        }
        let got = self.file.finalize();
        if got != self.att.file_hash {
            return Err(AttachError::FileHashMismatch);
        }
        Ok(())
    }
}

fn open_chunk(
    att: &AttachmentRef,
    cipher: &ChaCha20Poly1305x4,
    index: u32,
    data: &[u8],
) -> Result<Vec<u8>, AttachError> {
    let expected = att.cipher_len(index);
    if data.len() != expected {
        return Err(AttachError::WrongLength {
            index,
            expected,
            got: data.len(),
        });
    }
    cipher
        .decrypt(
            &nonce(index, index + 1 == att.chunk_count()),
            Payload {
                msg: data,
                aad: &att.id.0,
            },
        )
        .map_err(|_| AttachError::ChunkUnreadable(index))
}

/// Transfer rate and time left, from samples of bytes done over time.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    samples: VecDeque<(Millis, u64)>,
}

impl RateMeter {
    /// How far back the rate looks.
    pub const WINDOW_MS: Millis = 5_000;

    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `done` bytes are done at `now`. A value lower than the last one (a
    /// transfer that restarted) starts a new measurement.
    pub fn record(&mut self, now: Millis, done: u64) {
        if self.samples.back().is_some_and(|&(_, d)| done < d) {
            self.samples.clear();
        }
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.saturating_sub(t) >= Self::WINDOW_MS)
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window; `None` until two samples at least 100 ms apart.
    pub fn bytes_per_sec(&self) -> Option<f64> {
        let (&(t0, d0), &(t1, d1)) = (self.samples.front()?, self.samples.back()?);
        let dt = t1.saturating_sub(t0);
        (dt >= 100).then(|| (d1 - d0) as f64 * 1000.0 / dt as f64)
    }

    /// Time left for `remaining` bytes at the current rate.
    pub fn eta_ms(&self, remaining: u64) -> Option<Millis> {
        let rate = self.bytes_per_sec()?;
        if remaining == 0 {
            return Some(0);
        }
        (rate > 0.0).then(|| (remaining as f64 * 1000.0 / rate).ceil() as Millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn seal_file(bytes: &[u8], id: [u8; 16]) -> (AttachmentRef, Vec<Hash>, Vec<SealedChunk>) {
        let mut s = FileSealer::new(
            AttachmentId(id),
            [7; 32],
            "photo.png",
            "image/png",
            bytes.len() as u64,
        )
        .unwrap();
        let mut chunks = Vec::new();
        while let Some(r) = s.next_range() {
            chunks.push(s.push(&bytes[r.start as usize..r.end as usize]).unwrap());
        }
        let (att, hashes) = s.finish(true).unwrap();
        (att, hashes, chunks)
    }

    fn download_with_list(att: &AttachmentRef, hashes: &[Hash]) -> Download {
        let mut d = Download::new(att);
        while let Some(start) = d.next_hash_page() {
            d.accept_hashes(start, hash_page(hashes, start)).unwrap();
        }
        d
    }

    fn check_all(att: &AttachmentRef, chunks: &[SealedChunk]) -> Result<Vec<u8>, AttachError> {
        let mut c = FileCheck::new(att);
        let mut out = Vec::new();
        for ch in chunks {
            out.extend(c.push(ch.index, &ch.data)?);
        }
        c.finish()?;
        Ok(out)
    }

    #[test]
    fn sizes_and_chunk_counts() {
        for (len, count) in [
            (0, 0),
            (1, 1),
            (CHUNK_BYTES - 1, 1),
            (CHUNK_BYTES, 1),
            (CHUNK_BYTES + 1, 2),
            (3 * CHUNK_BYTES, 3),
        ] {
            let bytes = file(len);
            let (att, hashes, chunks) = seal_file(&bytes, [1; 16]);
            assert_eq!(att.chunk_count(), count, "{len}");
            assert_eq!(hashes.len(), count as usize);
            assert_eq!(chunks.len(), count as usize);
            assert_eq!(att.file_hash_alg, FileHashAlg::Blake3);
            assert_eq!(att.file_hash, file_hash(FileHashAlg::Blake3, &bytes));
            let total: usize = chunks.iter().map(|c| c.data.len()).sum();
            assert_eq!(total as u64, att.cipher_size());
            for c in &chunks {
                assert!(c.data.len() <= CHUNK_BYTES + CHUNK_OVERHEAD);
                assert_eq!(c.data.len(), att.cipher_len(c.index));
                assert_eq!(c.hash, sha256(&c.data));
            }
            assert_eq!(check_all(&att, &chunks).unwrap(), bytes);
        }
    }

    #[test]
    fn sealer_refuses_wrong_lengths_extra_chunks_and_early_finish() {
        let bytes = file(CHUNK_BYTES + 10);
        let mut s = FileSealer::new(AttachmentId([2; 16]), [1; 32], "a", "x/y", 0).unwrap();
        assert!(s.push(&[1]).is_err(), "no chunk in an empty file");
        s = FileSealer::new(
            AttachmentId([2; 16]),
            [1; 32],
            "a",
            "x/y",
            bytes.len() as u64,
        )
        .unwrap();
        assert_eq!(
            s.push(&bytes[..10]),
            Err(AttachError::WrongLength {
                index: 0,
                expected: CHUNK_BYTES,
                got: 10
            })
        );
        s.push(&bytes[..CHUNK_BYTES]).unwrap();
        assert!(matches!(
            s.finish(false),
            Err(AttachError::Incomplete { missing: 1 })
        ));
        assert_eq!(
            FileSealer::new(
                AttachmentId([2; 16]),
                [1; 32],
                "a",
                "x/y",
                MAX_ATTACHMENT_BYTES + 1
            )
            .err(),
            Some(AttachError::TooLarge(MAX_ATTACHMENT_BYTES + 1))
        );
    }

    #[test]
    fn chunks_out_of_order_duplicated_and_missing() {
        let bytes = file(5 * CHUNK_BYTES + 123);
        let (att, hashes, chunks) = seal_file(&bytes, [3; 16]);
        let mut d = download_with_list(&att, &hashes);
        assert_eq!(d.missing(100), vec![0..6]);
        // Reordered: 4, 1, 5.
        for i in [4usize, 1, 5] {
            assert_eq!(d.accept_chunk(i as u32, &chunks[i].data), Ok(Accepted::New));
        }
        // Duplicate.
        assert_eq!(d.accept_chunk(1, &chunks[1].data), Ok(Accepted::Duplicate));
        assert_eq!(d.chunks_held(), 3);
        assert_eq!(d.missing(100), vec![0..1, 2..4]);
        assert_eq!(d.missing(2), vec![0..1, 2..3]);
        assert!(!d.is_complete());
        assert_eq!(d.bytes_held(), 2 * CHUNK_BYTES as u64 + 123);
        for i in [0u32, 2, 3] {
            d.accept_chunk(i, &chunks[i as usize].data).unwrap();
        }
        assert!(d.is_complete());
        assert_eq!(d.missing(100), Vec::<Range<u32>>::new());
        assert_eq!(d.bytes_held(), bytes.len() as u64);
        // A chunk that does not exist.
        assert_eq!(
            d.accept_chunk(6, &chunks[0].data),
            Err(AttachError::NoSuchChunk { index: 6, count: 6 })
        );
    }

    #[test]
    fn corrupted_or_forged_chunks_are_refused_and_stay_missing() {
        let bytes = file(3 * CHUNK_BYTES);
        let (att, hashes, chunks) = seal_file(&bytes, [4; 16]);
        let mut d = download_with_list(&att, &hashes);
        let mut bad = chunks[1].data.clone();
        bad[100] ^= 1;
        assert_eq!(
            d.accept_chunk(1, &bad),
            Err(AttachError::ChunkHashMismatch(1))
        );
        // A genuine chunk at the wrong position.
        assert_eq!(
            d.accept_chunk(1, &chunks[0].data),
            Err(AttachError::ChunkHashMismatch(1))
        );
        // Truncated.
        assert!(matches!(
            d.accept_chunk(1, &chunks[1].data[..10]),
            Err(AttachError::WrongLength { .. })
        ));
        assert!(!d.has(1));
        assert_eq!(d.missing(10), vec![0..3]);
        // The genuine one is then taken.
        assert_eq!(d.accept_chunk(1, &chunks[1].data), Ok(Accepted::New));
        // A chunk from another file under the same key does not verify either.
        let (_, _, other) = seal_file(&file(3 * CHUNK_BYTES), [5; 16]);
        assert_eq!(
            d.accept_chunk(0, &other[0].data),
            Err(AttachError::ChunkHashMismatch(0))
        );
    }

    #[test]
    fn chunks_hashed_by_the_caller_are_checked_by_that_hash() {
        let bytes = file(3 * CHUNK_BYTES);
        let (att, hashes, chunks) = seal_file(&bytes, [6; 16]);
        let mut d = download_with_list(&att, &hashes);
        // The hash given is the one compared: a corrupted chunk's own hash is refused...
        let mut bad = chunks[1].data.clone();
        bad[9] ^= 1;
        assert_eq!(
            d.accept_hashed_chunk(1, &bad, || sha256(&bad)),
            Err(AttachError::ChunkHashMismatch(1))
        );
        // ...and so is a genuine chunk under a wrong hash.
        assert_eq!(
            d.accept_hashed_chunk(1, &chunks[1].data, || [0; 32]),
            Err(AttachError::ChunkHashMismatch(1))
        );
        // The length is checked before anything is hashed.
        assert!(matches!(
            d.accept_hashed_chunk(1, &chunks[1].data[..10], || panic!("hashed")),
            Err(AttachError::WrongLength { .. })
        ));
        assert!(!d.has(1));
        assert_eq!(
            d.accept_hashed_chunk(1, &chunks[1].data, || hashes[1]),
            Ok(Accepted::New)
        );
        assert_eq!(
            d.accept_hashed_chunk(1, &chunks[1].data, || hashes[1]),
            Ok(Accepted::Duplicate)
        );
    }

    #[test]
    fn chunk_list_pages_are_checked_against_the_mail() {
        // More chunks than one page holds, without building a huge file: hashes only.
        let count = HASHES_PER_PAGE as u32 * 2 + 5;
        let hashes: Vec<Hash> = (0..count).map(|i| sha256(&i.to_le_bytes())).collect();
        let att = AttachmentRef {
            id: AttachmentId([6; 16]),
            name: "big.bin".into(),
            mime: "application/octet-stream".into(),
            size: u64::from(count) * CHUNK_BYTES as u64,
            key: [0; 32],
            chunks_root: chunks_root(&hashes),
            file_hash: [0; 32],
            inline: false,
            file_hash_alg: FileHashAlg::Blake3,
        };
        let mut d = Download::new(&att);
        assert_eq!(d.accept_chunk(0, &[0; 10]), Err(AttachError::NoChunkList));
        assert_eq!(d.next_hash_page(), Some(0));
        // Out of order.
        assert_eq!(
            d.accept_hashes(1024, hash_page(&hashes, 1024)),
            Err(AttachError::UnexpectedPage {
                start: 1024,
                expected: 0
            })
        );
        d.accept_hashes(0, hash_page(&hashes, 0)).unwrap();
        d.accept_hashes(1024, hash_page(&hashes, 1024)).unwrap();
        assert_eq!(d.next_hash_page(), Some(2048));
        // A forged last page: the list does not match the root and is dropped.
        let mut forged = hash_page(&hashes, 2048).to_vec();
        forged[0][0] ^= 1;
        assert_eq!(
            d.accept_hashes(2048, &forged),
            Err(AttachError::ChunkListMismatch)
        );
        assert_eq!(d.next_hash_page(), Some(0));
        assert_eq!(d.hashes(), None);
        // Fetched again, genuine this time.
        while let Some(start) = d.next_hash_page() {
            d.accept_hashes(start, hash_page(&hashes, start)).unwrap();
        }
        assert_eq!(d.hashes(), Some(&hashes[..]));
        // Too many hashes.
        let mut d2 = Download::new(&att);
        assert!(d2
            .accept_hashes(0, &vec![[0; 32]; HASHES_PER_PAGE + 1])
            .is_err());
    }

    #[test]
    fn resume_from_persisted_state() {
        let bytes = file(4 * CHUNK_BYTES + 1);
        let (att, hashes, chunks) = seal_file(&bytes, [7; 16]);
        let mut d = download_with_list(&att, &hashes);
        d.accept_chunk(0, &chunks[0].data).unwrap();
        d.accept_chunk(2, &chunks[2].data).unwrap();
        // The receiving tab closes; its persisted state is read back.
        let saved = serde_json::to_string(&d).unwrap();
        let mut back: Download = serde_json::from_str(&saved).unwrap();
        // The chunk list is not persisted: it is fetched again, then the missing chunks.
        assert_eq!(back.next_hash_page(), Some(0));
        assert_eq!(back.chunks_held(), 2);
        assert_eq!(
            back.accept_chunk(1, &chunks[1].data),
            Err(AttachError::NoChunkList)
        );
        back.accept_hashes(0, &hashes).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.missing(10), vec![1..2, 3..5]);
        // A stored chunk found unreadable is fetched again.
        back.forget_chunk(2);
        assert_eq!(back.missing(10), vec![1..5]);
        for i in 1..5u32 {
            back.accept_chunk(i, &chunks[i as usize].data).unwrap();
        }
        assert!(back.is_complete());
        assert_eq!(check_all(&att, &chunks).unwrap(), bytes);
    }

    #[test]
    fn whole_file_check_catches_a_wrong_key_order_or_hash() {
        let bytes = file(2 * CHUNK_BYTES + 9);
        let (att, _, chunks) = seal_file(&bytes, [8; 16]);
        // Out of order.
        let mut c = FileCheck::new(&att);
        assert_eq!(
            c.push(1, &chunks[1].data),
            Err(AttachError::OutOfOrder {
                index: 1,
                expected: 0
            })
        );
        // Incomplete.
        let mut c = FileCheck::new(&att);
        c.push(0, &chunks[0].data).unwrap();
        assert_eq!(c.finish(), Err(AttachError::Incomplete { missing: 2 }));
        // Wrong key.
        let mut wrong = att.clone();
        wrong.key = [8; 32];
        assert_eq!(
            FileCheck::new(&wrong).push(0, &chunks[0].data),
            Err(AttachError::ChunkUnreadable(0))
        );
        // A truncated file cannot pass its penultimate chunk off as the last one.
        let mut short = att.clone();
        short.size = 2 * CHUNK_BYTES as u64;
        let mut c = FileCheck::new(&short);
        c.push(0, &chunks[0].data).unwrap();
        assert_eq!(
            c.push(1, &chunks[1].data),
            Err(AttachError::ChunkUnreadable(1))
        );
        // The whole-file hash in the mail does not match.
        let mut lied = att.clone();
        lied.file_hash[0] ^= 1;
        assert_eq!(
            check_all(&lied, &chunks),
            Err(AttachError::FileHashMismatch)
        );
        // A mail from before BLAKE3 names a SHA-256 hash of the file, checked as such.
        let mut older = att.clone();
        older.file_hash_alg = FileHashAlg::Sha256;
        assert_eq!(
            check_all(&older, &chunks),
            Err(AttachError::FileHashMismatch)
        );
        older.file_hash = sha256(&bytes);
        assert_eq!(check_all(&older, &chunks), Ok(bytes.clone()));
        assert_eq!(
            open_chunk(&att, &cipher(&att.key), 2, &chunks[2].data).unwrap(),
            bytes[2 * CHUNK_BYTES..]
        );
    }

    #[test]
    fn whole_file_hashes_are_the_standard_ones() {
        // Known answers for the empty input (BLAKE3's test vectors; FIPS 180-4).
        assert_eq!(
            hex::encode(file_hash(FileHashAlg::Blake3, b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            hex::encode(file_hash(FileHashAlg::Sha256, b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // BLAKE3's official test vector of 102,400 bytes (byte i is i mod 251): long
        // enough for the SIMD code (the web client's Wasm SIMD is checked against it too).
        let vector: Vec<u8> = (0..102_400u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            hex::encode(file_hash(FileHashAlg::Blake3, &vector)),
            "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085"
        );
        // Fed in pieces as chunks arrive, or at once: the same.
        let bytes = file(3 * CHUNK_BYTES + 5);
        for alg in [FileHashAlg::Blake3, FileHashAlg::Sha256] {
            let mut h = FileHasher::new(alg);
            for piece in bytes.chunks(CHUNK_BYTES) {
                h.update(piece);
            }
            assert_eq!(h.finalize(), file_hash(alg, &bytes), "{alg:?}");
        }
    }

    #[test]
    fn names_and_media_types_are_normalized() {
        assert_eq!(normalize_name("C:\\Users\\a\\report.pdf"), "report.pdf");
        assert_eq!(normalize_name("../../etc/passwd"), "passwd");
        assert_eq!(normalize_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(normalize_name(""), "attachment");
        assert_eq!(normalize_name(".."), "attachment");
        let long = "é".repeat(200);
        let n = normalize_name(&long);
        assert!(n.len() <= MAX_NAME_BYTES && long.starts_with(&n));
        assert_eq!(normalize_mime("Image/PNG"), "image/png");
        assert_eq!(normalize_mime(""), "application/octet-stream");
        assert_eq!(
            normalize_mime("text/html; charset=utf-8"),
            "application/octet-stream"
        );
        let mut att = seal_file(&file(3), [9; 16]).0;
        assert_eq!(att.validate(), Ok(()));
        att.name = "a/b".into();
        assert_eq!(att.validate(), Err(AttachError::BadName));
        att.name = "ok".into();
        att.mime = "nope".into();
        assert_eq!(att.validate(), Err(AttachError::BadMime));
        assert_eq!(
            AttachmentId::from_hex(&AttachmentId([0xab; 16]).to_hex()),
            Some(AttachmentId([0xab; 16]))
        );
    }

    #[test]
    fn rate_and_time_left() {
        let mut m = RateMeter::new();
        assert_eq!(m.bytes_per_sec(), None);
        m.record(0, 0);
        m.record(50, 100);
        assert_eq!(m.bytes_per_sec(), None, "too short to say");
        m.record(1_000, 1_000_000);
        assert_eq!(m.bytes_per_sec(), Some(1_000_000.0));
        assert_eq!(m.eta_ms(2_000_000), Some(2_000));
        // The window slides: only the last 5 s count.
        for s in 2..=20u64 {
            m.record(s * 1_000, 1_000_000 + (s - 1) * 10_000);
        }
        let r = m.bytes_per_sec().unwrap();
        assert!((r - 10_000.0).abs() < 1.0, "{r}");
        // A restart resets the measurement.
        m.record(21_000, 5);
        assert_eq!(m.bytes_per_sec(), None);
        assert_eq!(m.eta_ms(0), None);
    }
}
