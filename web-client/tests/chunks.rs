//! The attachment chunk store (`chunks.rs`) on IndexedDB in a real headless Chromium: Blob
//! round trips, and sealing a `File` into chunks that the receiving side's checks accept.
//! Run like `idb_store.rs`.

use std::sync::atomic::{AtomicU32, Ordering};

use indexed_db_futures::database::Database;
use js_sys::{Array, Uint8Array};
use peermail_core::attach::{chunks_root, sha256, AttachmentId, FileCheck, CHUNK_BYTES};
use peermail_web_client::chunks::{
    delete_chunks, get_chunk, get_chunk_list, has_chunk, put_chunk_list, put_chunks, seal_file,
    seal_file_with_progress, BATCH_CHUNKS,
};
use peermail_web_client::store::IdbStore;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// A database (schema as the app's) no other test uses.
async fn fresh_db() -> Database {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("peermail-chunks-{}-{n}", js_sys::Date::now() as u64);
    IdbStore::open(&name)
        .await
        .expect("open a fresh IndexedDB store")
        .database()
        .clone()
}

/// A deterministic stand-in for the CSPRNG.
fn counter_rng(seed: u8) -> impl FnMut(&mut [u8]) {
    let mut n = seed;
    move |buf: &mut [u8]| {
        for b in buf {
            *b = n;
            n = n.wrapping_add(1);
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn file_of(bytes: &[u8], name: &str, mime: &str) -> web_sys::File {
    let parts = Array::of1(&Uint8Array::from(bytes));
    let opts = web_sys::FilePropertyBag::new();
    opts.set_type(mime);
    web_sys::File::new_with_u8_array_sequence_and_options(&parts, name, &opts).unwrap()
}

#[wasm_bindgen_test]
async fn put_get_delete_round_trip() {
    let db = fresh_db().await;
    let a = AttachmentId([1; 16]);
    let b = AttachmentId([2; 16]);
    let big = pattern(CHUNK_BYTES + 16);
    put_chunks(&db, a, &[(0, b"zero"), (1, &big), (7, b"")])
        .await
        .unwrap();
    put_chunks(&db, b, &[(0, b"other")]).await.unwrap();

    assert_eq!(get_chunk(&db, a, 0).await.unwrap(), Some(b"zero".to_vec()));
    assert_eq!(get_chunk(&db, a, 1).await.unwrap(), Some(big));
    assert_eq!(get_chunk(&db, a, 7).await.unwrap(), Some(Vec::new()));
    assert_eq!(get_chunk(&db, a, 2).await.unwrap(), None);
    assert!(has_chunk(&db, a, 1).await.unwrap());
    assert!(!has_chunk(&db, a, 2).await.unwrap());

    // Replacing a chunk keeps one value.
    put_chunks(&db, a, &[(0, b"ZERO")]).await.unwrap();
    assert_eq!(get_chunk(&db, a, 0).await.unwrap(), Some(b"ZERO".to_vec()));

    let hashes = [[9u8; 32], [8u8; 32], [7u8; 32]];
    put_chunk_list(&db, a, &hashes).await.unwrap();
    assert_eq!(get_chunk_list(&db, a).await.unwrap(), Some(hashes.to_vec()));
    assert_eq!(get_chunk_list(&db, b).await.unwrap(), None);
    put_chunk_list(&db, b, &[]).await.unwrap();
    assert_eq!(get_chunk_list(&db, b).await.unwrap(), Some(Vec::new()));

    // Deleting one attachment leaves the other alone.
    delete_chunks(&db, a).await.unwrap();
    for i in [0, 1, 7] {
        assert!(!has_chunk(&db, a, i).await.unwrap(), "chunk {i} deleted");
    }
    assert_eq!(get_chunk_list(&db, a).await.unwrap(), None);
    assert_eq!(get_chunk(&db, b, 0).await.unwrap(), Some(b"other".to_vec()));
    // Deleting again is fine.
    delete_chunks(&db, a).await.unwrap();
}

/// Seals `plain` as a File and checks what was stored against what was returned, as a
/// receiver would: chunk hashes, root, decryption, whole-file hash.
async fn seal_and_check(plain: &[u8], inline_limit: u64) -> peermail_core::attach::AttachmentRef {
    let db = fresh_db().await;
    let file = file_of(plain, "holiday photo.JPG", "Image/JPEG");
    let r = seal_file(&db, &file, inline_limit, counter_rng(3))
        .await
        .unwrap();
    assert_eq!(r.size, plain.len() as u64);
    assert_eq!(r.name, "holiday photo.JPG");
    assert_eq!(r.mime, "image/jpeg");
    assert_eq!(r.file_hash, sha256(plain));
    assert_eq!(r.id, AttachmentId(std::array::from_fn(|i| 3 + i as u8)));
    assert_eq!(r.key, std::array::from_fn(|i| 19 + i as u8));

    let count = r.chunk_count();
    assert_eq!(count as usize, plain.len().div_ceil(CHUNK_BYTES));
    let list = get_chunk_list(&db, r.id)
        .await
        .unwrap()
        .expect("chunk list");
    assert_eq!(list.len(), count as usize);
    assert_eq!(chunks_root(&list), r.chunks_root);

    let mut check = FileCheck::new(&r);
    let mut opened = Vec::new();
    for i in 0..count {
        let data = get_chunk(&db, r.id, i)
            .await
            .unwrap()
            .expect("chunk stored");
        assert_eq!(data.len(), r.cipher_len(i));
        assert_eq!(
            sha256(&data),
            list[i as usize],
            "chunk {i} matches the list"
        );
        opened.extend(check.push(i, &data).unwrap());
    }
    check.finish().unwrap();
    assert_eq!(opened, plain);
    // Exactly `count` chunks: nothing after the last.
    assert!(!has_chunk(&db, r.id, count).await.unwrap());
    r
}

#[wasm_bindgen_test]
async fn seal_file_three_chunks_and_a_bit() {
    let plain = pattern(3 * CHUNK_BYTES + 5);
    let r = seal_and_check(&plain, 8 << 20).await;
    assert_eq!(r.chunk_count(), 4);
    assert!(r.inline);
}

#[wasm_bindgen_test]
async fn seal_file_across_batches_above_the_inline_limit() {
    // More than one batch, ending exactly on a chunk boundary.
    let plain = pattern((BATCH_CHUNKS + 2) * CHUNK_BYTES);
    let r = seal_and_check(&plain, CHUNK_BYTES as u64).await;
    assert_eq!(r.chunk_count() as usize, BATCH_CHUNKS + 2);
    assert!(!r.inline, "larger than the inline limit");
}

#[wasm_bindgen_test]
async fn seal_empty_file_has_no_chunks() {
    let r = seal_and_check(&[], 8 << 20).await;
    assert_eq!(r.chunk_count(), 0);
    assert!(r.inline);
}

#[wasm_bindgen_test]
async fn a_cancelled_seal_leaves_nothing_stored() {
    let db = fresh_db().await;
    let file = file_of(&pattern((BATCH_CHUNKS + 1) * CHUNK_BYTES), "big.bin", "");
    let mut calls = Vec::new();
    let e = seal_file_with_progress(&db, &file, 0, counter_rng(50), |done| {
        calls.push(done);
        false
    })
    .await
    .unwrap_err();
    assert!(e.contains("big.bin") && e.contains("cancelled"), "{e}");
    // The first batch was written, reported, then deleted.
    assert_eq!(calls, vec![(BATCH_CHUNKS * CHUNK_BYTES) as u64]);
    let id = AttachmentId(std::array::from_fn(|i| 50 + i as u8));
    for i in 0..=BATCH_CHUNKS as u32 {
        assert!(!has_chunk(&db, id, i).await.unwrap(), "chunk {i} deleted");
    }
    assert_eq!(get_chunk_list(&db, id).await.unwrap(), None);
}
