//! Runtime values: what a resource holds, as the engine compares and computes with it.

use std::{cmp::Ordering, sync::Arc};

use serde_json::Value;

/// A value during evaluation. `Unknown` is a value not seen yet (or an undefined result, such as the average
/// of an empty window or a division by zero); conditions treat it as "not true", with Kleene logic for
/// `and`, `or` and `not`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Val {
    #[default]
    Unknown,
    Bool(bool),
    Num(f64),
    Str(Arc<str>),
    /// A list built by the rule (`[1, 2]`).
    List(Arc<[Val]>),
    /// An object or array read from a resource or built by the rule.
    Json(Arc<Value>),
}

impl Val {
    pub(crate) fn from_json(v: &Value) -> Val {
        match v {
            Value::Null => Val::Unknown,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => n.as_f64().map_or(Val::Unknown, Val::Num),
            Value::String(s) => Val::Str(Arc::from(s.as_str())),
            Value::Array(_) | Value::Object(_) => Val::Json(Arc::new(v.clone())),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            Val::Unknown => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => num_to_json(*n),
            Val::Str(s) => Value::String(s.to_string()),
            Val::List(items) => Value::Array(items.iter().map(Val::to_json).collect()),
            Val::Json(v) => (**v).clone(),
        }
    }

    pub(crate) fn is_unknown(&self) -> bool {
        matches!(self, Val::Unknown)
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// `Some(true)` only for `true`; `None` for unknown.
    pub(crate) fn truth(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn is_true(&self) -> bool {
        matches!(self, Val::Bool(true))
    }

    /// Appends the value as template text.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Val::Unknown => out.push_str("unknown"),
            Val::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Val::Num(n) => push_num(*n, out),
            Val::Str(s) => out.push_str(s),
            Val::List(_) | Val::Json(_) => out.push_str(&self.to_json().to_string()),
        }
    }

    /// The elements, when the value is a list.
    pub(crate) fn elements(&self) -> Option<Vec<Val>> {
        match self {
            Val::List(items) => Some(items.to_vec()),
            Val::Json(v) => v.as_array().map(|a| a.iter().map(Val::from_json).collect()),
            _ => None,
        }
    }
}

/// Numbers without a fraction print and serialise as integers.
fn integral(n: f64) -> Option<i64> {
    (n.fract() == 0.0 && n.abs() < 9.0e15).then_some(n as i64)
}

pub(crate) fn num_to_json(n: f64) -> Value {
    match integral(n) {
        Some(i) => Value::from(i),
        None => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
    }
}

fn push_num(n: f64, out: &mut String) {
    use std::fmt::Write;
    let _ = match integral(n) {
        Some(i) => write!(out, "{i}"),
        None => write!(out, "{n}"),
    };
}

/// Equality across the value kinds: different kinds are never equal; `None` when either side is unknown.
pub(crate) fn equal(a: &Val, b: &Val) -> Option<bool> {
    Some(match (a, b) {
        (Val::Unknown, _) | (_, Val::Unknown) => return None,
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::List(_) | Val::Json(_), Val::List(_) | Val::Json(_)) => a.to_json() == b.to_json(),
        _ => false,
    })
}

/// Ordering of two numbers or two strings; `None` otherwise.
pub(crate) fn order(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_render_and_serialise_without_needless_fractions() {
        let mut s = String::new();
        Val::Num(71.0).render(&mut s);
        s.push(' ');
        Val::Num(71.5).render(&mut s);
        assert_eq!(s, "71 71.5");
        assert_eq!(Val::Num(30.0).to_json(), json!(30));
        assert_eq!(Val::Num(0.25).to_json(), json!(0.25));
        assert_eq!(Val::from_json(&json!([1, "a"])).to_json(), json!([1, "a"]));
        assert_eq!(equal(&Val::Num(1.0), &Val::Str("1".into())), Some(false));
        assert_eq!(equal(&Val::Num(1.0), &Val::Unknown), None);
    }
}
