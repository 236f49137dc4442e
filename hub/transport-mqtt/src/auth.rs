//! Device authentication for the embedded broker.

use std::collections::HashMap;

/// Checks a device's MQTT credentials.
///
/// The hub implements it over its token registry: the username names the device (or its provider), the
/// password is its token. The answer is the provider namespace (a glob such as `noise-*`) the credentials are
/// bound to, or `None` to refuse the connection.
///
/// It is called once per CONNECT on the broker's network thread, so it must be quick and must not block
/// (a lock-free snapshot lookup is right; a database query is not).
pub trait DeviceAuth: Send + Sync + 'static {
    /// The provider namespace `username`/`password` are bound to, or `None` when they are not valid.
    fn check(&self, username: &str, password: &str) -> Option<String>;
}

/// A fixed table of device credentials, for tests and small deployments.
#[derive(Debug, Clone, Default)]
pub struct StaticDeviceAuth {
    entries: HashMap<String, (String, String)>,
}

impl StaticDeviceAuth {
    /// An empty table: every device is refused.
    pub fn new() -> Self {
        StaticDeviceAuth::default()
    }

    /// Adds a device with its password and provider namespace.
    pub fn with_device(mut self, username: &str, password: &str, namespace: &str) -> Self {
        self.entries.insert(username.to_owned(), (password.to_owned(), namespace.to_owned()));
        self
    }
}

impl DeviceAuth for StaticDeviceAuth {
    fn check(&self, username: &str, password: &str) -> Option<String> {
        let (expected, namespace) = self.entries.get(username)?;
        constant_time_eq(expected.as_bytes(), password.as_bytes()).then(|| namespace.clone())
    }
}

/// Compares without an early exit on the first differing byte, so the time does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_table() {
        let auth = StaticDeviceAuth::new().with_device("sensor-1", "s3cret", "noise-*");
        assert_eq!(auth.check("sensor-1", "s3cret").as_deref(), Some("noise-*"));
        assert_eq!(auth.check("sensor-1", "s3cre"), None);
        assert_eq!(auth.check("sensor-1", "s3cret!"), None);
        assert_eq!(auth.check("sensor-2", "s3cret"), None);
    }
}
