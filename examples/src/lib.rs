//! Code the examples share. Most examples live in their binaries; this holds what
//! `qsocket-build` generated from `idl/` (compiled by `build.rs`), under the workspace's lints.

/// The demo packages of `idl/demo/`.
pub mod demo {
    /// `demo.common`: types the demo services share.
    pub mod common {
        qsocket::include_proto!("demo.common");
    }
    /// `demo.greeter`: the greeter service and its messages.
    pub mod greeter {
        qsocket::include_proto!("demo.greeter");
    }
}

/// The README's Rust examples, compiled (and, where they are not marked `no_run`, run) as doc
/// tests, so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
