//! Everything that crosses a wire. Nothing outside `core` derives a wire format.
//!
//! - [`signal`]: JSON text frames between a client and the relay's `/ws` endpoint.
//! - [`peer`]: compact binary frames between two peers over a WebRTC data channel.

pub(crate) mod bytes;
pub mod peer;
pub mod signal;
