//! The names of the objects the policy talks about, so every caller spells them the same way.
//!
//! Data objects are a provider name (`noise-1`) or a resource path (`noise-1/env/level`). System objects have
//! fixed names; plugins and rules are `plugin:<id>` and `rule:<id>`.

/// The policy text itself (read it, or `admin` to replace it).
pub const POLICY: &str = "policy";
/// The API tokens (list with `read`, mint and revoke with `admin`).
pub const TOKENS: &str = "tokens";
/// The health endpoint.
pub const SYSTEM_HEALTH: &str = "system:health";
/// The metrics endpoint.
pub const SYSTEM_METRICS: &str = "system:metrics";
/// The host transports' status and the LoRa gateways list.
pub const SYSTEM_TRANSPORTS: &str = "system:transports";
/// The OpenAPI document.
pub const SYSTEM_OPENAPI: &str = "system:openapi";

/// The object for one resource: `provider/service/resource`.
pub fn resource(provider: &str, service: &str, resource: &str) -> String {
    format!("{provider}/{service}/{resource}")
}

/// The object for a plugin: `plugin:<id>`.
pub fn plugin(id: &str) -> String {
    format!("plugin:{id}")
}

/// The object for a rule: `rule:<id>`.
pub fn rule(id: &str) -> String {
    format!("rule:{id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn object_names() {
        assert_eq!(super::resource("noise-1", "env", "level"), "noise-1/env/level");
        assert_eq!(super::plugin("mqtt"), "plugin:mqtt");
        assert_eq!(super::rule("r1"), "rule:r1");
    }
}
