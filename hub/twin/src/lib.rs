//! The live digital twin: the one place that changes current state.
//!
//! Every change follows the same path: **validate** against the live model (names, kinds, declared types; a
//! whole batch or nothing), **persist** through the [`Store`] (durable before anyone is told), **apply** to the
//! in-memory tree, then **publish** on the [`Bus`]. Readers get consistent clones of providers and resources.
//! ACT requests are routed to the owner registered for the provider in the [`ActRegistry`].

mod act;
mod pseudonym;
mod retention;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use hub_bus::{Bus, Change};
use hub_model::{
    ADMIN_SERVICE, MetaEntry, ModelError, Name, Provider, ProviderDoc, Resource, ResourcePath, Timestamp, Update,
    ValueType,
};
use hub_store::{Store, StoreError, WriteBatch};
use serde_json::Value;
use tokio::sync::RwLock;

pub use act::{ActError, ActHandler, ActRegistry};
pub use pseudonym::{PREFIX as PSEUDONYM_PREFIX, Pseudonymiser};
pub use retention::{RetentionPolicy, apply_retention};

/// Why the twin refused or failed a change.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// The change breaks a model rule; `index` is the offending update's position in its batch, if any.
    #[error("{}{source}", .index.map(|i| format!("updates[{i}]: ")).unwrap_or_default())]
    Invalid {
        /// Position in the batch.
        index: Option<usize>,
        /// The model rule that was broken.
        source: ModelError,
    },
    /// The provider or resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Nobody owns the action resource (no plugin registered for it).
    #[error("no owner is registered for {0}; ACT needs an adapter that handles this provider")]
    NoOwner(ResourcePath),
    /// The owner of an action failed to carry it out.
    #[error(transparent)]
    Act(#[from] ActError),
    /// The store failed; nothing was applied.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// An identifying value could not be pseudonymised (its period's secret could not be kept); nothing was
    /// stored.
    #[error("the value of {path} identifies people and could not be pseudonymised: {reason}")]
    Pseudonym {
        /// The resource.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The provider mirrors one of a federation peer: only the link that imports it writes it.
    #[error("provider {provider} is imported from the peer {peer} and is read-only here")]
    Imported {
        /// The local name of the provider.
        provider: String,
        /// The peer it is imported from.
        peer: String,
    },
}

/// Counters of the twin.
#[derive(Debug, Default)]
pub struct TwinStats {
    /// Updates accepted and applied.
    pub updates_applied: AtomicU64,
    /// Updates refused by validation.
    pub updates_rejected: AtomicU64,
    /// Updates persisted but not applied because a concurrent writer re-declared the resource in between.
    pub apply_conflicts: AtomicU64,
}

/// A validated batch, ready to persist and apply.
#[derive(Debug, Default)]
pub struct Prepared {
    declarations: Vec<(ResourcePath, Resource)>,
    updates: Vec<Update>,
}

impl Prepared {
    /// How many updates the batch carries (including hub-generated ones such as a new provider's status).
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }
}

/// The metadata of one provider's resources that have any, by service and resource.
type Metadata = Arc<BTreeMap<String, MetaEntry>>;
struct ProviderMetadata(BTreeMap<String, BTreeMap<String, Metadata>>);

impl ProviderMetadata {
    fn of(provider: &Provider) -> Option<Arc<ProviderMetadata>> {
        let mut all: BTreeMap<String, BTreeMap<String, Metadata>> = BTreeMap::new();
        for (service, s) in &provider.services {
            for (resource, r) in &s.resources {
                if !r.metadata.is_empty() {
                    all.entry(service.to_string())
                        .or_default()
                        .insert(resource.to_string(), Arc::new(r.metadata.clone()));
                }
            }
        }
        (!all.is_empty()).then(|| Arc::new(ProviderMetadata(all)))
    }
}

