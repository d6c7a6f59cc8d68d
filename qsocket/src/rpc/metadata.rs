//! Call metadata: small `key → bytes` entries that travel with a request or a response (trace
//! ids, credentials, …), kept in their wire form so an empty map costs nothing and a full one
//! is copied into the frame as it is.

use super::frame::{put_metadata, Metadata};
use super::status::Status;
use bytes::Bytes;

/// The metadata of one request or response, owned and editable (client layers add credentials,
/// handlers add response entries). Keys are at most 255 bytes, values at most 65,535; the whole
/// block is bounded by the frame limits when it is sent.
///
/// ```
/// use qsocket::rpc::MetadataMap;
/// let mut md = MetadataMap::new();
/// md.insert("trace-id", "abc").unwrap();
/// md.insert("trace-id", "def").unwrap(); // replaces
/// assert_eq!(md.get("trace-id"), Some(&b"def"[..]));
/// assert_eq!(md.len(), 1);
/// md.remove("trace-id");
/// assert!(md.is_empty());
/// ```
#[derive(Clone, Default)]
pub struct MetadataMap {
    wire: Wire,
}

/// A map's entries in wire form: its own, or a block shared by every map cloned from one
/// [`shared`](MetadataMap::shared) map (copied on the first change).
#[derive(Clone)]
enum Wire {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl Default for Wire {
    fn default() -> Self {
        Wire::Owned(Vec::new())
    }
}

impl PartialEq for MetadataMap {
    fn eq(&self, other: &Self) -> bool {
        self.as_wire() == other.as_wire()
    }
}

impl Eq for MetadataMap {}

impl MetadataMap {
    /// An empty map (no allocation).
    pub const fn new() -> Self {
        MetadataMap {
            wire: Wire::Owned(Vec::new()),
        }
    }

    /// A map holding a block in wire form; `None` if it is malformed.
    pub fn from_wire(block: &[u8]) -> Option<Self> {
        Metadata(block).is_valid().then(|| MetadataMap {
            wire: Wire::Owned(block.to_vec()),
        })
    }

    /// This map, with its entries in a block its clones share: cloning it costs no
    /// allocation (a clone that is changed copies the block first). For entries every call
    /// carries, such as a client's credentials.
    ///
    /// ```
    /// use qsocket::rpc::MetadataMap;
    /// let mut md = MetadataMap::new();
    /// md.insert("authorization", "Bearer t").unwrap();
    /// let shared = md.shared();
    /// let mut per_call = shared.clone(); // no allocation
    /// per_call.insert("trace-id", "1").unwrap(); // copies, then adds
    /// assert_eq!(shared.len(), 1);
    /// assert_eq!(per_call.len(), 2);
    /// ```
    pub fn shared(self) -> Self {
        match self.wire {
            Wire::Owned(v) => MetadataMap {
                wire: Wire::Shared(Bytes::from(v)),
            },
            shared => MetadataMap { wire: shared },
        }
    }

    /// The block, owned and editable (a shared one is copied first).
    fn owned(&mut self) -> &mut Vec<u8> {
        if let Wire::Shared(b) = &self.wire {
            self.wire = Wire::Owned(b.to_vec());
        }
        match &mut self.wire {
            Wire::Owned(v) => v,
            Wire::Shared(_) => unreachable!("made owned above"),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.view().get(key)
    }

    /// The value of `key` as UTF-8 text, if present and valid.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `key` to `value`, replacing an earlier value. Fails (`invalid_argument`) if the key
    /// or value is too long for the format.
    pub fn insert(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Status> {
        self.remove(key);
        self.append(key, value)
    }

    /// Makes room for `additional` more bytes of entries (each takes its key and value plus
    /// 3 bytes), so that inserting several costs one allocation.
    pub fn reserve(&mut self, additional: usize) {
        self.owned().reserve(additional);
    }

    /// Adds an entry even if `key` is already present (the first one is what [`get`](Self::get)
    /// finds).
    pub fn append(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Status> {
        put_metadata(self.owned(), key, value.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Removes every entry named `key`; whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        let mut kept = Vec::with_capacity(self.as_wire().len());
        for (k, v) in self.view().iter() {
            if k != key.as_bytes() {
                kept.push(k.len() as u8);
                kept.extend_from_slice(k);
                kept.extend_from_slice(&(v.len() as u16).to_be_bytes());
                kept.extend_from_slice(v);
            }
        }
        self.wire = Wire::Owned(kept);
        true
    }

    /// Every `(key, value)` entry in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.view().iter()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.as_wire().is_empty()
    }

    /// Removes every entry, keeping the allocation (of a block of its own).
    pub fn clear(&mut self) {
        match &mut self.wire {
            Wire::Owned(v) => v.clear(),
            Wire::Shared(_) => self.wire = Wire::default(),
        }
    }

    /// The entries in wire form (`[u8 key length][key][u16 value length][value]`…).
    pub fn as_wire(&self) -> &[u8] {
        match &self.wire {
            Wire::Owned(v) => v,
            Wire::Shared(b) => b,
        }
    }

    fn view(&self) -> Metadata<'_> {
        Metadata(self.as_wire())
    }
}

/// Shows keys and value lengths only: values may be credentials.
impl std::fmt::Debug for MetadataMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.iter() {
            m.entry(
                &String::from_utf8_lossy(k),
                &format_args!("<{} bytes>", v.len()),
            );
        }
        m.finish()
    }
}

/// A message with metadata: what a handler returns to answer with response metadata, and what
/// a client gets from [`Call::reply`](super::Call::reply).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply<T> {
    /// The message.
    pub body: T,
    /// Its metadata.
    pub metadata: MetadataMap,
}

impl<T> Reply<T> {
    /// `body` with no metadata.
    pub fn new(body: T) -> Self {
        Reply {
            body,
            metadata: MetadataMap::new(),
        }
    }

    /// Adds a metadata entry (replacing one of the same key). An entry too long for the format
    /// (a key over 255 bytes, a value over 65,535) is a programming mistake: it is dropped with
    /// a warning. Use [`MetadataMap::insert`] on `metadata` to handle it yourself.
    pub fn with_metadata(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        if let Err(e) = self.metadata.insert(key, value) {
            tracing::warn!(key, error = %e, "reply metadata entry dropped");
        }
        self
    }
}
