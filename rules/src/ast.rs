//! The syntax tree of the rule language, as [`crate::parse`] produces it.
//!
//! Every node keeps its [`Span`] so the checker can point at it. `Display` prints a node back as canonical
//! rule text (one formatting, minimal parentheses); parsing that text again gives the same tree.

use std::{fmt, sync::Arc};

use hub_model::{Glob, Name, ResourcePath};

use crate::diag::Span;

/// Microseconds, the unit of every duration in the language.
pub type Micros = i64;

/// One microsecond-based constant per unit, largest first, as durations are printed.
const UNITS: [(Micros, &str); 6] = [
    (604_800_000_000, "w"),
    (86_400_000_000, "d"),
    (3_600_000_000, "h"),
    (60_000_000, "m"),
    (1_000_000, "s"),
    (1_000, "ms"),
];

/// A parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's name, unique in a hub; also its id.
    pub name: Name,
    /// Where the name is.
    pub name_span: Span,
    /// The optional description string after the name.
    pub description: Option<String>,
    /// What makes the rule run.
    pub trigger: Trigger,
    /// The `if` guard of an event or schedule trigger.
    pub guard: Option<Expr>,
    /// The `cooldown`: after a `then` firing, further `then` firings of the same instance are suppressed for
    /// this long.
    pub cooldown: Option<Micros>,
    /// The actions run when the trigger fires (and the guard holds).
    pub then: Vec<ActionSpec>,
    /// The actions of the `else` branch: run when a `when` condition stops holding, or when an `if` guard
    /// does not hold.
    pub otherwise: Vec<ActionSpec>,
    /// The whole rule, from `rule` to `end`.
    pub span: Span,
    /// The rule's own source text, from `rule` to `end`, for storage and display.
    pub source: Arc<str>,
}

/// What makes a rule run.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// `when <condition>`: runs `then` each time the condition becomes true (and `else` each time it stops
    /// being true).
    When(Expr),
    /// `on update <paths>` (every update) or `on change <paths>` (only when the value differs from the
    /// previous one).
    Update {
        /// The resources whose updates trigger the rule.
        paths: Vec<PathPattern>,
        /// `on change` rather than `on update`.
        changes_only: bool,
        /// Where the trigger is.
        span: Span,
    },
    /// `on offline <provider>` / `on online <provider>`.
    Status {
        /// The provider: a name or a `$variable`.
        provider: Segment,
        /// `online` rather than `offline`.
        online: bool,
        /// Where the trigger is.
        span: Span,
    },
    /// `every <period> [at HH:MM]` or `at HH:MM` (every day), in UTC, aligned on the Unix epoch.
    Schedule {
        /// The period.
        every: Micros,
        /// The offset from midnight UTC the schedule is aligned on.
        at: Option<Micros>,
        /// Where the trigger is.
        span: Span,
    },
}

/// One segment of a resource path pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// A literal provider, service or resource name.
    Name(Name),
    /// `$name` or `$name:glob`: matches any name (that the glob accepts) and binds it to the variable.
    Var {
        /// The variable's name, without `$`.
        name: String,
        /// The pattern the bound name must match, if any.
        glob: Option<Glob>,
    },
}

impl Segment {
    /// Whether this segment accepts `name` (ignoring what other segments bind).
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            Segment::Name(n) => n.as_str() == name,
            Segment::Var { glob, .. } => glob.as_ref().is_none_or(|g| g.matches(name)),
        }
    }

    /// The variable this segment binds, if any.
    pub fn var(&self) -> Option<&str> {
        match self {
            Segment::Name(_) => None,
            Segment::Var { name, .. } => Some(name),
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Name(n) => f.write_str(n.as_str()),
            Segment::Var { name, glob: None } => write!(f, "${name}"),
            Segment::Var { name, glob: Some(g) } => write!(f, "${name}:{}", g.as_str()),
        }
    }
}

