//! Instances and where they come from. An [`Instance`] is one server a client may call: its
//! endpoint plus what balancers and routing look at (weight, group, version, tags). An
//! [`InstanceSource`] yields the current set as a versioned [`Snapshot`] and every later one: a
//! fixed list ([`StaticInstances`]), a list the program changes ([`InstanceList`]), or a
//! registry watch.

use crate::session::Endpoint;
use crate::Error;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// One server instance: where it is and what it is.
///
/// ```
/// use qsocket::rpc::Instance;
/// let i = Instance::parse("tcp://127.0.0.1:7000")?
///     .weight(3)
///     .group("blue")
///     .version("1.2")
///     .tag("zone", "a");
/// assert_eq!(i.weight_value(), 3);
/// assert_eq!(i.tags().get("zone").map(String::as_str), Some("a"));
/// # Ok::<(), qsocket::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    endpoint: Endpoint,
    weight: u32,
    group: String,
    version: String,
    tags: BTreeMap<String, String>,
}

/// The default weight of an instance.
pub const DEFAULT_WEIGHT: u32 = 100;

impl Instance {
    /// An instance at `endpoint` with weight [`DEFAULT_WEIGHT`] and no group, version or tags.
    pub fn new(endpoint: Endpoint) -> Self {
        Instance {
            endpoint,
            weight: DEFAULT_WEIGHT,
            group: String::new(),
            version: String::new(),
            tags: BTreeMap::new(),
        }
    }

    /// An instance at the endpoint URL `url` (`tcp://`, `udp://`, `ws://…/path`, …).
    pub fn parse(url: &str) -> Result<Self, Error> {
        Endpoint::parse(url).map(Instance::new)
    }

    /// Sets the weight (weighted balancers; 0 is treated as 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Where the instance is; also its identity within a set.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Its weight (at least 1).
    pub fn weight_value(&self) -> u32 {
        self.weight.max(1)
    }

    /// Its group ("" when none).
    pub fn group_name(&self) -> &str {
        &self.group
    }

    /// Its version ("" when none).
    pub fn version_name(&self) -> &str {
        &self.version
    }

    /// Its tags.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }
}

impl From<Endpoint> for Instance {
    fn from(e: Endpoint) -> Self {
        Instance::new(e)
    }
}

/// The instances of a source at one moment, with a version that grows with every change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    version: u64,
    instances: Arc<[Instance]>,
}

impl Snapshot {
    /// A snapshot of `instances` at `version`. Instances with the same endpoint are one
    /// instance (the last one wins).
    pub fn new(version: u64, instances: impl IntoIterator<Item = Instance>) -> Self {
        let mut list: Vec<Instance> = Vec::new();
        for i in instances {
            match list.iter_mut().find(|x| x.endpoint == i.endpoint) {
                Some(x) => *x = i,
                None => list.push(i),
            }
        }
        Snapshot {
            version,
            instances: list.into(),
        }
    }

    /// The version: a later snapshot of the same source has a larger one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The instances.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }
}

/// Where a client's instances come from. A source hands out a [`watch`] receiver: its value is
/// always the latest snapshot, and a change is never missed (a reader that was busy sees the
/// newest set, with its version, when it looks again).
pub trait InstanceSource: Send + Sync + 'static {
    /// A receiver of the current snapshot and every later one.
    fn subscribe(&self) -> watch::Receiver<Snapshot>;
}

/// A fixed set of instances.
#[derive(Debug, Clone)]
pub struct StaticInstances {
    tx: Arc<watch::Sender<Snapshot>>,
}

impl StaticInstances {
    /// A source that always yields `instances`.
    pub fn new(instances: impl IntoIterator<Item = Instance>) -> Self {
        StaticInstances {
            tx: Arc::new(watch::Sender::new(Snapshot::new(1, instances))),
        }
    }
}

impl InstanceSource for StaticInstances {
    fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }
}

/// A set of instances the program changes while clients use it (a registry watch feeds one).
/// Cheap to clone: clones share the set.
///
/// ```
/// use qsocket::rpc::{Instance, InstanceList};
/// let list = InstanceList::new([Instance::parse("tcp://127.0.0.1:7000")?]);
/// list.insert(Instance::parse("tcp://127.0.0.1:7001")?);
/// list.remove(&"tcp://127.0.0.1:7000".parse()?);
/// let now = list.snapshot();
/// assert_eq!(now.instances().len(), 1);
/// assert_eq!(now.version(), 3);
/// # Ok::<(), qsocket::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct InstanceList {
    tx: Arc<watch::Sender<Snapshot>>,
}

impl Default for InstanceList {
    fn default() -> Self {
        InstanceList::new([])
    }
}

impl InstanceList {
    /// A list holding `instances` (version 1).
    pub fn new(instances: impl IntoIterator<Item = Instance>) -> Self {
        InstanceList {
            tx: Arc::new(watch::Sender::new(Snapshot::new(1, instances))),
        }
    }

    /// Replaces the whole set.
    pub fn set(&self, instances: impl IntoIterator<Item = Instance>) {
        let instances: Vec<Instance> = instances.into_iter().collect();
        self.tx
            .send_modify(|s| *s = Snapshot::new(s.version + 1, instances));
    }

    /// Adds an instance, or replaces the one with the same endpoint.
    pub fn insert(&self, instance: Instance) {
        self.tx.send_modify(|s| {
            let list = s.instances.iter().cloned().chain([instance]);
            *s = Snapshot::new(s.version + 1, list);
        });
    }

    /// Removes the instance at `endpoint`; whether there was one.
    pub fn remove(&self, endpoint: &Endpoint) -> bool {
        self.tx.send_if_modified(|s| {
            if !s.instances.iter().any(|i| &i.endpoint == endpoint) {
                return false;
            }
            let list = s
                .instances
                .iter()
                .filter(|i| &i.endpoint != endpoint)
                .cloned();
            *s = Snapshot::new(s.version + 1, list.collect::<Vec<_>>());
            true
        })
    }

    /// The current set.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }
}

impl InstanceSource for InstanceList {
    fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }
}
