//! Delivery logic of the `Node`, proven in the in-process world with simulated time.

mod sim;

use peermail_core::store::DeliveryState;
use peermail_core::wire::peer::PeerFrame;
use proptest::prelude::*;
use sim::{addr, World};

fn state_of(
    w: &World,
    from: &peermail_core::Address,
    id: &peermail_core::MessageId,
    to: &peermail_core::Address,
) -> DeliveryState {
    w.outgoing(from, id)
        .recipients
        .into_iter()
        .find(|r| &r.address == to)
        .expect("recipient")
        .state
}

#[test]
fn online_recipient_gets_mail_directly() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    let id = w.send(&alice, &[&bob], &[], "hello");
    assert!(w.inbox_has(&bob, &id));
    assert_eq!(w.received_count(&bob, &id), 1);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
    assert!(!w.outgoing(&alice, &id).is_pending(), "moves to Sent");
}

#[test]
fn offline_recipient_gets_mail_exactly_once_when_both_online() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    let id = w.send(&alice, &[&bob], &[], "while you were out");
    assert_eq!(state_of(&w, &alice, &id, &bob), DeliveryState::Waiting);
    assert!(w.outgoing(&alice, &id).is_pending(), "stays in the Outbox");
    w.advance(60_000);
    assert_eq!(state_of(&w, &alice, &id, &bob), DeliveryState::Waiting);
    w.online(&bob);
    assert!(w.inbox_has(&bob, &id));
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
    // Bob goes away and comes back; Alice restarts: nothing is delivered twice.
    w.offline(&bob);
    w.offline(&alice);
    w.online(&alice);
    w.online(&bob);
    w.advance(120_000);
    assert_eq!(w.received_count(&bob, &id), 1);
}

#[test]
fn sender_restart_keeps_outbox_and_delivers_later() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    let id = w.send(&alice, &[&bob], &[], "persisted");
    w.offline(&alice);
    w.online(&bob);
    w.advance(10_000);
    assert!(
        !w.inbox_has(&bob, &id),
        "no relay cache in this design step: the sender must be online"
    );
    w.online(&alice);
    assert!(w.inbox_has(&bob, &id));
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
}

#[test]
fn lost_acknowledgement_then_retry_yields_one_copy() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    let mut acks_dropped = 0;
    w.drop_rule = Some(Box::new(move |_, _, f| {
        if matches!(f, PeerFrame::Ack { .. }) && acks_dropped == 0 {
            acks_dropped += 1;
            true
        } else {
            false
        }
    }));
    let id = w.send(&alice, &[&bob], &[], "ack goes missing");
    assert!(w.inbox_has(&bob, &id), "bob stored it");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Sending { attempts: 1, .. }
    ));
    w.advance(w.config.ack_timeout + 1);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
    assert_eq!(w.dropped, 1);
    assert_eq!(
        w.received_count(&bob, &id),
        1,
        "the retry is recognised by Message-ID"
    );
    assert_eq!(w.users[&bob].store.snapshot().inbox.len(), 1);
}

#[test]
fn lost_mail_frame_is_resent() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    let mut n = 0;
    w.drop_rule = Some(Box::new(move |_, _, f| {
        n += 1;
        matches!(f, PeerFrame::Mail(_)) && n == 1
    }));
    let id = w.send(&alice, &[&bob], &[], "first copy lost");
    assert!(!w.inbox_has(&bob, &id));
    w.advance(w.config.ack_timeout + 1);
    assert!(w.inbox_has(&bob, &id));
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
}

#[test]
fn three_recipients_one_unknown() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.register("alice"), w.register("bob"), w.register("carol"));
    let nobody = addr("nobody");
    w.online(&alice);
    w.online(&bob);
    let id = w.send(&alice, &[&bob, &nobody], &[&carol], "three of us");
    match state_of(&w, &alice, &id, &nobody) {
        DeliveryState::Failed { reason, .. } => {
            assert!(reason.contains("no such address"), "{reason}")
        }
        other => panic!("unknown address must fail, got {other:?}"),
    }
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
    assert_eq!(state_of(&w, &alice, &id, &carol), DeliveryState::Waiting);
    assert!(w.outgoing(&alice, &id).is_pending());
    w.online(&carol);
    assert!(w.inbox_has(&carol, &id));
    assert!(
        !w.outgoing(&alice, &id).is_pending(),
        "all recipients final: Sent"
    );
    assert_eq!(
        w.received_count(&bob, &id) + w.received_count(&carol, &id),
        2
    );
}

#[test]
fn connection_drop_mid_delivery_requeues_and_recovers() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    // Every mail frame is lost while Bob is about to leave.
    w.drop_rule = Some(Box::new(|_, _, f| matches!(f, PeerFrame::Mail(_))));
    let id = w.send(&alice, &[&bob], &[], "dropped mid-flight");
    w.offline(&bob);
    assert_eq!(state_of(&w, &alice, &id, &bob), DeliveryState::Waiting);
    w.drop_rule = None;
    w.online(&bob);
    w.advance(10_000);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
    assert_eq!(w.received_count(&bob, &id), 1);
}

