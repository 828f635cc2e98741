//! Storage nodes in the simulated world: a sender hands a recipient's storage node the
//! attachments to keep, the node pulls and verifies them, the recipient reads them from its
//! node while the sender is away, an unavailable node is waited for and retried by policy,
//! and a node refuses what is not its owner's or does not fit.

mod sim;

use peermail_core::attach::{AttachmentRef, CHUNK_BYTES};
use peermail_core::mail::MessageId;
use peermail_core::node::{Command, Event, FetchingFrom};
use peermail_core::storage::StorageEvent;
use peermail_core::store::DownloadState;
use peermail_core::wire::peer::PeerFrame;
use sim::{addr, CacheMode, World};

fn file(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] ^ salt)
        .collect()
}

fn world(names: &[&str]) -> World {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    for n in names {
        let a = w.register(n);
        // Signed in once: their encryption keys are in the relay's directory.
        w.online(&a);
        w.offline(&a);
    }
    w
}

const GIB: u64 = 1 << 30;

/// Alice (online) mails Bob (offline, his storage node down) a small file of `len` bytes:
/// it is inline, and the relay keeps it for Bob. Returns the file, its reference and the
/// mail's id.
fn inline_file_kept_by_relay(
    w: &mut World,
    name: &str,
    len: usize,
    salt: u8,
) -> (Vec<u8>, AttachmentRef, MessageId) {
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    let bytes = file(len, salt);
    let att = w.attach_file(&alice, name, &bytes, salt);
    assert!(att.inline);
    let id = w.send_with(&alice, &[&bob], name, vec![att.clone()]);
    assert!(
        w.files.contains_key(&(bob.clone(), att.id)),
        "the relay keeps it"
    );
    (bytes, att, id)
}

/// Bob is offline, his storage node is up: Alice's node tells it to keep the (large) file,
/// the node pulls it from her; Alice sees it kept on Bob's node and leaves; Bob comes online
/// and reads the file from his node, byte for byte, without Alice.
#[test]
fn the_recipients_node_keeps_the_file_and_the_recipient_reads_it_from_there() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(70 * CHUNK_BYTES + 17, 1);
    let att = w.attach_file_with(&alice, "film.mp4", &bytes, 1, false);
    let id = w.send_with(&alice, &[&bob], "the film", vec![att.clone()]);

    assert!(
        w.storage_has(&node, att.id),
        "the node pulled the whole file"
    );
    let o = w.outgoing(&alice, &id);
    assert!(o.still_needed_by(att.id).is_empty(), "kept for Bob");
    assert_eq!(o.kept_on_nodes(att.id), vec![&node]);
    assert!(w.storages[&node]
        .events
        .contains(&StorageEvent::FileComplete(att.id)));
    // The node told Alice and she acknowledged: it stops telling her.
    assert!(w.storages[&node].records[&att.id].sender_knows);
    let served = w.chunks_served;
    assert_eq!(served, 71, "every chunk sent to the node once");

    w.offline(&alice);
    w.online(&bob);
    assert!(w.inbox_has(&bob, &id), "the mail came from the relay cache");
    assert!(matches!(
        w.download(&bob, att.id).unwrap().state,
        DownloadState::Complete { .. }
    ));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    assert_eq!(w.storages[&node].chunks_served, 71, "from his node");
    assert_eq!(w.chunks_served, served, "nothing more from Alice");
}

/// While Bob's browser fetches from his node, the page says so.
#[test]
fn the_recipient_says_it_fetches_from_its_storage_node() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(200 * CHUNK_BYTES, 2);
    let att = w.attach_file_with(&alice, "big.iso", &bytes, 2, false);
    w.send_with(&alice, &[&bob], "iso", vec![att.clone()]);
    assert!(w.storage_has(&node, att.id));
    w.offline(&alice);
    // Chunks from the node to Bob are lost on the way after the first window.
    let mut passed = 0;
    w.drop_rule = Some(Box::new(move |from, _, f| {
        if from.is_storage_node() && matches!(f, PeerFrame::Chunk { .. }) {
            passed += 1;
            passed > 64
        } else {
            false
        }
    }));
    w.online(&bob);
    let view = w.users[&bob]
        .node
        .as_ref()
        .unwrap()
        .download(&att.id)
        .unwrap();
    assert_eq!(
        view.fetching_from,
        Some(FetchingFrom::StorageNode(node.clone()))
    );
    assert!(view.source_connected);
    // The lost chunks are asked for again after the timeout.
    w.drop_rule = None;
    w.advance(30_000);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