/// The live model.
pub struct Twin {
    providers: DashMap<Name, Provider>,
    /// Every resource's metadata, by provider, kept apart from `providers` so that it can be read while a
    /// provider is locked (the policy reads labels from it while listings walk the providers).
    metadata: DashMap<Name, Arc<ProviderMetadata>>,
    store: Arc<dyn Store>,
    bus: Bus,
    act: ActRegistry,
    // Data writes hold it shared; model changes (PUT model, delete) hold it exclusively, so a deletion never
    // interleaves with a batch that would resurrect the provider in storage.
    model_gate: RwLock<()>,
    stats: TwinStats,
    /// Name prefixes of providers imported from federation peers, with the peer's name.
    imported: std::sync::OnceLock<Vec<(String, String)>>,
    /// Replaces the values of identifier resources by pseudonyms before anything else sees them.
    pseudonyms: std::sync::OnceLock<Arc<Pseudonymiser>>,
}

impl Twin {
    /// Rebuilds the twin from the store.
    pub async fn open(store: Arc<dyn Store>, bus: Bus) -> Result<Twin, TwinError> {
        let providers = DashMap::new();
        let metadata = DashMap::new();
        for p in store.load().await? {
            if let Some(m) = ProviderMetadata::of(&p) {
                metadata.insert(p.name.clone(), m);
            }
            providers.insert(p.name.clone(), p);
        }
        Ok(Twin {
            providers,
            metadata,
            store,
            bus,
            act: ActRegistry::default(),
            model_gate: RwLock::new(()),
            stats: TwinStats::default(),
            imported: std::sync::OnceLock::new(),
            pseudonyms: std::sync::OnceLock::new(),
        })
    }

    /// The bus this twin publishes on.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The store behind this twin.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Where ACT requests are routed.
    pub fn act_registry(&self) -> &ActRegistry {
        &self.act
    }

    /// The twin's counters.
    pub fn stats(&self) -> &TwinStats {
        &self.stats
    }

    /// Makes the providers whose names start with one of these prefixes read-only: they mirror a federation
    /// peer's (prefix, peer name), and only the link writes them, through the `*_imported` methods. Set once at
    /// start; later calls are ignored.
    pub fn set_imported_prefixes(&self, prefixes: Vec<(String, String)>) {
        let _ = self.imported.set(prefixes);
    }

    /// Pseudonymises the values of the resources `pseudonyms` covers in every batch and SET from now on, before
    /// they are validated, stored, applied or published. Set once at start; later calls are ignored.
    pub fn set_pseudonymiser(&self, pseudonyms: Arc<Pseudonymiser>) {
        let _ = self.pseudonyms.set(pseudonyms);
    }

    /// Replaces identifying values by their pseudonyms, in place.
    fn pseudonymise(&self, updates: &mut [Update]) -> Result<(), TwinError> {
        if self.pseudonyms.get().is_some() {
            for u in updates.iter_mut() {
                self.pseudonymise_value(&u.path, &mut u.value)?;
            }
        }
        Ok(())
    }

    fn pseudonymise_value(&self, path: &ResourcePath, value: &mut Value) -> Result<(), TwinError> {
        if let Some(pseudonyms) = self.pseudonyms.get().filter(|p| p.covers(path)) {
            *value = pseudonyms
                .pseudonym(value, Timestamp::now())
                .map_err(|e| TwinError::Pseudonym { path: path.to_string(), reason: e.to_string() })?;
        }
        Ok(())
    }

    /// The peer a provider is imported from, if it is.
    pub fn imported_from(&self, provider: &str) -> Option<&str> {
        self.imported.get()?.iter().find(|(prefix, _)| provider.starts_with(prefix.as_str())).map(|(_, p)| p.as_str())
    }

    fn refuse_imported(&self, provider: &Name) -> Result<(), TwinError> {
        match self.imported_from(provider.as_str()) {
            Some(peer) => Err(TwinError::Imported { provider: provider.to_string(), peer: peer.to_owned() }),
            None => Ok(()),
        }
    }

    /// Validates a batch of data updates against the live model. Either every update is valid, or the error
    /// names the first invalid one and nothing changes. Resources seen for the first time are declared as
    /// sensors of the inferred type; providers seen for the first time get `admin/status = "online"`.
    ///
    /// Values of identifier resources are replaced by their pseudonyms first (see [`Pseudonymiser`]).
    pub fn prepare(&self, mut updates: Vec<Update>) -> Result<Prepared, TwinError> {
        self.pseudonymise(&mut updates)?;
        if self.imported.get().is_some() {
            for u in &updates {
                self.refuse_imported(&u.path.provider)?;
            }
        }
        self.prepare_any(updates)
    }