#[test]
fn forged_sender_is_rejected() {
    use peermail_core::node::{Input, Output};
    use peermail_core::store::Snapshot;
    use peermail_core::{Config, Identity, Mail, MessageId, Node};
    let bob = addr("bob");
    let mut node = Node::new(
        Identity::from_seed(bob.clone(), [9; 32]),
        Config::default(),
        Snapshot::default(),
        0,
        [0; 32],
    );
    let mail = Mail {
        message_id: MessageId::new([1; 16], "relay.test"),
        from: addr("alice"),
        to: vec![bob.clone()],
        cc: vec![],
        subject: "forged".into(),
        date: 0,
        body: String::new(),
        in_reply_to: None,
        references: vec![],
        priority: Default::default(),
        attachments: vec![],
    };
    node.handle(
        Input::Frame {
            peer: addr("mallory"),
            bytes: PeerFrame::Mail(mail).encode().unwrap(),
        },
        1,
    );
    node.handle(
        Input::Frame {
            peer: addr("mallory"),
            bytes: vec![1, 2, 3],
        },
        1,
    );
    let outs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(o, Output::ToPeer { bytes, .. }
        if matches!(PeerFrame::decode(bytes), Ok(PeerFrame::Reject { .. })))));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Store { .. })),
        "nothing stored: {outs:?}"
    );
    assert!(node.inbox().is_empty());
}

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Step {
    Toggle(usize),
    Send {
        from: usize,
        to: Vec<usize>,
    },
    Wait(u64),
    /// Switch the relay model's cache (only in schedules that use it).
    Cache(sim::CacheMode),
}

fn toggle_send_wait(max_wait: u64) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..4).prop_map(Step::Toggle),
        2 => (0usize..4, proptest::collection::vec(0usize..4, 1..4)).prop_map(|(from, to)| Step::Send { from, to }),
        2 => (0u64..max_wait).prop_map(Step::Wait),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    toggle_send_wait(30_000)
}

/// Loses every `loss + 2`-th peer frame (none when `loss` is 0).
fn lossy(w: &mut World, loss: u32) {
    let mut counter = 0u32;
    w.drop_rule = Some(Box::new(move |_, _, _| {
        counter = counter.wrapping_add(1);
        loss > 0 && counter % (loss + 2) == 0
    }));
}

/// Plays `steps` on `users`; returns (sender, Message-ID) of every mail sent.
fn play(
    w: &mut World,
    users: &[peermail_core::Address],
    steps: Vec<Step>,
) -> Vec<(peermail_core::Address, peermail_core::MessageId)> {
    let mut sent = Vec::new();
    for (i, s) in steps.into_iter().enumerate() {
        match s {
            Step::Toggle(u) => {
                if w.is_online(&users[u]) {
                    w.offline(&users[u])
                } else {
                    w.online(&users[u])
                }
            }
            Step::Send { from, to } => {
                if w.is_online(&users[from]) {
                    let to: Vec<_> = to.iter().map(|t| &users[*t]).collect();
                    let id = w.send(&users[from], &to, &[], &format!("mail {i}"));
                    sent.push((users[from].clone(), id));
                }
            }
            Step::Wait(ms) => w.advance(ms),
            Step::Cache(m) => w.cache_mode = m,
        }
    }
    sent
}

/// Every mail sent is delivered to every recipient, received exactly once.
fn assert_all_delivered(
    w: &World,
    sent: &[(peermail_core::Address, peermail_core::MessageId)],
) -> Result<(), TestCaseError> {
    for (from, id) in sent {
        let o = w.outgoing(from, id);
        prop_assert!(!o.is_pending(), "{id} still pending: {:?}", o.recipients);
        for r in &o.recipients {
            prop_assert!(
                matches!(r.state, DeliveryState::Delivered { .. }),
                "{:?}",
                r
            );
            prop_assert!(w.inbox_has(&r.address, id));
            prop_assert_eq!(
                w.received_count(&r.address, id),
                1,
                "{} got {} copies",
                r.address,
                id
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the schedule of people coming and going and frames being lost, once everyone
    /// is online long enough, every recipient holds every mail, received exactly once.
    #[test]
    fn every_mail_arrives_exactly_once(steps in proptest::collection::vec(step(), 1..40), loss in 0u32..4) {
        let mut w = World::new();
        let users: Vec<_> = ["alice", "bob", "carol", "dave"].iter().map(|n| w.register(n)).collect();
        lossy(&mut w, loss);
        let sent = play(&mut w, &users, steps);
        w.drop_rule = None;
        for u in &users { w.online(u); }
        w.advance(5 * 60_000);
        assert_all_delivered(&w, &sent)?;
    }
}

/// A node whose signaling socket dropped keeps using an open data channel, and a due
/// retransmission is always cleared by the next tick (no deadline stays in the past).
#[test]
fn open_channel_is_used_while_signaling_is_down() {
    use peermail_core::node::{Command, Input, Output};
    use peermail_core::store::Snapshot;
    use peermail_core::wire::signal::{PresenceStatus, ServerFrame};
    use peermail_core::{Config, Draft, Identity, Node};
    let (alice, bob) = (addr("alice"), addr("bob"));
    let config = Config::default();
    let mut node = Node::new(
        Identity::from_seed(alice.clone(), [1; 32]),
        config.clone(),
        Snapshot::default(),
        0,
        [0; 32],
    );
    node.handle(Input::SignalingConnected, 0);
    node.handle(
        Input::Server(ServerFrame::Authenticated {
            address: alice.clone(),
        }),
        0,
    );
    node.handle(
        Input::Server(ServerFrame::Presence {
            address: bob.clone(),
            status: PresenceStatus::Online,
        }),
        0,
    );
    node.handle(Input::PeerConnected(bob.clone()), 0);
    let draft = Draft {
        to: vec![bob.clone()],
        subject: "s".into(),
        ..Draft::default()
    };
    node.handle(
        Input::Command(Command::Send {
            draft,
            random: [5; 16],
        }),
        10,
    );
    let sends = |node: &mut Node| {
        std::iter::from_fn(|| node.poll_output())
            .filter(|o| matches!(o, Output::ToPeer { .. }))
            .count()
    };
    assert_eq!(sends(&mut node), 1);
    node.handle(Input::SignalingDisconnected, 20);
    let due = node.poll_timeout().expect("a retransmission is scheduled");
    node.handle(Input::Tick, due);
    assert_eq!(sends(&mut node), 1, "resent over the open channel");
    assert!(
        node.poll_timeout().expect("next retransmission") > due,
        "the deadline moved forward"
    );
}

/// When a recipient closes its page mid-delivery, its in-flight mail shows as waiting again.
#[test]
fn recipient_leaving_requeues_in_flight_mail() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    w.drop_rule = Some(Box::new(|_, _, f| matches!(f, PeerFrame::Mail(_))));
    let id = w.send(&alice, &[&bob], &[], "in flight");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Sending { .. }
    ));
    w.offline(&bob);
    assert_eq!(state_of(&w, &alice, &id, &bob), DeliveryState::Waiting);
}

