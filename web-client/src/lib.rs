//! # peermail-web-client
//!
//! The browser side of Peermail: a Yew UI around `peermail-core`'s sans-IO
//! [`Node`](peermail_core::Node), and the thin drivers that carry out what the node asks for.
//! Delivery logic lives in the node; nothing here decides *whether* or *when* to send a mail.
//!
//! Modules:
//! - [`store`]: [`IdbStore`](store::IdbStore), the `MailStore` contract on IndexedDB.
//! - [`chunks`]: the attachment chunk store (Blobs in the same database) and sealing a file into it.
//! - [`held`]: received chunks kept in memory until their segment is whole, then written once.
//! - [`notify`]: desktop notifications of mail received while the page is out of sight.
//! - [`signaling`]: the self-reconnecting WebSocket to the relay's `/ws`.
//! - [`rtc`]: RTCPeerConnection / RTCDataChannel negotiation and traffic.
//! - [`runtime`]: sign-up, the node pump (one ordered output queue, one executing task),
//!   the tick timer, and what the UI reads.
//! - [`state`], [`app`]: the UI (reducer state and components), following
//!   `docs/ui-contract.md`.
//! - [`attachments_view`]: a mail's attachments: transfer progress, Save / Open, previews.
//! - [`compose_files`]: the files attached in Compose (picker, drop, list).
//! - [`text`]: the words shown for presence and delivery states.
//! - [`util`]: clock, CSPRNG, date formatting.

pub mod app;
pub mod attachments_view;
pub mod chunks;
pub mod compose_files;
pub mod draft;
pub mod held;
pub mod notify;
pub mod rtc;
pub mod runtime;
pub mod shortcuts;
pub mod signaling;
pub mod state;
pub mod store;
pub mod text;
pub mod util;

/// Mounts the app on the page's `<body>` and registers the service worker.
pub fn run() {
    yew::Renderer::<app::App>::new().render();
    register_service_worker();
}

/// Registers `/sw.js` (static/sw.js), which keeps the app shell for opening without a
/// network. Where service workers are unavailable (plain http on a non-local host) the app
/// works the same, just not offline.
fn register_service_worker() {
    let Some(sw) = util::service_workers() else {
        return;
    };
    let promise = sw.register("/sw.js");
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = wasm_bindgen_futures::JsFuture::from(promise).await {
            util::log(&format!("service worker not registered: {e:?}"));
        }
    });
}
