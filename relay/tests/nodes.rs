//! Storage nodes and the location registry, through the real relay router on 127.0.0.1:0
//! with tokio-tungstenite clients: pairing codes (right, wrong, too many wrong, expired with
//! their session), a paired node signing in with its own key, heartbeats and availability,
//! what a node's session may do, re-pairing, unpairing, and the registry surviving a
//! restart.

use std::time::Duration;

use peermail_core::address::Address;
use peermail_core::identity::{auth_message, pairing_message, Identity};
use peermail_core::wire::signal::{ClientFrame, ErrorCode, PresenceStatus, ServerFrame};

#[allow(dead_code)]
mod common;

use common::{identity, Client, TestRelay};

/// A storage node's keys. Its address is only known once paired; the key is what counts.
fn node_keys(seed: u8) -> Identity {
    identity("unpaired", seed)
}

impl Client {
    /// Asks for a pairing code with `node`'s key; returns the code.
    async fn request_pairing(&mut self, node: &Identity) -> String {
        let public_key = node.public_key();
        let signature = node.sign(&pairing_message(&self.nonce, &public_key));
        self.send(ClientFrame::RequestPairing {
            public_key,
            signature,
        })
        .await;
        match self.recv().await {
            ServerFrame::PairingCode { code, expires_at } => {
                assert!(expires_at > 0);
                code
            }
            other => panic!("expected a pairing code, got {other:?}"),
        }
    }

    /// Signs in as the storage node `address` with `node`'s key.
    fn node_auth_frame(&self, node: &Identity, address: &Address) -> ClientFrame {
        ClientFrame::Auth {
            address: address.clone(),
            signature: node.sign(&auth_message(&self.nonce, address)),
        }
    }

    async fn node_auth(&mut self, node: &Identity, address: &Address) {
        self.send(self.node_auth_frame(node, address)).await;
        assert_eq!(
            self.recv().await,
            ServerFrame::Authenticated {
                address: address.clone()
            }
        );
    }

    async fn pair(&mut self, code: &str) -> ServerFrame {
        self.send(ClientFrame::PairNode {
            code: code.to_string(),
        })
        .await;
        self.recv().await
    }

    /// Reads until the relay closes the connection; the close frame's reason.
    async fn close_reason(&mut self) -> String {
        use futures_util::StreamExt as _;
        tokio::time::timeout(common::WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                        return f.reason.to_string()
                    }
                    Some(Ok(_)) => continue,
                    _ => return String::new(),
                }
            }
        })
        .await
        .expect("the relay closes the connection")
    }

    async fn locate(&mut self, address: &Address) -> (Option<Address>, bool, Option<u64>) {
        self.send(ClientFrame::LocateNode {
            address: address.clone(),
        })
        .await;
        match self.recv().await {
            ServerFrame::NodeLocation {
                address: a,
                node,
                available,
                last_seen,
            } => {
                assert_eq!(a, address.owner());
                (node, available, last_seen)
            }
            other => panic!("expected a node location, got {other:?}"),
        }
    }
}

/// `owner` (signed in as `a`) pairs a node with `keys`, which signs in; `bob` (registered
/// here) watches its presence and sees it online. The node's session and Bob's.
async fn paired_node_watched_by_bob(
    relay: &TestRelay,
    (owner, a): (&Identity, &mut Client),
    keys: &Identity,
    bob: &Identity,
) -> (Client, Client) {
    let node_address = owner.address.storage_node();
    let mut n = Client::connect(relay.addr).await;
    let code = n.request_pairing(keys).await;
    assert!(matches!(
        a.pair(&code).await,
        ServerFrame::NodePaired { .. }
    ));
    n.recv().await;
    n.node_auth(keys, &node_address).await;
    let mut b = Client::registered(relay.addr, bob).await;
    b.send(ClientFrame::Subscribe {
        addresses: vec![node_address],
    })
    .await;
    assert!(matches!(
        b.recv().await,
        ServerFrame::Presence {
            status: PresenceStatus::Online,
            ..
        }
    ));
    (n, b)
}

