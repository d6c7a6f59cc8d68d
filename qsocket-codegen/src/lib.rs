//! The service description qsocket renders typed clients and server dispatchers from: one
//! model ([`Service`], [`Method`], [`Policy`]) filled by two front ends — the
//! `#[qsocket::service]` trait macro ([`parse_trait`]) and, later, `qsocket-build` from
//! `.proto` files — so both produce the same shapes.
//!
//! A proc-macro crate can only export macros, so the model lives here, in an ordinary
//! library.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, GenericParam, Generics, Ident, ItemTrait, Lit, Meta, Pat, ReturnType,
    Token, TraitItem, Type, TypeParamBound, Visibility,
};

mod render;

pub use render::render;

/// A service: what the generated client calls and the generated server dispatches.
#[derive(Clone)]
pub struct Service {
    /// The name on the wire (`name = "…"`; see [`name_from_path`](Self::name_from_path)).
    pub name: String,
    /// No name was given: the wire name is the module path of the trait, with `.` for
    /// `::`, then `.` and [`name`](Self::name) (the trait's identifier).
    pub name_from_path: bool,
    /// The trait's identifier.
    pub ident: Ident,
    /// The trait's visibility (the generated items get it too).
    pub vis: Visibility,
    /// The trait's type parameters and where-clause.
    pub generics: Generics,
    /// The trait's own supertraits.
    pub supertraits: Punctuated<TypeParamBound, Token![+]>,
    /// `version = "…"`, if given.
    pub version: Option<String>,
    /// `group = "…"`, if given.
    pub group: Option<String>,
    /// `codec = "…"` (`"msgpack"`, `"json"`, `"protobuf"`), if given.
    pub codec: Option<String>,
    /// The methods, in declaration order.
    pub methods: Vec<Method>,
    /// Doc comments, one string a line.
    pub docs: Vec<String>,
}

/// One method of a [`Service`].
#[derive(Clone)]
pub struct Method {
    /// The name on the wire (`rename = "…"`; default: the method's identifier).
    pub name: String,
    /// The method's identifier.
    pub ident: Ident,
    /// The arguments after `&self`: name and type.
    pub args: Vec<(Ident, Type)>,
    /// What it returns.
    pub output: Output,
    /// Its policy attributes.
    pub policy: Policy,
    /// Doc comments, one string a line.
    pub docs: Vec<String>,
}

/// What a method returns.
#[derive(Clone)]
pub enum Output {
    /// `()` (nothing): required of oneway methods.
    Unit,
    /// A plain value `T`: the call cannot fail on the server's side.
    Value(Box<Type>),
    /// `Result<T, E>`: `E` is `qsocket::Status` or a user error type that travels intact.
    Result(Box<(Type, Type)>),
}

/// A method's policy attributes (`#[qsocket(...)]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `strategy = "failover"` (any of the cluster strategies).
    pub strategy: Option<String>,
    /// `retries = N`.
    pub retries: Option<u32>,
    /// `timeout_ms = N`.
    pub timeout_ms: Option<u64>,
    /// `hedge_ms = N` (implies `strategy = "hedging"`).
    pub hedge_ms: Option<u64>,
    /// `forks = N` (implies `strategy = "forking"`).
    pub forks: Option<u32>,
    /// `oneway`.
    pub oneway: bool,
    /// `idempotent`.
    pub idempotent: bool,
}

/// The cluster strategies a `strategy` attribute may name.
pub const STRATEGIES: [&str; 7] = [
    "failfast", "failover", "failtry", "failsafe", "failback", "forking", "hedging",
];