// ----- the relay cache -----

use peermail_core::node::Event;
use sim::CacheMode;

/// Alice and Carol online; Bob signed in once (published his key) and left; then the
/// relay cache behaves as `mode`.
fn bob_away(
    mode: CacheMode,
) -> (
    World,
    peermail_core::Address,
    peermail_core::Address,
    peermail_core::Address,
) {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob, carol) = (w.register("alice"), w.register("bob"), w.register("carol"));
    w.online(&bob);
    w.offline(&bob);
    w.cache_mode = mode;
    w.online(&alice);
    w.online(&carol);
    (w, alice, bob, carol)
}

fn rejected(w: &World, who: &peermail_core::Address) -> bool {
    w.users[who]
        .events
        .iter()
        .any(|e| matches!(e, Event::Rejected { .. }))
}

#[test]
fn offline_recipient_gets_mail_from_the_relay_cache_while_the_sender_is_gone() {
    let (mut w, alice, bob, carol) = bob_away(CacheMode::Up);
    let id = w.send(&alice, &[&bob, &carol], &[], "sealed for you");
    assert!(w.inbox_has(&carol, &id), "Carol online: direct");
    assert!(matches!(
        state_of(&w, &alice, &id, &carol),
        DeliveryState::Delivered { .. }
    ));
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::CachedAtRelay { .. }
    ));
    assert!(w.outgoing(&alice, &id).is_pending(), "stays in the Outbox");
    assert_eq!(w.cache.len(), 1);
    let sealed = &w.cache.values().next().unwrap().sealed;
    assert!(!sealed.contains("sealed for you"));
    w.offline(&alice);
    w.online(&bob);
    assert!(w.inbox_has(&bob, &id), "Bob got it without Alice");
    assert_eq!(w.received_count(&bob, &id), 1);
    assert!(w.cache.is_empty(), "released after storing");
    assert!(!rejected(&w, &bob));
    w.advance(120_000);
    w.online(&alice);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
    assert!(!w.outgoing(&alice, &id).is_pending(), "moves to Sent");
    assert!(
        w.receipts.values().all(|r| r.is_empty()),
        "receipt acknowledged"
    );
    // Everyone comes and goes: nothing is delivered twice.
    w.offline(&bob);
    w.online(&bob);
    w.offline(&alice);
    w.online(&alice);
    w.advance(120_000);
    assert_eq!(w.received_count(&bob, &id), 1);
    assert_eq!(w.received_count(&carol, &id), 1);
    assert_eq!(w.deposits, 1);
}

#[test]
fn sender_online_sees_the_receipt_at_once() {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&bob);
    w.offline(&bob);
    w.online(&alice);
    let id = w.send(&alice, &[&bob], &[], "x");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::CachedAtRelay { .. }
    ));
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &id), 1);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
}

#[test]
fn tampered_cached_envelope_is_refused_not_stored_and_its_sender_told() {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&bob);
    w.offline(&bob);
    w.online(&alice);
    let id = w.send(&alice, &[&bob], &[], "to be tampered with");
    w.offline(&alice);
    w.tamper_cached(&bob, &id);
    w.online(&bob);
    assert!(!w.inbox_has(&bob, &id));
    assert_eq!(w.received_count(&bob, &id), 0);
    assert!(rejected(&w, &bob), "{:?}", w.users[&bob].events);
    // Refused at the relay: deleted there, so it is not offered (and rejected) again.
    assert!(w.cache.is_empty(), "refused envelopes leave the cache");
    w.offline(&bob);
    w.users.get_mut(&bob).unwrap().events.clear();
    w.online(&bob);
    assert!(!rejected(&w, &bob), "{:?}", w.users[&bob].events);
    assert!(!w.inbox_has(&bob, &id));
    // The sender learns it failed (and can send again) instead of waiting until it expires.
    w.online(&alice);
    match state_of(&w, &alice, &id, &bob) {
        DeliveryState::Failed { reason, .. } => {
            assert!(reason.contains("refused"), "{reason}")
        }
        s => panic!("{s:?}"),
    }
    assert!(
        w.receipts.values().all(|r| r.is_empty()),
        "receipt acknowledged"
    );
}

#[test]
fn quota_refusal_keeps_the_mail_waiting_and_it_goes_out_later() {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&bob);
    w.offline(&bob);
    w.cache_mode = CacheMode::Full;
    w.online(&alice);
    let id = w.send(&alice, &[&bob], &[], "big");
    assert_eq!(state_of(&w, &alice, &id, &bob), DeliveryState::Waiting);
    let refusal = w.users[&alice]
        .node
        .as_ref()
        .unwrap()
        .refusal(&id, &bob)
        .map(str::to_string);
    assert!(refusal.is_some_and(|r| r.contains("full")));
    w.advance(30_000);
    assert_eq!(state_of(&w, &alice, &id, &bob), DeliveryState::Waiting);
    w.cache_mode = CacheMode::Up;
    w.advance(60_000);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::CachedAtRelay { .. }
    ));
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &id), 1);
}

