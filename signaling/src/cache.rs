//! The store-and-forward cache: sealed envelopes waiting for offline recipients, and the
//! receipts their senders have not yet acknowledged.
//!
//! Envelopes are opaque bytes (sealed end to end for the recipient); the cache never looks
//! inside. The relay implements [`MailCache`] over SQLite; [`MemoryCache`] keeps everything in
//! memory.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use peermail_core::address::Address;
use peermail_core::mail::{MessageId, Millis};
use peermail_core::wire::signal::{MailLocation, ReceiptOutcome, WaitingMail};

use crate::Error;

/// An envelope to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    pub recipient: Address,
    pub message_id: MessageId,
    /// The authenticated account that deposited it.
    pub sender: Address,
    pub sealed: Vec<u8>,
    pub deposited_at: Millis,
    /// The sweep deletes it (and records an expired receipt) from this instant on.
    pub expires_at: Millis,
}

/// A co-recipient's node registers that it holds a sealed copy for `recipient` (the relay
/// only lists where it is; the bytes stay on the holder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    pub recipient: Address,
    pub message_id: MessageId,
    /// The authenticated account whose node holds the copy.
    pub holder: Address,
    /// The mail's sender, as the holder reports it (told of the delivery).
    pub sender: Address,
    pub size: u64,
    pub held_at: Millis,
    /// The sweep forgets the listing (and records expired receipts) from this instant on.
    pub expires_at: Millis,
}

/// What [`MailCache::deposit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    /// Stored (and committed).
    Stored,
    /// `(recipient, message_id)` was already in the cache from the same sender; nothing
    /// changed.
    AlreadyStored,
    /// `(recipient, message_id)` is in the cache from another sender; nothing changed (a
    /// co-recipient cannot pre-empt a Message-ID).
    Conflict,
    /// Storing it would take the recipient over its quota; nothing was stored.
    QuotaExceeded,
}

/// A stored envelope, as fetched by its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedMail {
    pub sender: Address,
    pub sealed: Vec<u8>,
}

/// A receipt waiting to be acknowledged by `sender`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub sender: Address,
    pub recipient: Address,
    pub message_id: MessageId,
    pub outcome: ReceiptOutcome,
}

