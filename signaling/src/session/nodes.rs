//! Storage nodes in a session: pairing codes, a node's heartbeats, and the location registry.
//!
//! A storage node that is not paired yet connects, signs [`pairing_message`] with its own
//! key (`request_pairing`) and shows the code it gets. A person signed in at this relay
//! enters the code (`pair_node`): the directory records the node's key as that account's
//! storage node, and the waiting node's session is told ([`ServerFrame::NodePaired`]). The
//! node then signs in as `name+node@domain` with the same key, like any account
//! (`Session::auth` looks the key up with `signing_key`). While signed in it sends
//! [`ClientFrame::NodeHeartbeat`](peermail_core::wire::signal::ClientFrame::NodeHeartbeat)s;
//! one missing for [`SignalingConfig::node_timeout`](crate::SignalingConfig) closes the
//! session, so its presence (what `locate_node` reports as available) turns offline.

use peermail_core::address::Address;
use peermail_core::attach::AttachmentId;
use peermail_core::identity::{pairing_message, PublicKey};
use peermail_core::wire::signal::{ErrorCode, ServerFrame};
use tokio::time::Instant;

use super::{internal, unknown_address, Session};
use crate::hub::Outbox;
use crate::{now_millis, Error};

/// Most storage nodes waiting with a pairing code at once (each is an open session).
const MAX_PENDING_PAIRINGS: usize = 10_000;
/// Wrong codes a session may enter in a row before it must wait [`WRONG_CODE_PAUSE`].
const WRONG_CODES: u8 = 5;
/// How long a session that entered too many wrong codes must wait.
const WRONG_CODE_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// A storage node waiting for a person to enter its code.
pub(crate) struct PendingPairing {
    key: PublicKey,
    session: u64,
    outbox: Outbox,
    expires: Instant,
}

/// The canonical form of a pairing code as people type it: its 8 digits as `1234-5678`.
fn normalise_code(code: &str) -> Option<String> {
    let digits: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let valid = digits.len() == 8 && digits.chars().all(|c| c.is_ascii_digit());
    valid.then(|| format!("{}-{}", &digits[..4], &digits[4..]))
}

/// A fresh code from the OS generator, `None` if it failed.
fn new_code() -> Option<String> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).ok()?;
    let n = u64::from_le_bytes(bytes) % 100_000_000;
    normalise_code(&format!("{n:08}"))
}

impl Session {
    /// The key that signs for `address`: an account's key, or the key of the storage node
    /// paired with `address`'s owner.
    pub(super) fn signing_key(&self, address: &Address) -> Result<Option<PublicKey>, Error> {
        if !address.is_storage_node() {
            return self.account_key(address);
        }
        if address.host() != self.signaling.config.domain {
            return Ok(None);
        }
        Ok(self
            .signaling
            .directory
            .storage_node(address.owner().local())?
            .map(|n| n.key))
    }

    /// Whether `address` is an account here, or the storage node of one that has a node.
    pub(super) fn address_known(&self, address: &Address) -> Result<bool, Error> {
        if address.is_storage_node() {
            return self.signing_key(address).map(|k| k.is_some());
        }
        self.account_exists(address)
    }

    /// This session is a signed-in storage node.
    pub(super) fn is_node(&self) -> bool {
        self.address.as_ref().is_some_and(Address::is_storage_node)
    }

    /// A storage node signed in: its heartbeat clock starts and the registry records it.
    pub(super) fn node_signed_in(&mut self) {
        self.forget_pairing();
        self.node_heard = Some(Instant::now());
        self.record_node_seen();
    }

    fn record_node_seen(&self) {
        let Some(owner) = self.address.as_ref().map(Address::owner) else {
            return;
        };
        if let Err(e) = self
            .signaling
            .directory
            .storage_node_seen(owner.local(), now_millis())
        {
            tracing::warn!(session = self.id, error = %e, "recording a node's heartbeat failed");
        }
    }

