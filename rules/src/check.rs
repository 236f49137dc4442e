//! The checker: everything that can be known about rules before they run.
//!
//! Three passes. [`check_structure`] needs nothing but the rule (variables bound, constructs in their place,
//! values in range); the engine runs it on deploy. The type pass reads the model through [`ModelView`]:
//! resources exist, types fit, SET and ACT fit their resource's kind and parameters. The set pass looks at
//! the new rules together with the deployed ones: feedback loops and conflicting SETs.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use hub_model::{Glob, Name, ResourceKind, ResourcePath, ValueType};

use crate::{
    ast::{
        ActionKind, ActionSpec, AggFunc, BinaryOp, Direction, Expr, ExprKind, Func, PathPattern, Role, Rule, Segment,
        Special, Trigger, UnaryOp, Window,
    },
    diag::{DiagCode, Diagnostic, Span},
    model_view::{ModelView, ResourceInfo},
    suggest::closest,
};

/// How many resources a wildcard path is checked against.
const MATCH_LIMIT: usize = 1_000;

/// Checks new rules against the model and against the rules already deployed.
///
/// A new rule with the name of a deployed one replaces it: the deployed one is left out of the loop and
/// conflict analysis. The diagnostics come sorted by position; any error means the rules must not be
/// deployed as they are.
pub fn check(rules: &[Rule], model: &dyn ModelView, deployed: &[Rule]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut names: HashMap<&str, &Rule> = HashMap::new();
    for rule in rules {
        if let Some(first) = names.insert(rule.name.as_str(), rule) {
            out.push(
                Diagnostic::error(
                    DiagCode::DuplicateRule,
                    rule.name_span,
                    format!(
                        "there is already a rule named `{}` (line {}); give each rule its own name",
                        rule.name, first.name_span.start.line
                    ),
                )
                .in_rule(rule.name.as_str()),
            );
        }
        out.extend(check_structure(rule));
        out.extend(check_types(rule, model));
    }
    let kept: Vec<&Rule> = deployed.iter().filter(|d| !names.contains_key(d.name.as_str())).collect();
    out.extend(check_set(rules, &kept));
    out.sort_by_key(|d| (d.line, d.column, d.end_line, d.end_column));
    out
}

// ---------------------------------------------------------------------------------------------------------
// Structure

/// The checks that need no model: variables, placement of constructs, values in range, duplicate names.
/// [`crate::Engine::deploy`] refuses a rule for which this returns an error.
pub fn check_structure(rule: &Rule) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    variables(rule, &mut out);
    placement(rule, &mut out);
    values(rule, &mut out);
    duplicate_names(rule, &mut out);
    out.into_iter().map(|d| d.in_rule(rule.name.as_str())).collect()
}

/// Every path written in the rule, with the span to report problems at.
fn all_paths(rule: &Rule) -> Vec<&PathPattern> {
    let mut out = Vec::new();
    if let Trigger::Update { paths, .. } = &rule.trigger {
        out.extend(paths.iter());
    }
    for (_, e) in rule.exprs() {
        out.extend(e.paths());
    }
    out.extend(rule.actions().filter_map(|a| a.kind.target()));
    out
}

fn trigger_span(rule: &Rule) -> Span {
    match &rule.trigger {
        Trigger::When(e) => e.span,
        Trigger::Update { span, .. } | Trigger::Status { span, .. } | Trigger::Schedule { span, .. } => *span,
    }
}

fn variables(rule: &Rule, out: &mut Vec<Diagnostic>) {
    // Every use of a variable: (name, glob, span), in text order.
    let mut uses: Vec<(&str, Option<&Glob>, Span)> = Vec::new();
    if let Trigger::Status { provider: Segment::Var { name, glob }, span, .. } = &rule.trigger {
        uses.push((name, glob.as_ref(), *span));
    }
    for path in all_paths(rule) {
        for s in &path.segments {
            if let Segment::Var { name, glob } = s {
                uses.push((name, glob.as_ref(), path.span));
            }
        }
    }
    for (_, e) in rule.exprs() {
        e.walk(&mut |x| {
            if let ExprKind::Var(name) = &x.kind {
                uses.push((name, None, x.span));
            }
        });
    }
    uses.sort_by_key(|(_, _, span)| span.start.offset);

    let mut globs: HashMap<&str, &Glob> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (name, glob, span) in &uses {
        if !order.contains(name) {
            order.push(name);
        }
        if let Some(g) = glob {
            match globs.get(name) {
                Some(first) if first.as_str() != g.as_str() => out.push(Diagnostic::error(
                    DiagCode::UnboundVariable,
                    *span,
                    format!(
                        "`${name}` is given two patterns, `{}` and `{}`; give its pattern once, or use two variables",
                        first.as_str(),
                        g.as_str()
                    ),
                )),
                Some(_) => {}
                None => {
                    globs.insert(name, g);
                }
            }
        }
    }
    if order.is_empty() {
        return;
    }

    // The paths that can create an instance: each binds the variables it mentions.
    let candidates: Vec<Vec<&str>> = match &rule.trigger {
        Trigger::When(e) => e.paths().iter().map(|p| p.vars()).collect(),
        Trigger::Update { paths, .. } => paths.iter().map(|p| p.vars()).collect(),
        Trigger::Status { provider, .. } => vec![provider.var().into_iter().collect()],
        Trigger::Schedule { .. } => all_paths(rule).iter().map(|p| p.vars()).collect(),
    };
    if candidates.iter().any(|c| order.iter().all(|v| c.contains(v))) {
        return;
    }
    let covered: BTreeSet<&str> = candidates.iter().flatten().copied().collect();
    let schedule = matches!(rule.trigger, Trigger::Schedule { .. });
    let mut reported = false;
    for name in &order {
        if covered.contains(name) {
            continue;
        }
        let Some((_, _, span)) = uses.iter().find(|(n, _, _)| n == name) else { continue };
        let message = if schedule {
            format!(
                "`${name}` is not bound: no resource path of this rule mentions it, so the rule cannot know which \
                 names it stands for; use it in a path, or write the name itself"
            )
        } else {
            format!(
                "`${name}` is not bound: no path of the trigger mentions it; use it in the trigger (e.g. \
                 `${name}/service/resource`) so each match creates an instance, or write the name itself"
            )
        };
        out.push(Diagnostic::error(DiagCode::UnboundVariable, *span, message));
        reported = true;
    }
    if !reported {
        let list: Vec<String> = order.iter().map(|v| format!("`${v}`")).collect();
        out.push(Diagnostic::error(
            DiagCode::UnboundVariable,
            trigger_span(rule),
            format!(
                "each rule instance is bound by one path, so one path of the trigger must mention all of {}",
                list.join(", ")
            ),
        ));
    }
}

