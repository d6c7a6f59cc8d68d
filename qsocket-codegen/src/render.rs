//! Renders a [`Service`] into Rust: the server trait, the client trait, the client, the server
//! dispatcher and a module of names and argument messages. The generated code only packs
//! arguments and names methods; what a call does is the runtime's.

use crate::{Method, Output, Policy, Service};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, Type};

/// How a service's messages travel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plain Rust (serde) types: a method's arguments are packed into one generated struct,
    /// carried as MessagePack (or JSON).
    Serde,
    /// Message types (`codec = "protobuf"`): a method takes one message (or none) and
    /// returns one, each carried as it is.
    Message,
}

/// The Rust items `svc` generates: the server trait (`Greeter`), a client trait
/// (`GreeterApi`), a client (`GreeterClient`), a server (`GreeterServer`) and a module
/// (`greeter`) of names and argument types. `krate` is the path of the `qsocket` crate.
pub fn render(svc: &Service, krate: &TokenStream) -> syn::Result<TokenStream> {
    let mode = if svc.codec.as_deref() == Some("protobuf") {
        Mode::Message
    } else {
        Mode::Serde
    };
    for m in &svc.methods {
        check_method(m, mode)?;
    }
    let r = Render { svc, krate, mode };
    let server_trait = r.server_trait();
    let names = r.names_module();
    let api = r.api_trait();
    let client = r.client();
    let server = r.server();
    Ok(quote! {
        #server_trait
        #names
        #api
        #client
        #server
    })
}

/// What a method's shape allows in `mode`.
fn check_method(m: &Method, mode: Mode) -> syn::Result<()> {
    if mode == Mode::Message {
        if m.args.len() > 1 {
            return Err(syn::Error::new(
                m.args[1].0.span(),
                "a protobuf method takes one message (or none): put the fields in one message \
                 type, or use the default MessagePack codec",
            ));
        }
        if let Output::Result(r) = &m.output {
            if !is_status(&r.1) {
                return Err(syn::Error::new(
                    r.1.span(),
                    "a protobuf method's error is `qsocket::Status`: user error types travel \
                     with the MessagePack or JSON codec",
                ));
            }
        }
    }
    Ok(())
}

/// Whether `ty` names `Status` (`qsocket::Status`, `qsocket::rpc::Status`, or imported).
fn is_status(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Status" && s.arguments.is_empty()),
        _ => false,
    }
}

