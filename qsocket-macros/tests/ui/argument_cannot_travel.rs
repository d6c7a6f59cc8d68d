/// No serde derives: it cannot travel.
pub struct Person {
    pub name: String,
}

#[qsocket::service]
pub trait Greeter {
    async fn hello(&self, who: Person) -> String;
}

fn main() {}