fn placement(rule: &Rule, out: &mut Vec<Diagnostic>) {
    let is_when = matches!(rule.trigger, Trigger::When(_));
    if let (true, Some(g)) = (is_when, &rule.guard) {
        out.push(Diagnostic::error(
            DiagCode::Misplaced,
            g.span,
            "`if` goes with `on`, `every` and `at` triggers; with `when`, join the conditions with `and`",
        ));
    }
    if let (false, None, Some(first)) = (is_when, &rule.guard, rule.otherwise.first()) {
        out.push(Diagnostic::error(
            DiagCode::Misplaced,
            first.span,
            "`else` runs when the rule's condition does not hold, but this rule has none: add `if <condition>` \
             after the trigger, or remove the `else` branch",
        ));
    }
    if let Trigger::When(e) = &rule.trigger
        && e.paths().is_empty()
    {
        out.push(Diagnostic::error(
            DiagCode::NoTrigger,
            e.span,
            "this condition reads no resource, so it can never change and the rule would never run; use \
             `every` or `at` for rules driven by time",
        ));
    }
    let schedule = matches!(rule.trigger, Trigger::Schedule { .. });
    for (role, e) in rule.exprs() {
        e.walk(&mut |x| match &x.kind {
            ExprKind::Hold { .. } if role != Role::Condition => out.push(Diagnostic::error(
                DiagCode::Misplaced,
                x.span,
                "`for` only works in a `when` condition, where the rule watches it over time",
            )),
            ExprKind::Hysteresis { .. } if role == Role::Action => out.push(Diagnostic::error(
                DiagCode::Misplaced,
                x.span,
                "a hysteresis (`above ... until below ...`) keeps state between evaluations and only works in \
                 a `when` or `if` condition",
            )),
            ExprKind::Special(s @ (Special::Value | Special::Provider | Special::Service | Special::Resource))
                if schedule =>
            {
                out.push(Diagnostic::error(
                    DiagCode::Misplaced,
                    x.span,
                    format!(
                        "`{}` refers to the update that triggered the rule, and a scheduled rule has none; read \
                         a resource by its path instead",
                        s.as_str()
                    ),
                ))
            }
            _ => {}
        });
    }
}

fn values(rule: &Rule, out: &mut Vec<Diagnostic>) {
    if let Trigger::Schedule { every, span, .. } = &rule.trigger
        && *every <= 0
    {
        out.push(Diagnostic::error(DiagCode::InvalidValue, *span, "the period of `every` must be longer than zero"));
    }
    for (_, e) in rule.exprs() {
        e.walk(&mut |x| match &x.kind {
            ExprKind::Hold { duration, .. } if *duration <= 0 => out.push(Diagnostic::error(
                DiagCode::InvalidValue,
                x.span,
                "`for` needs a duration longer than zero, e.g. `for 5m`",
            )),
            ExprKind::Aggregate { window: Window::Time(us), window_span, .. } if *us <= 0 => {
                out.push(Diagnostic::error(
                    DiagCode::InvalidValue,
                    *window_span,
                    "a time window must be longer than zero, e.g. `10m`",
                ))
            }
            _ => {}
        });
    }
    for a in rule.actions() {
        if let ActionKind::Notify { url, .. } = &a.kind {
            let prefix = match url.parts.first() {
                Some(crate::ast::TemplatePart::Text(t)) => Some(t.as_str()),
                _ => None,
            };
            if let Some(p) = prefix
                && !(p.starts_with("https://") || p.starts_with("http://"))
            {
                out.push(Diagnostic::error(
                    DiagCode::InvalidValue,
                    url.span,
                    "a webhook URL starts with `https://` (or `http://`), e.g. \"https://example.org/hooks/noise\"",
                ));
            }
        }
    }
}

