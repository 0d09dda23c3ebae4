//! The one writer of the config model: applies a source's [`Update`]s to the indexes
//! incrementally — one pod update touches that pod's entries and the services that select
//! it, never a full rebuild — and publishes an `Arc<Model>` snapshot for the many readers
//! after each update that changed it. The first sync arrives one object at a time like any
//! other change; nothing is published until the source says it is complete, so readers
//! never see a half-loaded model. A kind's full list (the first, or a re-list after the
//! watch was lost) removes the objects of that kind it did not name. Objects that fail to
//! convert or validate are kept out (an update to a known object keeps its last good
//! version) and reported, naming the object and the fix; everything else keeps serving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::key_set::KeySet;
use super::labels::{Interner, Labels};
use super::model::{LabelledInfo, Model, Name, PodInfo, ServiceInfo, SliceInfo};
use super::resource::{Kind, Resource, ResourceKey};
use super::{host, validate};
use crate::source::{ObjectKey, ObjectKind, Update};

/// The writer. Readers call [`Store::subscribe`] (or [`Store::model`]) and get snapshots.
pub struct Store {
    model: Model,
    /// Pod names by namespace (writer-only: finds the pods a new selector picks).
    pods_by_namespace: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// Hash of (namespace, label key, value) → services whose selector has that pair.
    selector_index: HashMap<u64, HashSet<Name>>,
    /// Shares the model's repetitive strings (namespaces, label keys and values, service
    /// accounts, nodes, workloads).
    strings: Interner,
    /// Objects refused, each with the reason and fix.
    problems: BTreeMap<ResourceKey, String>,
    /// Kinds being listed, each with the objects (served or refused) its list has not named
    /// yet: what is left when the list completes is gone.
    unlisted: HashMap<Kind, HashSet<ResourceKey>>,
    /// The source's first sync is complete: from then on changes are published.
    synced: bool,
    /// The model or its problems changed since the last publish.
    changed: bool,
    published: watch::Sender<Arc<Model>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

fn pair_hash(namespace: &str, key: &str, value: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one((namespace, key, value))
}

/// The model's key for a source's object key (`None` for kinds the model does not have).
fn resource_key(key: &ObjectKey) -> Option<ResourceKey> {
    let kind = Kind::of(&key.group, &key.kind)?;
    Some(ResourceKey::new(kind, key.namespace.as_deref(), &key.name))
}

fn model_kind(kind: &ObjectKind) -> Option<Kind> {
    Kind::of(&kind.group, &kind.kind)
}

impl Store {
    pub fn new() -> Store {
        let (published, _) = watch::channel(Arc::new(Model::default()));
        Store {
            model: Model::default(),
            pods_by_namespace: HashMap::new(),
            selector_index: HashMap::new(),
            strings: Interner::default(),
            problems: BTreeMap::new(),
            unlisted: HashMap::new(),
            synced: false,
            changed: false,
            published,
        }
    }

    /// The latest snapshot (empty until the source's first sync is complete).
    pub fn model(&self) -> Arc<Model> {
        self.published.borrow().clone()
    }

    /// A receiver that always holds the latest snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Model>> {
        self.published.subscribe()
    }

