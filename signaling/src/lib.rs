//! Peermail's signaling endpoint: the `/ws` WebSocket of the relay.
//!
//! A browser (or a storage node) opens one WebSocket per tab, proves who it is by signing the
//! server's challenge, then asks for the presence of the addresses it cares about and
//! exchanges WebRTC offers, answers and ICE candidates with them. The frames themselves are
//! defined in [`peermail_core::wire::signal`]; this crate only carries them.
//!
//! Modules:
//! - [`directory`]: the account directory behind a trait ([`Directory`]), so the relay can keep
//!   it in SQLite; [`MemoryDirectory`] keeps it in memory. Besides each account's signing key
//!   it holds the encryption key the account published (`publish_key`, served by `lookup`).
//! - [`cache`]: the store-and-forward cache of sealed envelopes for offline recipients, the
//!   listings of copies held by co-recipients' nodes, and the receipts for senders and
//!   holders, behind a trait ([`MailCache`]); [`MemoryCache`] keeps it in memory, the relay
//!   in SQLite. Sessions await its `*_async` methods (by default the blocking call on
//!   tokio's blocking pool; the relay sends them to its cache writer thread). Every
//!   implementation runs `cache::conformance`.
//! - `hub` (private): who is online, who watches whom. One mutex, never held across an await.
//! - `session` (private): the per-connection loop: challenge, authentication, heartbeat,
//!   dispatch of client frames.
//!
//! Invariants:
//! - Input from a socket never panics and never ends the connection, except an oversized frame
//!   (closed with 1008), a connection that has not signed in within the sign-in timeout
//!   (closed with 1008) and a silent peer (dropped after the heartbeat timeout).
//! - Presence goes only to sessions that subscribed to an address, never to everyone.
//! - Negotiation messages travel only between authenticated sessions, and the `from` of a
//!   forwarded message is always set by the server.
//! - The cache answers a session only about mail waiting for its own account: fetching or
//!   releasing anything else gets `not_found`, whether it exists for someone else or not.
//!   A deposit is acknowledged (`deposited`) only after the cache reports it durable.
//! - Quota (per recipient) and deposit rate (per sender) are checked before anything is
//!   stored; when exceeded the sender gets an error and nothing is stored.
//! - Per-connection state is small (the goal is ≤ 16 KiB resident per idle authenticated
//!   connection): small WebSocket buffers, a bounded queue of already-encoded frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use peermail_core::address::Address;
use peermail_core::mail::Millis;
use peermail_core::wire::signal::{ServerFrame, MAX_SIGNAL_FRAME};
use tokio::sync::watch;

pub mod cache;
pub mod directory;
pub mod files;
mod hub;
mod session;

pub use cache::{MailCache, MemoryCache};
pub use directory::{Directory, MemoryDirectory, StorageNode};
pub use files::{FileCache, MemoryFiles};
pub use session::MAX_SUBSCRIPTIONS;

/// Size of the WebSocket read buffer of each connection. Small on purpose: axum's default of
/// 128 KiB per connection is what makes thousands of idle connections expensive.
const READ_BUFFER_SIZE: usize = 4 * 1024;

/// Frames queued on a connection are written out once they reach this many bytes, or when
/// the session flushes (after each reply and the frames pushed with it), so a reply and
/// its companions leave in one write. tungstenite's default is 128 KiB. Its buffer starts
/// empty and grows only with what is sent: an idle connection that sent only small frames
/// keeps a small one (a connection keeps at most about this much plus its largest frame).
const WRITE_BUFFER_SIZE: usize = 8 * 1024;

/// The one error type of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Someone already registered this name.
    #[error("the name {0} is taken")]
    NameTaken(String),
    /// The directory's storage failed; the text says how.
    #[error("the account directory failed: {0}")]
    Directory(String),
    /// The mail cache's storage failed; the text says how.
    #[error("the mail cache failed: {0}")]
    Cache(String),
}

