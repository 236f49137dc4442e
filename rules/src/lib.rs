//! Event-Condition-Action rules for the hub: the language, its checker and the engine that runs it.
//!
//! App builders write rules such as
//!
//! ```text
//! rule park_noise
//!   when noise-12/sound/level > 70 for 5m
//!    and avg(noise-12/sound/level, 10m) > 65
//!   then act city-hall/alerts/notify(message = "noise at noise-12: {value} dB")
//!        set noise-12/sign/display = "quiet please"
//! end
//! ```
//!
//! [`parse`] turns text into [`Rule`]s, or into [`Diagnostic`]s with line, column and a message that says how
//! to fix the problem. [`check`] verifies rules before they run: against the live model (through the
//! [`ModelView`] trait the hub implements over its twin: resources exist, types fit, SET and ACT suit the
//! resource) and against the rules already deployed (feedback loops, conflicting SETs). The [`Engine`] runs
//! deployed rules as a pure state machine: updates and time in, [`Firing`]s out, with the [`Action`]s
//! rendered and the values that made the rule fire. It does no I/O and owns no thread; the hub wires it to the
//! bus, the policy layer, the webhook client and the REST API.
//!
//! The language reference is `docs/rules.md`. This crate owns the language, the checks and the evaluation
//! semantics (edge triggering, `for`, windows, hysteresis, bindings, schedules); it does not own delivery
//! (retries of webhooks, the policy check of each action), which belongs to the hub.
//!
//! Window and `for` state lives in memory only: after a hub restart, windows start empty and `for`
//! durations start counting again from the first update.

mod ast;
mod check;
mod compile;
mod diag;
mod engine;
mod error;
mod eval;
mod firing;
mod hash;
mod lexer;
mod model_view;
mod parser;
mod small;
mod suggest;
mod value;
mod window;

pub use ast::{
    ActionKind, ActionSpec, AggFunc, BinaryOp, Direction, Entry, Expr, ExprKind, Func, Micros, PathPattern, Role, Rule,
    Segment, Special, Template, TemplatePart, Trigger, UnaryOp, Window,
};
pub use check::{check, check_structure};
pub use diag::{DiagCode, Diagnostic, Pos, Severity, Span};
pub use engine::{Engine, Limits};
pub use error::RuleError;
pub use firing::{Action, Branch, Cause, EngineStats, Evidence, Firing, RuleStats};
pub use lexer::is_keyword;
pub use model_view::{ModelView, ResourceInfo};
pub use parser::{MAX_COUNT_WINDOW, MAX_DEPTH, parse};
