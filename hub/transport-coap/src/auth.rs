//! Device authentication and authorisation for the CoAP endpoint.

use std::collections::HashMap;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No valid credentials: the token is missing, unknown or expired (4.01 Unauthorized).
    #[error("unauthenticated")]
    Unauthenticated,
    /// Valid credentials that may not write this path (4.03 Forbidden).
    #[error("forbidden")]
    Forbidden,
}

/// Decides whether a request may go on.
///
/// The endpoint takes the token from the `token` URI query parameter (`coap://hub/up/p/s/r?token=...`) or from
/// the hub's token option (number 65000), and calls `authorize` once per request (once per Block1 upload, on
/// its first block) with the request path (`/up/p/s/r`, or `/.well-known/core` for discovery):
///
/// - `token` is `Some` whenever the device sent one. Return the subject it authenticates as (it becomes the
///   `subject` metadata of the message), or [`Denied`].
/// - `token` is `None` only when anonymous requests are allowed ([`crate::CoapConfig::anonymous_allowed`]);
///   return `Ok(None)` to accept. Without anonymous access a request without a token gets 4.01 and this is not
///   called.
///
/// The hub implements it over its token registry and casbin policy (write on the provider of
/// `/up/{provider}/...`). It runs on the endpoint's task for every request, so it must be quick and must not
/// block: a lock-free snapshot lookup is right, a database query is not.
pub trait DeviceAuth: Send + Sync + 'static {
    /// The subject of the request's credentials, `Ok(None)` for an accepted anonymous request, or why not.
    fn authorize(&self, token: Option<&str>, path: &str) -> Result<Option<String>, Denied>;
}

/// A fixed table of device tokens, each allowed on paths under some prefixes; for tests and small deployments.
/// Anonymous requests (when the endpoint allows them) are accepted.
#[derive(Debug, Clone, Default)]
pub struct StaticDeviceAuth {
    tokens: HashMap<String, (String, Vec<String>)>,
}

impl StaticDeviceAuth {
    /// An empty table: every token is refused.
    pub fn new() -> Self {
        StaticDeviceAuth::default()
    }

    /// Adds `token`, authenticating as `subject`, allowed on paths that start with one of `prefixes`
    /// (`/.well-known/core` is allowed to every valid token).
    pub fn with_token(mut self, token: &str, subject: &str, prefixes: &[&str]) -> Self {
        self.tokens.insert(token.to_owned(), (subject.to_owned(), prefixes.iter().map(|p| (*p).to_owned()).collect()));
        self
    }
}

impl DeviceAuth for StaticDeviceAuth {
    fn authorize(&self, token: Option<&str>, path: &str) -> Result<Option<String>, Denied> {
        let Some(token) = token else {
            return Ok(None);
        };
        let (subject, prefixes) = self
            .tokens
            .iter()
            .find(|(known, _)| constant_time_eq(known.as_bytes(), token.as_bytes()))
            .map(|(_, entry)| entry)
            .ok_or(Denied::Unauthenticated)?;
        if path == "/.well-known/core" || prefixes.iter().any(|p| path.starts_with(p.as_str())) {
            Ok(Some(subject.clone()))
        } else {
            Err(Denied::Forbidden)
        }
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
        let auth = StaticDeviceAuth::new().with_token("t-7", "device-7", &["/up/meters-7/"]);
        assert_eq!(auth.authorize(Some("t-7"), "/up/meters-7/power/w"), Ok(Some("device-7".to_owned())));
        assert_eq!(auth.authorize(Some("t-7"), "/up/meters-8/power/w"), Err(Denied::Forbidden));
        assert_eq!(auth.authorize(Some("t-8"), "/up/meters-7/power/w"), Err(Denied::Unauthenticated));
        assert_eq!(auth.authorize(Some("t-7"), "/.well-known/core"), Ok(Some("device-7".to_owned())));
        assert_eq!(auth.authorize(None, "/up/x"), Ok(None));
    }
}