/// Reads `#[qsocket::service(args)] trait …` into a [`Service`]. Every mistake is an error
/// at the offending token saying what to do.
pub fn parse_trait(args: TokenStream, item: &ItemTrait) -> syn::Result<Service> {
    let mut svc = Service {
        name: item.ident.to_string(),
        name_from_path: true,
        ident: item.ident.clone(),
        vis: item.vis.clone(),
        generics: item.generics.clone(),
        supertraits: item.supertraits.clone(),
        version: None,
        group: None,
        codec: None,
        methods: Vec::new(),
        docs: docs(&item.attrs),
    };
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    for meta in metas {
        let key = path_name(&meta)?;
        match key.as_str() {
            "name" => {
                svc.name = string_value(&meta)?;
                svc.name_from_path = false;
            }
            "version" => svc.version = Some(string_value(&meta)?),
            "group" => svc.group = Some(string_value(&meta)?),
            "codec" => {
                let c = string_value(&meta)?;
                if !["msgpack", "json", "protobuf"].contains(&c.as_str()) {
                    return Err(syn::Error::new(
                        meta.span(),
                        format!("unknown codec {c:?}: use \"msgpack\", \"json\" or \"protobuf\""),
                    ));
                }
                svc.codec = Some(c);
            }
            other => {
                return Err(syn::Error::new(
                    meta.span(),
                    format!(
                        "unknown service attribute `{other}`: use name, version, group or codec"
                    ),
                ))
            }
        }
    }
    for p in &item.generics.params {
        match p {
            GenericParam::Type(_) => {}
            GenericParam::Lifetime(l) => {
                return Err(syn::Error::new(
                    l.span(),
                    "a service trait cannot have lifetime parameters: what travels is owned",
                ))
            }
            GenericParam::Const(c) => {
                return Err(syn::Error::new(
                    c.span(),
                    "a service trait cannot have const parameters: use type parameters",
                ))
            }
        }
    }
    if item.unsafety.is_some() || item.auto_token.is_some() {
        return Err(syn::Error::new(
            item.trait_token.span(),
            "a service trait is a plain `trait`",
        ));
    }
    for ti in &item.items {
        let TraitItem::Fn(f) = ti else {
            return Err(syn::Error::new(
                ti.span(),
                "a service trait holds only methods (`async fn name(&self, …)`)",
            ));
        };
        svc.methods.push(method(f)?);
    }
    let mut seen = std::collections::HashSet::new();
    for m in &svc.methods {
        if !seen.insert(m.name.clone()) {
            return Err(syn::Error::new(
                m.ident.span(),
                format!("two methods are named {:?} on the wire: rename one", m.name),
            ));
        }
    }
    Ok(svc)
}

fn method(f: &syn::TraitItemFn) -> syn::Result<Method> {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "service methods are `async fn`: add `async`",
        ));
    }
    if let Some(body) = &f.default {
        return Err(syn::Error::new(
            body.span(),
            "a service method has no default body: the server's implementation gives it",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a service method cannot have type parameters of its own: put them on the trait",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(FnArg::Receiver(r)) if r.reference.is_none() => {
            return Err(syn::Error::new(
                r.span(),
                "a service method takes `&self`, not `self` by value",
            ))
        }
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new(
                r.span(),
                "a service method takes `&self`, not `&mut self` (calls run concurrently)",
            ))
        }
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "a service method takes `&self` first",
            ))
        }
    }
    let mut args = Vec::new();
    for arg in inputs {
        let FnArg::Typed(pt) = arg else {
            return Err(syn::Error::new(arg.span(), "only one `self` argument"));
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return Err(syn::Error::new(
                pt.pat.span(),
                "name each argument (`name: Type`), no patterns",
            ));
        };
        if let Type::Reference(r) = &*pt.ty {
            return Err(syn::Error::new(
                r.span(),
                "arguments travel over the network: take them by value (`String`, not `&str`)",
            ));
        }
        if matches!(&*pt.ty, Type::ImplTrait(_)) {
            return Err(syn::Error::new(
                pt.ty.span(),
                "`impl Trait` cannot travel: use a concrete type",
            ));
        }
        args.push((pi.ident.clone(), (*pt.ty).clone()));
    }
    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => output(ty)?,
    };
    let mut policy = Policy::default();
    let mut name = sig.ident.to_string();
    for attr in f.attrs.iter().filter(|a| a.path().is_ident("qsocket")) {
        let metas = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
        for meta in metas {
            let key = path_name(&meta)?;
            match key.as_str() {
                "strategy" => {
                    let s = string_value(&meta)?;
                    if !STRATEGIES.contains(&s.as_str()) {
                        return Err(syn::Error::new(
                            meta.span(),
                            format!(
                                "unknown strategy {s:?}: use one of {}",
                                STRATEGIES.join(", ")
                            ),
                        ));
                    }
                    policy.strategy = Some(s);
                }
                "retries" => policy.retries = Some(int_value(&meta)?),
                "timeout_ms" => policy.timeout_ms = Some(int_value(&meta)?),
                "hedge_ms" => policy.hedge_ms = Some(int_value(&meta)?),
                "forks" => policy.forks = Some(int_value(&meta)?),
                "oneway" => policy.oneway = flag(&meta)?,
                "idempotent" => policy.idempotent = flag(&meta)?,
                "rename" => name = string_value(&meta)?,
                other => {
                    return Err(syn::Error::new(
                        meta.span(),
                        format!(
                            "unknown method attribute `{other}`: use strategy, retries, \
                             timeout_ms, hedge_ms, forks, oneway, idempotent or rename"
                        ),
                    ))
                }
            }
        }
    }
    check_policy(&mut policy, f)?;
    if policy.oneway && !matches!(output, Output::Unit) {
        return Err(syn::Error::new(
            sig.output.span(),
            "a oneway method returns nothing: remove the return type",
        ));
    }
    Ok(Method {
        name,
        ident: sig.ident.clone(),
        args,
        output,
        policy,
        docs: docs(&f.attrs),
    })
}