fn duplicate_names(rule: &Rule, out: &mut Vec<Diagnostic>) {
    let check = |entries: &[crate::ast::Entry], what: &str, out: &mut Vec<Diagnostic>| {
        let mut seen = HashSet::new();
        for e in entries {
            if !seen.insert(e.key.as_str()) {
                out.push(Diagnostic::error(
                    DiagCode::DuplicateName,
                    e.key_span,
                    format!("{what} `{}` is given twice; keep one", e.key),
                ));
            }
        }
    };
    for a in rule.actions() {
        if let ActionKind::Act { params, .. } | ActionKind::Call { params, .. } = &a.kind {
            check(params, "parameter", out);
        }
    }
    for (_, e) in rule.exprs() {
        e.walk(&mut |x| {
            if let ExprKind::Object(entries) = &x.kind {
                check(entries, "key", out);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// Types

/// The static type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    /// Unknown (a resource missing from the model, a wildcard matching nothing): accepted everywhere.
    Any,
    Bool,
    Int,
    Num,
    Str,
    Obj,
    Arr,
}

impl Ty {
    fn of(vt: ValueType) -> Ty {
        match vt {
            ValueType::Number => Ty::Num,
            ValueType::Integer => Ty::Int,
            ValueType::Boolean => Ty::Bool,
            ValueType::String => Ty::Str,
            ValueType::Object => Ty::Obj,
            ValueType::Array => Ty::Arr,
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Any | Ty::Int | Ty::Num)
    }

    fn boolean(self) -> bool {
        matches!(self, Ty::Any | Ty::Bool)
    }

    fn describe(self) -> &'static str {
        match self {
            Ty::Any => "a value",
            Ty::Bool => "true/false",
            // Integers are numbers to an app builder; the distinction only matters for integer resources,
            // whose messages say so themselves.
            Ty::Int | Ty::Num => "a number",
            Ty::Str => "a string",
            Ty::Obj => "an object",
            Ty::Arr => "a list",
        }
    }

    fn compatible(self, other: Ty) -> bool {
        self == Ty::Any || other == Ty::Any || self == other || (self.numeric() && other.numeric())
    }

    /// Whether a value of this type may be written to a resource declared `vt`.
    fn fits(self, vt: ValueType) -> bool {
        matches!(
            (vt, self),
            (_, Ty::Any)
                | (ValueType::Number, Ty::Int | Ty::Num)
                | (ValueType::Integer, Ty::Int)
                | (ValueType::Boolean, Ty::Bool)
                | (ValueType::String, Ty::Str)
                | (ValueType::Object, Ty::Obj)
                | (ValueType::Array, Ty::Arr)
        )
    }
}

fn describe_vt(vt: ValueType) -> &'static str {
    match vt {
        ValueType::Integer => "an integer",
        other => Ty::of(other).describe(),
    }
}

#[derive(Clone)]
enum Resolution {
    Found(Vec<ResourceInfo>),
    Missing(String),
    NoMatch,
}

struct TypeCx<'m> {
    model: &'m dyn ModelView,
    out: Vec<Diagnostic>,
    cache: HashMap<String, Resolution>,
    reported: HashSet<String>,
    value_ty: Ty,
}

/// A segment that matches any name; `n` keeps the variables of one pattern distinct.
fn any_segment(n: u8) -> Segment {
    Segment::Var { name: format!("_{n}"), glob: None }
}

fn check_types(rule: &Rule, model: &dyn ModelView) -> Vec<Diagnostic> {
    let mut cx = TypeCx { model, out: Vec::new(), cache: HashMap::new(), reported: HashSet::new(), value_ty: Ty::Any };
    // Resolve the trigger's paths first so their problems are reported where they are first written.
    cx.value_ty = match &rule.trigger {
        Trigger::When(e) => {
            let paths = e.paths();
            let first = paths.first().copied();
            match first {
                Some(p) if paths.iter().all(|q| q.same_as(p)) => cx.read(p),
                _ => Ty::Any,
            }
        }
        Trigger::Update { paths, .. } => {
            let tys: Vec<Ty> = paths.iter().map(|p| cx.read(p)).collect();
            match tys.first() {
                Some(t) if tys.iter().all(|u| u == t) => *t,
                _ => Ty::Any,
            }
        }
        Trigger::Status { provider, span, .. } => {
            if let Segment::Name(name) = provider
                && let Some(path) = status_path(name)
                && cx.model.resource(&path).is_none()
            {
                let msg = cx.missing_provider(name, &path);
                cx.out.push(Diagnostic::error(DiagCode::UnknownResource, *span, msg));
            }
            Ty::Str
        }
        Trigger::Schedule { .. } => Ty::Any,
    };
    if let Trigger::When(e) = &rule.trigger {
        let t = cx.ty(e);
        cx.condition(e, t);
    }
    if let Some(g) = &rule.guard {
        let t = cx.ty(g);
        cx.condition(g, t);
    }
    for a in rule.actions() {
        cx.action(a);
    }
    cx.out.into_iter().map(|d| d.in_rule(rule.name.as_str())).collect()
}

/// `provider/admin/status`, where the hub keeps a provider's online status.
fn status_path(provider: &Name) -> Option<ResourcePath> {
    ResourcePath::parse_parts(provider.as_str(), hub_model::ADMIN_SERVICE, "status").ok()
}

impl TypeCx<'_> {
    fn resolve(&mut self, p: &PathPattern) -> Resolution {
        let key = p.to_string();
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let resolution = match p.concrete() {
            Some(path) => match self.model.resource(&path) {
                Some(info) => Resolution::Found(vec![info]),
                None => Resolution::Missing(self.missing_message(&path)),
            },
            None => {
                let infos: Vec<ResourceInfo> =
                    self.model.matching(p, MATCH_LIMIT).iter().filter_map(|path| self.model.resource(path)).collect();
                if infos.is_empty() { Resolution::NoMatch } else { Resolution::Found(infos) }
            }
        };
        self.cache.insert(key, resolution.clone());
        resolution
    }

    fn missing_message(&self, path: &ResourcePath) -> String {
        let in_provider = PathPattern {
            segments: [Segment::Name(path.provider.clone()), any_segment(1), any_segment(2)],
            span: Span::default(),
        };
        let siblings = self.model.matching(&in_provider, 10_000);
        if !siblings.is_empty() {
            let names: Vec<String> = siblings.iter().map(|p| format!("{}/{}", p.service, p.resource)).collect();
            let wanted = format!("{}/{}", path.service, path.resource);
            return match closest(&wanted, names.iter().map(String::as_str)) {
                Some(best) => format!("there is no resource `{path}`; did you mean `{}/{best}`?", path.provider),
                None => format!(
                    "provider `{}` has no resource `{wanted}`; check the name, or declare the resource first",
                    path.provider
                ),
            };
        }
        self.missing_provider(&path.provider, path)
    }

    fn missing_provider(&self, provider: &Name, path: &ResourcePath) -> String {
        let same = PathPattern {
            segments: [any_segment(0), Segment::Name(path.service.clone()), Segment::Name(path.resource.clone())],
            span: Span::default(),
        };
        let others: Vec<String> = self.model.matching(&same, 10_000).iter().map(|p| p.provider.to_string()).collect();
        match closest(provider.as_str(), others.iter().map(String::as_str)) {
            Some(best) => format!("there is no provider `{provider}`; did you mean `{best}`?"),
            None => format!(
                "there is no provider `{provider}` in the model; check the name, or use a `$variable` to wait for \
                 providers that appear later"
            ),
        }
    }

    /// Reports a problem once per path text.
    fn report_once(&mut self, key: String, d: Diagnostic) {
        if self.reported.insert(key) {
            self.out.push(d);
        }
    }

    /// The type of a resource read by the rule; reports missing resources.
    fn read(&mut self, p: &PathPattern) -> Ty {
        let key = p.to_string();
        match self.resolve(p) {
            Resolution::Missing(message) => {
                self.report_once(key, Diagnostic::error(DiagCode::UnknownResource, p.span, message));
                Ty::Any
            }
            Resolution::NoMatch => {
                let message =
                    format!("no resource matches `{p}` yet; the rule gets an instance for each match when it appears");
                self.report_once(key, Diagnostic::warning(DiagCode::NoMatch, p.span, message));
                Ty::Any
            }
            Resolution::Found(infos) => {
                let first = infos.first().map(|i| i.value_type);
                match first {
                    Some(vt) if infos.iter().all(|i| i.value_type == vt) => Ty::of(vt),
                    Some(vt) => {
                        let other = infos.iter().map(|i| i.value_type).find(|t| *t != vt).unwrap_or(vt);
                        let message = format!(
                            "`{p}` matches resources of different types ({vt} and {other}); the rule is not \
                             type-checked for them and may see values it does not expect"
                        );
                        self.report_once(key, Diagnostic::warning(DiagCode::MixedTypes, p.span, message));
                        Ty::Any
                    }
                    None => Ty::Any,
                }
            }
        }
    }

    fn condition(&mut self, e: &Expr, t: Ty) {
        if !t.boolean() {
            let hint = if t.numeric() { format!(": compare it, e.g. `{e} > 0`") } else { String::new() };
            self.out.push(Diagnostic::error(
                DiagCode::TypeMismatch,
                e.span,
                format!("a condition must be true or false, but `{e}` is {}{hint}", t.describe()),
            ));
        }
    }

    fn need_numeric(&mut self, e: &Expr, t: Ty, what: &str) {
        if !t.numeric() {
            self.out.push(Diagnostic::error(
                DiagCode::NotNumeric,
                e.span,
                format!("{what} needs a number, but `{e}` is {}", t.describe()),
            ));
        }
    }

    fn need_bool(&mut self, e: &Expr, t: Ty, what: &str) {
        if !t.boolean() {
            let hint = if t.numeric() { format!(": compare it, e.g. `{e} > 0`") } else { String::new() };
            self.out.push(Diagnostic::error(
                DiagCode::TypeMismatch,
                e.span,
                format!("{what} joins conditions (true/false), but `{e}` is {}{hint}", t.describe()),
            ));
        }
    }

    fn ty(&mut self, e: &Expr) -> Ty {
        match &e.kind {
            ExprKind::Number { integer: true, .. } => Ty::Int,
            ExprKind::Number { .. } => Ty::Num,
            ExprKind::Bool(_) => Ty::Bool,
            ExprKind::Str(t) => {
                for x in t.exprs() {
                    self.ty(x);
                }
                Ty::Str
            }
            ExprKind::Path(p) | ExprKind::Prev(p) => self.read(p),
            ExprKind::Var(_) => Ty::Str,
            ExprKind::Special(Special::Value) => self.value_ty,
            ExprKind::Special(_) => Ty::Str,
            ExprKind::Unary { op: UnaryOp::Neg, expr } => {
                let t = self.ty(expr);
                self.need_numeric(expr, t, "`-`");
                if t.numeric() { t } else { Ty::Any }
            }
            ExprKind::Unary { op: UnaryOp::Not, expr } => {
                let t = self.ty(expr);
                self.need_bool(expr, t, "`not`");
                Ty::Bool
            }
            ExprKind::Binary { op, left, right } => self.binary(e, *op, left, right),
            ExprKind::In { expr, list, .. } => {
                let t = self.ty(expr);
                let lt = self.ty(list);
                if !matches!(lt, Ty::Arr | Ty::Any) {
                    self.out.push(Diagnostic::error(
                        DiagCode::TypeMismatch,
                        list.span,
                        format!("`in` looks in a list, e.g. `x in [\"a\", \"b\"]`, but `{list}` is {}", lt.describe()),
                    ));
                }
                if let ExprKind::List(items) = &list.kind {
                    for item in items {
                        let it = self.ty(item);
                        if !t.compatible(it) {
                            self.out.push(Diagnostic::error(
                                DiagCode::TypeMismatch,
                                item.span,
                                format!(
                                    "`{expr}` is {} and can never equal `{item}`, which is {}",
                                    t.describe(),
                                    it.describe()
                                ),
                            ));
                        }
                    }
                }
                Ty::Bool
            }
            ExprKind::Hysteresis { expr, on, off, direction } => {
                let t = self.ty(expr);
                self.need_numeric(expr, t, "a hysteresis");
                let (ton, toff) = (self.ty(on), self.ty(off));
                self.need_numeric(on, ton, "a threshold");
                self.need_numeric(off, toff, "a threshold");
                if let (Some(a), Some(b)) = (constant_number(on), constant_number(off)) {
                    let wrong = match direction {
                        Direction::Above => b > a,
                        Direction::Below => b < a,
                    };
                    if wrong {
                        let (w1, w2) = match direction {
                            Direction::Above => ("below", "above"),
                            Direction::Below => ("above", "below"),
                        };
                        self.out.push(Diagnostic::error(
                            DiagCode::InvalidValue,
                            off.span,
                            format!(
                                "the `until {w1}` threshold ({b}) is {w2} the switch-on threshold ({a}), so the \
                                 condition would switch off at once; e.g. `above 70 until below 65`"
                            ),
                        ));
                    }
                }
                Ty::Bool
            }
            ExprKind::Hold { expr, .. } => {
                let t = self.ty(expr);
                self.need_bool(expr, t, "`for`");
                Ty::Bool
            }
            ExprKind::Aggregate { func, path, .. } => {
                let t = self.read(path);
                if func.is_numeric() && !t.numeric() {
                    self.out.push(Diagnostic::error(
                        DiagCode::NotNumeric,
                        e.span,
                        format!(
                            "`{}` needs a resource that holds numbers, but `{path}` holds {}; `count` works on \
                             any resource",
                            func.as_str(),
                            t.describe()
                        ),
                    ));
                }
                if *func == AggFunc::Count { Ty::Int } else { Ty::Num }
            }
            ExprKind::Call { func, args } => self.call(*func, args),
            ExprKind::List(items) => {
                for item in items {
                    self.ty(item);
                }
                Ty::Arr
            }
            ExprKind::Object(entries) => {
                for entry in entries {
                    self.ty(&entry.value);
                }
                Ty::Obj
            }
        }
    }

    fn binary(&mut self, e: &Expr, op: BinaryOp, left: &Expr, right: &Expr) -> Ty {
        let (lt, rt) = (self.ty(left), self.ty(right));
        match op {
            BinaryOp::And | BinaryOp::Or => {
                self.need_bool(left, lt, &format!("`{}`", op.as_str()));
                self.need_bool(right, rt, &format!("`{}`", op.as_str()));
                Ty::Bool
            }
            BinaryOp::Eq | BinaryOp::Ne => {
                if !lt.compatible(rt) {
                    self.out.push(Diagnostic::error(
                        DiagCode::TypeMismatch,
                        e.span,
                        format!(
                            "`{left}` is {} and `{right}` is {}: they can never be equal; compare values of the \
                             same type",
                            lt.describe(),
                            rt.describe()
                        ),
                    ));
                }
                Ty::Bool
            }
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
                let ok = (lt.numeric() && rt.numeric())
                    || (lt == Ty::Str && rt == Ty::Str)
                    || lt == Ty::Any
                    || rt == Ty::Any;
                if !ok {
                    self.out.push(Diagnostic::error(
                        DiagCode::TypeMismatch,
                        e.span,
                        format!(
                            "`{}` compares two numbers or two strings, but `{left}` is {} and `{right}` is {}",
                            op.as_str(),
                            lt.describe(),
                            rt.describe()
                        ),
                    ));
                }
                Ty::Bool
            }
            BinaryOp::Add if lt == Ty::Str && rt == Ty::Str => Ty::Str,
            _ => {
                let what = format!("`{}`", op.as_str());
                self.need_numeric(left, lt, &what);
                self.need_numeric(right, rt, &what);
                match (lt, rt) {
                    (Ty::Int, Ty::Int) if op != BinaryOp::Div => Ty::Int,
                    (Ty::Any, _) | (_, Ty::Any) => Ty::Any,
                    _ => Ty::Num,
                }
            }
        }
    }

    fn call(&mut self, func: Func, args: &[Expr]) -> Ty {
        let tys: Vec<Ty> = args.iter().map(|a| self.ty(a)).collect();
        let first = args.first().zip(tys.first().copied());
        let second = args.get(1).zip(tys.get(1).copied());
        let name = format!("`{}`", func.as_str());
        let need = |cx: &mut Self, arg: Option<(&Expr, Ty)>, ok: fn(Ty) -> bool, wanted: &str| {
            if let Some((a, t)) = arg
                && !ok(t)
            {
                cx.out.push(Diagnostic::error(
                    DiagCode::TypeMismatch,
                    a.span,
                    format!("{name} needs {wanted}, but `{a}` is {}", t.describe()),
                ));
            }
        };
        let string = |t: Ty| matches!(t, Ty::Str | Ty::Any);
        match func {
            Func::Abs => {
                need(self, first, Ty::numeric, "a number");
                first.map_or(Ty::Any, |(_, t)| if t == Ty::Int { Ty::Int } else { Ty::Num })
            }
            Func::Round | Func::Floor | Func::Ceil => {
                need(self, first, Ty::numeric, "a number");
                Ty::Int
            }
            Func::Len => {
                need(self, first, |t| matches!(t, Ty::Str | Ty::Arr | Ty::Any), "a string or a list");
                Ty::Int
            }
            Func::Lower | Func::Upper => {
                need(self, first, string, "a string");
                Ty::Str
            }
            Func::Contains => {
                need(self, first, |t| matches!(t, Ty::Str | Ty::Arr | Ty::Any), "a string or a list");
                if first.is_some_and(|(_, t)| t == Ty::Str) {
                    need(self, second, string, "a string to look for");
                }
                Ty::Bool
            }
            Func::StartsWith | Func::EndsWith => {
                need(self, first, string, "a string");
                need(self, second, string, "a string");
                Ty::Bool
            }
        }
    }

    fn action(&mut self, a: &ActionSpec) {
        for e in a.kind.exprs() {
            self.ty(e);
        }
        match &a.kind {
            ActionKind::Set { path, value } => {
                let vt = self.ty_quiet(value);
                for info in self.targets(path) {
                    if !info.kind.is_settable() {
                        let message = match info.kind {
                            ResourceKind::Action => {
                                format!("`{path}` is an action: invoke it with `act {path}(...)` instead of `set`")
                            }
                            _ => format!(
                                "`{path}` is a {}: sensors are measured, not set; set a state or property, or \
                                 use `act` on an action",
                                info.kind
                            ),
                        };
                        self.out.push(Diagnostic::error(DiagCode::NotSettable, path.span, message));
                        break;
                    }
                    if !vt.fits(info.value_type) {
                        let hint = if info.value_type == ValueType::Integer && vt == Ty::Num {
                            "; round it, e.g. `round(...)`"
                        } else {
                            ""
                        };
                        self.out.push(Diagnostic::error(
                            DiagCode::TypeMismatch,
                            value.span,
                            format!(
                                "`{path}` holds {}, but `{value}` is {}{hint}",
                                describe_vt(info.value_type),
                                vt.describe()
                            ),
                        ));
                        break;
                    }
                }
            }
            ActionKind::Act { path, params } => {
                let Some(info) = self.targets(path).into_iter().next() else { return };
                if info.kind != ResourceKind::Action {
                    let message = match info.kind {
                        ResourceKind::Sensor => format!("`{path}` is a sensor, not an action: it cannot be acted on"),
                        kind => {
                            format!("`{path}` is a {kind}, not an action: write `set {path} = <value>` to change it")
                        }
                    };
                    self.out.push(Diagnostic::error(DiagCode::NotAnAction, path.span, message));
                    return;
                }
                let declared = || -> String {
                    if info.parameters.is_empty() {
                        return "it takes no parameters".into();
                    }
                    let list: Vec<String> = info.parameters.iter().map(|(n, t)| format!("{n} ({t})")).collect();
                    format!("its parameters are {}", list.join(", "))
                };
                for p in params {
                    let Some(vt) = info.parameters.get(p.key.as_str()) else {
                        let hint = match closest(&p.key, info.parameters.keys().map(Name::as_str)) {
                            Some(best) => format!("; did you mean `{best}`?"),
                            None => format!("; {}", declared()),
                        };
                        self.out.push(Diagnostic::error(
                            DiagCode::UnknownParameter,
                            p.key_span,
                            format!("`{path}` has no parameter `{}`{hint}", p.key),
                        ));
                        continue;
                    };
                    let t = self.ty_quiet(&p.value);
                    if !t.fits(*vt) {
                        let hint =
                            if *vt == ValueType::Integer && t == Ty::Num { "; round it with `round(...)`" } else { "" };
                        self.out.push(Diagnostic::error(
                            DiagCode::ParameterType,
                            p.value.span,
                            format!(
                                "parameter `{}` of `{path}` takes {}, but `{}` is {}{hint}",
                                p.key,
                                describe_vt(*vt),
                                p.value,
                                t.describe()
                            ),
                        ));
                    }
                }
                for (name, vt) in &info.parameters {
                    if !params.iter().any(|p| p.key == name.as_str()) {
                        self.out.push(Diagnostic::error(
                            DiagCode::MissingParameter,
                            path.span,
                            format!(
                                "`{path}` needs parameter `{name}` ({vt}): add `{name} = ...` inside the parentheses"
                            ),
                        ));
                    }
                }
            }
            ActionKind::Publish { .. } | ActionKind::Notify { .. } | ActionKind::Call { .. } => {}
        }
    }

    /// The type of an expression already checked, without reporting its problems again.
    fn ty_quiet(&mut self, e: &Expr) -> Ty {
        let before = self.out.len();
        let t = self.ty(e);
        self.out.truncate(before);
        t
    }

    /// The resources an action targets; reports a missing resource or an empty wildcard.
    fn targets(&mut self, p: &PathPattern) -> Vec<ResourceInfo> {
        let key = p.to_string();
        match self.resolve(p) {
            Resolution::Found(infos) => infos,
            Resolution::Missing(message) => {
                self.report_once(key, Diagnostic::error(DiagCode::UnknownResource, p.span, message));
                Vec::new()
            }
            Resolution::NoMatch => {
                let message = format!("no resource matches `{p}` yet; the action is skipped until one exists");
                self.report_once(key, Diagnostic::warning(DiagCode::NoMatch, p.span, message));
                Vec::new()
            }
        }
    }
}

