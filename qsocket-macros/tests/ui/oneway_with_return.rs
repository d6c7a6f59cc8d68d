#[qsocket::service]
pub trait Logger {
    #[qsocket(oneway)]
    async fn log(&self, line: String) -> u64;
}

fn main() {}
