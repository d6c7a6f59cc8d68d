#[qsocket::service]
pub trait Greeter {
    #[qsocket(strategy = "failover", retry = 2)]
    async fn hello(&self, name: String) -> String;
}

fn main() {}