/// Bob's node is down when Alice sends; she keeps the large file. When the node comes up
/// (Alice still online) it is handed the file at once; after Alice leaves, Bob still gets
/// it from his node.
#[test]
fn a_node_that_was_down_gets_the_file_when_it_comes_back() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    let bytes = file(10 * CHUNK_BYTES, 3);
    let att = w.attach_file_with(&alice, "scan.tiff", &bytes, 3, false);
    let id = w.send_with(&alice, &[&bob], "scan", vec![att.clone()]);
    assert_eq!(w.outgoing(&alice, &id).still_needed_by(att.id), vec![&bob]);
    w.advance(60_000);
    assert!(!w.storage_has(&node, att.id));

    w.storage_online(&node);
    assert!(
        w.storage_has(&node, att.id),
        "pushed as soon as it was back"
    );
    assert!(w.outgoing(&alice, &id).still_needed_by(att.id).is_empty());
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

/// The node goes away in the middle of pulling; when it is back it goes on from the chunks
/// it stored, and Alice sends only the rest.
#[test]
fn a_node_resumes_an_interrupted_pull_from_its_stored_chunks() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(100 * CHUNK_BYTES, 4);
    let att = w.attach_file_with(&alice, "archive.zip", &bytes, 4, false);
    let mut passed = 0;
    w.drop_rule = Some(Box::new(move |_, to, f| {
        if to.is_storage_node() && matches!(f, PeerFrame::Chunk { .. }) {
            passed += 1;
            passed > 30
        } else {
            false
        }
    }));
    w.send_with(&alice, &[&bob], "archive", vec![att.clone()]);
    assert!(!w.storage_has(&node, att.id));
    assert_eq!(
        w.storages[&node].records[&att.id].progress.chunks_held(),
        30
    );
    w.storage_offline(&node);
    w.drop_rule = None;
    let before = w.chunks_served;
    w.storage_online(&node);
    assert!(w.storage_has(&node, att.id));
    assert_eq!(w.chunks_served - before, 70, "only the missing chunks");
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

/// A corrupted chunk on the way to the node is refused and fetched again; the node never
/// keeps it.
#[test]
fn a_node_refuses_corrupted_chunks_and_fetches_them_again() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(5 * CHUNK_BYTES, 5);
    let att = w.attach_file_with(&alice, "doc.odt", &bytes, 5, false);
    let mut mangled = false;
    w.mangle_rule = Some(Box::new(move |_, to, f| match f {
        PeerFrame::Chunk { index: 2, data, .. } if to.is_storage_node() && !mangled => {
            mangled = true;
            data[10] ^= 1;
            true
        }
        _ => false,
    }));
    w.send_with(&alice, &[&bob], "doc", vec![att.clone()]);
    assert!(w.storages[&node].events.iter().any(
        |e| matches!(e, StorageEvent::ProtocolError { reason, .. } if reason.contains("chunk 2"))
    ));
    w.advance(30_000);
    assert!(w.storage_has(&node, att.id));
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

/// A node refuses a file beyond its quota; the sender is told and keeps the file, which Bob
/// then pulls from Alice as before.
#[test]
fn a_full_node_refuses_and_the_file_stays_with_the_sender() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, 4 * CHUNK_BYTES as u64);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(10 * CHUNK_BYTES, 6);
    let att = w.attach_file_with(&alice, "too-big.bin", &bytes, 6, false);
    let id = w.send_with(&alice, &[&bob], "big", vec![att.clone()]);
    assert!(!w.storage_has(&node, att.id));
    assert!(w.users[&alice].events.iter().any(|e| matches!(e,
        Event::FileNotKept { to, reason, .. } if *to == node && reason.contains("full"))));
    assert_eq!(w.outgoing(&alice, &id).still_needed_by(att.id), vec![&bob]);
    // Not asked again, even when the node comes back.
    w.storage_offline(&node);
    w.storage_online(&node);
    assert!(w.storages[&node].records.is_empty());
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