#[test]
fn expired_in_the_cache_fails_with_a_reason() {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&bob);
    w.offline(&bob);
    w.online(&alice);
    let id = w.send(&alice, &[&bob], &[], "old");
    w.offline(&alice);
    w.expire_cached(&bob, &id);
    w.online(&alice);
    match state_of(&w, &alice, &id, &bob) {
        DeliveryState::Failed { reason, .. } => assert!(reason.contains("expired"), "{reason}"),
        s => panic!("{s:?}"),
    }
    assert!(w.receipts.values().all(|r| r.is_empty()));
}

#[test]
fn a_changed_key_is_reported_and_used() {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&bob);
    w.offline(&bob);
    w.online(&alice);
    let first = w.send(&alice, &[&bob], &[], "first");
    w.offline(&alice);
    // Bob's account gets new keys (say, a new device); he fetches the first mail.
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &first), 1);
    w.offline(&bob);
    w.users.get_mut(&bob).unwrap().identity =
        peermail_core::Identity::from_seed(bob.clone(), [77; 32]);
    w.online(&bob);
    w.offline(&bob);
    w.online(&alice);
    let second = w.send(&alice, &[&bob], &[], "second");
    assert!(w.users[&alice]
        .events
        .iter()
        .any(|e| matches!(e, Event::KeyChanged { address } if address == &bob)));
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &second), 1, "sealed to the new key");
}

fn cache_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        7 => toggle_send_wait(90_000),
        1 => prop_oneof![Just(CacheMode::Up), Just(CacheMode::Down), Just(CacheMode::Full)].prop_map(Step::Cache),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// With the relay cache in use, going down and filling up at random, and senders leaving
    /// right after sending: every recipient gets every mail exactly once, none lost.
    #[test]
    fn every_mail_arrives_exactly_once_with_the_relay_cache(
        steps in proptest::collection::vec(cache_step(), 1..40),
        loss in 0u32..4,
    ) {
        let mut w = World::new();
        w.cache_mode = CacheMode::Up;
        let users: Vec<_> = ["alice", "bob", "carol", "dave"].iter().map(|n| w.register(n)).collect();
        // Everyone has signed in once (published a key).
        for u in &users { w.online(u); }
        for u in &users { w.offline(u); }
        // Alice starts online, so most schedules send while others are away.
        w.online(&users[0]);
        lossy(&mut w, loss);
        let sent = play(&mut w, &users, steps);
        // The outage ends and everyone returns.
        w.drop_rule = None;
        w.cache_mode = CacheMode::Up;
        for u in &users { w.online(u); }
        w.advance(5 * 60_000);
        assert_all_delivered(&w, &sent)?;
        for (from, id) in &sent {
            for r in &w.outgoing(from, id).recipients {
                prop_assert!(!rejected(&w, &r.address));
            }
        }
        prop_assert!(w.cache.is_empty(), "the cache is emptied: {:?}", w.cache.keys().collect::<Vec<_>>());
        prop_assert!(w.held.is_empty(), "no listing left: {:?}", w.held.keys().collect::<Vec<_>>());
        for u in &users {
            prop_assert_eq!(holds(&w, u), 0, "{} still holds a copy", u);
        }
    }
}

/// A `deposited` reply lost on a live signaling connection: the deposit is repeated after
/// the acknowledgement timeout (the relay keeps one copy), instead of "depositing" forever.
#[test]
fn lost_deposit_reply_is_retried_on_a_live_connection() {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&bob);
    w.offline(&bob);
    w.online(&alice);
    w.lose_deposit_replies = 1;
    let id = w.send(&alice, &[&bob], &[], "reply lost");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Depositing { .. }
    ));
    w.advance(w.config.ack_timeout + 1);
    assert!(
        matches!(
            state_of(&w, &alice, &id, &bob),
            DeliveryState::CachedAtRelay { .. }
        ),
        "{:?}",
        state_of(&w, &alice, &id, &bob)
    );
    assert_eq!(w.cache.len(), 1, "one copy at the relay");
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &id), 1);
}

// ----- co-recipient holding -----

fn holds(w: &World, who: &peermail_core::Address) -> usize {
    w.users[who].store.snapshot().held.len()
}

/// The relay cache refuses Bob's copy; Carol, who got the mail directly, holds a sealed
/// copy for him and registers it. Bob fetches it from Carol's node with Alice gone; Carol
/// deletes her copy once Bob stored his; Alice learns it was delivered.
#[test]
fn co_recipient_holds_when_the_relay_cache_refuses() {
    let (mut w, alice, bob, carol) = bob_away(CacheMode::Full);
    let id = w.send(&alice, &[&bob, &carol], &[], "held for bob");
    assert!(w.inbox_has(&carol, &id));
    assert_eq!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::HeldBy {
            holder: carol.clone(),
            at: w.now
        }
    );
    assert!(
        w.cache.is_empty() && w.deposits == 0,
        "the relay cache took nothing"
    );
    assert_eq!(holds(&w, &carol), 1, "Carol's node stored the copy");
    assert_eq!(w.held.len(), 1, "and registered it");
    let copy = &w.users[&carol].store.snapshot().held[0];
    assert_eq!((&copy.to, &copy.from), (&bob, &alice));
    assert!(!String::from_utf8_lossy(&copy.sealed).contains("held for bob"));
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &id), 1, "Bob got it from Carol");
    assert!(!rejected(&w, &bob));
    assert_eq!(
        holds(&w, &carol),
        0,
        "Carol deleted her copy after Bob's ack"
    );
    assert!(w.held.is_empty(), "released at the relay");
    w.online(&alice);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
    assert!(w.receipts.values().all(|r| r.is_empty()));
    w.offline(&bob);
    w.online(&bob);
    w.advance(60_000);
    assert_eq!(w.received_count(&bob, &id), 1);
}

