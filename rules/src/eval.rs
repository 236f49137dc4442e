//! Evaluation of compiled expressions against an instance's slots and state.

use std::sync::Arc;

use hub_model::{Name, ResourcePath, Timestamp};

use crate::{
    ast::{BinaryOp, Direction, Func, Micros, Special},
    compile::{CExpr, CPart},
    small::SmallVec,
    value::{Val, equal, order},
    window::SlidingWindow,
};

/// The state one stateful construct keeps for one instance.
#[derive(Debug, Clone)]
pub(crate) enum NodeState {
    /// `for`: since when the condition has held.
    Hold {
        since: Option<Micros>,
    },
    /// Hysteresis: whether it is switched on.
    Hyst {
        latched: bool,
    },
    Window(Box<SlidingWindow>),
}

/// The engine's copy of one resource: its current and previous value and who reads it.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) path: ResourcePath,
    pub(crate) cur: Val,
    pub(crate) prev: Val,
    pub(crate) ts: Option<Micros>,
    pub(crate) readers: SmallVec<Reader, 2>,
    /// The provider was deleted: the next sight of this path binds rule instances again.
    pub(crate) rebind: bool,
}

/// An instance that reads a slot, and as which of its rule's reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Reader {
    pub(crate) inst: u32,
    pub(crate) read: u16,
}

/// What an evaluation sees.
pub(crate) struct Scope<'a> {
    pub(crate) slots: &'a [Slot],
    /// The instance's slot for each of its rule's reads.
    pub(crate) reads: &'a [u32],
    pub(crate) bindings: &'a [Name],
    pub(crate) rule: &'a Name,
    pub(crate) t: Micros,
    /// The slot of the update that last triggered the instance (`value`, `provider`, ...).
    pub(crate) trigger_slot: Option<u32>,
    /// The earliest time the result may change without an update (`for` deadlines, window expiries).
    pub(crate) wake: Option<Micros>,
}

impl Scope<'_> {
    pub(crate) fn slot(&self, read: u16) -> Option<&Slot> {
        self.reads.get(usize::from(read)).and_then(|&s| self.slots.get(s as usize))
    }

    fn wake_at(&mut self, t: Micros) {
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    fn trigger(&self) -> Option<&Slot> {
        self.trigger_slot.and_then(|s| self.slots.get(s as usize))
    }
}

fn kleene_and(l: Option<bool>, r: Option<bool>) -> Val {
    match (l, r) {
        (Some(false), _) | (_, Some(false)) => Val::Bool(false),
        (Some(true), Some(true)) => Val::Bool(true),
        _ => Val::Unknown,
    }
}

fn kleene_or(l: Option<bool>, r: Option<bool>) -> Val {
    match (l, r) {
        (Some(true), _) | (_, Some(true)) => Val::Bool(true),
        (Some(false), Some(false)) => Val::Bool(false),
        _ => Val::Unknown,
    }
}

fn finite(x: f64) -> Val {
    if x.is_finite() { Val::Num(x) } else { Val::Unknown }
}

fn arith(op: BinaryOp, l: &Val, r: &Val) -> Val {
    match (l, r) {
        (Val::Num(a), Val::Num(b)) => match op {
            BinaryOp::Add => finite(a + b),
            BinaryOp::Sub => finite(a - b),
            BinaryOp::Mul => finite(a * b),
            BinaryOp::Div if *b != 0.0 => finite(a / b),
            BinaryOp::Rem if *b != 0.0 => finite(a % b),
            _ => Val::Unknown,
        },
        (Val::Str(a), Val::Str(b)) if op == BinaryOp::Add => {
            let mut s = String::with_capacity(a.len() + b.len());
            s.push_str(a);
            s.push_str(b);
            Val::Str(Arc::from(s))
        }
        _ => Val::Unknown,
    }
}

