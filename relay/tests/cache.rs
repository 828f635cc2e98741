//! The store-and-forward mail cache and the key directory, tested through the real relay
//! router on 127.0.0.1:0 with tokio-tungstenite clients, and (for crash safety) the real
//! `relay` binary killed with SIGKILL.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use peermail_core::address::Address;
use peermail_core::mail::MessageId;
use peermail_core::wire::signal::{
    parse_server_frame, ClientFrame, ErrorAbout, ErrorCode, MailLocation, ReceiptOutcome,
    ServerFrame, WaitingMail, MAX_SEALED_BYTES,
};
use peermail_relay::Db;
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{addr, identity, Client, TestRelay, WAIT};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn mid(n: u32) -> MessageId {
    let mut random = [0u8; 16];
    random[..4].copy_from_slice(&n.to_be_bytes());
    MessageId::new(random, "localhost")
}

/// Recognisable opaque bytes for envelope `n`.
fn sealed_bytes(n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(n) as u8)
        .collect()
}

impl Client {
    /// Expects error `code`; returns what it is about.
    async fn expect_error_about(&mut self, code: ErrorCode) -> Option<ErrorAbout> {
        match self.recv().await {
            ServerFrame::Error { code: c, about, .. } if c == code => about,
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Sends a ping and expects its pong as the very next frame: nothing else was queued.
    async fn expect_nothing_more(&mut self, nonce: u64) {
        self.ping(nonce).await;
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Wait for the server's side, so the session is gone before the next step.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    async fn deposit(&mut self, to: &Address, id: &MessageId, sealed: &[u8]) -> ServerFrame {
        self.send(ClientFrame::Deposit {
            to: to.clone(),
            message_id: id.clone(),
            sealed: B64.encode(sealed),
        })
        .await;
        self.recv().await
    }

    async fn deposit_ok(&mut self, to: &Address, id: &MessageId, sealed: &[u8]) {
        assert_eq!(
            self.deposit(to, id, sealed).await,
            ServerFrame::Deposited {
                to: to.clone(),
                message_id: id.clone()
            }
        );
    }

    async fn expect_waiting(&mut self) -> Vec<WaitingMail> {
        match self.recv().await {
            ServerFrame::Waiting { items } => items,
            other => panic!("expected waiting mail, got {other:?}"),
        }
    }

    /// Fetches `id`; returns the sender and the envelope's bytes.
    async fn fetch(&mut self, id: &MessageId) -> (Address, Vec<u8>) {
        self.send(ClientFrame::Fetch {
            message_id: id.clone(),
        })
        .await;
        match self.recv().await {
            ServerFrame::Cached {
                message_id,
                from,
                sealed,
            } => {
                assert_eq!(&message_id, id);
                (from, B64.decode(sealed).expect("base64"))
            }
            other => panic!("expected the cached mail, got {other:?}"),
        }
    }

    async fn release(&mut self, id: &MessageId) {
        self.send(ClientFrame::Release {
            message_id: id.clone(),
        })
        .await;
        assert_eq!(
            self.recv().await,
            ServerFrame::Released {
                message_id: id.clone()
            }
        );
    }

    async fn expect_receipt(&mut self, to: &Address, id: &MessageId, outcome: ReceiptOutcome) {
        assert_eq!(
            self.recv().await,
            ServerFrame::Receipt {
                to: to.clone(),
                message_id: id.clone(),
                outcome
            }
        );
    }
}

/// A relay whose cache keeps mail for 300 ms, swept every 100 ms.
async fn short_retention(dir: &Path) -> TestRelay {
    TestRelay::start_with(dir, |c| {
        c.cache_retention = Duration::from_millis(300);
        c.sweep_interval = Duration::from_millis(100);
    })
    .await
}

fn cached_count(dir: &Path) -> u64 {
    Db::open(dir).unwrap().cached_count().unwrap()
}

#[tokio::test]
async fn publish_key_and_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut b = Client::registered(relay.addr, &bob).await;

    a.send(ClientFrame::Lookup {
        address: bob.address.clone(),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerFrame::Keys {
            address: bob.address.clone(),
            signing_key: bob.public_key(),
            encryption_key: None
        }
    );
    // Bad keys are refused: wrong length, not hex.
    for bad in ["ab".repeat(31), "zz".repeat(32), String::new()] {
        b.send(ClientFrame::PublishKey {
            encryption_key: bad,
        })
        .await;
        b.expect_error(ErrorCode::MalformedFrame).await;
    }
    b.send(ClientFrame::PublishKey {
        encryption_key: "AB".repeat(32),
    })
    .await;
    assert_eq!(b.recv().await, ServerFrame::KeyPublished);
    a.send(ClientFrame::Lookup {
        address: bob.address.clone(),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerFrame::Keys {
            address: bob.address.clone(),
            signing_key: bob.public_key(),
            encryption_key: Some("ab".repeat(32))
        }
    );
    // A new key replaces the old one.
    b.send(ClientFrame::PublishKey {
        encryption_key: "cd".repeat(32),
    })
    .await;
    assert_eq!(b.recv().await, ServerFrame::KeyPublished);
    for unknown in ["ghost@localhost", "bob@elsewhere.example"] {
        a.send(ClientFrame::Lookup {
            address: addr(unknown),
        })
        .await;
        a.expect_error(ErrorCode::UnknownAddress).await;
    }
    // Not before signing in.
    let mut anon = Client::connect(relay.addr).await;
    anon.send(ClientFrame::Lookup {
        address: bob.address.clone(),
    })
    .await;
    anon.expect_error(ErrorCode::NotAuthenticated).await;
    relay.stop().await;

    // The key is kept across a restart.
    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.send(ClientFrame::Lookup {
        address: bob.address.clone(),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerFrame::Keys {
            address: bob.address.clone(),
            signing_key: bob.public_key(),
            encryption_key: Some("cd".repeat(32))
        }
    );
    relay.stop().await;
}

#[tokio::test]
async fn deposit_notice_fetch_release_and_delivered_receipt_to_an_online_sender() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let (id, sealed) = (mid(1), sealed_bytes(1, 3000));
    let before = peermail_signaling_now();
    a.deposit_ok(&bob.address, &id, &sealed).await;
    assert_eq!(cached_count(dir.path()), 1);

    // Bob signs in and is told at once what waits, from whom, how big, where.
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let items = b.expect_waiting().await;
    assert_eq!(items.len(), 1, "{items:?}");
    let w = &items[0];
    assert_eq!(
        (&w.message_id, &w.from, w.size, &w.location),
        (&id, &alice.address, 3000, &MailLocation::Relay)
    );
    assert!(w.deposited_at >= before && w.deposited_at <= peermail_signaling_now());
    let (from, got) = b.fetch(&id).await;
    assert_eq!(from, alice.address);
    assert_eq!(got, sealed);
    // Fetching does not remove it; releasing does.
    let (_, again) = b.fetch(&id).await;
    assert_eq!(again, sealed);
    b.release(&id).await;
    assert_eq!(cached_count(dir.path()), 0);

    // Alice, online, gets the receipt now.
    a.expect_receipt(&bob.address, &id, ReceiptOutcome::Delivered)
        .await;
    a.send(ClientFrame::AckReceipt {
        to: bob.address.clone(),
        message_id: id.clone(),
    })
    .await;
    a.expect_nothing_more(1).await;

    // Gone for Bob: a later sign-in lists nothing, and fetch/release find nothing.
    b.send(ClientFrame::Fetch {
        message_id: id.clone(),
    })
    .await;
    b.expect_error(ErrorCode::NotFound).await;
    b.send(ClientFrame::Release {
        message_id: id.clone(),
    })
    .await;
    b.expect_error(ErrorCode::NotFound).await;
    b.close().await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    b.expect_nothing_more(2).await;
    // The acknowledged receipt is not sent again.
    a.close().await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_nothing_more(3).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_refused_envelope_is_deleted_and_its_sender_told_refused_until_it_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    Client::registered(relay.addr, &carol).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let (id, sealed) = (mid(7), sealed_bytes(7, 500));
    a.deposit_ok(&bob.address, &id, &sealed).await;
    a.close().await;

    // Only the recipient may refuse it: for anyone else nothing by that id waits.
    let mut c = Client::authenticated(relay.addr, &carol).await;
    c.send(ClientFrame::Refuse {
        message_id: id.clone(),
        holder: None,
    })
    .await;
    c.expect_error(ErrorCode::NotFound).await;
    assert_eq!(cached_count(dir.path()), 1);

    // Bob fetches it, cannot verify it and refuses it: deleted, answered like a release.
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 1);
    let _ = b.fetch(&id).await;
    b.send(ClientFrame::Refuse {
        message_id: id.clone(),
        holder: None,
    })
    .await;
    assert_eq!(
        b.recv().await,
        ServerFrame::Released {
            message_id: id.clone()
        }
    );
    assert_eq!(cached_count(dir.path()), 0);
    // Not offered again at a later sign-in, and gone for fetch.
    b.close().await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    b.send(ClientFrame::Fetch {
        message_id: id.clone(),
    })
    .await;
    b.expect_error(ErrorCode::NotFound).await;
    b.expect_nothing_more(1).await;

    // Alice, back, learns it was refused (not delivered), at every sign-in until she
    // acknowledges it; the outcome survives a relay restart.
    relay.stop().await;
    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_receipt(&bob.address, &id, ReceiptOutcome::Refused)
        .await;
    a.close().await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_receipt(&bob.address, &id, ReceiptOutcome::Refused)
        .await;
    a.send(ClientFrame::AckReceipt {
        to: bob.address.clone(),
        message_id: id.clone(),
    })
    .await;
    a.close().await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_nothing_more(2).await;
    relay.stop().await;
}

/// The signaling crate's clock, as the tests see it (ms since the Unix epoch).
fn peermail_signaling_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn an_offline_sender_gets_the_receipt_at_sign_in_until_it_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let (id1, id2) = (mid(1), mid(2));
    a.deposit_ok(&bob.address, &id1, b"one").await;
    a.deposit_ok(&bob.address, &id2, b"two").await;
    a.close().await;

    let mut b = Client::authenticated(relay.addr, &bob).await;
    let items = b.expect_waiting().await;
    let ids: Vec<_> = items.iter().map(|w| w.message_id.clone()).collect();
    assert_eq!(ids, vec![id1.clone(), id2.clone()]);
    assert_eq!(b.fetch(&id1).await.1, b"one");
    b.release(&id1).await;

    // Alice comes back: the receipt is there, and it stays until acknowledged.
    for round in 0..2 {
        let mut a = Client::authenticated(relay.addr, &alice).await;
        a.expect_receipt(&bob.address, &id1, ReceiptOutcome::Delivered)
            .await;
        a.expect_nothing_more(round).await;
        a.close().await;
    }
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_receipt(&bob.address, &id1, ReceiptOutcome::Delivered)
        .await;
    a.send(ClientFrame::AckReceipt {
        to: bob.address.clone(),
        message_id: id1.clone(),
    })
    .await;
    a.expect_nothing_more(5).await;
    a.close().await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_nothing_more(6).await;

    // The second mail still waits for Bob.
    b.close().await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let items = b.expect_waiting().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_id, id2);
    relay.stop().await;
}