/// A storage node keeps files only for its owner, and serves them only to its owner.
#[test]
fn a_node_works_for_its_owner_only() {
    let mut w = world(&["alice", "bob", "mallory"]);
    let (alice, bob, mallory) = (addr("alice"), addr("bob"), addr("mallory"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.online(&mallory);
    w.storage_online(&node);
    let bytes = file(3 * CHUNK_BYTES, 7);
    let att = w.attach_file_with(&alice, "private.pdf", &bytes, 7, false);
    let id = w.send_with(&alice, &[&bob], "private", vec![att.clone()]);
    assert!(w.storage_has(&node, att.id));
    // Mallory asks Bob's node for the file, then asks it to keep something for Alice.
    w.connect(&mallory, &node);
    w.inject(
        &mallory,
        &node,
        PeerFrame::GetChunkList {
            message_id: id.clone(),
            attachment: att.id,
            start: 0,
        },
    );
    w.inject(
        &mallory,
        &node,
        PeerFrame::StoreFile {
            owner: alice.clone(),
            message_id: id.clone(),
            attachment: att.id,
            size: 10,
            chunks_root: [0; 32],
        },
    );
    let refusals: Vec<String> = w
        .frame_log
        .iter()
        .filter(|(from, to, _)| *from == node && *to == mallory)
        .filter_map(|(_, _, f)| match f {
            PeerFrame::TransferRefused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].contains("serves only bob@"), "{refusals:?}");
    assert!(refusals[1].contains("storage node of bob@"), "{refusals:?}");
    assert_eq!(w.storages[&node].chunks_served, 0);
}

/// Bob's node is online but cannot be reached (its connections fail): Alice retries by the
/// policy — waits doubling from 5 s — and stops after the deadline; the file stays with her.
#[test]
fn an_unreachable_node_is_retried_with_backoff_until_the_deadline() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.config.node_retry = peermail_core::route::RetryPolicy {
        first_delay: 5_000,
        factor: 2,
        max_delay: 40_000,
        deadline: 120_000,
    };
    w.storage_online(&node);
    w.unreachable.insert(node.clone());
    w.online(&alice);
    let bytes = file(2 * CHUNK_BYTES, 8);
    let att = w.attach_file_with(&alice, "x.bin", &bytes, 8, false);
    let id = w.send_with(&alice, &[&bob], "x", vec![att.clone()]);
    let attempts = |w: &World| {
        w.users[&alice]
            .events
            .iter()
            .filter(|e| matches!(e, Event::PeerProtocolError { peer, .. } if *peer == node))
            .count()
    };
    w.advance(200_000);
    assert_eq!(attempts(&w), 1, "one give-up notice after the deadline");
    assert!(!w.storage_has(&node, att.id));
    assert_eq!(w.outgoing(&alice, &id).still_needed_by(att.id), vec![&bob]);
    // Reachable again: no more attempts this session (the deadline passed)…
    w.unreachable.clear();
    w.advance(60_000);
    assert!(!w.storage_has(&node, att.id));
    // …but a new session of Alice's page starts over, and the node gets the file.
    w.offline(&alice);
    w.online(&alice);
    assert!(w.storage_has(&node, att.id));
}

/// Bob's node is down when Alice sends a small (inline) file to Bob, who is offline: the
/// relay keeps it. When the node comes up (Alice gone), the relay hands it over — the node
/// fetches it from the relay, checks it, keeps it and releases the relay's copy. Bob then
/// reads it from his node; the relay has nothing left to serve. When Alice is back, the
/// node tells her it keeps the file: her copy of the mail no longer says the relay keeps
/// it for Bob.
#[test]
fn the_relay_hands_over_what_it_kept_when_the_node_comes_back() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    let (bytes, att, id) = inline_file_kept_by_relay(&mut w, "notes.txt", 3 * CHUNK_BYTES + 99, 9);
    w.offline(&alice);

    w.storage_online(&node);
    assert!(w.storage_has(&node, att.id), "handed over by the relay");
    assert!(w.storages[&node].records[&att.id].via_relay);
    assert!(
        !w.files.contains_key(&(bob.clone(), att.id)),
        "the relay deleted its copy"
    );
    let from_relay = w.relay_chunks_served;
    assert_eq!(from_relay, 4);

    w.online(&bob);
    assert!(w.inbox_has(&bob, &id));
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    assert_eq!(w.storages[&node].chunks_served, 4, "from his node");
    assert_eq!(
        w.relay_chunks_served, from_relay,
        "nothing more from the relay"
    );

    assert!(!w.storages[&node].records[&att.id].sender_knows);
    w.online(&alice);
    let o = w.outgoing(&alice, &id);
    assert_eq!(o.kept_on_nodes(att.id), vec![&node], "{:?}", o.fetched);
    assert!(o.still_needed_by(att.id).is_empty());
    assert!(
        w.storages[&node].records[&att.id].sender_knows,
        "Alice acknowledged"
    );
}