fn constant_number(e: &Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Number { value, .. } => Some(*value),
        ExprKind::Unary { op: UnaryOp::Neg, expr } => constant_number(expr).map(|v| -v),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rule sets: feedback loops and conflicts

/// What the set analysis needs to know about one rule.
struct Facts<'a> {
    rule: &'a Rule,
    new: bool,
    /// Fires on every update of what it reads (`on update`, `on change`, provider status), rather than on a
    /// change of a condition.
    event: bool,
    /// Paths whose updates can make the rule fire.
    triggers: Vec<PathPattern>,
    /// Resources the rule's SETs write: (path, span of the action, value, in the `else` branch).
    writes: Vec<(&'a PathPattern, Span, &'a Expr, bool)>,
}

fn facts(rule: &Rule, new: bool) -> Facts<'_> {
    let triggers = match &rule.trigger {
        Trigger::When(e) => e.paths().into_iter().cloned().collect(),
        Trigger::Update { paths, .. } => paths.clone(),
        Trigger::Status { provider, span, .. } => match (Name::new(hub_model::ADMIN_SERVICE), Name::new("status")) {
            (Ok(admin), Ok(status)) => vec![PathPattern {
                segments: [provider.clone(), Segment::Name(admin), Segment::Name(status)],
                span: *span,
            }],
            _ => Vec::new(),
        },
        Trigger::Schedule { .. } => Vec::new(),
    };
    // Only SET writes a resource; what an ACT does is up to the device.
    let mut writes = Vec::new();
    for (branch, list) in [(false, &rule.then), (true, &rule.otherwise)] {
        for a in list {
            if let ActionKind::Set { path, value } = &a.kind {
                writes.push((path, a.span, value, branch));
            }
        }
    }
    let event = matches!(rule.trigger, Trigger::Update { .. } | Trigger::Status { .. });
    Facts { rule, new, event, triggers, writes }
}