    /// When an unpaired node's pairing code expires (it may stay connected until then).
    pub(super) fn pairing_expires(&self) -> Option<Instant> {
        self.pairing.as_ref().map(|(_, expires)| *expires)
    }

    pub(super) fn request_pairing(&mut self, key: PublicKey, signature: &str) -> ServerFrame {
        if let Err(e) = key.verify(&pairing_message(&self.nonce, &key), signature) {
            return ServerFrame::error(ErrorCode::BadSignature, e.to_string());
        }
        let ttl = self.signaling.config.pairing_ttl;
        let now = Instant::now();
        let mut pairings = self.signaling.pairings();
        if let Some((code, expires)) = &self.pairing {
            if *expires > now && pairings.contains_key(code) {
                let remaining = expires.duration_since(now);
                return ServerFrame::PairingCode {
                    code: code.clone(),
                    expires_at: now_millis() + remaining.as_millis() as u64,
                };
            }
        }
        if pairings.len() >= MAX_PENDING_PAIRINGS {
            pairings.retain(|_, p| p.expires > now && !p.outbox.is_closed());
            if pairings.len() >= MAX_PENDING_PAIRINGS {
                return ServerFrame::error(
                    ErrorCode::RateLimited,
                    "too many storage nodes are waiting to be paired; try again later",
                );
            }
        }
        let code = loop {
            match new_code() {
                Some(code) if pairings.contains_key(&code) => continue,
                Some(code) => break code,
                None => {
                    return ServerFrame::error(
                        ErrorCode::Internal,
                        "the relay cannot make a pairing code now",
                    )
                }
            }
        };
        let expires = now + ttl;
        pairings.insert(
            code.clone(),
            PendingPairing {
                key,
                session: self.id,
                outbox: self.outbox.clone(),
                expires,
            },
        );
        drop(pairings);
        if let Some((old, _)) = self.pairing.replace((code.clone(), expires)) {
            self.signaling.pairings().remove(&old);
        }
        tracing::debug!(session = self.id, "pairing code issued");
        ServerFrame::PairingCode {
            code,
            expires_at: now_millis() + ttl.as_millis() as u64,
        }
    }

    /// Removes this session's pairing code, if it has one.
    pub(super) fn forget_pairing(&mut self) {
        if let Some((code, _)) = self.pairing.take() {
            let mut pairings = self.signaling.pairings();
            if pairings.get(&code).is_some_and(|p| p.session == self.id) {
                pairings.remove(&code);
            }
        }
    }

    pub(super) fn pair_node(&mut self, code: &str) -> ServerFrame {
        let Some(owner) = self.address.clone() else {
            return super::not_authenticated();
        };
        let now = Instant::now();
        if let Some(since) = self.wrong_codes_at {
            if self.wrong_codes >= WRONG_CODES && now < since + WRONG_CODE_PAUSE {
                return ServerFrame::error(
                    ErrorCode::RateLimited,
                    "too many wrong pairing codes; wait a minute and try again",
                );
            }
            if now >= since + WRONG_CODE_PAUSE {
                self.wrong_codes = 0;
            }
        }
        let pending = normalise_code(code).and_then(|code| {
            let mut pairings = self.signaling.pairings();
            let live = pairings
                .get(&code)
                .is_some_and(|p| p.expires > now && !p.outbox.is_closed());
            if live {
                pairings.remove(&code)
            } else {
                None
            }
        });
        let Some(pending) = pending else {
            self.wrong_codes = self.wrong_codes.saturating_add(1);
            self.wrong_codes_at = Some(now);
            return ServerFrame::error(
                ErrorCode::NotFound,
                format!(
                    "no storage node is waiting with the pairing code {:?}; check the code \
                     the node printed (a code is valid for {} minutes while the node runs)",
                    code.trim(),
                    self.signaling.config.pairing_ttl.as_secs() / 60
                ),
            );
        };
        self.wrong_codes = 0;
        if let Err(e) =
            self.signaling
                .directory
                .pair_storage_node(owner.local(), &pending.key, now_millis())
        {
            return internal(&e);
        }
        let node = owner.storage_node();
        let paired = ServerFrame::NodePaired {
            owner: owner.clone(),
            node: node.clone(),
        };
        if pending.outbox.try_send(paired.encode().into()).is_err() {
            tracing::debug!(session = self.id, "the paired node's session went away");
        }
        tracing::info!(%owner, "storage node paired");
        paired
    }

