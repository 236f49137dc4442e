use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    GeoPoint, ModelError, Name, ResourceKind, ResourcePath, Timestamp, Update, ValueType, value::json_type_name,
};

/// The name of the service every provider has.
pub const ADMIN_SERVICE: &str = "admin";

/// The resources of the `admin` service, with their fixed kinds and types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminResource {
    /// A human-friendly name (`property`, string).
    FriendlyName,
    /// Where the provider is, as a GeoJSON point (`property`, object).
    Location,
    /// The device model (`property`, string).
    Model,
    /// `online` or `offline` (`sensor`, string), set by the hub and its transports.
    Status,
    /// When the provider last sent data (`sensor`, string, RFC 3339); maintained by the hub.
    LastSeen,
}

impl AdminResource {
    /// All admin resources, in document order.
    pub const ALL: [AdminResource; 5] = [
        AdminResource::FriendlyName,
        AdminResource::Location,
        AdminResource::Model,
        AdminResource::Status,
        AdminResource::LastSeen,
    ];

    /// The resource name inside the `admin` service.
    pub fn name(self) -> &'static str {
        match self {
            AdminResource::FriendlyName => "friendly_name",
            AdminResource::Location => "location",
            AdminResource::Model => "model",
            AdminResource::Status => "status",
            AdminResource::LastSeen => "last_seen",
        }
    }

    fn kind(self) -> ResourceKind {
        match self {
            AdminResource::Status | AdminResource::LastSeen => ResourceKind::Sensor,
            _ => ResourceKind::Property,
        }
    }

    fn value_type(self) -> ValueType {
        match self {
            AdminResource::Location => ValueType::Object,
            _ => ValueType::String,
        }
    }

    fn by_name(name: &str) -> Option<AdminResource> {
        AdminResource::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A metadata entry: a value with the time it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaEntry {
    /// The metadata value.
    pub value: Value,
    /// When it was set.
    pub timestamp: Timestamp,
}

/// One resource of the live model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    /// What the resource is for.
    pub kind: ResourceKind,
    /// The declared (or inferred) value type, enforced on every write.
    #[serde(rename = "type")]
    pub value_type: ValueType,
    /// The unit of the value (`dB`, `Cel`, ...), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Arc<str>>,
    /// The current value; `null` until the first one arrives.
    pub value: Option<Value>,
    /// When the current value was measured.
    pub timestamp: Option<Timestamp>,
    /// Metadata entries, each with its own timestamp.
    pub metadata: BTreeMap<String, MetaEntry>,
    /// For actions: the parameters ACT accepts, with their types.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<Name, ValueType>,
}

impl Resource {
    /// A resource with no value yet.
    pub fn new(kind: ResourceKind, value_type: ValueType) -> Self {
        Resource {
            kind,
            value_type,
            unit: None,
            value: None,
            timestamp: None,
            metadata: BTreeMap::new(),
            parameters: BTreeMap::new(),
        }
    }
}

/// A group of resources inside a provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Service {
    /// The resources, by name.
    pub resources: BTreeMap<Name, Resource>,
}

/// A device or thing: the root of the twin tree. Always has an `admin` service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provider {
    /// The provider's name.
    pub name: Name,
    /// Its services, by name; `admin` is always present.
    pub services: BTreeMap<Name, Service>,
}

fn admin_name() -> Name {
    Name::new(ADMIN_SERVICE).unwrap_or_else(|_| unreachable!("'admin' is a valid name"))
}

fn static_name(s: &'static str) -> Name {
    Name::new(s).unwrap_or_else(|_| unreachable!("built-in names are valid"))
}

impl Provider {
    /// A provider with only its `admin` service, all values empty.
    pub fn new(name: Name) -> Self {
        let mut admin = Service::default();
        for a in AdminResource::ALL {
            admin.resources.insert(static_name(a.name()), Resource::new(a.kind(), a.value_type()));
        }
        let mut services = BTreeMap::new();
        services.insert(admin_name(), admin);
        Provider { name, services }
    }

    /// The resource at `service/resource`, if it exists.
    pub fn resource(&self, service: &str, resource: &str) -> Option<&Resource> {
        self.services.get(service)?.resources.get(resource)
    }

