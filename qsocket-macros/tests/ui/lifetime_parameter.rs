#[qsocket::service]
pub trait Greeter<'a> {
    async fn hello(&self, name: String) -> String;
}

fn main() {}
