//! Procedural macros for qsocket: `#[qsocket::service]`. It is documented where users meet
//! it, in the `qsocket` crate, which re-exports it.

use proc_macro::TokenStream;

/// Generates a typed client, a client trait and a server dispatcher from a service trait (see
/// `qsocket::service`).
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemTrait);
    let krate = quote::quote!(::qsocket);
    qsocket_codegen::parse_trait(args.into(), &item)
        .and_then(|svc| qsocket_codegen::render(&svc, &krate))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