/// Fills the strategy `hedge_ms` and `forks` imply, and refuses numbers the strategy does
/// not read.
fn check_policy(policy: &mut Policy, f: &syn::TraitItemFn) -> syn::Result<()> {
    let span = f.sig.ident.span();
    let err = |msg: String| Err(syn::Error::new(span, msg));
    if policy.strategy.is_none() {
        if policy.hedge_ms.is_some() {
            policy.strategy = Some("hedging".into());
        } else if policy.forks.is_some() {
            policy.strategy = Some("forking".into());
        } else if policy.retries.is_some() {
            return err(
                "`retries` needs a strategy that retries: add `strategy = \"failover\"` \
                 (or failtry, failback, hedging)"
                    .into(),
            );
        }
    }
    let strategy = policy.strategy.clone().unwrap_or_default();
    if policy.hedge_ms.is_some() && strategy != "hedging" {
        return err(format!(
            "`hedge_ms` is for strategy = \"hedging\", not {strategy:?}"
        ));
    }
    if policy.forks.is_some() && strategy != "forking" {
        return err(format!(
            "`forks` is for strategy = \"forking\", not {strategy:?}"
        ));
    }
    if policy.retries.is_some() && ["failfast", "failsafe", "forking"].contains(&strategy.as_str())
    {
        return err(format!(
            "strategy {strategy:?} does not retry: remove `retries` or use failover, failtry, \
             failback or hedging"
        ));
    }
    if policy.oneway
        && !["", "failfast", "failback", "failover", "failtry"].contains(&strategy.as_str())
    {
        return err(format!(
            "a oneway method cannot use strategy {strategy:?}: there is no answer to wait for \
             (use failfast, failover, failtry or failback)"
        ));
    }
    Ok(())
}

