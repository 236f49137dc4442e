//! Positions in rule text and the diagnostics the parser and the checker report.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A position in rule text: a byte offset and the 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Pos {
    /// Byte offset from the start of the text.
    pub offset: usize,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1, in characters.
    pub column: u32,
}

/// A range of rule text, from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Span {
    /// Where the range starts.
    pub start: Pos,
    /// Where the range ends (the position just after its last character).
    pub end: Pos,
}

impl Span {
    /// The span from the start of `self` to the end of `other`.
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start, end: other.end }
    }
}

/// How serious a diagnostic is. Errors stop a rule from being deployed; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The rule cannot run as written.
    Error,
    /// The rule runs, but probably not as intended.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// What kind of problem a diagnostic reports. Stable: the studio and the REST API branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiagCode {
    /// The text does not follow the grammar.
    Syntax,
    /// A function name the language does not know, or a function called with the wrong arguments.
    UnknownFunction,
    /// Two rules with the same name in one set.
    DuplicateRule,
    /// A parameter or object key given twice.
    DuplicateName,
    /// A `$variable` that no path of the trigger binds, or bound with two different patterns.
    UnboundVariable,
    /// A construct used where it has no meaning (`else` without a condition, `for` outside `when`, ...).
    Misplaced,
    /// A value out of range: a zero duration, an empty window, a URL that is not http(s).
    InvalidValue,
    /// A rule that nothing can ever trigger.
    NoTrigger,
    /// A resource that does not exist in the model.
    UnknownResource,
    /// A wildcard path that matches no resource yet (warning: instances appear with the resources).
    NoMatch,
    /// Operands or values of incompatible types.
    TypeMismatch,
    /// An aggregate or arithmetic on a resource that does not hold numbers.
    NotNumeric,
    /// SET on a resource that is not a state or a property.
    NotSettable,
    /// ACT on a resource that is not an action.
    NotAnAction,
    /// An ACT parameter the action does not declare.
    UnknownParameter,
    /// An ACT parameter the action declares but the rule does not give.
    MissingParameter,
    /// An ACT parameter of the wrong type.
    ParameterType,
    /// Rules whose actions trigger each other in a cycle.
    FeedbackLoop,
    /// Two rules that SET the same resource when both their conditions can hold.
    Conflict,
    /// Resources matched by one wildcard path have different types.
    MixedTypes,
    /// `call` of a rule app the hub does not have (warning: it may be installed later). The engine does not
    /// know the installed apps; the hub adds this diagnostic.
    UnknownApp,
}

impl DiagCode {
    /// The kebab-case name used in golden files and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DiagCode::Syntax => "syntax",
            DiagCode::UnknownFunction => "unknown-function",
            DiagCode::DuplicateRule => "duplicate-rule",
            DiagCode::DuplicateName => "duplicate-name",
            DiagCode::UnboundVariable => "unbound-variable",
            DiagCode::Misplaced => "misplaced",
            DiagCode::InvalidValue => "invalid-value",
            DiagCode::NoTrigger => "no-trigger",
            DiagCode::UnknownResource => "unknown-resource",
            DiagCode::NoMatch => "no-match",
            DiagCode::TypeMismatch => "type-mismatch",
            DiagCode::NotNumeric => "not-numeric",
            DiagCode::NotSettable => "not-settable",
            DiagCode::NotAnAction => "not-an-action",
            DiagCode::UnknownParameter => "unknown-parameter",
            DiagCode::MissingParameter => "missing-parameter",
            DiagCode::ParameterType => "parameter-type",
            DiagCode::FeedbackLoop => "feedback-loop",
            DiagCode::Conflict => "conflict",
            DiagCode::MixedTypes => "mixed-types",
            DiagCode::UnknownApp => "unknown-app",
        }
    }
}

impl fmt::Display for DiagCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in rule text, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Line of the first character concerned, from 1.
    pub line: u32,
    /// Column of the first character concerned, from 1.
    pub column: u32,
    /// Line just after the range concerned.
    pub end_line: u32,
    /// Column just after the range concerned.
    pub end_column: u32,
    /// What is wrong and how to fix it, written for app builders.
    pub message: String,
    /// The kind of problem.
    pub code: DiagCode,
    /// The rule concerned, when the problem is inside a rule whose name was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(code: DiagCode, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Error, code, span, message)
    }

    /// A warning at `span`.
    pub fn warning(code: DiagCode, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Warning, code, span, message)
    }

    fn new(severity: Severity, code: DiagCode, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity,
            line: span.start.line,
            column: span.start.column,
            end_line: span.end.line,
            end_column: span.end.column,
            message: message.into(),
            code,
            rule: None,
        }
    }

    /// The same diagnostic, attributed to a rule.
    pub fn in_rule(mut self, rule: &str) -> Diagnostic {
        self.rule = Some(rule.to_string());
        self
    }

    /// Whether this diagnostic stops deployment.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `line:column severity code message`, the format of the golden files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} {} {} {}", self.line, self.column, self.severity, self.code, self.message)
    }
}
