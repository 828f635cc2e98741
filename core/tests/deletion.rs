//! Deleting mail, in the simulated world: a received mail goes with its files and does not
//! come back when delivered again; a sent mail is deleted only once nobody waits for it,
//! and recipients still fetching its files are told why they stop.

mod sim;

use peermail_core::attach::CHUNK_BYTES;
use peermail_core::node::{Command, Event, RECIPIENT_DELETED, SENDER_DELETED};
use peermail_core::store::{DownloadState, StoreWrite, UntoldFiles};
use peermail_core::wire::peer::PeerFrame;
use peermail_core::{Address, MessageId};
use sim::{addr, file, world_with, CacheMode, World};

fn events(w: &World, who: &Address) -> Vec<Event> {
    w.users[who].events.clone()
}

fn inbox_ids(w: &World, who: &Address) -> Vec<MessageId> {
    w.users[who]
        .node
        .as_ref()
        .expect("online")
        .inbox()
        .iter()
        .map(|r| r.mail.message_id.clone())
        .collect()
}

#[test]
fn a_deleted_mail_goes_with_its_files_and_is_not_stored_again() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let bytes = file(2 * CHUNK_BYTES + 100, 1);
    let att = w.attach_file(&alice, "photo.jpg", &bytes, 1);
    let id = w.send_with(&alice, &[&bob], "holiday", vec![att.clone()]);
    let keep = w.send(&alice, &[&bob], &[], "keep me");
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    let mail = w.users[&bob]
        .store
        .snapshot()
        .inbox
        .into_iter()
        .find(|r| r.mail.message_id == id)
        .unwrap()
        .mail;

    w.command(&bob, Command::DeleteReceived(id.clone()));
    assert!(events(&w, &bob).contains(&Event::Deleted(id.clone())));
    assert_eq!(inbox_ids(&w, &bob), vec![keep.clone()]);
    let snap = w.users[&bob].store.snapshot();
    assert_eq!(snap.inbox.len(), 1);
    assert!(snap.downloads.is_empty(), "the download record is gone");
    assert_eq!(w.users[&bob].store.chunk_count(att.id), 0, "the chunks too");
    assert_eq!(w.users[&bob].store.chunk_list(att.id), None);
    assert!(snap
        .deleted
        .iter()
        .any(|d| d.message_id == id && d.received && !d.sent));
    // The sender's copy is untouched.
    assert_eq!(w.outgoing(&alice, &id).mail.message_id, id);

    // Delivered again directly (the sender retrying after a lost acknowledgement): Bob
    // acknowledges it and does not store it.
    w.frame_log.clear();
    w.inject(&alice, &bob, PeerFrame::Mail(mail.clone()));
    assert!(w.frame_log.iter().any(|(f, t, fr)| f == &bob
        && t == &alice
        && *fr
            == PeerFrame::Ack {
                message_id: id.clone()
            }));
    assert_eq!(inbox_ids(&w, &bob), vec![keep.clone()]);
    assert_eq!(w.received_count(&bob, &id), 1);

    // Still deleted after the page is opened again.
    w.offline(&bob);
    w.online(&bob);
    assert_eq!(inbox_ids(&w, &bob), vec![keep]);
    assert!(!w.inbox_has(&bob, &id));
    assert!(w.download(&bob, att.id).is_none());
}

#[test]
fn a_deleted_mail_listed_again_by_the_relay_is_released_not_stored() {
    let mut w = world_with(&["alice", "bob"]);
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.offline(&bob);
    let id = w.send(&alice, &[&bob], &[], "while away");
    let cached = w.cache[&(bob.clone(), id.clone())].clone();
    w.offline(&alice);
    w.online(&bob);
    assert!(w.inbox_has(&bob, &id));
    assert!(
        !w.cache.contains_key(&(bob.clone(), id.clone())),
        "released"
    );
    w.command(&bob, Command::DeleteReceived(id.clone()));
    assert!(!w.inbox_has(&bob, &id));
    // The relay lists it again (as if the release had been lost).
    w.offline(&bob);
    w.cache.insert((bob.clone(), id.clone()), cached);
    w.online(&bob);
    assert!(!w.inbox_has(&bob, &id), "not stored again");
    assert_eq!(w.received_count(&bob, &id), 1);
    assert!(
        !w.cache.contains_key(&(bob.clone(), id.clone())),
        "released again"
    );
}