#[tokio::test]
async fn an_online_recipient_gets_new_mail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let mut b = Client::registered(relay.addr, &bob).await;
    let mut a = Client::registered(relay.addr, &alice).await;
    a.deposit_ok(&bob.address, &mid(7), b"sealed").await;
    // The envelope itself, pushed once it is committed: no notice, no fetch.
    assert_eq!(
        b.recv().await,
        ServerFrame::Cached {
            message_id: mid(7),
            from: alice.address.clone(),
            sealed: B64.encode(b"sealed"),
        }
    );
    // Depositing it again is acknowledged the same, stores nothing new, tells nobody.
    a.deposit_ok(&bob.address, &mid(7), b"sealed").await;
    b.expect_nothing_more(1).await;
    assert_eq!(cached_count(dir.path()), 1);
    // Kept until released, as a fetched envelope: listed at Bob's next sign-in.
    b.close().await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let items = b.expect_waiting().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_id, mid(7));
    assert_eq!(items[0].from, alice.address);
    assert_eq!(items[0].size, 6);
    b.release(&mid(7)).await;
    a.expect_receipt(&bob.address, &mid(7), ReceiptOutcome::Delivered)
        .await;
    assert_eq!(cached_count(dir.path()), 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_double_deposit_keeps_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let id = mid(3);
    a.deposit_ok(&bob.address, &id, b"first").await;
    a.deposit_ok(&bob.address, &id, b"first").await;
    assert_eq!(cached_count(dir.path()), 1);
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 1);
    b.expect_nothing_more(1).await;
    assert_eq!(b.fetch(&id).await.1, b"first");
    relay.stop().await;
}

