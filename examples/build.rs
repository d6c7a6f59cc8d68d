//! Compiles the demo `.proto` services (`idl/demo/`) for the `proto_greeter` example.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qsocket_build::configure().compile(&["../idl/demo/greeter.proto"], &["../idl"])?;
    Ok(())
}
