#[qsocket::service]
pub trait Greeter {
    async fn hello(&self, name: String) -> String;
    #[qsocket(rename = "hello")]
    async fn greet(&self, name: String) -> String;
}

fn main() {}
