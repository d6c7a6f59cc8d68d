//! Compiles the `.proto` services in `idl/` for the tests (`rpc_proto`), and writes their
//! descriptor set for the Python protobuf client (`python/proto_client.py`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::var("OUT_DIR")?;
    qsocket_build::configure()
        .file_descriptor_set_path(format!("{out}/demo.fds"))
        .compile(&["../idl/demo/greeter.proto"], &["../idl"])?;
    Ok(())
}