#[tokio::test]
async fn another_account_can_neither_fetch_nor_release_someone_elses_mail() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, mallory) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("mallory", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let id = mid(4);
    a.deposit_ok(&bob.address, &id, b"for bob only").await;

    let mut m = Client::registered(relay.addr, &mallory).await;
    // The same answer for mail that waits for someone else and for mail that does not exist.
    let mut messages = Vec::new();
    for probe in [id.clone(), mid(999)] {
        m.send(ClientFrame::Fetch {
            message_id: probe.clone(),
        })
        .await;
        let fetch = m.expect_error(ErrorCode::NotFound).await;
        m.send(ClientFrame::Release {
            message_id: probe.clone(),
        })
        .await;
        let release = m.expect_error(ErrorCode::NotFound).await;
        messages.push((
            fetch.replace(probe.as_str(), "ID"),
            release.replace(probe.as_str(), "ID"),
        ));
    }
    assert_eq!(messages[0], messages[1]);
    // Nor does the sender get it back.
    a.send(ClientFrame::Fetch {
        message_id: id.clone(),
    })
    .await;
    a.expect_error(ErrorCode::NotFound).await;

    // Still there for Bob, and no receipt was made.
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 1);
    assert_eq!(
        b.fetch(&id).await,
        (alice.address.clone(), b"for bob only".to_vec())
    );
    a.expect_nothing_more(1).await;
    relay.stop().await;
}

#[tokio::test]
async fn undelivered_mail_expires_and_the_sender_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let relay = short_retention(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut c = Client::registered(relay.addr, &carol).await;
    let (id1, id2) = (mid(1), mid(2));
    a.deposit_ok(&bob.address, &id1, b"expires").await;
    // Carol goes offline: she learns at her next sign-in.
    c.deposit_ok(&bob.address, &id2, b"expires too").await;
    c.close().await;

    // Alice is online: the sweep tells her.
    a.expect_receipt(&bob.address, &id1, ReceiptOutcome::Expired)
        .await;
    // Carol's mail was deposited later and may expire in a later sweep: she
    // hears at sign-in, or while signed in once it does.
    let mut c = Client::authenticated(relay.addr, &carol).await;
    c.expect_receipt(&bob.address, &id2, ReceiptOutcome::Expired)
        .await;
    assert_eq!(cached_count(dir.path()), 0);

    let mut b = Client::authenticated(relay.addr, &bob).await;
    b.expect_nothing_more(1).await;
    b.send(ClientFrame::Fetch {
        message_id: id1.clone(),
    })
    .await;
    b.expect_error(ErrorCode::NotFound).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_full_quota_refuses_the_deposit_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(dir.path(), |c| c.cache_quota_bytes = 10_000).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    Client::registered(relay.addr, &carol).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    a.deposit_ok(&bob.address, &mid(1), &sealed_bytes(1, 6000))
        .await;
    match a
        .deposit(&bob.address, &mid(2), &sealed_bytes(2, 6000))
        .await
    {
        ServerFrame::Error {
            code: ErrorCode::QuotaExceeded,
            message,
            ..
        } => assert!(
            message.contains("bob@localhost") && message.contains("full"),
            "{message}"
        ),
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
    assert_eq!(cached_count(dir.path()), 1);
    // Exactly up to the quota is fine; the quota is per recipient.
    a.deposit_ok(&bob.address, &mid(3), &sealed_bytes(3, 4000))
        .await;
    a.deposit_ok(&carol.address, &mid(4), &sealed_bytes(4, 6000))
        .await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let ids: BTreeSet<_> = b
        .expect_waiting()
        .await
        .into_iter()
        .map(|w| w.message_id)
        .collect();
    assert_eq!(ids, BTreeSet::from([mid(1), mid(3)]));
    relay.stop().await;
}

#[tokio::test]
async fn the_deposit_rate_is_limited_per_sender() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(dir.path(), |c| c.deposit_rate_per_minute = 3).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    for n in 0..3 {
        a.deposit_ok(&bob.address, &mid(n), b"x").await;
    }
    match a.deposit(&bob.address, &mid(3), b"x").await {
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message,
            ..
        } => assert!(message.contains("per minute"), "{message}"),
        other => panic!("expected rate_limited, got {other:?}"),
    }
    assert_eq!(cached_count(dir.path()), 3);
    // Another sender has its own allowance.
    let mut c = Client::registered(relay.addr, &carol).await;
    c.deposit_ok(&bob.address, &mid(10), b"x").await;
    relay.stop().await;
}