/// While Bob's node is up, the relay's copy of a small file (kept because Bob was offline)
/// is released as soon as the node has the file (here, from Alice directly).
#[test]
fn a_node_that_has_the_file_releases_the_relays_copy() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(2 * CHUNK_BYTES, 10);
    let att = w.attach_file(&alice, "small.bin", &bytes, 10);
    w.send_with(&alice, &[&bob], "small", vec![att.clone()]);
    assert!(w.storage_has(&node, att.id));
    assert!(!w.files.contains_key(&(bob.clone(), att.id)));
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

/// A second mail to the same recipient in the same session is handed to the node too (the
/// registry is asked once per session; the node's presence does not change in between).
#[test]
fn a_second_mail_in_the_same_session_goes_to_the_node_too() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let first = w.attach_file_with(&alice, "one.bin", &file(2 * CHUNK_BYTES, 11), 11, false);
    w.send_with(&alice, &[&bob], "one", vec![first.clone()]);
    assert!(w.storage_has(&node, first.id));
    let second = w.attach_file_with(&alice, "two.bin", &file(3 * CHUNK_BYTES, 12), 12, false);
    w.send_with(&alice, &[&bob], "two", vec![second.clone()]);
    assert!(
        w.storage_has(&node, second.id),
        "handed over without a new session"
    );
}

/// The relay hands a file over to Bob's node while Alice's page stays open: the node tells
/// Alice at once that it keeps the file, so her copy of the mail stops saying the relay
/// keeps it for Bob.
#[test]
fn the_sender_online_hears_of_a_relay_hand_over() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    let (_, att, id) = inline_file_kept_by_relay(&mut w, "minutes.txt", 2 * CHUNK_BYTES + 7, 13);
    assert_eq!(w.outgoing(&alice, &id).still_needed_by(att.id), vec![&bob]);

    w.storage_online(&node);
    assert!(w.storage_has(&node, att.id), "handed over by the relay");
    assert!(w.storages[&node].records[&att.id].via_relay);
    let o = w.outgoing(&alice, &id);
    assert_eq!(o.kept_on_nodes(att.id), vec![&node], "{:?}", o.fetched);
    assert!(o.still_needed_by(att.id).is_empty());
    assert!(w.storages[&node].records[&att.id].sender_knows);
}

/// Bob unpairs his storage node: his page has no node any more (and sees it go offline), and a sender who signs in afterwards no longer hands Bob's files to it: a large
/// file waits with its sender, and reaches Bob directly. Asked while the relay is
/// unreachable, the page says it cannot unpair now.
#[test]
fn an_unpaired_node_is_no_longer_used() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.storage_online(&node);
    w.online(&bob);
    let bob_node = |w: &World| w.users[&bob].node.as_ref().unwrap().own_node().cloned();
    assert_eq!(bob_node(&w), Some(node.clone()), "located at sign-in");
    assert!(w.users[&bob].subscriptions.contains(&node));

    // With the relay unreachable, the page says it cannot unpair now; nothing changes.
    w.relay_outage(true);
    w.command(&bob, Command::UnpairNode);
    assert!(w.users[&bob]
        .events
        .iter()
        .any(|e| matches!(e, Event::UnpairFailed { reason } if reason.contains("not connected"))));
    w.relay_outage(false);
    assert_eq!(bob_node(&w), Some(node.clone()));
    assert!(w.storages.contains_key(&node));

    w.command(&bob, Command::UnpairNode);
    assert!(w.users[&bob]
        .events
        .contains(&Event::NodeUnpaired { node: node.clone() }));
    assert_eq!(bob_node(&w), None);
    assert!(!w.storages.contains_key(&node), "the node stopped");
    // Its presence is no longer watched.
    assert!(!w.users[&bob].subscriptions.contains(&node));
    assert_eq!(w.users[&bob].node.as_ref().unwrap().presence(&node), None);

    w.offline(&bob);
    w.online(&alice);
    let bytes = file(20 * CHUNK_BYTES + 3, 9);
    let att = w.attach_file_with(&alice, "plans.pdf", &bytes, 9, false);
    let id = w.send_with(&alice, &[&bob], "plans", vec![att.clone()]);
    let o = w.outgoing(&alice, &id);
    assert!(o.kept_on_nodes(att.id).is_empty());
    assert_eq!(o.still_needed_by(att.id), vec![&bob], "waits with Alice");
    assert_eq!(
        w.users[&alice].node.as_ref().unwrap().storage_node_of(&bob),
        None
    );
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
}