/// Bob returns while Carol, the holder, is away: he is told where his mail waits, and
/// fetches it as soon as Carol comes online. Her ack to Alice's direct copy is unaffected.
#[test]
fn holder_offline_then_back() {
    let (mut w, alice, bob, carol) = bob_away(CacheMode::Full);
    let id = w.send(&alice, &[&bob, &carol], &[], "later");
    w.offline(&carol);
    w.offline(&alice);
    w.online(&bob);
    w.advance(60_000);
    assert!(!w.inbox_has(&bob, &id), "Carol is away");
    w.online(&carol);
    assert_eq!(w.received_count(&bob, &id), 1);
    assert_eq!(holds(&w, &carol), 0);
}

/// The whole relay is unreachable: after `deposit_retry` Alice hands Bob's copy to Carol
/// over their open data channel; Carol registers it when the relay returns.
#[test]
fn co_recipient_holds_while_the_relay_is_unreachable() {
    let (mut w, alice, bob, carol) = bob_away(CacheMode::Up);
    // An earlier mail opened the Alice–Carol channel; Alice knows Bob's keys from it.
    w.send(&alice, &[&carol, &bob], &[], "hello");
    w.relay_outage(true);
    let id = w.send(&alice, &[&bob, &carol], &[], "during the outage");
    assert!(w.inbox_has(&carol, &id), "over the open channel");
    assert_eq!(state_of(&w, &alice, &id, &bob), DeliveryState::Waiting);
    w.advance(w.config.deposit_retry + 1);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::HeldBy { ref holder, .. } if *holder == carol
    ));
    assert!(w.held.is_empty(), "not registered while the relay is away");
    w.offline(&alice);
    w.relay_outage(false);
    assert_eq!(w.held.len(), 1, "registered when the relay returned");
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &id), 1);
    assert_eq!(holds(&w, &carol), 0);
    assert!(
        w.cache.is_empty() && w.deposits == 1,
        "only the earlier mail was cached"
    );
    w.online(&alice);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
}

/// A holder that alters the copy cannot make Bob accept it: rejected visibly, not stored,
/// not released at the relay.
#[test]
fn altered_held_copy_is_rejected() {
    let (mut w, alice, bob, carol) = bob_away(CacheMode::Full);
    let id = w.send(&alice, &[&bob, &carol], &[], "do not alter");
    w.offline(&alice);
    // Carol's node flips a ciphertext byte of the copy it holds.
    let mut copy = w.users[&carol].store.snapshot().held[0].clone();
    let i = copy.sealed.len() - 80;
    copy.sealed[i] ^= 0x40;
    w.offline(&carol);
    w.users[&carol]
        .store
        .apply_now(peermail_core::store::StoreWrite::PutHeld(copy));
    w.online(&carol);
    w.online(&bob);
    assert!(!w.inbox_has(&bob, &id));
    assert!(rejected(&w, &bob), "{:?}", w.users[&bob].events);
    // That copy alone is refused: the relay drops its listing, Carol's node deletes the
    // copy, and Alice — the relay keeps no copy of its own — learns it failed.
    assert!(w.held.is_empty(), "the held copy's listing is dropped");
    assert_eq!(holds(&w, &carol), 0, "Carol's node deleted its copy");
    w.online(&alice);
    assert!(
        matches!(
            state_of(&w, &alice, &id, &bob),
            DeliveryState::Failed { ref reason, .. } if reason.contains("refused")
        ),
        "{:?}",
        state_of(&w, &alice, &id, &bob)
    );
    // Bob is not offered it (nor warned) again at his next sign-in.
    let warnings = |w: &World| {
        w.users[&bob]
            .events
            .iter()
            .filter(|e| matches!(e, Event::Rejected { .. }))
            .count()
    };
    let before = warnings(&w);
    w.offline(&bob);
    w.online(&bob);
    assert_eq!(warnings(&w), before);
    assert!(!w.inbox_has(&bob, &id));
}

/// The relay loses its cache (data reset) while Alice's mail waits there for Bob: at her
/// next sign-in Alice's node finds it gone and deposits it again, so Bob still gets it,
/// once, and Alice sees it delivered.
#[test]
fn mail_lost_by_a_reset_relay_is_deposited_again() {
    let mut w = World::new();
    w.cache_mode = CacheMode::Up;
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&bob);
    w.offline(&bob);
    w.online(&alice);
    let id = w.send(&alice, &[&bob], &[], "survives a reset");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::CachedAtRelay { .. }
    ));
    w.offline(&alice);
    w.wipe_relay_cache();
    w.online(&alice);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::CachedAtRelay { .. }
    ));
    assert_eq!(w.deposits, 2, "deposited again");
    assert_eq!(w.cache.len(), 1);
    // A relay that kept it is just asked: no second copy.
    w.offline(&alice);
    w.online(&alice);
    assert_eq!(w.deposits, 2);
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &id), 1);
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
}