/// The answer of an asynchronous [`MailCache`] call.
pub type CacheFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// Where cached envelopes and receipts are kept.
///
/// The plain methods define what each operation does; they block (the relay's
/// implementation writes to disk). Sessions use the `*_async` forms, which by default run
/// the plain method on tokio's blocking pool; an implementation that has its own way of
/// waiting (the relay's hands operations to a writer thread) overrides them.
///
/// Every method that answers a recipient's request is keyed by the recipient, so a session
/// can only see or touch mail that waits for its own account.
pub trait MailCache: Send + Sync + 'static {
    /// Stores `mail` unless `(recipient, message_id)` is already there, or the recipient's
    /// envelopes would then exceed `quota_bytes`. Returns only once the envelope is durable.
    fn deposit(&self, mail: NewMail, quota_bytes: u64) -> Result<Deposit, Error>;
    /// Everything waiting for `recipient`, oldest first.
    fn waiting(&self, recipient: &Address) -> Result<Vec<WaitingMail>, Error>;
    /// The envelope `message_id` if it waits for `recipient`.
    fn fetch(
        &self,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<Option<CachedMail>, Error>;
    /// Deletes the envelope `message_id` waiting for `recipient`, and its listing at a
    /// co-recipient's node, and in the same transaction records a receipt with `outcome`
    /// (delivered, or refused by the recipient) for the sender (and for the holder, which
    /// then deletes its copy). Returns who got a receipt; empty if nothing by that id waits
    /// for `recipient`.
    fn release(
        &self,
        recipient: &Address,
        message_id: &MessageId,
        outcome: ReceiptOutcome,
        now: Millis,
    ) -> Result<Vec<Address>, Error>;
    /// Drops the listing of the copy of `message_id` that `holder`'s node holds for
    /// `recipient` (it failed verification there), leaving the relay's own copy, if any,
    /// waiting. Records a `refused` receipt for the holder, and for the sender if the relay
    /// keeps no copy; returns whom to tell (empty: `holder` holds no such copy listed).
    fn refuse_held(
        &self,
        recipient: &Address,
        message_id: &MessageId,
        holder: &Address,
        now: Millis,
    ) -> Result<Vec<Address>, Error>;
    /// Lists a copy held by a co-recipient's node among `hold.recipient`'s waiting mail,
    /// unless `(recipient, message_id)` is already listed as held (the first holder stays).
    /// Returns whether `hold.holder` is the listed holder (false: another node's copy is
    /// listed, and this one is not needed).
    fn hold(&self, hold: NewHold) -> Result<bool, Error>;
    /// Receipts waiting for `sender`'s acknowledgement.
    fn receipts(&self, sender: &Address) -> Result<Vec<Receipt>, Error>;
    /// Whether `sender`'s deposit `message_id` for `recipient` is still cached, or its
    /// receipt still waits for `sender`.
    fn has_deposit(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<bool, Error>;
    /// Forgets the receipt of `sender` about `(recipient, message_id)`, if any.
    fn ack_receipt(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<(), Error>;
    /// Deletes every envelope (and held-copy listing) whose expiry is at or before `now` and
    /// records an expired receipt for each sender (and holder); returns those receipts.
    fn expire(&self, now: Millis) -> Result<Vec<Receipt>, Error>;
    /// Deletes `sender`'s envelope `message_id` for `recipient`, if it is still cached and
    /// is `sender`'s (the sender called it back); no receipt is recorded. Whether it was.
    fn withdraw(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<bool, Error>;

    /// [`MailCache::deposit`], awaited.
    fn deposit_async(self: Arc<Self>, mail: NewMail, quota_bytes: u64) -> CacheFuture<Deposit> {
        blocking(self, move |c| c.deposit(mail, quota_bytes))
    }
    /// [`MailCache::waiting`], awaited.
    fn waiting_async(self: Arc<Self>, recipient: Address) -> CacheFuture<Vec<WaitingMail>> {
        blocking(self, move |c| c.waiting(&recipient))
    }
    /// [`MailCache::fetch`], awaited.
    fn fetch_async(
        self: Arc<Self>,
        recipient: Address,
        message_id: MessageId,
    ) -> CacheFuture<Option<CachedMail>> {
        blocking(self, move |c| c.fetch(&recipient, &message_id))
    }
    /// [`MailCache::release`], awaited.
    fn release_async(
        self: Arc<Self>,
        recipient: Address,
        message_id: MessageId,
        outcome: ReceiptOutcome,
        now: Millis,
    ) -> CacheFuture<Vec<Address>> {
        blocking(self, move |c| {
            c.release(&recipient, &message_id, outcome, now)
        })
    }
    /// [`MailCache::refuse_held`], awaited.
    fn refuse_held_async(
        self: Arc<Self>,
        recipient: Address,
        message_id: MessageId,
        holder: Address,
        now: Millis,
    ) -> CacheFuture<Vec<Address>> {
        blocking(self, move |c| {
            c.refuse_held(&recipient, &message_id, &holder, now)
        })
    }
    /// [`MailCache::has_deposit`], awaited.
    fn has_deposit_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        message_id: MessageId,
    ) -> CacheFuture<bool> {
        blocking(self, move |c| {
            c.has_deposit(&sender, &recipient, &message_id)
        })
    }
    /// [`MailCache::hold`], awaited.
    fn hold_async(self: Arc<Self>, hold: NewHold) -> CacheFuture<bool> {
        blocking(self, move |c| c.hold(hold))
    }
    /// [`MailCache::receipts`], awaited.
    fn receipts_async(self: Arc<Self>, sender: Address) -> CacheFuture<Vec<Receipt>> {
        blocking(self, move |c| c.receipts(&sender))
    }
    /// [`MailCache::withdraw`], awaited.
    fn withdraw_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        message_id: MessageId,
    ) -> CacheFuture<bool> {
        blocking(self, move |c| c.withdraw(&sender, &recipient, &message_id))
    }
    /// [`MailCache::ack_receipt`], awaited.
    fn ack_receipt_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        message_id: MessageId,
    ) -> CacheFuture<()> {
        blocking(self, move |c| {
            c.ack_receipt(&sender, &recipient, &message_id)
        })
    }
}

