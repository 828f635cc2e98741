//! Attachment transfers between nodes, in the simulated world: a recipient pulls each
//! attachment's encrypted chunks from the sender's node, verifying every chunk, resuming
//! after interruptions, refusing bad data, and never showing a wrong file as complete.

mod sim;

use peermail_core::attach::{AttachmentId, CHUNK_BYTES};
use peermail_core::node::{Command, Event};
use peermail_core::store::DownloadState;
use peermail_core::wire::peer::PeerFrame;
use sim::{addr, file, world_with, CacheMode, World};

fn state(w: &World, who: &peermail_core::Address, id: AttachmentId) -> DownloadState {
    w.download(who, id).expect("a download record").state
}

#[test]
fn attachment_is_fetched_from_the_online_sender_and_verified() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let bytes = file(3 * CHUNK_BYTES + 1_234, 1);
    let empty = w.attach_file(&alice, "empty.txt", &[], 2);
    let att = w.attach_file(&alice, "photo.jpg", &bytes, 1);
    let id = w.send_with(&alice, &[&bob], "holiday", vec![att.clone(), empty.clone()]);
    assert!(w.inbox_has(&bob, &id));
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    assert!(matches!(
        state(&w, &bob, empty.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &empty).unwrap(), Vec::<u8>::new());
    assert_eq!(w.chunks_served, 4, "every chunk sent once");
    // The sender does not fetch its own attachments.
    assert!(w.download(&alice, att.id).is_none());
    let view = w.users[&bob]
        .node
        .as_ref()
        .unwrap()
        .download(&att.id)
        .unwrap();
    assert_eq!(view.bytes_done, bytes.len() as u64);
}

