//! Relay (placeholder).