/// Bob deletes a mail whose file his storage node keeps, while the node is down; his page is
/// reopened meanwhile. When the node is back, Bob's page has it delete the file (record,
/// chunk list, chunks), and stops asking once it answers. Nobody else can have the node
/// delete a file.
#[test]
fn a_deleted_mail_goes_from_the_storage_node_too() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(70 * CHUNK_BYTES + 17, 5);
    let att = w.attach_file_with(&alice, "film.mp4", &bytes, 5, false);
    let id = w.send_with(&alice, &[&bob], "the film", vec![att.clone()]);
    assert!(w.storage_has(&node, att.id));

    // Alice (connected to the node, which pulled the file from her) cannot delete it.
    w.inject(
        &alice,
        &node,
        PeerFrame::DropFiles {
            attachments: vec![att.id],
        },
    );
    assert!(w.storage_has(&node, att.id), "only the owner deletes");
    assert!(w.storages[&node]
        .events
        .iter()
        .any(|e| matches!(e, StorageEvent::Refused { peer, .. } if *peer == alice)));

    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    w.storage_offline(&node);
    w.command(&bob, Command::DeleteReceived(id.clone()));
    let on_node = |w: &World| {
        w.users[&bob]
            .store
            .snapshot()
            .deleted
            .into_iter()
            .find(|d| d.message_id == id)
            .expect("deletion record")
            .on_node
    };
    assert_eq!(on_node(&w), vec![att.id]);
    w.offline(&bob);
    w.online(&bob);

    w.storage_online(&node);
    let s = &w.storages[&node];
    assert!(!s.records.contains_key(&att.id), "the record is gone");
    assert!(!s.lists.contains_key(&att.id), "the chunk list too");
    assert!(
        !s.chunks.keys().any(|(a, _)| *a == att.id),
        "and the chunks"
    );
    assert!(s.events.contains(&StorageEvent::FileDropped(att.id)));
    assert!(on_node(&w).is_empty(), "the node's answer is recorded");

    // Asked once: later connections ask nothing more.
    w.frame_log.clear();
    w.offline(&bob);
    w.online(&bob);
    w.advance(60_000);
    assert!(!w
        .frame_log
        .iter()
        .any(|(_, _, f)| matches!(f, PeerFrame::DropFiles { .. })));
}

/// The storage node restarts just after Bob's page read from it (the page waits a moment
/// before it connects again); Bob deletes the mail meanwhile: once the page may connect
/// again, it has the node delete the file.
#[test]
fn a_deletion_reaches_a_storage_node_that_just_came_back() {
    let mut w = world(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    let node = w.add_storage(&bob, GIB);
    w.online(&alice);
    w.storage_online(&node);
    let bytes = file(20 * CHUNK_BYTES + 3, 6);
    let att = w.attach_file_with(&alice, "clip.mp4", &bytes, 6, false);
    let id = w.send_with(&alice, &[&bob], "the clip", vec![att.clone()]);
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_file(&bob, &att).unwrap(), bytes);
    w.storage_offline(&node);
    w.storage_online(&node);
    w.command(&bob, Command::DeleteReceived(id));
    assert!(
        w.storage_has(&node, att.id),
        "not at once: the page waits to reconnect"
    );
    w.advance(10_000);
    assert!(!w.storages[&node].records.contains_key(&att.id));
}
