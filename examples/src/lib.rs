//! Examples live in their binaries.