/// The recipient's presence turns offline while its data channel still looks open (a
/// closing browser), the mail goes out on the dying channel, then the channel closes: the
/// mail is deposited at the relay cache at once — not left waiting for an event that
/// never comes.
#[test]
fn mail_on_a_channel_that_dies_after_presence_went_offline_is_deposited() {
    use peermail_core::node::{Command, Input, Output};
    use peermail_core::store::Snapshot;
    use peermail_core::wire::signal::{ClientFrame, PresenceStatus, ServerFrame};
    use peermail_core::{Config, Draft, Identity, Node};
    let (alice, bob) = (addr("alice"), addr("bob"));
    let bob_id = Identity::from_seed(bob.clone(), [2; 32]);
    let mut node = Node::new(
        Identity::from_seed(alice.clone(), [1; 32]),
        Config::default(),
        Snapshot::default(),
        0,
        [0; 32],
    );
    node.handle(Input::SignalingConnected, 0);
    node.handle(
        Input::Server(ServerFrame::Authenticated {
            address: alice.clone(),
        }),
        0,
    );
    let presence = |status| {
        Input::Server(ServerFrame::Presence {
            address: bob.clone(),
            status,
        })
    };
    node.handle(presence(PresenceStatus::Online), 0);
    node.handle(Input::PeerConnected(bob.clone()), 0);
    node.handle(presence(PresenceStatus::Offline), 5);
    let draft = Draft {
        to: vec![bob.clone()],
        subject: "s".into(),
        ..Draft::default()
    };
    node.handle(
        Input::Command(Command::Send {
            draft,
            random: [5; 16],
        }),
        10,
    );
    let drain = |node: &mut Node| std::iter::from_fn(|| node.poll_output()).collect::<Vec<_>>();
    assert!(drain(&mut node)
        .iter()
        .any(|o| matches!(o, Output::ToPeer { .. })));
    node.handle(Input::PeerDisconnected(bob.clone()), 20);
    let out = drain(&mut node);
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::ToServer(ClientFrame::Lookup { address }) if *address == bob
        )),
        "the keys are looked up to seal for the relay cache: {out:?}"
    );
    node.handle(
        Input::Server(ServerFrame::Keys {
            address: bob.clone(),
            signing_key: bob_id.public_key(),
            encryption_key: Some(bob_id.encryption_public_key().as_str().to_string()),
        }),
        21,
    );
    assert!(drain(&mut node)
        .iter()
        .any(|o| matches!(o, Output::ToServer(ClientFrame::Deposit { .. }))));
}

/// A received mail arrives unread; read, and marked unread again, it stays so after the
/// page is opened again.
#[test]
fn a_received_mail_is_marked_read_and_unread_again() {
    let mut w = sim::world_with(&["alice", "bob"]);
    let (alice, bob) = (addr("alice"), addr("bob"));
    w.online(&alice);
    w.online(&bob);
    let id = w.send(&alice, &[&bob], &[], "hello");
    let read = |w: &World| {
        w.users[&bob]
            .store
            .snapshot()
            .inbox
            .into_iter()
            .find(|r| r.mail.message_id == id)
            .expect("received")
            .read
    };
    assert!(!read(&w));
    w.command(&bob, peermail_core::node::Command::MarkRead(id.clone()));
    assert!(read(&w));
    w.command(&bob, peermail_core::node::Command::MarkUnread(id.clone()));
    assert!(!read(&w));
    w.offline(&bob);
    w.online(&bob);
    let node = w.users[&bob].node.as_ref().expect("online");
    assert!(node
        .inbox()
        .iter()
        .any(|r| r.mail.message_id == id && !r.read));
}

/// Mark all read: every mail of the Inbox is read, kept over a restart.
#[test]
fn mark_all_read_marks_every_received_mail() {
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    let ids = [
        w.send(&alice, &[&bob], &[], "one"),
        w.send(&alice, &[&bob], &[], "two"),
    ];
    let unread = |w: &World| {
        w.users[&bob]
            .store
            .snapshot()
            .inbox
            .into_iter()
            .filter(|r| ids.contains(&r.mail.message_id) && !r.read)
            .count()
    };
    assert_eq!(unread(&w), 2);
    w.command(&bob, peermail_core::node::Command::MarkAllRead);
    assert_eq!(unread(&w), 0);
    w.offline(&bob);
    w.online(&bob);
    let node = w.users[&bob].node.as_ref().expect("online");
    assert!(node.inbox().iter().all(|r| r.read));
}

/// Archiving: a received mail moves out of the Inbox into the Archive and back, read or
/// unread as it was; an archived unread mail is not counted among the Inbox's unread, and
/// Mark all read leaves it as it is; where each mail is survives a restart.
#[test]
fn archived_mail_leaves_the_inbox_and_comes_back() {
    use peermail_core::node::Command;
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    let kept = w.send(&alice, &[&bob], &[], "archive me");
    let other = w.send(&alice, &[&bob], &[], "leave me in the inbox");
    let unread = |w: &World| w.users[&bob].node.as_ref().expect("online").unread_count();
    assert_eq!(unread(&w), 2);
    w.command(&bob, Command::Archive(kept.clone()));
    // Kept, unread, archived; not counted.
    let stored = |w: &World, id: &peermail_core::MessageId| {
        w.users[&bob]
            .store
            .snapshot()
            .inbox
            .into_iter()
            .find(|r| &r.mail.message_id == id)
            .map(|r| (r.archived, r.read))
    };
    assert_eq!(stored(&w, &kept), Some((true, false)));
    assert_eq!(stored(&w, &other), Some((false, false)));
    assert_eq!(unread(&w), 1, "the archived unread mail is not counted");
    // Mark all read is the Inbox's: the archived mail stays unread.
    w.command(&bob, Command::MarkAllRead);
    assert_eq!(stored(&w, &kept), Some((true, false)));
    assert_eq!(stored(&w, &other), Some((false, true)));
    assert_eq!(unread(&w), 0);
    // Where each mail is survives a restart.
    w.offline(&bob);
    w.online(&bob);
    assert_eq!(unread(&w), 0);
    let n = w.users[&bob].node.as_ref().expect("online");
    assert!(n.received(&kept).is_some_and(|r| r.archived && !r.read));
    let listed = |archived: bool| -> Vec<_> {
        n.received_in(archived)
            .iter()
            .map(|r| r.mail.message_id.clone())
            .collect()
    };
    assert_eq!(listed(true), vec![kept.clone()]);
    assert_eq!(listed(false), vec![other.clone()]);
    // Back in the Inbox, it counts again.
    w.command(&bob, Command::Unarchive(kept.clone()));
    assert_eq!(stored(&w, &kept), Some((false, false)));
    assert_eq!(unread(&w), 1);
}