#[test]
fn attachment_waits_until_the_sender_is_online() {
    let mut w = world_with(&["alice", "bob"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.offline(&bob);
    let bytes = file(2 * CHUNK_BYTES, 3);
    // Marked large: it stays on Alice's node (the relay keeps only inline files).
    let att = w.attach_file_with(&alice, "report.pdf", &bytes, 3, false);
    let id = w.send_with(&alice, &[&bob], "report", vec![att.clone()]);
    // The mail went into the relay cache; Alice leaves.
    w.offline(&alice);
    w.online(&bob);
    assert!(w.inbox_has(&bob, &id));
    assert_eq!(state(&w, &bob, att.id), DownloadState::Fetching);
    let view = w.users[&bob]
        .node
        .as_ref()
        .unwrap()
        .download(&att.id)
        .unwrap();
    assert!(!view.source_connected && view.bytes_done == 0);
    w.advance(60_000);
    assert_eq!(state(&w, &bob, att.id), DownloadState::Fetching);
    // Alice comes back: Bob's node connects to hers and pulls the file.
    w.online(&alice);
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

#[test]
fn interrupted_transfer_resumes_from_the_last_stored_chunk() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let count = 40usize;
    let bytes = file(count * CHUNK_BYTES - 5, 4);
    let att = w.attach_file(&alice, "video.mp4", &bytes, 4);
    // The connection breaks after 21 chunks got through: the rest is lost on the way.
    let mut passed = 0;
    w.drop_rule = Some(Box::new(move |_, _, f| {
        if matches!(f, PeerFrame::Chunk { .. }) {
            passed += 1;
            passed > 21
        } else {
            false
        }
    }));
    w.send_with(&alice, &[&bob], "film", vec![att.clone()]);
    let held = w.download(&bob, att.id).unwrap().progress.chunks_held();
    assert_eq!(held, 21, "every chunk that arrived is stored and recorded");
    // Bob closes his browser; later he opens it again, the connection works again.
    w.offline(&bob);
    w.drop_rule = None;
    let served_before = w.chunks_served;
    w.online(&bob);
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(
        w.chunks_served - served_before,
        (count - 21) as u32,
        "only the missing chunks are sent again"
    );
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

#[test]
fn lost_chunks_are_asked_for_again_after_a_timeout() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let bytes = file(5 * CHUNK_BYTES, 5);
    let att = w.attach_file(&alice, "a.bin", &bytes, 5);
    // Chunk 3 is lost the first time only.
    let mut lost = false;
    w.drop_rule = Some(Box::new(move |_, _, f| {
        if matches!(f, PeerFrame::Chunk { index: 3, .. }) && !lost {
            lost = true;
            return true;
        }
        false
    }));
    w.send_with(&alice, &[&bob], "a", vec![att.clone()]);
    assert_eq!(state(&w, &bob, att.id), DownloadState::Fetching);
    w.advance(w.config.ack_timeout + 1);
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

#[test]
fn corrupted_chunks_and_chunk_lists_are_refused_and_fetched_again() {
    corrupted_chunks_refused(false);
}

/// The same with Bob's driver hashing the chunks (`Input::Chunk`), as the web client does.
#[test]
fn chunks_hashed_by_the_driver_are_checked_the_same_way() {
    corrupted_chunks_refused(true);
}

fn corrupted_chunks_refused(driver_hashes_chunks: bool) {
    let mut w = world_with(&["alice", "bob"]);
    w.driver_hashes_chunks = driver_hashes_chunks;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let bytes = file(4 * CHUNK_BYTES + 10, 6);
    let att = w.attach_file(&alice, "b.bin", &bytes, 6);
    // The first chunk list and the first copy of chunk 2 are altered on the way.
    let (mut list_done, mut chunk_done) = (false, false);
    w.mangle_rule = Some(Box::new(move |_, _, f| match f {
        PeerFrame::ChunkList { hashes, .. } if !list_done => {
            list_done = true;
            hashes[1][0] ^= 1;
            true
        }
        PeerFrame::Chunk { index: 2, data, .. } if !chunk_done => {
            chunk_done = true;
            data[7] ^= 0x40;
            true
        }
        _ => false,
    }));
    w.send_with(&alice, &[&bob], "b", vec![att.clone()]);
    w.advance(w.config.ack_timeout + 1);
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    let errors: Vec<&Event> = w.users[&bob]
        .events
        .iter()
        .filter(|e| matches!(e, Event::PeerProtocolError { .. }))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let text = format!("{errors:?}");
    assert!(
        text.contains("chunk list") && text.contains("refused chunk 2"),
        "{text}"
    );
}

#[test]
fn a_file_that_does_not_match_the_mail_is_never_complete() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let bytes = file(2 * CHUNK_BYTES + 1, 7);
    let mut att = w.attach_file(&alice, "c.bin", &bytes, 7);
    // The sender's mail claims another file than its chunks make.
    att.file_hash[0] ^= 1;
    w.send_with(&alice, &[&bob], "c", vec![att.clone()]);
    match state(&w, &bob, att.id) {
        DownloadState::Failed { reason, .. } => {
            assert!(reason.contains("does not match"), "{reason}")
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(w.received_file(&bob, &att).is_err());
}

#[test]
fn only_the_mails_recipients_may_fetch_an_attachment() {
    let mut w = world_with(&["alice", "bob", "mallory"]);
    let (alice, bob, mallory) = (addr("alice"), addr("bob"), addr("mallory"));
    w.online(&alice);
    w.online(&bob);
    w.online(&mallory);
    let att = w.attach_file(&alice, "secret.bin", &file(CHUNK_BYTES, 8), 8);
    let id = w.send_with(&alice, &[&bob], "for bob", vec![att.clone()]);
    let served = w.chunks_served;
    w.connect(&mallory, &alice);
    w.inject(
        &mallory,
        &alice,
        PeerFrame::GetChunks {
            message_id: id.clone(),
            attachment: att.id,
            ranges: vec![(0, 1)],
        },
    );
    w.inject(
        &mallory,
        &alice,
        PeerFrame::GetChunkList {
            message_id: id,
            attachment: att.id,
            start: 0,
        },
    );
    assert_eq!(w.chunks_served, served, "nothing served to a non-recipient");
    let refusals = w
        .frame_log
        .iter()
        .filter(|(from, to, f)| {
            from == &alice && to == &mallory && matches!(f, PeerFrame::TransferRefused { .. })
        })
        .count();
    assert_eq!(refusals, 2);
    assert!(!w
        .frame_log
        .iter()
        .any(|(_, to, f)| to == &mallory && matches!(f, PeerFrame::ChunkList { .. })));
}

#[test]
fn a_cancelled_download_stops_and_can_be_started_again() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let bytes = file(6 * CHUNK_BYTES, 9);
    let att = w.attach_file(&alice, "d.bin", &bytes, 9);
    // Chunks stall after two; Bob cancels.
    let mut passed = 0;
    w.drop_rule = Some(Box::new(move |_, _, f| {
        if matches!(f, PeerFrame::Chunk { .. }) {
            passed += 1;
            passed > 2
        } else {
            false
        }
    }));
    w.send_with(&alice, &[&bob], "d", vec![att.clone()]);
    w.command(&bob, Command::CancelDownload(att.id));
    assert_eq!(state(&w, &bob, att.id), DownloadState::Cancelled);
    assert!(w
        .frame_log
        .iter()
        .any(|(from, _, f)| from == &bob && matches!(f, PeerFrame::CancelTransfer { .. })));
    w.drop_rule = None;
    let served = w.chunks_served;
    w.advance(3 * w.config.ack_timeout);
    assert_eq!(w.chunks_served, served, "nothing more is asked for");
    w.command(&bob, Command::RetryDownload(att.id));
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.chunks_served - served, 4, "the two held chunks are kept");
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

#[test]
fn the_sender_sees_who_still_needs_each_file() {
    let mut w = world_with(&["alice", "bob", "carol"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob, carol) = (addr("alice"), addr("bob"), addr("carol"));
    w.online(&alice);
    w.online(&bob);
    w.online(&carol);
    w.offline(&carol);
    let bytes = file(2 * CHUNK_BYTES + 3, 10);
    let att = w.attach_file(&alice, "plan.pdf", &bytes, 10);
    let id = w.send_with(&alice, &[&bob, &carol], "plan", vec![att.clone()]);
    // Bob fetched it and said so; Carol has not.
    let o = w.outgoing(&alice, &id);
    assert_eq!(o.still_needed_by(att.id), vec![&carol]);
    assert!(w.download(&bob, att.id).unwrap().sender_knows);
    // Carol comes back: she gets the mail from the relay cache and the file from Alice.
    w.online(&carol);
    assert!(matches!(
        state(&w, &carol, att.id),
        DownloadState::Complete { .. }
    ));
    let o = w.outgoing(&alice, &id);
    assert!(o.still_needed_by(att.id).is_empty(), "{:?}", o.fetched);
    // A node that is not a recipient cannot claim to have fetched it.
    let mallory = w.register("mallory");
    w.online(&mallory);
    w.connect(&mallory, &alice);
    w.inject(
        &mallory,
        &alice,
        PeerFrame::FileReceived {
            message_id: id.clone(),
            attachment: att.id,
        },
    );
    let o = w.outgoing(&alice, &id);
    assert!(!o.fetched.iter().any(|(_, a)| a == &mallory));
}

#[test]
fn a_chunk_that_cannot_be_stored_fails_the_download_until_retried() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let bytes = file(3 * CHUNK_BYTES, 11);
    let att = w.attach_file(&alice, "big.iso", &bytes, 11);
    w.fail_chunk_writes = true;
    w.send_with(&alice, &[&bob], "iso", vec![att.clone()]);
    match state(&w, &bob, att.id) {
        DownloadState::Failed { reason, .. } => {
            assert!(reason.contains("could not store it"), "{reason}")
        }
        other => panic!("expected failed, got {other:?}"),
    }
    let d = w.download(&bob, att.id).unwrap();
    assert_eq!(d.progress.chunks_held(), 0, "nothing counts as held");
    let served = w.chunks_served;
    w.advance(3 * w.config.ack_timeout);
    assert_eq!(
        w.chunks_served, served,
        "no retry loop while storage is full"
    );
    w.fail_chunk_writes = false;
    w.command(&bob, Command::RetryDownload(att.id));
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

#[test]
fn a_small_attachment_reaches_an_offline_recipient_through_the_relay() {
    let mut w = world_with(&["alice", "bob"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.offline(&bob);
    let bytes = file(5 * CHUNK_BYTES + 77, 12);
    let att = w.attach_file(&alice, "slides.pdf", &bytes, 12);
    assert!(att.inline);
    let id = w.send_with(&alice, &[&bob], "slides", vec![att.clone()]);
    // The relay keeps the sealed mail and the whole (encrypted) file for Bob.
    let kept = &w.files[&(bob.clone(), att.id)];
    assert_eq!(kept.chunks.len(), 6);
    assert!(w
        .outgoing(&alice, &id)
        .relay_has
        .contains(&(att.id, bob.clone())));
    // Alice leaves before Bob comes back: he gets mail and file from the relay.
    w.offline(&alice);
    w.online(&bob);
    assert!(w.inbox_has(&bob, &id));
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    assert_eq!(w.relay_chunks_served, 6);
    assert_eq!(w.chunks_served, 0, "nothing came from Alice's node");
    assert!(w.files.is_empty(), "Bob released the relay's copy");
    // When Alice is back, Bob's node tells hers he has it.
    w.online(&alice);
    assert!(w.outgoing(&alice, &id).still_needed_by(att.id).is_empty());
}

/// The order a received file is looked for in: the relay's copy before the sender's node,
/// even when the sender is online too.
#[test]
fn the_relays_copy_is_used_before_the_online_senders() {
    let mut w = world_with(&["alice", "bob"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.offline(&bob);
    let bytes = file(3 * CHUNK_BYTES, 21);
    let att = w.attach_file(&alice, "agenda.pdf", &bytes, 21);
    w.send_with(&alice, &[&bob], "agenda", vec![att.clone()]);
    assert!(w.files.contains_key(&(bob.clone(), att.id)));
    // Both are online when Bob comes back.
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    assert_eq!(w.relay_chunks_served, 3, "from the relay");
    assert_eq!(w.chunks_served, 0, "not from Alice's node");
}

#[test]
fn a_relay_copy_that_does_not_match_the_mail_is_not_used() {
    let mut w = world_with(&["alice", "bob"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.offline(&bob);
    let bytes = file(3 * CHUNK_BYTES, 13);
    let att = w.attach_file(&alice, "contract.pdf", &bytes, 13);
    w.send_with(&alice, &[&bob], "contract", vec![att.clone()]);
    w.offline(&alice);
    // The relay's copy is altered: its chunk list no longer matches the mail's root.
    w.files.get_mut(&(bob.clone(), att.id)).unwrap().hashes[1][0] ^= 1;
    w.online(&bob);
    assert_eq!(state(&w, &bob, att.id), DownloadState::Fetching);
    assert_eq!(w.relay_chunks_served, 0);
    assert!(w.users[&bob].events.iter().any(
        |e| matches!(e, Event::ServerError { message, .. } if message.contains("does not match"))
    ));
    // From Alice's node, once she is back.
    w.online(&alice);
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

#[test]
fn a_large_attachment_is_not_left_at_the_relay() {
    let mut w = world_with(&["alice", "bob"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.offline(&bob);
    let att = w.attach_file_with(&alice, "film.mkv", &file(2 * CHUNK_BYTES, 14), 14, false);
    w.send_with(&alice, &[&bob], "film", vec![att.clone()]);
    assert!(w.files.is_empty());
}

#[test]
fn the_sender_can_stop_sending_a_file_to_a_recipient() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let att = w.attach_file_with(&alice, "huge.iso", &file(6 * CHUNK_BYTES, 15), 15, false);
    // The transfer stalls after two chunks; Alice stops it.
    let mut passed = 0;
    w.drop_rule = Some(Box::new(move |_, _, f| {
        if matches!(f, PeerFrame::Chunk { .. }) {
            passed += 1;
            passed > 2
        } else {
            false
        }
    }));
    w.send_with(&alice, &[&bob], "iso", vec![att.clone()]);
    w.command(
        &alice,
        Command::StopSending {
            attachment: att.id,
            to: bob.clone(),
        },
    );
    w.drop_rule = None;
    match state(&w, &bob, att.id) {
        DownloadState::Failed { reason, .. } => {
            assert!(reason.contains("stopped sending"), "{reason}")
        }
        other => panic!("expected failed, got {other:?}"),
    }
    // Bob trying again is refused while Alice's page keeps the stop.
    let served = w.chunks_served;
    w.command(&bob, Command::RetryDownload(att.id));
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Failed { .. }
    ));
    assert_eq!(w.chunks_served, served);
    // After Alice reopens her page, Bob's retry goes through.
    w.offline(&alice);
    w.online(&alice);
    w.command(&bob, Command::RetryDownload(att.id));
    // (Bob's node reconnects after its backoff from the dropped channel.)
    w.advance(w.config.reconnect_backoff + 1);
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
}

#[test]
fn a_co_recipient_passes_a_file_on_when_the_sender_is_away() {
    let mut w = world_with(&["alice", "bob", "carol"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob, carol) = (addr("alice"), addr("bob"), addr("carol"));
    w.online(&alice);
    w.online(&bob);
    w.online(&carol);
    w.offline(&carol);
    // A large file (not left at the relay) for Bob (online) and Carol (offline).
    let bytes = file(4 * CHUNK_BYTES + 9, 16);
    let att = w.attach_file_with(&alice, "album.zip", &bytes, 16, false);
    let id = w.send_with(&alice, &[&bob, &carol], "album", vec![att.clone()]);
    assert!(matches!(
        state(&w, &bob, att.id),
        DownloadState::Complete { .. }
    ));
    // Alice leaves; Carol comes back: her mail is at the relay, the file on Bob's node.
    w.offline(&alice);
    let served_by_alice = w.chunks_served;
    w.online(&carol);
    assert!(w.inbox_has(&carol, &id));
    assert!(matches!(
        state(&w, &carol, att.id),
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&carol, &att).unwrap(), bytes);
    assert_eq!(
        w.chunks_served - served_by_alice,
        5,
        "Bob's node sent the five chunks"
    );
    // Someone who is not a recipient gets nothing from Bob.
    let mallory = w.register("mallory");
    w.online(&mallory);
    w.connect(&mallory, &bob);
    let before = w.chunks_served;
    w.inject(
        &mallory,
        &bob,
        PeerFrame::GetChunks {
            message_id: id,
            attachment: att.id,
            ranges: vec![(0, 2)],
        },
    );
    assert_eq!(w.chunks_served, before);
}

/// A mail called back (Cancel sending) takes the file the relay keeps for its recipient
/// with it; the file is not left there again, and the recipient never gets either.
#[test]
fn a_cancelled_mail_takes_its_file_off_the_relay() {
    use peermail_core::node::Command;
    let mut w = world_with(&["alice", "bob"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.offline(&bob);
    let bytes = file(4 * CHUNK_BYTES + 5, 31);
    let att = w.attach_file(&alice, "draft.pdf", &bytes, 31);
    assert!(att.inline);
    let id = w.send_with(&alice, &[&bob], "too soon", vec![att.clone()]);
    assert!(w.files.contains_key(&(bob.clone(), att.id)));
    w.command(&alice, Command::CancelSending(id.clone()));
    assert!(w.files.is_empty(), "the relay's copy of the file is gone");
    assert!(w.cache.is_empty());
    // Alice's page comes back: nothing is left at the relay again.
    w.offline(&alice);
    w.online(&alice);
    w.advance(600_000);
    assert!(w.files.is_empty());
    w.online(&bob);
    assert!(!w.inbox_has(&bob, &id));
    assert_eq!(w.download(&bob, att.id), None);
}