/// `helloWorld` or `hello_world` → `HelloWorld`.
fn camel(ident: &Ident) -> String {
    let s = ident.to_string();
    let s = s.strip_prefix("r#").unwrap_or(&s);
    let mut out = String::new();
    let mut up = true;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `Greeter` → `greeter`, `KeyValue` → `key_value`, `HTTPProxy` → `http_proxy`.
fn snake(ident: &Ident) -> String {
    let s = ident.to_string();
    let s = s.strip_prefix("r#").unwrap_or(&s);
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Every identifier in `tokens`.
fn idents_in(tokens: TokenStream, out: &mut std::collections::HashSet<String>) {
    for t in tokens {
        match t {
            proc_macro2::TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            proc_macro2::TokenTree::Group(g) => idents_in(g.stream(), out),
            _ => {}
        }
    }
}

/// A method's `#[cfg]` attributes: what applies to everything generated for it.
fn cfgs(m: &Method) -> TokenStream {
    let c = m.attrs.iter().filter(|a| a.path().is_ident("cfg"));
    quote!(#(#c)*)
}

/// All of a method's other attributes: for its declarations in the traits.
fn decl_attrs(m: &Method) -> TokenStream {
    let a = &m.attrs;
    quote!(#(#a)*)
}

fn doc_attrs(docs: &[String]) -> TokenStream {
    quote! { #( #[doc = #docs] )* }
}

struct Render<'a> {
    svc: &'a Service,
    krate: &'a TokenStream,
    mode: Mode,
}

/// What the generated client and server both spell: the trait's name and generics, and the
/// names module.
struct Generated<'a> {
    ident: &'a Ident,
    module: Ident,
    /// The trait's type parameters.
    params: Vec<&'a Ident>,
    /// The same as arguments (`<V>`), or nothing.
    targs: TokenStream,
    /// What each type parameter needs to travel.
    travel: Vec<TokenStream>,
    /// The trait's where-predicates.
    wheres: Vec<TokenStream>,
    /// The type parameters with their declared bounds.
    decl: Vec<TokenStream>,
    /// A `PhantomData` of the type parameters.
    phantom_ty: TokenStream,
}

impl<'a> Render<'a> {
    fn generated(&self) -> Generated<'a> {
        let params: Vec<&'a Ident> = self.svc.generics.type_params().map(|t| &t.ident).collect();
        let phantom_ty = quote!(::core::marker::PhantomData<fn() -> (#(#params,)*)>);
        Generated {
            ident: &self.svc.ident,
            module: self.module(),
            targs: self.type_args(),
            travel: self.travel_bounds(),
            wheres: self.where_preds(),
            decl: self.declared_params(),
            params,
            phantom_ty,
        }
    }

    fn module(&self) -> Ident {
        if let Some(m) = &self.svc.module {
            return m.clone();
        }
        let name = snake(&self.svc.ident);
        // `trait Match` gets `mod r#match`.
        match syn::parse_str::<Ident>(&name) {
            Ok(id) => id,
            Err(_) => Ident::new_raw(&name, proc_macro2::Span::call_site()),
        }
    }

    fn method_const(m: &Method) -> Ident {
        format_ident!(
            "{}",
            snake(&format_ident!("{}", camel(&m.ident))).to_uppercase()
        )
    }

    fn args_struct(m: &Method) -> Ident {
        format_ident!("{}Args", camel(&m.ident))
    }

    /// The trait's type parameters as arguments (`<V>`), or nothing.
    fn type_args(&self) -> TokenStream {
        let ps: Vec<&Ident> = self.svc.generics.type_params().map(|t| &t.ident).collect();
        if ps.is_empty() {
            quote!()
        } else {
            quote!(<#(#ps),*>)
        }
    }

    fn type_params(&self) -> Vec<&Ident> {
        self.svc.generics.type_params().map(|t| &t.ident).collect()
    }

    /// What a type needs to travel in this service's mode.
    fn travels(&self) -> TokenStream {
        let k = self.krate;
        match self.mode {
            Mode::Serde => quote!(#k::__private::Travels),
            Mode::Message => quote!(#k::__private::TravelsAsMessage),
        }
    }

    /// What every type parameter needs to travel.
    fn travel_bounds(&self) -> Vec<TokenStream> {
        let bound = self.travels();
        self.type_params()
            .into_iter()
            .map(|p| quote!(#p: #bound))
            .collect()
    }

    /// The trait's own where-predicates.
    fn where_preds(&self) -> Vec<TokenStream> {
        self.svc
            .generics
            .where_clause
            .as_ref()
            .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
            .unwrap_or_default()
    }

    /// The trait's type parameters with their declared bounds (`V: Clone`).
    fn declared_params(&self) -> Vec<TokenStream> {
        self.svc
            .generics
            .type_params()
            .map(|t| {
                let id = &t.ident;
                let b = &t.bounds;
                if b.is_empty() {
                    quote!(#id)
                } else {
                    quote!(#id: #b)
                }
            })
            .collect()
    }

    /// The type a method's future resolves to on the server (as the trait declares it).
    fn server_output(m: &Method) -> TokenStream {
        match &m.output {
            Output::Unit => quote!(()),
            Output::Value(t) => quote!(#t),
            Output::Result(r) => {
                let (t, e) = (&r.0, &r.1);
                quote!(::core::result::Result<#t, #e>)
            }
        }
    }

    /// What a client call resolves to: the server's output, under a `Status` for what the
    /// call itself may meet.
    fn client_output(&self, m: &Method) -> TokenStream {
        let k = self.krate;
        let st = quote!(#k::rpc::Status);
        match &m.output {
            Output::Unit => quote!(::core::result::Result<(), #st>),
            Output::Value(t) => quote!(::core::result::Result<#t, #st>),
            Output::Result(r) if is_status(&r.1) => {
                let t = &r.0;
                quote!(::core::result::Result<#t, #st>)
            }
            Output::Result(r) => {
                let (t, e) = (&r.0, &r.1);
                quote!(::core::result::Result<::core::result::Result<#t, #e>, #st>)
            }
        }
    }

    fn arg_list(m: &Method) -> Vec<TokenStream> {
        m.args.iter().map(|(id, ty)| quote!(#id: #ty)).collect()
    }

    fn server_trait(&self) -> TokenStream {
        let svc = self.svc;
        let (vis, ident) = (&svc.vis, &svc.ident);
        let docs = doc_attrs(&svc.docs);
        // With their defaults (`V = String`): only the trait's own declaration may have them.
        let params: Vec<TokenStream> = svc
            .generics
            .type_params()
            .map(|t| {
                let id = &t.ident;
                let b = &t.bounds;
                let bounds = if b.is_empty() { quote!() } else { quote!(: #b) };
                let default = t.default.as_ref().map(|d| quote!(= #d));
                quote!(#id #bounds #default)
            })
            .collect();
        let params = if params.is_empty() {
            quote!()
        } else {
            quote!(<#(#params),*>)
        };
        let supers = &svc.supertraits;
        let plus = if supers.is_empty() {
            quote!()
        } else {
            quote!(+ #supers)
        };
        let wheres = self.where_preds();
        let methods = svc.methods.iter().map(|m| {
            let docs = doc_attrs(&m.docs);
            let attrs = decl_attrs(m);
            let id = &m.ident;
            let args = Self::arg_list(m);
            let out = Self::server_output(m);
            quote! {
                #docs
                #attrs
                fn #id(&self, #(#args),*)
                    -> impl ::core::future::Future<Output = #out> + ::core::marker::Send;
            }
        });
        quote! {
            #docs
            #vis trait #ident #params: ::core::marker::Send + ::core::marker::Sync + 'static #plus
            where #(#wheres,)*
            {
                #(#methods)*
            }
        }
    }

    /// `mod greeter`: the service's and methods' names, the methods' policies and the
    /// argument messages.
    fn names_module(&self) -> TokenStream {
        let k = self.krate;
        let svc = self.svc;
        let module = self.module();
        let vis = &svc.vis;
        let ident = &svc.ident;
        let ident_str = ident.to_string();
        let version = svc.version.clone().unwrap_or_default();
        let group = svc.group.clone().unwrap_or_default();
        let service_const = if svc.name_from_path {
            quote! {
                const __LEN: usize = #k::__private::dotted_len(::core::module_path!(), #ident_str);
                const __NAME: [u8; __LEN] =
                    #k::__private::dotted::<__LEN>(::core::module_path!(), #ident_str);
                /// The service's name on the wire.
                pub const SERVICE: &str = match ::core::str::from_utf8(&__NAME) {
                    ::core::result::Result::Ok(s) => s,
                    ::core::result::Result::Err(_) => ::core::panic!("service name"),
                };
            }
        } else {
            let name = &svc.name;
            quote! {
                /// The service's name on the wire.
                pub const SERVICE: &str = #name;
            }
        };
        let names = svc.methods.iter().map(|m| {
            let c = Self::method_const(m);
            let name = &m.name;
            let doc = format!("The name of `{}` on the wire.", m.ident);
            let cfg = cfgs(m);
            quote! {
                #[doc = #doc]
                #cfg
                pub const #c: &str = #name;
            }
        });
        let policies = svc.methods.iter().map(|m| {
            let c = Self::method_const(m);
            let doc = format!("The policy `{}` declares, if any.", m.ident);
            let policy = self.policy_expr(&m.policy);
            let cfg = cfgs(m);
            quote! {
                #[doc = #doc]
                #cfg
                pub const #c: ::core::option::Option<#k::rpc::Policy> = #policy;
            }
        });
        let args = svc.methods.iter().map(|m| self.args_item(m));
        let methods = quote! {
            /// Each method's name on the wire.
            pub mod methods {
                #(#names)*
            }
            /// The policy each method declares (`None`: the client's cluster layer decides).
            pub mod policies {
                #[allow(unused_imports)]
                use super::*;
                #(#policies)*
            }
            #(#args)*
        };
        let doc = format!(
            "Names, policies and argument messages of the [`{ident_str}`](super::{ident_str}) service."
        );
        quote! {
            #[doc = #doc]
            // A `.proto` package `demo.greeter` with a service `Greeter` is a module
            // `greeter` holding this `greeter`.
            #[allow(dead_code, clippy::module_inception)]
            #vis mod #module {
                #[allow(unused_imports)]
                use super::*;
                #service_const
                /// The service's version (`""`: none given).
                pub const VERSION: &str = #version;
                /// The service's group (`""`: none given).
                pub const GROUP: &str = #group;
                #methods
            }
        }
    }

    /// `Some(Policy::…)` for a method's attributes, or `None`.
    fn policy_expr(&self, p: &Policy) -> TokenStream {
        let k = self.krate;
        let Some(strategy) = p.strategy.as_deref() else {
            return quote!(::core::option::Option::None);
        };
        let r = |d: u32| p.retries.unwrap_or(d);
        let base = match strategy {
            "failover" => {
                let n = r(2);
                quote!(#k::rpc::Policy::failover(#n))
            }
            "failtry" => {
                let n = r(2);
                quote!(#k::rpc::Policy::failtry(#n))
            }
            "failsafe" => quote!(#k::rpc::Policy::failsafe()),
            "failback" => {
                let n = r(3);
                quote!(#k::rpc::Policy::failback(#n))
            }
            "forking" => {
                let n = p.forks.unwrap_or(2);
                quote!(#k::rpc::Policy::forking(#n))
            }
            "hedging" => {
                let delay = match p.hedge_ms {
                    Some(ms) => quote!(#k::rpc::HedgeDelay::Fixed(
                        ::core::time::Duration::from_millis(#ms)
                    )),
                    None => quote!(#k::rpc::HedgeDelay::P95 {
                        floor: ::core::time::Duration::from_millis(10)
                    }),
                };
                let n = r(1);
                quote!(#k::rpc::Policy::hedging(#delay).retries(#n))
            }
            _ => quote!(#k::rpc::Policy::failfast()),
        };
        let idem = if p.idempotent {
            quote!(.idempotent())
        } else {
            quote!()
        };
        quote!(::core::option::Option::Some(#base #idem))
    }

    /// The struct a serde method's arguments travel in (a map keyed by argument name). It is
    /// generic over its field types, bounded by what travels, so a type that cannot travel is
    /// refused with that trait's message rather than the serde derive's.
    fn args_item(&self, m: &Method) -> TokenStream {
        if self.mode != Mode::Serde {
            return quote!();
        }
        let k = self.krate;
        let name = Self::args_struct(m);
        let krate_str = k.to_string().replace(' ', "");
        let serde_path = format!("{krate_str}::__private::serde");
        let params: Vec<Ident> = (0..m.args.len()).map(|i| format_ident!("__A{i}")).collect();
        let fields = m.args.iter().zip(&params).map(|((id, _), p)| {
            let doc = format!("The `{id}` argument.");
            quote!(#[doc = #doc] pub #id: #p)
        });
        let doc = format!(
            "The arguments of `{}`, as they travel (a map keyed by argument name).",
            m.ident
        );
        let bound: Vec<String> = params
            .iter()
            .map(|p| format!("{p}: {krate_str}::__private::Travels"))
            .collect();
        let bound = bound.join(", ");
        let cfg = cfgs(m);
        quote! {
            #[doc = #doc]
            #cfg
            #[derive(#k::__private::serde::Serialize, #k::__private::serde::Deserialize)]
            #[serde(crate = #serde_path, bound(serialize = #bound, deserialize = #bound))]
            pub struct #name<#(#params),*> {
                #(#fields,)*
            }
        }
    }

    /// Compile-time checks that each argument and result type can travel, each at its type's
    /// token, saying what to do when it cannot.
    fn type_checks(&self) -> TokenStream {
        let bound = self.travels();
        let mut checks = Vec::new();
        for m in &self.svc.methods {
            let mut tys: Vec<&Type> = m.args.iter().map(|(_, t)| t).collect();
            match &m.output {
                Output::Unit => {}
                Output::Value(t) => tys.push(t),
                Output::Result(r) => {
                    tys.push(&r.0);
                    if !is_status(&r.1) {
                        tys.push(&r.1);
                    }
                }
            }
            let cfg = cfgs(m);
            for t in tys {
                checks.push(quote_spanned! {t.span()=> #cfg __travels::<#t>();});
            }
        }
        let params = self.declared_params();
        let travel = self.travel_bounds();
        // A free function has no `Self`.
        let wheres: Vec<TokenStream> = self
            .where_preds()
            .into_iter()
            .filter(|p| {
                let mut ids = std::collections::HashSet::new();
                idents_in(p.clone(), &mut ids);
                !ids.contains("Self")
            })
            .collect();
        quote! {
            #[allow(dead_code, clippy::extra_unused_type_parameters)]
            fn __check_types<#(#params),*>() where #(#travel,)* #(#wheres,)* {
                fn __travels<T: #bound>() {}
                #(#checks)*
            }
        }
    }

    /// The first of `candidates` that names neither the trait nor one of its type
    /// parameters (a `.proto` service may be called `S` or `I`).
    fn free_param(&self, candidates: &[&str]) -> Ident {
        let taken =
            |c: &str| self.svc.ident == c || self.svc.generics.type_params().any(|t| t.ident == c);
        let name = candidates
            .iter()
            .find(|c| !taken(c))
            .map_or_else(|| format!("__{}", candidates[0]), |c| (*c).to_string());
        format_ident!("{name}")
    }

    fn api_ident(&self) -> Ident {
        format_ident!("{}Api", self.svc.ident)
    }

    fn client_ident(&self) -> Ident {
        format_ident!("{}Client", self.svc.ident)
    }

    fn server_ident(&self) -> Ident {
        format_ident!("{}Server", self.svc.ident)
    }

    /// The client trait: what a caller of the service sees, implemented by the generated client
    /// and by users' mocks.
    fn api_trait(&self) -> TokenStream {
        let svc = self.svc;
        let vis = &svc.vis;
        let api = self.api_ident();
        let ident = &svc.ident;
        let params = self.declared_params();
        let params = if params.is_empty() {
            quote!()
        } else {
            quote!(<#(#params),*>)
        };
        let wheres = self.where_preds();
        let methods = svc.methods.iter().map(|m| {
            let docs = doc_attrs(&m.docs);
            let attrs = decl_attrs(m);
            let id = &m.ident;
            let args = Self::arg_list(m);
            let out = self.client_output(m);
            quote! {
                #docs
                #attrs
                fn #id(&self, #(#args),*)
                    -> impl ::core::future::Future<Output = #out> + ::core::marker::Send;
            }
        });
        let client = self.client_ident();
        let doc = format!(
            "What a caller of [`{ident}`] sees: each method's result, or the `Status` the call \
             met. [`{client}`] calls over the network; implement it on a mock to test code that \
             calls the service without one."
        );
        quote! {
            #[doc = #doc]
            #vis trait #api #params: ::core::marker::Send + ::core::marker::Sync
            where #(#wheres,)*
            {
                #(#methods)*
            }
        }
    }

    fn client(&self) -> TokenStream {
        let k = self.krate;
        let svc = self.svc;
        let vis = &svc.vis;
        let client = self.client_ident();
        let api = self.api_ident();
        let Generated {
            ident,
            module,
            params,
            targs,
            travel,
            wheres,
            decl,
            phantom_ty,
        } = self.generated();
        // The invoker's type parameter, named apart from the trait and its parameters.
        let inv = self.free_param(&["I", "Inv", "Invoker"]);
        let inner_ty = quote!(#k::rpc::RpcClient<#k::rpc::ClusterInvoke<::std::sync::Arc<#inv>>>);
        let codec = match svc.codec.as_deref() {
            Some("json") => quote!(.codec(#k::rpc::Codec::Json)),
            Some("msgpack") => quote!(.codec(#k::rpc::Codec::MsgPack)),
            Some("protobuf") => quote!(.codec(#k::rpc::Codec::Protobuf)),
            _ => quote!(),
        };
        let methods = svc.methods.iter().map(|m| {
            let id = &m.ident;
            let args = Self::arg_list(m);
            let out = self.client_output(m);
            let mc = Self::method_const(m);
            let pc = Self::method_const(m);
            let timeout = match m.policy.timeout_ms {
                Some(ms) => quote!(.timeout(::core::time::Duration::from_millis(#ms))),
                None => quote!(),
            };
            let idem = if m.policy.idempotent {
                quote!(.idempotent())
            } else {
                quote!()
            };
            let policy = if m.policy.strategy.is_some() {
                quote! {
                    let __call = match &#module::policies::#pc {
                        ::core::option::Option::Some(__p) => __call.method_policy(__p),
                        ::core::option::Option::None => __call,
                    };
                }
            } else {
                quote!()
            };
            let (req_ty, req_val) = self.request_of(m);
            // Each returns the call's own future (no second future around it: a call's
            // future is large, and each wrapper would copy it).
            let send = match (&m.output, self.mode) {
                _ if m.policy.oneway => quote! {
                    __call.oneway::<#req_ty>(&#req_val)
                },
                (Output::Unit, Mode::Serde) => quote! {
                    __call.call_map::<#req_ty, #k::rpc::Serde<()>, ()>(&#req_val, |_| ())
                },
                (Output::Value(t), Mode::Serde) => quote! {
                    __call.call_map::<#req_ty, #k::rpc::Serde<#t>, #t>(&#req_val, |r| r.0)
                },
                (Output::Result(r), Mode::Serde) if is_status(&r.1) => {
                    let t = &r.0;
                    quote! {
                        __call.call_map::<#req_ty, #k::rpc::Serde<#t>, #t>(&#req_val, |r| r.0)
                    }
                }
                (Output::Result(r), Mode::Serde) => {
                    let (t, e) = (&r.0, &r.1);
                    quote! {
                        __call.call_map::<
                            #req_ty,
                            #k::rpc::Serde<::core::result::Result<#t, #e>>,
                            ::core::result::Result<#t, #e>,
                        >(&#req_val, |r| r.0)
                    }
                }
                (Output::Unit, Mode::Message) => quote! {
                    __call.call::<#req_ty, ()>(&#req_val)
                },
                (Output::Value(t), Mode::Message) => quote! {
                    __call.call::<#req_ty, #t>(&#req_val)
                },
                (Output::Result(r), Mode::Message) => {
                    let t = &r.0;
                    quote! {
                        __call.call::<#req_ty, #t>(&#req_val)
                    }
                }
            };
            let cfg = cfgs(m);
            quote! {
                #cfg
                // Inlined, so that the caller's future holds the call's future where it was
                // built rather than a copy of it.
                #[inline]
                fn #id(&self, #(#args),*)
                    -> impl ::core::future::Future<Output = #out> + ::core::marker::Send
                {
                    let __call = self.rpc.request(#module::SERVICE, #module::methods::#mc) #codec #timeout #idem;
                    #policy
                    let __call = match &self.config {
                        ::core::option::Option::Some(__c) => __c.apply(__call),
                        ::core::option::Option::None => __call,
                    };
                    #send
                }
            }
        });
        let doc = format!(
            "A typed client of [`{ident}`]: each method of [`{api}`] is one call through the \
             RPC client's layers, with the method's declared policy (its `strategy`, \
             `retries`, `timeout_ms`, `idempotent` attributes) applied by a \
             [`Cluster`]({k}::rpc::Cluster) layer the client puts outermost.",
            k = "qsocket"
        );
        let impl_params = quote!(#(#decl,)* #inv);
        let impl_where = quote!(where #inv: #k::rpc::Invoke, #(#travel,)* #(#wheres,)*);
        let client_generics = if params.is_empty() {
            quote!(<#inv = #k::rpc::Channel>)
        } else {
            quote!(<#(#params,)* #inv = #k::rpc::Channel>)
        };
        let client_args = quote!(<#(#params,)* #inv>);
        let connect = if params.is_empty() {
            quote! {
                impl #client {
                    /// A client of one endpoint URL (`tcp://…`, `udp://…`, `ws://…`) with the
                    /// default settings.
                    pub async fn connect(url: &str) -> ::core::result::Result<Self, #k::Error> {
                        ::core::result::Result::Ok(Self::new(#k::rpc::RpcClient::connect(url).await?))
                    }
                }
            }
        } else {
            quote!()
        };
        quote! {
            #[doc = #doc]
            #vis struct #client #client_generics {
                rpc: #inner_ty,
                cluster: #k::rpc::Cluster,
                config: ::core::option::Option<::std::sync::Arc<#k::rpc::CallConfig>>,
                __types: #phantom_ty,
            }

            impl<#(#params,)* #inv> ::core::clone::Clone for #client #client_args {
                fn clone(&self) -> Self {
                    #client {
                        rpc: self.rpc.clone(),
                        cluster: self.cluster.clone(),
                        config: self.config.clone(),
                        __types: ::core::marker::PhantomData,
                    }
                }
            }

            impl<#(#params,)* #inv> ::core::fmt::Debug for #client #client_args {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(::core::stringify!(#client))
                        .field("service", &#module::SERVICE)
                        .field("rpc", &self.rpc)
                        .finish()
                }
            }

            #connect

            impl<#impl_params> #client #client_args #impl_where {
                /// A client calling over `rpc` (its connections and layers), with a
                /// failfast-by-default [`Cluster`](qsocket::rpc::Cluster) layer outermost that
                /// applies the methods' declared policies. A `Cluster` already layered on
                /// `rpc` only passes calls through: give it to `with_cluster` instead.
                pub fn new(rpc: #k::rpc::RpcClient<#inv>) -> Self {
                    Self::with_cluster(rpc, #k::rpc::Cluster::default())
                }

                /// A client calling over `rpc` with `cluster` outermost: its settings per
                /// service and method override the methods' declared policies, and its
                /// counters and retry budget are shared with its clones.
                pub fn with_cluster(rpc: #k::rpc::RpcClient<#inv>, cluster: #k::rpc::Cluster) -> Self {
                    #client {
                        rpc: rpc.layer(cluster.clone()),
                        cluster,
                        config: ::core::option::Option::None,
                        __types: ::core::marker::PhantomData,
                    }
                }

                /// This client with `config` applied to each call (over the methods' own
                /// timeout, codec and policy). The connections are shared.
                pub fn with(&self, config: #k::rpc::CallConfig) -> Self {
                    let mut c = ::core::clone::Clone::clone(self);
                    c.config = ::core::option::Option::Some(::std::sync::Arc::new(config));
                    c
                }

                /// The cluster layer in charge of this client's calls (its counters).
                pub fn cluster(&self) -> &#k::rpc::Cluster {
                    &self.cluster
                }

                /// The RPC client underneath (for untyped calls, `ready`, `close`).
                pub fn rpc(&self) -> &#inner_ty {
                    &self.rpc
                }
            }

            impl<#impl_params> #api #targs for #client #client_args #impl_where {
                #(#methods)*
            }
        }
    }

    /// The request type of a method and the expression that builds it from the arguments.
    fn request_of(&self, m: &Method) -> (TokenStream, TokenStream) {
        let k = self.krate;
        let module = self.module();
        match self.mode {
            Mode::Serde => {
                let name = Self::args_struct(m);
                let tys = m.args.iter().map(|(_, t)| t);
                let fields = m.args.iter().map(|(id, _)| quote!(#id));
                (
                    quote!(#k::rpc::Serde<#module::#name<#(#tys),*>>),
                    quote!(#k::rpc::Serde(#module::#name { #(#fields,)* })),
                )
            }
            Mode::Message => match m.args.first() {
                Some((id, ty)) => (quote!(#ty), quote!(#id)),
                None => (quote!(()), quote!(())),
            },
        }
    }

    fn server(&self) -> TokenStream {
        let k = self.krate;
        let svc = self.svc;
        let vis = &svc.vis;
        let server = self.server_ident();
        let Generated {
            ident,
            module,
            params,
            targs,
            travel,
            wheres,
            decl,
            phantom_ty,
        } = self.generated();
        // The implementation's type parameter, named apart from the trait and its parameters.
        let imp = self.free_param(&["S", "Svc", "Implementation"]);
        let regs = svc.methods.iter().map(|m| {
            let id = &m.ident;
            let mc = Self::method_const(m);
            let (req_ty, _) = self.request_of(m);
            let (unpack, call_args) = match self.mode {
                Mode::Serde => {
                    let name = Self::args_struct(m);
                    let fields: Vec<&Ident> = m.args.iter().map(|(id, _)| id).collect();
                    (
                        quote!(let #module::#name { #(#fields,)* } = __req.0;),
                        quote!(#(#fields),*),
                    )
                }
                Mode::Message => match m.args.first() {
                    Some(_) => (quote!(), quote!(__req)),
                    None => (quote!(let () = __req;), quote!()),
                },
            };
            // Called through the trait, so a method named like one of `Arc`'s (`clone`) is
            // still the service's.
            let invoke = quote!(<#imp as #ident #targs>::#id(&*__s, #call_args));
            let answer = match (&m.output, self.mode) {
                (Output::Unit, Mode::Serde) => {
                    quote!({ #invoke.await; ::core::result::Result::Ok(#k::rpc::Serde(())) })
                }
                (Output::Unit, Mode::Message) => {
                    quote!({ #invoke.await; ::core::result::Result::Ok(()) })
                }
                (Output::Value(_), Mode::Serde) => {
                    quote!(::core::result::Result::Ok(#k::rpc::Serde(#invoke.await)))
                }
                (Output::Value(_), Mode::Message) => {
                    quote!(::core::result::Result::Ok(#invoke.await))
                }
                (Output::Result(r), Mode::Serde) if is_status(&r.1) => {
                    quote!(#invoke.await.map(#k::rpc::Serde))
                }
                (Output::Result(_), Mode::Serde) => {
                    quote!(::core::result::Result::Ok(#k::rpc::Serde(#invoke.await)))
                }
                (Output::Result(_), Mode::Message) => quote!(#invoke.await),
            };
            let cfg = cfgs(m);
            quote! {
                #cfg
                let __service = __service.unary(#module::methods::#mc, {
                    let __s = __inner.clone();
                    move |__req: #req_ty, __ctx: #k::rpc::CallContext| {
                        let __s = __s.clone();
                        __ctx.scope(async move {
                            #unpack
                            #answer
                        })
                    }
                });
            }
        });
        let checks = self.type_checks();
        let doc = format!(
            "Serves an implementation of [`{ident}`]: add it to a \
             [`Router`](qsocket::rpc::Router) (`Router::new().add_service({server}::new(impl))`). \
             Each request's arguments are decoded, the method is called with its \
             [`CallContext`](qsocket::rpc::CallContext) as the current one, and its result is \
             encoded in the request's codec."
        );
        let impl_params = quote!(#(#decl,)* #imp);
        let impl_where = quote!(where #imp: #ident #targs, #(#travel,)* #(#wheres,)*);
        let server_args = quote!(<#(#params,)* #imp>);
        quote! {
            #[doc = #doc]
            #vis struct #server #server_args {
                inner: ::std::sync::Arc<#imp>,
                __types: #phantom_ty,
            }

            impl<#(#params,)* #imp> ::core::clone::Clone for #server #server_args {
                fn clone(&self) -> Self {
                    #server { inner: self.inner.clone(), __types: ::core::marker::PhantomData }
                }
            }

            impl<#impl_params> #server #server_args #impl_where {
                /// Serves `service`.
                pub fn new(service: #imp) -> Self {
                    Self::from_arc(::std::sync::Arc::new(service))
                }

                /// Serves a shared `service`.
                pub fn from_arc(service: ::std::sync::Arc<#imp>) -> Self {
                    #server { inner: service, __types: ::core::marker::PhantomData }
                }

                /// The implementation served.
                pub fn get_ref(&self) -> &#imp {
                    &self.inner
                }

                /// The router service: one handler per method.
                // A deprecated method is still served.
                #[allow(deprecated)]
                pub fn into_service(self) -> #k::rpc::Service {
                    #checks
                    let __inner = self.inner;
                    let __service = #k::rpc::Service::new(#module::SERVICE);
                    #(#regs)*
                    __service
                }
            }

            impl<#impl_params> ::core::convert::From<#server #server_args> for #k::rpc::Service #impl_where {
                fn from(server: #server #server_args) -> Self {
                    server.into_service()
                }
            }

            impl<#(#params,)* #imp> #k::rpc::NamedService for #server #server_args {
                const NAME: &'static str = #module::SERVICE;
                const VERSION: &'static str = #module::VERSION;
                const GROUP: &'static str = #module::GROUP;
            }
        }
    }
}
