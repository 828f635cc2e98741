//! The attachment chunk store (`chunks.rs`) on IndexedDB in a real headless Chromium: Blob
//! round trips, and sealing a `File` into chunks that the receiving side's checks accept.
//! Also Compose's attachment list (`compose_files.rs`): picking, dropping, removing.
//! Run like `idb_store.rs`.

use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use indexed_db_futures::database::Database;
use js_sys::{Array, Uint8Array};
use peermail_core::attach::{
    chunks_root, file_hash, sha256, AttachmentId, FileCheck, FileHashAlg, CHUNK_BYTES,
};
use peermail_web_client::chunks::{
    chunk_key, delete_chunks, get_chunk, get_chunk_list, get_segment, put_chunk_list, put_chunks,
    seal_file, seal_file_with_progress, BATCH_CHUNKS, SEGMENT_CHUNKS,
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

/// A draft's files in the account's database (`draft::keep_files` and the rest): kept in
/// order, each written once, read back as `File`s with their names, types and bytes;
/// those no longer attached dropped; a draft's files dropped with it, and files whose
/// draft is no longer listed dropped as a page starts. Also `FilesAction::Restore`: the
/// kept files go first, and files added after a reload never take a kept file's key.
#[wasm_bindgen_test]
async fn a_drafts_files_are_kept_read_back_and_dropped_with_it() {
    use peermail_web_client::compose_files::{FilesAction, PickedFiles};
    use peermail_web_client::draft;
    use peermail_web_client::state::Prefill;
    use std::rc::Rc;
    use yew::Reducible;

    let db = fresh_db().await;
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    storage.clear().unwrap();
    let a = file_of(&pattern(70_000), "a.bin", "application/octet-stream");
    let b = file_of(b"hello", "b.txt", "text/plain");
    let c = file_of(&[], "c.png", "image/png");
    let read = |kept: Vec<(u64, web_sys::File)>| async move {
        let mut out = Vec::new();
        for (key, f) in kept {
            let bytes = peermail_web_client::chunks::blob_bytes(&f).await.unwrap();
            out.push((key, f.name(), f.type_(), bytes));
        }
        out
    };
    assert!(draft::kept_files(&db, "d1").await.unwrap().is_empty());
    draft::keep_files(&db, "d1", &[(5, a.clone()), (9, b.clone())], &[])
        .await
        .unwrap();
    draft::keep_files(&db, "d2", &[(3, c.clone())], &[])
        .await
        .unwrap();
    let kept = read(draft::kept_files(&db, "d1").await.unwrap()).await;
    assert_eq!(
        kept,
        vec![
            (
                5,
                "a.bin".into(),
                "application/octet-stream".into(),
                pattern(70_000)
            ),
            (9, "b.txt".into(), "text/plain".into(), b"hello".to_vec()),
        ]
    );
    // b removed, c added; a, kept already, stays as it was.
    let kept_a = draft::kept_files(&db, "d1").await.unwrap()[0].1.clone();
    draft::keep_files(&db, "d1", &[(5, kept_a), (11, c.clone())], &[])
        .await
        .unwrap();
    let kept = read(draft::kept_files(&db, "d1").await.unwrap()).await;
    assert_eq!(
        kept.iter().map(|k| (k.0, k.1.as_str())).collect::<Vec<_>>(),
        [(5, "a.bin"), (11, "c.png")]
    );
    assert_eq!(kept[0].3, pattern(70_000));
    assert_eq!(
        draft::kept_files(&db, "d2").await.unwrap().len(),
        1,
        "d2 untouched"
    );
    // A file kept but not attached stays when asked to (one the form could not read back).
    draft::keep_files(&db, "d2", &[], &[3]).await.unwrap();
    assert_eq!(draft::kept_files(&db, "d2").await.unwrap().len(), 1);
    // d2's file was kept over an hour ago.
    backdate(&db, "d2/00000000000000000003", &c).await;

    // Only d1 is listed: d2's files go as a page starts; d1's stay, and so do d4's, kept
    // just now (another tab's draft may not be listed here yet).
    let just_now = js_sys::Date::now() as u64 * 1000;
    draft::keep_files(&db, "d4", &[(just_now, b.clone())], &[])
        .await
        .unwrap();
    let listed = Prefill {
        subject: "one".into(),
        ..Prefill::default()
    };
    draft::save("d1", &listed);
    // Not while the list cannot be read (its drafts are put aside, not gone).
    let list = storage.get_item("peermail-drafts").unwrap().unwrap();
    storage.set_item("peermail-drafts", "not json").unwrap();
    assert_eq!(draft::drop_orphan_files(&db).await.unwrap(), 0);
    assert_eq!(draft::kept_files(&db, "d2").await.unwrap().len(), 1);
    // Nor the files of a draft in a list put aside.
    storage.set_item("peermail-drafts", &list).unwrap();
    assert!(storage
        .get_item("peermail-drafts-unreadable")
        .unwrap()
        .is_some_and(|aside| aside == "not json"));
    storage
        .set_item("peermail-drafts-unreadable", r#"[{"id":"d2","future":1}]"#)
        .unwrap();
    assert_eq!(draft::drop_orphan_files(&db).await.unwrap(), 0);
    storage.remove_item("peermail-drafts-unreadable").unwrap();
    assert_eq!(draft::drop_orphan_files(&db).await.unwrap(), 1);
    assert!(draft::kept_files(&db, "d2").await.unwrap().is_empty());
    assert_eq!(draft::kept_files(&db, "d1").await.unwrap().len(), 2);
    assert_eq!(draft::kept_files(&db, "d4").await.unwrap().len(), 1);
    // A draft listed with nothing but files is kept.
    let only_files = Prefill {
        files: vec![draft::KeptFile {
            key: 3,
            name: "c.png".into(),
            size: 0,
        }],
        ..Prefill::default()
    };
    assert!(
        draft::save("d3", &only_files),
        "a draft of files alone is listed"
    );
    draft::remove("d3");
    // Sent or discarded: its files go with it.
    draft::drop_files(&db, "d1").await.unwrap();
    assert!(draft::kept_files(&db, "d1").await.unwrap().is_empty());
    draft::remove("d1");

    // The form's list: kept files first, in their order, then those added before they
    // were back; a file added later takes a key no kept file has.
    let files = Rc::new(PickedFiles::default());
    assert!(!files.restored);
    let files = files.reduce(FilesAction::Forwarded(vec![b.clone()]));
    assert!(
        !files.touched,
        "a forward's files are not the person's doing"
    );
    let files = files.reduce(FilesAction::Restore(vec![(5, a.clone()), (7, c.clone())]));
    assert!(files.restored);
    let names = |f: &PickedFiles| f.files.iter().map(|p| p.file.name()).collect::<Vec<_>>();
    assert_eq!(names(&files), ["a.bin", "c.png", "b.txt"]);
    let files = files.reduce(FilesAction::Add(vec![b.clone()]));
    assert!(files.touched);
    let keys: Vec<u64> = files.files.iter().map(|p| p.key).collect();
    assert_eq!(&keys[..2], [5, 7]);
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "keys {keys:?}");
    assert_eq!(
        files
            .kept()
            .iter()
            .map(|k| (k.key, k.size))
            .collect::<Vec<_>>()[..2],
        [(5, 70_000), (7, 0)]
    );
    // Files that could not be read back stay listed (first), are not attached, and are
    // kept as they are.
    let unreadable = vec![draft::KeptFile {
        key: 42,
        name: "lost.bin".into(),
        size: 9,
    }];
    let files = Rc::new(PickedFiles::default()).reduce(FilesAction::Unreadable(unreadable.clone()));
    assert!(files.restored && files.files.is_empty());
    let files = files.reduce(FilesAction::Add(vec![b.clone()]));
    let kept = files.kept();
    assert_eq!(kept[0], unreadable[0]);
    assert_eq!(kept.len(), 2);
    assert!(kept[1].key > 42);
    assert_eq!(files.preserved_keys(), [42]);
    db.close();
}

/// Rewrites the draft file record `key` as kept two hours ago.
async fn backdate(db: &Database, key: &str, file: &web_sys::File) {
    let o = js_sys::Object::new();
    js_sys::Reflect::set(&o, &"file".into(), file).unwrap();
    let then = js_sys::Date::now() - 2.0 * 3_600_000.0;
    js_sys::Reflect::set(&o, &"kept_at".into(), &then.into()).unwrap();
    common::put_record(db, peermail_web_client::store::DRAFT_FILES, key, o.into()).await;
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
    assert!(get_chunk(&db, a, 1).await.unwrap().is_some());
    assert!(get_chunk(&db, a, 2).await.unwrap().is_none());

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
        assert!(
            get_chunk(&db, a, i).await.unwrap().is_none(),
            "chunk {i} deleted"
        );
    }
    assert_eq!(get_chunk_list(&db, a).await.unwrap(), None);
    assert_eq!(get_chunk(&db, b, 0).await.unwrap(), Some(b"other".to_vec()));
    // Deleting again is fine.
    delete_chunks(&db, a).await.unwrap();
}