/// A contact removed in a session is no longer watched (the relay stops sending its
/// presence), unless mail still waits for that person; contacts kept stay watched.
#[test]
fn a_removed_contact_is_no_longer_watched_unless_mail_waits_for_them() {
    use peermail_core::node::Command;
    let mut w = World::new();
    let (alice, bob, carol, dave) = (
        w.register("alice"),
        w.register("bob"),
        w.register("carol"),
        w.register("dave"),
    );
    w.online(&alice);
    for c in [&bob, &carol, &dave] {
        w.command(&alice, Command::AddContact(c.clone()));
    }
    w.settle();
    let watched = |w: &World| w.users[&alice].subscriptions.clone();
    assert!(
        [&bob, &carol, &dave]
            .iter()
            .all(|c| watched(&w).contains(*c)),
        "{:?}",
        watched(&w)
    );
    // Carol is offline: the mail waits for her.
    let id = w.send(&alice, &[&carol], &[], "for Carol");
    w.settle();
    assert!(!state_of(&w, &alice, &id, &carol).is_final());
    w.command(&alice, Command::RemoveContact(bob.clone()));
    w.command(&alice, Command::RemoveContact(carol.clone()));
    w.settle();
    assert!(!watched(&w).contains(&bob), "{:?}", watched(&w));
    assert!(
        watched(&w).contains(&carol),
        "mail waits for Carol: still watched"
    );
    assert!(watched(&w).contains(&dave), "a contact kept stays watched");
    w.online(&bob);
    w.settle();
    let presence = |w: &World, of: &peermail_core::Address| {
        w.users[&alice].node.as_ref().expect("online").presence(of)
    };
    assert_eq!(
        presence(&w, &bob),
        None,
        "Bob's presence still reaches Alice"
    );
    w.online(&dave);
    w.settle();
    assert_eq!(
        presence(&w, &dave),
        Some(peermail_core::wire::signal::PresenceStatus::Online)
    );
}

/// Cancel sending: a recipient not reached yet fails at once and never gets the mail; the
/// copy the relay keeps for an offline one is called back (gone from the relay; that
/// recipient fails once the relay confirms); one already delivered stays delivered; the
/// mail leaves the Outbox, and nothing is sent again after a restart.
#[test]
fn a_cancelled_mail_is_called_back_and_reaches_nobody_else() {
    use peermail_core::node::{Command, CANCELLED};
    let (mut w, alice, bob, carol) = bob_away(CacheMode::Up);
    let dave = w.register("dave");
    let id = w.send(&alice, &[&bob, &carol, &dave], &[], "sent too soon");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::CachedAtRelay { .. }
    ));
    assert_eq!(state_of(&w, &alice, &id, &dave), DeliveryState::Waiting);
    assert_eq!(w.cache.len(), 1);
    w.command(&alice, Command::CancelSending(id.clone()));
    w.settle();
    for who in [&bob, &dave] {
        assert!(
            matches!(state_of(&w, &alice, &id, who), DeliveryState::Failed { ref reason, .. } if reason == CANCELLED),
            "{who}: {:?}",
            state_of(&w, &alice, &id, who)
        );
    }
    assert!(matches!(
        state_of(&w, &alice, &id, &carol),
        DeliveryState::Delivered { .. }
    ));
    assert!(!w.outgoing(&alice, &id).is_pending(), "out of the Outbox");
    assert!(w.cache.is_empty(), "called back from the relay");
    w.online(&bob);
    w.online(&dave);
    w.advance(600_000);
    w.offline(&alice);
    w.online(&alice);
    w.advance(600_000);
    assert_eq!(w.received_count(&bob, &id), 0);
    assert_eq!(w.received_count(&dave, &id), 0);
    assert_eq!(w.deposits, 1, "not deposited again");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Failed { .. }
    ));
}

/// Cancelled too late: the recipient took the relay's copy while the sender was cut off
/// from the relay. At the sender's next sign-in the call-back finds nothing, and the
/// recipient shows as delivered, as the relay's receipt says.
#[test]
fn a_mail_cancelled_after_it_was_fetched_shows_delivered() {
    use peermail_core::node::Command;
    let (mut w, alice, bob, _carol) = bob_away(CacheMode::Up);
    let id = w.send(&alice, &[&bob], &[], "already read");
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::CachedAtRelay { .. }
    ));
    w.offline(&alice);
    w.online(&bob);
    assert_eq!(w.received_count(&bob, &id), 1);
    w.offline(&bob);
    // Alice's page opens while the relay is unreachable, and she cancels.
    w.relay_outage(true);
    w.online(&alice);
    w.command(&alice, Command::CancelSending(id.clone()));
    w.settle();
    assert!(
        matches!(
            state_of(&w, &alice, &id, &bob),
            DeliveryState::CachedAtRelay { .. }
        ),
        "called back once the relay is reachable"
    );
    w.relay_outage(false);
    w.advance(120_000);
    assert!(
        matches!(
            state_of(&w, &alice, &id, &bob),
            DeliveryState::Delivered { .. }
        ),
        "{:?}",
        state_of(&w, &alice, &id, &bob)
    );
    assert_eq!(w.received_count(&bob, &id), 1);
}

