//! qsocket services from `.proto` files, in `build.rs`, without a `protoc` binary.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     qsocket_build::configure().compile(&["../idl/demo/greeter.proto"], &["../idl"])?;
//!     Ok(())
//! }
//! ```
//!
//! and in the crate, one module per protobuf package:
//!
//! ```ignore
//! pub mod greeter {
//!     qsocket::include_proto!("demo.greeter");
//! }
//! ```
//!
//! Each package's module holds its prost messages — with serde implementations that follow
//! the proto3 JSON mapping (pbjson), so they travel as protobuf, JSON or MessagePack — and for
//! each service what `#[qsocket::service(codec = "protobuf")]` generates: the server trait
//! (`Greeter`), the client trait (`GreeterApi`), the client (`GreeterClient`), the server
//! (`GreeterServer`) and the names module (`greeter`). The crate needs `prost`, `serde`,
//! `pbjson` and `pbjson-types` (well-known types) as dependencies.
//!
//! Policies come from qsocket's own options (`idl/qsocket/options.proto`, built in: a
//! `.proto` imports `"qsocket/options.proto"` without it on the include path): per method
//! `option (qsocket.method) = { strategy: "failover" retries: 2 }`, per service
//! `option (qsocket.service) = { version: "1.0" defaults: { timeout_ms: 500 } }`; the builder
//! can override them ([`Builder::policy`]). A `.proto` that does not compile, an unknown
//! option, an unknown strategy or a streaming rpc fails the build with file, line and cause.

use proc_macro2::TokenStream;
use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, Value};
use quote::{format_ident, quote};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub use qsocket_codegen::Policy;

/// Why a build failed: what, and where (`file:line: cause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// A [`Builder`] with the defaults: output to `OUT_DIR`, policies from the files' options.
pub fn configure() -> Builder {
    Builder::default()
}

/// Compiles `.proto` files into prost messages and qsocket services (see the crate docs).
#[derive(Debug, Clone, Default)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    overrides: Vec<(String, Policy)>,
    descriptor_set: Option<PathBuf>,
}

impl Builder {
    /// Where the generated files go (default: `OUT_DIR`, as Cargo sets it for build scripts).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Also writes the compiled files (with their imports and source info) as an encoded
    /// `google.protobuf.FileDescriptorSet` to `path`: for reflection, or for another
    /// language's protobuf library to build the same messages at run time.
    pub fn file_descriptor_set_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.descriptor_set = Some(path.into());
        self
    }

    /// Overrides the policy of a service (`"demo.greeter.Greeter"`: every method) or of one
    /// method (`"demo.greeter.Greeter.SayHello"`), over what the `.proto` options say: the
    /// fields set in `policy` replace theirs.
    ///
    /// ```
    /// let b = qsocket_build::configure().policy(
    ///     "demo.greeter.Greeter.SayHello",
    ///     qsocket_build::Policy { strategy: Some("failover".into()), retries: Some(3), ..Default::default() },
    /// );
    /// # let _ = b;
    /// ```
    pub fn policy(mut self, target: &str, policy: Policy) -> Self {
        self.overrides
            .push((target.trim_start_matches('.').to_string(), policy));
        self
    }

    /// Compiles `protos` (found through `includes`) and writes one `<package>.rs` per
    /// protobuf package into the output directory.
    pub fn compile(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| {
                    Error("OUT_DIR is not set: call this from build.rs, or set out_dir".into())
                })?,
        };
        use protox::file::{ChainFileResolver, GoogleFileResolver, IncludeFileResolver};
        let mut resolver = ChainFileResolver::new();
        for include in includes {
            resolver.add(IncludeFileResolver::new(include.as_ref().to_path_buf()));
        }
        // `import "qsocket/options.proto";` works without the file on the include path.
        resolver.add(QsocketOptions);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(true);
        for p in protos {
            compiler.open_file(p.as_ref()).map_err(located)?;
        }
        for f in compiler.files() {
            if let Some(path) = f.path() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        if let Some(path) = &self.descriptor_set {
            std::fs::write(path, compiler.encode_file_descriptor_set())
                .map_err(|e| Error(format!("writing {}: {e}", path.display())))?;
        }
        let pool = compiler.descriptor_pool();
        let services = read_services(&pool, &self.overrides)?;

        let errors = Rc::new(RefCell::new(Vec::new()));
        let mut config = prost_build::Config::new();
        config
            .out_dir(&out_dir)
            // The well-known types with proto3 JSON (pbjson-types), not prost-types.
            .compile_well_known_types()
            .extern_path(".google.protobuf", "::pbjson_types")
            .service_generator(Box::new(Generator {
                services,
                errors: errors.clone(),
            }));
        config
            .compile_fds(compiler.file_descriptor_set())
            .map_err(|e| Error(format!("generating code: {e}")))?;
        if let Some(e) = errors.borrow().first() {
            return Err(e.clone());
        }

        // proto3 JSON: serde implementations, appended to each package's file.
        let packages: Vec<String> = compiler
            .file_descriptor_set()
            .file
            .iter()
            .filter_map(|f| f.package.clone())
            .filter(|p| p != "google.protobuf")
            .map(|p| format!(".{p}"))
            .collect();
        if packages.is_empty() {
            return Ok(());
        }
        let mut json = pbjson_build::Builder::new();
        json.register_descriptors(&compiler.encode_file_descriptor_set())
            .map_err(|e| Error(format!("proto3 JSON: {e}")))?
            .extern_path(".google.protobuf", "::pbjson_types");
        json.generate(&packages, |package| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(out_dir.join(format!("{package}.rs")))
        })
        .map_err(|e| Error(format!("proto3 JSON: {e}")))?
        .into_iter()
        .try_for_each(|(_, mut w)| w.flush())
        .map_err(|e| Error(format!("writing {}: {e}", out_dir.display())))?;
        Ok(())
    }
}

