//! The native peer (`peermail_relay::native`) against the in-process relay, without data
//! channels: signing up and in, mail and an attachment (uploaded by the sender's node,
//! fetched by the recipient's) through the relay between two native nodes never online
//! together, a mailbox kept on disk, and signaling that comes back after the relay restarts. (Its WebRTC side is tested against
//! real Chromium in the e2e scenario `native_peer_exchanges_mail_with_a_browser`, inside a
//! private network namespace.) The nodes bind WebRTC to 127.0.0.1 only, so nothing here can
//! send peer traffic off the machine.

use std::future::Future;
use std::time::Duration;

use peermail_core::mail::{Draft, Priority};
use peermail_core::store::DeliveryState;
use peermail_core::{Event, Identity};
use peermail_relay::native::{NativeNode, NativeOptions};

// Only the in-process relay and identities of the shared scaffolding are used here.
#[allow(dead_code)]
mod common;

use common::{identity, TestRelay, WAIT};

fn options(relay: &TestRelay, id: &Identity, register: bool) -> NativeOptions {
    let mut o = NativeOptions::new(format!("http://{}", relay.addr), id.clone(), register);
    o.udp_addrs = vec!["127.0.0.1:0".to_string()];
    o.wait = WAIT;
    o
}

/// Polls `probe` until it answers `Some`, for at most [`WAIT`].
async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_up_then_signs_in_and_a_taken_name_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(data.path()).await;
    let dave = identity("dave", 41);

    let node = NativeNode::start(options(&relay, &dave, true))
        .await
        .unwrap();
    assert_eq!(node.address(), &dave.address);
    node.stop();

    let again = NativeNode::start(options(&relay, &dave, false))
        .await
        .unwrap();
    assert_eq!(again.address(), &dave.address);
    again.stop();

    // Someone else's keys under the same name.
    let impostor = identity("dave", 42);
    let refused = NativeNode::start(options(&relay, &impostor, true)).await;
    let err = format!("{:#}", refused.err().expect("a taken name is refused"));
    assert!(err.contains("registering dave@localhost"), "{err}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_reaches_an_offline_native_node_through_the_relay_cache() {
    let data = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(data.path()).await;
    let (dave, erin) = (identity("dave", 51), identity("erin", 52));
    // Dave's account exists, his node is not running.
    NativeNode::start(options(&relay, &dave, true))
        .await
        .unwrap()
        .stop();

    let erin_node = NativeNode::start(options(&relay, &erin, true))
        .await
        .unwrap();
    let id = erin_node
        .send(Draft {
            to: vec![dave.address.clone()],
            cc: Vec::new(),
            subject: "While you were out".into(),
            body: "Left with the relay.".into(),
            in_reply_to: None,
            priority: Priority::Normal,
            attachments: Vec::new(),
        })
        .await
        .unwrap();
    let state_of = |want: fn(&DeliveryState) -> bool| {
        let (node, id) = (&erin_node, id.clone());
        move || {
            let id = id.clone();
            async move {
                let out = node.outgoing().await.unwrap();
                let o = out.into_iter().find(|o| o.mail.message_id == id)?;
                want(&o.recipients[0].state).then_some(())
            }
        }
    };
    eventually(
        "erin's mail to be cached at the relay",
        state_of(|s| matches!(s, DeliveryState::CachedAtRelay { .. })),
    )
    .await;

    let dave_node = NativeNode::start(options(&relay, &dave, false))
        .await
        .unwrap();
    let mail = eventually("the mail in dave's inbox", || async {
        dave_node.inbox().await.unwrap().into_iter().next()
    })
    .await;
    assert_eq!(mail.mail.message_id, id);
    assert_eq!(mail.mail.from, erin.address);
    assert_eq!(mail.mail.body, "Left with the relay.");
    eventually(
        "the relay's receipt to mark it delivered",
        state_of(|s| matches!(s, DeliveryState::Delivered { .. })),
    )
    .await;
    dave_node.stop();

    // Dave's node keeps its mailbox in a directory: after a restart the mail is there at
    // once (the relay released its copy: it can only come from disk).
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&relay, &dave, false);
    o.data_dir = Some(dir.path().to_path_buf());
    let id2 = erin_node
        .send(Draft {
            to: vec![dave.address.clone()],
            cc: Vec::new(),
            subject: "Kept on disk".into(),
            body: "Second one.".into(),
            in_reply_to: None,
            priority: Priority::Normal,
            attachments: Vec::new(),
        })
        .await
        .unwrap();
    let dave_node = NativeNode::start(o.clone()).await.unwrap();
    eventually("the second mail in dave's inbox", || async {
        let inbox = dave_node.inbox().await.unwrap();
        inbox.iter().any(|r| r.mail.message_id == id2).then_some(())
    })
    .await;
    dave_node.stop();
    let dave_node = NativeNode::start(o).await.unwrap();
    let inbox = dave_node.inbox().await.unwrap();
    assert!(
        inbox.iter().any(|r| r.mail.message_id == id2),
        "the restarted node lost its mailbox: {inbox:?}"
    );
    dave_node.stop();
    erin_node.stop();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_comes_back_after_the_relay_restarts() {
    let data = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(data.path()).await;
    let addr = relay.addr;
    let dave = identity("dave", 61);
    let node = NativeNode::start(options(&relay, &dave, true))
        .await
        .unwrap();
    let mut events = node.events();
    relay.stop().await;

    // Same address, same data: the node's next session signs in by itself.
    let listener = eventually("the relay's port to be free again", || async {
        tokio::net::TcpListener::bind(addr).await.ok()
    })
    .await;
    let mut config = peermail_relay::Config::new(addr, data.path().to_path_buf());
    config.web_root = data.path().join("no-web-root");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(peermail_relay::run(listener, config, async {
        let _ = stopped.await;
    }));
    let authenticated = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(Event::Authenticated) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("the node's events ended: {e}"),
            }
        }
    })
    .await;
    assert!(
        authenticated.is_ok(),
        "the node did not sign in to the restarted relay"
    );
    assert!(node.query(|n, _, _| n.is_authenticated()).await.unwrap());
    node.stop();
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_reaches_an_offline_native_node_through_the_relay() {
    let data = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(data.path()).await;
    let (dave, erin) = (identity("dave", 71), identity("erin", 72));
    NativeNode::start(options(&relay, &dave, true))
        .await
        .unwrap()
        .stop();

    // Erin's node copies the (inline-size) file to the relay for the offline dave.
    let erin_node = NativeNode::start(options(&relay, &erin, true))
        .await
        .unwrap();
    let file: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let att = erin_node
        .attach("plan.txt", "text/plain", file.clone())
        .await
        .unwrap();
    assert!(att.inline, "200 kB is under the relay's inline limit");
    let id = erin_node
        .send(Draft {
            to: vec![dave.address.clone()],
            cc: Vec::new(),
            subject: "The plan".into(),
            body: "Attached.".into(),
            in_reply_to: None,
            priority: Priority::Normal,
            attachments: vec![att.clone()],
        })
        .await
        .unwrap();
    eventually("the relay to keep erin's file for dave", || async {
        let out = erin_node.outgoing().await.unwrap();
        let o = out.into_iter().find(|o| o.mail.message_id == id)?;
        o.relay_has
            .contains(&(att.id, dave.address.clone()))
            .then_some(())
    })
    .await;
    // Erin goes away: dave can only get the file from the relay.
    erin_node.stop();

    let dave_node = NativeNode::start(options(&relay, &dave, false))
        .await
        .unwrap();
    let mail = eventually("the mail in dave's inbox", || async {
        dave_node.inbox().await.unwrap().into_iter().next()
    })
    .await;
    assert_eq!(mail.mail.attachments, vec![att.clone()]);
    let att_id = att.id;
    eventually("dave's node to complete the attachment", || async {
        let state = dave_node
            .query(move |n, _, _| n.download(&att_id).map(|d| d.state))
            .await
            .unwrap();
        match state {
            Some(peermail_core::store::DownloadState::Complete { .. }) => Some(()),
            Some(peermail_core::store::DownloadState::Failed { reason, .. }) => {
                panic!("the download failed: {reason}")
            }
            _ => None,
        }
    })
    .await;
    assert_eq!(dave_node.attachment(att).await.unwrap(), file);
    assert_eq!(
        dave_node.traffic(&erin.address),
        Default::default(),
        "nothing went over data channels"
    );
    dave_node.stop();
    relay.stop().await;
}
