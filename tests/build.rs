//! Compiles the `.proto` services in `idl/` for the tests (`rpc_proto`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qsocket_build::configure().compile(&["../idl/demo/greeter.proto"], &["../idl"])?;
    Ok(())
}
