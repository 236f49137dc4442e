use crate::diag::Diagnostic;

/// Why the engine refused an operation. Variants are stable: callers branch on them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// The rule has errors that stop it from running (see the diagnostics).
    #[error("rule `{rule}` is invalid: {}", .diagnostics.first().map_or(String::new(), |d| d.to_string()))]
    Invalid {
        /// The rule's name.
        rule: String,
        /// What is wrong.
        diagnostics: Vec<Diagnostic>,
    },
    /// A rule with this name is already deployed; remove it first to replace it.
    #[error("a rule named `{0}` is already deployed")]
    AlreadyDeployed(String),
    /// No rule with this name is deployed.
    #[error("no rule named `{0}` is deployed")]
    NotFound(String),
    /// The engine's limits do not allow it.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
}
