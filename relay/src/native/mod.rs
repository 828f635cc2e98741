//! A native Peermail peer: the same sans-IO [`peermail_core::Node`] the browser runs,
//! driven on tokio, talking WebRTC (webrtc-rs) to browsers and other peers.
//!
//! This is the foundation of personal storage nodes (issue 5): an always-on peer that takes
//! part in delivery exactly like a browser does.
//!
//! - [`signal`]: the WebSocket signaling client of the relay's `/ws` (challenge, register or
//!   authenticate, frames in and out, heartbeats answered by reading all the time).
//! - [`rtc`]: peer connections and `mail` data channels, interoperable with
//!   `web-client/src/rtc.rs` (same `Signal` payloads, `conn` ids, channel, reports).
//! - [`driver`]: [`NativeNode`]: the node on its own thread, its outputs executed in order,
//!   its store, events on a broadcast channel.
//! - [`store`]: the node's store — core's `MemoryStore`, or [`FileStore`],
//!   a simple durable directory store.

pub mod driver;
pub mod rtc;
pub mod signal;
pub mod store;

pub use driver::{NativeNode, NativeOptions, PeerTraffic};
pub use store::{FileStore, NativeStore};