    fn prepare_any(&self, updates: Vec<Update>) -> Result<Prepared, TwinError> {
        let mut declared: HashMap<ResourcePath, ValueType> = HashMap::new();
        let mut new_providers: Vec<(Name, Timestamp)> = Vec::new();
        let mut prepared = Prepared { declarations: Vec::new(), updates: Vec::with_capacity(updates.len()) };
        for (index, u) in updates.iter().enumerate() {
            let invalid = |source| {
                self.stats.updates_rejected.fetch_add(updates.len() as u64, Ordering::Relaxed);
                TwinError::Invalid { index: Some(index), source }
            };
            if let Some(ty) = declared.get(&u.path) {
                if !ty.accepts(&u.value) {
                    return Err(invalid(ModelError::TypeMismatch {
                        path: u.path.to_string(),
                        expected: *ty,
                        got: type_name(&u.value),
                    }));
                }
                continue;
            }
            let created = match self.providers.get(u.path.provider.as_str()) {
                Some(p) => p.check_update(&u.path, &u.value).map_err(invalid)?,
                None => {
                    if !new_providers.iter().any(|(n, _)| *n == u.path.provider) {
                        new_providers.push((u.path.provider.clone(), u.timestamp));
                    }
                    Provider::new(u.path.provider.clone()).check_update(&u.path, &u.value).map_err(invalid)?
                }
            };
            if let Some(resource) = created {
                declared.insert(u.path.clone(), resource.value_type);
                prepared.declarations.push((u.path.clone(), resource));
            }
        }
        for (name, at) in new_providers {
            prepared.updates.push(status_online(name, at));
        }
        prepared.updates.extend(updates);
        Ok(prepared)
    }

    /// Validates, persists (durably), applies and publishes a batch of data updates. Returns how many
    /// updates the caller sent that are now durable.
    pub async fn ingest(&self, updates: Vec<Update>) -> Result<usize, TwinError> {
        self.ingest_with_records(updates, Vec::new()).await
    }

    /// [`Twin::ingest`], committing `records` in the same transaction as the updates (a plugin's state after the
    /// call that produced them): both or neither are stored. With no updates nothing is written.
    pub async fn ingest_with_records(
        &self,
        updates: Vec<Update>,
        records: Vec<hub_store::RecordWrite>,
    ) -> Result<usize, TwinError> {
        let sent = updates.len();
        if sent == 0 {
            return Ok(0);
        }
        self.commit(updates, records, true).await?;
        Ok(sent)
    }

    /// [`Twin::ingest`] for the federation link that imports the providers: the read-only rule does not apply.
    pub async fn ingest_imported(&self, updates: Vec<Update>) -> Result<usize, TwinError> {
        let sent = updates.len();
        if sent == 0 {
            return Ok(0);
        }
        self.commit(updates, Vec::new(), false).await?;
        Ok(sent)
    }

    async fn commit(
        &self,
        updates: Vec<Update>,
        records: Vec<hub_store::RecordWrite>,
        refuse_imported: bool,
    ) -> Result<(), TwinError> {
        let _gate = self.model_gate.read().await;
        let prepared = if refuse_imported { self.prepare(updates)? } else { self.prepare_any(updates)? };
        let updates: Arc<[Update]> = prepared.updates.into();
        self.store
            .append(WriteBatch { declarations: prepared.declarations, updates: updates.clone(), records })
            .await?;
        self.apply_and_publish(updates);
        Ok(())
    }

    /// Applies an already validated batch to memory and publishes it, without persisting it. This is the
    /// in-memory half of [`Twin::ingest`], public for benchmarks and for sources whose data is durable
    /// elsewhere.
    pub fn apply(&self, prepared: Prepared) -> u64 {
        self.apply_and_publish(prepared.updates.into())
    }