#[tokio::test]
async fn bad_envelopes_and_ids_are_malformed_frames_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let over = B64.encode(vec![7u8; MAX_SEALED_BYTES + 1]);
    for (i, sealed) in [
        "not base64!".to_string(),
        "AAE".to_string(),
        String::new(),
        over,
    ]
    .into_iter()
    .enumerate()
    {
        a.send(ClientFrame::Deposit {
            to: bob.address.clone(),
            message_id: mid(1),
            sealed,
        })
        .await;
        a.expect_error(ErrorCode::MalformedFrame).await;
        a.expect_nothing_more(i as u64).await;
    }
    a.send_text(
        r#"{"v":1,"type":"deposit","to":"bob@localhost","message_id":"no id","sealed":"AAEC"}"#,
    )
    .await;
    a.expect_error(ErrorCode::MalformedFrame).await;
    assert_eq!(cached_count(dir.path()), 0);
    // The largest envelope is accepted and comes back whole.
    let largest = sealed_bytes(9, MAX_SEALED_BYTES);
    a.deposit_ok(&bob.address, &mid(9), &largest).await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await[0].size, MAX_SEALED_BYTES as u64);
    assert_eq!(b.fetch(&mid(9)).await.1, largest);
    relay.stop().await;
}

#[tokio::test]
async fn a_deposit_for_an_unknown_address_or_before_sign_in_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::registered(relay.addr, &identity("alice", 1)).await;
    for to in ["ghost@localhost", "bob@elsewhere.example"] {
        let message = match a.deposit(&addr(to), &mid(1), b"x").await {
            ServerFrame::Error {
                code: ErrorCode::UnknownAddress,
                message,
                ..
            } => message,
            other => panic!("expected unknown_address, got {other:?}"),
        };
        assert!(message.contains(to), "{message}");
    }
    let mut anon = Client::connect(relay.addr).await;
    for frame in [
        ClientFrame::Deposit {
            to: addr("alice@localhost"),
            message_id: mid(1),
            sealed: "AAEC".into(),
        },
        ClientFrame::Fetch { message_id: mid(1) },
        ClientFrame::Release { message_id: mid(1) },
        ClientFrame::PublishKey {
            encryption_key: "ab".repeat(32),
        },
        ClientFrame::AckReceipt {
            to: addr("alice@localhost"),
            message_id: mid(1),
        },
    ] {
        anon.send(frame).await;
        anon.expect_error(ErrorCode::NotAuthenticated).await;
    }
    assert_eq!(cached_count(dir.path()), 0);
    relay.stop().await;
}

#[tokio::test]
async fn cached_mail_and_receipts_persist_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let relay = TestRelay::start(dir.path()).await;
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    a.deposit_ok(&bob.address, &mid(1), b"kept").await;
    a.deposit_ok(&bob.address, &mid(2), b"released").await;
    a.close().await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 2);
    b.release(&mid(2)).await;
    b.close().await;
    relay.stop().await;

    let relay = TestRelay::start(dir.path()).await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let items = b.expect_waiting().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_id, mid(1));
    assert_eq!(b.fetch(&mid(1)).await.1, b"kept");
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_receipt(&bob.address, &mid(2), ReceiptOutcome::Delivered)
        .await;
    relay.stop().await;
}

/// The real `relay` binary on a free port; killed (SIGKILL) when dropped.
struct RelayProcess {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl RelayProcess {
    async fn start(data_dir: &Path) -> RelayProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--web-root")
            .arg(data_dir.join("no-web-root"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the relay binary");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(a) = line.strip_prefix("relay listening on http://") {
                    return a.parse().unwrap();
                }
            }
            panic!("the relay exited before listening");
        })
        .await
        .expect("the relay listens in time");
        RelayProcess { child, addr }
    }

    /// SIGKILL, and wait for the process to be gone.
    async fn kill(mut self) {
        self.child.kill().await.expect("kill the relay");
    }
}

#[tokio::test]
async fn no_acknowledged_deposit_is_lost_when_the_relay_is_killed() {
    const TOTAL: u32 = 200;
    const KILL_AFTER: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let relay = RelayProcess::start(dir.path()).await;
    Client::registered(relay.addr, &bob).await.close().await;
    let a = Client::registered(relay.addr, &alice).await;

    // Alice streams every deposit without waiting, while reading acknowledgements; the
    // relay is killed mid-stream.
    let (mut sink, mut stream) = a.ws.split();
    let to = bob.address.clone();
    let writer = tokio::spawn(async move {
        for n in 0..TOTAL {
            let frame = ClientFrame::Deposit {
                to: to.clone(),
                message_id: mid(n),
                sealed: B64.encode(sealed_bytes(n, 1024)),
            };
            if sink.send(Message::text(frame.encode())).await.is_err() {
                break;
            }
        }
    });
    let (kill_now, kill_signal) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut kill_now = Some(kill_now);
        while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, stream.next()).await {
            let Message::Text(text) = message else {
                continue;
            };
            match parse_server_frame(text.as_str()).expect("server frame") {
                ServerFrame::Deposited { message_id, .. } => acknowledged.push(message_id),
                other => panic!("unexpected {other:?}"),
            }
            if acknowledged.len() == KILL_AFTER {
                if let Some(k) = kill_now.take() {
                    let _ = k.send(());
                }
            }
        }
        acknowledged
    });
    kill_signal.await.expect("enough deposits acknowledged");
    relay.kill().await;
    let acknowledged = reader.await.unwrap();
    writer.abort();
    assert!(acknowledged.len() >= KILL_AFTER);
    eprintln!(
        "{} of {TOTAL} deposits acknowledged before SIGKILL",
        acknowledged.len()
    );

    // Restarted on the same data directory, every acknowledged envelope is there, whole.
    let relay = RelayProcess::start(dir.path()).await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    // The waiting list may take several frames; the pong marks its end.
    b.send(ClientFrame::Ping { nonce: 1 }).await;
    let mut listed = BTreeSet::new();
    loop {
        match b.recv().await {
            ServerFrame::Waiting { items } => {
                listed.extend(items.into_iter().map(|w| w.message_id));
            }
            ServerFrame::Pong { nonce: 1 } => break,
            other => panic!("expected waiting mail, got {other:?}"),
        }
    }
    for id in &acknowledged {
        assert!(
            listed.contains(id),
            "{id} was acknowledged but is not listed"
        );
        let n = (0..TOTAL).find(|n| &mid(*n) == id).unwrap();
        assert_eq!(
            b.fetch(id).await,
            (alice.address.clone(), sealed_bytes(n, 1024))
        );
    }
    relay.kill().await;
}

