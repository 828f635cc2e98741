//! The attachment chunk store on IndexedDB, and sealing a picked file into it.
//!
//! It shares the account's database ([`IdbStore::database`](crate::store::IdbStore::database))
//! and uses two of its object stores (see [`crate::store`]):
//!
//! - [`CHUNKS`]: key `"<attachment id hex>/<index, 10 digits>"` ([`chunk_key`], shared with
//!   [`IdbStore`](crate::store::IdbStore)'s own chunk writes), value one
//!   encrypted chunk as a `Blob` — the browser keeps Blobs on disk, so holding a large file
//!   costs no page memory.
//! - [`CHUNK_LISTS`]: key the attachment id in hex, value the chunk list of an attachment
//!   this node has whole, sent or received (its SHA-256 hashes concatenated) as a `Uint8Array`.
//!
//! Writes go in batches, one readwrite transaction per batch, and return after the commit.
//! [`seal_file`] reads a `File` one chunk at a time (never the whole file), encrypts each
//! with [`FileSealer`], and writes [`BATCH_CHUNKS`] chunks per transaction: its memory is
//! one batch plus 32 bytes per chunk, whatever the file's size. A failed or cancelled
//! sealing deletes what it wrote.

use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use indexed_db_futures::KeyRange;
use js_sys::{Array, ArrayBuffer, Uint8Array};
use peermail_core::attach::{
    hashes_from_bytes, AttachmentId, AttachmentRef, FileSealer, Hash, SealedChunk,
    MAX_ATTACHMENT_BYTES,
};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, File};

pub use crate::store::chunk_key;
use crate::store::{CHUNKS, CHUNK_LISTS};
use crate::text::human_size;

/// Chunks written per IndexedDB transaction by [`seal_file`] (about 1 MiB).
pub const BATCH_CHUNKS: usize = 16;

fn err(e: impl std::fmt::Display) -> String {
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
fn chunk_range(att: AttachmentId) -> KeyRange<String> {
    let hex = att.to_hex();
    (format!("{hex}/")..format!("{hex}0")).into()
}

pub(crate) fn blob_of(bytes: &[u8]) -> Result<Blob, String> {
    let parts = Array::of1(&Uint8Array::from(bytes));
    Blob::new_with_u8_array_sequence(&parts).map_err(js_err)
}

/// The bytes of a Blob (or File, or a slice of one).
pub async fn blob_bytes(blob: &Blob) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(blob.array_buffer()).await.map_err(js_err)?;
    let buf: ArrayBuffer = buf.dyn_into().map_err(js_err)?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// Stores encrypted chunks `(index, bytes)` of `att`, each as a Blob, in one transaction;
/// returns after it committed. A chunk already stored is replaced.
pub async fn put_chunks(
    db: &Database,
    att: AttachmentId,
    chunks: &[(u32, &[u8])],
) -> Result<(), String> {
    if chunks.is_empty() {
        return Ok(());
    }
    // Everything that is not IndexedDB happens before the transaction opens: it would
    // commit by itself at the first await on anything else.
    let values = chunks
        .iter()
        .map(|(i, data)| Ok((chunk_key(att, *i), blob_of(data)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let tx = db
        .transaction(CHUNKS)
        .with_mode(TransactionMode::Readwrite)
        .build()
        .map_err(err)?;
    let os = tx.object_store(CHUNKS).map_err(err)?;
    let mut requests = Vec::with_capacity(values.len());
    for (key, blob) in values {
        requests.push(
            os.put(JsValue::from(blob))
                .with_key(key)
                .primitive()
                .map_err(err)?,
        );
    }
    for r in requests {
        r.await.map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

/// Chunk `index` of `att`, if stored.
pub async fn get_chunk(
    db: &Database,
    att: AttachmentId,
    index: u32,
) -> Result<Option<Vec<u8>>, String> {
    let blob = {
        let tx = db.transaction(CHUNKS).build().map_err(err)?;
        let os = tx.object_store(CHUNKS).map_err(err)?;
        let v: Option<JsValue> = os
            .get(chunk_key(att, index))
            .primitive()
            .map_err(err)?
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        v
    };
    match blob {
        None => Ok(None),
        Some(v) => {
            let blob: Blob = v
                .dyn_into()
                .map_err(|_| format!("chunk {index} of {att} is not a Blob"))?;
            blob_bytes(&blob).await.map(Some)
        }
    }
}

/// Deletes everything stored for `att`: its chunks and, for a sent attachment, its chunk
/// list. Deleting what is not there is not an error.
pub async fn delete_chunks(db: &Database, att: AttachmentId) -> Result<(), String> {
    let tx = db
        .transaction([CHUNKS, CHUNK_LISTS])
        .with_mode(TransactionMode::Readwrite)
        .build()
        .map_err(err)?;
    let chunks = tx.object_store(CHUNKS).map_err(err)?;
    let lists = tx.object_store(CHUNK_LISTS).map_err(err)?;
    let a = chunks
        .delete::<String, _>(chunk_range(att))
        .primitive()
        .map_err(err)?;
    let b = lists.delete(att.to_hex()).primitive().map_err(err)?;
    a.await.map_err(err)?;
    b.await.map_err(err)?;
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
    let mut batch: Vec<SealedChunk> = Vec::with_capacity(BATCH_CHUNKS);
    while let Some(range) = sealer.next_range() {
        let slice = file
            .slice_with_f64_and_f64(range.start as f64, range.end as f64)
            .map_err(js_err)?;
        let plain = blob_bytes(&slice)
            .await
            .map_err(|e| format!("the file could not be read ({e})"))?;
        batch.push(sealer.push(&plain).map_err(err)?);
        if batch.len() == BATCH_CHUNKS || sealer.next_index().is_none() {
            let refs: Vec<(u32, &[u8])> =
                batch.iter().map(|c| (c.index, c.data.as_slice())).collect();
            put_chunks(db, att, &refs).await?;
            batch.clear();
            if !progress(range.end) {
                return Err("cancelled".into());
            }
        }
    }
    let (r, hashes) = sealer.finish(size <= inline_limit).map_err(err)?;
    put_chunk_list(db, att, &hashes).await?;
    Ok(r)
}