/// qsocket's own options (`idl/qsocket/options.proto`), built in.
const OPTIONS_PROTO: &str = include_str!("../../idl/qsocket/options.proto");

/// Resolves `qsocket/options.proto` to the built-in copy.
struct QsocketOptions;

impl protox::file::FileResolver for QsocketOptions {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == "qsocket/options.proto" {
            protox::file::File::from_source(name, OPTIONS_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// A protox error with its location: `file:line: cause` (the line of its first label).
fn located(e: protox::Error) -> Error {
    use miette::Diagnostic;
    let line = e.source_code().and_then(|src| {
        let label = e.labels()?.next()?;
        let contents = src.read_span(label.inner(), 0, 0).ok()?;
        Some(contents.line() + 1)
    });
    let place = match (e.file(), line) {
        (Some(f), Some(l)) => format!("{f}:{l}: "),
        (Some(f), None) => format!("{f}: "),
        _ => String::new(),
    };
    // The labels and notes say what is wrong inside the located element (e.g. which field
    // of an option is unknown).
    let mut detail: Vec<String> = e
        .labels()
        .into_iter()
        .flatten()
        .filter_map(|l| l.label().map(str::to_string))
        .collect();
    if let Some(related) = e.related() {
        detail.extend(related.map(|r| r.to_string()));
    }
    if let Some(h) = e.help() {
        detail.push(h.to_string());
    }
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push(s.to_string());
        source = s.source();
    }
    detail.retain(|d| !d.is_empty());
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", detail.join("; "))
    };
    Error(format!("{place}{e}{detail}"))
}

/// What the options say about one service.
#[derive(Debug, Clone, Default)]
struct ServiceInfo {
    version: Option<String>,
    group: Option<String>,
    /// Each method's policy, by its name in the `.proto`.
    methods: HashMap<String, Policy>,
}

/// `file:line` of the element at `path` of `file`.
fn place(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    let line = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.span.first())
        .map_or(0, |l| l + 1);
    format!("{}:{line}", file.name())
}

/// The services of `pool`, their options read and checked.
fn read_services(
    pool: &DescriptorPool,
    overrides: &[(String, Policy)],
) -> Result<HashMap<String, ServiceInfo>, Error> {
    let method_ext = pool.get_extension_by_name("qsocket.method");
    let service_ext = pool.get_extension_by_name("qsocket.service");
    let mut out = HashMap::new();
    for svc in pool.services() {
        let file = svc.parent_file();
        let mut info = ServiceInfo::default();
        let mut defaults = Policy::default();
        if let Some(opts) = extension(&svc.options(), service_ext.as_ref()) {
            info.version = string_field(&opts, "version");
            info.group = string_field(&opts, "group");
            if let Some(Value::Message(d)) = opts.get_field_by_name("defaults").as_deref() {
                overlay(&mut defaults, &policy_of(d));
            }
        }
        for (target, p) in overrides {
            if target == svc.full_name() {
                overlay(&mut defaults, p);
            }
        }
        for m in svc.methods() {
            let at = place(&file, m.path());
            if m.is_client_streaming() || m.is_server_streaming() {
                return Err(Error(format!(
                    "{at}: rpc {} streams, and qsocket does not support streaming rpcs yet: \
                     make it unary",
                    m.full_name()
                )));
            }
            let mut p = defaults.clone();
            if let Some(opts) = extension(&m.options(), method_ext.as_ref()) {
                overlay(&mut p, &policy_of(&opts));
            }
            for (target, o) in overrides {
                if target == m.full_name() {
                    overlay(&mut p, o);
                }
            }
            p.check()
                .map_err(|e| Error(format!("{at}: rpc {}: {}", m.full_name(), e.message)))?;
            if p.oneway && m.output().full_name() != "google.protobuf.Empty" {
                return Err(Error(format!(
                    "{at}: rpc {} is oneway: it returns google.protobuf.Empty (no answer is sent)",
                    m.full_name()
                )));
            }
            info.methods.insert(m.name().to_string(), p);
        }
        out.insert(svc.full_name().to_string(), info);
    }
    Ok(out)
}