/// Runs `f` on `cache` on tokio's blocking pool (the default `*_async` of the mail cache
/// and the file store).
pub(crate) fn blocking<C: Send + Sync + ?Sized + 'static, T: Send + 'static>(
    cache: Arc<C>,
    f: impl FnOnce(&C) -> Result<T, Error> + Send + 'static,
) -> CacheFuture<T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(move || f(&cache))
            .await
            .map_err(|e| Error::Cache(format!("the cache task failed: {e}")))?
    })
}

/// A stored envelope in [`MemoryCache`].
#[derive(Debug, Clone)]
struct Stored {
    sender: Address,
    sealed: Vec<u8>,
    deposited_at: Millis,
    expires_at: Millis,
}

#[derive(Debug, Default)]
struct State {
    /// (recipient, message id) → envelope.
    mail: BTreeMap<(Address, MessageId), Stored>,
    /// (sender, recipient, message id) → outcome.
    receipts: BTreeMap<(Address, Address, MessageId), ReceiptOutcome>,
    /// (recipient, message id) → where a co-recipient holds it.
    held: BTreeMap<(Address, MessageId), NewHold>,
}

/// The cache in memory, lost when the process ends. For tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryCache {
    state: Mutex<State>,
}

impl MemoryCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records `outcome` receipts about `(recipient, message_id)` for each of `told` (once each);
/// returns them, sorted.
fn record_receipts(
    state: &mut State,
    mut told: Vec<Address>,
    recipient: &Address,
    message_id: &MessageId,
    outcome: ReceiptOutcome,
) -> Vec<Address> {
    told.sort();
    told.dedup();
    for who in &told {
        state.receipts.insert(
            (who.clone(), recipient.clone(), message_id.clone()),
            outcome,
        );
    }
    told
}

impl MailCache for MemoryCache {
    fn deposit(&self, mail: NewMail, quota_bytes: u64) -> Result<Deposit, Error> {
        let mut state = self.state();
        let key = (mail.recipient, mail.message_id);
        if let Some(old) = state.mail.get(&key) {
            return Ok(if old.sender == mail.sender {
                Deposit::AlreadyStored
            } else {
                Deposit::Conflict
            });
        }
        let used: u64 = state
            .mail
            .iter()
            .filter(|((r, _), _)| *r == key.0)
            .map(|(_, m)| m.sealed.len() as u64)
            .sum();
        if used + mail.sealed.len() as u64 > quota_bytes {
            return Ok(Deposit::QuotaExceeded);
        }
        state.mail.insert(
            key,
            Stored {
                sender: mail.sender,
                sealed: mail.sealed,
                deposited_at: mail.deposited_at,
                expires_at: mail.expires_at,
            },
        );
        Ok(Deposit::Stored)
    }

    fn waiting(&self, recipient: &Address) -> Result<Vec<WaitingMail>, Error> {
        let state = self.state();
        let mut items: Vec<WaitingMail> = state
            .mail
            .iter()
            .filter(|((r, _), _)| r == recipient)
            .map(|((_, id), m)| WaitingMail {
                message_id: id.clone(),
                from: m.sender.clone(),
                size: m.sealed.len() as u64,
                deposited_at: m.deposited_at,
                location: MailLocation::Relay,
            })
            .collect();
        items.extend(
            state
                .held
                .values()
                .filter(|h| &h.recipient == recipient)
                .map(|h| WaitingMail {
                    message_id: h.message_id.clone(),
                    from: h.sender.clone(),
                    size: h.size,
                    deposited_at: h.held_at,
                    location: MailLocation::Peer {
                        holder: h.holder.clone(),
                    },
                }),
        );
        items.sort_by_key(|w| w.deposited_at);
        Ok(items)
    }

