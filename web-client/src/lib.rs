//! # peermail-web-client
//!
//! The browser side of Peermail: a Yew UI around `peermail-core`'s sans-IO [`Node`], plus the
//! thin drivers that carry out what the node asks for.
//!
//! Modules:
//! - [`store`]: [`IdbStore`](store::IdbStore), the `MailStore` contract on IndexedDB.
pub mod store;
pub fn run() {}
