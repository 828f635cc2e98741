//! The signaling endpoint, tested through the real relay router on 127.0.0.1:0 with
//! tokio-tungstenite clients.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peermail_core::address::Address;
use peermail_core::identity::{auth_message, register_message, Identity};
use peermail_core::wire::signal::{
    ClientFrame, ErrorCode, PresenceStatus, ServerFrame, SignalPayload, MAX_SIGNAL_FRAME,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{addr, identity, Client, TestRelay, WAIT};

impl Client {
    async fn expect_presence(&mut self, address: &Address, status: PresenceStatus) {
        assert_eq!(
            self.recv().await,
            ServerFrame::Presence {
                address: address.clone(),
                status
            },
            "presence of {address}"
        );
    }

    /// Reads until the server closes; returns the close frame's code and reason.
    async fn expect_close(&mut self) -> (CloseCode, String) {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code, frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => panic!("close without a code"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Reads until the connection ends, whatever way.
    async fn expect_end(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("end in time")
            {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    }
}

fn offer(sdp: &str) -> SignalPayload {
    SignalPayload::Offer { sdp: sdp.into() }
}

#[tokio::test]
async fn registration_is_accepted_and_authenticates_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let alice = identity("alice", 1);
    let mut c = Client::registered(relay.addr, &alice).await;
    // The session is authenticated: subscribing works.
    c.send(ClientFrame::Subscribe {
        addresses: vec![alice.address.clone()],
    })
    .await;
    c.expect_presence(&alice.address, PresenceStatus::Online)
        .await;
    // A second sign-in on the same session is refused.
    c.send(c.auth_frame(&alice)).await;
    c.expect_error(ErrorCode::AlreadyAuthenticated).await;
    c.send(c.register_frame(&identity("alice2", 2))).await;
    c.expect_error(ErrorCode::AlreadyAuthenticated).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_taken_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let _first = Client::registered(relay.addr, &identity("bob", 1)).await;
    let mut c = Client::connect(relay.addr).await;
    c.send(c.register_frame(&identity("bob", 2))).await;
    let message = c.expect_error(ErrorCode::NameTaken).await;
    assert_eq!(message, "the name bob is taken");
    // Still unauthenticated, and free to pick another name.
    c.register(&identity("bobby", 2)).await;
    relay.stop().await;
}

#[tokio::test]
async fn an_invalid_name_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut c = Client::connect(relay.addr).await;
    let id = identity("x", 1);
    for (name, reason) in [
        ("", "empty"),
        ("-dash", "may contain only"),
        ("has space", "may contain only"),
        (&"a".repeat(40), "longer than"),
    ] {
        let public_key = id.public_key();
        let signature = id.sign(&register_message(&c.nonce, name, &public_key));
        c.send(ClientFrame::Register {
            name: name.into(),
            public_key,
            signature,
        })
        .await;
        let message = c.expect_error(ErrorCode::InvalidName).await;
        assert!(message.contains(reason), "{name:?}: {message}");
    }
    c.ping(1).await;
    relay.stop().await;
}

#[tokio::test]
async fn registration_with_a_bad_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut c = Client::connect(relay.addr).await;
    let id = identity("carol", 1);
    // Signed for another challenge.
    let public_key = id.public_key();
    let signature = id.sign(&register_message("other-nonce", "carol", &public_key));
    c.send(ClientFrame::Register {
        name: "carol".into(),
        public_key,
        signature,
    })
    .await;
    c.expect_error(ErrorCode::BadSignature).await;
    // The name is still free.
    c.register(&id).await;
    relay.stop().await;
}

#[tokio::test]
async fn auth_is_accepted_after_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let dave = identity("dave", 4);
    let mut first = Client::registered(relay.addr, &dave).await;
    first.ws.close(None).await.unwrap();
    first.expect_end().await;
    let mut again = Client::authenticated(relay.addr, &dave).await;
    again.ping(7).await;
    relay.stop().await;
}

