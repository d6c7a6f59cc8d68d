#[qsocket::service(name = "demo.Adder", codec = "protobuf")]
pub trait Adder {
    async fn add(&self, a: i64, b: i64) -> Result<i64, qsocket::Status>;
}

fn main() {}