#[test]
fn deleting_a_mail_whose_file_is_still_coming_stops_the_transfer() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    // Chunks from Alice are lost on the way: the download stays unfinished.
    w.drop_rule = Some(Box::new(|_, _, f| matches!(f, PeerFrame::Chunk { .. })));
    let att = w.attach_file(&alice, "big.bin", &file(3 * CHUNK_BYTES, 2), 2);
    let id = w.send_with(&alice, &[&bob], "big", vec![att.clone()]);
    assert_eq!(
        w.download(&bob, att.id).unwrap().state,
        DownloadState::Fetching
    );
    let stale = w.download(&bob, att.id).unwrap();
    w.frame_log.clear();
    w.command(&bob, Command::DeleteReceived(id.clone()));
    assert!(w.frame_log.iter().any(|(f, t, fr)| f == &bob
        && t == &alice
        && *fr == PeerFrame::CancelTransfer { attachment: att.id }));
    assert!(w.download(&bob, att.id).is_none());
    // Nothing asks for it any more, and nothing brings its record back.
    w.drop_rule = None;
    w.frame_log.clear();
    w.advance(60_000);
    assert!(!w
        .frame_log
        .iter()
        .any(|(f, _, fr)| f == &bob && matches!(fr, PeerFrame::GetChunks { .. })));
    // A write of the download that raced with the deletion (the web client writes chunks
    // with their download record) is cleaned up when the page opens again.
    let record = w.users[&bob]
        .store
        .snapshot()
        .deleted
        .iter()
        .find(|d| d.message_id == id)
        .cloned()
        .unwrap();
    assert!(record.received);
    w.offline(&bob);
    w.users[&bob]
        .store
        .apply_now(StoreWrite::PutDownload(Box::new(stale)));
    w.users[&bob].store.apply_now(StoreWrite::PutChunk {
        attachment: att.id,
        index: 0,
        data: vec![1; 10],
    });
    w.online(&bob);
    assert!(w.users[&bob]
        .node
        .as_ref()
        .unwrap()
        .download(&att.id)
        .is_none());
    assert!(w.download(&bob, att.id).is_none());
    assert_eq!(w.users[&bob].store.chunk_count(att.id), 0);
}

#[test]
fn a_sent_mail_is_deleted_once_nobody_waits_for_it() {
    let mut w = world_with(&["alice", "bob", "carol"]);
    let (alice, bob, carol) = (addr("alice"), addr("bob"), addr("carol"));
    w.online(&alice);
    w.online(&bob);
    // Carol is offline and the relay keeps nothing: the mail waits in Alice's Outbox.
    let att = w.attach_file_with(&alice, "report.pdf", &file(2 * CHUNK_BYTES, 3), 3, false);
    let id = w.send_with(&alice, &[&bob, &carol], "report", vec![att.clone()]);
    assert!(w.outgoing(&alice, &id).is_pending());
    w.command(&alice, Command::DeleteSent(id.clone()));
    let refused = events(&w, &alice).into_iter().find_map(|e| match e {
        Event::DeleteRefused { message_id, reason } if message_id == id => Some(reason),
        _ => None,
    });
    assert!(refused.unwrap().contains("still on its way"));
    assert!(w.outgoing(&alice, &id).is_pending(), "kept");

    // Carol gets the mail, but her page closes before she fetches the file.
    w.drop_rule = Some(Box::new(|_, _, f| matches!(f, PeerFrame::Chunk { .. })));
    w.online(&carol);
    assert!(w.inbox_has(&carol, &id));
    assert!(!w.outgoing(&alice, &id).is_pending());
    w.offline(&carol);
    w.drop_rule = None;

    // Alice deletes it from Sent: gone with its file, Bob's copy untouched.
    w.command(&alice, Command::DeleteSent(id.clone()));
    assert!(events(&w, &alice).contains(&Event::Deleted(id.clone())));
    let snap = w.users[&alice].store.snapshot();
    assert!(snap.outgoing.iter().all(|o| o.mail.message_id != id));
    assert!(snap.deleted.iter().any(|d| d.message_id == id && d.sent));
    assert_eq!(w.users[&alice].store.chunk_count(att.id), 0);
    assert!(w.inbox_has(&bob, &id));

    // Carol comes back: she is told why the file does not come.
    w.online(&carol);
    match w.download(&carol, att.id).unwrap().state {
        DownloadState::Failed { reason, .. } => {
            assert!(reason.contains(SENDER_DELETED), "{reason}")
        }
        other => panic!("expected a failed download, got {other:?}"),
    }
}

#[test]
fn a_mail_to_oneself_deleted_from_one_folder_keeps_its_file_for_the_other() {
    let mut w = world_with(&["alice"]);
    let alice = addr("alice");
    w.online(&alice);
    let bytes = file(CHUNK_BYTES + 10, 4);
    let att = w.attach_file(&alice, "note.txt", &bytes, 4);
    let id = w.send_with(&alice, &[&alice], "to me", vec![att.clone()]);
    assert!(w.inbox_has(&alice, &id));
    assert!(!w.outgoing(&alice, &id).is_pending());
    w.command(&alice, Command::DeleteReceived(id.clone()));
    assert!(!w.inbox_has(&alice, &id));
    assert!(
        w.users[&alice].store.chunk_count(att.id) > 0,
        "Sent still has it"
    );
    w.command(&alice, Command::DeleteSent(id.clone()));
    assert_eq!(w.users[&alice].store.chunk_count(att.id), 0);
    assert!(w.users[&alice]
        .store
        .snapshot()
        .deleted
        .iter()
        .any(|d| d.message_id == id && d.received && d.sent));
}

