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
    Attribute, Expr, FnArg, GenericParam, Generics, Ident, ItemTrait, Lit, LitStr, Meta, Pat,
    ReturnType, Token, TraitItem, Type, TypeParamBound, Visibility,
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
    /// `module = "…"`: the name of the generated names module (default: the trait's name in
    /// snake case).
    pub module: Option<Ident>,
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
    /// Its other attributes (`#[cfg]`, `#[deprecated]`, `#[allow]`…): a `cfg` applies to
    /// everything generated for the method, the rest to its declarations.
    pub attrs: Vec<Attribute>,
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
        module: None,
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
            "module" => {
                let lit = string_lit(&meta)?;
                match syn::parse_str::<Ident>(&lit.value()) {
                    Ok(id) => svc.module = Some(id),
                    Err(_) => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`module` names the generated module: a Rust identifier",
                        ))
                    }
                }
            }
            "version" => svc.version = Some(string_value(&meta)?),
            "group" => svc.group = Some(string_value(&meta)?),
            "codec" => {
                let lit = string_lit(&meta)?;
                let c = lit.value();
                if !["msgpack", "json", "protobuf"].contains(&c.as_str()) {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!("unknown codec {c:?}: use \"msgpack\", \"json\" or \"protobuf\""),
                    ));
                }
                svc.codec = Some(c);
            }
            other => {
                return Err(syn::Error::new(
                    meta.path().span(),
                    format!(
                        "unknown service attribute `{other}`: {}use name, version, group, codec or module",
                        did_you_mean(other, &SERVICE_ATTRIBUTES)
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
                    format!(
                        "a service trait cannot have lifetime parameters: remove `{}` (what \
                         travels is owned: `String`, not `&str`)",
                        l.lifetime
                    ),
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
    // Each wire name and the method that took it first.
    let mut seen = std::collections::HashMap::new();
    for ti in &item.items {
        let TraitItem::Fn(f) = ti else {
            return Err(syn::Error::new(
                ti.span(),
                "a service trait holds only methods (`async fn name(&self, …)`)",
            ));
        };
        let (m, rename) = method(f)?;
        if let Some(first) = seen.insert(m.name.clone(), m.ident.clone()) {
            let msg = format!(
                "`{first}` and `{}` are both named {:?} on the wire: rename one \
                 (`#[qsocket(rename = \"…\")]`)",
                m.ident, m.name
            );
            // The rename that collides, or else the method's name.
            return Err(match rename {
                Some(lit) => syn::Error::new(lit.span(), msg),
                None => syn::Error::new(m.ident.span(), msg),
            });
        }
        svc.methods.push(m);
    }
    Ok(svc)
}

/// Where a method's policy attributes were written, for errors about how they combine.
#[derive(Default)]
struct Written {
    strategy: Option<Meta>,
    retries: Option<Meta>,
    hedge_ms: Option<Meta>,
    forks: Option<Meta>,
}

/// Reads one method, with its `rename = "…"` literal, if any (to point at in errors).
fn method(f: &syn::TraitItemFn) -> syn::Result<(Method, Option<LitStr>)> {
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
            "a service method has no default body: remove it and end the declaration with `;` \
             (the server's implementation gives the body)",
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
            return Err(syn::Error::new_spanned(
                r,
                "a service method takes `&self`, not `self` by value: write `&self`",
            ))
        }
        Some(FnArg::Receiver(r)) => {
            let at = r.mutability.map_or_else(|| r.span(), |m| m.span());
            return Err(syn::Error::new(
                at,
                "a service method takes `&self`, not `&mut self` (calls run concurrently): \
                 remove `mut` and keep mutable state behind a `Mutex` or atomics",
            ));
        }
        _ => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "a service method takes `&self` first: add `&self` as its first argument",
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
            return Err(syn::Error::new_spanned(
                r,
                format!(
                    "arguments travel over the network: take them by value (`{}`, not `{}`)",
                    owned(&r.elem),
                    pretty(r)
                ),
            ));
        }
        if matches!(&*pt.ty, Type::ImplTrait(_)) {
            return Err(syn::Error::new_spanned(
                &pt.ty,
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
    let mut written = Written::default();
    // `r#type` is `type` on the wire.
    let mut name = syn::ext::IdentExt::unraw(&sig.ident).to_string();
    let mut rename = None;
    for attr in f.attrs.iter().filter(|a| a.path().is_ident("qsocket")) {
        let metas = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
        for meta in metas {
            let key = path_name(&meta)?;
            match key.as_str() {
                "strategy" => {
                    let lit = string_lit(&meta)?;
                    let s = lit.value();
                    if !STRATEGIES.contains(&s.as_str()) {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "unknown strategy {s:?}: use one of {}",
                                STRATEGIES.join(", ")
                            ),
                        ));
                    }
                    policy.strategy = Some(s);
                    written.strategy = Some(meta);
                }
                "retries" => {
                    policy.retries = Some(int_value(&meta)?);
                    written.retries = Some(meta);
                }
                "timeout_ms" => policy.timeout_ms = Some(int_value(&meta)?),
                "hedge_ms" => {
                    policy.hedge_ms = Some(int_value(&meta)?);
                    written.hedge_ms = Some(meta);
                }
                "forks" => {
                    policy.forks = Some(int_value(&meta)?);
                    written.forks = Some(meta);
                }
                "oneway" => policy.oneway = flag(&meta)?,
                "idempotent" => policy.idempotent = flag(&meta)?,
                "rename" => {
                    let lit = string_lit(&meta)?;
                    name = lit.value();
                    rename = Some(lit.clone());
                }
                other => {
                    return Err(syn::Error::new(
                        meta.path().span(),
                        format!(
                            "unknown method attribute `{other}`: {}use strategy, retries, \
                             timeout_ms, hedge_ms, forks, oneway, idempotent or rename",
                            did_you_mean(other, &METHOD_ATTRIBUTES)
                        ),
                    ))
                }
            }
        }
    }
    check_policy(&mut policy, &written, &sig.ident)?;
    if policy.strategy.as_deref() == Some("failsafe") && !failsafe_output(&output) {
        return Err(syn::Error::new_spanned(
            &sig.output,
            "a failsafe call that fails returns the empty result: declare it as `Option<T>` \
             (None when the call failed) or return nothing",
        ));
    }
    if policy.oneway && !matches!(output, Output::Unit) {
        return Err(syn::Error::new_spanned(
            &sig.output,
            "a oneway method returns nothing: remove the return type (no answer comes back)",
        ));
    }
    let method = Method {
        name,
        ident: sig.ident.clone(),
        args,
        output,
        policy,
        docs: docs(&f.attrs),
        attrs: f
            .attrs
            .iter()
            .filter(|a| !a.path().is_ident("doc") && !a.path().is_ident("qsocket"))
            .cloned()
            .collect(),
    };
    Ok((method, rename))
}

/// The attributes `#[qsocket::service(…)]` reads.
const SERVICE_ATTRIBUTES: [&str; 5] = ["name", "version", "group", "codec", "module"];

/// The attributes `#[qsocket(…)]` on a method reads.
const METHOD_ATTRIBUTES: [&str; 8] = [
    "strategy",
    "retries",
    "timeout_ms",
    "hedge_ms",
    "forks",
    "oneway",
    "idempotent",
    "rename",
];

/// `did you mean `retries`? ` when `word` looks like a misspelling of one of `known` (they
/// share their first four letters, or three and one starts the other), or nothing.
fn did_you_mean(word: &str, known: &[&str]) -> String {
    let word_l = word.to_lowercase();
    known
        .iter()
        .find(|k| {
            let common = k
                .chars()
                .zip(word_l.chars())
                .take_while(|(a, b)| a == b)
                .count();
            common >= 4 || (common >= 3 && (k.starts_with(&word_l) || word_l.starts_with(*k)))
        })
        .map(|k| format!("did you mean `{k}`? "))
        .unwrap_or_default()
}

/// The owned type to take instead of a reference to `elem`: `String` for `str`, `Vec<T>` for
/// `[T]`, `T` otherwise.
fn owned(elem: &Type) -> String {
    match elem {
        Type::Path(p) if p.path.is_ident("str") => "String".into(),
        Type::Slice(s) => format!("Vec<{}>", pretty(&s.elem)),
        other => pretty(other),
    }
}

/// `tokens` as written, more or less: without the spaces `to_string` puts between all of them
/// (`&'a str`, `Vec<u8>`, not `& 'a str`, `Vec < u8 >`).
fn pretty(tokens: &impl ToTokens) -> String {
    let text = tokens.to_token_stream().to_string();
    let wordy = |c: char| c.is_alphanumeric() || c == '_' || c == '\'';
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let before = i.checked_sub(1).map(|j| chars[j]);
            let after = chars.get(i + 1).copied();
            // After a word or a comma, unless what follows closes or joins (`u8>`, `std::`).
            let keep = match (before, after) {
                (Some(','), _) => true,
                (Some(b), Some(a)) => wordy(b) && !"<>,:;.?)]}".contains(a),
                _ => false,
            };
            if !keep {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Fills the strategy `hedge_ms` and `forks` imply, and refuses numbers the strategy does
/// not read. Errors point at the attribute to change, as `written` records it (at `ident`,
/// the method's name, for one that was not written).
fn check_policy(policy: &mut Policy, written: &Written, ident: &Ident) -> syn::Result<()> {
    policy.check().map_err(|e| {
        let at = match e.field {
            PolicyField::Strategy => [&written.strategy, &written.hedge_ms, &written.forks]
                .into_iter()
                .find(|w| w.is_some())
                .unwrap_or(&None),
            PolicyField::Retries => &written.retries,
            PolicyField::HedgeMs => &written.hedge_ms,
            PolicyField::Forks => &written.forks,
        };
        match at {
            Some(meta) => syn::Error::new_spanned(meta, e.message),
            None => syn::Error::new(ident.span(), e.message),
        }
    })
}

/// The part of a [`Policy`] a [`PolicyError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    /// `strategy` (or what implies it: `hedge_ms`, `forks`).
    Strategy,
    /// `retries`.
    Retries,
    /// `hedge_ms`.
    HedgeMs,
    /// `forks`.
    Forks,
}

/// A policy whose parts do not go together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The part to change.
    pub field: PolicyField,
    /// What is wrong and what to do.
    pub message: String,
}

impl Policy {
    /// Fills the strategy `hedge_ms` and `forks` imply, and refuses an unknown strategy and
    /// numbers the strategy does not read.
    pub fn check(&mut self) -> Result<(), PolicyError> {
        let err = |field, message: String| Err(PolicyError { field, message });
        if self.strategy.is_none() {
            if self.hedge_ms.is_some() {
                self.strategy = Some("hedging".into());
            } else if self.forks.is_some() {
                self.strategy = Some("forking".into());
            } else if self.retries.is_some() {
                return err(
                    PolicyField::Retries,
                    "`retries` needs a strategy that retries: add `strategy = \"failover\"` \
                     (or failtry, failback, hedging)"
                        .into(),
                );
            }
        }
        let strategy = self.strategy.clone().unwrap_or_default();
        if !strategy.is_empty() && !STRATEGIES.contains(&strategy.as_str()) {
            return err(
                PolicyField::Strategy,
                format!(
                    "unknown strategy {strategy:?}: use one of {}",
                    STRATEGIES.join(", ")
                ),
            );
        }
        if self.hedge_ms.is_some() && strategy != "hedging" {
            return err(
                PolicyField::HedgeMs,
                format!(
                    "`hedge_ms` is for strategy = \"hedging\", not {strategy:?}: remove one of them"
                ),
            );
        }
        if self.forks.is_some() && strategy != "forking" {
            return err(
                PolicyField::Forks,
                format!(
                    "`forks` is for strategy = \"forking\", not {strategy:?}: remove one of them"
                ),
            );
        }
        if self.retries.is_some()
            && ["failfast", "failsafe", "forking"].contains(&strategy.as_str())
        {
            return err(
                PolicyField::Retries,
                format!(
                    "strategy {strategy:?} does not retry: remove `retries` or use failover, \
                     failtry, failback or hedging"
                ),
            );
        }
        if strategy == "failback" && !self.oneway {
            return err(
                PolicyField::Strategy,
                "failback sends failed oneway calls again in the background: mark the method \
                 `oneway`, or use failover"
                    .into(),
            );
        }
        if (strategy == "forking" || strategy == "hedging") && !self.idempotent {
            return err(
                PolicyField::Strategy,
                format!(
                    "{strategy} may run the method on several instances at once: mark it \
                     `idempotent` (it is safe to run twice), or use failover"
                ),
            );
        }
        if self.oneway
            && !["", "failfast", "failback", "failover", "failtry"].contains(&strategy.as_str())
        {
            return err(
                PolicyField::Strategy,
                format!(
                    "a oneway method cannot use strategy {strategy:?}: there is no answer to \
                     wait for (use failfast, failover, failtry or failback)"
                ),
            );
        }
        Ok(())
    }
}

/// Whether a failed failsafe call (an empty body) decodes as `output`: nothing, or an
/// `Option` (`None`), alone or in a `Result`.
fn failsafe_output(output: &Output) -> bool {
    let is_option = |t: &Type| match t {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Option"),
        Type::Tuple(t) => t.elems.is_empty(),
        _ => false,
    };
    match output {
        Output::Unit => true,
        Output::Value(t) => is_option(t),
        Output::Result(r) => is_option(&r.0),
    }
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

fn string_lit(meta: &Meta) -> syn::Result<&LitStr> {
    match lit(meta)? {
        Lit::Str(s) => Ok(s),
        other => Err(syn::Error::new(other.span(), "expected a string (`\"…\"`)")),
    }
}

fn string_value(meta: &Meta) -> syn::Result<String> {
    string_lit(meta).map(LitStr::value)
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
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(strategy = "failsafe")]
                        async fn f(&self) -> u32;
                    }
                ),
                "declare it as `Option<T>`",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(strategy = "failback")]
                        async fn f(&self) -> u32;
                    }
                ),
                "mark the method `oneway`",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(hedge_ms = 5)]
                        async fn f(&self) -> u32;
                    }
                ),
                "mark it `idempotent`",
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
        let cases = cases.into_iter().chain([
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(retry = 2)]
                        async fn f(&self);
                    }
                ),
                "did you mean `retries`?",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        async fn f(&self, b: &'static [Vec<u8>]);
                    }
                ),
                "(`Vec<Vec<u8>>`, not `&'static [Vec<u8>]`)",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(retries = 2)]
                        async fn f(&self);
                    }
                ),
                "add `strategy = \"failover\"`",
            ),
            (
                quote!(),
                quote!(
                    trait T {
                        #[qsocket(strategy = "failfast", hedge_ms = 5)]
                        async fn f(&self);
                    }
                ),
                "`hedge_ms` is for strategy = \"hedging\"",
            ),
            (
                quote!(),
                quote!(
                    trait T<'a> {}
                ),
                "remove `'a`",
            ),
        ]);
        for (args, item, want) in cases {
            let got = err(args, item.clone());
            assert!(got.contains(want), "{item}: {got}");
        }
    }
}
