#[qsocket::service]
pub trait Greeter {
    async fn hello(&mut self, name: String) -> String;
}

fn main() {}
