//! Compilation of a checked [`Rule`] into the form the engine evaluates: resource reads become indices into
//! an instance's slots, stateful constructs (`for`, hysteresis, windows) become indices into its state.

use std::{collections::HashMap, sync::Arc};

use hub_model::{Glob, Name};

use crate::{
    ast::{
        ActionKind, AggFunc, BinaryOp, Direction, Expr, ExprKind, Func, Micros, PathPattern, Rule, Segment, Special,
        Template, TemplatePart, Trigger, UnaryOp, Window,
    },
    value::Val,
};

/// An expression ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) enum CExpr {
    Const(Val),
    /// The current value of read `n`.
    Cur(u16),
    /// The previous value of read `n`.
    Prev(u16),
    /// The name bound to variable `n`.
    Var(u16),
    Special(Special),
    Neg(Box<CExpr>),
    Not(Box<CExpr>),
    Arith(BinaryOp, Box<CExpr>, Box<CExpr>),
    Cmp(BinaryOp, Box<CExpr>, Box<CExpr>),
    /// `and`; the flag says the right side must be evaluated even when the left decides (it keeps state).
    And(Box<CExpr>, Box<CExpr>, bool),
    Or(Box<CExpr>, Box<CExpr>, bool),
    In(Box<CExpr>, Box<CExpr>, bool),
    Hyst {
        state: u16,
        x: Box<CExpr>,
        on: Box<CExpr>,
        off: Box<CExpr>,
        direction: Direction,
    },
    Hold {
        state: u16,
        x: Box<CExpr>,
        duration: Micros,
    },
    Window {
        state: u16,
        func: AggFunc,
    },
    Call(Func, Vec<CExpr>),
    List(Vec<CExpr>),
    Object(Vec<(Arc<str>, CExpr)>),
    Template(Vec<CPart>),
}

#[derive(Debug, Clone)]
pub(crate) enum CPart {
    Text(Arc<str>),
    Expr(CExpr),
}

impl CExpr {
    fn keeps_state(&self) -> bool {
        match self {
            CExpr::Hyst { .. } | CExpr::Hold { .. } => true,
            CExpr::Neg(x) | CExpr::Not(x) => x.keeps_state(),
            CExpr::Arith(_, a, b)
            | CExpr::Cmp(_, a, b)
            | CExpr::And(a, b, _)
            | CExpr::Or(a, b, _)
            | CExpr::In(a, b, _) => a.keeps_state() || b.keeps_state(),
            CExpr::Call(_, xs) | CExpr::List(xs) => xs.iter().any(CExpr::keeps_state),
            CExpr::Object(xs) => xs.iter().any(|(_, x)| x.keeps_state()),
            CExpr::Template(parts) => parts.iter().any(|p| matches!(p, CPart::Expr(x) if x.keeps_state())),
            CExpr::Const(_) | CExpr::Cur(_) | CExpr::Prev(_) | CExpr::Var(_) | CExpr::Special(_) => false,
            CExpr::Window { .. } => false,
        }
    }
}

/// The state a construct keeps per instance.
#[derive(Debug, Clone)]
pub(crate) enum StateSpec {
    Hold,
    Hyst,
    Window { window: Window, func: AggFunc },
}

/// A value shown in a firing's evidence.
#[derive(Debug, Clone)]
pub(crate) enum EvidenceSpec {
    Cur(u16),
    Prev(u16),
    Window { state: u16, func: AggFunc, window: Window, read: u16 },
}

#[derive(Debug, Clone)]
pub(crate) enum CAction {
    Act { path: PathPattern, params: Vec<(Arc<str>, CExpr)> },
    Set { path: PathPattern, value: CExpr },
    Publish { topic: CExpr, payload: Option<CExpr> },
    Notify { url: CExpr, body: Option<CExpr>, retries: Option<u32> },
    Call { app: Name, params: Vec<(Arc<str>, CExpr)> },
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    When(CExpr),
    Update { changes_only: bool },
    Status { provider: Segment, online: bool },
    Schedule { every: Micros, at: Micros },
}