/// A code that is not `code` (same shape).
fn other_code(code: &str) -> String {
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap();
    format!("{:08}", (n + 1) % 100_000_000)
}

#[tokio::test]
async fn a_node_is_paired_by_code_signs_in_with_its_key_and_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let keys = node_keys(9);
    let node_address = alice.address.storage_node();
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut b = Client::registered(relay.addr, &bob).await;

    // Nobody has a node yet.
    assert_eq!(b.locate(&alice.address).await, (None, false, None));
    b.send(ClientFrame::LocateNode {
        address: "nobody@localhost".parse().unwrap(),
    })
    .await;
    b.expect_error(ErrorCode::UnknownAddress).await;

    // A pairing request must be signed by the key it names.
    let mut n = Client::connect(relay.addr).await;
    let other = node_keys(10);
    n.send(ClientFrame::RequestPairing {
        public_key: keys.public_key(),
        signature: other.sign(&pairing_message(&n.nonce, &keys.public_key())),
    })
    .await;
    n.expect_error(ErrorCode::BadSignature).await;
    let code = n.request_pairing(&keys).await;
    assert_eq!(code.len(), 9, "{code}");
    // Asking again in the same session shows the same code.
    assert_eq!(n.request_pairing(&keys).await, code);
    // Not signed in: it may not do anything else.
    n.send(ClientFrame::LocateNode {
        address: alice.address.clone(),
    })
    .await;
    n.expect_error(ErrorCode::NotAuthenticated).await;

    // A wrong code is refused, and pairing needs a signed-in person.
    let refused = a.pair(&other_code(&code)).await;
    assert!(
        matches!(&refused, ServerFrame::Error { code: ErrorCode::NotFound, message, .. }
            if message.contains("pairing code")),
        "{refused:?}"
    );
    let mut anonymous = Client::connect(relay.addr).await;
    anonymous
        .send(ClientFrame::PairNode { code: code.clone() })
        .await;
    anonymous.expect_error(ErrorCode::NotAuthenticated).await;

    // The right code, typed without the dash: both sides are told.
    let paired = ServerFrame::NodePaired {
        owner: alice.address.clone(),
        node: node_address.clone(),
    };
    assert_eq!(a.pair(&code.replace('-', " ")).await, paired);
    assert_eq!(n.recv().await, paired);
    // A code is used once.
    assert!(matches!(
        b.pair(&code).await,
        ServerFrame::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));

    // Before it signs in, the node is registered but unavailable.
    let (node, available, last_seen) = b.locate(&alice.address).await;
    assert_eq!(node.as_ref(), Some(&node_address));
    assert!(!available && last_seen.is_none());
    b.send(ClientFrame::Subscribe {
        addresses: vec![node_address.clone()],
    })
    .await;
    assert_eq!(
        b.recv().await,
        ServerFrame::Presence {
            address: node_address.clone(),
            status: PresenceStatus::Offline
        }
    );

    // Another key cannot sign in as the node; the node's own key can.
    n.send(n.node_auth_frame(&other, &node_address)).await;
    n.expect_error(ErrorCode::BadSignature).await;
    n.node_auth(&keys, &node_address).await;
    assert_eq!(
        b.recv().await,
        ServerFrame::Presence {
            address: node_address.clone(),
            status: PresenceStatus::Online
        }
    );
    let (_, available, last_seen) = b.locate(&node_address).await.clone();
    assert!(available, "signed in and heard from");
    assert!(last_seen.is_some());
    // Locating by the node's own address answers about its owner.
    assert_eq!(b.locate(&alice.address).await.0, Some(node_address.clone()));

    // A node's session negotiates connections and sends heartbeats, nothing else.
    n.send(ClientFrame::NodeHeartbeat).await;
    n.ping(1).await;
    n.send(ClientFrame::PublishKey {
        encryption_key: "00".repeat(32),
    })
    .await;
    n.expect_error(ErrorCode::NotAuthenticated).await;
    n.send(ClientFrame::PairNode { code: code.clone() }).await;
    n.expect_error(ErrorCode::NotAuthenticated).await;
    // People do not send heartbeats.
    a.send(ClientFrame::NodeHeartbeat).await;
    a.expect_error(ErrorCode::NotAuthenticated).await;
    // Negotiation reaches the node like any peer.
    b.send(ClientFrame::Signal {
        to: node_address.clone(),
        conn: "c1".into(),
        payload: peermail_core::wire::signal::SignalPayload::Bye,
    })
    .await;
    assert_eq!(
        n.recv().await,
        ServerFrame::Signal {
            from: bob.address.clone(),
            conn: "c1".into(),
            payload: peermail_core::wire::signal::SignalPayload::Bye
        }
    );
    // A node's address receives no mail.
    b.send(ClientFrame::Deposit {
        to: node_address.clone(),
        message_id: peermail_core::mail::MessageId::new([7; 16], "localhost"),
        sealed: "AAAA".into(),
    })
    .await;
    b.expect_error(ErrorCode::UnknownAddress).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_node_becomes_unavailable_and_its_session_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(dir.path(), |c| {
        c.node_timeout = Duration::from_millis(1500);
    })
    .await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let keys = node_keys(9);
    let node_address = alice.address.storage_node();
    let mut a = Client::registered(relay.addr, &alice).await;
    let (mut n, mut b) = paired_node_watched_by_bob(&relay, (&alice, &mut a), &keys, &bob).await;

    // Heartbeats (every fifth of the timeout) keep it available well past the timeout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        n.send(ClientFrame::NodeHeartbeat).await;
    }
    n.ping(2).await;
    assert!(b.locate(&alice.address).await.1, "heartbeats on time");

    // Then it falls silent (WebSocket pongs alone do not count): it is marked unavailable
    // and its session is closed.
    assert_eq!(
        b.recv().await,
        ServerFrame::Presence {
            address: node_address.clone(),
            status: PresenceStatus::Offline
        }
    );
    let (node, available, last_seen) = b.locate(&alice.address).await;
    assert_eq!(node, Some(node_address.clone()));
    assert!(!available && last_seen.is_some());
    let closed = n.close_reason().await;
    assert!(closed.contains("heartbeat"), "{closed}");
    relay.stop().await;
}