/// The extension's message in `options`, if it is set.
fn extension(
    options: &DynamicMessage,
    ext: Option<&ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let ext = ext?;
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(m) => Some(m.clone()),
        _ => None,
    }
}

fn string_field(m: &DynamicMessage, name: &str) -> Option<String> {
    match m.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A `qsocket.MethodPolicy` message as a [`Policy`] (fields left at their default are unset).
fn policy_of(m: &DynamicMessage) -> Policy {
    let u64_of = |name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Value::U64(n)) if *n > 0 => Some(*n),
        Some(Value::U32(n)) if *n > 0 => Some(u64::from(*n)),
        _ => None,
    };
    let bool_of = |name: &str| {
        matches!(
            m.get_field_by_name(name).as_deref(),
            Some(Value::Bool(true))
        )
    };
    Policy {
        strategy: string_field(m, "strategy"),
        retries: u64_of("retries").and_then(|n| u32::try_from(n).ok()),
        timeout_ms: u64_of("timeout_ms"),
        hedge_ms: u64_of("hedge_ms"),
        forks: u64_of("forks").and_then(|n| u32::try_from(n).ok()),
        oneway: bool_of("oneway"),
        idempotent: bool_of("idempotent"),
    }
}

/// `over`'s set fields replace `base`'s.
fn overlay(base: &mut Policy, over: &Policy) {
    if over.strategy.is_some() {
        base.strategy.clone_from(&over.strategy);
    }
    base.retries = over.retries.or(base.retries);
    base.timeout_ms = over.timeout_ms.or(base.timeout_ms);
    base.hedge_ms = over.hedge_ms.or(base.hedge_ms);
    base.forks = over.forks.or(base.forks);
    base.oneway |= over.oneway;
    base.idempotent |= over.idempotent;
}

/// prost-build's service generator: each service rendered as the trait macro renders a
/// protobuf service.
struct Generator {
    services: HashMap<String, ServiceInfo>,
    errors: Rc<RefCell<Vec<Error>>>,
}

impl prost_build::ServiceGenerator for Generator {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        match self.render(&service) {
            Ok(tokens) => buf.push_str(&tokens.to_string()),
            Err(e) => self.errors.borrow_mut().push(e),
        }
    }
}

impl Generator {
    fn render(&self, service: &prost_build::Service) -> Result<TokenStream, Error> {
        let full = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let info = self.services.get(&full).cloned().unwrap_or_default();
        let parse_err = |what: &str, e: syn::Error| Error(format!("{full}: {what}: {e}"));
        let mut methods = Vec::new();
        for m in &service.methods {
            let policy = info.methods.get(&m.proto_name).cloned().unwrap_or_default();
            let input: syn::Type =
                syn::parse_str(&m.input_type).map_err(|e| parse_err(&m.input_type, e))?;
            let output = if policy.oneway {
                qsocket_codegen::Output::Unit
            } else {
                let out: syn::Type =
                    syn::parse_str(&m.output_type).map_err(|e| parse_err(&m.output_type, e))?;
                let status: syn::Type = syn::parse_quote!(::qsocket::Status);
                qsocket_codegen::Output::Result(Box::new((out, status)))
            };
            methods.push(qsocket_codegen::Method {
                name: m.proto_name.clone(),
                ident: syn::parse_str(&m.name).map_err(|e| parse_err(&m.name, e))?,
                args: vec![(format_ident!("request"), input)],
                output,
                policy,
                docs: m.comments.leading.clone(),
                attrs: Vec::new(),
            });
        }
        let svc = qsocket_codegen::Service {
            name: full.clone(),
            name_from_path: false,
            ident: syn::parse_str(&service.name).map_err(|e| parse_err(&service.name, e))?,
            vis: syn::parse_quote!(pub),
            generics: syn::Generics::default(),
            supertraits: syn::punctuated::Punctuated::new(),
            version: info.version,
            group: info.group,
            codec: Some("protobuf".into()),
            module: None,
            methods,
            docs: service.comments.leading.clone(),
        };
        qsocket_codegen::render(&svc, &quote!(::qsocket)).map_err(|e| Error(format!("{full}: {e}")))
    }
}