/// A rule ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) kind: Kind,
    /// Variable names, in the order instance bindings store them.
    pub(crate) vars: Vec<String>,
    /// The distinct resource patterns the rule reads.
    pub(crate) reads: Vec<PathPattern>,
    /// Per read: whether an update of it evaluates the rule.
    pub(crate) triggers: Vec<bool>,
    /// Per read: the window states it feeds.
    pub(crate) windows_by_read: Vec<Vec<u16>>,
    pub(crate) states: Vec<StateSpec>,
    /// Patterns whose matches create instances (each mentions every variable).
    pub(crate) binders: Vec<PathPattern>,
    pub(crate) guard: Option<CExpr>,
    pub(crate) then: Vec<CAction>,
    pub(crate) otherwise: Vec<CAction>,
    pub(crate) cooldown: Option<Micros>,
    pub(crate) evidence: Vec<EvidenceSpec>,
}

struct Cx {
    vars: Vec<String>,
    globs: HashMap<String, Glob>,
    reads: Vec<PathPattern>,
    triggers: Vec<bool>,
    windows_by_read: Vec<Vec<u16>>,
    states: Vec<StateSpec>,
    evidence: Vec<EvidenceSpec>,
    /// Reads made now are triggers (inside the `when` condition or the `on update` paths).
    triggering: bool,
    /// Values read now are evidence (inside the condition or the guard).
    collecting: bool,
}

/// Compiles a rule that passed [`crate::check_structure`].
pub(crate) fn compile(rule: &Rule) -> Compiled {
    let mut cx = Cx {
        vars: Vec::new(),
        globs: HashMap::new(),
        reads: Vec::new(),
        triggers: Vec::new(),
        windows_by_read: Vec::new(),
        states: Vec::new(),
        evidence: Vec::new(),
        triggering: false,
        collecting: false,
    };
    cx.collect_globs(rule);
    let kind = match &rule.trigger {
        Trigger::When(e) => {
            cx.triggering = true;
            cx.collecting = true;
            let c = cx.expr(e);
            cx.triggering = false;
            cx.collecting = false;
            Kind::When(c)
        }
        Trigger::Update { paths, changes_only, .. } => {
            cx.triggering = true;
            for p in paths {
                let read = cx.read(p);
                cx.evidence.push(EvidenceSpec::Cur(read));
            }
            cx.triggering = false;
            Kind::Update { changes_only: *changes_only }
        }
        Trigger::Status { provider, online, .. } => {
            if let Some(v) = provider.var() {
                cx.var(v);
            }
            Kind::Status { provider: cx.normalize_segment(provider), online: *online }
        }
        Trigger::Schedule { every, at, .. } => Kind::Schedule { every: (*every).max(1), at: at.unwrap_or(0) },
    };
    let guard = rule.guard.as_ref().map(|g| {
        cx.collecting = true;
        let c = cx.expr(g);
        cx.collecting = false;
        c
    });
    let then = rule.then.iter().map(|a| cx.action(&a.kind)).collect();
    let otherwise = rule.otherwise.iter().map(|a| cx.action(&a.kind)).collect();

    let binders = match &rule.trigger {
        Trigger::Status { .. } => Vec::new(),
        _ if cx.vars.is_empty() => Vec::new(),
        trigger => {
            let candidates: Vec<PathPattern> = match trigger {
                Trigger::When(e) => e.paths().into_iter().cloned().collect(),
                Trigger::Update { paths, .. } => paths.clone(),
                _ => {
                    let mut all: Vec<PathPattern> = cx.reads.clone();
                    all.extend(rule.actions().filter_map(|a| a.kind.target()).cloned());
                    all
                }
            };
            let mut out: Vec<PathPattern> = Vec::new();
            for p in candidates {
                let p = cx.normalize(&p);
                let vars = p.vars();
                if cx.vars.iter().all(|v| vars.contains(&v.as_str())) && !out.iter().any(|q| q.same_as(&p)) {
                    out.push(p);
                }
            }
            out
        }
    };
    Compiled {
        kind,
        vars: cx.vars,
        reads: cx.reads,
        triggers: cx.triggers,
        windows_by_read: cx.windows_by_read,
        states: cx.states,
        binders,
        guard,
        then,
        otherwise,
        cooldown: rule.cooldown,
        evidence: cx.evidence,
    }
}