/// How the signaling endpoint behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalingConfig {
    /// Host part of this relay's addresses (`name@domain`); sent in every challenge.
    pub domain: String,
    /// How often the server pings each connection.
    pub heartbeat_interval: Duration,
    /// A connection from which nothing (not even a pong) arrived for this long is dropped and
    /// its presence turns offline.
    pub heartbeat_timeout: Duration,
    /// A connection that has neither registered nor authenticated this long after connecting
    /// is closed (1008), so idle anonymous sockets do not pile up. Clients reconnect.
    pub sign_in_timeout: Duration,
    /// Limits of the mail cache.
    pub cache: CachePolicy,
    /// A storage node not heard from (heartbeat) for this long is unavailable: its session
    /// is closed and its presence turns offline.
    pub node_timeout: Duration,
    /// How long a storage node's pairing code stays valid (its session may wait that long
    /// without signing in).
    pub pairing_ttl: Duration,
}

impl SignalingConfig {
    /// Defaults: ping every 10 s, drop after 30 s of silence, sign in within 2 minutes, the
    /// [`CachePolicy`] defaults, storage nodes unavailable after 30 s without a heartbeat,
    /// pairing codes valid for 10 minutes.
    pub fn new(domain: impl Into<String>) -> Self {
        SignalingConfig {
            domain: domain.into(),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            sign_in_timeout: Duration::from_secs(120),
            cache: CachePolicy::default(),
            node_timeout: Duration::from_secs(30),
            pairing_ttl: Duration::from_secs(600),
        }
    }
}

/// Limits of the store-and-forward cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Undelivered envelopes are deleted this long after their deposit (and the sender gets
    /// an expired receipt) by [`Signaling::sweep_expired`].
    pub retention: Duration,
    /// Most bytes of sealed envelopes waiting for one recipient.
    pub quota_bytes: u64,
    /// Most deposits one sender may make per minute (a token bucket: up to this many at
    /// once, refilled evenly over the minute).
    pub deposit_rate_per_minute: u32,
    /// Largest attachment kept for offline recipients (plaintext bytes); larger files stay
    /// on their sender's node. Files count against the same per-recipient quota, separately
    /// from envelopes.
    pub inline_limit: u64,
}

impl Default for CachePolicy {
    /// 30 days, 100 MiB per recipient, 600 deposits per minute per sender, files up to
    /// 8 MiB.
    fn default() -> Self {
        CachePolicy {
            retention: Duration::from_secs(30 * 24 * 3600),
            quota_bytes: 100 * 1024 * 1024,
            deposit_rate_per_minute: 600,
            inline_limit: peermail_core::wire::signal::DEFAULT_INLINE_LIMIT,
        }
    }
}

/// A sender's deposit allowance (token bucket).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

/// Senders tracked by the deposit rate limit before full buckets are forgotten.
const RATE_TRACKED: usize = 10_000;

/// The shared state of the signaling endpoint: configuration, directory, live sessions and
/// presence subscriptions. Create one per relay with [`Signaling::new`] and mount it with
/// [`router`].
pub struct Signaling {
    /// Domain and heartbeat settings.
    config: SignalingConfig,
    /// Accounts: who exists and with which public keys.
    directory: Arc<dyn Directory>,
    /// Sealed envelopes waiting for their recipients, and receipts for their senders.
    cache: Arc<dyn MailCache>,
    /// Attachment files kept for offline recipients.
    files: Arc<dyn FileCache>,
    /// Deposit allowance per sender.
    deposit_rates: Mutex<HashMap<Address, Bucket>>,
    /// Pairing codes shown by storage nodes waiting to be paired: code → the waiting node.
    pairings: Mutex<HashMap<String, session::PendingPairing>>,
    /// Live sessions and presence subscriptions.
    hub: Mutex<hub::Hub>,
    /// Source of session ids, which tell apart two sessions of the same address.
    next_session: AtomicU64,
    /// Flips to `true` once, when the relay shuts down; every session then closes with 1001.
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Signaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaling")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Signaling {
    /// The domain is compared case-insensitively (it is stored lower-cased).
    pub fn new(
        mut config: SignalingConfig,
        directory: Arc<dyn Directory>,
        cache: Arc<dyn MailCache>,
        files: Arc<dyn FileCache>,
    ) -> Arc<Self> {
        config.domain = config.domain.trim().to_ascii_lowercase();
        Arc::new(Signaling {
            config,
            directory,
            cache,
            files,
            deposit_rates: Mutex::new(HashMap::new()),
            pairings: Mutex::new(HashMap::new()),
            hub: Mutex::new(hub::Hub::default()),
            next_session: AtomicU64::new(1),
            shutdown: watch::Sender::new(false),
        })
    }