fn compare(op: BinaryOp, l: &Val, r: &Val) -> Val {
    if l.is_unknown() || r.is_unknown() {
        return Val::Unknown;
    }
    let result = match op {
        BinaryOp::Eq => equal(l, r),
        BinaryOp::Ne => equal(l, r).map(|e| !e),
        BinaryOp::Lt => order(l, r).map(|o| o.is_lt()),
        BinaryOp::Le => order(l, r).map(|o| o.is_le()),
        BinaryOp::Gt => order(l, r).map(|o| o.is_gt()),
        BinaryOp::Ge => order(l, r).map(|o| o.is_ge()),
        _ => None,
    };
    result.map_or(Val::Unknown, Val::Bool)
}

fn call(func: Func, args: &[Val]) -> Val {
    let first = args.first().unwrap_or(&Val::Unknown);
    let second = args.get(1).unwrap_or(&Val::Unknown);
    match (func, first) {
        (Func::Abs, Val::Num(x)) => Val::Num(x.abs()),
        (Func::Round, Val::Num(x)) => Val::Num(x.round()),
        (Func::Floor, Val::Num(x)) => Val::Num(x.floor()),
        (Func::Ceil, Val::Num(x)) => Val::Num(x.ceil()),
        (Func::Len, Val::Str(s)) => Val::Num(s.chars().count() as f64),
        (Func::Len, list) => list.elements().map_or(Val::Unknown, |e| Val::Num(e.len() as f64)),
        (Func::Lower, Val::Str(s)) => Val::Str(Arc::from(s.to_lowercase())),
        (Func::Upper, Val::Str(s)) => Val::Str(Arc::from(s.to_uppercase())),
        (Func::Contains, Val::Str(s)) => match second {
            Val::Str(part) => Val::Bool(s.contains(&**part)),
            _ => Val::Unknown,
        },
        (Func::Contains, list) if !second.is_unknown() => list
            .elements()
            .map_or(Val::Unknown, |items| Val::Bool(items.iter().any(|i| equal(i, second) == Some(true)))),
        (Func::StartsWith, Val::Str(s)) => match second {
            Val::Str(p) => Val::Bool(s.starts_with(&**p)),
            _ => Val::Unknown,
        },
        (Func::EndsWith, Val::Str(s)) => match second {
            Val::Str(p) => Val::Bool(s.ends_with(&**p)),
            _ => Val::Unknown,
        },
        _ => Val::Unknown,
    }
}

/// Renders a template's parts to text.
fn render(parts: &[CPart], s: &mut Scope<'_>, st: &mut [NodeState]) -> Val {
    let mut out = String::new();
    for part in parts {
        match part {
            CPart::Text(t) => out.push_str(t),
            CPart::Expr(e) => eval(e, s, st).render(&mut out),
        }
    }
    Val::Str(Arc::from(out))
}

fn special(sp: Special, s: &Scope<'_>) -> Val {
    let name = |n: &Name| Val::Str(Arc::from(n.as_str()));
    match sp {
        Special::Value => s.trigger().map_or(Val::Unknown, |slot| slot.cur.clone()),
        Special::Provider => s.trigger().map_or(Val::Unknown, |slot| name(&slot.path.provider)),
        Special::Service => s.trigger().map_or(Val::Unknown, |slot| name(&slot.path.service)),
        Special::Resource => s.trigger().map_or(Val::Unknown, |slot| name(&slot.path.resource)),
        Special::Rule => name(s.rule),
        Special::Time => Val::Str(Arc::from(Timestamp::from_micros(s.t).to_rfc3339())),
    }
}

