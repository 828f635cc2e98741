//! Received chunks held until their segment is whole (`held.rs`): when a segment is
//! written, what goes with it, and that a written download record never lists a chunk
//! that is still only in memory. Run like `idb_store.rs` (headless Chromium).

use peermail_core::attach::{
    hash_page, AttachmentId, Download, FileSealer, SealedChunk, CHUNK_BYTES,
};
use peermail_core::store::{DownloadRecord, DownloadState};
use peermail_core::{Address, MessageId};
use peermail_web_client::chunks::SEGMENT_CHUNKS;
use peermail_web_client::held::{Flush, Held, HELD_MAX_CHUNKS};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// A sealed file of `count` chunks (the last one short) and a download that has its list.
fn sealed(count: u32, id: u8) -> (Vec<SealedChunk>, DownloadRecord) {
    let size = (count as u64 - 1) * CHUNK_BYTES as u64 + 100;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut s = FileSealer::new(AttachmentId([id; 16]), [3; 32], "f.bin", "", size).unwrap();
    let mut chunks = Vec::new();
    while let Some(r) = s.next_range() {
        chunks.push(s.push(&bytes[r.start as usize..r.end as usize]).unwrap());
    }
    let (att, hashes) = s.finish(false).unwrap();
    let mut progress = Download::new(&att);
    while let Some(start) = progress.next_hash_page() {
        progress
            .accept_hashes(start, hash_page(&hashes, start))
            .unwrap();
    }
    let record = DownloadRecord {
        message_id: MessageId::parse("<m@held.test>").unwrap(),
        from: Address::new("alice", "held.test").unwrap(),
        attachment: att,
        progress,
        state: DownloadState::Fetching,
        sender_knows: false,
    };
    (chunks, record)
}

/// The node's side: accepts chunk `i` into the record.
fn accept(record: &mut DownloadRecord, chunks: &[SealedChunk], i: u32) -> Box<DownloadRecord> {
    record
        .progress
        .accept_chunk(i, &chunks[i as usize].data)
        .unwrap();
    Box::new(record.clone())
}

#[wasm_bindgen_test]
fn a_segment_is_written_once_whole_with_a_record_of_only_written_chunks() {
    let (chunks, mut record) = sealed(SEGMENT_CHUNKS + 5, 1);
    let id = record.attachment.id;
    let count = record.attachment.chunk_count();
    let mut held = Held::default();
    let mut op = 0;
    // Chunks 0..=17 arrive in order, each followed by the node's record write.
    let mut whole = Vec::new();
    for i in 0..SEGMENT_CHUNKS + 2 {
        op += 1;
        let data = chunks[i as usize].data.clone();
        if let Some(key) = held.put_chunk(1000 + u64::from(i), op, id, i, data, count) {
            whole.push((i, key));
        }
        op += 1;
        held.put_record(op, accept(&mut record, &chunks, i));
    }
    // Whole exactly when its last chunk came, and not before.
    assert_eq!(whole, vec![(SEGMENT_CHUNKS - 1, (id, 0))]);
    assert!(held.holds(&id));
    assert_eq!(held.oldest(), Some(1000));
    let flush = held.take_segment((id, 0));
    let written: Vec<u32> = flush.chunks.iter().map(|(_, i, _)| *i).collect();
    assert_eq!(written, (0..SEGMENT_CHUNKS).collect::<Vec<_>>());
    // Its ops: the 16 chunk writes and every record write so far.
    assert_eq!(flush.ops.len(), 16 + 18);
    // The record written lists chunks 0..16, not 16 and 17 (still in memory).
    assert_eq!(flush.records.len(), 1);
    let r = &flush.records[0].progress;
    assert!((0..SEGMENT_CHUNKS).all(|i| r.has(i)));
    assert!(!r.has(SEGMENT_CHUNKS) && !r.has(SEGMENT_CHUNKS + 1));
    assert_eq!(r.chunks_held(), SEGMENT_CHUNKS);
    // The rest of the file: the short last segment is whole with its 5 chunks.
    assert_eq!(held.chunk_count(), 2);
    assert_eq!(held.oldest(), Some(1000 + u64::from(SEGMENT_CHUNKS)));
    let mut last = None;
    for i in SEGMENT_CHUNKS + 2..count {
        op += 1;
        let data = chunks[i as usize].data.clone();
        last = held.put_chunk(2000, op, id, i, data, count);
        assert_eq!(last.is_some(), i == count - 1);
        op += 1;
        held.put_record(op, accept(&mut record, &chunks, i));
    }
    let flush = held.take_segment(last.unwrap());
    assert_eq!(flush.chunks.len(), 5);
    assert!(flush.records[0].progress.is_complete());
    // Nothing of the file is held any more: its next records are written directly.
    assert!(held.is_empty() && !held.holds(&id));
    assert_eq!(held.oldest(), None);
}