    /// When this provider last sent a value (the newest value timestamp outside `admin`).
    pub fn last_seen(&self) -> Option<Timestamp> {
        self.resource(ADMIN_SERVICE, AdminResource::LastSeen.name()).and_then(|r| r.timestamp)
    }

    /// The admin location, when set and valid.
    pub fn location(&self) -> Option<GeoPoint> {
        let v = self.resource(ADMIN_SERVICE, AdminResource::Location.name())?.value.as_ref()?;
        GeoPoint::from_geojson(v).ok()
    }

    /// Checks that `value` may be written to `path` by a data update (a sensor reading or a state report), and
    /// says what a first sight of the resource would create. Nothing changes.
    pub fn check_update(&self, path: &ResourcePath, value: &Value) -> Result<Option<Resource>, ModelError> {
        match self.resource(path.service.as_str(), path.resource.as_str()) {
            Some(existing) => {
                if path.service.as_str() == ADMIN_SERVICE && path.resource.as_str() == AdminResource::LastSeen.name() {
                    return Err(ModelError::WrongKind {
                        path: path.to_string(),
                        kind: ResourceKind::Sensor,
                        operation: "written (the hub maintains it)",
                    });
                }
                if existing.kind == ResourceKind::Action {
                    return Err(ModelError::WrongKind {
                        path: path.to_string(),
                        kind: ResourceKind::Action,
                        operation: "updated with data (use ACT)",
                    });
                }
                check_value(path, existing.value_type, value)?;
                Ok(None)
            }
            None => Ok(Some(first_sight(path, value)?)),
        }
    }

    /// Checks a client SET: only `state` and `property` resources that already exist accept it.
    pub fn check_set(&self, path: &ResourcePath, value: &Value) -> Result<(), ModelError> {
        let existing = self
            .resource(path.service.as_str(), path.resource.as_str())
            .ok_or_else(|| ModelError::NotFound(format!("resource {path}")))?;
        if !existing.kind.is_settable() {
            return Err(ModelError::WrongKind { path: path.to_string(), kind: existing.kind, operation: "SET" });
        }
        check_value(path, existing.value_type, value)
    }

    /// Applies an update already checked with [`Provider::check_update`] or [`Provider::check_set`].
    ///
    /// Returns `false` and changes nothing when the resource's type no longer accepts the value (a concurrent
    /// writer declared it differently in between). An older timestamp than the current value's updates
    /// nothing either: the newest value wins, whatever the arrival order.
    pub fn apply(&mut self, update: &Update) -> bool {
        let path = &update.path;
        let service = self.services.entry(path.service.clone()).or_default();
        let resource = match service.resources.get_mut(path.resource.as_str()) {
            Some(r) => r,
            None => match first_sight(path, &update.value) {
                Ok(r) => service.resources.entry(path.resource.clone()).or_insert(r),
                Err(_) => return false,
            },
        };
        if !resource.value_type.accepts(&update.value) {
            return false;
        }
        if resource.timestamp.is_none_or(|t| t <= update.timestamp) {
            resource.value = Some(update.value.clone());
            resource.timestamp = Some(update.timestamp);
        }
        if path.service.as_str() != ADMIN_SERVICE {
            self.touch(update.timestamp);
        }
        true
    }

    fn touch(&mut self, at: Timestamp) {
        let Some(admin) = self.services.get_mut(ADMIN_SERVICE) else { return };
        let Some(last_seen) = admin.resources.get_mut(AdminResource::LastSeen.name()) else { return };
        if last_seen.timestamp.is_none_or(|t| t < at) {
            last_seen.value = Some(Value::String(at.to_rfc3339()));
            last_seen.timestamp = Some(at);
        }
    }