    fn apply_and_publish(&self, updates: Arc<[Update]>) -> u64 {
        let mut applied = 0u64;
        let mut i = 0;
        while i < updates.len() {
            // Consecutive updates of one provider are applied under one lock.
            let name = &updates[i].path.provider;
            let mut entry = self.providers.entry(name.clone()).or_insert_with(|| Provider::new(name.clone()));
            while i < updates.len() && updates[i].path.provider == *name {
                if entry.apply(&updates[i]) {
                    applied += 1;
                } else {
                    self.stats.apply_conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(path = %updates[i].path, "update persisted but not applied: the resource was re-declared concurrently");
                }
                i += 1;
            }
        }
        self.stats.updates_applied.fetch_add(applied, Ordering::Relaxed);
        self.bus.publish(Change::Updates(updates))
    }

    /// Creates or updates a provider from a model document; returns the resulting provider.
    ///
    /// Values in the document of identifier resources are replaced by their pseudonyms first.
    pub async fn put_provider(&self, name: Name, doc: &ProviderDoc) -> Result<Provider, TwinError> {
        self.refuse_imported(&name)?;
        if self.pseudonyms.get().is_none() {
            return self.put_provider_imported(name, doc).await;
        }
        let mut doc = doc.clone();
        for (service, sdoc) in &mut doc.services {
            for (resource, rdoc) in &mut sdoc.resources {
                if let Some(value) = rdoc.value.as_mut() {
                    let path = ResourcePath::new(name.clone(), service.clone(), resource.clone());
                    self.pseudonymise_value(&path, value)?;
                }
            }
        }
        self.put_provider_imported(name, &doc).await
    }

    /// [`Twin::put_provider`] for the federation link that imports the provider.
    pub async fn put_provider_imported(&self, name: Name, doc: &ProviderDoc) -> Result<Provider, TwinError> {
        let _gate = self.model_gate.write().await;
        let now = Timestamp::now();
        let existed = self.providers.get(name.as_str()).map(|p| p.clone());
        let mut next = existed.clone().unwrap_or_else(|| Provider::new(name.clone()));
        let updates = next.merge_doc(doc, now).map_err(|source| TwinError::Invalid { index: None, source })?;
        let declarations: Vec<(ResourcePath, Resource)> = doc
            .services
            .iter()
            .flat_map(|(s, sdoc)| sdoc.resources.keys().map(move |r| (s.clone(), r.clone())))
            .filter_map(|(s, r)| {
                let resource = next.resource(s.as_str(), r.as_str())?.clone();
                Some((ResourcePath::new(name.clone(), s, r), resource))
            })
            .collect();
        let updates: Arc<[Update]> = updates.into();
        self.store.append(WriteBatch { declarations, updates: updates.clone(), records: Vec::new() }).await?;
        match ProviderMetadata::of(&next) {
            Some(m) => self.metadata.insert(name.clone(), m),
            None => self.metadata.remove(name.as_str()).map(|(_, m)| m),
        };
        self.providers.insert(name.clone(), next.clone());
        self.bus.publish(Change::ModelChanged(name));
        if !updates.is_empty() {
            self.bus.publish(Change::Updates(updates));
        }
        Ok(next)
    }

    /// A client SET on a `state` or `property` resource.
    pub async fn set(&self, path: ResourcePath, mut value: Value) -> Result<Update, TwinError> {
        self.refuse_imported(&path.provider)?;
        self.pseudonymise_value(&path, &mut value)?;
        let _gate = self.model_gate.read().await;
        {
            let p = self
                .providers
                .get(path.provider.as_str())
                .ok_or_else(|| TwinError::NotFound(format!("provider {}", path.provider)))?;
            p.check_set(&path, &value).map_err(|source| TwinError::Invalid { index: None, source })?;
        }
        let update = Update { path, value, timestamp: Timestamp::now() };
        let updates: Arc<[Update]> = Arc::from(vec![update.clone()]);
        self.store
            .append(WriteBatch { declarations: Vec::new(), updates: updates.clone(), records: Vec::new() })
            .await?;
        self.apply_and_publish(updates);
        Ok(update)
    }

