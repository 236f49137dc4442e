//! A recursive-descent parser from tokens to [`Rule`]s, with one precise diagnostic per broken rule.
//!
//! After an error the parser skips to the next `rule` keyword, so one source reports the first problem of
//! every rule in it. Nesting is bounded ([`MAX_DEPTH`]) so no input can exhaust the stack.

use std::sync::Arc;

use hub_model::{Glob, Name};

use crate::{
    ast::{
        ActionKind, ActionSpec, AggFunc, BinaryOp, Direction, Entry, Expr, ExprKind, Func, Micros, PathPattern, Rule,
        Segment, Special, Template, TemplatePart, Trigger, UnaryOp, Window,
    },
    diag::{DiagCode, Diagnostic, Span},
    lexer::{Punct, RawSegment, StrPart, TokKind, Token, is_keyword, lex},
};

/// How deeply expressions may nest (parentheses, lists, unary operators, placeholders).
pub const MAX_DEPTH: usize = 64;

/// The largest count window, in samples.
pub const MAX_COUNT_WINDOW: u32 = 100_000;

const DAY: Micros = 86_400_000_000;

/// Parses rule text: one or more `rule ... end` blocks.
///
/// Returns every rule, or every syntax error (at most one per rule). Never panics, whatever the input.
pub fn parse(source: &str) -> Result<Vec<Rule>, Vec<Diagnostic>> {
    let tokens = lex(source);
    let mut parser = Parser { src: source, toks: &tokens, pos: 0, depth: 0, diags: Vec::new(), rule: None };
    let rules = parser.rules();
    if parser.diags.is_empty() { Ok(rules) } else { Err(parser.diags) }
}

const PREC_NOT: u8 = 3;
const PREC_HOLD: u8 = 4;
const PREC_COMPARE: u8 = 5;
const PREC_SUM: u8 = 6;
const PREC_PRODUCT: u8 = 7;
const PREC_NEG: u8 = 8;

/// Operators that follow an operand.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Infix {
    Binary(BinaryOp),
    /// `for <duration>`.
    For,
    /// `in` (`not in` when true).
    In(bool),
    Hysteresis(Direction),
    /// `=` where `==` was meant.
    Assign,
}

/// The error was recorded in the parser's diagnostics.
struct Reported;

type PResult<T> = Result<T, Reported>;

struct Parser<'a> {
    src: &'a str,
    toks: &'a [Token],
    pos: usize,
    depth: usize,
    diags: Vec<Diagnostic>,
    /// The name of the rule being parsed, for diagnostics.
    rule: Option<String>,
}

const EOF: Token = Token {
    kind: TokKind::Eof,
    span: Span {
        start: crate::diag::Pos { offset: 0, line: 1, column: 1 },
        end: crate::diag::Pos { offset: 0, line: 1, column: 1 },
    },
};

