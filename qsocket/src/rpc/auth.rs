//! User auth: credentials on the client (a client layer that adds them to each request's
//! metadata) and an authenticator on the server (a server layer that refuses a call before
//! any handler runs, and hands the handler the caller's [`Principal`]).
//!
//! Two schemes ship:
//! - **Bearer token** ([`BearerToken`] / [`BearerTokens`]): metadata
//!   `authorization: Bearer <token>`. Tokens are kept and compared as SHA-256 digests, in
//!   constant time.
//! - **Access key** ([`AccessKey`] / [`AccessKeys`]): a key id and an HMAC-SHA256 signature
//!   over service, method, timestamp, nonce and the SHA-256 digest of the body, in metadata
//!   `x-qs-key`, `x-qs-ts` (Unix milliseconds), `x-qs-nonce` and `x-qs-sig` (hex). The server
//!   refuses a timestamp outside its clock-skew window and a nonce it has seen within it, so a
//!   captured request cannot be replayed, and a changed body or name breaks the signature.
//!
//! Refusals: `unauthenticated` (missing, malformed, wrong, expired or replayed credentials)
//! or `permission_denied` (a known identity that a per-method rule does not allow). Secrets
//! never appear in logs, errors or `Debug` output.
//!
//! Put the client's credentials layer *inside* a [`Cluster`](super::Cluster) layer (add it
//! first), so that every attempt of a retried call is signed with a fresh nonce.

use super::client::{ClientLayer, Invoke, Request, Response};
use super::context::CallContext;
use super::metadata::MetadataMap;
use super::server::{Admit, ServerLayer};
use super::status::Status;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Metadata key of a bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key of an access key's id.
pub const KEY_ID: &str = "x-qs-key";
/// Metadata key of an access-key request's timestamp (Unix milliseconds).
pub const TIMESTAMP: &str = "x-qs-ts";
/// Metadata key of an access-key request's nonce.
pub const NONCE: &str = "x-qs-nonce";
/// Metadata key of an access-key request's signature (hex HMAC-SHA256).
pub const SIGNATURE: &str = "x-qs-sig";

/// Who a call comes from, as an authenticator established it: an id and roles. A handler
/// reads it from its context ([`Principal::of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The caller's id (a user, a service account, an access key's owner).
    pub id: String,
    /// What the caller may do, as per-method rules name it.
    pub roles: Vec<String>,
}

impl Principal {
    /// An identity with no roles.
    pub fn new(id: impl Into<String>) -> Self {
        Principal {
            id: id.into(),
            roles: Vec::new(),
        }
    }

    /// The same identity with one more role.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// The caller an [`Auth`] layer attached to `call`, if any.
    pub fn of(call: &CallContext) -> Option<&Principal> {
        call.extensions().get::<Principal>()
    }
}

/// Establishes who a call comes from, or refuses it (`unauthenticated`).
pub trait Authenticator: Send + Sync + 'static {
    /// The caller of `call`, from its metadata (and, for signatures, its names and body).
    /// Shared (`Arc`): attaching it to each call costs no copy of it.
    fn authenticate(&self, call: &CallContext) -> Result<Arc<Principal>, Status>;
}

/// A per-method rule: which roles may call it.
#[derive(Clone, Debug)]
struct Rule {
    service: String,
    /// `None`: every method of the service.
    method: Option<String>,
    roles: Vec<String>,
}

/// The server layer of user auth: authenticates every call with `A` before any handler runs,
/// applies per-method rules, and attaches the [`Principal`] to the call.
///
/// ```
/// use qsocket::rpc::{Auth, BearerTokens, Principal, RpcServer, Router};
/// let auth = Auth::new(
///     BearerTokens::new()
///         .token("s3cret-admin", Principal::new("ada").role("admin"))
///         .token("s3cret-user", Principal::new("bob")),
/// )
/// .allow("bank.Ledger", "Close", &["admin"]);
/// let builder = RpcServer::builder(Router::new()).layer(auth);
/// ```
pub struct Auth<A> {
    authenticator: A,
    rules: Vec<Rule>,
}

