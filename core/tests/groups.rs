//! Address-book groups in the node: saved and removed by command, persisted through the
//! store, back after a restart, and usable to expand a To field.

use peermail_core::groups::{expand_recipients, Group};
use peermail_core::node::{Command, Config, Event, Input, Node, Output};
use peermail_core::store::{MemoryStore, StoreWrite};
use peermail_core::{Address, Identity};

fn a(s: &str) -> Address {
    s.parse().unwrap()
}

fn node(store: &MemoryStore) -> Node {
    let me = Identity::from_seed(a("alice@h"), [1; 32]);
    Node::new(me, Config::default(), store.snapshot(), 1_000, [2; 32])
}

/// Feeds a command; applies its store writes to `store`; returns the writes and events.
fn command(n: &mut Node, store: &MemoryStore, c: Command) -> (Vec<StoreWrite>, Vec<Event>) {
    n.handle(Input::Command(c), 1_000);
    let (mut writes, mut events) = (Vec::new(), Vec::new());
    while let Some(o) = n.poll_output() {
        match o {
            Output::Store { op, write } => {
                store.apply_now(write.clone());
                writes.push(write);
                n.handle(Input::Stored { op, result: Ok(()) }, 1_000);
            }
            Output::Event(e) => events.push(e),
            _ => {}
        }
    }
    (writes, events)
}

#[test]
fn groups_are_saved_replaced_removed_and_kept_across_restarts() {
    let store = MemoryStore::new();
    let mut n = node(&store);
    assert_eq!(n.groups().count(), 0);
    let team = Group::parse("team", "bob@h, carol@h").unwrap();
    let (writes, events) = command(&mut n, &store, Command::PutGroup(team.clone()));
    assert_eq!(writes, vec![StoreWrite::PutGroup(team.clone())]);
    assert_eq!(events, vec![Event::GroupsChanged]);
    // Saving the same group again changes nothing.
    let (writes, events) = command(&mut n, &store, Command::PutGroup(team.clone()));
    assert!(writes.is_empty() && events.is_empty());
    assert_eq!(n.group("TEAM"), Some(&team));

    let club = Group::parse("Book club", "dan@h").unwrap();
    command(&mut n, &store, Command::PutGroup(club.clone()));
    // The same name in another case replaces the group.
    let team2 = Group::parse("Team", "carol@h, dan@h").unwrap();
    command(&mut n, &store, Command::PutGroup(team2.clone()));
    assert_eq!(
        n.groups().cloned().collect::<Vec<_>>(),
        vec![club.clone(), team2.clone()]
    );

    // A restart from the store has the same groups.
    let mut n = node(&store);
    assert_eq!(
        n.groups().cloned().collect::<Vec<_>>(),
        vec![club.clone(), team2.clone()]
    );
    assert_eq!(
        expand_recipients("team, bob@h, book club", n.groups()).unwrap(),
        vec![a("carol@h"), a("dan@h"), a("bob@h")]
    );

    let (writes, events) = command(&mut n, &store, Command::RemoveGroup("BOOK CLUB".into()));
    assert_eq!(writes, vec![StoreWrite::RemoveGroup("BOOK CLUB".into())]);
    assert_eq!(events, vec![Event::GroupsChanged]);
    let (writes, events) = command(&mut n, &store, Command::RemoveGroup("book club".into()));
    assert!(writes.is_empty() && events.is_empty());
    assert_eq!(store.snapshot().groups, vec![team2.clone()]);
    assert_eq!(
        expand_recipients("book club", n.groups())
            .unwrap_err()
            .to_string(),
        "no contact group named “book club”"
    );
}
