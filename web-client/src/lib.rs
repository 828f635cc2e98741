//! # peermail-web-client
//!
//! The browser side of Peermail: a Yew UI around `peermail-core`'s sans-IO
//! [`Node`](peermail_core::Node), and the thin drivers that carry out what the node asks for.
//! Delivery logic lives in the node; nothing here decides *whether* or *when* to send a mail.
//!
//! Modules:
//! - [`store`]: [`IdbStore`](store::IdbStore), the `MailStore` contract on IndexedDB.
//! - [`signaling`]: the self-reconnecting WebSocket to the relay's `/ws`.
//! - [`rtc`]: RTCPeerConnection / RTCDataChannel negotiation and traffic.
//! - [`runtime`]: sign-up, the node pump (one ordered output queue, one executing task),
//!   the tick timer, and what the UI reads.
//! - [`state`], [`app`]: the UI (reducer state and components), following
//!   `docs/ui-contract.md`.
//! - [`text`]: the words shown for presence and delivery states.
//! - [`util`]: clock, CSPRNG, date formatting.

pub mod app;
pub mod rtc;
pub mod runtime;
pub mod signaling;
pub mod state;
pub mod store;
pub mod text;
pub mod util;

/// Mounts the app on the page's `<body>`.
pub fn run() {
    yew::Renderer::<app::App>::new().render();
}