impl<A: fmt::Debug> fmt::Debug for Auth<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("authenticator", &self.authenticator)
            .field("rules", &self.rules)
            .finish()
    }
}

impl<A: Authenticator> Auth<A> {
    /// Authenticates every call with `authenticator`; every identity may call every method
    /// until rules say otherwise.
    pub fn new(authenticator: A) -> Self {
        Auth {
            authenticator,
            rules: Vec::new(),
        }
    }

    /// Only identities with one of `roles` may call `service.method` (`method` `"*"`: every
    /// method of the service). A method's own rule wins over its service's.
    pub fn allow(mut self, service: &str, method: &str, roles: &[&str]) -> Self {
        self.rules.push(Rule {
            service: service.to_string(),
            method: (method != "*").then(|| method.to_string()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        });
        self
    }

    fn permitted(&self, call: &CallContext, who: &Principal) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let (service, method) = (call.service(), call.method());
        let rule = self
            .rules
            .iter()
            .find(|r| r.service == service && r.method.as_deref() == Some(method))
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.service == service && r.method.is_none())
            });
        match rule {
            None => true,
            Some(r) => who.roles.iter().any(|role| r.roles.contains(role)),
        }
    }
}

impl<A: Authenticator> ServerLayer for Auth<A> {
    const OBSERVES: bool = false;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        let who = match self.authenticator.authenticate(call) {
            Ok(who) => who,
            Err(st) => {
                tracing::debug!(service = call.service(), method = call.method(), peer = %call.peer_addr(), reason = st.message(), "call refused: unauthenticated");
                return Admit::Refuse(st);
            }
        };
        if !self.permitted(call, &who) {
            tracing::debug!(service = call.service(), method = call.method(), id = %who.id, "call refused: permission denied");
            return Admit::Refuse(Status::permission_denied(format!(
                "{} may not call {}.{}",
                who.id,
                call.service(),
                call.method()
            )));
        }
        // Shared as it is: no copy, no allocation.
        call.extensions_mut().insert_arc(who);
        Admit::Pass
    }
}

/// Whether `a` and `b` are equal, in time that depends on their length only (a word at a
/// time, with no branch on the contents): for comparing a presented secret with a kept one.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    let diff = a
        .chunks(8)
        .zip(b.chunks(8))
        .fold(0u64, |acc, (x, y)| acc | (word(x) ^ word(y)));
    std::hint::black_box(diff) == 0
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Bearer tokens

/// Client credentials: a bearer token sent with every call.
#[derive(Clone)]
pub struct BearerToken {
    header: Arc<str>,
    /// The `authorization` entry alone, in a block every call's metadata can share.
    block: Option<MetadataMap>,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Sends `token`.
    pub fn new(token: &str) -> Self {
        let header: Arc<str> = format!("Bearer {token}").into();
        let mut block = MetadataMap::new();
        // A token too long for the format fails each call instead (below).
        let block = block
            .insert(AUTHORIZATION, &*header)
            .ok()
            .map(|()| block.shared());
        BearerToken { header, block }
    }
}

impl<I: Invoke> ClientLayer<I> for BearerToken {
    type Invoke = WithBearer<I>;

    fn layer(self, inner: I) -> WithBearer<I> {
        WithBearer { inner, cred: self }
    }
}

/// The invoker a [`BearerToken`] makes.
pub struct WithBearer<I> {
    inner: I,
    cred: BearerToken,
}

impl<I: Invoke> Invoke for WithBearer<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        match &self.cred.block {
            // The common case: the call carries no other metadata, and shares the block.
            Some(block) if req.metadata.is_empty() => req.metadata = block.clone(),
            _ => req.metadata.insert(AUTHORIZATION, &*self.cred.header)?,
        }
        self.inner.invoke(req).await
    }
}

/// The server's bearer tokens and whom each one identifies. Kept as SHA-256 digests; a
/// presented token is compared with every one in constant time.
pub struct BearerTokens {
    tokens: Vec<([u8; 32], Arc<Principal>)>,
    /// Unique per set (what a session's cached token is tied to).
    id: u64,
}

