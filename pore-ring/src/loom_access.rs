//! Loom-backed shared memory (TODO).