    /// ACT: checks the parameters against the action's declaration and hands the request to the provider's
    /// registered owner.
    pub async fn act(&self, path: ResourcePath, params: serde_json::Map<String, Value>) -> Result<Value, TwinError> {
        {
            let p = self
                .providers
                .get(path.provider.as_str())
                .ok_or_else(|| TwinError::NotFound(format!("provider {}", path.provider)))?;
            p.check_act(&path, &params).map_err(|source| match source {
                ModelError::NotFound(what) => TwinError::NotFound(what),
                source => TwinError::Invalid { index: None, source },
            })?;
        }
        let handler = self.act.owner(&path).ok_or_else(|| TwinError::NoOwner(path.clone()))?;
        Ok(handler.act(&path, params).await?)
    }

    /// Deletes a provider with its history. Returns whether it existed.
    pub async fn delete_provider(&self, name: &Name) -> Result<bool, TwinError> {
        let _gate = self.model_gate.write().await;
        let stored = self.store.delete_provider(name).await?;
        let live = self.providers.remove(name.as_str()).is_some();
        self.metadata.remove(name.as_str());
        if stored || live {
            self.bus.publish(Change::ProviderDeleted(name.clone()));
        }
        Ok(stored || live)
    }

    /// A copy of one provider.
    pub fn provider(&self, name: &str) -> Option<Provider> {
        self.providers.get(name).map(|p| p.clone())
    }

    /// A copy of one resource.
    pub fn resource(&self, path: &ResourcePath) -> Option<Resource> {
        self.providers.get(path.provider.as_str())?.resource(path.service.as_str(), path.resource.as_str()).cloned()
    }

    /// The metadata of one resource. Unlike the other readers, safe to call while a closure given to
    /// [`filter_map_providers`](Self::filter_map_providers) or [`any_resource`](Self::any_resource) runs.
    pub fn resource_metadata(&self, provider: &str, service: &str, resource: &str) -> Option<Metadata> {
        self.metadata.get(provider)?.0.get(service)?.get(resource).cloned()
    }

    /// Copies of every provider `keep` accepts, sorted by name. `keep` sees each provider under its shard's
    /// read lock: keep it cheap.
    pub fn providers(&self, mut keep: impl FnMut(&Provider) -> bool) -> Vec<Provider> {
        self.filter_map_providers(|p| keep(p).then(|| p.clone()))
    }

    /// `f` applied to every provider under its shard's read lock; the `Some` results, in provider-name order.
    pub fn filter_map_providers<T>(&self, mut f: impl FnMut(&Provider) -> Option<T>) -> Vec<T> {
        let mut out: Vec<(Name, T)> =
            self.providers.iter().filter_map(|p| f(p.value()).map(|t| (p.key().clone(), t))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, t)| t).collect()
    }

    /// How many providers and resources the twin holds.
    pub fn counts(&self) -> (usize, usize) {
        let providers = self.providers.len();
        let resources =
            self.providers.iter().map(|p| p.services.values().map(|s| s.resources.len()).sum::<usize>()).sum();
        (providers, resources)
    }

    /// Whether `pred` holds for some resource; stops at the first that does. Sees paths under shard read locks.
    pub fn any_resource(&self, mut pred: impl FnMut(&ResourcePath) -> bool) -> bool {
        self.providers.iter().any(|p| p.resources().any(|(path, _)| pred(&path)))
    }

    /// Every resource path (outside `admin`), for retention and similar sweeps.
    pub fn resource_paths(&self) -> Vec<ResourcePath> {
        let mut out = Vec::new();
        for p in self.providers.iter() {
            out.extend(p.resources().filter(|(path, _)| path.service.as_str() != ADMIN_SERVICE).map(|(path, _)| path));
        }
        out
    }
}

fn status_online(provider: Name, at: Timestamp) -> Update {
    let path = ResourcePath::parse_parts(provider.as_str(), ADMIN_SERVICE, "status")
        .unwrap_or_else(|_| unreachable!("admin/status is a valid path under a valid provider"));
    Update { path, value: Value::String("online".into()), timestamp: at }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
