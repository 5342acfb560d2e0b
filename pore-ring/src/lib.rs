//! Ring layouts in shared memory (filled in by the foundation issue).
#![no_std]
