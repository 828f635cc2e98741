//! Who is online and who watches whom. Lives behind the one mutex of [`crate::Signaling`];
//! every method is short and none awaits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use peermail_core::address::Address;
use peermail_core::wire::signal::{PresenceStatus, ServerFrame};
use tokio::sync::{mpsc, Notify};

/// A session's queue of encoded frames waiting to be written to its socket.
pub(crate) type Outbox = mpsc::Sender<Utf8Bytes>;

/// Wakes a live session that must end: a newer session of its address replaced it, or
/// (a storage node's session) its owner unpaired it.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    notify: Notify,
    unpaired: AtomicBool,
}

impl Ending {
    /// Resolves once the session must end (also if that was decided before the call).
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Whether the session ends because its storage node was unpaired (else: replaced).
    pub(crate) fn unpaired(&self) -> bool {
        self.unpaired.load(Ordering::Acquire)
    }
}

/// The live (authenticated) session of an address.
struct Live {
    /// Tells this session apart from an older or newer one of the same address.
    id: u64,
    /// Where frames for this address go.
    outbox: Outbox,
    /// Woken when a newer session of the same address replaces this one, or when its
    /// storage node is unpaired.
    ending: Arc<Ending>,
}

#[derive(Default)]
pub(crate) struct Hub {
    /// address → its live session. An address is online exactly when it is a key here.
    online: HashMap<Address, Live>,
    /// watched address → (session id → that session's outbox).
    watchers: HashMap<Address, HashMap<u64, Outbox>>,
}

impl Hub {
    pub(crate) fn online_count(&self) -> usize {
        self.online.len()
    }

    pub(crate) fn is_online(&self, address: &Address) -> bool {
        self.online.contains_key(address)
    }

    /// Makes session `id` the live session of `address`. An older session of the address is
    /// told it was replaced; presence stays online. Otherwise the watchers learn it is online.
    pub(crate) fn attach(
        &mut self,
        address: &Address,
        id: u64,
        outbox: Outbox,
        ending: Arc<Ending>,
    ) {
        let live = Live { id, outbox, ending };
        match self.online.insert(address.clone(), live) {
            Some(old) => old.ending.notify.notify_one(),
            None => self.tell_watchers(address, PresenceStatus::Online),
        }
    }

    /// Session `id` of `address` ended. If it was still the live one, the address goes
    /// offline and its watchers are told.
    pub(crate) fn detach(&mut self, address: &Address, id: u64) {
        if self.online.get(address).is_some_and(|live| live.id == id) {
            self.online.remove(address);
            self.tell_watchers(address, PresenceStatus::Offline);
        }
    }

    /// The storage node `address` was unpaired: its live session, if any, is told to end
    /// (it leaves the hub, and its watchers learn it is offline, as it ends).
    pub(crate) fn unpaired(&mut self, address: &Address) {
        if let Some(live) = self.online.get(address) {
            live.ending.unpaired.store(true, Ordering::Release);
            live.ending.notify.notify_one();
        }
    }

    /// The outbox of `address`'s live session.
    pub(crate) fn route(&self, address: &Address) -> Option<Outbox> {
        self.online.get(address).map(|live| live.outbox.clone())
    }

    /// Session `id` wants presence updates about `address`.
    pub(crate) fn watch(&mut self, address: &Address, id: u64, outbox: &Outbox) {
        self.watchers
            .entry(address.clone())
            .or_default()
            .insert(id, outbox.clone());
    }

    pub(crate) fn unwatch(&mut self, address: &Address, id: u64) {
        if let Some(sessions) = self.watchers.get_mut(address) {
            sessions.remove(&id);
            if sessions.is_empty() {
                self.watchers.remove(address);
            }
        }
    }

    fn tell_watchers(&self, address: &Address, status: PresenceStatus) {
        let Some(sessions) = self.watchers.get(address) else {
            return;
        };
        let text = Utf8Bytes::from(
            ServerFrame::Presence {
                address: address.clone(),
                status,
            }
            .encode(),
        );
        tracing::debug!(%address, ?status, watchers = sessions.len(), "presence pushed");
        for (id, outbox) in sessions {
            // A full outbox belongs to a session that stopped reading; the heartbeat or the
            // write timeout ends it soon, so the update is dropped rather than waited for.
            if outbox.try_send(text.clone()).is_err() {
                tracing::debug!(session = id, %address, "presence update dropped: outbox full");
            }
        }
    }
}