/// A resource path as written in a rule: `provider/service/resource`, where any segment may be a
/// `$variable`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathPattern {
    /// Provider, service and resource.
    pub segments: [Segment; 3],
    /// Where the path is.
    pub span: Span,
}

impl PathPattern {
    /// The variables this path binds, in order, without repetition.
    pub fn vars(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for v in self.segments.iter().filter_map(Segment::var) {
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }

    /// The concrete path, when no segment is a variable.
    pub fn concrete(&self) -> Option<ResourcePath> {
        match &self.segments {
            [Segment::Name(p), Segment::Name(s), Segment::Name(r)] => {
                Some(ResourcePath::new(p.clone(), s.clone(), r.clone()))
            }
            _ => None,
        }
    }

    /// Whether the two patterns are written the same way (spans aside).
    pub fn same_as(&self, other: &PathPattern) -> bool {
        self.segments == other.segments
    }

    /// Matches a concrete path. On success, returns what each variable binds (a variable used twice must
    /// bind the same name both times).
    pub fn matches(&self, path: &ResourcePath) -> Option<Vec<(&str, Name)>> {
        let names = [&path.provider, &path.service, &path.resource];
        let mut bound: Vec<(&str, Name)> = Vec::new();
        for (segment, name) in self.segments.iter().zip(names) {
            if !segment.accepts(name.as_str()) {
                return None;
            }
            if let Some(var) = segment.var() {
                match bound.iter().find(|(v, _)| *v == var) {
                    Some((_, earlier)) if earlier != name => return None,
                    Some(_) => {}
                    None => bound.push((var, name.clone())),
                }
            }
        }
        Some(bound)
    }

    /// The concrete path once every variable is replaced by `lookup(variable)`; `None` when a variable has
    /// no value or its value does not fit the segment's glob.
    pub fn substitute(&self, lookup: impl Fn(&str) -> Option<Name>) -> Option<ResourcePath> {
        let resolve = |s: &Segment| match s {
            Segment::Name(n) => Some(n.clone()),
            Segment::Var { name, .. } => lookup(name).filter(|n| s.accepts(n.as_str())),
        };
        let [p, s, r] = &self.segments;
        Some(ResourcePath::new(resolve(p)?, resolve(s)?, resolve(r)?))
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [p, s, r] = &self.segments;
        write!(f, "{p}/{s}/{r}")
    }
}

/// An expression, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// Where it is.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A number literal; `integer` when written without a fraction or exponent.
    Number {
        /// The value.
        value: f64,
        /// Written as an integer.
        integer: bool,
    },
    /// `true` or `false`.
    Bool(bool),
    /// A string literal, possibly with `{expression}` placeholders.
    Str(Template),
    /// The current value of a resource.
    Path(Box<PathPattern>),
    /// `prev(path)`: the value the resource had before its current one.
    Prev(Box<PathPattern>),
    /// `$name`: the name a variable is bound to, as a string.
    Var(String),
    /// `value`, `provider`, `service`, `resource`, `rule` or `time`.
    Special(Special),
    /// `-x` or `not x`.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// The operand.
        expr: Box<Expr>,
    },
    /// Arithmetic, comparison and boolean operators.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// `x in [..]` or `x not in [..]`.
    In {
        /// The value looked for.
        expr: Box<Expr>,
        /// The list (a list literal or an array resource).
        list: Box<Expr>,
        /// `not in`.
        negated: bool,
    },
    /// `x above A until below B` (or `below A until above B`): hysteresis. Becomes true when `x` crosses
    /// `A` and stays true until `x` crosses `B` the other way.
    Hysteresis {
        /// The value watched.
        expr: Box<Expr>,
        /// The threshold that switches it on.
        on: Box<Expr>,
        /// The threshold that switches it off.
        off: Box<Expr>,
        /// `above .. until below` or `below .. until above`.
        direction: Direction,
    },
    /// `condition for 5m`: true once the condition has held continuously for the duration.
    Hold {
        /// The condition.
        expr: Box<Expr>,
        /// How long it must hold.
        duration: Micros,
    },
    /// A windowed aggregate: `avg(path, 10m)`, `max(path, 20 samples)`, ...
    Aggregate {
        /// Which aggregate.
        func: AggFunc,
        /// The resource aggregated.
        path: Box<PathPattern>,
        /// Over which window.
        window: Window,
        /// Where the window is written.
        window_span: Span,
    },
    /// A scalar function call: `abs(x)`, `contains(s, "x")`, ...
    Call {
        /// The function.
        func: Func,
        /// Its arguments.
        args: Vec<Expr>,
    },
    /// `[a, b, c]`.
    List(Vec<Expr>),
    /// `{key = value, ...}`.
    Object(Vec<Entry>),
}