impl Default for BearerTokens {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        BearerTokens {
            tokens: Vec::new(),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerTokens")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl BearerTokens {
    /// No tokens yet.
    pub fn new() -> Self {
        BearerTokens::default()
    }

    /// `token` identifies `who`.
    pub fn token(mut self, token: &str, who: Principal) -> Self {
        self.tokens.push((sha256(token.as_bytes()), Arc::new(who)));
        self
    }
}

/// The bearer token a session last presented and whom it identified: later calls on the
/// session that present the same token skip hashing it (compared in constant time).
#[derive(Clone)]
struct SessionBearer {
    token: Arc<[u8]>,
    who: Arc<Principal>,
    /// Which [`BearerTokens`] accepted it.
    by: u64,
}

impl Authenticator for BearerTokens {
    fn authenticate(&self, call: &CallContext) -> Result<Arc<Principal>, Status> {
        let md = call.metadata();
        let header = md
            .get(AUTHORIZATION)
            .ok_or_else(|| Status::unauthenticated("missing credentials: no bearer token"))?;
        let token = header.strip_prefix(b"Bearer ").ok_or_else(|| {
            Status::unauthenticated("malformed authorization: not a bearer token")
        })?;
        let me = self.id;
        let cached = call.with_session_attr(|c: Option<&mut SessionBearer>| {
            c.filter(|c| c.by == me && same_secret(&c.token, token))
                .map(|c| c.who.clone())
        });
        if let Some(who) = cached {
            return Ok(who);
        }
        let digest = sha256(token);
        // Every stored digest is compared, whichever matches.
        let mut found: Option<&Arc<Principal>> = None;
        for (d, who) in &self.tokens {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(who);
            }
        }
        let who = found
            .cloned()
            .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
        call.set_session_attr(SessionBearer {
            token: token.into(),
            who: who.clone(),
            by: me,
        });
        Ok(who)
    }
}

// ---------------------------------------------------------------------------------------
// Access keys

/// Client credentials: an access key id and its secret; every call is signed (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct AccessKey {
    id: Arc<str>,
    secret: Arc<[u8]>,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl AccessKey {
    /// Key `id` with `secret`.
    pub fn new(id: &str, secret: &[u8]) -> Self {
        AccessKey {
            id: id.into(),
            secret: secret.into(),
        }
    }
}

/// The HMAC of an access-key signature over service, method, timestamp and nonce (each
/// followed by a newline) and the hex SHA-256 of the body; fed piece by piece (no copy).
fn signature(
    secret: &[u8],
    service: &str,
    method: &str,
    ts: &[u8],
    nonce: &[u8],
    body: &[u8],
) -> Result<HmacSha256, Status> {
    let mut mac = HmacSha256::new_from_slice(secret)
        .map_err(|_| Status::internal("access key: unusable secret"))?;
    for part in [service.as_bytes(), method.as_bytes(), ts, nonce] {
        mac.update(part);
        mac.update(b"\n");
    }
    mac.update(&hex32(&sha256(body)));
    Ok(mac)
}

/// `bytes` (32 of them) as 64 lowercase hex digits, on the stack.
fn hex32(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

/// `n` in decimal, on the stack: the buffer and where the digits start.
fn decimal(mut n: u64) -> ([u8; 20], usize) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return (buf, at);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<I: Invoke> ClientLayer<I> for AccessKey {
    type Invoke = WithAccessKey<I>;

    fn layer(self, inner: I) -> WithAccessKey<I> {
        WithAccessKey { inner, key: self }
    }
}

/// The invoker an [`AccessKey`] makes.
pub struct WithAccessKey<I> {
    inner: I,
    key: AccessKey,
}

impl<I: Invoke> Invoke for WithAccessKey<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        let (ts, from) = decimal(unix_ms());
        let ts = &ts[from..];
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut raw = [0u8; 32];
        raw[..8].copy_from_slice(&super::balance::random_u64().to_le_bytes());
        raw[8..16].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        raw[16..24].copy_from_slice(&super::balance::random_u64().to_le_bytes());
        // 32 hex digits of randomness and a counter.
        let nonce = &hex32(&raw)[..32];
        let mac = signature(
            &self.key.secret,
            req.service,
            req.method,
            ts,
            nonce,
            &req.body,
        )?;
        let sig = hex32(&mac.finalize().into_bytes().into());
        let md = &mut req.metadata;
        md.reserve(
            4 * 3
                + KEY_ID.len()
                + TIMESTAMP.len()
                + NONCE.len()
                + SIGNATURE.len()
                + self.key.id.len()
                + ts.len()
                + nonce.len()
                + sig.len(),
        );
        md.insert(KEY_ID, &*self.key.id)?;
        md.insert(TIMESTAMP, ts)?;
        md.insert(NONCE, nonce)?;
        md.insert(SIGNATURE, sig)?;
        self.inner.invoke(req).await
    }
}