#[tokio::test]
async fn auth_with_a_bad_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let erin = identity("erin", 5);
    drop(Client::registered(relay.addr, &erin).await);
    let mut c = Client::connect(relay.addr).await;
    // Signed with another key.
    let impostor = Identity::from_seed(erin.address.clone(), [66; 32]);
    c.send(c.auth_frame(&impostor)).await;
    c.expect_error(ErrorCode::BadSignature).await;
    // Signed over an old challenge.
    c.send(ClientFrame::Auth {
        address: erin.address.clone(),
        signature: erin.sign(&auth_message("old", &erin.address)),
    })
    .await;
    c.expect_error(ErrorCode::BadSignature).await;
    // Not even hex.
    c.send(ClientFrame::Auth {
        address: erin.address.clone(),
        signature: "zz".into(),
    })
    .await;
    c.expect_error(ErrorCode::BadSignature).await;
    // Still not authenticated.
    c.send(ClientFrame::Subscribe {
        addresses: vec![erin.address.clone()],
    })
    .await;
    c.expect_error(ErrorCode::NotAuthenticated).await;
    relay.stop().await;
}

#[tokio::test]
async fn auth_for_an_unknown_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut c = Client::connect(relay.addr).await;
    c.send(c.auth_frame(&identity("nobody", 1))).await;
    let message = c.expect_error(ErrorCode::UnknownAddress).await;
    assert!(message.contains("nobody@localhost"), "{message}");
    // Another relay's address.
    let elsewhere = Identity::from_seed(addr("frank@other.example"), [1; 32]);
    c.send(c.auth_frame(&elsewhere)).await;
    c.expect_error(ErrorCode::UnknownAddress).await;
    relay.stop().await;
}

#[tokio::test]
async fn frames_before_authentication_are_refused_but_ping_works() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut c = Client::connect(relay.addr).await;
    c.ping(1).await;
    for frame in [
        ClientFrame::Subscribe {
            addresses: vec![addr("a@localhost")],
        },
        ClientFrame::Unsubscribe {
            addresses: vec![addr("a@localhost")],
        },
        ClientFrame::Signal {
            to: addr("a@localhost"),
            conn: "c".into(),
            payload: offer("v=0"),
        },
    ] {
        c.send(frame).await;
        c.expect_error(ErrorCode::NotAuthenticated).await;
    }
    c.ping(2).await;
    relay.stop().await;
}

