#[qsocket::service]
pub trait Greeter {
    #[qsocket(retries = 2)]
    async fn hello(&self, name: String) -> String;
}

fn main() {}