    fn fetch(
        &self,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<Option<CachedMail>, Error> {
        Ok(self
            .state()
            .mail
            .get(&(recipient.clone(), message_id.clone()))
            .map(|m| CachedMail {
                sender: m.sender.clone(),
                sealed: m.sealed.clone(),
            }))
    }

    fn release(
        &self,
        recipient: &Address,
        message_id: &MessageId,
        outcome: ReceiptOutcome,
        _now: Millis,
    ) -> Result<Vec<Address>, Error> {
        let mut state = self.state();
        let key = (recipient.clone(), message_id.clone());
        let mut told: Vec<Address> = Vec::new();
        if let Some(m) = state.mail.remove(&key) {
            told.push(m.sender);
        }
        if let Some(h) = state.held.remove(&key) {
            told.push(h.sender);
            told.push(h.holder);
        }
        Ok(record_receipts(
            &mut state, told, recipient, message_id, outcome,
        ))
    }

    fn refuse_held(
        &self,
        recipient: &Address,
        message_id: &MessageId,
        holder: &Address,
        _now: Millis,
    ) -> Result<Vec<Address>, Error> {
        let mut state = self.state();
        let key = (recipient.clone(), message_id.clone());
        let h = match state.held.entry(key.clone()) {
            Entry::Occupied(e) if &e.get().holder == holder => e.remove(),
            _ => return Ok(Vec::new()),
        };
        let mut told = vec![h.holder];
        if !state.mail.contains_key(&key) {
            told.push(h.sender);
        }
        Ok(record_receipts(
            &mut state,
            told,
            recipient,
            message_id,
            ReceiptOutcome::Refused,
        ))
    }

    fn has_deposit(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<bool, Error> {
        let state = self.state();
        let cached = state
            .mail
            .get(&(recipient.clone(), message_id.clone()))
            .is_some_and(|m| &m.sender == sender);
        let receipt =
            state
                .receipts
                .contains_key(&(sender.clone(), recipient.clone(), message_id.clone()));
        Ok(cached || receipt)
    }

    fn withdraw(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<bool, Error> {
        let mut state = self.state();
        let key = (recipient.clone(), message_id.clone());
        if state.mail.get(&key).is_some_and(|m| &m.sender == sender) {
            state.mail.remove(&key);
            return Ok(true);
        }
        Ok(false)
    }

    fn hold(&self, hold: NewHold) -> Result<bool, Error> {
        let key = (hold.recipient.clone(), hold.message_id.clone());
        let holder = hold.holder.clone();
        Ok(self.state().held.entry(key).or_insert(hold).holder == holder)
    }

    fn receipts(&self, sender: &Address) -> Result<Vec<Receipt>, Error> {
        Ok(self
            .state()
            .receipts
            .iter()
            .filter(|((s, _, _), _)| s == sender)
            .map(|((s, r, id), outcome)| Receipt {
                sender: s.clone(),
                recipient: r.clone(),
                message_id: id.clone(),
                outcome: *outcome,
            })
            .collect())
    }

    fn ack_receipt(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<(), Error> {
        self.state()
            .receipts
            .remove(&(sender.clone(), recipient.clone(), message_id.clone()));
        Ok(())
    }

    fn expire(&self, now: Millis) -> Result<Vec<Receipt>, Error> {
        let mut state = self.state();
        let expired: Vec<(Address, MessageId)> = state
            .mail
            .iter()
            .filter(|(_, m)| m.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let held: Vec<NewHold> = state
            .held
            .values()
            .filter(|h| h.expires_at <= now)
            .cloned()
            .collect();
        let mut told: Vec<(Address, Address, MessageId)> = Vec::new();
        for key in expired {
            if let Some(m) = state.mail.remove(&key) {
                told.push((m.sender, key.0, key.1));
            }
        }
        for h in held {
            state
                .held
                .remove(&(h.recipient.clone(), h.message_id.clone()));
            told.push((h.sender, h.recipient.clone(), h.message_id.clone()));
            told.push((h.holder, h.recipient, h.message_id));
        }
        let mut receipts = Vec::with_capacity(told.len());
        for (sender, recipient, message_id) in told {
            state.receipts.insert(
                (sender.clone(), recipient.clone(), message_id.clone()),
                ReceiptOutcome::Expired,
            );
            receipts.push(Receipt {
                sender,
                recipient,
                message_id,
                outcome: ReceiptOutcome::Expired,
            });
        }
        Ok(receipts)
    }
}

/// The behaviour every [`MailCache`] implementation shares, as plain functions over a fresh,
/// empty cache: [`MemoryCache`] runs them here, the relay's SQLite cache in its own tests.
pub mod conformance {
    use super::*;

    /// An address from text.
    pub fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    /// Mail `n` (`len` bytes) from alice@h to `to`, deposited at `at`, expiring 100 ms later.
    pub fn mail(to: &str, n: u8, len: usize, at: Millis) -> NewMail {
        NewMail {
            recipient: a(to),
            message_id: MessageId::new([n; 16], "h"),
            sender: a("alice@h"),
            sealed: vec![n; len],
            deposited_at: at,
            expires_at: at + 100,
        }
    }

    /// A deposit called back by its sender: gone from the waiting list, its bytes no longer
    /// counted against the recipient's quota, no receipt; nobody else may call it back,
    /// and one already released cannot be.
    pub fn withdrawn_by_its_sender_only(c: &dyn MailCache) {
        let (alice, bob, carol) = (a("alice@h"), a("bob@h"), a("carol@h"));
        let first = mail("bob@h", 1, 6, 10);
        let id = first.message_id.clone();
        assert_eq!(c.deposit(first, 10).unwrap(), Deposit::Stored);
        assert!(!c.withdraw(&carol, &bob, &id).unwrap(), "not carol's");
        assert!(!c.withdraw(&alice, &carol, &id).unwrap(), "not for carol");
        assert_eq!(c.waiting(&bob).unwrap().len(), 1);
        assert_eq!(
            c.deposit(mail("bob@h", 2, 6, 10), 10).unwrap(),
            Deposit::QuotaExceeded
        );
        assert!(c.withdraw(&alice, &bob, &id).unwrap());
        assert!(c.waiting(&bob).unwrap().is_empty());
        assert_eq!(c.fetch(&bob, &id).unwrap(), None);
        assert!(!c.has_deposit(&alice, &bob, &id).unwrap());
        assert!(c.receipts(&alice).unwrap().is_empty(), "no receipt");
        assert!(!c.withdraw(&alice, &bob, &id).unwrap(), "already gone");
        // Its room is free again.
        let second = mail("bob@h", 2, 6, 10);
        let id2 = second.message_id.clone();
        assert_eq!(c.deposit(second, 10).unwrap(), Deposit::Stored);
        // Released by the recipient: too late to call back.
        assert_eq!(
            c.release(&bob, &id2, ReceiptOutcome::Delivered, 11)
                .unwrap(),
            vec![alice.clone()]
        );
        assert!(!c.withdraw(&alice, &bob, &id2).unwrap());
    }

    /// Deposit (idempotent, conflict, quota), waiting list, fetch and release only by the
    /// recipient, receipts until acknowledged, deposit checks, expiry. Leaves one mail for
    /// carol@h in the cache.
    pub fn deposit_quota_release_receipts_and_expiry(c: &dyn MailCache) {
        assert_eq!(
            c.deposit(mail("bob@h", 1, 6, 10), 10).unwrap(),
            Deposit::Stored
        );
        assert_eq!(
            c.deposit(mail("bob@h", 1, 6, 10), 10).unwrap(),
            Deposit::AlreadyStored
        );
        let other = NewMail {
            sender: a("carol@h"),
            ..mail("bob@h", 1, 6, 10)
        };
        assert_eq!(c.deposit(other, 10).unwrap(), Deposit::Conflict);
        assert_eq!(
            c.deposit(mail("bob@h", 2, 5, 20), 10).unwrap(),
            Deposit::QuotaExceeded
        );
        assert_eq!(
            c.deposit(mail("bob@h", 3, 4, 20), 10).unwrap(),
            Deposit::Stored
        );
        assert_eq!(
            c.deposit(mail("carol@h", 2, 5, 50), 10).unwrap(),
            Deposit::Stored
        );
        let waiting = c.waiting(&a("bob@h")).unwrap();
        assert_eq!(waiting.len(), 2);
        assert_eq!((waiting[0].size, waiting[1].size), (6, 4));

        let id1 = MessageId::new([1; 16], "h");
        let has = |c: &dyn MailCache, s: &str| c.has_deposit(&a(s), &a("bob@h"), &id1).unwrap();
        assert!(has(c, "alice@h") && !has(c, "carol@h"));
        assert_eq!(c.fetch(&a("carol@h"), &id1).unwrap(), None);
        assert!(c
            .release(&a("carol@h"), &id1, ReceiptOutcome::Delivered, 30)
            .unwrap()
            .is_empty());
        assert_eq!(
            c.fetch(&a("bob@h"), &id1).unwrap().unwrap().sealed,
            vec![1; 6]
        );
        assert_eq!(
            c.release(&a("bob@h"), &id1, ReceiptOutcome::Delivered, 30)
                .unwrap(),
            vec![a("alice@h")]
        );
        assert_eq!(c.fetch(&a("bob@h"), &id1).unwrap(), None);
        let receipts = c.receipts(&a("alice@h")).unwrap();
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].outcome, ReceiptOutcome::Delivered);
        assert!(has(c, "alice@h"), "its receipt waits");
        c.ack_receipt(&a("alice@h"), &a("bob@h"), &id1).unwrap();
        assert!(!has(c, "alice@h"));
        assert!(c.receipts(&a("alice@h")).unwrap().is_empty());

        // Bob's second mail expires at 120, Carol's at 150.
        assert!(c.expire(119).unwrap().is_empty());
        let expired = c.expire(120).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].recipient, a("bob@h"));
        assert_eq!(expired[0].outcome, ReceiptOutcome::Expired);
        assert!(c.waiting(&a("bob@h")).unwrap().is_empty());
        assert_eq!(c.receipts(&a("alice@h")).unwrap(), expired);
        assert_eq!(c.waiting(&a("carol@h")).unwrap().len(), 1);
    }

    /// The quota counts what still waits for the recipient: its releases and expiry free
    /// room, a refused deposit or one made again takes none, and each recipient has a quota
    /// of its own.
    pub fn quota_counts_what_still_waits(c: &dyn MailCache) {
        let deposit = |m: NewMail| c.deposit(m, 10).unwrap();
        assert_eq!(deposit(mail("bob@h", 1, 6, 10)), Deposit::Stored);
        assert_eq!(deposit(mail("bob@h", 2, 5, 10)), Deposit::QuotaExceeded);
        assert_eq!(deposit(mail("bob@h", 3, 4, 10)), Deposit::Stored);
        assert_eq!(deposit(mail("bob@h", 4, 1, 10)), Deposit::QuotaExceeded);
        assert_eq!(deposit(mail("carol@h", 5, 10, 10)), Deposit::Stored);
        let id = |n: u8| MessageId::new([n; 16], "h");
        c.release(&a("bob@h"), &id(1), ReceiptOutcome::Delivered, 20)
            .unwrap();
        // With room left, a deposit made again is still answered as such, and takes none.
        assert_eq!(deposit(mail("bob@h", 3, 4, 10)), Deposit::AlreadyStored);
        let other = NewMail {
            sender: a("carol@h"),
            ..mail("bob@h", 3, 4, 10)
        };
        assert_eq!(deposit(other), Deposit::Conflict);
        assert_eq!(deposit(mail("bob@h", 2, 5, 30)), Deposit::Stored);
        assert_eq!(deposit(mail("bob@h", 6, 2, 30)), Deposit::QuotaExceeded);
        // Bob's mail 3 expires at 110, carol's at 110, bob's mail 2 at 130.
        assert_eq!(c.expire(110).unwrap().len(), 2);
        assert_eq!(deposit(mail("bob@h", 6, 5, 120)), Deposit::Stored);
        assert_eq!(deposit(mail("bob@h", 7, 1, 120)), Deposit::QuotaExceeded);
        assert_eq!(deposit(mail("carol@h", 8, 10, 120)), Deposit::Stored);
    }

    /// Held-copy listings: the first holder stays, only the recipient releases (sender and
    /// holder get receipts), the bytes are not in the cache, expiry tells both.
    pub fn held_copies_are_listed_released_and_expired(c: &dyn MailCache) {
        let id = MessageId::new([4; 16], "h");
        let hold = |holder: &str| NewHold {
            recipient: a("bob@h"),
            message_id: id.clone(),
            holder: a(holder),
            sender: a("alice@h"),
            size: 700,
            held_at: 10,
            expires_at: 110,
        };
        assert!(c.hold(hold("carol@h")).unwrap());
        assert!(
            c.hold(hold("carol@h")).unwrap(),
            "registering again is fine"
        );
        // A second holder does not replace the first, and is told so.
        assert!(!c.hold(hold("dan@h")).unwrap());
        let waiting = c.waiting(&a("bob@h")).unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            waiting[0].location,
            MailLocation::Peer {
                holder: a("carol@h")
            }
        );
        assert_eq!((waiting[0].size, &waiting[0].from), (700, &a("alice@h")));
        assert_eq!(
            c.fetch(&a("bob@h"), &id).unwrap(),
            None,
            "the bytes are not here"
        );
        assert!(c
            .release(&a("carol@h"), &id, ReceiptOutcome::Delivered, 20)
            .unwrap()
            .is_empty());
        assert_eq!(
            c.release(&a("bob@h"), &id, ReceiptOutcome::Delivered, 20)
                .unwrap(),
            vec![a("alice@h"), a("carol@h")]
        );
        assert!(c.waiting(&a("bob@h")).unwrap().is_empty());
        assert_eq!(c.receipts(&a("carol@h")).unwrap().len(), 1);
        assert_eq!(c.receipts(&a("alice@h")).unwrap().len(), 1);
        // Expiry tells both.
        assert!(c.hold(hold("carol@h")).unwrap());
        let expired = c.expire(110).unwrap();
        assert_eq!(expired.len(), 2);
        assert!(expired.iter().all(|r| r.outcome == ReceiptOutcome::Expired));
        assert!(c.waiting(&a("bob@h")).unwrap().is_empty());
    }

