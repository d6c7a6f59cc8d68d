//! Procedural macros for qsocket: `#[qsocket::service]`. Use it through the `qsocket` crate,
//! which re-exports it.

use proc_macro::TokenStream;

/// Turns a trait into an RPC service: a typed client, a client trait for mocks and a server
/// dispatcher, over qsocket's runtime (every transport, codec, layer and strategy).
///
/// ```
/// use qsocket::rpc::{CallConfig, CallContext, Codec, Router, RpcServer, Status};
///
/// /// The service's own error type: it reaches the client as it was.
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// pub enum AddError { Overflow }
///
/// #[qsocket::service(name = "demo.Greeter", version = "1.0")]
/// pub trait Greeter {
///     /// Says hello.
///     #[qsocket(strategy = "failover", retries = 2, timeout_ms = 500, idempotent)]
///     async fn hello(&self, name: String) -> Result<String, qsocket::Status>;
///     #[qsocket(strategy = "failfast")]
///     async fn add(&self, a: i64, b: i64) -> Result<i64, AddError>;
///     #[qsocket(oneway)]
///     async fn log(&self, line: String);
/// }
///
/// struct Hello;
///
/// impl Greeter for Hello {
///     async fn hello(&self, name: String) -> Result<String, Status> {
///         // The call's context, without an argument for it.
///         let peer = CallContext::current().map(|ctx| ctx.peer_addr());
///         Ok(format!("hello, {name} from {peer:?}"))
///     }
///     async fn add(&self, a: i64, b: i64) -> Result<i64, AddError> {
///         a.checked_add(b).ok_or(AddError::Overflow)
///     }
///     async fn log(&self, line: String) {
///         println!("{line}");
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = Router::new().add_service(GreeterServer::new(Hello));
/// let server = RpcServer::builder(router).bind("tcp://127.0.0.1:0").start().await?;
/// let url = server.local_endpoints()[0].to_string();
///
/// let client = GreeterClient::connect(&url).await?;
/// assert!(client.hello("ana".into()).await?.starts_with("hello, ana"));
/// assert_eq!(client.add(i64::MAX, 1).await?, Err(AddError::Overflow));
/// client.log("a line".into()).await?; // returns once sent
/// let json = client.with(CallConfig::new().codec(Codec::Json));
/// assert_eq!(json.add(1, 2).await?, Ok(3));
/// # Ok(()) }
/// ```
///
/// # What it generates
///
/// For `trait Greeter` (the names follow the trait's):
///
/// * **`trait Greeter`** itself, each `async fn` as
///   `fn …(&self, …) -> impl Future<Output = …> + Send`, with `Send + Sync + 'static` added to
///   its supertraits. Implement it with plain `async fn`s.
/// * **`mod greeter`**: `SERVICE`, `VERSION`, `GROUP`; `methods::HELLO` (each method's wire
///   name), `policies::HELLO` (its declared policy, `Option<qsocket::rpc::Policy>`), and the
///   struct each method's arguments travel in (`HelloArgs`, a map keyed by argument name).
/// * **`trait GreeterApi`**: what a caller sees. Each method returns
///   `Result<T, Status>`; a method that returns `Result<T, MyError>` returns
///   `Result<Result<T, MyError>, Status>` (the outer `Status` is what the call met: no
///   connection, deadline…; the inner error is the service's). Implement it on a mock to test
///   code that calls the service, without a network.
/// * **`struct GreeterClient<I = Channel>`**, which implements `GreeterApi`:
///   `GreeterClient::connect(url)` (traits without type parameters),
///   `GreeterClient::new(rpc_client)` (any `RpcClient<I>`, with its layers; a `Cluster`
///   layered on it only passes calls through: give it to `with_cluster(rpc_client, cluster)`
///   instead), `with(CallConfig)`
///   (per-client settings over the methods' own: timeout, deadline, codec, metadata, policy,
///   hash key), `cluster()` (its counters) and `rpc()`. Each method is one call through the
///   pipeline; a `Cluster` layer outermost applies the declared policies.
/// * **`struct GreeterServer<S: Greeter>`**: `GreeterServer::new(impl)` goes into
///   `Router::add_service`; it implements `NamedService` (name, version, group). Each request is
///   decoded, the method called with its `CallContext` as `CallContext::current()`, and the
///   result encoded in the request's codec. Calls the method makes inherit its deadline.
///
/// # Attributes
///
/// On the trait: `name = "pkg.Service"` (default: the module path with `.` for `::`, then the
/// trait's name), `version`, `group`, `codec` (`"msgpack"`, the default; `"json"`; or
/// `"protobuf"`, for methods that take one prost message and return one), `module` (the
/// generated names module's name, when the default is taken).
///
/// On a method, `#[qsocket(…)]`: `strategy` (`"failfast"`, `"failover"`, `"failtry"`,
/// `"failsafe"`, `"failback"`, `"forking"`, `"hedging"`), `retries = N` (default: failover
/// and failtry 2, failback 3, hedging 1), `timeout_ms = N` (the whole call's; for a oneway
/// call, the time to get it sent), `hedge_ms = N` (hedging after a fixed delay; without it,
/// after the method's observed p95), `forks = N` (default 2), `oneway`, `idempotent`,
/// `rename = "WireName"`. Failback is for oneway methods, forking and hedging for idempotent
/// ones, and a failsafe method returns `Option<T>` (`None` when the call failed) or nothing.
///
/// `version` and `group` are constants and what `NamedService` tells a registry; they are not
/// sent with calls. The default name includes the crate's name: when client and server declare
/// the trait in different crates, give a `name`.
///
/// # Rules
///
/// Methods are `async fn(&self, args…)` returning `T`, `Result<T, Status>`, `Result<T, E>` or
/// nothing (oneway methods return nothing). Arguments are owned (`String`, not `&str`) and
/// every argument and result type can travel: serde `Serialize + Deserialize` (or, for
/// `codec = "protobuf"`, a qsocket `Message`). An error type named `Status` is taken to be
/// `qsocket::Status`. Type parameters on the trait work when the types travel (the generated
/// code adds those bounds); lifetime and const parameters do not. Anything else is a compile
/// error at the offending token saying what to do.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemTrait);
    let krate = quote::quote!(::qsocket);
    qsocket_codegen::parse_trait(args.into(), &item)
        .and_then(|svc| qsocket_codegen::render(&svc, &krate))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