    /// Whether the source's first sync is complete (and the model published).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Applies updates until the source closes its channel.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Update>) {
        while let Some(update) = updates.recv().await {
            self.apply(update);
        }
    }

    /// Applies one update and publishes the new snapshot (once synced, if it changed).
    pub fn apply(&mut self, update: Update) {
        self.apply_all([update]);
    }

    /// Applies a batch of updates (consumed one at a time) and publishes once at the end:
    /// for a source that has several updates ready at once.
    pub fn apply_all(&mut self, updates: impl IntoIterator<Item = Update>) {
        for update in updates {
            self.apply_unpublished(update);
        }
        if self.synced && self.changed {
            self.changed = false;
            self.model.problems = Arc::new(
                self.problems
                    .iter()
                    .map(|(key, reason)| (key.to_string(), reason.clone()))
                    .collect(),
            );
            self.published.send_replace(Arc::new(self.model.clone()));
        }
    }

    fn apply_unpublished(&mut self, update: Update) {
        match update {
            Update::Upsert(object) => {
                // Kinds the model does not have are not the mesh's business.
                let Some(kind) = Kind::of(object.group(), &object.kind) else {
                    return;
                };
                let key = ResourceKey::new(kind, object.namespace.as_deref(), &object.name);
                self.upsert(key, Resource::from_object(object));
            }
            Update::UpsertJson(object) => {
                let ObjectKey {
                    group,
                    kind,
                    namespace,
                    name,
                } = &object.key;
                let Some(kind) = Kind::of(group, kind) else {
                    return;
                };
                let key = ResourceKey::new(kind, namespace.as_deref(), name);
                let converted =
                    Resource::from_json(kind, namespace.as_deref(), name, object.json.get());
                self.upsert(key, converted);
            }
            Update::Delete(key) => {
                if let Some(key) = resource_key(&key) {
                    self.named_by_list(&key);
                    self.delete(&key);
                }
            }
            Update::Listing(kind) => {
                if let Some(kind) = model_kind(&kind) {
                    let known = self.keys_of(kind);
                    self.unlisted.insert(kind, known);
                }
            }
            Update::Listed(kind) => {
                let gone = model_kind(&kind).and_then(|kind| self.unlisted.remove(&kind));
                for key in gone.into_iter().flatten() {
                    self.delete(&key);
                }
            }
            Update::Synced => {
                if !self.synced {
                    self.synced = true;
                    self.select_all();
                    self.changed = true;
                }
            }
            Update::Problems(problems) => {
                for problem in problems {
                    tracing::warn!(%problem, "config source problem");
                }
            }
        }
    }

    /// Validates and indexes a converted object, or refuses it; either way a list in
    /// progress has named it.
    fn upsert(&mut self, key: ResourceKey, converted: super::resource::Result<Resource>) {
        self.named_by_list(&key);
        let resource = match converted {
            Ok(resource) => resource,
            Err(error) => return self.refuse(key, error.to_string()),
        };
        let errors: Vec<String> = validate::object(&resource)
            .into_iter()
            .filter(|f| f.severity == validate::Severity::Error)
            .map(|f| f.message)
            .collect();
        if !errors.is_empty() {
            let reason = format!("{key}: {}", errors.join("; "));
            return self.refuse(key, reason);
        }
        self.changed |= self.problems.remove(&key).is_some();
        self.changed |= self.insert(resource);
    }

    fn refuse(&mut self, key: ResourceKey, reason: String) {
        tracing::warn!(object = %key, %reason, "config object refused; the last good version (if any) stays");
        self.changed |= self.problems.get(&key) != Some(&reason);
        self.problems.insert(key, reason);
    }

    /// A list in progress has named the object: it stays.
    fn named_by_list(&mut self, key: &ResourceKey) {
        if let Some(unlisted) = self.unlisted.get_mut(&key.kind) {
            unlisted.remove(key);
        }
    }

    /// Every object of a kind the store knows: served, or refused.
    fn keys_of(&self, kind: Kind) -> HashSet<ResourceKey> {
        let named = |name: &Name| ResourceKey::new(kind, Some(&name.namespace), &name.name);
        let mut keys: HashSet<ResourceKey> = match kind {
            Kind::Namespace => self
                .model
                .namespaces
                .iter()
                .map(|(name, _)| ResourceKey::new(kind, None, name))
                .collect(),
            Kind::ServiceAccount => self
                .model
                .service_accounts
                .iter()
                .map(|(n, _)| named(n))
                .collect(),
            Kind::Pod => self.model.pods.iter().map(|(n, _)| named(n)).collect(),
            Kind::Service => self.model.services.iter().map(|(n, _)| named(n)).collect(),
            Kind::EndpointSlice => self.model.slices.iter().map(|(n, _)| named(n)).collect(),
            _ => self
                .model
                .istio
                .iter()
                .map(|(key, _)| key)
                .filter(|key| key.kind == kind)
                .cloned()
                .collect(),
        };
        keys.extend(self.problems.keys().filter(|key| key.kind == kind).cloned());
        keys
    }

    fn delete(&mut self, key: &ResourceKey) {
        self.changed |= self.problems.remove(key).is_some();
        let name = Name::new(&key.namespace, &key.name);
        self.changed |= match key.kind {
            Kind::Namespace => self.model.namespaces.remove(&key.name).is_some(),
            Kind::ServiceAccount => self.model.service_accounts.remove(&name).is_some(),
            Kind::Pod => self.remove_pod(&name),
            Kind::Service => self.remove_service(&name),
            Kind::EndpointSlice => self.remove_slice(&name),
            _ => self.remove_istio(key),
        };
    }

    /// Indexes a valid object; `false` when the model already held it as it is (a re-list
    /// names every object again, and most have not changed).
    fn insert(&mut self, resource: Resource) -> bool {
        match resource {
            Resource::Namespace(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let info = LabelledInfo {
                    labels: interned_labels(ns.metadata.labels.as_ref(), &mut self.strings),
                };
                if self
                    .model
                    .namespaces
                    .get(&name)
                    .is_some_and(|old| **old == info)
                {
                    return false;
                }
                self.model.namespaces.insert(name, Arc::new(info));
            }
            Resource::ServiceAccount(sa) => {
                let name = meta_name(&sa.metadata, &mut self.strings);
                let info = LabelledInfo {
                    labels: interned_labels(sa.metadata.labels.as_ref(), &mut self.strings),
                };
                if self
                    .model
                    .service_accounts
                    .get(&name)
                    .is_some_and(|old| **old == info)
                {
                    return false;
                }
                self.model.service_accounts.insert(name, Arc::new(info));
            }
            Resource::Pod(pod) => {
                let info = pod_info(&pod, &mut self.strings);
                if self
                    .model
                    .pods
                    .get(&info.name)
                    .is_some_and(|old| **old == info)
                {
                    return false;
                }
                self.insert_pod(info);
            }
            Resource::Service(service) => {
                let info = service_info(&service, &mut self.strings);
                if self
                    .model
                    .services
                    .get(&info.name)
                    .is_some_and(|old| **old == info)
                {
                    return false;
                }
                self.insert_service(info);
            }
            Resource::EndpointSlice(slice) => {
                let info = slice_info(&slice, &mut self.strings);
                if self
                    .model
                    .slices
                    .get(&info.name)
                    .is_some_and(|old| **old == info)
                {
                    return false;
                }
                self.insert_slice(info);
            }
            other => {
                if self.model.istio.get(&key_of(&other)) == Some(&other) {
                    return false;
                }
                self.insert_istio(other);
            }
        }
        true
    }

    fn insert_pod(&mut self, pod: PodInfo) {
        let name = pod.name.clone();
        let old = self.model.pods.get(&name).cloned();
        if let Some(old) = &old {
            for ip in &old.ips {
                if self.model.pods_by_ip.get(ip) == Some(&name) {
                    self.model.pods_by_ip.remove(ip);
                }
            }
        }
        // A host-network pod's address is its node's: not the pod's to be found by.
        for ip in pod.ips.iter().filter(|_| !pod.host_network) {
            self.model.pods_by_ip.insert(*ip, name.clone());
        }
        self.pods_by_namespace
            .entry(name.namespace.clone())
            .or_default()
            .insert(name.name.clone());
        if !self.synced {
            // Selections are made once the first sync is complete (`select_all`).
            self.model.pods.insert(name, Arc::new(pod));
            return;
        }
        // Services that might select the pod before or after the change.
        let mut candidates: HashSet<Name> = HashSet::new();
        for labels in old.iter().map(|o| &o.labels).chain([&pod.labels]) {
            for (k, v) in labels.iter() {
                if let Some(services) = self.selector_index.get(&pair_hash(&name.namespace, k, v)) {
                    candidates.extend(services.iter().cloned());
                }
            }
        }
        for service in candidates {
            let Some(info) = self.model.services.get(&service).cloned() else {
                continue;
            };
            let Some(selector) = &info.selector else {
                continue;
            };
            let selected = pod.labels.contains_all(selector.iter());
            self.set_selected(&service, &pod.name.name, selected);
        }
        self.model.pods.insert(name, Arc::new(pod));
    }

    /// The pods each service selects, worked out once when the first sync is complete:
    /// during it services and pods arrive in any order, and a service that scanned its
    /// namespace's pods as it arrived would make 10k services × 500 pods label checks.
    fn select_all(&mut self) {
        let mut selected: HashMap<Name, Vec<Arc<str>>> = HashMap::new();
        for pod in self.model.pods.values() {
            for (k, v) in pod.labels.iter() {
                let hash = pair_hash(&pod.name.namespace, k, v);
                for service in self.selector_index.get(&hash).into_iter().flatten() {
                    let selects = self
                        .model
                        .services
                        .get(service)
                        .and_then(|info| info.selector.as_ref())
                        .is_some_and(|selector| pod.labels.contains_all(selector.iter()));
                    if selects {
                        selected
                            .entry(service.clone())
                            .or_default()
                            .push(pod.name.name.clone());
                    }
                }
            }
        }
        for (service, pods) in selected {
            self.model
                .selected
                .insert(service, Arc::new(KeySet::from(pods)));
        }
    }

    fn set_selected(&mut self, service: &Name, pod: &Arc<str>, selected: bool) {
        let set = self.model.selected.get(service);
        if set.is_some_and(|s| s.contains(pod)) == selected {
            return;
        }
        let set = Arc::make_mut(self.model.selected.get_or_default(service.clone()));
        if selected {
            set.insert(pod.clone());
        } else {
            set.remove(pod);
        }
    }

    fn remove_pod(&mut self, name: &Name) -> bool {
        let Some(old) = self.model.pods.remove(name) else {
            return false;
        };
        for ip in &old.ips {
            if self.model.pods_by_ip.get(ip) == Some(name) {
                self.model.pods_by_ip.remove(ip);
            }
        }
        if let Some(pods) = self.pods_by_namespace.get_mut(&name.namespace) {
            pods.remove(&name.name);
        }
        let mut candidates: HashSet<Name> = HashSet::new();
        for (k, v) in old.labels.iter() {
            if let Some(services) = self.selector_index.get(&pair_hash(&name.namespace, k, v)) {
                candidates.extend(services.iter().cloned());
            }
        }
        for service in candidates {
            self.set_selected(&service, &name.name, false);
        }
        true
    }

    fn insert_service(&mut self, service: ServiceInfo) {
        let name = service.name.clone();
        self.remove_service(&name);
        self.model
            .services_by_host
            .insert(service.hostname.clone(), name.clone());
        for ip in &service.cluster_ips {
            for port in &service.ports {
                self.model
                    .services_by_addr
                    .insert(SocketAddr::new(*ip, port.port), name.clone());
            }
        }
        if let Some(selector) = service.selector.as_ref().filter(|s| !s.is_empty()) {
            for (k, v) in selector.iter() {
                self.selector_index
                    .entry(pair_hash(&name.namespace, k, v))
                    .or_default()
                    .insert(name.clone());
            }
            // Until the first sync is complete, `select_all` does it.
            let pods = if self.synced {
                self.pods_by_namespace.get(&name.namespace)
            } else {
                None
            };
            let selected: KeySet<Arc<str>> = pods
                .into_iter()
                .flatten()
                .filter(|pod| {
                    let pod = Name {
                        namespace: name.namespace.clone(),
                        name: Arc::clone(pod),
                    };
                    self.model
                        .pods
                        .get(&pod)
                        .is_some_and(|p| p.labels.contains_all(selector.iter()))
                })
                .cloned()
                .collect();
            self.model.selected.insert(name.clone(), Arc::new(selected));
        }
        self.model.services.insert(name, Arc::new(service));
    }

    fn remove_service(&mut self, name: &Name) -> bool {
        let Some(old) = self.model.services.remove(name) else {
            return false;
        };
        if self.model.services_by_host.get(&old.hostname) == Some(name) {
            self.model.services_by_host.remove(&old.hostname);
        }
        for ip in &old.cluster_ips {
            for port in &old.ports {
                let addr = SocketAddr::new(*ip, port.port);
                if self.model.services_by_addr.get(&addr) == Some(name) {
                    self.model.services_by_addr.remove(&addr);
                }
            }
        }
        for (k, v) in old.selector.iter().flat_map(Labels::iter) {
            let hash = pair_hash(&name.namespace, k, v);
            if let Some(services) = self.selector_index.get_mut(&hash) {
                services.remove(name);
                if services.is_empty() {
                    self.selector_index.remove(&hash);
                }
            }
        }
        self.model.selected.remove(name);
        true
    }

    fn insert_slice(&mut self, slice: SliceInfo) {
        let name = slice.name.clone();
        self.remove_slice(&name);
        if let Some(service) = &slice.service {
            Arc::make_mut(self.model.slices_by_service.get_or_default(service.clone()))
                .insert(name.name.clone());
        }
        self.model.slices.insert(name, Arc::new(slice));
    }

    fn remove_slice(&mut self, name: &Name) -> bool {
        let Some(old) = self.model.slices.remove(name) else {
            return false;
        };
        if let Some(service) = &old.service
            && let Some(slices) = self.model.slices_by_service.get_mut(service)
        {
            Arc::make_mut(slices).remove(&name.name);
            if slices.is_empty() {
                self.model.slices_by_service.remove(service);
            }
        }
        true
    }

    fn insert_istio(&mut self, resource: Resource) {
        let key = key_of(&resource);
        self.remove_istio(&key);
        for (kind, hostname) in rule_hosts(&resource, &key.namespace) {
            if hostname.starts_with('*') {
                Arc::make_mut(&mut self.model.wildcard_rules).insert((kind, hostname, key.clone()));
            } else {
                Arc::make_mut(self.model.rules_by_host.get_or_default((kind, hostname)))
                    .insert(key.clone());
            }
        }
        if matches!(
            key.kind,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication
        ) {
            Arc::make_mut(
                self.model
                    .policies_by_namespace
                    .get_or_default((key.kind, key.namespace.clone())),
            )
            .insert(key.clone());
        }
        self.model.istio.insert(key, resource);
    }

    fn remove_istio(&mut self, key: &ResourceKey) -> bool {
        let Some(old) = self.model.istio.remove(key) else {
            return false;
        };
        for (kind, hostname) in rule_hosts(&old, &key.namespace) {
            if hostname.starts_with('*') {
                Arc::make_mut(&mut self.model.wildcard_rules).remove(&(
                    kind,
                    hostname,
                    key.clone(),
                ));
            } else if let Some(keys) = self.model.rules_by_host.get_mut(&(kind, hostname.clone())) {
                Arc::make_mut(keys).remove(key);
                if keys.is_empty() {
                    self.model.rules_by_host.remove(&(kind, hostname));
                }
            }
        }
        let policy_key = (key.kind, key.namespace.clone());
        if let Some(keys) = self.model.policies_by_namespace.get_mut(&policy_key) {
            Arc::make_mut(keys).remove(key);
            if keys.is_empty() {
                self.model.policies_by_namespace.remove(&policy_key);
            }
        }
        true
    }
}

/// The key of a typed object (its namespace already defaulted).
pub fn key_of(resource: &Resource) -> ResourceKey {
    let meta = resource.metadata();
    ResourceKey::new(
        resource.kind(),
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// The resolved hosts a VirtualService or DestinationRule is indexed under.
fn rule_hosts(resource: &Resource, namespace: &str) -> Vec<(Kind, String)> {
    match resource {
        Resource::VirtualService(vs) => vs
            .spec
            .hosts
            .iter()
            .map(|h| (Kind::VirtualService, host::resolve(h, namespace)))
            .collect(),
        Resource::DestinationRule(dr) => {
            vec![(
                Kind::DestinationRule,
                host::resolve(&dr.spec.host, namespace),
            )]
        }
        _ => Vec::new(),
    }
}

mod records;

use records::{interned_labels, meta_name, pod_info, service_info, slice_info};

#[cfg(test)]
mod tests;