/// Chunks written in any order, in several writes, land in their 16-index segments: each
/// reads back as written, a rewrite replaces, the last of two writes of one index in a
/// batch wins, and a segment read hands out the stored chunks of the segment in order.
#[wasm_bindgen_test]
async fn chunks_merge_into_segments_in_any_order() {
    let db = fresh_db().await;
    let a = AttachmentId([3; 16]);
    let c =
        |i: u32, len: usize| -> Vec<u8> { (0..len).map(|k| (i as usize * 31 + k) as u8).collect() };
    let full = CHUNK_BYTES + 16;
    // Out of order, across three segments, in three writes.
    let first: Vec<(u32, Vec<u8>)> = vec![(20, c(20, full)), (3, c(3, full)), (17, c(17, 5))];
    let second: Vec<(u32, Vec<u8>)> = (0..16)
        .rev()
        .filter(|i| i % 2 == 0)
        .map(|i| (i, c(i, full)))
        .collect();
    let third: Vec<(u32, Vec<u8>)> = vec![(1, c(1, 10)), (33, c(33, 0)), (15, c(15, full))];
    for batch in [&first, &second, &third] {
        let refs: Vec<(u32, &[u8])> = batch.iter().map(|(i, d)| (*i, &d[..])).collect();
        put_chunks(&db, a, &refs).await.unwrap();
    }
    let mut want: Vec<(u32, Vec<u8>)> =
        first.iter().chain(&second).chain(&third).cloned().collect();
    want.sort_by_key(|(i, _)| *i);
    for (i, data) in &want {
        assert_eq!(
            get_chunk(&db, a, *i).await.unwrap().as_ref(),
            Some(data),
            "chunk {i}"
        );
    }
    for i in [5, 16, 18, 32, 34, 48] {
        assert_eq!(
            get_chunk(&db, a, i).await.unwrap(),
            None,
            "chunk {i} was never written"
        );
        assert!(get_segment(&db, a, i).await.unwrap().is_empty());
    }
    let seg0: Vec<(u32, Vec<u8>)> = want
        .iter()
        .filter(|(i, _)| *i < SEGMENT_CHUNKS)
        .cloned()
        .collect();
    assert_eq!(seg0.len(), 11);
    assert_eq!(get_segment(&db, a, 8).await.unwrap(), seg0);
    // Rewrites: one replaced inside a merged segment; two writes of one index in a batch.
    put_chunks(&db, a, &[(3, b"three"), (17, b"old"), (17, b"new")])
        .await
        .unwrap();
    assert_eq!(get_chunk(&db, a, 3).await.unwrap(), Some(b"three".to_vec()));
    assert_eq!(get_chunk(&db, a, 17).await.unwrap(), Some(b"new".to_vec()));
    assert_eq!(get_chunk(&db, a, 2).await.unwrap(), Some(c(2, full)));
    assert_eq!(get_chunk(&db, a, 4).await.unwrap(), Some(c(4, full)));
    assert_eq!(
        get_segment(&db, a, 17).await.unwrap(),
        vec![(17, b"new".to_vec()), (20, c(20, full))]
    );
    delete_chunks(&db, a).await.unwrap();
    for (i, _) in &want {
        assert_eq!(get_chunk(&db, a, *i).await.unwrap(), None);
    }
}

