//! Signaling (placeholder).
