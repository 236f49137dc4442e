/// Why a policy, a name or a token record was refused. Variants are stable: callers branch on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line of policy text is malformed. `line` counts from 1 and includes comments and blank lines.
    #[error("policy line {line}: {message}")]
    InvalidPolicy {
        /// The 1-based line number in the submitted text.
        line: usize,
        /// What is wrong with it, in words meant for the person who wrote it.
        message: String,
    },
    /// A subject, role, token hash or description breaks its rules.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidName {
        /// Which field is wrong (`subject`, `role`, `hash`, `description`, ...).
        field: &'static str,
        /// The offending value (truncated when very long).
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// An action string is not one of `read`, `write`, `act`, `admin`.
    #[error("unknown action {0:?}: expected read, write, act or admin")]
    InvalidAction(String),
    /// The operating system's random number generator failed, so no token could be minted.
    #[error("random number generator unavailable: {0}")]
    Random(String),
    /// The authorisation engine refused a policy that passed validation. This is a bug, not bad input.
    #[error("authorisation engine error: {0}")]
    Engine(String),
}

/// Why a bearer token was not accepted. Both map to HTTP 401; they differ only in what is logged and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token with this secret is known (never issued, revoked, or mistyped).
    #[error("unknown token")]
    UnknownToken,
    /// The token is known but its expiry time has passed.
    #[error("token expired")]
    Expired,
}

/// Keeps error messages bounded when they echo user input back.
pub(crate) fn truncate_for_message(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        let mut short: String = value.chars().take(MAX).collect();
        short.push('…');
        short
    }
}