/// A database of schema version 5 kept one chunk per record in `chunks`: after the upgrade
/// those chunks are still read (alone, and beside newer chunks of the same segment written
/// the new way) and deleted with their attachment.
#[wasm_bindgen_test]
async fn chunks_stored_one_per_record_before_version_6_are_still_read() {
    use indexed_db_futures::prelude::*;
    use indexed_db_futures::transaction::TransactionMode;
    let name = format!("peermail-chunks-v5-{}", js_sys::Date::now() as u64);
    let a = AttachmentId([4; 16]);
    {
        let db = common::old_database(&name, 5).await;
        let tx = db
            .transaction("chunks")
            .with_mode(TransactionMode::Readwrite)
            .build()
            .unwrap();
        let os = tx.object_store("chunks").unwrap();
        for (i, data) in [(0u32, &b"legacy zero"[..]), (1, b"legacy one")] {
            let blob =
                web_sys::Blob::new_with_u8_array_sequence(&Array::of1(&Uint8Array::from(data)))
                    .unwrap();
            os.put(wasm_bindgen::JsValue::from(blob))
                .with_key(chunk_key(a, i))
                .primitive()
                .unwrap();
        }
        tx.commit().await.unwrap();
        db.close();
    }
    let db = IdbStore::open(&name).await.unwrap().database().clone();
    assert_eq!(
        get_chunk(&db, a, 0).await.unwrap(),
        Some(b"legacy zero".to_vec())
    );
    put_chunks(&db, a, &[(2, b"new two"), (1, b"new one")])
        .await
        .unwrap();
    assert_eq!(
        get_chunk(&db, a, 0).await.unwrap(),
        Some(b"legacy zero".to_vec())
    );
    assert_eq!(
        get_chunk(&db, a, 1).await.unwrap(),
        Some(b"new one".to_vec())
    );
    assert_eq!(
        get_segment(&db, a, 0).await.unwrap(),
        vec![(0, b"legacy zero".to_vec())]
    );
    assert_eq!(
        get_segment(&db, a, 1).await.unwrap(),
        vec![(1, b"new one".to_vec()), (2, b"new two".to_vec())]
    );
    delete_chunks(&db, a).await.unwrap();
    for i in 0..3 {
        assert_eq!(get_chunk(&db, a, i).await.unwrap(), None);
    }
}