impl Expr {
    /// Calls `f` on this expression and on every expression inside it, placeholders of strings included,
    /// parents before children.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        f(self);
        match &self.kind {
            ExprKind::Number { .. }
            | ExprKind::Bool(_)
            | ExprKind::Path(_)
            | ExprKind::Prev(_)
            | ExprKind::Var(_)
            | ExprKind::Special(_)
            | ExprKind::Aggregate { .. } => {}
            ExprKind::Str(t) => t.exprs().for_each(|e| e.walk(f)),
            ExprKind::Unary { expr, .. } | ExprKind::Hold { expr, .. } => expr.walk(f),
            ExprKind::Binary { left, right, .. } => {
                left.walk(f);
                right.walk(f);
            }
            ExprKind::In { expr, list, .. } => {
                expr.walk(f);
                list.walk(f);
            }
            ExprKind::Hysteresis { expr, on, off, .. } => {
                expr.walk(f);
                on.walk(f);
                off.walk(f);
            }
            ExprKind::Call { args: items, .. } | ExprKind::List(items) => items.iter().for_each(|e| e.walk(f)),
            ExprKind::Object(entries) => entries.iter().for_each(|e| e.value.walk(f)),
        }
    }

    /// The resource paths this expression reads (current values, `prev` and windows), in order.
    pub fn paths(&self) -> Vec<&PathPattern> {
        let mut out = Vec::new();
        self.walk(&mut |e| match &e.kind {
            ExprKind::Path(p) | ExprKind::Prev(p) | ExprKind::Aggregate { path: p, .. } => out.push(&**p),
            _ => {}
        });
        out
    }
}

/// A key and its value in an object literal, or a named parameter in `act` and `call`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Where the key is.
    pub key_span: Span,
    /// The value.
    pub value: Expr,
}

/// A string with `{expression}` placeholders, rendered when a rule fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Text and placeholders, in order.
    pub parts: Vec<TemplatePart>,
    /// Where the string literal is, quotes included.
    pub span: Span,
}

impl Template {
    /// The placeholder expressions, in order.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Expr(e) => Some(e),
            TemplatePart::Text(_) => None,
        })
    }

    /// The text, when the template has no placeholder.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Expr(_) => return None,
            }
        }
        Some(out)
    }
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// A placeholder.
    Expr(Expr),
}

/// Names that stand for a value of the firing context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Special {
    /// The value of the update that last triggered the rule instance.
    Value,
    /// The provider of that update.
    Provider,
    /// The service of that update.
    Service,
    /// The resource of that update.
    Resource,
    /// The rule's name.
    Rule,
    /// The time of the evaluation, RFC 3339 in UTC.
    Time,
}

impl Special {
    /// Every special name.
    pub const ALL: [Special; 6] =
        [Special::Value, Special::Provider, Special::Service, Special::Resource, Special::Rule, Special::Time];

    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Special::Value => "value",
            Special::Provider => "provider",
            Special::Service => "service",
            Special::Resource => "resource",
            Special::Rule => "rule",
            Special::Time => "time",
        }
    }
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `not x`.
    Not,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `+` (numbers; also joins two strings).
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `%`.
    Rem,
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `and`.
    And,
    /// `or`.
    Or,
}