/// The server's access keys: each key's secret and whom it identifies, the clock-skew window,
/// and the nonces seen within it.
pub struct AccessKeys {
    keys: HashMap<String, (Vec<u8>, Arc<Principal>)>,
    skew: Duration,
    nonces: Mutex<Nonces>,
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKeys")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("skew", &self.skew)
            .finish()
    }
}

/// Nonces seen within the skew window, per access key.
struct Nonces {
    by_key: HashMap<String, KeyNonces>,
    /// Most nonces remembered per key.
    capacity: usize,
    /// The hash keys (random per process).
    hashers: (RandomState, RandomState),
}

/// The nonces of one key: (timestamp, keyed 128-bit hash of the nonce), oldest first — no
/// copy of a nonce is kept. A replay carries the same (signed) timestamp and nonce.
#[derive(Default)]
struct KeyNonces {
    seen: BTreeSet<(u64, u128)>,
    /// Requests stamped at or before this were forgotten early to stay within the capacity:
    /// they can no longer be checked for replays, so they are refused.
    floor: u64,
}

/// Default clock-skew window of [`AccessKeys`].
pub const DEFAULT_SKEW: Duration = Duration::from_secs(300);
/// Default number of nonces [`AccessKeys`] remembers.
pub const DEFAULT_NONCES: usize = 100_000;

impl Default for AccessKeys {
    fn default() -> Self {
        AccessKeys::new()
    }
}

impl AccessKeys {
    /// No keys yet; a skew window of [`DEFAULT_SKEW`], [`DEFAULT_NONCES`] nonces remembered.
    pub fn new() -> Self {
        AccessKeys {
            keys: HashMap::new(),
            skew: DEFAULT_SKEW,
            nonces: Mutex::new(Nonces {
                by_key: HashMap::new(),
                capacity: DEFAULT_NONCES,
                hashers: (RandomState::new(), RandomState::new()),
            }),
        }
    }

    /// Key `id` with `secret` identifies `who`.
    pub fn key(mut self, id: &str, secret: &[u8], who: Principal) -> Self {
        self.keys
            .insert(id.to_string(), (secret.to_vec(), Arc::new(who)));
        self
    }

    /// How far a request's timestamp may be from this server's clock (either way).
    pub fn skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// How many nonces are remembered at most per key. Beyond that the key's oldest are
    /// forgotten early, and its requests stamped no later than a forgotten one are refused as
    /// expired (they could no longer be checked for replays): under more signed calls per skew
    /// window than that, the key's window narrows to what its cache covers. Keys do not
    /// share a cache: one key's traffic never narrows another's window.
    pub fn nonce_capacity(self, capacity: usize) -> Self {
        if let Ok(mut n) = self.nonces.lock() {
            n.capacity = capacity.max(1);
        }
        self
    }
}