#[tokio::test]
async fn pairing_survives_a_restart_a_new_node_replaces_the_old_and_wrong_codes_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let alice = identity("alice", 1);
    let (old_keys, new_keys) = (node_keys(9), node_keys(11));
    let node_address = alice.address.storage_node();
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut n = Client::connect(relay.addr).await;
    let code = n.request_pairing(&old_keys).await;
    a.pair(&code).await;

    // A node whose session ended before it was paired has no code any more.
    let mut gone = Client::connect(relay.addr).await;
    let gone_code = gone.request_pairing(&new_keys).await;
    drop(gone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        a.pair(&gone_code).await,
        ServerFrame::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));
    relay.stop().await;

    // After a restart the node signs in with the key it was paired with.
    let relay = TestRelay::start(dir.path()).await;
    let mut n = Client::connect(relay.addr).await;
    n.node_auth(&old_keys, &node_address).await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    assert!(a.locate(&alice.address).await.1);

    // Pairing a new node replaces the old one: the old key no longer signs in.
    let mut m = Client::connect(relay.addr).await;
    let code = m.request_pairing(&new_keys).await;
    // Five wrong codes in a row, then even the right one waits.
    for _ in 0..5 {
        assert!(matches!(
            a.pair(&other_code(&code)).await,
            ServerFrame::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ));
    }
    assert!(matches!(
        a.pair(&code).await,
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    ));
    let mut a2 = Client::authenticated(relay.addr, &alice).await;
    assert!(matches!(
        a2.pair(&code).await,
        ServerFrame::NodePaired { .. }
    ));
    m.recv().await;
    m.node_auth(&new_keys, &node_address).await;
    let mut late = Client::connect(relay.addr).await;
    late.send(late.node_auth_frame(&old_keys, &node_address))
        .await;
    late.expect_error(ErrorCode::BadSignature).await;
    relay.stop().await;
}