/// Cancelled while its acknowledgement was on the way: the recipient shows as cancelled,
/// then as delivered when the acknowledgement arrives.
#[test]
fn a_direct_mail_acknowledged_after_the_cancel_shows_delivered() {
    use peermail_core::node::Command;
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    w.drop_rule = Some(Box::new(|_, _, f| matches!(f, PeerFrame::Ack { .. })));
    let id = w.send(&alice, &[&bob], &[], "ack on its way");
    assert!(w.inbox_has(&bob, &id));
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Sending { .. }
    ));
    w.command(&alice, Command::CancelSending(id.clone()));
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Failed { .. }
    ));
    w.drop_rule = None;
    w.inject(
        &bob,
        &alice,
        PeerFrame::Ack {
            message_id: id.clone(),
        },
    );
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Delivered { .. }
    ));
}

/// Cancelled while its deposit goes unanswered (the relay's answer is lost): once overdue,
/// the copy is called back instead of deposited again, and the recipient never gets it.
#[test]
fn a_mail_cancelled_while_its_deposit_is_unanswered_is_called_back_not_redeposited() {
    use peermail_core::node::{Command, CANCELLED};
    let (mut w, alice, bob, _carol) = bob_away(CacheMode::Up);
    // A first mail: Alice's node has Bob's keys for this session.
    w.send(&alice, &[&bob], &[], "first");
    assert_eq!(w.deposits, 1);
    // The relay loses what reaches it, the connection stays up.
    w.relay_down = true;
    let id = w.send(&alice, &[&bob], &[], "answer lost");
    assert!(
        matches!(
            state_of(&w, &alice, &id, &bob),
            DeliveryState::Depositing { .. }
        ),
        "{:?}",
        state_of(&w, &alice, &id, &bob)
    );
    w.command(&alice, Command::CancelSending(id.clone()));
    assert!(matches!(
        state_of(&w, &alice, &id, &bob),
        DeliveryState::Depositing { .. }
    ));
    w.relay_down = false;
    w.advance(w.config.ack_timeout + 1);
    w.settle();
    assert!(
        matches!(state_of(&w, &alice, &id, &bob), DeliveryState::Failed { ref reason, .. } if reason.starts_with(CANCELLED)),
        "{:?}",
        state_of(&w, &alice, &id, &bob)
    );
    assert_eq!(w.deposits, 1, "not deposited again");
    w.online(&bob);
    w.advance(600_000);
    assert_eq!(w.received_count(&bob, &id), 0);
}

/// A reply names the whole thread before it (RFC 5322 §3.6.4): `In-Reply-To` the mail
/// answered, `References` that mail's `References` and the mail itself, on the sender's
/// copy and on the one received. A reply to a mail the node no longer has names just that
/// mail; a long thread keeps its first mail and the latest ones.
#[test]
fn a_reply_names_the_whole_thread_in_its_references() {
    use peermail_core::node::MAX_REFERENCES;
    use peermail_core::{Draft, MessageId};
    let mut w = World::new();
    let (alice, bob) = (w.register("alice"), w.register("bob"));
    w.online(&alice);
    w.online(&bob);
    let reply = |w: &mut World, from: &peermail_core::Address, parent: &MessageId, n: usize| {
        let to = if *from == alice { &bob } else { &alice };
        w.send_draft(
            from,
            Draft {
                to: vec![to.clone()],
                subject: format!("Re: plans ({n})"),
                in_reply_to: Some(parent.clone()),
                ..Draft::default()
            },
        )
    };
    let first = w.send(&alice, &[&bob], &[], "plans");
    assert!(w.outgoing(&alice, &first).mail.references.is_empty());
    let second = reply(&mut w, &bob, &first, 2);
    let third = reply(&mut w, &alice, &second, 3);
    let sent = w.outgoing(&alice, &third).mail;
    assert_eq!(sent.in_reply_to, Some(second.clone()));
    assert_eq!(sent.references, vec![first.clone(), second.clone()]);
    let received = w.received_mail(&bob, &third);
    assert_eq!(received.references, sent.references);
    assert_eq!(received.in_reply_to, sent.in_reply_to);

    // A mail this node never had (or deleted): the reply names it alone.
    let unknown = MessageId::new([77; 16], "elsewhere.example");
    let lone = reply(&mut w, &alice, &unknown, 4);
    assert_eq!(w.outgoing(&alice, &lone).mail.references, vec![unknown]);

    // A thread of more mails than MAX_REFERENCES: the first, then the latest ones.
    let mut thread = vec![first.clone(), second, third];
    for n in 0..MAX_REFERENCES {
        let from = if n % 2 == 0 { &bob } else { &alice };
        let from = from.clone();
        let next = reply(&mut w, &from, thread.last().unwrap(), 10 + n);
        thread.push(next);
    }
    let last = thread.last().unwrap();
    // Bob wrote the even-numbered replies of the loop, to Alice.
    let to = if (MAX_REFERENCES - 1) % 2 == 0 {
        &alice
    } else {
        &bob
    };
    let refs = w.received_mail(to, last).references;
    let mut want = vec![first];
    want.extend_from_slice(&thread[thread.len() - MAX_REFERENCES..thread.len() - 1]);
    assert_eq!(refs.len(), MAX_REFERENCES);
    assert_eq!(refs, want);
}