impl BinaryOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }

    /// Whether the operator compares its operands.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge)
    }

    /// Whether the operator is arithmetic.
    pub fn is_arithmetic(self) -> bool {
        matches!(self, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem)
    }

    fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 5,
            BinaryOp::Add | BinaryOp::Sub => 6,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => 7,
        }
    }
}

/// The direction of a hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `above A until below B`.
    Above,
    /// `below A until above B`.
    Below,
}

/// Windowed aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggFunc {
    /// Mean of the samples.
    Avg,
    /// Smallest sample.
    Min,
    /// Largest sample.
    Max,
    /// Sum of the samples.
    Sum,
    /// Number of samples (any type).
    Count,
    /// Change per second between the oldest and the newest sample.
    Rate,
    /// Newest sample minus oldest sample.
    Delta,
    /// Population standard deviation.
    Stddev,
}

impl AggFunc {
    /// Every aggregate.
    pub const ALL: [AggFunc; 8] = [
        AggFunc::Avg,
        AggFunc::Min,
        AggFunc::Max,
        AggFunc::Sum,
        AggFunc::Count,
        AggFunc::Rate,
        AggFunc::Delta,
        AggFunc::Stddev,
    ];

    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Sum => "sum",
            AggFunc::Count => "count",
            AggFunc::Rate => "rate",
            AggFunc::Delta => "delta",
            AggFunc::Stddev => "stddev",
        }
    }

    /// Whether the aggregate needs numbers.
    pub fn is_numeric(self) -> bool {
        self != AggFunc::Count
    }
}

/// A sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The samples of the last duration: `10m`.
    Time(Micros),
    /// The last N samples: `20 samples`.
    Count(u32),
}

/// Scalar functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    /// `abs(x)`.
    Abs,
    /// `round(x)`, to the nearest integer.
    Round,
    /// `floor(x)`.
    Floor,
    /// `ceil(x)`.
    Ceil,
    /// `len(x)`: characters of a string, elements of a list.
    Len,
    /// `lower(s)`.
    Lower,
    /// `upper(s)`.
    Upper,
    /// `contains(s, part)` (strings) or `contains(list, element)`.
    Contains,
    /// `starts_with(s, prefix)`.
    StartsWith,
    /// `ends_with(s, suffix)`.
    EndsWith,
}

impl Func {
    /// Every scalar function.
    pub const ALL: [Func; 10] = [
        Func::Abs,
        Func::Round,
        Func::Floor,
        Func::Ceil,
        Func::Len,
        Func::Lower,
        Func::Upper,
        Func::Contains,
        Func::StartsWith,
        Func::EndsWith,
    ];

    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Func::Abs => "abs",
            Func::Round => "round",
            Func::Floor => "floor",
            Func::Ceil => "ceil",
            Func::Len => "len",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Contains => "contains",
            Func::StartsWith => "starts_with",
            Func::EndsWith => "ends_with",
        }
    }

    /// How many arguments the function takes.
    pub fn arity(self) -> usize {
        match self {
            Func::Contains | Func::StartsWith | Func::EndsWith => 2,
            _ => 1,
        }
    }
}

/// An action as written in a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    /// What the action does.
    pub kind: ActionKind,
    /// Where it is.
    pub span: Span,
}