#[tokio::test]
async fn a_co_recipient_cannot_preempt_a_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut c = Client::registered(relay.addr, &carol).await;
    let mut a = Client::registered(relay.addr, &alice).await;
    // Carol, a co-recipient, saw the Message-ID and deposits junk under it first.
    c.deposit_ok(&bob.address, &mid(1), b"junk").await;
    let frame = a.deposit(&bob.address, &mid(1), b"the real one").await;
    match frame {
        ServerFrame::Error {
            code: ErrorCode::Conflict,
            message,
            about,
        } => {
            assert!(message.contains("another sender"), "{message}");
            assert_eq!(
                about,
                Some(ErrorAbout {
                    to: Some(bob.address.clone()),
                    message_id: Some(mid(1)),
                    attachment: None,
                })
            );
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    // Her own deposit again is idempotent; Bob sees who really deposited.
    c.deposit_ok(&bob.address, &mid(1), b"junk").await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let waiting = b.expect_waiting().await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].from, carol.address);
    // Errors of fetch and release name the mail.
    b.send(ClientFrame::Fetch { message_id: mid(2) }).await;
    match b.recv().await {
        ServerFrame::Error {
            code: ErrorCode::NotFound,
            about,
            ..
        } => assert_eq!(about.and_then(|a| a.message_id), Some(mid(2))),
        other => panic!("expected not_found, got {other:?}"),
    }
    relay.stop().await;
}

/// Co-recipient holding: Carol's node holds a sealed copy for Bob and registers it. Bob is
/// told where it waits (at once if online, else at sign-in); only Bob can release it; the
/// release tells Alice (the sender) and Carol (the holder); the listing survives a restart
/// and expires like cached mail.
#[tokio::test]
async fn held_copies_are_listed_released_and_both_sender_and_holder_told() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol, dan) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
        identity("dan", 4),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    Client::registered(relay.addr, &alice).await.close().await;
    let mut d = Client::registered(relay.addr, &dan).await;
    let mut c = Client::registered(relay.addr, &carol).await;
    let id = mid(7);
    let hold = |to: &Address, from: &Address, size: u64| ClientFrame::Hold {
        to: to.clone(),
        message_id: id.clone(),
        from: from.clone(),
        size,
    };
    c.send(hold(&bob.address, &alice.address, 900)).await;
    assert_eq!(
        c.recv().await,
        ServerFrame::Held {
            to: bob.address.clone(),
            message_id: id.clone()
        }
    );
    // Registering again changes nothing; another holder does not replace Carol, and is
    // told its copy is not needed.
    c.send(hold(&bob.address, &alice.address, 900)).await;
    assert!(matches!(c.recv().await, ServerFrame::Held { .. }));
    d.send(hold(&bob.address, &alice.address, 900)).await;
    let about = d.expect_error_about(ErrorCode::Conflict).await;
    assert_eq!(
        about.and_then(|a| a.message_id),
        Some(id.clone()),
        "the error names the mail"
    );
    // Bad registrations: unknown recipient or sender, for oneself, oversized.
    let about = |to: &Address| {
        Some(ErrorAbout {
            to: Some(to.clone()),
            message_id: Some(id.clone()),
            attachment: None,
        })
    };
    for (frame, code, to) in [
        (
            hold(&addr("ghost@localhost"), &alice.address, 9),
            ErrorCode::UnknownAddress,
            addr("ghost@localhost"),
        ),
        (
            hold(&bob.address, &addr("ghost@localhost"), 9),
            ErrorCode::UnknownAddress,
            bob.address.clone(),
        ),
        (
            hold(&carol.address, &alice.address, 9),
            ErrorCode::MalformedFrame,
            carol.address.clone(),
        ),
        (
            hold(&bob.address, &alice.address, MAX_SEALED_BYTES as u64 + 1),
            ErrorCode::MalformedFrame,
            bob.address.clone(),
        ),
    ] {
        c.send(frame).await;
        assert_eq!(c.expect_error_about(code).await, about(&to));
    }
    relay.stop().await;

    // Across a restart, Bob is told at sign-in where it waits; the relay has no bytes.
    let relay = TestRelay::start(dir.path()).await;
    let mut c = Client::authenticated(relay.addr, &carol).await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let items = b.expect_waiting().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_id, id);
    assert_eq!(items[0].from, alice.address);
    assert_eq!(items[0].size, 900);
    assert_eq!(
        items[0].location,
        MailLocation::Peer {
            holder: carol.address.clone()
        }
    );
    b.send(ClientFrame::Fetch {
        message_id: id.clone(),
    })
    .await;
    b.expect_error(ErrorCode::NotFound).await;
    // Only Bob can release it.
    a.send(ClientFrame::Release {
        message_id: id.clone(),
    })
    .await;
    a.expect_error(ErrorCode::NotFound).await;
    b.release(&id).await;
    a.expect_receipt(&bob.address, &id, ReceiptOutcome::Delivered)
        .await;
    c.expect_receipt(&bob.address, &id, ReceiptOutcome::Delivered)
        .await;
    // Carol acknowledges; Alice is offline and is told again at her next sign-in.
    c.send(ClientFrame::AckReceipt {
        to: bob.address.clone(),
        message_id: id.clone(),
    })
    .await;
    a.close().await;
    c.close().await;
    let mut c = Client::authenticated(relay.addr, &carol).await;
    c.expect_nothing_more(3).await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.expect_receipt(&bob.address, &id, ReceiptOutcome::Delivered)
        .await;
    // Listed to an online recipient at once.
    let id2 = mid(8);
    c.send(ClientFrame::Hold {
        to: bob.address.clone(),
        message_id: id2.clone(),
        from: alice.address.clone(),
        size: 10,
    })
    .await;
    assert!(matches!(c.recv().await, ServerFrame::Held { .. }));
    let items = b.expect_waiting().await;
    assert_eq!(items[0].message_id, id2);
    relay.stop().await;
}

