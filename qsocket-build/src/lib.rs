//! Build-script code generation for qsocket services from `.proto` files. The generator arrives
//! with the codegen issue; the crate exists now so the workspace layout is complete.