    /// Merges a model document into this provider: declares services and resources, sets units, metadata,
    /// parameters and initial values. Validates the whole document first; on error nothing changes.
    /// Returns the value updates the document carried, for history.
    pub fn merge_doc(&mut self, doc: &ProviderDoc, now: Timestamp) -> Result<Vec<Update>, ModelError> {
        let mut next = self.clone();
        let mut updates = Vec::new();
        for (sname, sdoc) in &doc.services {
            for (rname, rdoc) in &sdoc.resources {
                let path = ResourcePath::new(self.name.clone(), sname.clone(), rname.clone());
                let service = next.services.entry(sname.clone()).or_default();
                let resource = match service.resources.get_mut(rname.as_str()) {
                    Some(existing) => {
                        redeclare(&path, existing, rdoc)?;
                        existing
                    }
                    None => {
                        let value_type = match (rdoc.value_type, &rdoc.value) {
                            (Some(t), _) => t,
                            (None, Some(v)) => ValueType::infer(v).ok_or_else(|| ModelError::InvalidValue {
                                path: path.to_string(),
                                reason: "a new resource needs a \"type\" or a non-null \"value\"".into(),
                            })?,
                            (None, None) => {
                                return Err(ModelError::InvalidValue {
                                    path: path.to_string(),
                                    reason: "a new resource needs a \"type\" or a non-null \"value\"".into(),
                                });
                            }
                        };
                        let kind = rdoc.kind.unwrap_or(ResourceKind::Sensor);
                        service.resources.entry(rname.clone()).or_insert(Resource::new(kind, value_type))
                    }
                };
                if let Some(unit) = &rdoc.unit {
                    resource.unit = Some(Arc::from(unit.as_str()));
                }
                for (k, v) in &rdoc.metadata {
                    resource.metadata.insert(k.clone(), MetaEntry { value: v.clone(), timestamp: now });
                }
                if !rdoc.parameters.is_empty() {
                    if resource.kind != ResourceKind::Action {
                        return Err(ModelError::WrongKind {
                            path: path.to_string(),
                            kind: resource.kind,
                            operation: "given parameters (only actions take them)",
                        });
                    }
                    resource.parameters = rdoc.parameters.clone();
                }
                if let Some(v) = &rdoc.value {
                    if resource.kind == ResourceKind::Action {
                        return Err(ModelError::WrongKind {
                            path: path.to_string(),
                            kind: ResourceKind::Action,
                            operation: "given a value",
                        });
                    }
                    if path.service.as_str() == ADMIN_SERVICE
                        && path.resource.as_str() == AdminResource::LastSeen.name()
                    {
                        return Err(ModelError::WrongKind {
                            path: path.to_string(),
                            kind: ResourceKind::Sensor,
                            operation: "written (the hub maintains it)",
                        });
                    }
                    check_value(&path, resource.value_type, v)?;
                    let timestamp = rdoc.timestamp.unwrap_or(now);
                    updates.push(Update { path, value: v.clone(), timestamp });
                }
            }
        }
        for u in &updates {
            next.apply(u);
        }
        *self = next;
        Ok(updates)
    }