/// The owner unpairs the node: the node's live session is told and closed, watchers see it
/// go offline, the registry lists no node (also after a restart), the node's key no longer
/// signs in, and unpairing again is answered the same. The node's own session may not
/// unpair; pairing the same node again works.
#[tokio::test]
async fn the_owner_unpairs_the_node_its_session_ends_and_its_key_no_longer_signs_in() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let keys = node_keys(9);
    let node_address = alice.address.storage_node();
    let mut a = Client::registered(relay.addr, &alice).await;
    let (mut n, mut b) = paired_node_watched_by_bob(&relay, (&alice, &mut a), &keys, &bob).await;

    // The node cannot unpair itself.
    n.send(ClientFrame::UnpairNode).await;
    n.expect_error(ErrorCode::NotAuthenticated).await;

    let unpaired = ServerFrame::NodeUnpaired {
        owner: alice.address.clone(),
        node: node_address.clone(),
    };
    a.send(ClientFrame::UnpairNode).await;
    assert_eq!(a.recv().await, unpaired);
    // The node hears it, then its session is closed with the reason.
    assert_eq!(n.recv().await, unpaired);
    let closed = n.close_reason().await;
    assert!(closed.contains("unpaired"), "{closed}");
    assert_eq!(
        b.recv().await,
        ServerFrame::Presence {
            address: node_address.clone(),
            status: PresenceStatus::Offline
        }
    );
    assert_eq!(b.locate(&alice.address).await, (None, false, None));
    // Its key no longer signs in as the node.
    let mut late = Client::connect(relay.addr).await;
    late.send(late.node_auth_frame(&keys, &node_address)).await;
    late.expect_error(ErrorCode::UnknownAddress).await;
    // Unpairing again is answered the same.
    a.send(ClientFrame::UnpairNode).await;
    assert_eq!(a.recv().await, unpaired);
    relay.stop().await;

    // Still unpaired after a restart; the same node can be paired again.
    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    assert_eq!(a.locate(&alice.address).await, (None, false, None));
    let mut n = Client::connect(relay.addr).await;
    let code = n.request_pairing(&keys).await;
    assert!(matches!(
        a.pair(&code).await,
        ServerFrame::NodePaired { .. }
    ));
    n.recv().await;
    n.node_auth(&keys, &node_address).await;
    assert_eq!(a.locate(&alice.address).await.0, Some(node_address));
    relay.stop().await;
}

