#[qsocket::service]
pub trait Greeter {
    async fn hello(name: String) -> String;
}

fn main() {}
