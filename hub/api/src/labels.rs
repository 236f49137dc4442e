//! The live model as the policy's source of object labels: a resource's metadata keys `data_class`,
//! `clearance`, `department` and `owner`.

use std::sync::Arc;

use hub_policy::{LabelSource, Labels, metadata_keys};
use hub_twin::Twin;
use serde_json::Value;

/// Reads an object's labels from its resource's metadata in the twin.
pub struct TwinLabels(pub Arc<Twin>);

impl LabelSource for TwinLabels {
    fn labels(&self, object: &str) -> Labels {
        let mut parts = object.split('/');
        let (Some(provider), Some(service), Some(resource), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Labels::default();
        };
        // The policy may ask while a listing holds a provider locked: only the twin's separate metadata index is
        // safe to read here.
        self.0
            .resource_metadata(provider, service, resource)
            .map(|metadata| {
                // A value of the wrong JSON type must not weaken the protection: as text it becomes a string no
                // class, department or owner has, so it fails closed.
                let text = |key: &str| metadata.get(key).map(|m| m.value.as_str().unwrap_or("\u{0}invalid"));
                let clearance = metadata.get(metadata_keys::CLEARANCE).map(|m| match &m.value {
                    Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()).ok_or(()),
                    _ => Err(()),
                });
                Labels::from_metadata(
                    text(metadata_keys::CLASS),
                    clearance,
                    text(metadata_keys::DEPARTMENT),
                    text(metadata_keys::OWNER),
                )
            })
            .unwrap_or_default()
    }
}