/// The whole-file hash of new attachments, BLAKE3, runs on the Wasm SIMD code in the
/// browser: it gives the official test vector's answer (as core's native test does).
#[wasm_bindgen_test]
fn blake3_in_the_browser_gives_the_official_answer() {
    let vector: Vec<u8> = (0..102_400u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        hex::encode(file_hash(FileHashAlg::Blake3, &vector)),
        "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085"
    );
}

/// The chunks' ChaCha20 runs on Wasm SIMD code in the browser (`peermail_core::chacha4`):
/// it gives RFC 8439's answers and the `chacha20` crate's keystream at every position and
/// length (as core's native tests check its portable code).
#[wasm_bindgen_test]
fn chunk_cipher_in_the_browser_is_standard_chacha20_poly1305() {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    use peermail_core::chacha4::{ChaCha20Poly1305x4, ChaCha20x4};

    // RFC 8439, section 2.8.2.
    let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
    let nonce = [7, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
    let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
    let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
tip for the future, sunscreen would be it.";
    let sealed = ChaCha20Poly1305x4::new(&key.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(
        hex::encode(&sealed),
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6\
         3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36\
         92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc\
         3ff4def08e4b7a9de576d26586cec64b6116\
         1ae10b594f09e26a7e902ecbd0600691"
    );
    let data: Vec<u8> = (0..1200u32).map(|i| (i * 31 % 251) as u8).collect();
    for start in [0u64, 1, 64, 100, 256] {
        for len in 0..=600 {
            let mut a = data[..len].to_vec();
            let mut b = a.clone();
            let mut x = ChaCha20x4::new(&key.into(), &nonce.into());
            let mut y = chacha20::ChaCha20::new(&key.into(), &nonce.into());
            x.seek(start);
            y.seek(start);
            x.apply_keystream(&mut a);
            y.apply_keystream(&mut b);
            assert_eq!(a, b, "start {start}, length {len}");
        }
    }
    // A whole chunk, sealed and opened.
    let chunk: Vec<u8> = (0..CHUNK_BYTES as u32).map(|i| (i % 253) as u8).collect();
    let payload = || Payload {
        msg: &chunk,
        aad: b"id",
    };
    let ours = ChaCha20Poly1305x4::new(&key.into())
        .encrypt(&nonce.into(), payload())
        .unwrap();
    let theirs = chacha20poly1305::ChaCha20Poly1305::new(&key.into())
        .encrypt(&nonce.into(), payload())
        .unwrap();
    assert_eq!(ours, theirs);
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
    assert_eq!(r.file_hash_alg, FileHashAlg::Blake3);
    assert_eq!(r.file_hash, file_hash(FileHashAlg::Blake3, plain));
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
    assert!(get_chunk(&db, r.id, count).await.unwrap().is_none());
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
        assert!(
            get_chunk(&db, id, i).await.unwrap().is_none(),
            "chunk {i} deleted"
        );
    }
    assert_eq!(get_chunk_list(&db, id).await.unwrap(), None);
}

// ---- Compose's attachment list (compose_files.rs), mounted on its own ----

mod compose {
    use peermail_web_client::compose_files::{use_file_drop, ComposeFiles, PickedFiles};
    use wasm_bindgen::JsCast;
    use wasm_bindgen_test::wasm_bindgen_test;
    use web_sys::{DataTransfer, DragEvent, DragEventInit, Element, HtmlElement, HtmlInputElement};
    use yew::prelude::*;

    use super::file_of;

    #[function_component(Harness)]
    fn harness() -> Html {
        let files = use_reducer(PickedFiles::default);
        let drop = use_file_drop(files.dispatcher(), false);
        html! {
            <form id="drop-zone" ondragover={drop.ondragover} ondrop={drop.ondrop}>
                <ComposeFiles files={files} />
            </form>
        }
    }

    async fn settle() {
        gloo_timers::future::TimeoutFuture::new(30).await;
    }

    fn document() -> web_sys::Document {
        web_sys::window().unwrap().document().unwrap()
    }

    /// `(data-name, .size text)` of each listed attachment.
    fn listed() -> Vec<(String, String)> {
        let items = document()
            .query_selector_all("#compose-attachments li.compose-attachment")
            .unwrap();
        (0..items.length())
            .map(|i| {
                let li: Element = items.get(i).unwrap().dyn_into().unwrap();
                let size = li
                    .query_selector(".size")
                    .unwrap()
                    .unwrap()
                    .text_content()
                    .unwrap();
                (li.get_attribute("data-name").unwrap(), size)
            })
            .collect()
    }

    fn file_list(files: &[web_sys::File]) -> DataTransfer {
        let dt = DataTransfer::new().unwrap();
        for f in files {
            dt.items().add_with_file(f).unwrap();
        }
        dt
    }

    #[wasm_bindgen_test]
    async fn pick_drop_and_remove() {
        let root = document().create_element("div").unwrap();
        document().body().unwrap().append_child(&root).unwrap();
        yew::Renderer::<Harness>::with_root(root).render();
        settle().await;
        assert!(listed().is_empty());

        let a = file_of(&[7; 1536], "a.txt", "text/plain");
        let b = file_of(&[], "b.png", "image/png");
        let input: HtmlInputElement = document()
            .get_element_by_id("compose-files")
            .unwrap()
            .dyn_into()
            .unwrap();
        assert!(input.multiple());
        let pick = |files: &[web_sys::File]| {
            input.set_files(file_list(files).files().as_ref());
            input
                .dispatch_event(&web_sys::Event::new("change").unwrap())
                .unwrap();
        };
        pick(&[a.clone(), b]);
        settle().await;
        assert_eq!(
            listed(),
            [
                ("a.txt".into(), "1.5 KB".into()),
                ("b.png".into(), "0 bytes".into())
            ]
        );

        // The same file again is a second entry.
        pick(std::slice::from_ref(&a));
        settle().await;
        assert_eq!(listed().len(), 3);

        // Dropped onto the form.
        let c = file_of(&vec![1; 3 << 20], "c.bin", "");
        let init = DragEventInit::new();
        init.set_bubbles(true);
        init.set_cancelable(true);
        init.set_data_transfer(Some(&file_list(&[c])));
        let ev = DragEvent::new_with_event_init_dict("drop", &init).unwrap();
        document()
            .get_element_by_id("drop-zone")
            .unwrap()
            .dispatch_event(&ev)
            .unwrap();
        settle().await;
        assert!(
            ev.default_prevented(),
            "the browser does not open the dropped file"
        );
        let names: Vec<String> = listed().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a.txt", "b.png", "a.txt", "c.bin"]);
        assert_eq!(listed()[3].1, "3.0 MB");

        // Removing the first a.txt leaves the second.
        let remove: HtmlElement = document()
            .query_selector("li.compose-attachment button.remove-attachment")
            .unwrap()
            .unwrap()
            .dyn_into()
            .unwrap();
        remove.click();
        settle().await;
        let names: Vec<String> = listed().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b.png", "a.txt", "c.bin"]);
    }
}