/// The kinds of action.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind {
    /// `act path(name = value, ...)`: invoke an action resource.
    Act {
        /// The action resource.
        path: PathPattern,
        /// Its parameters.
        params: Vec<Entry>,
    },
    /// `set path = value`: write a state or property.
    Set {
        /// The resource written.
        path: PathPattern,
        /// The value.
        value: Expr,
    },
    /// `publish "topic" [with payload]`: publish an event.
    Publish {
        /// The event topic.
        topic: Template,
        /// The payload; a default envelope when absent.
        payload: Option<Expr>,
    },
    /// `notify "url" [with body] [retries n]`: HTTP POST to a webhook.
    Notify {
        /// Where to POST.
        url: Template,
        /// The JSON body; a default envelope when absent.
        body: Option<Expr>,
        /// How many times to retry a failed delivery; the hub's default when absent.
        retries: Option<u32>,
    },
    /// `call app(name = value, ...)`: call a WASM rule app.
    Call {
        /// The app's id.
        app: Name,
        /// Where the app id is.
        app_span: Span,
        /// Its parameters.
        params: Vec<Entry>,
    },
}

impl ActionKind {
    /// The expressions of the action (values, parameters, payloads, placeholders of its strings), outermost
    /// only; [`Expr::walk`] reaches the rest.
    pub fn exprs(&self) -> Vec<&Expr> {
        match self {
            ActionKind::Act { params, .. } | ActionKind::Call { params, .. } => {
                params.iter().map(|p| &p.value).collect()
            }
            ActionKind::Set { value, .. } => vec![value],
            ActionKind::Publish { topic: t, payload: body } | ActionKind::Notify { url: t, body, .. } => {
                t.exprs().chain(body.iter()).collect()
            }
        }
    }