impl<'a> Parser<'a> {
    fn peek(&self) -> &'a Token {
        self.toks.get(self.pos).or(self.toks.last()).unwrap_or(&EOF)
    }

    fn peek_at(&self, ahead: usize) -> &'a Token {
        self.toks.get(self.pos + ahead).or(self.toks.last()).unwrap_or(&EOF)
    }

    fn bump(&mut self) -> &'a Token {
        let tok = self.peek();
        if tok.kind != TokKind::Eof {
            self.pos += 1;
        }
        tok
    }

    fn at_word(&self, word: &str) -> bool {
        matches!(&self.peek().kind, TokKind::Word(w) if w == word)
    }

    fn at_punct(&self, p: Punct) -> bool {
        self.peek().kind == TokKind::Punct(p)
    }

    fn eat_word(&mut self, word: &str) -> Option<Span> {
        self.at_word(word).then(|| self.bump().span)
    }

    fn eat_punct(&mut self, p: Punct) -> Option<Span> {
        self.at_punct(p).then(|| self.bump().span)
    }

    fn fail<T>(&mut self, code: DiagCode, span: Span, message: impl Into<String>) -> PResult<T> {
        let mut d = Diagnostic::error(code, span, message);
        d.rule = self.rule.clone();
        self.diags.push(d);
        Err(Reported)
    }

    /// Reports the current token as unexpected. Lexer errors speak for themselves.
    fn unexpected<T>(&mut self, expected: &str) -> PResult<T> {
        let tok = self.peek();
        let message = match &tok.kind {
            TokKind::Error(message) => message.clone(),
            _ => format!("expected {expected}, found {}", tok.describe()),
        };
        self.fail(DiagCode::Syntax, tok.span, message)
    }

    fn expect_punct(&mut self, p: Punct, expected: &str) -> PResult<Span> {
        match self.eat_punct(p) {
            Some(span) => Ok(span),
            None => self.unexpected(expected),
        }
    }

    /// Counts one more level of nesting, refusing more than [`MAX_DEPTH`]. Chains of binary operators count
    /// too: they build trees as deep as they are long, and every later pass walks those trees recursively.
    fn deepen(&mut self) -> PResult<()> {
        if self.depth >= MAX_DEPTH {
            let span = self.peek().span;
            return self.fail(
                DiagCode::Syntax,
                span,
                format!("this expression is nested more than {MAX_DEPTH} levels deep; split it into several rules"),
            );
        }
        self.depth += 1;
        Ok(())
    }

    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> PResult<T>) -> PResult<T> {
        self.deepen()?;
        let result = f(self);
        self.depth -= 1;
        result
    }

    // ---- rules ----

    fn rules(&mut self) -> Vec<Rule> {
        let mut rules = Vec::new();
        while self.peek().kind != TokKind::Eof {
            self.rule = None;
            self.depth = 0;
            if self.at_word("rule") {
                if let Ok(rule) = self.rule_block() {
                    rules.push(rule);
                    continue;
                }
            } else {
                let _ = self.unexpected::<()>("`rule` to start a rule, e.g. `rule park_noise`");
            }
            self.recover();
        }
        rules
    }

    /// Skips to the next `rule` keyword (always moving at least one token).
    fn recover(&mut self) {
        self.bump();
        while self.peek().kind != TokKind::Eof && !self.at_word("rule") {
            self.bump();
        }
    }

    fn rule_block(&mut self) -> PResult<Rule> {
        let start = self.bump().span;
        let name_tok = self.peek();
        let name = match &name_tok.kind {
            TokKind::Word(w) if is_keyword(w) => {
                let message = format!("`{w}` is a keyword; give the rule a name first, e.g. `rule park_noise {w} ...`");
                return self.fail(DiagCode::Syntax, name_tok.span, message);
            }
            TokKind::Word(w) => match Name::new(w) {
                Ok(name) => name,
                Err(e) => return self.fail(DiagCode::Syntax, name_tok.span, format!("invalid rule name: {e}")),
            },
            _ => return self.unexpected("the rule's name after `rule`, e.g. `rule park_noise`"),
        };
        self.bump();
        self.rule = Some(name.to_string());
        let description = match &self.peek().kind {
            TokKind::Str(parts) => {
                let tok = self.bump();
                match parts.as_slice() {
                    [StrPart::Text(t)] => Some(t.clone()),
                    _ => {
                        return self.fail(
                            DiagCode::Syntax,
                            tok.span,
                            "a rule description is plain text: it cannot hold `{...}` placeholders",
                        );
                    }
                }
            }
            _ => None,
        };
        let trigger = self.trigger()?;
        let guard = match self.eat_word("if") {
            Some(_) => Some(self.expr()?),
            None => None,
        };
        let cooldown = match self.eat_word("cooldown") {
            Some(_) => Some(self.duration("a duration after `cooldown`, e.g. `cooldown 10m`")?),
            None => None,
        };
        if self.eat_word("then").is_none() {
            let expected = match (&trigger, &guard) {
                (Trigger::When(_), _) | (_, Some(_)) => {
                    "`then` and the actions to run (or `and`/`or` to go on with the condition)"
                }
                _ => "`then` and the actions to run",
            };
            return self.unexpected(expected);
        }
        let then = self.actions("an action after `then`: act, set, publish, notify or call")?;
        let otherwise = match self.eat_word("else") {
            Some(_) => self.actions("an action after `else`: act, set, publish, notify or call")?,
            None => Vec::new(),
        };
        let Some(end) = self.eat_word("end") else {
            let expected =
                format!("another action (act, set, publish, notify, call), `else` or `end` to close rule `{name}`");
            return self.unexpected(&expected);
        };
        let source: Arc<str> = Arc::from(self.src.get(start.start.offset..end.end.offset).unwrap_or(""));
        Ok(Rule {
            name,
            name_span: name_tok.span,
            description,
            trigger,
            guard,
            cooldown,
            then,
            otherwise,
            span: start.to(end),
            source,
        })
    }

    fn duration(&mut self, expected: &str) -> PResult<Micros> {
        match self.peek().kind {
            TokKind::Duration(us) => {
                self.bump();
                Ok(us)
            }
            TokKind::Number { .. } => {
                let span = self.peek().span;
                self.fail(
                    DiagCode::Syntax,
                    span,
                    format!("expected {expected}; a duration needs a unit: ms, s, m, h, d or w"),
                )
            }
            _ => self.unexpected(expected),
        }
    }

    fn trigger(&mut self) -> PResult<Trigger> {
        let start = self.peek().span;
        if self.eat_word("when").is_some() {
            if self.at_word("then") || self.peek().kind == TokKind::Eof {
                return self.unexpected("a condition after `when`, e.g. `when noise-12/sound/level > 70`");
            }
            return Ok(Trigger::When(self.expr()?));
        }
        if self.eat_word("on").is_some() {
            let event = match &self.peek().kind {
                TokKind::Word(w) if matches!(w.as_str(), "update" | "change" | "offline" | "online") => w.clone(),
                _ => return self.unexpected("`update`, `change`, `offline` or `online` after `on`"),
            };
            self.bump();
            if event == "offline" || event == "online" {
                let provider = self.provider_segment()?;
                let span = start.to(self.toks.get(self.pos.saturating_sub(1)).map_or(start, |t| t.span));
                return Ok(Trigger::Status { provider, online: event == "online", span });
            }
            let mut paths = vec![self.path("a resource path, e.g. `on update noise-12/sound/level`")?];
            while self.eat_punct(Punct::Comma).is_some() {
                paths.push(self.path("another resource path after `,`")?);
            }
            let span = start.to(paths.last().map_or(start, |p| p.span));
            return Ok(Trigger::Update { paths, changes_only: event == "change", span });
        }
        if self.eat_word("every").is_some() {
            let every = self.duration("a period after `every`, e.g. `every 1d at 02:00` or `every 15m`")?;
            let mut end = self.toks.get(self.pos.saturating_sub(1)).map_or(start, |t| t.span);
            let at = match self.eat_word("at") {
                Some(_) => {
                    let (at, span) = self.time_of_day()?;
                    end = span;
                    Some(at)
                }
                None => None,
            };
            return Ok(Trigger::Schedule { every, at, span: start.to(end) });
        }
        if self.eat_word("at").is_some() {
            let (at, end) = self.time_of_day()?;
            return Ok(Trigger::Schedule { every: DAY, at: Some(at), span: start.to(end) });
        }
        self.unexpected(
            "a trigger after the rule name: `when <condition>`, `on update <path>`, `on change <path>`, \
             `on offline <provider>`, `every <period>` or `at HH:MM`",
        )
    }

    fn time_of_day(&mut self) -> PResult<(Micros, Span)> {
        match self.peek().kind {
            TokKind::TimeOfDay(us) => Ok((us, self.bump().span)),
            _ => self.unexpected("a time of day in UTC after `at`, e.g. `at 02:00`"),
        }
    }

    fn provider_segment(&mut self) -> PResult<Segment> {
        let tok = self.peek();
        match &tok.kind {
            TokKind::Var { name, glob } => {
                let glob = glob.as_deref().map(Glob::new);
                self.bump();
                Ok(Segment::Var { name: name.clone(), glob })
            }
            TokKind::Word(w) if !is_keyword(w) => match Name::new(w) {
                Ok(name) => {
                    self.bump();
                    Ok(Segment::Name(name))
                }
                Err(e) => self.fail(DiagCode::Syntax, tok.span, format!("invalid provider name: {e}")),
            },
            TokKind::Path(_) => self.fail(
                DiagCode::Syntax,
                tok.span,
                "`on offline` and `on online` take a provider, not a resource path: e.g. `on offline $truck`",
            ),
            _ => self.unexpected("a provider name or `$variable`, e.g. `on offline $truck`"),
        }
    }

    // ---- paths ----

    fn path(&mut self, expected: &str) -> PResult<PathPattern> {
        let tok = self.peek();
        match &tok.kind {
            TokKind::Path(segments) => {
                self.bump();
                self.path_pattern(segments, tok.span)
            }
            _ => self.unexpected(expected),
        }
    }

    fn path_pattern(&mut self, raw: &[RawSegment], span: Span) -> PResult<PathPattern> {
        let [p, s, r] = raw else {
            let text: Vec<&str> = raw.iter().map(|s| s.text.as_str()).collect();
            let text = text.join("/");
            let numeric = raw.iter().all(|s| s.text.parse::<f64>().is_ok());
            let message = if numeric {
                format!("`{text}` reads as a resource path; to divide, put spaces around `/`: `a / b`")
            } else {
                format!("a resource path has three parts, provider/service/resource; `{text}` has {}", raw.len())
            };
            return self.fail(DiagCode::Syntax, span, message);
        };
        let segments = [self.segment(p)?, self.segment(s)?, self.segment(r)?];
        Ok(PathPattern { segments, span })
    }

    fn segment(&mut self, raw: &RawSegment) -> PResult<Segment> {
        let text = raw.text.as_str();
        if text.is_empty() {
            return self.fail(DiagCode::Syntax, raw.span, "empty part in a resource path (two `/` in a row?)");
        }
        if let Some(rest) = text.strip_prefix('$') {
            let (name, glob) = match rest.split_once(':') {
                Some((n, g)) => (n, Some(g)),
                None => (rest, None),
            };
            let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let valid_glob = glob.is_none_or(|g| {
                !g.is_empty()
                    && g.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*' | b'?'))
            });
            if !valid_name || !valid_glob {
                return self.fail(
                    DiagCode::Syntax,
                    raw.span,
                    format!(
                        "`{text}` is not a valid variable: write `$name` or `$name:pattern` (letters, digits and `_` \
                         in the name; `*` and `?` in the pattern)"
                    ),
                );
            }
            return Ok(Segment::Var { name: name.to_string(), glob: glob.map(Glob::new) });
        }
        if text.contains(['*', '?']) {
            return self.fail(
                DiagCode::Syntax,
                raw.span,
                format!(
                    "the wildcard `{text}` must bind a variable: write `$name:{text}`; to multiply, put spaces around `*`"
                ),
            );
        }
        match Name::new(text) {
            Ok(name) => Ok(Segment::Name(name)),
            Err(e) => self.fail(DiagCode::Syntax, raw.span, format!("{e}")),
        }
    }

    // ---- expressions ----

    fn expr(&mut self) -> PResult<Expr> {
        self.guarded(|p| p.climb(0))
    }

    fn binary(op: BinaryOp, left: Expr, right: Expr) -> Expr {
        let span = left.span.to(right.span);
        Expr { kind: ExprKind::Binary { op, left: Box::new(left), right: Box::new(right) }, span }
    }

    /// The infix or postfix operator at the cursor, with how tightly it binds.
    fn infix(&self) -> Option<(Infix, u8)> {
        let op = match &self.peek().kind {
            TokKind::Word(w) => match w.as_str() {
                "or" => Infix::Binary(BinaryOp::Or),
                "and" => Infix::Binary(BinaryOp::And),
                "for" => Infix::For,
                "in" => Infix::In(false),
                "not" if matches!(&self.peek_at(1).kind, TokKind::Word(w) if w == "in") => Infix::In(true),
                "above" => Infix::Hysteresis(Direction::Above),
                "below" => Infix::Hysteresis(Direction::Below),
                _ => return None,
            },
            TokKind::Punct(p) => match p {
                Punct::EqEq => Infix::Binary(BinaryOp::Eq),
                Punct::NotEq => Infix::Binary(BinaryOp::Ne),
                Punct::Lt => Infix::Binary(BinaryOp::Lt),
                Punct::Le => Infix::Binary(BinaryOp::Le),
                Punct::Gt => Infix::Binary(BinaryOp::Gt),
                Punct::Ge => Infix::Binary(BinaryOp::Ge),
                Punct::Plus => Infix::Binary(BinaryOp::Add),
                Punct::Minus => Infix::Binary(BinaryOp::Sub),
                Punct::Star => Infix::Binary(BinaryOp::Mul),
                Punct::Slash => Infix::Binary(BinaryOp::Div),
                Punct::Percent => Infix::Binary(BinaryOp::Rem),
                Punct::Assign => Infix::Assign,
                _ => return None,
            },
            _ => return None,
        };
        let precedence = match op {
            Infix::Binary(BinaryOp::Or) => 1,
            Infix::Binary(BinaryOp::And) => 2,
            Infix::For => PREC_HOLD,
            Infix::Binary(BinaryOp::Add | BinaryOp::Sub) => PREC_SUM,
            Infix::Binary(BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem) => PREC_PRODUCT,
            _ => PREC_COMPARE,
        };
        Some((op, precedence))
    }

    /// Precedence climbing: an operand, then every operator that binds at least as tightly as `min`. Few
    /// stack frames per nesting level, so the depth limit keeps the stack small even in debug builds.
    fn climb(&mut self, min: u8) -> PResult<Expr> {
        let mark = self.depth;
        let mut left = self.prefix()?;
        // Comparisons, `in`, hysteresis and `for` do not associate: after one, only looser operators follow.
        let mut cap = u8::MAX;
        while let Some((op, precedence)) = self.infix() {
            if precedence < min {
                break;
            }
            if precedence >= cap {
                if cap == PREC_COMPARE && precedence == PREC_COMPARE {
                    let span = self.peek().span;
                    return self.fail(
                        DiagCode::Syntax,
                        span,
                        "comparisons do not chain: write `a < b and b < c` instead of `a < b < c`",
                    );
                }
                break;
            }
            self.deepen()?;
            left = self.apply(op, precedence, left)?;
            if !matches!(op, Infix::Binary(b) if !b.is_comparison()) {
                cap = precedence;
            }
        }
        self.depth = mark;
        Ok(left)
    }

    fn apply(&mut self, op: Infix, precedence: u8, left: Expr) -> PResult<Expr> {
        let op_span = self.bump().span;
        match op {
            Infix::Binary(op) => {
                let right = self.climb(precedence + 1)?;
                Ok(Self::binary(op, left, right))
            }
            Infix::For => {
                let end = self.peek().span;
                let duration = self.duration("a duration after `for`, e.g. `for 5m`")?;
                let span = left.span.to(end);
                Ok(Expr { kind: ExprKind::Hold { expr: Box::new(left), duration }, span })
            }
            Infix::In(negated) => {
                if negated {
                    self.bump();
                }
                let list = self.climb(PREC_SUM)?;
                let span = left.span.to(list.span);
                Ok(Expr { kind: ExprKind::In { expr: Box::new(left), list: Box::new(list), negated }, span })
            }
            Infix::Hysteresis(direction) => self.hysteresis(left, direction),
            Infix::Assign => {
                self.fail(DiagCode::Syntax, op_span, "`=` assigns (in `set` and parameters); to compare, write `==`")
            }
        }
    }

    fn hysteresis(&mut self, left: Expr, direction: Direction) -> PResult<Expr> {
        let (word, other, example) = match direction {
            Direction::Above => ("above", "below", "e.g. `x above 70 until below 65`"),
            Direction::Below => ("below", "above", "e.g. `x below 10 until above 15`"),
        };
        let on = self.climb(PREC_SUM)?;
        if self.eat_word("until").is_none() || self.eat_word(other).is_none() {
            return self.unexpected(&format!(
                "`until {other} <value>` after `{word} {on}`: a hysteresis needs both thresholds, {example}"
            ));
        }
        let off = self.climb(PREC_SUM)?;
        let span = left.span.to(off.span);
        let kind = ExprKind::Hysteresis { expr: Box::new(left), on: Box::new(on), off: Box::new(off), direction };
        Ok(Expr { kind, span })
    }

    /// `not x`, `-x` or a primary expression.
    fn prefix(&mut self) -> PResult<Expr> {
        let (op, precedence) = if self.at_word("not") {
            (UnaryOp::Not, PREC_NOT)
        } else if self.at_punct(Punct::Minus) {
            (UnaryOp::Neg, PREC_NEG)
        } else {
            return self.primary();
        };
        let start = self.bump().span;
        let operand = self.guarded(|p| p.climb(precedence))?;
        let span = start.to(operand.span);
        Ok(Expr { kind: ExprKind::Unary { op, expr: Box::new(operand) }, span })
    }

    fn primary(&mut self) -> PResult<Expr> {
        let tok = self.peek();
        let span = tok.span;
        let kind = match &tok.kind {
            TokKind::Number { value, integer } => {
                self.bump();
                ExprKind::Number { value: *value, integer: *integer }
            }
            TokKind::Str(parts) => {
                self.bump();
                ExprKind::Str(self.template(parts, span)?)
            }
            TokKind::Path(segments) => {
                self.bump();
                ExprKind::Path(Box::new(self.path_pattern(segments, span)?))
            }
            TokKind::Var { name, glob: None } => {
                self.bump();
                ExprKind::Var(name.clone())
            }
            TokKind::Var { glob: Some(_), .. } => {
                return self.fail(
                    DiagCode::Syntax,
                    span,
                    "a variable with a pattern (`$p:noise-*`) belongs inside a path or after `on offline`; \
                     elsewhere write just `$p`",
                );
            }
            TokKind::Punct(Punct::LParen) => {
                self.bump();
                let inner = self.expr()?;
                let end = self.expect_punct(Punct::RParen, "`)` to close `(`")?;
                return Ok(Expr { kind: inner.kind, span: span.to(end) });
            }
            TokKind::Punct(Punct::LBracket) => return self.list(),
            TokKind::Punct(Punct::LBrace) => return self.object(),
            TokKind::Word(w) if self.peek_at(1).kind == TokKind::Punct(Punct::LParen) && !is_keyword(w) => {
                return self.call(w, span);
            }
            TokKind::Word(w) if w == "true" || w == "false" => {
                self.bump();
                ExprKind::Bool(w == "true")
            }
            TokKind::Word(w) => {
                if let Some(s) = Special::ALL.into_iter().find(|s| s.as_str() == w) {
                    self.bump();
                    ExprKind::Special(s)
                } else if is_keyword(w) {
                    return self.unexpected("a value (a number, a string, a resource path, `$variable` or `(`)");
                } else {
                    return self.fail(
                        DiagCode::Syntax,
                        span,
                        format!(
                            "unknown name `{w}`: resource paths have three parts (provider/service/resource), \
                             variables start with `$`, text goes in double quotes; `-` right after a name is part \
                             of it, so write `a - 1` with spaces to subtract"
                        ),
                    );
                }
            }
            TokKind::Duration(_) => {
                return self.fail(
                    DiagCode::Syntax,
                    span,
                    "a duration goes after `for` (`x > 70 for 5m`) or inside a window (`avg(x, 10m)`), not alone",
                );
            }
            _ => return self.unexpected("a value (a number, a string, a resource path, `$variable` or `(`)"),
        };
        Ok(Expr { kind, span })
    }

    fn list(&mut self) -> PResult<Expr> {
        let start = self.bump().span;
        let mut items = Vec::new();
        loop {
            if let Some(end) = self.eat_punct(Punct::RBracket) {
                return Ok(Expr { kind: ExprKind::List(items), span: start.to(end) });
            }
            items.push(self.expr()?);
            if self.eat_punct(Punct::Comma).is_none() {
                let end = self.expect_punct(Punct::RBracket, "`,` or `]` in the list")?;
                return Ok(Expr { kind: ExprKind::List(items), span: start.to(end) });
            }
        }
    }

    fn object(&mut self) -> PResult<Expr> {
        let start = self.bump().span;
        let mut entries = Vec::new();
        loop {
            if let Some(end) = self.eat_punct(Punct::RBrace) {
                return Ok(Expr { kind: ExprKind::Object(entries), span: start.to(end) });
            }
            entries.push(self.entry(true)?);
            if self.eat_punct(Punct::Comma).is_none() {
                let end = self.expect_punct(Punct::RBrace, "`,` or `}` in the object")?;
                return Ok(Expr { kind: ExprKind::Object(entries), span: start.to(end) });
            }
        }
    }

    /// `key = value`. Object keys may be strings; parameter names must be valid names.
    fn entry(&mut self, object: bool) -> PResult<Entry> {
        let tok = self.peek();
        let key = match &tok.kind {
            TokKind::Word(w) if !object && Name::new(w).is_err() => {
                return self.fail(DiagCode::Syntax, tok.span, format!("invalid parameter name `{w}`"));
            }
            TokKind::Word(w) => w.clone(),
            TokKind::Str(parts) if object => match parts.as_slice() {
                [StrPart::Text(t)] => t.clone(),
                _ => return self.fail(DiagCode::Syntax, tok.span, "an object key cannot hold `{...}` placeholders"),
            },
            _ if object => return self.unexpected("a key (`name = value`) or `}`"),
            _ => return self.unexpected("a parameter (`name = value`) or `)`"),
        };
        self.bump();
        if self.at_punct(Punct::EqEq) {
            let span = self.peek().span;
            return self.fail(DiagCode::Syntax, span, format!("write `{key} = ...` with one `=`"));
        }
        self.expect_punct(Punct::Assign, &format!("`=` after `{key}`"))?;
        let value = self.expr()?;
        Ok(Entry { key, key_span: tok.span, value })
    }

    fn call(&mut self, name: &str, start: Span) -> PResult<Expr> {
        if name == "prev" {
            self.bump();
            self.bump();
            let path = self.path("a resource path in `prev(...)`, e.g. `prev(noise-12/sound/level)`")?;
            let end = self.expect_punct(Punct::RParen, "`)` to close `prev(`")?;
            return Ok(Expr { kind: ExprKind::Prev(Box::new(path)), span: start.to(end) });
        }
        if let Some(func) = AggFunc::ALL.into_iter().find(|f| f.as_str() == name) {
            self.bump();
            self.bump();
            let example = format!("`{name}(noise-12/sound/level, 10m)`");
            let path = self.path(&format!("a resource path first in `{name}(...)`, e.g. {example}"))?;
            self.expect_punct(
                Punct::Comma,
                &format!("`,` and a window after the path: a duration or a sample count, e.g. {example}"),
            )?;
            let (window, window_span) = self.window()?;
            let end = self.expect_punct(Punct::RParen, &format!("`)` to close `{name}(`"))?;
            return Ok(Expr {
                kind: ExprKind::Aggregate { func, path: Box::new(path), window, window_span },
                span: start.to(end),
            });
        }
        let Some(func) = Func::ALL.into_iter().find(|f| f.as_str() == name) else {
            let known: Vec<&str> = AggFunc::ALL
                .iter()
                .map(|f| f.as_str())
                .chain(Func::ALL.iter().map(|f| f.as_str()))
                .chain(["prev"])
                .collect();
            // Function names are short: allow more edits than for resource names.
            let limit = (name.chars().count() / 2).max(1);
            let message = match crate::suggest::closest_within(name, known.iter().copied(), limit) {
                Some(best) => format!("unknown function `{name}`; did you mean `{best}`?"),
                None => format!("unknown function `{name}`; the functions are {}", known.join(", ")),
            };
            return self.fail(DiagCode::UnknownFunction, start, message);
        };
        self.bump();
        self.bump();
        let mut args = Vec::new();
        let end = loop {
            if let Some(end) = self.eat_punct(Punct::RParen) {
                break end;
            }
            args.push(self.expr()?);
            if self.eat_punct(Punct::Comma).is_none() {
                break self.expect_punct(Punct::RParen, &format!("`,` or `)` in `{name}(...)`"))?;
            }
        };
        if args.len() != func.arity() {
            let usage = match func.arity() {
                1 => format!("`{name}(x)`"),
                _ => format!("`{name}(text, part)`"),
            };
            return self.fail(
                DiagCode::UnknownFunction,
                start.to(end),
                format!("`{name}` takes {} argument(s), {usage}; got {}", func.arity(), args.len()),
            );
        }
        Ok(Expr { kind: ExprKind::Call { func, args }, span: start.to(end) })
    }

    fn window(&mut self) -> PResult<(Window, Span)> {
        let tok = self.peek();
        match tok.kind {
            TokKind::Duration(us) => {
                self.bump();
                Ok((Window::Time(us), tok.span))
            }
            TokKind::Number { value, integer: true } => {
                self.bump();
                let Some(end) = self.eat_word("samples").or_else(|| self.eat_word("sample")) else {
                    return self
                        .unexpected("`samples` after the count, e.g. `20 samples`, or a duration such as `10m`");
                };
                let span = tok.span.to(end);
                if !(1.0..=f64::from(MAX_COUNT_WINDOW)).contains(&value) {
                    return self.fail(
                        DiagCode::InvalidValue,
                        span,
                        format!("a count window holds 1 to {MAX_COUNT_WINDOW} samples"),
                    );
                }
                Ok((Window::Count(value as u32), span))
            }
            _ => self.unexpected("a window: a duration (`10m`) or a sample count (`20 samples`)"),
        }
    }

    fn template(&mut self, parts: &[StrPart], span: Span) -> PResult<Template> {
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                StrPart::Text(t) => out.push(TemplatePart::Text(t.clone())),
                StrPart::Expr(tokens) => {
                    let mut sub = Parser {
                        src: self.src,
                        toks: tokens,
                        pos: 0,
                        depth: self.depth,
                        diags: Vec::new(),
                        rule: self.rule.clone(),
                    };
                    let result = if sub.peek().kind == TokKind::Eof {
                        let span = sub.peek().span;
                        sub.fail(
                            DiagCode::Syntax,
                            span,
                            "empty placeholder: put an expression between the braces, e.g. `{value}`, or write `{{}}`",
                        )
                    } else {
                        sub.expr().and_then(|e| {
                            if sub.peek().kind == TokKind::Eof {
                                Ok(e)
                            } else {
                                sub.unexpected("`}` to close the placeholder")
                            }
                        })
                    };
                    self.diags.append(&mut sub.diags);
                    out.push(TemplatePart::Expr(result?));
                }
            }
        }
        Ok(Template { parts: out, span })
    }

    fn template_token(&mut self, expected: &str) -> PResult<Template> {
        let tok = self.peek();
        match &tok.kind {
            TokKind::Str(parts) => {
                self.bump();
                self.template(parts, tok.span)
            }
            _ => self.unexpected(expected),
        }
    }

    // ---- actions ----

    fn actions(&mut self, expected: &str) -> PResult<Vec<ActionSpec>> {
        let mut actions = Vec::new();
        loop {
            let is_action = matches!(&self.peek().kind,
                TokKind::Word(w) if matches!(w.as_str(), "act" | "set" | "publish" | "notify" | "call"));
            if !is_action {
                break;
            }
            actions.push(self.action()?);
        }
        if actions.is_empty() {
            return self.unexpected(expected);
        }
        Ok(actions)
    }

    fn action(&mut self) -> PResult<ActionSpec> {
        let keyword = self.bump();
        let start = keyword.span;
        let TokKind::Word(word) = &keyword.kind else { return self.unexpected("an action") };
        let kind = match word.as_str() {
            "act" => {
                let path = self.path(
                    "the action's resource path after `act`, e.g. `act city-hall/alerts/notify(message = \"hi\")`",
                )?;
                if !self.at_punct(Punct::LParen) {
                    return self.unexpected(&format!(
                        "`(` after `act {path}`: an action call needs parentheses even without parameters, \
                         e.g. `act {path}()`"
                    ));
                }
                let params = self.params()?;
                ActionKind::Act { path, params }
            }
            "set" => {
                let path = self.path("the resource path after `set`, e.g. `set noise-12/sign/display = \"quiet\"`")?;
                if self.at_punct(Punct::EqEq) {
                    let span = self.peek().span;
                    return self.fail(DiagCode::Syntax, span, "`set` assigns with one `=`: `set a/b/c = value`");
                }
                self.expect_punct(Punct::Assign, &format!("`=` and a value after `set {path}`"))?;
                ActionKind::Set { path, value: self.expr()? }
            }
            "publish" => {
                let topic =
                    self.template_token("the event topic as a string after `publish`, e.g. `publish \"noise/alert\"`")?;
                let payload = match self.eat_word("with") {
                    Some(_) => Some(self.expr()?),
                    None => None,
                };
                ActionKind::Publish { topic, payload }
            }
            "notify" => {
                let url = self.template_token(
                    "the webhook URL as a string after `notify`, e.g. `notify \"https://example.org/hook\"`",
                )?;
                let body = match self.eat_word("with") {
                    Some(_) => Some(self.expr()?),
                    None => None,
                };
                let retries = match self.eat_word("retries") {
                    Some(_) => match self.peek().kind {
                        TokKind::Number { value, integer: true } if (0.0..=100.0).contains(&value) => {
                            self.bump();
                            Some(value as u32)
                        }
                        _ => return self.unexpected("a number of retries from 0 to 100 after `retries`"),
                    },
                    None => None,
                };
                ActionKind::Notify { url, body, retries }
            }
            _ => {
                let tok = self.peek();
                let app = match &tok.kind {
                    TokKind::Word(w) => match Name::new(w) {
                        Ok(app) => app,
                        Err(e) => return self.fail(DiagCode::Syntax, tok.span, format!("invalid app id: {e}")),
                    },
                    _ => return self.unexpected("the app id after `call`, e.g. `call traffic.optimizer(zone = $z)`"),
                };
                self.bump();
                if !self.at_punct(Punct::LParen) {
                    return self.unexpected(&format!("`(` after `call {app}`, e.g. `call {app}()`"));
                }
                let params = self.params()?;
                ActionKind::Call { app, app_span: tok.span, params }
            }
        };
        let end = self.toks.get(self.pos.saturating_sub(1)).map_or(start, |t| t.span);
        Ok(ActionSpec { kind, span: start.to(end) })
    }

    fn params(&mut self) -> PResult<Vec<Entry>> {
        self.bump();
        let mut params = Vec::new();
        loop {
            if self.eat_punct(Punct::RParen).is_some() {
                return Ok(params);
            }
            params.push(self.entry(false)?);
            if self.eat_punct(Punct::Comma).is_none() {
                self.expect_punct(Punct::RParen, "`,` or `)` after the parameter")?;
                return Ok(params);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_examples_parse() {
        let src = r#"
rule park_noise
  when noise-12/sound/level > 70 for 5m
   and avg(noise-12/sound/level, 10m) > 65
  then act city-hall/alerts/notify(message = "noise at noise-12: {value} dB")
       set noise-12/sign/display = "quiet please"
end

rule any_fall
  when $home/fall/detected == true          # $home binds the provider: one instance per provider
  then act $home/alarm/siren(seconds = 30)
       notify "https://care.example/hooks" with {home = $home}
end

rule nightly
  every 1d at 02:00
  then act city-hall/reports/daily()
end
"#;
        let rules = parse(src).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].name.as_str(), "park_noise");
        assert_eq!(rules[0].then.len(), 2);
        assert!(rules[0].source.starts_with("rule park_noise") && rules[0].source.ends_with("end"));
        let Trigger::When(cond) = &rules[0].trigger else { panic!() };
        assert_eq!(cond.to_string(), "noise-12/sound/level > 70 for 5m and avg(noise-12/sound/level, 10m) > 65");
        assert!(matches!(rules[2].trigger, Trigger::Schedule { every: DAY, at: Some(7_200_000_000), .. }));
    }

    #[test]
    fn printing_round_trips() {
        let src = r#"rule r "desc"
  when (a/b/c + 2) * 3 > 4 and not x/y/z in ["a", "b"] or p/q/r above 70 until below 65
  then set a/b/d = -(1 - 2) / 3
       act a/b/e(for = 1, x.y-z = "{{}}")
       publish "t/{$p}" with {"odd key" = [1, 2.5, true], k = prev(a/b/c)}
  else notify "https://x.example/{provider}" retries 2
end"#;
        let first = parse(src).unwrap();
        let printed = first[0].to_string();
        let second = parse(&printed).unwrap();
        assert_eq!(printed, second[0].to_string());
    }

    #[test]
    fn one_error_per_rule_then_recovery() {
        let src = "rule a when x/y/z > then set a/b/c = 1 end\nrule b when x/y/z > 1 then set a/b/c = 1 end\nrule c when x/y/z = 1 then end";
        let errs = parse(src).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].column), (1, 21));
        assert_eq!(errs[1].line, 3);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("rule r when {}1{} > 0 then set a/b/c = 1 end", "(".repeat(5000), ")".repeat(5000));
        let errs = parse(&src).unwrap_err();
        assert!(errs[0].message.contains("nested"));
        let src = format!("rule r when {}1 > 0 then set a/b/c = 1 end", "- ".repeat(5000));
        assert!(parse(&src).is_err());
        let src = format!("rule r when {}x/y/z then set a/b/c = 1 end", "not ".repeat(5000));
        assert!(parse(&src).is_err());
        let src = format!("rule r when x/y/z > 0{} then set a/b/c = 1 end", " and x/y/z > 1".repeat(5000));
        assert!(parse(&src).is_err());
        let src = format!("rule r when x/y/z > 0{} then set a/b/c = 1 end", " + 1".repeat(5000));
        assert!(parse(&src).is_err());
        let src = format!("rule r when x/y/z > 0{} then set a/b/c = 1 end", " and x/y/z > 1".repeat(20));
        assert!(parse(&src).is_ok());
    }
}