/// Whether two segments can match the same name.
fn segments_overlap(a: &Segment, b: &Segment) -> bool {
    match (a, b) {
        (Segment::Name(x), Segment::Name(y)) => x == y,
        (Segment::Name(x), var) | (var, Segment::Name(x)) => var.accepts(x.as_str()),
        // Two globs may or may not share a name; assume they do.
        (Segment::Var { .. }, Segment::Var { .. }) => true,
    }
}

/// Whether two path patterns can match the same resource.
pub(crate) fn paths_overlap(a: &PathPattern, b: &PathPattern) -> bool {
    a.segments.iter().zip(&b.segments).all(|(x, y)| segments_overlap(x, y))
}

fn check_set(new: &[Rule], deployed: &[&Rule]) -> Vec<Diagnostic> {
    let all: Vec<Facts<'_>> =
        new.iter().map(|r| facts(r, true)).chain(deployed.iter().map(|r| facts(r, false))).collect();
    let mut out = loops(&all);
    out.extend(conflicts(&all));
    out
}

/// The edges out of rule `i`: (target rule, index of the write in `i`).
fn edges(all: &[Facts<'_>], i: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let Some(from) = all.get(i) else { return out };
    for (j, to) in all.iter().enumerate() {
        let triggers = |(p, _, value, _): &(&PathPattern, Span, &Expr, bool)| {
            to.triggers.iter().any(|t| paths_overlap(p, t)) && !settles(to.rule, p, value)
        };
        if let Some(w) = from.writes.iter().position(triggers) {
            out.push((j, w));
        }
    }
    out
}

/// Whether writing the constant `value` to `path` can only make `rule`'s condition false: then the write
/// cannot fire the rule (a `when` rule fires on a rising edge; without `else`, a falling one does nothing).
fn settles(rule: &Rule, path: &PathPattern, value: &Expr) -> bool {
    let Trigger::When(condition) = &rule.trigger else { return false };
    if !rule.otherwise.is_empty() {
        return false;
    }
    let Some(key) = constant_key(value) else { return false };
    let written = match constant_number(value) {
        Some(n) => range(canonical(path), BinaryOp::Eq, n),
        None => Some(Constraint::OneOf { path: canonical(path), values: vec![key] }),
    };
    let mut required = Vec::new();
    constraints(condition, &mut required);
    written.is_some_and(|w| disjoint(&required, &[w]))
}

fn loops(all: &[Facts<'_>]) -> Vec<Diagnostic> {
    let graph: Vec<Vec<(usize, usize)>> = (0..all.len()).map(|i| edges(all, i)).collect();
    let mut seen: HashSet<BTreeSet<usize>> = HashSet::new();
    let mut out = Vec::new();
    for (start, f) in all.iter().enumerate() {
        if !f.new {
            continue;
        }
        // Breadth-first search for the shortest way back to `start`.
        let mut parent: HashMap<usize, (usize, usize)> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut closing: Option<(usize, usize)> = None;
        'search: while let Some(node) = queue.pop_front() {
            for &(next, write) in graph.get(node).map(Vec::as_slice).unwrap_or(&[]) {
                if next == start {
                    closing = Some((node, write));
                    break 'search;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(next) {
                    e.insert((node, write));
                    queue.push_back(next);
                }
            }
        }
        let Some((last, last_write)) = closing else { continue };
        // Rebuild the cycle start -> ... -> last -> start as (rule, write) steps.
        let mut steps = vec![(last, last_write)];
        let mut node = last;
        while node != start {
            let Some(&(prev, write)) = parent.get(&node) else { break };
            steps.push((prev, write));
            node = prev;
        }
        steps.reverse();
        let members: BTreeSet<usize> = steps.iter().map(|(r, _)| *r).collect();
        if !seen.insert(members) {
            continue;
        }
        out.push(loop_diagnostic(all, &steps));
    }
    out
}

fn loop_diagnostic(all: &[Facts<'_>], steps: &[(usize, usize)]) -> Diagnostic {
    let name = |i: usize| all.get(i).map_or("?", |f| f.rule.name.as_str());
    let write = |i: usize, w: usize| all.get(i).and_then(|f| f.writes.get(w));
    let event = steps.iter().any(|(r, _)| all.get(*r).is_some_and(|f| f.event));
    let (first_rule, first_write) = steps.first().copied().unwrap_or((0, 0));
    let span = write(first_rule, first_write).map_or(Span::default(), |w| w.1);
    let mut parts = Vec::new();
    for (k, &(r, w)) in steps.iter().enumerate() {
        let next = steps.get(k + 1).map_or(first_rule, |s| s.0);
        let (path, line) = write(r, w).map_or((String::new(), 0), |w| (w.0.to_string(), w.1.start.line));
        let target = if next == r { "itself".to_string() } else { format!("`{}`", name(next)) };
        parts.push(format!("`{}` sets `{path}` (line {line}), which triggers {target}", name(r)));
    }
    let chain = parts.join("; ");
    let diagnostic = if event {
        Diagnostic::error(
            DiagCode::FeedbackLoop,
            span,
            format!(
                "feedback loop: {chain}. A rule triggered `on update`, `on change` or by a provider status fires \
                 on every write, so this never stops: write to another resource or trigger on a condition"
            ),
        )
    } else if steps.len() > 1 {
        Diagnostic::error(
            DiagCode::FeedbackLoop,
            span,
            format!(
                "feedback loop: {chain}. Each firing can start the next and the rules may oscillate; break the \
                 cycle, e.g. have one rule write a resource the other does not read"
            ),
        )
    } else {
        // Writing what one's own condition reads is how auto-off rules work: a warning, not an error.
        Diagnostic::warning(
            DiagCode::FeedbackLoop,
            span,
            format!(
                "possible feedback loop: {chain}. Make sure the value written makes the condition false, or the \
                 rule may fire again and again"
            ),
        )
    };
    diagnostic.in_rule(name(first_rule))
}

/// A fact about a resource's value that a condition implies while it holds.
#[derive(Debug, Clone, PartialEq)]
enum Constraint {
    /// The value lies in a range.
    Range { path: String, lo: f64, lo_incl: bool, hi: f64, hi_incl: bool },
    /// The value is one of these constants (written as JSON text).
    OneOf { path: String, values: Vec<String> },
}

/// The path as written, with variables anonymised so `$p/a/b` and `$q/a/b` compare equal.
fn canonical(p: &PathPattern) -> String {
    let seg = |s: &Segment| match s {
        Segment::Name(n) => n.to_string(),
        Segment::Var { glob: None, .. } => "$".into(),
        Segment::Var { glob: Some(g), .. } => format!("$:{}", g.as_str()),
    };
    let [a, b, c] = &p.segments;
    format!("{}/{}/{}", seg(a), seg(b), seg(c))
}

fn constant_key(e: &Expr) -> Option<String> {
    match &e.kind {
        ExprKind::Bool(b) => Some(b.to_string()),
        ExprKind::Str(t) => t.as_literal().map(|s| serde_json::Value::String(s).to_string()),
        _ => constant_number(e).map(|n| format!("{n}")),
    }
}

fn range(path: String, op: BinaryOp, c: f64) -> Option<Constraint> {
    let (inf, ninf) = (f64::INFINITY, f64::NEG_INFINITY);
    let (lo, lo_incl, hi, hi_incl) = match op {
        BinaryOp::Gt => (c, false, inf, false),
        BinaryOp::Ge => (c, true, inf, false),
        BinaryOp::Lt => (ninf, false, c, false),
        BinaryOp::Le => (ninf, false, c, true),
        BinaryOp::Eq => (c, true, c, true),
        _ => return None,
    };
    Some(Constraint::Range { path, lo, lo_incl, hi, hi_incl })
}

fn flip(op: BinaryOp) -> BinaryOp {
    match op {
        BinaryOp::Gt => BinaryOp::Lt,
        BinaryOp::Ge => BinaryOp::Le,
        BinaryOp::Lt => BinaryOp::Gt,
        BinaryOp::Le => BinaryOp::Ge,
        other => other,
    }
}

/// One comparison of a resource with a constant, as (path, operator, constant).
fn comparison(e: &Expr) -> Option<(&PathPattern, BinaryOp, &Expr)> {
    let ExprKind::Binary { op, left, right } = &e.kind else { return None };
    match (&left.kind, &right.kind) {
        (ExprKind::Path(p), _) if constant_key(right).is_some() => Some((p, *op, right)),
        (_, ExprKind::Path(p)) if constant_key(left).is_some() => Some((p, flip(*op), left)),
        _ => None,
    }
}

fn single(e: &Expr) -> Option<Constraint> {
    if let Some((p, op, c)) = comparison(e) {
        return match (op, constant_number(c)) {
            (BinaryOp::Eq, None) => {
                Some(Constraint::OneOf { path: canonical(p), values: constant_key(c).into_iter().collect() })
            }
            (_, Some(n)) => range(canonical(p), op, n),
            _ => None,
        };
    }
    match &e.kind {
        ExprKind::Path(p) => Some(Constraint::OneOf { path: canonical(p), values: vec!["true".into()] }),
        ExprKind::Unary { op: UnaryOp::Not, expr } => match &expr.kind {
            ExprKind::Path(p) => Some(Constraint::OneOf { path: canonical(p), values: vec!["false".into()] }),
            _ => None,
        },
        ExprKind::In { expr, list, negated: false } => match (&expr.kind, &list.kind) {
            (ExprKind::Path(p), ExprKind::List(items)) => {
                let values: Option<Vec<String>> = items.iter().map(constant_key).collect();
                values.map(|values| Constraint::OneOf { path: canonical(p), values })
            }
            _ => None,
        },
        ExprKind::Hysteresis { expr, off, direction, .. } => match (&expr.kind, constant_number(off)) {
            (ExprKind::Path(p), Some(off)) => match direction {
                Direction::Above => range(canonical(p), BinaryOp::Ge, off),
                Direction::Below => range(canonical(p), BinaryOp::Le, off),
            },
            _ => None,
        },
        _ => None,
    }
}

/// What a condition implies while it holds (only what can be read off `and`s of simple comparisons).
fn constraints(e: &Expr, out: &mut Vec<Constraint>) {
    match &e.kind {
        ExprKind::Binary { op: BinaryOp::And, left, right } => {
            constraints(left, out);
            constraints(right, out);
        }
        ExprKind::Hold { expr, .. } => constraints(expr, out),
        _ => out.extend(single(e)),
    }
}

/// What holds when a condition does not: only known for a single comparison.
fn negated(e: &Expr) -> Vec<Constraint> {
    let e = match &e.kind {
        ExprKind::Hold { .. } => return Vec::new(),
        _ => e,
    };
    if let Some((p, op, c)) = comparison(e) {
        let negated_op = match op {
            BinaryOp::Gt => BinaryOp::Le,
            BinaryOp::Ge => BinaryOp::Lt,
            BinaryOp::Lt => BinaryOp::Ge,
            BinaryOp::Le => BinaryOp::Gt,
            _ => return Vec::new(),
        };
        return constant_number(c).and_then(|n| range(canonical(p), negated_op, n)).into_iter().collect();
    }
    match &e.kind {
        ExprKind::Path(p) => vec![Constraint::OneOf { path: canonical(p), values: vec!["false".into()] }],
        _ => Vec::new(),
    }
}

fn disjoint(a: &[Constraint], b: &[Constraint]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (
                Constraint::Range { path: p1, lo: l1, lo_incl: li1, hi: h1, hi_incl: hi1 },
                Constraint::Range { path: p2, lo: l2, lo_incl: li2, hi: h2, hi_incl: hi2 },
            ) if p1 == p2 => {
                let (lo, lo_incl) = if l1 > l2 || (l1 == l2 && !li1) { (*l1, *li1) } else { (*l2, *li2) };
                let (hi, hi_incl) = if h1 < h2 || (h1 == h2 && !hi1) { (*h1, *hi1) } else { (*h2, *hi2) };
                lo > hi || (lo == hi && !(lo_incl && hi_incl))
            }
            (Constraint::OneOf { path: p1, values: v1 }, Constraint::OneOf { path: p2, values: v2 }) if p1 == p2 => {
                !v1.iter().any(|v| v2.contains(v))
            }
            _ => false,
        })
    })
}