    pub fn config(&self) -> &SignalingConfig {
        &self.config
    }

    /// Number of authenticated sessions right now.
    pub fn online_count(&self) -> usize {
        self.hub().online_count()
    }

    /// Closes every session (code 1001, "going away"). Call when the relay stops.
    pub fn close_all(&self) {
        self.shutdown.send_replace(true);
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, hub::Hub> {
        // The hub's invariants hold between statements, so a panic elsewhere while the lock
        // was held leaves it usable.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pairings(&self) -> std::sync::MutexGuard<'_, HashMap<String, session::PendingPairing>> {
        self.pairings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Deletes the cached envelopes whose retention ended, records an expired receipt for
    /// each, and pushes those receipts to the senders that are online (the others get them
    /// at their next sign-in). Returns how many expired. The relay calls this periodically.
    pub async fn sweep_expired(&self) -> Result<usize, Error> {
        let (cache, files) = (self.cache.clone(), self.files.clone());
        let now = now_millis();
        let receipts = tokio::task::spawn_blocking(move || {
            let receipts = cache.expire(now)?;
            files.expire_files(now)?;
            Ok::<_, Error>(receipts)
        })
        .await
        .map_err(|e| Error::Cache(format!("the sweep task failed: {e}")))??;
        for r in &receipts {
            tracing::debug!(sender = %r.sender, recipient = %r.recipient, message_id = %r.message_id,
                "cached mail expired");
            self.push(
                &r.sender,
                &ServerFrame::Receipt {
                    to: r.recipient.clone(),
                    message_id: r.message_id.clone(),
                    outcome: r.outcome,
                },
            );
        }
        Ok(receipts.len())
    }

    /// Queues `frame` for `to`'s live session, if it has one. Dropped if that session's
    /// outbox is full (it stopped reading); everything pushed this way is also sent again at
    /// the next sign-in.
    fn push(&self, to: &Address, frame: &ServerFrame) {
        self.push_with(to, || frame.encode());
    }

    /// [`Signaling::push`] of the frame `encode` writes, called only if `to` is online.
    fn push_with(&self, to: &Address, encode: impl FnOnce() -> String) {
        let Some(outbox) = self.hub().route(to) else {
            return;
        };
        if outbox.try_send(Utf8Bytes::from(encode())).is_err() {
            tracing::debug!(address = %to, "pushed frame dropped: outbox full or closed");
        }
    }

    /// Takes one deposit from `sender`'s allowance; `false` if none is left.
    fn allow_deposit(&self, sender: &Address) -> bool {
        let rate = f64::from(self.config.cache.deposit_rate_per_minute);
        let now = tokio::time::Instant::now();
        let refill = |b: &Bucket| {
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate / 60.0).min(rate)
        };
        let mut rates = self.deposit_rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() >= RATE_TRACKED {
            // A full bucket is the same as no bucket.
            rates.retain(|_, b| refill(b) < rate);
        }
        let bucket = rates.entry(sender.clone()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        bucket.tokens = refill(bucket);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Routes of the signaling endpoint: `GET /ws` (WebSocket upgrade).
pub fn router(signaling: Arc<Signaling>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .with_state(signaling)
}

async fn upgrade(State(signaling): State<Arc<Signaling>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_message_size(MAX_SIGNAL_FRAME)
        .max_frame_size(MAX_SIGNAL_FRAME)
        .on_upgrade(move |socket| session::run(signaling, socket))
}