    /// The resource the action writes or invokes, if any.
    pub fn target(&self) -> Option<&PathPattern> {
        match self {
            ActionKind::Act { path, .. } | ActionKind::Set { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Prints a duration in the largest units that divide it (`90m` prints as `1h30m`).
pub fn fmt_duration(mut us: Micros, f: &mut impl fmt::Write) -> fmt::Result {
    if us <= 0 {
        return f.write_str("0s");
    }
    for (unit, name) in UNITS {
        if us >= unit {
            write!(f, "{}{name}", us / unit)?;
            us %= unit;
        }
    }
    Ok(())
}

/// Prints a time of day (`02:00`, `02:00:30`).
pub fn fmt_time_of_day(us: Micros, f: &mut impl fmt::Write) -> fmt::Result {
    let secs = us / 1_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if s == 0 { write!(f, "{h:02}:{m:02}") } else { write!(f, "{h:02}:{m:02}:{s:02}") }
}

fn fmt_string(t: &Template, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("\"")?;
    for part in &t.parts {
        match part {
            TemplatePart::Text(text) => {
                for c in text.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        '\r' => f.write_str("\\r")?,
                        '{' => f.write_str("{{")?,
                        '}' => f.write_str("}}")?,
                        c => write!(f, "{c}")?,
                    }
                }
            }
            TemplatePart::Expr(e) => write!(f, "{{{e}}}")?,
        }
    }
    f.write_str("\"")
}

const PREC_NOT: u8 = 3;
const PREC_HOLD: u8 = 4;
const PREC_COMPARE: u8 = 5;
const PREC_SUM: u8 = 6;
const PREC_NEG: u8 = 8;
const PREC_PRIMARY: u8 = 9;

impl Expr {
    fn precedence(&self) -> u8 {
        match &self.kind {
            ExprKind::Binary { op, .. } => op.precedence(),
            ExprKind::Unary { op: UnaryOp::Not, .. } => PREC_NOT,
            ExprKind::Unary { op: UnaryOp::Neg, .. } => PREC_NEG,
            ExprKind::Hold { .. } => PREC_HOLD,
            ExprKind::In { .. } | ExprKind::Hysteresis { .. } => PREC_COMPARE,
            ExprKind::Number { value, .. } if *value < 0.0 => PREC_NEG,
            _ => PREC_PRIMARY,
        }
    }

    fn fmt_at(&self, min: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.precedence() < min {
            f.write_str("(")?;
            self.fmt_bare(f)?;
            f.write_str(")")
        } else {
            self.fmt_bare(f)
        }
    }

    fn fmt_bare(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Number { value, integer: true } => write!(f, "{value:.0}"),
            ExprKind::Number { value, integer: false } => write!(f, "{value:?}"),
            ExprKind::Bool(b) => write!(f, "{b}"),
            ExprKind::Str(t) => fmt_string(t, f),
            ExprKind::Path(p) => write!(f, "{p}"),
            ExprKind::Prev(p) => write!(f, "prev({p})"),
            ExprKind::Var(v) => write!(f, "${v}"),
            ExprKind::Special(s) => f.write_str(s.as_str()),
            ExprKind::Unary { op: UnaryOp::Neg, expr } => {
                f.write_str("-")?;
                expr.fmt_at(PREC_NEG, f)
            }
            ExprKind::Unary { op: UnaryOp::Not, expr } => {
                f.write_str("not ")?;
                expr.fmt_at(PREC_NOT, f)
            }
            ExprKind::Binary { op, left, right } => {
                let p = op.precedence();
                // Comparisons do not chain, so both sides bind tighter; the others are left-associative.
                let (lmin, rmin) = if op.is_comparison() { (p + 1, p + 1) } else { (p, p + 1) };
                left.fmt_at(lmin, f)?;
                write!(f, " {} ", op.as_str())?;
                right.fmt_at(rmin, f)
            }
            ExprKind::In { expr, list, negated } => {
                expr.fmt_at(PREC_SUM, f)?;
                f.write_str(if *negated { " not in " } else { " in " })?;
                list.fmt_at(PREC_SUM, f)
            }
            ExprKind::Hysteresis { expr, on, off, direction } => {
                let (a, b) = match direction {
                    Direction::Above => ("above", "below"),
                    Direction::Below => ("below", "above"),
                };
                expr.fmt_at(PREC_SUM, f)?;
                write!(f, " {a} ")?;
                on.fmt_at(PREC_SUM, f)?;
                write!(f, " until {b} ")?;
                off.fmt_at(PREC_SUM, f)
            }
            ExprKind::Hold { expr, duration } => {
                expr.fmt_at(PREC_COMPARE, f)?;
                f.write_str(" for ")?;
                fmt_duration(*duration, f)
            }
            ExprKind::Aggregate { func, path, window, .. } => {
                write!(f, "{}({path}, ", func.as_str())?;
                match window {
                    Window::Time(us) => fmt_duration(*us, f)?,
                    Window::Count(n) => write!(f, "{n} samples")?,
                }
                f.write_str(")")
            }
            ExprKind::Call { func, args } => {
                write!(f, "{}(", func.as_str())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
            ExprKind::List(items) => {
                f.write_str("[")?;
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
            ExprKind::Object(entries) => {
                f.write_str("{")?;
                fmt_entries(entries, true, f)?;
                f.write_str("}")
            }
        }
    }
}

/// Object keys are quoted when they are not plain words; parameter names are always plain names.
fn fmt_entries(entries: &[Entry], object: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        if !object || is_plain_key(&e.key) {
            write!(f, "{} = {}", e.key, e.value)?;
        } else {
            let key = Template { parts: vec![TemplatePart::Text(e.key.clone())], span: e.key_span };
            fmt_string(&key, f)?;
            write!(f, " = {}", e.value)?;
        }
    }
    Ok(())
}

/// Whether a key can be written without quotes.
fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !crate::lexer::is_keyword(key)
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_at(0, f)
    }
}

