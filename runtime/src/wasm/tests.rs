//! Tests of the WASM host with hand-written WAT guests.