impl Authenticator for AccessKeys {
    fn authenticate(&self, call: &CallContext) -> Result<Arc<Principal>, Status> {
        let md = call.metadata();
        let field = |k: &str| {
            md.get(k).ok_or_else(|| {
                Status::unauthenticated(format!("missing credentials: no {k} in the metadata"))
            })
        };
        let (id, ts, nonce, sig) = (
            field(KEY_ID)?,
            field(TIMESTAMP)?,
            field(NONCE)?,
            field(SIGNATURE)?,
        );
        let id = std::str::from_utf8(id)
            .map_err(|_| Status::unauthenticated("malformed access key id"))?;
        let (secret, who) = self
            .keys
            .get(id)
            .ok_or_else(|| Status::unauthenticated("unknown access key"))?;
        let at: u64 = std::str::from_utf8(ts)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Status::unauthenticated("malformed timestamp"))?;
        let now = unix_ms();
        let skew = self.skew.as_millis() as u64;
        if at.abs_diff(now) > skew {
            return Err(Status::unauthenticated(
                "request timestamp outside the allowed clock skew (expired or from the future)",
            ));
        }
        if nonce.is_empty() || nonce.len() > 128 {
            return Err(Status::unauthenticated("malformed nonce"));
        }
        let sig = unhex(sig).ok_or_else(|| Status::unauthenticated("malformed signature"))?;
        let mac = signature(
            secret,
            call.service(),
            call.method(),
            ts,
            nonce,
            call.request_body(),
        )?;
        // Constant-time comparison.
        mac.verify_slice(&sig)
            .map_err(|_| Status::unauthenticated("bad signature"))?;
        // A valid signature: refuse it if its nonce was seen within the window.
        let mut n = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let hash = (u128::from(n.hashers.0.hash_one(nonce)) << 64)
            | u128::from(n.hashers.1.hash_one(nonce));
        let capacity = n.capacity;
        if !n.by_key.contains_key(id) {
            n.by_key.insert(id.to_string(), KeyNonces::default());
        }
        let Some(k) = n.by_key.get_mut(id) else {
            return Err(Status::internal("nonce cache lost a key"));
        };
        // Forget what the skew check refuses anyway.
        while let Some(&(stamped, _)) = k.seen.first() {
            if stamped.saturating_add(skew) >= now {
                break;
            }
            k.seen.pop_first();
        }
        let expired = || {
            Status::unauthenticated(
                "request timestamp older than the replay check still covers (expired)",
            )
        };
        if at <= k.floor {
            return Err(expired());
        }
        if k.seen.contains(&(at, hash)) {
            return Err(Status::unauthenticated(
                "replayed request: nonce already used",
            ));
        }
        while k.seen.len() >= capacity {
            let Some((stamped, _)) = k.seen.pop_first() else {
                break;
            };
            k.floor = k.floor.max(stamped);
        }
        if at <= k.floor {
            return Err(expired());
        }
        k.seen.insert((at, hash));
        Ok(who.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&[0, 1, 0xab, 0xff]);
        let h = hex32(&b);
        assert_eq!(&h[..8], b"0001abff");
        assert_eq!(unhex(&h).expect("hex"), b);
        assert_eq!(unhex(b"0001ABff").expect("hex"), [0, 1, 0xab, 0xff]);
        assert_eq!(&decimal(1_234_567).0[13..], b"1234567");
        assert_eq!(&decimal(0).0[19..], b"0");
        assert!(unhex(b"abc").is_none() && unhex(b"zz").is_none());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let t = format!("{:?}", BearerToken::new("tok-123"));
        let k = format!("{:?}", AccessKey::new("AK", b"sek-456"));
        let s = format!(
            "{:?} {:?}",
            BearerTokens::new().token("tok-123", Principal::new("a")),
            AccessKeys::new().key("AK", b"sek-456", Principal::new("a"))
        );
        for out in [t, k, s] {
            assert!(
                !out.contains("tok-123") && !out.contains("sek-456"),
                "{out}"
            );
        }
    }

    #[test]
    fn same_secret_compares_every_byte_and_the_length() {
        let a = b"0123456789abcdefXYZ";
        assert!(super::same_secret(a, a));
        for i in 0..a.len() {
            let mut b = *a;
            b[i] ^= 1;
            assert!(!super::same_secret(a, &b), "byte {i}");
        }
        assert!(!super::same_secret(a, &a[..18]));
        assert!(super::same_secret(b"", b""));
    }
}
