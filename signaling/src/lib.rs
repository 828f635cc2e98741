//! Peermail's signaling endpoint: the `/ws` WebSocket of the relay.
//!
//! A browser (or a storage node) opens one WebSocket per tab, proves who it is by signing the
//! server's challenge, then asks for the presence of the addresses it cares about and
//! exchanges WebRTC offers, answers and ICE candidates with them. The frames themselves are
//! defined in [`peermail_core::wire::signal`]; this crate only carries them.
//!
//! Modules:
//! - [`directory`]: the account directory behind a trait ([`Directory`]), so the relay can keep
//!   it in SQLite; [`MemoryDirectory`] keeps it in memory.
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
//! - Per-connection state is small (the goal is ≤ 16 KiB resident per idle authenticated
//!   connection): small WebSocket buffers, a bounded queue of already-encoded frames.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use peermail_core::wire::signal::MAX_SIGNAL_FRAME;
use tokio::sync::watch;

pub mod directory;
mod hub;
mod session;

pub use directory::{Directory, MemoryDirectory};
pub use session::MAX_SUBSCRIPTIONS;

/// Size of the WebSocket read buffer of each connection. Small on purpose: axum's default of
/// 128 KiB per connection is what makes thousands of idle connections expensive.
const READ_BUFFER_SIZE: usize = 4 * 1024;

/// The one error type of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Someone already registered this name.
    #[error("the name {0} is taken")]
    NameTaken(String),
    /// The directory's storage failed; the text says how.
    #[error("the account directory failed: {0}")]
    Directory(String),
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
}

impl SignalingConfig {
    /// Defaults: ping every 10 s, drop after 30 s of silence, sign in within 2 minutes.
    pub fn new(domain: impl Into<String>) -> Self {
        SignalingConfig {
            domain: domain.into(),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            sign_in_timeout: Duration::from_secs(120),
        }
    }
}

/// The shared state of the signaling endpoint: configuration, directory, live sessions and
/// presence subscriptions. Create one per relay with [`Signaling::new`] and mount it with
/// [`router`].
pub struct Signaling {
    /// Domain and heartbeat settings.
    config: SignalingConfig,
    /// Accounts: who exists and with which public key.
    directory: Arc<dyn Directory>,
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
    pub fn new(mut config: SignalingConfig, directory: Arc<dyn Directory>) -> Arc<Self> {
        config.domain = config.domain.trim().to_ascii_lowercase();
        Arc::new(Signaling {
            config,
            directory,
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

    fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// Routes of the signaling endpoint: `GET /ws` (WebSocket upgrade).
pub fn router(signaling: Arc<Signaling>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .with_state(signaling)
}

async fn upgrade(State(signaling): State<Arc<Signaling>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(READ_BUFFER_SIZE)
        // Write each frame out at once instead of collecting 128 KiB first.
        .write_buffer_size(0)
        .max_message_size(MAX_SIGNAL_FRAME)
        .max_frame_size(MAX_SIGNAL_FRAME)
        .on_upgrade(move |socket| session::run(signaling, socket))
}