#[wasm_bindgen_test]
fn chunks_out_of_order_again_and_of_two_files_are_all_written_by_take_all() {
    let (a_chunks, mut a) = sealed(SEGMENT_CHUNKS * 2, 2);
    let (b_chunks, mut b) = sealed(3, 3);
    let (ai, bi) = (a.attachment.id, b.attachment.id);
    let mut held = Held::default();
    // Out of order, across both of a's segments; b's chunk 1 only.
    for (op, i) in [(1, 20u32), (2, 3), (3, 17)] {
        let data = a_chunks[i as usize].data.clone();
        assert_eq!(held.put_chunk(5, op, ai, i, data, 32), None);
        held.put_record(op + 100, accept(&mut a, &a_chunks, i));
    }
    assert_eq!(
        held.put_chunk(6, 4, bi, 1, b_chunks[1].data.clone(), 3),
        None
    );
    held.put_record(104, accept(&mut b, &b_chunks, 1));
    // Chunk 3 written again (fetched again after a failed write): held once, both ops
    // answered.
    assert_eq!(
        held.put_chunk(7, 5, ai, 3, a_chunks[3].data.clone(), 32),
        None
    );
    assert_eq!(held.chunk_count(), 4);
    let flush = held.take_all();
    let mut written: Vec<(u8, u32)> = flush.chunks.iter().map(|(a, i, _)| (a.0[0], *i)).collect();
    written.sort();
    assert_eq!(written, vec![(2, 3), (2, 17), (2, 20), (3, 1)]);
    let mut ops = flush.ops.clone();
    ops.sort();
    assert_eq!(ops, vec![1, 2, 3, 4, 5, 101, 102, 103, 104]);
    assert_eq!(flush.records.len(), 2);
    for r in &flush.records {
        let want = if r.attachment.id == ai { 3 } else { 1 };
        assert_eq!(r.progress.chunks_held(), want);
    }
    assert!(held.is_empty() && held.chunk_count() == 0);
    // Records of attachments with nothing held go out in a batch of their own: the latest
    // record of each attachment, every op answered.
    let mut batch = Flush::default();
    batch.push_record(201, DownloadRecord::clone(&a));
    batch.push_record(202, DownloadRecord::clone(&b));
    accept(&mut a, &a_chunks, 0);
    batch.push_record(203, DownloadRecord::clone(&a));
    assert_eq!(batch.ops, vec![201, 202, 203]);
    assert_eq!(batch.records.len(), 2);
    assert_eq!(batch.records[0].progress.chunks_held(), 4);
}

#[wasm_bindgen_test]
fn a_transfer_that_skips_around_cannot_hold_more_than_the_limit_unnoticed() {
    // The pump writes everything once more than HELD_MAX_CHUNKS are held; Held counts
    // what it holds so that it can.
    let (chunks, record) = sealed(SEGMENT_CHUNKS * 8, 4);
    let id = record.attachment.id;
    let mut held = Held::default();
    let mut op = 0;
    // One chunk of each of 8 segments, then a second of each, ...: none ever whole.
    'outer: for k in 0..SEGMENT_CHUNKS - 1 {
        for s in 0..8 {
            let i = s * SEGMENT_CHUNKS + k;
            op += 1;
            let data = chunks[i as usize].data.clone();
            assert_eq!(held.put_chunk(1, op, id, i, data, SEGMENT_CHUNKS * 8), None);
            if held.chunk_count() > HELD_MAX_CHUNKS {
                break 'outer;
            }
        }
    }
    assert_eq!(held.chunk_count(), HELD_MAX_CHUNKS + 1);
    assert_eq!(held.take_all().chunks.len(), HELD_MAX_CHUNKS + 1);
}
