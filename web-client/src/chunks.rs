//! The attachment chunk store on IndexedDB, and sealing a picked file into it.
//!
//! It shares the account's database ([`IdbStore::database`](crate::store::IdbStore::database))
//! and uses these of its object stores (see [`crate::store`]):
//!
//! - [`SEGMENTS`]: key `"<attachment id hex>/<first index, 10 digits>"` ([`segment_key`]),
//!   value one *segment*: the encrypted chunks of an aligned run of [`SEGMENT_CHUNKS`]
//!   indices (`16 s` to `16 s + 15`) that are stored, as ONE `Blob` (`b`, the chunks
//!   concatenated in index order) with their indices (`i`, a `Uint32Array`) and offsets
//!   (`o`, a `Uint32Array` one longer). The browser keeps Blobs on disk, so holding a large
//!   file costs no page memory; one Blob per megabyte rather than per chunk is what makes
//!   writing and reading cheap (a Blob and a record cost the browser an IPC, a file and a
//!   transaction entry each). Chunks arriving later into a segment are merged into it in
//!   the writing transaction (the new Blob is made of slices of the stored one and the new
//!   chunks; no stored byte is read back).
//! - [`CHUNKS`]: the schema-4 layout, one chunk per record (key `"<hex>/<index>"`, value a
//!   Blob). Nothing writes it any more; chunks stored before version 6 are still read from
//!   it (a chunk is looked for in its segment first) and deleted with their attachment.
//! - [`CHUNK_LISTS`]: key the attachment id in hex, value the chunk list of an attachment
//!   this node has whole, sent or received (its SHA-256 hashes concatenated) as a `Uint8Array`.
//!
//! Writes go in batches, one readwrite transaction per batch, and return after the commit.
//! [`seal_file`] reads a `File` a segment's worth ([`BATCH_CHUNKS`] chunks) at a time, the
//! next read under way while one is encrypted with [`FileSealer`] (never the whole file),
//! and writes one segment per transaction: its memory is two reads and one batch plus 32
//! bytes per chunk, whatever the file's size. A failed or cancelled sealing deletes what it
//! wrote.

use indexed_db_futures::database::Database;
use indexed_db_futures::object_store::ObjectStore;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use indexed_db_futures::KeyRange;
use js_sys::{Array, ArrayBuffer, Object, Reflect, Uint32Array, Uint8Array};
use peermail_core::attach::{
    hashes_from_bytes, AttachmentId, AttachmentRef, FileSealer, Hash, SealedChunk,
    MAX_ATTACHMENT_BYTES,
};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, File};

pub use crate::store::chunk_key;
use crate::store::{CHUNKS, CHUNK_LISTS, SEGMENTS};
use crate::text::human_size;

/// Chunk indices per segment record (about 1 MiB of encrypted chunks).
pub const SEGMENT_CHUNKS: u32 = 16;

/// Chunks written per IndexedDB transaction by [`seal_file`]: one segment.
pub const BATCH_CHUNKS: usize = SEGMENT_CHUNKS as usize;