    /// `UnpairNode`: the registry forgets this account's storage node, and the node's live
    /// session is told and closed (its key no longer signs in). Answered the same whether
    /// or not a node was paired.
    pub(super) fn unpair_node(&mut self) -> ServerFrame {
        let Some(owner) = self.address.clone() else {
            return super::not_authenticated();
        };
        let had_one = match self.signaling.directory.unpair_storage_node(owner.local()) {
            Ok(had_one) => had_one,
            Err(e) => return internal(&e),
        };
        let node = owner.storage_node();
        if had_one {
            self.signaling.hub().unpaired(&node);
            tracing::info!(%owner, "storage node unpaired");
        }
        ServerFrame::NodeUnpaired { owner, node }
    }

    pub(super) fn node_heartbeat(&mut self) -> Option<ServerFrame> {
        if !self.is_node() {
            return Some(ServerFrame::error(
                ErrorCode::NotAuthenticated,
                "only a signed-in storage node sends heartbeats",
            ));
        }
        self.node_heard = Some(Instant::now());
        self.record_node_seen();
        None
    }

    /// `ListFiles`: the whole files kept for this account (a node: for its owner).
    pub(super) async fn list_files(&mut self) -> ServerFrame {
        let Some(owner) = self.address.as_ref().map(Address::owner) else {
            return super::not_authenticated();
        };
        match self.signaling.files.clone().kept_for_async(owner).await {
            Ok(items) => ServerFrame::FilesKept { items },
            Err(e) => internal(&e),
        }
    }

    /// After a chunk for `recipient` was stored: if that made the file whole and the
    /// recipient's storage node is signed in, the node is told (it fetches the file and
    /// releases the relay's copy).
    pub(super) async fn offer_to_node(&self, recipient: &Address, attachment: AttachmentId) {
        let node = recipient.storage_node();
        if !self.signaling.hub().is_online(&node) {
            return;
        }
        let files = self.signaling.files.clone();
        let whole = files
            .clone()
            .file_async(recipient.clone(), attachment)
            .await;
        let Ok(Some(_)) = whole else {
            return;
        };
        let items = match files.kept_for_async(recipient.clone()).await {
            Ok(items) => items
                .into_iter()
                .filter(|i| i.attachment == attachment)
                .collect(),
            Err(_) => return,
        };
        self.signaling
            .push(&node, &ServerFrame::FilesKept { items });
    }

    pub(super) fn locate_node(&mut self, address: Address) -> ServerFrame {
        let person = address.owner();
        match self.account_exists(&person) {
            Ok(true) => {}
            Ok(false) => return unknown_address(&person),
            Err(e) => return internal(&e),
        }
        let node = match self.signaling.directory.storage_node(person.local()) {
            Ok(node) => node,
            Err(e) => return internal(&e),
        };
        let Some(node) = node else {
            return ServerFrame::NodeLocation {
                address: person,
                node: None,
                available: false,
                last_seen: None,
            };
        };
        let node_address = person.storage_node();
        let available = self.signaling.hub().is_online(&node_address);
        ServerFrame::NodeLocation {
            address: person,
            node: Some(node_address),
            available,
            last_seen: node.last_seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(normalise_code(" 1234 5678 ").as_deref(), Some("1234-5678"));
        assert_eq!(normalise_code("12345678").as_deref(), Some("1234-5678"));
        assert_eq!(normalise_code("1234-567"), None);
        assert_eq!(normalise_code("1234-567x"), None);
        let code = new_code().unwrap();
        assert_eq!(normalise_code(&code), Some(code));
    }
}