/// What the relay keeps for a person is listed to them and their storage node; the node
/// fetches it and releases the relay's copy; a file that becomes whole while the node is
/// signed in is pushed to it; nobody else's node may touch it.
#[tokio::test]
async fn a_node_lists_fetches_and_releases_what_the_relay_keeps_for_its_owner() {
    use base64::Engine as _;
    use peermail_core::attach::CHUNK_BYTES;
    use peermail_core::mail::MessageId;
    use peermail_core::wire::signal::FileItem;
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    let (bob_node, carol_node) = (bob.address.storage_node(), carol.address.storage_node());
    let (bob_keys, carol_keys) = (node_keys(9), node_keys(10));
    for (who, keys, node) in [
        (&bob, &bob_keys, &bob_node),
        (&carol, &carol_keys, &carol_node),
    ] {
        let mut p = Client::registered(relay.addr, who).await;
        let mut n = Client::connect(relay.addr).await;
        let code = n.request_pairing(keys).await;
        p.pair(&code).await;
        n.recv().await;
        n.node_auth(keys, node).await;
    }
    // Bob's node signs in: nothing kept for Bob yet.
    let mut n = Client::connect(relay.addr).await;
    n.node_auth(&bob_keys, &bob_node).await;
    n.send(ClientFrame::ListFiles).await;
    assert_eq!(n.recv().await, ServerFrame::FilesKept { items: vec![] });

    // Alice deposits a mail and a real encrypted file of three chunks for Bob.
    let mut a = Client::registered(relay.addr, &alice).await;
    let message_id = MessageId::new([4; 16], "localhost");
    a.send(ClientFrame::Deposit {
        to: bob.address.clone(),
        message_id: message_id.clone(),
        sealed: B64.encode([1u8; 64]),
    })
    .await;
    assert!(matches!(a.recv().await, ServerFrame::Deposited { .. }));
    let bytes: Vec<u8> = (0..2 * CHUNK_BYTES + 77).map(|i| (i % 241) as u8).collect();
    let (att, hashes, chunks) = common::sealed_file(&bytes, 5);
    a.send(ClientFrame::DepositFile {
        to: bob.address.clone(),
        message_id: message_id.clone(),
        attachment: att.id,
        size: att.size,
        hashes: B64.encode(hashes.concat()),
    })
    .await;
    assert!(matches!(a.recv().await, ServerFrame::FileAccepted { .. }));
    for (i, c) in chunks.iter().enumerate() {
        a.send(ClientFrame::DepositChunk {
            to: bob.address.clone(),
            attachment: att.id,
            index: i as u32,
            data: B64.encode(c),
        })
        .await;
        assert!(matches!(a.recv().await, ServerFrame::ChunkDeposited { .. }));
    }
    // Whole now: pushed to Bob's signed-in node, and listed to Bob and his node.
    let item = FileItem {
        attachment: att.id,
        message_id: message_id.clone(),
        from: alice.address.clone(),
        size: att.size,
    };
    assert_eq!(
        n.recv().await,
        ServerFrame::FilesKept {
            items: vec![item.clone()]
        }
    );
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert!(matches!(b.recv().await, ServerFrame::Waiting { .. }));
    b.send(ClientFrame::ListFiles).await;
    assert_eq!(
        b.recv().await,
        ServerFrame::FilesKept {
            items: vec![item.clone()]
        }
    );

    // Carol's node may not see or take it.
    let mut c = Client::connect(relay.addr).await;
    c.node_auth(&carol_keys, &carol_node).await;
    c.send(ClientFrame::ListFiles).await;
    assert_eq!(c.recv().await, ServerFrame::FilesKept { items: vec![] });
    c.send(ClientFrame::FetchFile { attachment: att.id }).await;
    c.expect_error(ErrorCode::NotFound).await;
    c.send(ClientFrame::ReleaseFile { attachment: att.id })
        .await;
    c.expect_error(ErrorCode::NotFound).await;

    // Bob's node fetches the chunk list and the chunks, then releases the relay's copy.
    n.send(ClientFrame::FetchFile { attachment: att.id }).await;
    assert_eq!(
        n.recv().await,
        ServerFrame::FileInfo {
            attachment: att.id,
            from: alice.address.clone(),
            size: att.size,
            hashes: B64.encode(hashes.concat()),
        }
    );
    n.send(ClientFrame::FetchChunks {
        attachment: att.id,
        ranges: vec![(0, 3)],
    })
    .await;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(
            n.recv().await,
            ServerFrame::FileChunk {
                attachment: att.id,
                index: i as u32,
                data: B64.encode(c),
            }
        );
    }
    n.send(ClientFrame::ReleaseFile { attachment: att.id })
        .await;
    assert_eq!(
        n.recv().await,
        ServerFrame::FileReleased { attachment: att.id }
    );
    b.send(ClientFrame::ListFiles).await;
    assert_eq!(b.recv().await, ServerFrame::FilesKept { items: vec![] });
    relay.stop().await;
}
