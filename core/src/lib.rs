//! # peermail-core
//!
//! The sans-IO heart of Peermail, shared by the relay, the browser client and the tests.
//! It opens no sockets, spawns no tasks and reads no clock: time (`now`, in milliseconds)
//! and randomness come in as values. It compiles natively and to `wasm32-unknown-unknown`.
//!
//! Modules:
//! - [`address`]: `local@host` addresses and name rules.
//! - [`groups`]: address-book groups and the expansion of group names in To/Cc.
//! - [`attach`]: attachments — per-file encryption in chunks, the manifest a mail carries,
//!   and the receiving side's verified, resumable bookkeeping.
//! - [`mail`]: [`Mail`], [`MessageId`], [`Draft`].
//! - [`identity`]: account keys (Ed25519 signing, X25519 encryption, one seed) and the
//!   signed-challenge session authentication.
//! - [`seal`]: sealed envelopes — a mail encrypted per recipient (HPKE, RFC 9180) and signed
//!   by its sender (Ed25519); what a relay or co-recipient carries without reading.
//! - [`wire`]: signaling frames (JSON) and peer frames (postcard); the only wire formats.
//! - [`store`]: persisted records, the [`MailStore`](store::MailStore) contract, the
//!   in-memory store and the conformance tests every store runs.
//! - [`node`]: the per-user delivery state machine ([`Node`]).

pub mod address;
pub mod attach;
pub mod chacha4;
pub mod groups;
pub mod identity;
pub mod mail;
pub mod node;
pub mod route;
pub mod seal;
pub mod storage;
pub mod store;
pub mod wire;

pub use address::Address;
pub use identity::Identity;
pub use mail::{Draft, Mail, MessageId, Millis};
pub use node::{Command, Config, Event, Input, Node, Output};
