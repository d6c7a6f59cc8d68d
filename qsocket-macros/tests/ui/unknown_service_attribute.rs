#[qsocket::service(name = "demo.Greeter", colour = "red")]
pub trait Greeter {
    async fn hello(&self, name: String) -> String;
}

fn main() {}