    /// Checks ACT parameters against the action's declared parameters: every declared parameter must be
    /// present with its type, and no other parameter is accepted.
    pub fn check_act(&self, path: &ResourcePath, params: &serde_json::Map<String, Value>) -> Result<(), ModelError> {
        let r = self
            .resource(path.service.as_str(), path.resource.as_str())
            .ok_or_else(|| ModelError::NotFound(format!("resource {path}")))?;
        if r.kind != ResourceKind::Action {
            return Err(ModelError::WrongKind { path: path.to_string(), kind: r.kind, operation: "ACTed on" });
        }
        for (name, ty) in &r.parameters {
            match params.get(name.as_str()) {
                None => {
                    return Err(ModelError::InvalidValue {
                        path: path.to_string(),
                        reason: format!("missing parameter {name:?} of type {ty}"),
                    });
                }
                Some(v) if !ty.accepts(v) => {
                    return Err(ModelError::InvalidValue {
                        path: path.to_string(),
                        reason: format!("parameter {name:?} expects {ty}, got {}", json_type_name(v)),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = params.keys().find(|k| !r.parameters.contains_key(k.as_str())) {
            return Err(ModelError::InvalidValue {
                path: path.to_string(),
                reason: format!("unknown parameter {extra:?}"),
            });
        }
        Ok(())
    }

    /// Every resource with its path, in order.
    pub fn resources(&self) -> impl Iterator<Item = (ResourcePath, &Resource)> {
        self.services.iter().flat_map(move |(s, svc)| {
            svc.resources.iter().map(move |(r, res)| (ResourcePath::new(self.name.clone(), s.clone(), r.clone()), res))
        })
    }
}

fn redeclare(path: &ResourcePath, existing: &Resource, doc: &ResourceDoc) -> Result<(), ModelError> {
    let kind_differs = doc.kind.is_some_and(|k| k != existing.kind);
    let type_differs = doc.value_type.is_some_and(|t| t != existing.value_type);
    if kind_differs || type_differs {
        return Err(ModelError::Redeclared {
            path: path.to_string(),
            existing: format!("{} {}", existing.kind, existing.value_type),
            requested: format!(
                "{} {}",
                doc.kind.unwrap_or(existing.kind),
                doc.value_type.unwrap_or(existing.value_type)
            ),
        });
    }
    Ok(())
}

/// The resource a first data update creates: a sensor whose type is inferred from the value.
fn first_sight(path: &ResourcePath, value: &Value) -> Result<Resource, ModelError> {
    if path.service.as_str() == ADMIN_SERVICE {
        return Err(ModelError::NotFound(format!(
            "resource {path} (the admin service has only friendly_name, location, model, status and last_seen)"
        )));
    }
    let value_type = ValueType::infer(value)
        .ok_or_else(|| ModelError::InvalidValue { path: path.to_string(), reason: "null is not a value".into() })?;
    Ok(Resource::new(ResourceKind::Sensor, value_type))
}

fn check_value(path: &ResourcePath, expected: ValueType, value: &Value) -> Result<(), ModelError> {
    if !expected.accepts(value) {
        return Err(ModelError::TypeMismatch { path: path.to_string(), expected, got: json_type_name(value) });
    }
    if path.service.as_str() == ADMIN_SERVICE {
        match AdminResource::by_name(path.resource.as_str()) {
            Some(AdminResource::Location) => {
                GeoPoint::from_geojson(value)
                    .map_err(|reason| ModelError::InvalidValue { path: path.to_string(), reason })?;
            }
            Some(AdminResource::Status) if !matches!(value.as_str(), Some("online" | "offline")) => {
                return Err(ModelError::InvalidValue {
                    path: path.to_string(),
                    reason: "status is \"online\" or \"offline\"".into(),
                });
            }
            _ => {}
        }
    }
    if let Value::Number(n) = value
        && n.as_f64().is_some_and(|f| !f.is_finite())
    {
        return Err(ModelError::InvalidValue { path: path.to_string(), reason: "numbers are finite".into() });
    }
    Ok(())
}

/// A model document: how services and resources (with kind, type, unit, metadata, parameters and initial
/// values) come to exist. `PUT /providers/{p}` takes one; plugins use the same call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDoc {
    /// Services to declare or update.
    #[serde(default)]
    pub services: BTreeMap<Name, ServiceDoc>,
}

/// A service inside a [`ProviderDoc`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    /// Resources to declare or update.
    #[serde(default)]
    pub resources: BTreeMap<Name, ResourceDoc>,
}

/// A resource inside a [`ProviderDoc`]. Kind defaults to `sensor`; type is inferred from `value` if absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceDoc {
    /// The resource kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ResourceKind>,
    /// The value type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// The unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Metadata entries to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
    /// Action parameters and their types.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<Name, ValueType>,
    /// An initial (or new) value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The value's timestamp; defaults to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(s: &str) -> ResourcePath {
        s.parse().unwrap()
    }

    fn upd(p: &str, v: Value, t: i64) -> Update {
        Update { path: path(p), value: v, timestamp: Timestamp::from_micros(t) }
    }

    #[test]
    fn new_provider_has_admin_service() {
        let p = Provider::new(Name::new("p1").unwrap());
        let admin = &p.services["admin"];
        assert_eq!(admin.resources.len(), 5);
        assert_eq!(admin.resources["location"].value_type, ValueType::Object);
        assert_eq!(admin.resources["status"].kind, ResourceKind::Sensor);
    }

    #[test]
    fn sensors_appear_on_first_sight_and_types_are_enforced() {
        let mut p = Provider::new(Name::new("noise-12").unwrap());
        let u = upd("noise-12/sound/level", json!(71.5), 10);
        let created = p.check_update(&u.path, &u.value).unwrap().unwrap();
        assert_eq!((created.kind, created.value_type), (ResourceKind::Sensor, ValueType::Number));
        assert!(p.apply(&u));
        let err = p.check_update(&u.path, &json!("loud")).unwrap_err();
        assert!(matches!(err, ModelError::TypeMismatch { expected: ValueType::Number, got: "string", .. }));
        assert_eq!(p.resource("sound", "level").unwrap().value, Some(json!(71.5)));
        assert_eq!(p.last_seen(), Some(Timestamp::from_micros(10)));
    }

    #[test]
    fn newest_timestamp_wins() {
        let mut p = Provider::new(Name::new("p").unwrap());
        p.apply(&upd("p/s/r", json!(2), 20));
        p.apply(&upd("p/s/r", json!(1), 10));
        let r = p.resource("s", "r").unwrap();
        assert_eq!((r.value.clone(), r.timestamp), (Some(json!(2)), Some(Timestamp::from_micros(20))));
    }

    #[test]
    fn set_only_on_state_and_property() {
        let mut p = Provider::new(Name::new("lamp").unwrap());
        let doc: ProviderDoc = serde_json::from_value(json!({"services": {"light": {"resources": {
            "on": {"kind": "state", "type": "boolean", "value": false},
            "lux": {"kind": "sensor", "type": "number", "unit": "lx"},
            "blink": {"kind": "action", "type": "object", "parameters": {"times": "integer"}}
        }}}}))
        .unwrap();
        let ups = p.merge_doc(&doc, Timestamp::from_micros(1)).unwrap();
        assert_eq!(ups.len(), 1);
        assert!(p.check_set(&path("lamp/light/on"), &json!(true)).is_ok());
        assert!(matches!(p.check_set(&path("lamp/light/lux"), &json!(3)), Err(ModelError::WrongKind { .. })));
        assert!(matches!(p.check_set(&path("lamp/light/on"), &json!(1)), Err(ModelError::TypeMismatch { .. })));
        assert!(matches!(p.check_set(&path("lamp/light/nope"), &json!(1)), Err(ModelError::NotFound(_))));
        let params = |v: Value| v.as_object().unwrap().clone();
        assert!(p.check_act(&path("lamp/light/blink"), &params(json!({"times": 3}))).is_ok());
        assert!(p.check_act(&path("lamp/light/blink"), &params(json!({"times": "3"}))).is_err());
        assert!(p.check_act(&path("lamp/light/blink"), &params(json!({}))).is_err());
        assert!(p.check_act(&path("lamp/light/blink"), &params(json!({"times": 1, "x": 2}))).is_err());
        assert!(p.check_act(&path("lamp/light/on"), &params(json!({}))).is_err());
    }

    #[test]
    fn merge_is_all_or_nothing() {
        let mut p = Provider::new(Name::new("p").unwrap());
        let before = p.clone();
        let doc: ProviderDoc = serde_json::from_value(json!({"services": {
            "a": {"resources": {"x": {"type": "number", "value": 1}}},
            "b": {"resources": {"y": {"type": "number", "value": "not a number"}}}
        }}))
        .unwrap();
        assert!(p.merge_doc(&doc, Timestamp::from_micros(1)).is_err());
        assert_eq!(p, before);
    }

    #[test]
    fn admin_values_are_validated() {
        let p = Provider::new(Name::new("p").unwrap());
        assert!(
            p.check_update(&path("p/admin/location"), &json!({"type": "Point", "coordinates": [1.0, 2.0]})).is_ok()
        );
        assert!(p.check_update(&path("p/admin/location"), &json!({"type": "Point"})).is_err());
        assert!(p.check_update(&path("p/admin/status"), &json!("maybe")).is_err());
        assert!(p.check_update(&path("p/admin/last_seen"), &json!("2026-01-01T00:00:00Z")).is_err());
        assert!(p.check_update(&path("p/admin/other"), &json!(1)).is_err());
    }

    #[test]
    fn redeclaring_with_another_type_is_refused() {
        let mut p = Provider::new(Name::new("p").unwrap());
        p.apply(&upd("p/s/r", json!(1), 1));
        let doc: ProviderDoc =
            serde_json::from_value(json!({"services": {"s": {"resources": {"r": {"type": "string"}}}}})).unwrap();
        assert!(matches!(p.merge_doc(&doc, Timestamp::from_micros(2)), Err(ModelError::Redeclared { .. })));
        let unknown = serde_json::from_value::<ProviderDoc>(json!({"services": {}, "extra": 1}));
        assert!(unknown.is_err());
    }
}
