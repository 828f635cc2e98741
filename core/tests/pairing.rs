//! Pairing and unpairing a storage node from the person's node: the frames sent, the
//! answers applied, and a clear failure (never a request left hanging) when the relay is
//! not connected, the connection drops before it answers, or the relay does not know
//! unpairing.

use peermail_core::identity::auth_message;
use peermail_core::node::{Command, Config, Event, Input, Node, Output};
use peermail_core::store::MemoryStore;
use peermail_core::wire::signal::{ClientFrame, ServerFrame};
use peermail_core::{Address, Identity};

fn a(s: &str) -> Address {
    s.parse().unwrap()
}

/// Feeds `input`; the frames for the relay and the events that came of it.
fn feed(n: &mut Node, input: Input) -> (Vec<ClientFrame>, Vec<Event>) {
    n.handle(input, 1_000);
    let (mut frames, mut events) = (Vec::new(), Vec::new());
    while let Some(o) = n.poll_output() {
        match o {
            Output::ToServer(f) => frames.push(f),
            Output::Event(e) => events.push(e),
            Output::Store { op, .. } => n.handle(Input::Stored { op, result: Ok(()) }, 1_000),
            _ => {}
        }
    }
    (frames, events)
}

/// Alice's node, signed in to the relay.
fn signed_in() -> Node {
    let me = Identity::from_seed(a("alice@h"), [1; 32]);
    let mut n = Node::new(
        me.clone(),
        Config::default(),
        MemoryStore::new().snapshot(),
        1_000,
        [2; 32],
    );
    feed(&mut n, Input::SignalingConnected);
    let (frames, _) = feed(
        &mut n,
        Input::Server(ServerFrame::Challenge {
            nonce: "n1".into(),
            domain: "h".into(),
            inline_limit: None,
        }),
    );
    assert_eq!(
        frames,
        vec![ClientFrame::Auth {
            address: me.address.clone(),
            signature: me.sign(&auth_message("n1", &me.address)),
        }]
    );
    feed(
        &mut n,
        Input::Server(ServerFrame::Authenticated {
            address: me.address.clone(),
        }),
    );
    n
}

fn failures(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PairingFailed { reason } | Event::UnpairFailed { reason } => {
                Some(reason.as_str())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn pairing_then_unpairing_applies_the_relays_answers() {
    let mut n = signed_in();
    let node = a("alice@h").storage_node();
    let (frames, _) = feed(
        &mut n,
        Input::Command(Command::PairNode("1234-5678".into())),
    );
    assert_eq!(
        frames,
        vec![ClientFrame::PairNode {
            code: "1234-5678".into()
        }]
    );
    let (_, events) = feed(
        &mut n,
        Input::Server(ServerFrame::NodePaired {
            owner: a("alice@h"),
            node: node.clone(),
        }),
    );
    assert!(events.contains(&Event::NodePaired { node: node.clone() }));
    assert_eq!(n.own_node(), Some(&node));

    let (frames, _) = feed(&mut n, Input::Command(Command::UnpairNode));
    assert_eq!(frames, vec![ClientFrame::UnpairNode]);
    let (_, events) = feed(
        &mut n,
        Input::Server(ServerFrame::NodeUnpaired {
            owner: a("alice@h"),
            node: node.clone(),
        }),
    );
    assert!(events.contains(&Event::NodeUnpaired { node }));
    assert_eq!(n.own_node(), None);
    // Both were answered: a later disconnection reports nothing.
    let (_, events) = feed(&mut n, Input::SignalingDisconnected);
    assert!(failures(&events).is_empty(), "{events:?}");
}

#[test]
fn requests_fail_clearly_without_a_connection_or_when_it_drops_before_the_answer() {
    let mut n = signed_in();
    feed(
        &mut n,
        Input::Command(Command::PairNode("1234-5678".into())),
    );
    feed(&mut n, Input::Command(Command::UnpairNode));
    let (_, events) = feed(&mut n, Input::SignalingDisconnected);
    let reasons = failures(&events);
    assert_eq!(reasons.len(), 2, "{events:?}");
    assert!(reasons
        .iter()
        .all(|r| r.contains("dropped before it answered")));
    // Reported once: a second disconnection says nothing more.
    let (_, events) = feed(&mut n, Input::SignalingDisconnected);
    assert!(failures(&events).is_empty(), "{events:?}");

    // Not connected: nothing is sent, and the person is told at once.
    for c in [Command::PairNode("1234-5678".into()), Command::UnpairNode] {
        let (frames, events) = feed(&mut n, Input::Command(c));
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(
            failures(&events),
            vec!["not connected to the relay; try again once connected"]
        );
    }
}

/// A relay from before unpairing does not know the request: the page says so, and the
/// request is not left open.
#[test]
fn a_relay_that_cannot_unpair_says_so() {
    let mut n = signed_in();
    let (frames, _) = feed(&mut n, Input::Command(Command::UnpairNode));
    let text = format!(
        r#"{{"v":1,"type":"error","code":"unknown_type","message":"unknown frame type \"{}\""}}"#,
        "unpair_node"
    );
    assert_eq!(frames, vec![ClientFrame::UnpairNode]);
    let error = peermail_core::wire::signal::parse_server_frame(&text).unwrap();
    let (_, events) = feed(&mut n, Input::Server(error));
    assert_eq!(
        failures(&events),
        vec![r#"this relay cannot unpair storage nodes (unknown frame type "unpair_node")"#]
    );
    let (_, events) = feed(&mut n, Input::SignalingDisconnected);
    assert!(failures(&events).is_empty(), "{events:?}");
}
