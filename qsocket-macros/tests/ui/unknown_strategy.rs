#[qsocket::service]
pub trait Greeter {
    #[qsocket(strategy = "fastest")]
    async fn hello(&self, name: String) -> String;
}

fn main() {}