    /// A held copy refused by its recipient: only that listing goes; the holder is told, and
    /// the sender only when the relay keeps no copy of its own (which stays waiting).
    pub fn held_copy_refused_alone(c: &dyn MailCache) {
        let hold = |n: u8| NewHold {
            recipient: a("bob@h"),
            message_id: MessageId::new([n; 16], "h"),
            holder: a("carol@h"),
            sender: a("alice@h"),
            size: 700,
            held_at: 10,
            expires_at: 110,
        };
        let (kept, only) = (MessageId::new([1; 16], "h"), MessageId::new([2; 16], "h"));
        assert_eq!(
            c.deposit(mail("bob@h", 1, 30, 10), 1 << 20).unwrap(),
            Deposit::Stored
        );
        assert!(c.hold(hold(1)).unwrap());
        assert!(c.hold(hold(2)).unwrap());
        assert_eq!(c.waiting(&a("bob@h")).unwrap().len(), 3);
        // Not the recipient, or not that holder: nothing.
        for (recipient, holder) in [("carol@h", "carol@h"), ("bob@h", "alice@h")] {
            assert!(c
                .refuse_held(&a(recipient), &kept, &a(holder), 20)
                .unwrap()
                .is_empty());
        }
        assert_eq!(
            c.refuse_held(&a("bob@h"), &kept, &a("carol@h"), 20)
                .unwrap(),
            vec![a("carol@h")],
            "the relay keeps its own copy: the sender is not told"
        );
        let waiting = c.waiting(&a("bob@h")).unwrap();
        assert_eq!(waiting.len(), 2);
        assert!(waiting
            .iter()
            .any(|w| w.message_id == kept && w.location == MailLocation::Relay));
        assert!(c.fetch(&a("bob@h"), &kept).unwrap().is_some());
        assert_eq!(
            c.refuse_held(&a("bob@h"), &only, &a("carol@h"), 20)
                .unwrap(),
            vec![a("alice@h"), a("carol@h")]
        );
        assert_eq!(c.waiting(&a("bob@h")).unwrap().len(), 1);
        let refused = |who: &str| {
            c.receipts(&a(who))
                .unwrap()
                .iter()
                .filter(|r| r.outcome == ReceiptOutcome::Refused)
                .count()
        };
        assert_eq!((refused("carol@h"), refused("alice@h")), (2, 1));
        assert!(
            c.refuse_held(&a("bob@h"), &only, &a("carol@h"), 20)
                .unwrap()
                .is_empty(),
            "already gone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cache_deposit_quota_release_and_expiry() {
        conformance::deposit_quota_release_receipts_and_expiry(&MemoryCache::new());
    }

    #[test]
    fn memory_cache_quota_counts_what_still_waits() {
        conformance::quota_counts_what_still_waits(&MemoryCache::new());
    }

    #[test]
    fn memory_cache_held_copies_are_listed_released_and_expired() {
        conformance::held_copies_are_listed_released_and_expired(&MemoryCache::new());
    }

    #[test]
    fn memory_cache_withdrawn_by_its_sender_only() {
        conformance::withdrawn_by_its_sender_only(&MemoryCache::new());
    }

    #[test]
    fn memory_cache_held_copy_refused_alone() {
        conformance::held_copy_refused_alone(&MemoryCache::new());
    }
}