/// Evaluates `e`. Stateful constructs update their state in `st` and report when they need another look in
/// `s.wake`.
pub(crate) fn eval(e: &CExpr, s: &mut Scope<'_>, st: &mut [NodeState]) -> Val {
    match e {
        CExpr::Const(v) => v.clone(),
        CExpr::Cur(r) => s.slot(*r).map_or(Val::Unknown, |slot| slot.cur.clone()),
        CExpr::Prev(r) => s.slot(*r).map_or(Val::Unknown, |slot| slot.prev.clone()),
        CExpr::Var(i) => s.bindings.get(usize::from(*i)).map_or(Val::Unknown, |n| Val::Str(Arc::from(n.as_str()))),
        CExpr::Special(sp) => special(*sp, s),
        CExpr::Neg(x) => match eval(x, s, st) {
            Val::Num(n) => Val::Num(-n),
            _ => Val::Unknown,
        },
        CExpr::Not(x) => eval(x, s, st).truth().map_or(Val::Unknown, |b| Val::Bool(!b)),
        CExpr::Arith(op, a, b) => {
            let l = eval(a, s, st);
            let r = eval(b, s, st);
            arith(*op, &l, &r)
        }
        CExpr::Cmp(op, a, b) => {
            let l = eval(a, s, st);
            let r = eval(b, s, st);
            compare(*op, &l, &r)
        }
        CExpr::And(a, b, both) => {
            let l = eval(a, s, st).truth();
            if l == Some(false) && !both {
                return Val::Bool(false);
            }
            let r = eval(b, s, st).truth();
            kleene_and(l, r)
        }
        CExpr::Or(a, b, both) => {
            let l = eval(a, s, st).truth();
            if l == Some(true) && !both {
                return Val::Bool(true);
            }
            let r = eval(b, s, st).truth();
            kleene_or(l, r)
        }
        CExpr::In(x, list, negated) => {
            let x = eval(x, s, st);
            let list = eval(list, s, st);
            if x.is_unknown() {
                return Val::Unknown;
            }
            match list.elements() {
                Some(items) => Val::Bool(items.iter().any(|i| equal(&x, i) == Some(true)) != *negated),
                None => Val::Unknown,
            }
        }
        CExpr::Hyst { state, x, on, off, direction } => {
            let x = eval(x, s, st).as_f64();
            let on = eval(on, s, st).as_f64();
            let off = eval(off, s, st).as_f64();
            let Some(NodeState::Hyst { latched }) = st.get_mut(usize::from(*state)) else { return Val::Unknown };
            if let (Some(x), Some(on), Some(off)) = (x, on, off) {
                *latched = match (direction, *latched) {
                    (Direction::Above, false) => x > on,
                    (Direction::Above, true) => x >= off,
                    (Direction::Below, false) => x < on,
                    (Direction::Below, true) => x <= off,
                };
            }
            Val::Bool(*latched)
        }
        CExpr::Hold { state, x, duration } => {
            let holds = eval(x, s, st).is_true();
            let t = s.t;
            let Some(NodeState::Hold { since }) = st.get_mut(usize::from(*state)) else { return Val::Unknown };
            if !holds {
                *since = None;
                return Val::Bool(false);
            }
            let start = *since.get_or_insert(t);
            let due = start.saturating_add(*duration);
            if t >= due {
                Val::Bool(true)
            } else {
                s.wake_at(due);
                Val::Bool(false)
            }
        }
        CExpr::Window { state, func } => {
            let Some(NodeState::Window(w)) = st.get_mut(usize::from(*state)) else { return Val::Unknown };
            let v = w.value(*func, s.t);
            if let Some(expiry) = w.expiry() {
                s.wake_at(expiry);
            }
            v
        }
        CExpr::Call(func, args) => {
            let args: Vec<Val> = args.iter().map(|a| eval(a, s, st)).collect();
            call(*func, &args)
        }
        CExpr::List(items) => Val::List(items.iter().map(|i| eval(i, s, st)).collect()),
        CExpr::Object(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                map.insert(k.to_string(), eval(v, s, st).to_json());
            }
            Val::Json(Arc::new(serde_json::Value::Object(map)))
        }
        CExpr::Template(parts) => render(parts, s, st),
    }
}