/// A held copy that fails verification at the recipient is refused alone: its listing is
/// dropped and its holder told; the sender is told only when the relay keeps no copy of
/// its own, which stays waiting. Nobody else can refuse it.
#[tokio::test]
async fn a_held_copy_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut c = Client::registered(relay.addr, &carol).await;
    let hold = |id: &MessageId| ClientFrame::Hold {
        to: bob.address.clone(),
        message_id: id.clone(),
        from: alice.address.clone(),
        size: 40,
    };
    let refuse_held = |id: &MessageId, holder: &Address| ClientFrame::Refuse {
        message_id: id.clone(),
        holder: Some(holder.clone()),
    };
    // `kept`: held by Carol and also in the relay cache; `only`: held by Carol alone.
    let (kept, only) = (mid(1), mid(2));
    a.deposit_ok(&bob.address, &kept, b"the relay's good copy")
        .await;
    for id in [&kept, &only] {
        c.send(hold(id)).await;
        assert!(matches!(c.recv().await, ServerFrame::Held { .. }));
    }
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 3);
    // Nobody else can refuse Bob's copies; Bob cannot refuse a copy Alice does not hold.
    c.send(refuse_held(&kept, &carol.address)).await;
    c.expect_error(ErrorCode::NotFound).await;
    b.send(refuse_held(&kept, &alice.address)).await;
    b.expect_error(ErrorCode::NotFound).await;

    b.send(refuse_held(&kept, &carol.address)).await;
    assert_eq!(
        b.recv().await,
        ServerFrame::Released {
            message_id: kept.clone()
        }
    );
    c.expect_receipt(&bob.address, &kept, ReceiptOutcome::Refused)
        .await;
    a.expect_nothing_more(1).await;
    // The relay's own copy still waits, and is delivered as usual.
    assert_eq!(b.fetch(&kept).await.1, b"the relay's good copy");
    b.release(&kept).await;
    a.expect_receipt(&bob.address, &kept, ReceiptOutcome::Delivered)
        .await;

    b.send(refuse_held(&only, &carol.address)).await;
    assert!(matches!(b.recv().await, ServerFrame::Released { .. }));
    c.expect_receipt(&bob.address, &only, ReceiptOutcome::Refused)
        .await;
    a.expect_receipt(&bob.address, &only, ReceiptOutcome::Refused)
        .await;
    // Not listed again.
    b.close().await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    b.expect_nothing_more(2).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_held_copy_listing_expires_and_sender_and_holder_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let relay = short_retention(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut c = Client::registered(relay.addr, &carol).await;
    let id = mid(9);
    c.send(ClientFrame::Hold {
        to: bob.address.clone(),
        message_id: id.clone(),
        from: alice.address.clone(),
        size: 10,
    })
    .await;
    assert!(matches!(c.recv().await, ServerFrame::Held { .. }));
    a.expect_receipt(&bob.address, &id, ReceiptOutcome::Expired)
        .await;
    c.expect_receipt(&bob.address, &id, ReceiptOutcome::Expired)
        .await;
    let mut b = Client::authenticated(relay.addr, &bob).await;
    b.expect_nothing_more(1).await;
    relay.stop().await;
}

/// `check` tells a sender whether the relay still keeps its deposit (or its receipt), so a
/// sender can deposit again what a reset relay lost.
#[tokio::test]
async fn a_sender_can_check_that_its_deposit_is_still_kept() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut c = Client::registered(relay.addr, &carol).await;
    let id = mid(11);
    let check = |id: &MessageId| ClientFrame::Check {
        to: bob.address.clone(),
        message_id: id.clone(),
    };
    let kept = ServerFrame::Deposited {
        to: bob.address.clone(),
        message_id: id.clone(),
    };
    async fn not_kept(cl: &mut Client, to: &Address, id: &MessageId) {
        assert_eq!(
            cl.expect_error_about(ErrorCode::NotFound).await,
            Some(ErrorAbout {
                to: Some(to.clone()),
                message_id: Some(id.clone()),
                attachment: None,
            })
        );
    }
    a.send(check(&id)).await;
    not_kept(&mut a, &bob.address, &id).await;
    a.deposit_ok(&bob.address, &id, b"kept").await;
    a.send(check(&id)).await;
    assert_eq!(a.recv().await, kept);
    // Someone else's question about it is answered for them: they deposited nothing.
    c.send(check(&id)).await;
    not_kept(&mut c, &bob.address, &id).await;
    // Released: the receipt still waits for Alice, so it is still "kept".
    let mut b = Client::authenticated(relay.addr, &bob).await;
    b.expect_waiting().await;
    b.release(&id).await;
    a.expect_receipt(&bob.address, &id, ReceiptOutcome::Delivered)
        .await;
    a.send(check(&id)).await;
    assert_eq!(a.recv().await, kept);
    a.send(ClientFrame::AckReceipt {
        to: bob.address.clone(),
        message_id: id.clone(),
    })
    .await;
    a.send(check(&id)).await;
    not_kept(&mut a, &bob.address, &id).await;
    relay.stop().await;
}