#[tokio::test]
async fn presence_by_subscription_with_live_updates() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob, carol) = (
        identity("alice", 1),
        identity("bob", 2),
        identity("carol", 3),
    );
    let mut c = Client::registered(relay.addr, &carol).await;
    c.ws.close(None).await.unwrap();
    c.expect_end().await;
    let mut b = Client::registered(relay.addr, &bob).await;
    let mut a = Client::registered(relay.addr, &alice).await;
    let nobody = addr("nobody@localhost");

    a.send(ClientFrame::Subscribe {
        addresses: vec![bob.address.clone(), carol.address.clone(), nobody.clone()],
    })
    .await;
    a.expect_presence(&bob.address, PresenceStatus::Online)
        .await;
    a.expect_presence(&carol.address, PresenceStatus::Offline)
        .await;
    a.expect_presence(&nobody, PresenceStatus::Unknown).await;

    // Bob leaves: Alice is told. Carol comes: Alice is told.
    b.ws.close(None).await.unwrap();
    a.expect_presence(&bob.address, PresenceStatus::Offline)
        .await;
    let mut c = Client::authenticated(relay.addr, &carol).await;
    a.expect_presence(&carol.address, PresenceStatus::Online)
        .await;

    // After unsubscribing, Alice hears nothing more about Carol.
    a.send(ClientFrame::Unsubscribe {
        addresses: vec![carol.address.clone()],
    })
    .await;
    c.ws.close(None).await.unwrap();
    c.expect_end().await;
    let _b2 = Client::authenticated(relay.addr, &bob).await;
    // The next frame Alice sees is Bob's return, not Carol's departure.
    a.expect_presence(&bob.address, PresenceStatus::Online)
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn subscriptions_are_capped_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::registered(relay.addr, &identity("alice", 1)).await;
    let many: Vec<Address> = (0..1001)
        .map(|i| addr(&format!("u{i}@localhost")))
        .collect();
    a.send(ClientFrame::Subscribe {
        addresses: many.clone(),
    })
    .await;
    let message = a.expect_error(ErrorCode::RateLimited).await;
    assert!(message.contains("at most 1000"), "{message}");
    a.send(ClientFrame::Subscribe {
        addresses: many[..1000].to_vec(),
    })
    .await;
    for address in &many[..1000] {
        a.expect_presence(address, PresenceStatus::Unknown).await;
    }
    a.send(ClientFrame::Subscribe {
        addresses: many[1000..].to_vec(),
    })
    .await;
    a.expect_error(ErrorCode::RateLimited).await;
    a.send(ClientFrame::Unsubscribe {
        addresses: many[..1].to_vec(),
    })
    .await;
    a.send(ClientFrame::Subscribe {
        addresses: many[1000..].to_vec(),
    })
    .await;
    a.expect_presence(&many[1000], PresenceStatus::Unknown)
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn an_offer_is_forwarded_with_from_set_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut b = Client::registered(relay.addr, &bob).await;
    a.send(ClientFrame::Signal {
        to: bob.address.clone(),
        conn: "c1".into(),
        payload: offer("v=0 a"),
    })
    .await;
    assert_eq!(
        b.recv().await,
        ServerFrame::Signal {
            from: alice.address.clone(),
            conn: "c1".into(),
            payload: offer("v=0 a")
        }
    );
    let answer = SignalPayload::Answer {
        sdp: "v=0 b".into(),
    };
    b.send(ClientFrame::Signal {
        to: alice.address.clone(),
        conn: "c1".into(),
        payload: answer.clone(),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerFrame::Signal {
            from: bob.address.clone(),
            conn: "c1".into(),
            payload: answer
        }
    );
    // A "from" smuggled into the frame is ignored: the server sets it.
    let mut raw: serde_json::Value = serde_json::from_str(
        &ClientFrame::Signal {
            to: bob.address.clone(),
            conn: "c2".into(),
            payload: SignalPayload::Bye,
        }
        .encode(),
    )
    .unwrap();
    raw["from"] = "mallory@localhost".into();
    a.send_text(raw.to_string()).await;
    assert_eq!(
        b.recv().await,
        ServerFrame::Signal {
            from: alice.address.clone(),
            conn: "c2".into(),
            payload: SignalPayload::Bye
        }
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_signal_to_an_offline_peer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let mut b = Client::registered(relay.addr, &bob).await;
    b.ws.close(None).await.unwrap();
    b.expect_end().await;
    let mut a = Client::registered(relay.addr, &alice).await;
    // Bob's session may take a moment to be gone; watch for it.
    a.send(ClientFrame::Subscribe {
        addresses: vec![bob.address.clone()],
    })
    .await;
    if a.recv().await
        == (ServerFrame::Presence {
            address: bob.address.clone(),
            status: PresenceStatus::Online,
        })
    {
        a.expect_presence(&bob.address, PresenceStatus::Offline)
            .await;
    }
    a.send(ClientFrame::Signal {
        to: bob.address.clone(),
        conn: "c".into(),
        payload: offer("x"),
    })
    .await;
    let message = a.expect_error(ErrorCode::PeerOffline).await;
    assert!(message.contains("bob@localhost"), "{message}");
    relay.stop().await;
}

#[tokio::test]
async fn a_signal_to_an_unknown_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::registered(relay.addr, &identity("alice", 1)).await;
    for to in ["ghost@localhost", "bob@elsewhere.example"] {
        a.send(ClientFrame::Signal {
            to: addr(to),
            conn: "c".into(),
            payload: offer("x"),
        })
        .await;
        let message = a.expect_error(ErrorCode::UnknownAddress).await;
        assert!(message.contains(to), "{message}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut c = Client::connect(relay.addr).await;
    let cases: [(Message, ErrorCode); 6] = [
        (Message::text("{not json"), ErrorCode::MalformedFrame),
        (
            Message::text(r#"{"v":1,"type":"launch_missiles"}"#),
            ErrorCode::UnknownType,
        ),
        (
            Message::text(r#"{"v":2,"type":"ping","nonce":1}"#),
            ErrorCode::UnsupportedVersion,
        ),
        (
            Message::text(r#"{"type":"ping","nonce":1}"#),
            ErrorCode::MalformedFrame,
        ),
        (
            Message::text(r#"{"v":1,"type":"ping","nonce":"x"}"#),
            ErrorCode::MalformedFrame,
        ),
        (Message::binary(vec![1u8, 2, 3]), ErrorCode::MalformedFrame),
    ];
    for (i, (message, code)) in cases.into_iter().enumerate() {
        c.ws.send(message).await.unwrap();
        c.expect_error(code).await;
        c.ping(i as u64).await;
    }
    // The same after authentication.
    c.register(&identity("alice", 1)).await;
    c.send_text(r#"{"v":1,"type":"signal","to":"bob@localhost"}"#)
        .await;
    c.expect_error(ErrorCode::MalformedFrame).await;
    c.ping(99).await;
    relay.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_is_closed_with_policy_code() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut watcher = Client::registered(relay.addr, &identity("watcher", 1)).await;
    let big = identity("big", 2);
    let mut c = Client::registered(relay.addr, &big).await;
    watcher
        .send(ClientFrame::Subscribe {
            addresses: vec![big.address.clone()],
        })
        .await;
    watcher
        .expect_presence(&big.address, PresenceStatus::Online)
        .await;

    let sdp = "a".repeat(MAX_SIGNAL_FRAME + 1);
    c.send(ClientFrame::Signal {
        to: addr("watcher@localhost"),
        conn: "c".into(),
        payload: offer(&sdp),
    })
    .await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains(&MAX_SIGNAL_FRAME.to_string()), "{reason}");
    watcher
        .expect_presence(&big.address, PresenceStatus::Offline)
        .await;

    // A frame just under the limit is carried.
    let mut c = Client::authenticated(relay.addr, &big).await;
    watcher
        .expect_presence(&big.address, PresenceStatus::Online)
        .await;
    let mut frame = ClientFrame::Signal {
        to: addr("watcher@localhost"),
        conn: "c".into(),
        payload: offer(""),
    };
    let overhead = frame.encode().len();
    let sdp = "a".repeat(MAX_SIGNAL_FRAME - overhead);
    frame = ClientFrame::Signal {
        to: addr("watcher@localhost"),
        conn: "c".into(),
        payload: offer(&sdp),
    };
    assert_eq!(frame.encode().len(), MAX_SIGNAL_FRAME);
    c.send(frame).await;
    match watcher.recv().await {
        ServerFrame::Signal {
            payload: SignalPayload::Offer { sdp: got },
            ..
        } => assert_eq!(got.len(), sdp.len()),
        other => panic!("expected the offer, got {other:?}"),
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_by_the_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(dir.path(), |c| {
        // Short, yet long enough that a starved test thread does not drop the watcher.
        c.heartbeat_interval = Duration::from_millis(250);
        c.heartbeat_timeout = Duration::from_millis(1500);
    })
    .await;
    let (watcher, silent) = (identity("watcher", 1), identity("silent", 2));
    let mut w = Client::registered(relay.addr, &watcher).await;
    // Registered, then never read again: it never answers the server's pings.
    let s = Client::registered(relay.addr, &silent).await;
    w.send(ClientFrame::Subscribe {
        addresses: vec![silent.address.clone()],
    })
    .await;
    match w.recv().await {
        ServerFrame::Presence {
            status: PresenceStatus::Online,
            ..
        } => {
            w.expect_presence(&silent.address, PresenceStatus::Offline)
                .await
        }
        // Already dropped by the time the subscription arrived.
        ServerFrame::Presence {
            status: PresenceStatus::Offline,
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    // The watcher, which answers pings, is still served.
    w.ping(1).await;
    drop(s);
    relay.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_signs_in_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(dir.path(), |c| {
        c.heartbeat_interval = Duration::from_millis(250);
        c.heartbeat_timeout = Duration::from_millis(1500);
        c.sign_in_timeout = Duration::from_millis(2000);
    })
    .await;
    let mut c = Client::connect(relay.addr).await;
    // Lively (it answers heartbeats and pings) but anonymous.
    c.ping(1).await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("sign in"), "{reason}");
    relay.stop().await;
}

#[tokio::test]
async fn a_newer_session_replaces_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let mut w = Client::registered(relay.addr, &bob).await;
    let mut old = Client::registered(relay.addr, &alice).await;
    w.send(ClientFrame::Subscribe {
        addresses: vec![alice.address.clone()],
    })
    .await;
    w.expect_presence(&alice.address, PresenceStatus::Online)
        .await;

    let mut new = Client::authenticated(relay.addr, &alice).await;
    old.expect_error(ErrorCode::SessionReplaced).await;
    old.expect_end().await;
    // Presence stayed online: the next thing the watcher hears is the signal below.
    new.send(ClientFrame::Signal {
        to: bob.address.clone(),
        conn: "c".into(),
        payload: SignalPayload::Bye,
    })
    .await;
    assert_eq!(
        w.recv().await,
        ServerFrame::Signal {
            from: alice.address.clone(),
            conn: "c".into(),
            payload: SignalPayload::Bye
        }
    );
    // Signals to Alice reach the new session.
    w.send(ClientFrame::Signal {
        to: alice.address.clone(),
        conn: "d".into(),
        payload: SignalPayload::Bye,
    })
    .await;
    assert_eq!(
        new.recv().await,
        ServerFrame::Signal {
            from: bob.address.clone(),
            conn: "d".into(),
            payload: SignalPayload::Bye
        }
    );
    relay.stop().await;
}

#[tokio::test]
async fn others_are_served_while_one_client_misbehaves() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (alice, bob) = (identity("alice", 1), identity("bob", 2));
    let mut a = Client::registered(relay.addr, &alice).await;
    let mut b = Client::registered(relay.addr, &bob).await;
    let mut bad = Client::connect(relay.addr).await;
    for round in 0..50u64 {
        bad.send_text("garbage").await;
        bad.ws.send(Message::binary(vec![0u8; 100])).await.unwrap();
        a.send(ClientFrame::Signal {
            to: bob.address.clone(),
            conn: format!("c{round}"),
            payload: SignalPayload::Bye,
        })
        .await;
        assert_eq!(
            b.recv().await,
            ServerFrame::Signal {
                from: alice.address.clone(),
                conn: format!("c{round}"),
                payload: SignalPayload::Bye
            }
        );
    }
    for _ in 0..50 {
        bad.expect_error(ErrorCode::MalformedFrame).await;
        bad.expect_error(ErrorCode::MalformedFrame).await;
    }
    a.ping(1).await;
    bad.ping(2).await;
    relay.stop().await;
}

#[tokio::test]
async fn accounts_persist_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let alice = identity("alice", 1);
    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::registered(relay.addr, &alice).await;
    relay.stop().await;
    // The session was closed by the shutdown.
    a.expect_end().await;
    assert!(dir.path().join("relay.sqlite3").exists());

    let relay = TestRelay::start(dir.path()).await;
    let mut a = Client::authenticated(relay.addr, &alice).await;
    a.ping(1).await;
    let mut c = Client::connect(relay.addr).await;
    c.send(c.register_frame(&identity("alice", 9))).await;
    c.expect_error(ErrorCode::NameTaken).await;
    relay.stop().await;
}
