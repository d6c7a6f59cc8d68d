//! Every mistake a user can make in a `#[qsocket::service]` trait is a compile error at the
//! offending token that says what to do: each file under `tests/ui/` holds one mistake, and
//! its `.stderr` is the error rustc prints for it, compared as text.
//!
//! trybuild builds the files as one crate of its own, against `qsocket` and its dependency
//! tree, which it compiles once into its own target directory: the first run is slow (a few
//! minutes), later ones reuse it. After changing a message, regenerate the expected output
//! with `TRYBUILD=overwrite cargo test -p qsocket-macros --test compile_fail` and read the
//! diff. `argument_cannot_travel.stderr` quotes the signatures of `Call::call_map` and
//! `Service::unary` (rustc's notes on where the bound comes from): changing those signatures
//! means regenerating it too.

#[test]
fn mistakes_are_compile_errors_at_the_offending_token() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