/// `withdraw` calls a deposit back (Cancel sending): only its sender can, only while it
/// waits; it is gone from the recipient's waiting list, no receipt is made, and a second
/// call back, or one for mail already fetched and released, is `not_found`.
#[tokio::test]
async fn a_sender_can_withdraw_its_deposit_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut c = Client::registered(relay.addr, &carol).await;
    let (called_back, kept) = (mid(21), mid(22));
    a.deposit_ok(&bob.address, &called_back, b"sent too soon")
        .await;
    a.deposit_ok(&bob.address, &kept, b"meant").await;
    let withdraw = |id: &MessageId| ClientFrame::Withdraw {
        to: bob.address.clone(),
        message_id: id.clone(),
    };
    let not_found_about = |id: &MessageId| {
        Some(ErrorAbout {
            to: Some(bob.address.clone()),
            message_id: Some(id.clone()),
            attachment: None,
        })
    };
    // Not Carol's to call back.
    c.send(withdraw(&called_back)).await;
    assert_eq!(
        c.expect_error_about(ErrorCode::NotFound).await,
        not_found_about(&called_back)
    );
    a.send(withdraw(&called_back)).await;
    assert_eq!(
        a.recv().await,
        ServerFrame::Withdrawn {
            to: bob.address.clone(),
            message_id: called_back.clone(),
        }
    );
    a.send(withdraw(&called_back)).await;
    assert_eq!(
        a.expect_error_about(ErrorCode::NotFound).await,
        not_found_about(&called_back)
    );
    // Bob finds only the other mail; the one called back cannot be fetched.
    let mut b = Client::authenticated(relay.addr, &bob).await;
    let waiting = b.expect_waiting().await;
    assert_eq!(
        waiting.iter().map(|w| &w.message_id).collect::<Vec<_>>(),
        vec![&kept]
    );
    b.send(ClientFrame::Fetch {
        message_id: called_back.clone(),
    })
    .await;
    b.expect_error(ErrorCode::NotFound).await;
    // Fetched and released: too late to call back; the receipt says delivered.
    b.release(&kept).await;
    a.expect_receipt(&bob.address, &kept, ReceiptOutcome::Delivered)
        .await;
    a.send(withdraw(&kept)).await;
    assert_eq!(
        a.expect_error_about(ErrorCode::NotFound).await,
        not_found_about(&kept)
    );
    a.expect_nothing_more(1).await;
    assert_eq!(cached_count(dir.path()), 0);
    relay.stop().await;
}

/// A mail called back takes the files its sender left with it for that recipient.
#[tokio::test]
async fn a_withdrawn_mail_takes_its_files_with_it() {
    use peermail_core::attach::CHUNK_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let to = bob.address.clone();
    let id = mid(60);
    let bytes: Vec<u8> = (0..CHUNK_BYTES + 7).map(|i| (i % 241) as u8).collect();
    let (att, hashes, chunks) = common::sealed_file(&bytes, 6);
    a.deposit_ok(&to, &id, b"sealed mail with the file's key")
        .await;
    a.send(ClientFrame::DepositFile {
        to: to.clone(),
        message_id: id.clone(),
        attachment: att.id,
        size: att.size,
        hashes: B64.encode(hashes.concat()),
    })
    .await;
    assert!(matches!(a.recv().await, ServerFrame::FileAccepted { .. }));
    for (i, data) in chunks.iter().enumerate() {
        a.send(ClientFrame::DepositChunk {
            to: to.clone(),
            attachment: att.id,
            index: i as u32,
            data: B64.encode(data),
        })
        .await;
        assert!(matches!(a.recv().await, ServerFrame::ChunkDeposited { .. }));
    }
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 1);
    b.send(ClientFrame::FetchFile { attachment: att.id }).await;
    assert!(matches!(b.recv().await, ServerFrame::FileInfo { .. }));

    a.send(ClientFrame::Withdraw {
        to: to.clone(),
        message_id: id.clone(),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerFrame::Withdrawn {
            to: to.clone(),
            message_id: id.clone()
        }
    );
    b.send(ClientFrame::FetchFile { attachment: att.id }).await;
    b.expect_error_about(ErrorCode::NotFound).await;
    relay.stop().await;
}