impl fmt::Display for ActionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ActionKind::Act { path, params } => {
                write!(f, "act {path}(")?;
                fmt_entries(params, false, f)?;
                f.write_str(")")
            }
            ActionKind::Set { path, value } => write!(f, "set {path} = {value}"),
            ActionKind::Publish { topic, payload } => {
                f.write_str("publish ")?;
                fmt_string(topic, f)?;
                match payload {
                    Some(p) => write!(f, " with {p}"),
                    None => Ok(()),
                }
            }
            ActionKind::Notify { url, body, retries } => {
                f.write_str("notify ")?;
                fmt_string(url, f)?;
                if let Some(b) = body {
                    write!(f, " with {b}")?;
                }
                match retries {
                    Some(n) => write!(f, " retries {n}"),
                    None => Ok(()),
                }
            }
            ActionKind::Call { app, params, .. } => {
                write!(f, "call {app}(")?;
                fmt_entries(params, false, f)?;
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::When(e) => write!(f, "when {e}"),
            Trigger::Update { paths, changes_only, .. } => {
                f.write_str(if *changes_only { "on change " } else { "on update " })?;
                for (i, p) in paths.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            Trigger::Status { provider, online, .. } => {
                write!(f, "on {} {provider}", if *online { "online" } else { "offline" })
            }
            Trigger::Schedule { every, at, .. } => {
                f.write_str("every ")?;
                fmt_duration(*every, f)?;
                if let Some(at) = at {
                    f.write_str(" at ")?;
                    fmt_time_of_day(*at, f)?;
                }
                Ok(())
            }
        }
    }
}

impl Rule {
    /// Every top-level expression of the rule with where it appears: the `when` condition, the `if` guard,
    /// then the actions' expressions.
    pub fn exprs(&self) -> Vec<(Role, &Expr)> {
        let mut out = Vec::new();
        if let Trigger::When(e) = &self.trigger {
            out.push((Role::Condition, e));
        }
        if let Some(g) = &self.guard {
            out.push((Role::Guard, g));
        }
        for a in self.then.iter().chain(&self.otherwise) {
            out.extend(a.kind.exprs().into_iter().map(|e| (Role::Action, e)));
        }
        out
    }

    /// The resource paths whose updates make the rule evaluate: those of the `when` condition, or the paths
    /// of `on update` / `on change`. Empty for schedules and provider status triggers.
    pub fn trigger_paths(&self) -> Vec<&PathPattern> {
        match &self.trigger {
            Trigger::When(e) => e.paths(),
            Trigger::Update { paths, .. } => paths.iter().collect(),
            Trigger::Status { .. } | Trigger::Schedule { .. } => Vec::new(),
        }
    }

    /// Every action of both branches.
    pub fn actions(&self) -> impl Iterator<Item = &ActionSpec> {
        self.then.iter().chain(&self.otherwise)
    }
}

/// Where an expression appears in a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The `when` condition.
    Condition,
    /// The `if` guard.
    Guard,
    /// Inside an action.
    Action,
}

impl fmt::Display for Rule {
    /// The rule as canonical text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}", self.name)?;
        if let Some(d) = &self.description {
            f.write_str(" ")?;
            fmt_string(&Template { parts: vec![TemplatePart::Text(d.clone())], span: self.name_span }, f)?;
        }
        write!(f, "\n  {}\n", self.trigger)?;
        if let Some(g) = &self.guard {
            writeln!(f, "  if {g}")?;
        }
        if let Some(c) = self.cooldown {
            f.write_str("  cooldown ")?;
            fmt_duration(c, f)?;
            f.write_str("\n")?;
        }
        f.write_str("  then\n")?;
        for a in &self.then {
            writeln!(f, "    {a}")?;
        }
        if !self.otherwise.is_empty() {
            f.write_str("  else\n")?;
            for a in &self.otherwise {
                writeln!(f, "    {a}")?;
            }
        }
        f.write_str("end\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_mixed_units() {
        let show = |us| {
            let mut s = String::new();
            fmt_duration(us, &mut s).unwrap();
            s
        };
        assert_eq!(show(5 * 60_000_000), "5m");
        assert_eq!(show(90 * 60_000_000), "1h30m");
        assert_eq!(show(86_400_000_000), "1d");
        assert_eq!(show(1_500_000), "1s500ms");
    }
}