/// What holds while a branch of a rule runs.
fn branch_constraints(rule: &Rule, otherwise: bool) -> Vec<Constraint> {
    let condition = match (&rule.trigger, &rule.guard) {
        (Trigger::When(e), _) | (_, Some(e)) => e,
        _ => return Vec::new(),
    };
    if otherwise {
        negated(condition)
    } else {
        let mut out = Vec::new();
        constraints(condition, &mut out);
        out
    }
}

fn same_timing(a: &Rule, b: &Rule) -> Option<bool> {
    match (&a.trigger, &b.trigger) {
        (Trigger::Schedule { every: e1, at: a1, .. }, Trigger::Schedule { every: e2, at: a2, .. }) => {
            Some(e1 == e2 && a1.unwrap_or(0) % (*e1).max(1) == a2.unwrap_or(0) % (*e2).max(1))
        }
        (Trigger::Schedule { .. }, _) | (_, Trigger::Schedule { .. }) => Some(false),
        _ => None,
    }
}

fn conflicts(all: &[Facts<'_>]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, a) in all.iter().enumerate() {
        for b in all.iter().skip(i + 1) {
            if !(a.new || b.new) || same_timing(a.rule, b.rule) == Some(false) {
                continue;
            }
            'pair: for (pa, span_a, va, else_a) in &a.writes {
                for (pb, span_b, vb, else_b) in &b.writes {
                    if !paths_overlap(pa, pb) {
                        continue;
                    }
                    if let (Some(x), Some(y)) = (constant_key(va), constant_key(vb))
                        && x == y
                    {
                        continue;
                    }
                    if disjoint(&branch_constraints(a.rule, *else_a), &branch_constraints(b.rule, *else_b)) {
                        continue;
                    }
                    let (here, there, span, other_span) =
                        if a.new { (a, b, *span_a, *span_b) } else { (b, a, *span_b, *span_a) };
                    let target = if a.new { pa } else { pb };
                    out.push(
                        Diagnostic::warning(
                            DiagCode::Conflict,
                            span,
                            format!(
                                "rules `{}` and `{}` (line {}) both set `{target}` and their conditions can hold \
                                 at the same time, so whichever fires last wins; make the conditions exclusive \
                                 (e.g. `> 70` and `< 65`) or set it from one rule",
                                here.rule.name, there.rule.name, other_span.start.line
                            ),
                        )
                        .in_rule(here.rule.name.as_str()),
                    );
                    break 'pair;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn constraint_of(src: &str) -> Vec<Constraint> {
        let rules = parse(&format!("rule r when {src} then publish \"x\" end")).unwrap();
        let Trigger::When(e) = &rules[0].trigger else { panic!() };
        let mut out = Vec::new();
        constraints(e, &mut out);
        out
    }

    #[test]
    fn ranges_and_sets_are_compared() {
        assert!(disjoint(&constraint_of("a/b/c > 70"), &constraint_of("a/b/c < 65")));
        assert!(disjoint(&constraint_of("a/b/c >= 70"), &constraint_of("a/b/c < 70")));
        assert!(!disjoint(&constraint_of("a/b/c >= 70"), &constraint_of("a/b/c <= 70")));
        assert!(!disjoint(&constraint_of("a/b/c > 60"), &constraint_of("a/b/c < 65")));
        assert!(disjoint(&constraint_of("x/y/z == \"a\""), &constraint_of("x/y/z in [\"b\", \"c\"]")));
        assert!(disjoint(&constraint_of("$p/y/z"), &constraint_of("not $q/y/z")));
        assert!(!disjoint(&constraint_of("a/b/c > 70 or a/b/c < 0"), &constraint_of("a/b/c < 65")));
        assert!(disjoint(&constraint_of("70 < a/b/c for 5m and d/e/f > 1"), &constraint_of("a/b/c < 65")));
    }
}