/// An inline attachment of a mail for the offline Bob: Alice announces it with its chunk
/// list and deposits its chunks (each checked and acknowledged); only Bob can fetch it, and
/// only once whole; it survives a restart; Bob releases it. Bad input is refused with
/// errors about the file, and files above the inline limit are not kept.
#[tokio::test]
async fn inline_attachments_are_kept_checked_fetched_by_the_recipient_only_and_released() {
    use peermail_core::attach::CHUNK_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(dir.path(), |c| {
        c.inline_limit_bytes = 3 * CHUNK_BYTES as u64
    })
    .await;
    let (alice, bob, mallory) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("mallory", 3),
    );
    Client::registered(relay.addr, &bob).await.close().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut m = Client::registered(relay.addr, &mallory).await;
    let to = bob.address.clone();
    let id = mid(50);

    // A real encrypted file of three chunks.
    let bytes: Vec<u8> = (0..2 * CHUNK_BYTES + 500)
        .map(|i| (i % 253) as u8)
        .collect();
    let (att, hashes, chunks) = common::sealed_file(&bytes, 5);
    let announce = |message_id: &MessageId, size: u64| ClientFrame::DepositFile {
        to: to.clone(),
        message_id: message_id.clone(),
        attachment: att.id,
        size,
        hashes: B64.encode(hashes.concat()),
    };
    let chunk = |index: u32, data: &[u8]| ClientFrame::DepositChunk {
        to: to.clone(),
        attachment: att.id,
        index,
        data: B64.encode(data),
    };

    // Files come after their mail.
    a.send(announce(&id, att.size)).await;
    let about = a.expect_error_about(ErrorCode::NotFound).await.unwrap();
    assert_eq!(
        (about.to.as_ref(), about.attachment),
        (Some(&to), Some(att.id))
    );
    a.deposit_ok(&to, &id, b"sealed mail with the file's key")
        .await;
    // A file above the inline limit is not kept.
    a.send(announce(&id, 3 * CHUNK_BYTES as u64 + 1)).await;
    a.expect_error_about(ErrorCode::TooLarge).await;
    // A chunk list that does not fit the size is malformed.
    a.send(announce(&id, 10)).await;
    a.expect_error_about(ErrorCode::MalformedFrame).await;

    a.send(announce(&id, att.size)).await;
    assert_eq!(
        a.recv().await,
        ServerFrame::FileAccepted {
            to: to.clone(),
            attachment: att.id,
            missing: vec![(0, 3)]
        }
    );
    // Chunks are checked: a swapped or altered one is refused.
    a.send(chunk(1, &chunks[0])).await;
    a.expect_error_about(ErrorCode::MalformedFrame).await;
    let mut bad = chunks[2].clone();
    bad[0] ^= 1;
    a.send(chunk(2, &bad)).await;
    a.expect_error_about(ErrorCode::MalformedFrame).await;
    // Mallory cannot add chunks to Alice's file.
    m.send(chunk(0, &chunks[0])).await;
    m.expect_error_about(ErrorCode::NotFound).await;
    a.send(chunk(2, &chunks[2])).await;
    assert_eq!(
        a.recv().await,
        ServerFrame::ChunkDeposited {
            to: to.clone(),
            attachment: att.id,
            index: 2
        }
    );
    // Not fetchable before it is whole.
    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 1);
    b.send(ClientFrame::FetchFile { attachment: att.id }).await;
    b.expect_error_about(ErrorCode::NotFound).await;
    // Resuming: announcing again says what is missing.
    a.send(announce(&id, att.size)).await;
    assert_eq!(
        a.recv().await,
        ServerFrame::FileAccepted {
            to: to.clone(),
            attachment: att.id,
            missing: vec![(0, 2)]
        }
    );
    for i in 0..2 {
        a.send(chunk(i, &chunks[i as usize])).await;
        assert!(matches!(a.recv().await, ServerFrame::ChunkDeposited { index, .. } if index == i));
    }
    b.close().await;
    // It survives a restart.
    relay.stop().await;
    let relay = TestRelay::start(dir.path()).await;

    // Mallory gets the same answer as for a file that does not exist.
    let mut m = Client::authenticated(relay.addr, &mallory).await;
    m.send(ClientFrame::FetchFile { attachment: att.id }).await;
    m.expect_error_about(ErrorCode::NotFound).await;
    m.send(ClientFrame::FetchChunks {
        attachment: att.id,
        ranges: vec![(0, 3)],
    })
    .await;
    m.expect_error_about(ErrorCode::NotFound).await;

    let mut b = Client::authenticated(relay.addr, &bob).await;
    assert_eq!(b.expect_waiting().await.len(), 1);
    b.send(ClientFrame::FetchFile { attachment: att.id }).await;
    match b.recv().await {
        ServerFrame::FileInfo {
            attachment,
            from,
            size,
            hashes: h,
        } => {
            assert_eq!(
                (attachment, &from, size),
                (att.id, &alice.address, att.size)
            );
            assert_eq!(B64.decode(h).unwrap(), hashes.concat());
        }
        other => panic!("expected the file, got {other:?}"),
    }
    b.send(ClientFrame::FetchChunks {
        attachment: att.id,
        ranges: vec![(0, 3)],
    })
    .await;
    let mut check = peermail_core::attach::FileCheck::new(&att);
    let mut got = Vec::new();
    for i in 0..3 {
        match b.recv().await {
            ServerFrame::FileChunk {
                attachment,
                index,
                data,
            } => {
                assert_eq!((attachment, index), (att.id, i));
                got.extend(check.push(index, &B64.decode(data).unwrap()).unwrap());
            }
            other => panic!("expected chunk {i}, got {other:?}"),
        }
    }
    check.finish().unwrap();
    assert_eq!(got, bytes, "the file is byte for byte the original");
    // Too many chunks at once is malformed.
    b.send(ClientFrame::FetchChunks {
        attachment: att.id,
        ranges: vec![(0, 65)],
    })
    .await;
    b.expect_error_about(ErrorCode::MalformedFrame).await;
    b.send(ClientFrame::ReleaseFile { attachment: att.id })
        .await;
    assert_eq!(
        b.recv().await,
        ServerFrame::FileReleased { attachment: att.id }
    );
    b.send(ClientFrame::FetchFile { attachment: att.id }).await;
    b.expect_error_about(ErrorCode::NotFound).await;
    relay.stop().await;
}
