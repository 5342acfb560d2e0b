//! Shared helpers for the pore benches (see `benches/`).