fn boxed(e: CExpr) -> Box<CExpr> {
    Box::new(e)
}

fn index(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl Cx {
    /// A variable's pattern applies wherever the variable appears.
    fn collect_globs(&mut self, rule: &Rule) {
        let mut segments: Vec<&Segment> = Vec::new();
        if let Trigger::Status { provider, .. } = &rule.trigger {
            segments.push(provider);
        }
        let mut paths: Vec<&PathPattern> = Vec::new();
        if let Trigger::Update { paths: ps, .. } = &rule.trigger {
            paths.extend(ps.iter());
        }
        for (_, e) in rule.exprs() {
            paths.extend(e.paths());
        }
        paths.extend(rule.actions().filter_map(|a| a.kind.target()));
        segments.extend(paths.iter().flat_map(|p| p.segments.iter()));
        for s in segments {
            if let Segment::Var { name, glob: Some(g) } = s {
                self.globs.entry(name.clone()).or_insert_with(|| g.clone());
            }
        }
    }

    fn normalize_segment(&self, s: &Segment) -> Segment {
        match s {
            Segment::Var { name, .. } => Segment::Var { name: name.clone(), glob: self.globs.get(name).cloned() },
            other => other.clone(),
        }
    }

    fn normalize(&self, p: &PathPattern) -> PathPattern {
        let [a, b, c] = &p.segments;
        PathPattern {
            segments: [self.normalize_segment(a), self.normalize_segment(b), self.normalize_segment(c)],
            span: p.span,
        }
    }

    fn var(&mut self, name: &str) -> u16 {
        match self.vars.iter().position(|v| v == name) {
            Some(i) => index(i),
            None => {
                self.vars.push(name.to_string());
                index(self.vars.len() - 1)
            }
        }
    }

    fn read(&mut self, p: &PathPattern) -> u16 {
        let p = self.normalize(p);
        for v in p.vars() {
            self.var(v);
        }
        let i = match self.reads.iter().position(|q| q.same_as(&p)) {
            Some(i) => i,
            None => {
                self.reads.push(p);
                self.triggers.push(false);
                self.windows_by_read.push(Vec::new());
                self.reads.len() - 1
            }
        };
        if self.triggering
            && let Some(t) = self.triggers.get_mut(i)
        {
            *t = true;
        }
        index(i)
    }

    fn state(&mut self, spec: StateSpec) -> u16 {
        self.states.push(spec);
        index(self.states.len() - 1)
    }

    fn note(&mut self, e: EvidenceSpec) {
        if !self.collecting {
            return;
        }
        let duplicate = self.evidence.iter().any(|x| match (x, &e) {
            (EvidenceSpec::Cur(a), EvidenceSpec::Cur(b)) | (EvidenceSpec::Prev(a), EvidenceSpec::Prev(b)) => a == b,
            _ => false,
        });
        if !duplicate {
            self.evidence.push(e);
        }
    }

    fn template(&mut self, t: &Template) -> CExpr {
        if let Some(text) = t.as_literal() {
            return CExpr::Const(Val::Str(Arc::from(text)));
        }
        let parts = t
            .parts
            .iter()
            .map(|p| match p {
                TemplatePart::Text(s) => CPart::Text(Arc::from(s.as_str())),
                TemplatePart::Expr(e) => CPart::Expr(self.expr(e)),
            })
            .collect();
        CExpr::Template(parts)
    }

    fn expr(&mut self, e: &Expr) -> CExpr {
        match &e.kind {
            ExprKind::Number { value, .. } => CExpr::Const(Val::Num(*value)),
            ExprKind::Bool(b) => CExpr::Const(Val::Bool(*b)),
            ExprKind::Str(t) => self.template(t),
            ExprKind::Path(p) => {
                let r = self.read(p);
                self.note(EvidenceSpec::Cur(r));
                CExpr::Cur(r)
            }
            ExprKind::Prev(p) => {
                let r = self.read(p);
                self.note(EvidenceSpec::Prev(r));
                CExpr::Prev(r)
            }
            ExprKind::Var(name) => CExpr::Var(self.var(name)),
            ExprKind::Special(s) => CExpr::Special(*s),
            ExprKind::Unary { op: UnaryOp::Neg, expr } => CExpr::Neg(boxed(self.expr(expr))),
            ExprKind::Unary { op: UnaryOp::Not, expr } => CExpr::Not(boxed(self.expr(expr))),
            ExprKind::Binary { op, left, right } => {
                let (l, r) = (self.expr(left), self.expr(right));
                match op {
                    BinaryOp::And => {
                        let both = r.keeps_state();
                        CExpr::And(boxed(l), boxed(r), both)
                    }
                    BinaryOp::Or => {
                        let both = r.keeps_state();
                        CExpr::Or(boxed(l), boxed(r), both)
                    }
                    op if op.is_comparison() => CExpr::Cmp(*op, boxed(l), boxed(r)),
                    op => CExpr::Arith(*op, boxed(l), boxed(r)),
                }
            }
            ExprKind::In { expr, list, negated } => CExpr::In(boxed(self.expr(expr)), boxed(self.expr(list)), *negated),
            ExprKind::Hysteresis { expr, on, off, direction } => {
                let (x, on, off) = (self.expr(expr), self.expr(on), self.expr(off));
                let state = self.state(StateSpec::Hyst);
                CExpr::Hyst { state, x: boxed(x), on: boxed(on), off: boxed(off), direction: *direction }
            }
            ExprKind::Hold { expr, duration } => {
                let x = self.expr(expr);
                let state = self.state(StateSpec::Hold);
                CExpr::Hold { state, x: boxed(x), duration: *duration }
            }
            ExprKind::Aggregate { func, path, window, .. } => {
                let read = self.read(path);
                let state = self.state(StateSpec::Window { window: *window, func: *func });
                if let Some(list) = self.windows_by_read.get_mut(usize::from(read)) {
                    list.push(state);
                }
                self.note(EvidenceSpec::Window { state, func: *func, window: *window, read });
                CExpr::Window { state, func: *func }
            }
            ExprKind::Call { func, args } => CExpr::Call(*func, args.iter().map(|a| self.expr(a)).collect()),
            ExprKind::List(items) => {
                let items: Vec<CExpr> = items.iter().map(|i| self.expr(i)).collect();
                let constants: Option<Vec<Val>> = items
                    .iter()
                    .map(|i| match i {
                        CExpr::Const(v) => Some(v.clone()),
                        _ => None,
                    })
                    .collect();
                match constants {
                    Some(values) => CExpr::Const(Val::List(values.into())),
                    None => CExpr::List(items),
                }
            }
            ExprKind::Object(entries) => {
                CExpr::Object(entries.iter().map(|en| (Arc::from(en.key.as_str()), self.expr(&en.value))).collect())
            }
        }
    }

    fn params(&mut self, params: &[crate::ast::Entry]) -> Vec<(Arc<str>, CExpr)> {
        params.iter().map(|p| (Arc::from(p.key.as_str()), self.expr(&p.value))).collect()
    }

    fn action(&mut self, a: &ActionKind) -> CAction {
        if let Some(target) = a.target() {
            for v in target.vars() {
                self.var(v);
            }
        }
        match a {
            ActionKind::Act { path, params } => {
                CAction::Act { path: self.normalize(path), params: self.params(params) }
            }
            ActionKind::Set { path, value } => CAction::Set { path: self.normalize(path), value: self.expr(value) },
            ActionKind::Publish { topic, payload } => {
                CAction::Publish { topic: self.template(topic), payload: payload.as_ref().map(|p| self.expr(p)) }
            }
            ActionKind::Notify { url, body, retries } => CAction::Notify {
                url: self.template(url),
                body: body.as_ref().map(|b| self.expr(b)),
                retries: *retries,
            },
            ActionKind::Call { app, params, .. } => CAction::Call { app: app.clone(), params: self.params(params) },
        }
    }
}