/// Key of the segment that holds chunk `index` of `att`.
pub fn segment_key(att: AttachmentId, index: u32) -> String {
    chunk_key(att, index - index % SEGMENT_CHUNKS)
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn js_err(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Every key of `att`'s chunks: from `"<hex>/"` up to, not including, `"<hex>0"` (`'0'`
/// follows `'/'`).
pub(crate) fn chunk_range(att: AttachmentId) -> KeyRange<String> {
    crate::store::prefix_range(&att.to_hex())
}

/// The bytes of a Blob (or File, or a slice of one).
pub async fn blob_bytes(blob: &Blob) -> Result<Vec<u8>, String> {
    read_bytes(JsFuture::from(blob.array_buffer())).await
}

/// The bytes of a started `Blob.arrayBuffer()` read.
async fn read_bytes(read: JsFuture) -> Result<Vec<u8>, String> {
    let buf: ArrayBuffer = read.await.map_err(js_err)?.dyn_into().map_err(js_err)?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// A stored segment: which chunks it has, where each is in its Blob, and the Blob.
struct Segment {
    indices: Vec<u32>,
    /// One more than `indices`: chunk `k` is bytes `offsets[k]..offsets[k + 1]`.
    offsets: Vec<u32>,
    blob: Blob,
}

impl Segment {
    fn from_js(v: &JsValue) -> Result<Segment, String> {
        let field = |name: &str| Reflect::get(v, &JsValue::from_str(name)).map_err(js_err);
        let indices = field("i")?
            .dyn_into::<Uint32Array>()
            .map_err(|_| "a stored segment has no index list".to_string())?
            .to_vec();
        let offsets = field("o")?
            .dyn_into::<Uint32Array>()
            .map_err(|_| "a stored segment has no offsets".to_string())?
            .to_vec();
        let blob = field("b")?
            .dyn_into::<Blob>()
            .map_err(|_| "a stored segment has no Blob".to_string())?;
        let sorted = indices.windows(2).all(|w| w[0] < w[1]);
        let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
        if offsets.len() != indices.len() + 1
            || !sorted
            || !ordered
            || offsets.last().copied().map(f64::from) != Some(blob.size())
        {
            return Err("a stored segment is inconsistent".into());
        }
        Ok(Segment {
            indices,
            offsets,
            blob,
        })
    }

    fn to_js(&self) -> Result<JsValue, String> {
        let o = Object::new();
        let set = |k: &str, v: &JsValue| Reflect::set(&o, &JsValue::from_str(k), v).map_err(js_err);
        set("i", &Uint32Array::from(self.indices.as_slice()))?;
        set("o", &Uint32Array::from(self.offsets.as_slice()))?;
        set("b", &self.blob)?;
        Ok(o.into())
    }

    /// Where chunk `index` is in the Blob.
    fn range(&self, index: u32) -> Option<(f64, f64)> {
        let k = self.indices.binary_search(&index).ok()?;
        Some((f64::from(self.offsets[k]), f64::from(self.offsets[k + 1])))
    }

    /// This segment with `chunks` (sorted by index, all in this segment) written into it:
    /// a new chunk replaces a stored one of the same index. The new Blob is made of the new
    /// bytes and of the stored Blob (whole, or one slice per run of stored chunks kept
    /// between new ones); no stored byte is read.
    fn merged(old: Option<&Segment>, chunks: &[(u32, &[u8])]) -> Result<Segment, String> {
        let mut plan: Vec<Part<'_>> = Vec::new();
        let (mut indices, mut offsets) = (Vec::new(), vec![0u32]);
        let stored: &[u32] = old.map_or(&[], |o| o.indices.as_slice());
        let (mut a, mut b) = (0, 0);
        while a < stored.len() || b < chunks.len() {
            let take_new = match (stored.get(a), chunks.get(b)) {
                (Some(&s), Some(&(n, _))) => n <= s,
                (None, Some(_)) => true,
                _ => false,
            };
            let at = *offsets.last().expect("offsets start with 0");
            if take_new {
                let (index, data) = chunks[b];
                if stored.get(a) == Some(&index) {
                    a += 1;
                }
                b += 1;
                let len = u32::try_from(data.len()).map_err(err)?;
                plan.push(Part::New(data));
                indices.push(index);
                offsets.push(at + len);
            } else {
                // The run of stored chunks up to the next new one (or the end).
                let old = old.expect("stored indices come from a segment");
                let next_new = chunks.get(b).map_or(u32::MAX, |c| c.0);
                let run_end = a + stored[a..].iter().take_while(|&&i| i < next_new).count();
                let (from, to) = (old.offsets[a], old.offsets[run_end]);
                plan.push(if from == 0 && run_end == stored.len() {
                    Part::Stored(&old.blob)
                } else {
                    Part::Slice(&old.blob, f64::from(from), f64::from(to))
                });
                indices.extend_from_slice(&stored[a..run_end]);
                offsets.extend(old.offsets[a + 1..=run_end].iter().map(|o| at + o - from));
                a = run_end;
            }
        }
        let size = f64::from(*offsets.last().expect("offsets start with 0"));
        let blob = blob_of_checked(&plan, size)?;
        Ok(Segment {
            indices,
            offsets,
            blob,
        })
    }
}

/// A piece of a segment's new Blob.
enum Part<'a> {
    New(&'a [u8]),
    Stored(&'a Blob),
    Slice(&'a Blob, f64, f64),
}

/// A Blob holding a copy of `bytes` (see [`blob_of_checked`]).
pub(crate) fn blob_of_bytes(bytes: &[u8]) -> Result<Blob, String> {
    blob_of_checked(&[Part::New(bytes)], bytes.len() as f64)
}

/// A Blob of `plan`'s parts, `size` bytes in all. The new bytes go to the Blob constructor
/// (which copies them) as views of this module's memory, not as copies on the JS heap.
/// Nothing is allocated between making the views and the Blob; if the memory grew anyway,
/// the views would be empty and the Blob short: that is checked, and the Blob made again
/// from copies.
fn blob_of_checked(plan: &[Part<'_>], size: f64) -> Result<Blob, String> {
    let blob = blob_of(plan, true)?;
    if blob.size() == size {
        Ok(blob)
    } else {
        blob_of(plan, false)
    }
}

/// A Blob of `plan`'s parts; new bytes as views of wasm memory (`views`) or as copies.
fn blob_of(plan: &[Part<'_>], views: bool) -> Result<Blob, String> {
    let memory = views.then(|| {
        wasm_bindgen::memory()
            .unchecked_into::<js_sys::WebAssembly::Memory>()
            .buffer()
    });
    let parts = Array::new_with_length(plan.len() as u32);
    for (k, part) in plan.iter().enumerate() {
        let value: JsValue = match part {
            // Read only by the Blob constructor below, which copies it; nothing is
            // allocated in between (see `blob_of_checked`).
            Part::New(data) => match &memory {
                Some(buffer) => Uint8Array::new_with_byte_offset_and_length(
                    buffer,
                    data.as_ptr() as u32,
                    data.len() as u32,
                )
                .into(),
                None => Uint8Array::from(*data).into(),
            },
            Part::Stored(blob) => JsValue::from(*blob),
            Part::Slice(blob, from, to) => blob
                .slice_with_f64_and_f64(*from, *to)
                .map_err(js_err)?
                .into(),
        };
        parts.set(k as u32, value);
    }
    Blob::new_with_blob_sequence(&parts).map_err(js_err)
}

/// A segment's key and the chunks to write into it.
type SegmentWrite<'a> = (String, Vec<(u32, &'a [u8])>);

/// Writes encrypted chunks into their segments in `os` (the [`SEGMENTS`] store of an open
/// readwrite transaction): the segments the chunks fall in are read, merged with the new
/// chunks and put back. Only IndexedDB requests are awaited, so the transaction stays
/// active; the caller commits.
pub(crate) async fn put_in_segments(
    os: &ObjectStore<'_>,
    chunks: &[(AttachmentId, u32, &[u8])],
) -> Result<(), String> {
    let mut sorted: Vec<(AttachmentId, u32, &[u8])> = chunks.to_vec();
    // The last write of an index wins, as with one record per chunk.
    sorted.reverse();
    sorted.sort_by_key(|(a, i, _)| (*a, *i));
    sorted.dedup_by_key(|(a, i, _)| (*a, *i));
    let mut groups: Vec<SegmentWrite<'_>> = Vec::new();
    for (att, index, data) in sorted {
        let key = segment_key(att, index);
        match groups.last_mut() {
            Some((k, g)) if *k == key => g.push((index, data)),
            _ => groups.push((key, vec![(index, data)])),
        }
    }
    let mut gets = Vec::with_capacity(groups.len());
    for (key, _) in &groups {
        gets.push(os.get(key.clone()).primitive().map_err(err)?);
    }
    let mut stored = Vec::with_capacity(groups.len());
    for get in gets {
        let v: Option<JsValue> = get.await.map_err(err)?;
        stored.push(v.map(|v| Segment::from_js(&v)).transpose()?);
    }
    for ((key, chunks), old) in groups.into_iter().zip(stored) {
        let segment = Segment::merged(old.as_ref(), &chunks)?;
        os.put(segment.to_js()?)
            .with_key(key)
            .primitive()
            .map_err(err)?;
    }
    Ok(())
}

/// Stores encrypted chunks `(index, bytes)` of `att` in one transaction; returns after it
/// committed. A chunk already stored is replaced.
pub async fn put_chunks(
    db: &Database,
    att: AttachmentId,
    chunks: &[(u32, &[u8])],
) -> Result<(), String> {
    if chunks.is_empty() {
        return Ok(());
    }
    let chunks: Vec<(AttachmentId, u32, &[u8])> =
        chunks.iter().map(|(i, d)| (att, *i, *d)).collect();
    let tx = db
        .transaction(SEGMENTS)
        .with_mode(TransactionMode::Readwrite)
        .build()
        .map_err(err)?;
    let os = tx.object_store(SEGMENTS).map_err(err)?;
    put_in_segments(&os, &chunks).await?;
    tx.commit().await.map_err(err)
}

/// Where chunk `index` of `att` is: in its segment (the segment is returned too), or in
/// the schema-4 store, or nowhere.
enum Found {
    Segment(Segment),
    Legacy(Blob),
    Missing,
}

/// The value under `key` in `store` of the open transaction `tx`.
async fn get_in(
    tx: &indexed_db_futures::transaction::Transaction<'_>,
    store: &str,
    key: String,
) -> Result<Option<JsValue>, String> {
    tx.object_store(store)
        .map_err(err)?
        .get(key)
        .primitive()
        .map_err(err)?
        .await
        .map_err(err)
}

async fn find(db: &Database, att: AttachmentId, index: u32) -> Result<Found, String> {
    let tx = db.transaction([SEGMENTS, CHUNKS]).build().map_err(err)?;
    if let Some(v) = get_in(&tx, SEGMENTS, segment_key(att, index)).await? {
        let segment = Segment::from_js(&v)?;
        if segment.range(index).is_some() {
            tx.commit().await.map_err(err)?;
            return Ok(Found::Segment(segment));
        }
    }
    let v = get_in(&tx, CHUNKS, chunk_key(att, index)).await?;
    tx.commit().await.map_err(err)?;
    match v {
        None => Ok(Found::Missing),
        Some(v) => v
            .dyn_into::<Blob>()
            .map(Found::Legacy)
            .map_err(|_| format!("chunk {index} of {att} is not a Blob")),
    }
}

/// Chunk `index` of `att`, if stored.
pub async fn get_chunk(
    db: &Database,
    att: AttachmentId,
    index: u32,
) -> Result<Option<Vec<u8>>, String> {
    match find(db, att, index).await? {
        Found::Missing => Ok(None),
        Found::Legacy(blob) => blob_bytes(&blob).await.map(Some),
        Found::Segment(s) => {
            let (from, to) = s.range(index).expect("found in its segment");
            let part = s.blob.slice_with_f64_and_f64(from, to).map_err(js_err)?;
            blob_bytes(&part).await.map(Some)
        }
    }
}

/// Chunk `index` of `att` and the other chunks stored in its segment, in index order, read
/// at once (one read of the segment's Blob); empty if chunk `index` is not stored. For
/// reading a file in order: the next chunks are then at hand.
pub async fn get_segment(
    db: &Database,
    att: AttachmentId,
    index: u32,
) -> Result<Vec<(u32, Vec<u8>)>, String> {
    match find(db, att, index).await? {
        Found::Missing => Ok(Vec::new()),
        Found::Legacy(blob) => Ok(vec![(index, blob_bytes(&blob).await?)]),
        Found::Segment(s) => {
            let bytes = blob_bytes(&s.blob).await?;
            if bytes.len() != *s.offsets.last().expect("offsets are never empty") as usize {
                return Err(format!(
                    "the segment of chunk {index} of {att} was cut short"
                ));
            }
            Ok(s.indices
                .iter()
                .zip(s.offsets.windows(2))
                .map(|(&i, w)| (i, bytes[w[0] as usize..w[1] as usize].to_vec()))
                .collect())
        }
    }
}

/// Deletes everything stored for `att`: its chunks (in both layouts) and, for a sent
/// attachment, its chunk list. Deleting what is not there is not an error.
pub async fn delete_chunks(db: &Database, att: AttachmentId) -> Result<(), String> {
    let tx = db
        .transaction([SEGMENTS, CHUNKS, CHUNK_LISTS])
        .with_mode(TransactionMode::Readwrite)
        .build()
        .map_err(err)?;
    let segments = tx.object_store(SEGMENTS).map_err(err)?;
    let chunks = tx.object_store(CHUNKS).map_err(err)?;
    let lists = tx.object_store(CHUNK_LISTS).map_err(err)?;
    let a = segments
        .delete::<String, _>(chunk_range(att))
        .primitive()
        .map_err(err)?;
    let b = chunks
        .delete::<String, _>(chunk_range(att))
        .primitive()
        .map_err(err)?;
    let c = lists.delete(att.to_hex()).primitive().map_err(err)?;
    a.await.map_err(err)?;
    b.await.map_err(err)?;
    c.await.map_err(err)?;
    tx.commit().await.map_err(err)
}

/// Stores the chunk list of an attachment this node has whole (sent, or received).
pub async fn put_chunk_list(
    db: &Database,
    att: AttachmentId,
    hashes: &[Hash],
) -> Result<(), String> {
    let bytes: Vec<u8> = hashes.concat();
    let value = JsValue::from(Uint8Array::from(bytes.as_slice()));
    let tx = db
        .transaction(CHUNK_LISTS)
        .with_mode(TransactionMode::Readwrite)
        .build()
        .map_err(err)?;
    let os = tx.object_store(CHUNK_LISTS).map_err(err)?;
    os.put(value)
        .with_key(att.to_hex())
        .primitive()
        .map_err(err)?
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// The chunk list of an attachment this node has whole, if stored.
pub async fn get_chunk_list(db: &Database, att: AttachmentId) -> Result<Option<Vec<Hash>>, String> {
    let tx = db.transaction(CHUNK_LISTS).build().map_err(err)?;
    let os = tx.object_store(CHUNK_LISTS).map_err(err)?;
    let v: Option<JsValue> = os
        .get(att.to_hex())
        .primitive()
        .map_err(err)?
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    let Some(v) = v else {
        return Ok(None);
    };
    let bytes = v
        .dyn_into::<Uint8Array>()
        .map_err(|_| format!("the chunk list of {att} is not a Uint8Array"))?
        .to_vec();
    hashes_from_bytes(&bytes).map(Some).ok_or_else(|| {
        format!(
            "the chunk list of {att} is {} bytes, not a multiple of 32",
            bytes.len()
        )
    })
}

/// Encrypts `file` into the chunk store and returns what the mail carries about it.
/// `rng` fills buffers from a CSPRNG (in the page: [`crate::util::fill_random`]); it gives
/// the attachment's id and key. The file travels inline if its size is at most
/// `inline_limit`. On error nothing of it stays stored.
pub async fn seal_file(
    db: &Database,
    file: &File,
    inline_limit: u64,
    rng: impl FnMut(&mut [u8]),
) -> Result<AttachmentRef, String> {
    seal_file_with_progress(db, file, inline_limit, rng, |_| true).await
}

/// [`seal_file`], calling `progress(bytes sealed so far)` after each batch is stored; if
/// it returns `false` the sealing stops, what was stored is deleted, and the result is an
/// error.
pub async fn seal_file_with_progress(
    db: &Database,
    file: &File,
    inline_limit: u64,
    mut rng: impl FnMut(&mut [u8]),
    mut progress: impl FnMut(u64) -> bool,
) -> Result<AttachmentRef, String> {
    let name = file.name();
    let size = file.size() as u64;
    if size > MAX_ATTACHMENT_BYTES {
        return Err(format!(
            "{name} is {}; the largest attachment is {}",
            human_size(size),
            human_size(MAX_ATTACHMENT_BYTES)
        ));
    }
    let mut id = [0u8; 16];
    rng(&mut id);
    let mut key = [0u8; 32];
    rng(&mut key);
    let att = AttachmentId(id);
    let sealer = FileSealer::new(att, key, &name, &file.type_(), size)
        .map_err(|e| format!("{name}: {e}"))?;
    match seal_into(db, file, att, sealer, inline_limit, &mut progress).await {
        Ok(r) => Ok(r),
        Err(e) => {
            if let Err(d) = delete_chunks(db, att).await {
                crate::util::log(&format!("could not delete the chunks of {att}: {d}"));
            }
            Err(format!("{name}: {e}"))
        }
    }
}

async fn seal_into(
    db: &Database,
    file: &File,
    att: AttachmentId,
    mut sealer: FileSealer,
    inline_limit: u64,
    progress: &mut impl FnMut(u64) -> bool,
) -> Result<AttachmentRef, String> {
    let size = file.size() as u64;
    // The file is read a segment's worth (BATCH_CHUNKS chunks) at a time, the next read
    // under way while this one is sealed and stored: one `slice` (a Blob the browser
    // registers) and one read per segment, not per chunk.
    const READ_BYTES: u64 = (peermail_core::attach::CHUNK_BYTES * BATCH_CHUNKS) as u64;
    let read = |start: u64| -> Result<Option<JsFuture>, String> {
        if start >= size {
            return Ok(None);
        }
        let end = (start + READ_BYTES).min(size);
        let slice = file
            .slice_with_f64_and_f64(start as f64, end as f64)
            .map_err(js_err)?;
        Ok(Some(JsFuture::from(slice.array_buffer())))
    };
    let mut next = read(0)?;
    let mut start = 0u64;
    let mut batch: Vec<SealedChunk> = Vec::with_capacity(BATCH_CHUNKS);
    while let Some(reading) = next.take() {
        let plain = read_bytes(reading)
            .await
            .map_err(|e| format!("the file could not be read ({e})"))?;
        if plain.is_empty() {
            return Err("the file changed while it was read".into());
        }
        let end = start + plain.len() as u64;
        next = read(end)?;
        while let Some(range) = sealer.next_range().filter(|r| r.end <= end) {
            let from = (range.start - start) as usize;
            let to = (range.end - start) as usize;
            batch.push(sealer.push(&plain[from..to]).map_err(err)?);
        }
        if sealer.next_range().is_some_and(|r| r.start < end) {
            return Err("the file changed while it was read".into());
        }
        let refs: Vec<(u32, &[u8])> = batch.iter().map(|c| (c.index, c.data.as_slice())).collect();
        put_chunks(db, att, &refs).await?;
        batch.clear();
        start = end;
        if !progress(end) {
            return Err("cancelled".into());
        }
    }
    if sealer.next_index().is_some() {
        return Err("the file changed while it was read".into());
    }
    let (r, hashes) = sealer.finish(size <= inline_limit).map_err(err)?;
    put_chunk_list(db, att, &hashes).await?;
    Ok(r)
}
