//! Procedural macros for qsocket. `#[qsocket::service]` arrives with the codegen issue; the crate
//! exists now so the workspace layout is complete.