/// Bob deletes a mail whose file he has not fetched while Alice, its sender, is away; his
/// page is reopened meanwhile. When Alice is back, Bob's node tells hers, once: she no
/// longer counts Bob among those who still need the file.
#[test]
fn a_recipient_that_deletes_a_mail_before_fetching_its_file_tells_the_sender() {
    let mut w = world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    w.drop_rule = Some(Box::new(|_, _, f| matches!(f, PeerFrame::Chunk { .. })));
    let att = w.attach_file_with(&alice, "big.bin", &file(3 * CHUNK_BYTES, 3), 3, false);
    let id = w.send_with(&alice, &[&bob], "big", vec![att.clone()]);
    assert_eq!(w.outgoing(&alice, &id).still_needed_by(att.id), vec![&bob]);
    w.offline(&alice);
    w.drop_rule = None;

    w.command(&bob, Command::DeleteReceived(id.clone()));
    let untold = |w: &World| {
        w.users[&bob]
            .store
            .snapshot()
            .deleted
            .into_iter()
            .find(|d| d.message_id == id)
            .expect("deletion record")
            .untold
    };
    assert_eq!(
        untold(&w),
        Some(Box::new(UntoldFiles {
            sender: alice.clone(),
            fetched: vec![],
            not_fetched: vec![att.id],
        }))
    );
    w.offline(&bob);
    w.online(&bob);

    w.frame_log.clear();
    w.online(&alice);
    let told = |w: &World| {
        w.frame_log
            .iter()
            .filter(|(f, t, fr)| {
                f == &bob && t == &alice && matches!(fr, PeerFrame::MailDeleted { .. })
            })
            .count()
    };
    assert_eq!(told(&w), 1);
    let o = w.outgoing(&alice, &id);
    assert!(o.declined_by(att.id, &bob));
    assert!(o.still_needed_by(att.id).is_empty(), "nobody needs it now");
    assert_eq!(untold(&w), None, "the acknowledgement is recorded");

    // Told once: later connections say nothing more.
    w.frame_log.clear();
    w.offline(&bob);
    w.online(&bob);
    w.advance(60_000);
    assert_eq!(told(&w), 0);
}

/// Bob fetched the file, but its `FileReceived` was lost; then he deletes the mail (Alice
/// online): Alice hears he had it. Carol deletes hers unfetched: Alice stops offering the
/// file to Carol's storage node, and refuses it the file if it asks.
#[test]
fn a_sender_hears_which_files_a_deleting_recipient_had_and_stops_offering_the_rest() {
    let mut w = world_with(&["alice", "bob", "carol"]);
    let (alice, bob, carol) = (addr("alice"), addr("bob"), addr("carol"));
    let node = w.add_storage(&carol, 1 << 30);
    w.online(&alice);
    w.online(&bob);
    w.online(&carol);
    let bytes = file(3 * CHUNK_BYTES, 4);
    let att = w.attach_file_with(&alice, "big.bin", &bytes, 4, false);
    // Bob's report of the whole file is lost, and Carol's chunks.
    w.drop_rule = Some(Box::new(|_, to, f| {
        matches!(f, PeerFrame::FileReceived { .. })
            || (matches!(f, PeerFrame::Chunk { .. }) && to.local() == "carol")
    }));
    let id = w.send_with(&alice, &[&bob, &carol], "big", vec![att.clone()]);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    let o = w.outgoing(&alice, &id);
    assert_eq!(o.still_needed_by(att.id), vec![&bob, &carol]);
    w.drop_rule = None;

    w.command(&bob, Command::DeleteReceived(id.clone()));
    w.command(&carol, Command::DeleteReceived(id.clone()));
    let o = w.outgoing(&alice, &id);
    assert!(o.fetched.contains(&(att.id, bob.clone())), "Bob had it");
    assert!(!o.declined_by(att.id, &bob));
    assert!(o.declined_by(att.id, &carol));
    assert!(o.still_needed_by(att.id).is_empty());

    // Carol's storage node comes online: it is not asked to keep the file, and it is
    // refused the file if it asks anyway.
    w.frame_log.clear();
    w.storage_online(&node);
    w.advance(60_000);
    assert!(!w
        .frame_log
        .iter()
        .any(|(_, t, fr)| t == &node && matches!(fr, PeerFrame::StoreFile { .. })));
    assert!(!w.storage_has(&node, att.id));
    w.connect(&node, &alice);
    w.frame_log.clear();
    w.inject(
        &node,
        &alice,
        PeerFrame::GetChunkList {
            message_id: id.clone(),
            attachment: att.id,
            start: 0,
        },
    );
    assert!(w.frame_log.iter().any(|(f, t, fr)| f == &alice
        && t == &node
        && *fr
            == PeerFrame::TransferRefused {
                attachment: att.id,
                reason: RECIPIENT_DELETED.into(),
            }));
}