/// `T`, `()` or `Result<T, E>`.
fn output(ty: &Type) -> syn::Result<Output> {
    if let Type::Tuple(t) = ty {
        if t.elems.is_empty() {
            return Ok(Output::Unit);
        }
    }
    if let Type::Reference(r) = ty {
        return Err(syn::Error::new(
            r.span(),
            "results travel over the network: return an owned value",
        ));
    }
    if let Type::Path(p) = ty {
        if let Some(last) = p.path.segments.last() {
            if last.ident == "Result" {
                if let syn::PathArguments::AngleBracketed(a) = &last.arguments {
                    let tys: Vec<&Type> = a
                        .args
                        .iter()
                        .filter_map(|g| match g {
                            syn::GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                        .collect();
                    if let [ok, err] = tys[..] {
                        return Ok(Output::Result(Box::new((ok.clone(), err.clone()))));
                    }
                }
                return Err(syn::Error::new(
                    last.span(),
                    "write the error type out: `Result<T, qsocket::Status>` or `Result<T, MyError>`",
                ));
            }
        }
    }
    Ok(Output::Value(Box::new(ty.clone())))
}

fn path_name(meta: &Meta) -> syn::Result<String> {
    meta.path()
        .get_ident()
        .map(Ident::to_string)
        .ok_or_else(|| syn::Error::new(meta.span(), "expected a plain attribute name"))
}

fn lit(meta: &Meta) -> syn::Result<&Lit> {
    match meta {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(l) => Ok(&l.lit),
            other => Err(syn::Error::new(other.span(), "expected a literal")),
        },
        _ => Err(syn::Error::new(
            meta.span(),
            format!(
                "`{}` takes a value: `{0} = …`",
                meta.path().to_token_stream()
            ),
        )),
    }
}

fn string_value(meta: &Meta) -> syn::Result<String> {
    match lit(meta)? {
        Lit::Str(s) => Ok(s.value()),
        other => Err(syn::Error::new(other.span(), "expected a string (`\"…\"`)")),
    }
}

fn int_value<N: std::str::FromStr<Err: std::fmt::Display>>(meta: &Meta) -> syn::Result<N> {
    match lit(meta)? {
        Lit::Int(i) => i.base10_parse(),
        other => Err(syn::Error::new(other.span(), "expected a whole number")),
    }
}

fn flag(meta: &Meta) -> syn::Result<bool> {
    match meta {
        Meta::Path(_) => Ok(true),
        Meta::NameValue(_) => match lit(meta)? {
            Lit::Bool(b) => Ok(b.value),
            other => Err(syn::Error::new(other.span(), "expected `true` or `false`")),
        },
        Meta::List(l) => Err(syn::Error::new(l.span(), "a flag takes no list")),
    }
}

/// The doc comments of `attrs`, one string a line.
fn docs(attrs: &[Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(args: TokenStream, item: TokenStream) -> syn::Result<Service> {
        let item: ItemTrait = syn::parse2(item).expect("a trait");
        parse_trait(args, &item)
    }

    fn err(args: TokenStream, item: TokenStream) -> String {
        match parse(args, item) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_names_policies_outputs_and_docs() {
        let svc = parse(
            quote!(name = "demo.Greeter", version = "1.0"),
            quote! {
                /// Greets.
                pub trait Greeter {
                    /// Says hello.
                    #[qsocket(strategy = "failover", retries = 2, timeout_ms = 500, idempotent)]
                    async fn hello(&self, name: String) -> Result<String, qsocket::Status>;
                    #[qsocket(strategy = "failfast", rename = "Add")]
                    async fn add(&self, a: i64, b: i64) -> Result<i64, AddError>;
                    #[qsocket(oneway)]
                    async fn log(&self, line: String);
                    async fn count(&self) -> u64;
                }
            },
        )
        .expect("parsed");
        assert_eq!(svc.name, "demo.Greeter");
        assert_eq!(svc.version.as_deref(), Some("1.0"));
        assert_eq!(svc.docs, [" Greets."]);
        let names: Vec<&str> = svc.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["hello", "Add", "log", "count"]);
        let hello = &svc.methods[0];
        assert_eq!(
            hello.policy,
            Policy {
                strategy: Some("failover".into()),
                retries: Some(2),
                timeout_ms: Some(500),
                idempotent: true,
                ..Policy::default()
            }
        );
        assert_eq!(hello.docs, [" Says hello."]);
        assert_eq!(hello.args.len(), 1);
        assert!(matches!(hello.output, Output::Result(_)));
        assert_eq!(svc.methods[1].args.len(), 2);
        assert!(svc.methods[2].policy.oneway && matches!(svc.methods[2].output, Output::Unit));
        assert!(matches!(svc.methods[3].output, Output::Value(_)));
    }

    #[test]
    fn mistakes_are_refused_saying_what_to_do() {
        let cases = [
            (
                quote!(colour = "red"),
                quote!(
                    trait T {}
                ),
                "unknown service attribute",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        fn f(&self);
                    }
                ),
                "add `async`",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        async fn f();
                    }
                ),
                "takes `&self` first",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        async fn f(self);
                    }
                ),
                "not `self` by value",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        async fn f(&mut self);
                    }
                ),
                "not `&mut self`",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        async fn f(&self, s: &str);
                    }
                ),
                "by value",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(retry = 2)]
                        async fn f(&self);
                    }
                ),
                "unknown method attribute `retry`",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(strategy = "fast")]
                        async fn f(&self);
                    }
                ),
                "unknown strategy",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(oneway)]
                        async fn f(&self) -> u32;
                    }
                ),
                "returns nothing",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        async fn f(&self);
                        #[qsocket(rename = "f")]
                        async fn g(&self);
                    }
                ),
                "rename one",
            ),
            (
                quote!(codec = "xml"),
                quote!(
                    trait T {}
                ),
                "unknown codec",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        const N: u32;
                    }
                ),
                "only methods",
            ),
        ];
        for (args, item, want) in cases {
            let got = err(args, item.clone());
            assert!(got.contains(want), "{item}: {got}");
        }
    }
}
