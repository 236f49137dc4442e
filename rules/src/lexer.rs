//! The lexer: rule text to tokens with positions.
//!
//! Names may contain `.` and `-`, so a resource path is read as one unit: a run of name characters
//! (`A-Z a-z 0-9 _ . -`, plus `$ : * ?` for variables and globs) that contains a `/` is a path token. A run
//! without `/` is a word, a variable, a number, a duration or a time of day. Operators therefore need
//! spaces around them when their left operand is a name or a path (`a/b/c - 1`, not `a/b/c-1`, which is the
//! path to resource `c-1`).

use crate::diag::{Pos, Span};

/// Words with a meaning in the grammar. They cannot be used as bare names in expressions.
const KEYWORDS: [&str; 32] = [
    "rule", "when", "on", "every", "at", "if", "then", "else", "end", "and", "or", "not", "for", "in", "above",
    "below", "until", "true", "false", "act", "set", "publish", "notify", "call", "with", "cooldown", "retries",
    "samples", "update", "change", "offline", "online",
];

/// Whether `word` is a keyword of the language.
pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

/// Punctuation and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Punct {
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Assign,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
}

impl Punct {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Punct::LParen => "(",
            Punct::RParen => ")",
            Punct::LBracket => "[",
            Punct::RBracket => "]",
            Punct::LBrace => "{",
            Punct::RBrace => "}",
            Punct::Comma => ",",
            Punct::Assign => "=",
            Punct::EqEq => "==",
            Punct::NotEq => "!=",
            Punct::Lt => "<",
            Punct::Le => "<=",
            Punct::Gt => ">",
            Punct::Ge => ">=",
            Punct::Plus => "+",
            Punct::Minus => "-",
            Punct::Star => "*",
            Punct::Slash => "/",
            Punct::Percent => "%",
        }
    }
}

/// One `/`-separated piece of a path token, as written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawSegment {
    pub(crate) text: String,
    pub(crate) span: Span,
}

/// A piece of a string literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StrPart {
    Text(String),
    /// The tokens of a `{...}` placeholder (ending with an `Eof` token at the closing brace).
    Expr(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokKind {
    /// A keyword, a function name, a rule or parameter name.
    Word(String),
    /// `$name` or `$name:glob`.
    Var {
        name: String,
        glob: Option<String>,
    },
    /// A run of name characters containing `/`.
    Path(Vec<RawSegment>),
    /// A number; `integer` when written without fraction or exponent.
    Number {
        value: f64,
        integer: bool,
    },
    /// `5m`, `1h30m`, `500ms`, in microseconds.
    Duration(i64),
    /// `02:00`, `23:59:30`, in microseconds since midnight.
    TimeOfDay(i64),
    Str(Vec<StrPart>),
    Punct(Punct),
    /// Something that is not a token; the message says what is wrong.
    Error(String),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) kind: TokKind,
    pub(crate) span: Span,
}

impl Token {
    /// How the token is named in messages.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            TokKind::Word(w) => format!("`{w}`"),
            TokKind::Var { name, glob: None } => format!("`${name}`"),
            TokKind::Var { name, glob: Some(g) } => format!("`${name}:{g}`"),
            TokKind::Path(segs) => {
                let text: Vec<&str> = segs.iter().map(|s| s.text.as_str()).collect();
                format!("`{}`", text.join("/"))
            }
            TokKind::Number { .. } => "a number".into(),
            TokKind::Duration(_) => "a duration".into(),
            TokKind::TimeOfDay(_) => "a time of day".into(),
            TokKind::Str(_) => "a string".into(),
            TokKind::Punct(p) => format!("`{}`", p.as_str()),
            TokKind::Error(_) => "an invalid token".into(),
            TokKind::Eof => "the end of the text".into(),
        }
    }
}

const MICROS_PER_UNIT: [(&str, i64); 6] = [
    ("ms", 1_000),
    ("s", 1_000_000),
    ("m", 60_000_000),
    ("h", 3_600_000_000),
    ("d", 86_400_000_000),
    ("w", 604_800_000_000),
];

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn is_run_byte(b: u8) -> bool {
    is_name_byte(b) || matches!(b, b'$' | b'*' | b'?' | b'/' | b':')
}

fn is_glob_byte(b: u8) -> bool {
    is_name_byte(b) || matches!(b, b'*' | b'?')
}

/// Splits `src` into tokens. Never fails: problems become [`TokKind::Error`] tokens. The last token is `Eof`.
pub(crate) fn lex(src: &str) -> Vec<Token> {
    let mut lexer = Lexer { src, bytes: src.as_bytes(), i: 0, line: 1, col: 1 };
    let mut out = Vec::new();
    loop {
        let tok = lexer.next_token(false);
        let end = tok.kind == TokKind::Eof;
        out.push(tok);
        if end {
            return out;
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    i: usize,
    line: u32,
    col: u32,
}

impl Lexer<'_> {
    fn pos(&self) -> Pos {
        Pos { offset: self.i, line: self.line, column: self.col }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.i + ahead).copied()
    }

    fn bump(&mut self) {
        if let Some(&b) = self.bytes.get(self.i) {
            self.i += 1;
            if b == b'\n' {
                self.line += 1;
                self.col = 1;
            } else if b & 0xC0 != 0x80 {
                self.col += 1;
            }
        }
    }

    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    /// Moves past one whole character (several bytes in UTF-8).
    fn bump_char(&mut self) {
        self.bump();
        while self.peek().is_some_and(|b| b & 0xC0 == 0x80) {
            self.bump();
        }
    }

    fn text(&self, start: usize) -> &str {
        self.src.get(start..self.i).unwrap_or("")
    }

    fn token(&self, kind: TokKind, start: Pos) -> Token {
        Token { kind, span: Span { start, end: self.pos() } }
    }

    /// Skips the rest of a malformed duration and reports it whole.
    fn not_a_duration(&mut self, start: Pos) -> Token {
        while self.peek().is_some_and(is_name_byte) {
            self.bump();
        }
        let whole = self.text(start.offset).to_string();
        self.error(
            format!("`{whole}` is not a duration; use whole numbers with ms, s, m, h, d or w, e.g. `5m` or `1h30m`"),
            start,
        )
    }

    fn error(&self, message: impl Into<String>, start: Pos) -> Token {
        self.token(TokKind::Error(message.into()), start)
    }

    fn skip_blanks(&mut self, in_template: bool) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\r' => self.bump(),
                b'\n' if !in_template => self.bump(),
                b'#' if !in_template => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.bump();
                    }
                }
                _ => break,
            }
        }
    }

    fn next_token(&mut self, in_template: bool) -> Token {
        self.skip_blanks(in_template);
        let start = self.pos();
        let Some(b) = self.peek() else { return self.token(TokKind::Eof, start) };
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'*') {
            // A path is a run of name characters containing `/`: take it whole.
            let run = self.bytes.get(self.i..).unwrap_or(&[]);
            let len = run.iter().take_while(|&&c| is_run_byte(c)).count();
            if run.get(..len).is_some_and(|r| r.contains(&b'/')) {
                return self.path(start, len);
            }
        }
        match b {
            b'0'..=b'9' => self.number(start),
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let from = self.i;
                while self.peek().is_some_and(is_name_byte) {
                    self.bump();
                }
                let word = self.text(from).to_string();
                self.token(TokKind::Word(word), start)
            }
            b'$' => self.variable(start),
            b'"' if in_template => {
                self.bump();
                self.error("a placeholder `{...}` cannot contain a string; build the text around it instead", start)
            }
            b'"' => self.string(start),
            b'\n' => self.error("a string cannot span lines; close it with `\"` on the same line", start),
            _ => self.punct(start, b),
        }
    }

    fn punct(&mut self, start: Pos, b: u8) -> Token {
        let next = self.peek_at(1);
        let (punct, len) = match (b, next) {
            (b'=', Some(b'=')) => (Punct::EqEq, 2),
            (b'!', Some(b'=')) => (Punct::NotEq, 2),
            (b'<', Some(b'=')) => (Punct::Le, 2),
            (b'>', Some(b'=')) => (Punct::Ge, 2),
            (b'=', _) => (Punct::Assign, 1),
            (b'<', _) => (Punct::Lt, 1),
            (b'>', _) => (Punct::Gt, 1),
            (b'(', _) => (Punct::LParen, 1),
            (b')', _) => (Punct::RParen, 1),
            (b'[', _) => (Punct::LBracket, 1),
            (b']', _) => (Punct::RBracket, 1),
            (b'{', _) => (Punct::LBrace, 1),
            (b'}', _) => (Punct::RBrace, 1),
            (b',', _) => (Punct::Comma, 1),
            (b'+', _) => (Punct::Plus, 1),
            (b'-', _) => (Punct::Minus, 1),
            (b'*', _) => (Punct::Star, 1),
            (b'/', _) => (Punct::Slash, 1),
            (b'%', _) => (Punct::Percent, 1),
            (b'!', _) => {
                self.bump();
                return self.error("unexpected `!`: write `not` for negation and `!=` for \"different from\"", start);
            }
            (b'&', _) => {
                self.bump_n(if next == Some(b'&') { 2 } else { 1 });
                return self.error("unexpected `&`: write `and`", start);
            }
            (b'|', _) => {
                self.bump_n(if next == Some(b'|') { 2 } else { 1 });
                return self.error("unexpected `|`: write `or`", start);
            }
            (b';', _) => {
                self.bump();
                return self.error("unexpected `;`: actions and conditions need no separator", start);
            }
            (b'\'', _) => {
                self.bump();
                return self.error("unexpected `'`: strings use double quotes, \"like this\"", start);
            }
            _ => {
                self.bump_char();
                let c = self.text(start.offset).to_string();
                return self.error(format!("unexpected character `{c}`"), start);
            }
        };
        self.bump_n(len);
        self.token(TokKind::Punct(punct), start)
    }

    fn path(&mut self, start: Pos, len: usize) -> Token {
        let end = self.i + len;
        let mut segments = Vec::new();
        let mut seg_start = self.pos();
        while self.i < end {
            if self.peek() == Some(b'/') {
                let text = self.text(seg_start.offset).to_string();
                segments.push(RawSegment { text, span: Span { start: seg_start, end: self.pos() } });
                self.bump();
                seg_start = self.pos();
            } else {
                self.bump();
            }
        }
        let text = self.text(seg_start.offset).to_string();
        segments.push(RawSegment { text, span: Span { start: seg_start, end: self.pos() } });
        self.token(TokKind::Path(segments), start)
    }

    fn variable(&mut self, start: Pos) -> Token {
        self.bump();
        let from = self.i;
        if !self.peek().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') {
            return self.error("`$` starts a variable: write `$` and a name, e.g. `$home`", start);
        }
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.bump();
        }
        let name = self.text(from).to_string();
        let mut glob = None;
        if self.peek() == Some(b':') && self.peek_at(1).is_some_and(is_glob_byte) {
            self.bump();
            let from = self.i;
            while self.peek().is_some_and(is_glob_byte) {
                self.bump();
            }
            glob = Some(self.text(from).to_string());
        }
        self.token(TokKind::Var { name, glob }, start)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.bump();
        }
    }

    fn number(&mut self, start: Pos) -> Token {
        let from = self.i;
        self.digits();
        if self.peek() == Some(b':') && self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) {
            return self.time_of_day(start, from);
        }
        let mut integer = true;
        if self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) {
            integer = false;
            self.bump();
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let digit_at = if matches!(self.peek_at(1), Some(b'+' | b'-')) { 2 } else { 1 };
            if self.peek_at(digit_at).is_some_and(|b| b.is_ascii_digit()) {
                integer = false;
                self.bump_n(digit_at);
                self.digits();
            }
        }
        let literal = self.text(from).to_string();
        if integer && self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            return self.duration(start, &literal);
        }
        if self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            while self.peek().is_some_and(is_name_byte) {
                self.bump();
            }
            let whole = self.text(from).to_string();
            return self.error(
                format!(
                    "`{whole}` is not a number; durations are whole numbers with a unit (`90s`, not `1.5m`), and \
                     names that start with a digit are only valid inside a path provider/service/resource"
                ),
                start,
            );
        }
        match literal.parse::<f64>() {
            Ok(value) if value.is_finite() => self.token(TokKind::Number { value, integer }, start),
            _ => self.error(format!("the number `{literal}` is too large"), start),
        }
    }

    fn duration(&mut self, start: Pos, first: &str) -> Token {
        let mut total: i64 = 0;
        let mut amount = first.parse::<i64>().ok();
        loop {
            let rest = self.bytes.get(self.i..).unwrap_or(&[]);
            let Some((unit, micros)) = MICROS_PER_UNIT
                .iter()
                .filter(|(u, _)| rest.starts_with(u.as_bytes()))
                .max_by_key(|(u, _)| u.len())
                .copied()
            else {
                return self.not_a_duration(start);
            };
            self.bump_n(unit.len());
            let Some(add) = amount.and_then(|a| a.checked_mul(micros)).and_then(|a| total.checked_add(a)) else {
                while self.peek().is_some_and(is_name_byte) {
                    self.bump();
                }
                return self.error("this duration is too long", start);
            };
            total = add;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                break;
            }
            let from = self.i;
            self.digits();
            amount = self.text(from).parse::<i64>().ok();
        }
        if self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return self.not_a_duration(start);
        }
        self.token(TokKind::Duration(total), start)
    }

    fn time_of_day(&mut self, start: Pos, from: usize) -> Token {
        while self.peek().is_some_and(|b| b.is_ascii_digit() || b == b':') {
            self.bump();
        }
        let text = self.text(from).to_string();
        let parts: Vec<&str> = text.split(':').collect();
        let field = |i: usize, max: i64| -> Option<i64> {
            let p = parts.get(i)?;
            (p.len() == 2).then(|| p.parse::<i64>().ok()).flatten().filter(|v| *v < max)
        };
        let parsed = match parts.len() {
            2 => field(0, 24).zip(field(1, 60)).map(|(h, m)| (h, m, 0)),
            3 => field(0, 24).zip(field(1, 60)).zip(field(2, 60)).map(|((h, m), s)| (h, m, s)),
            _ => None,
        };
        match parsed {
            Some((h, m, s)) if !self.peek().is_some_and(is_name_byte) => {
                self.token(TokKind::TimeOfDay(((h * 60 + m) * 60 + s) * 1_000_000), start)
            }
            _ => {
                while self.peek().is_some_and(is_name_byte) {
                    self.bump();
                }
                self.error(
                    format!("`{text}` is not a time of day; write HH:MM or HH:MM:SS in UTC, e.g. `02:00`"),
                    start,
                )
            }
        }
    }

    fn string(&mut self, start: Pos) -> Token {
        self.bump();
        let mut parts = Vec::new();
        let mut text = String::new();
        loop {
            let Some(b) = self.peek() else {
                return self.error("this string is not closed: add `\"` at its end", start);
            };
            match b {
                b'"' => {
                    self.bump();
                    break;
                }
                b'\n' => return self.error("this string is not closed: add `\"` before the end of the line", start),
                b'\\' => {
                    let esc_start = self.pos();
                    self.bump();
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        _ => {
                            self.skip_rest_of_string();
                            return self.error(
                                "unknown escape in a string; use \\\" \\\\ \\n \\t or \\r, and {{ }} for braces",
                                esc_start,
                            );
                        }
                    };
                    self.bump();
                    text.push(c);
                }
                b'{' if self.peek_at(1) == Some(b'{') => {
                    self.bump_n(2);
                    text.push('{');
                }
                b'}' if self.peek_at(1) == Some(b'}') => {
                    self.bump_n(2);
                    text.push('}');
                }
                b'}' => {
                    let at = self.pos();
                    self.skip_rest_of_string();
                    return self.error("a lone `}` in a string: write `}}` for a brace", at);
                }
                b'{' => {
                    if !text.is_empty() {
                        parts.push(StrPart::Text(std::mem::take(&mut text)));
                    }
                    let open = self.pos();
                    self.bump();
                    match self.placeholder(open) {
                        Ok(tokens) => parts.push(StrPart::Expr(tokens)),
                        Err(tok) => {
                            self.skip_rest_of_string();
                            return tok;
                        }
                    }
                }
                _ => {
                    let from = self.i;
                    self.bump_char();
                    text.push_str(self.text(from));
                }
            }
        }
        if !text.is_empty() || parts.is_empty() {
            parts.push(StrPart::Text(text));
        }
        self.token(TokKind::Str(parts), start)
    }

    /// Lexes a `{...}` placeholder after its `{`, up to and including the matching `}`.
    fn placeholder(&mut self, open: Pos) -> Result<Vec<Token>, Token> {
        let mut tokens = Vec::new();
        let mut depth = 0usize;
        loop {
            let tok = self.next_token(true);
            match &tok.kind {
                TokKind::Eof => return Err(self.error("this `{` placeholder is not closed: add `}`", open)),
                TokKind::Error(_) => return Err(tok),
                TokKind::Punct(Punct::LBrace) => depth += 1,
                TokKind::Punct(Punct::RBrace) if depth == 0 => {
                    tokens.push(Token { kind: TokKind::Eof, span: tok.span });
                    return Ok(tokens);
                }
                TokKind::Punct(Punct::RBrace) => depth -= 1,
                _ => {}
            }
            if self.peek() == Some(b'\n') {
                return Err(self.error("this `{` placeholder is not closed: add `}`", open));
            }
            tokens.push(tok);
        }
    }

    /// After an error inside a string, moves to its closing quote (or the end of the line) so lexing resumes
    /// after the string.
    fn skip_rest_of_string(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => return,
                b'"' => {
                    self.bump();
                    return;
                }
                b'\\' => self.bump_n(2),
                _ => self.bump(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokKind> {
        lex(src).into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn paths_with_dots_and_dashes_are_one_token() {
        let toks = lex("site.a/env.v2/temp.c-1 > 3");
        let TokKind::Path(segs) = &toks[0].kind else { panic!("{:?}", toks[0]) };
        let texts: Vec<&str> = segs.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["site.a", "env.v2", "temp.c-1"]);
        assert_eq!((segs[2].span.start.column, segs[2].span.end.column), (15, 23));
        assert_eq!(toks[1].kind, TokKind::Punct(Punct::Gt));
    }

    #[test]
    fn minus_needs_spaces_after_names_but_not_after_numbers() {
        assert_eq!(
            kinds("70-5"),
            [
                TokKind::Number { value: 70.0, integer: true },
                TokKind::Punct(Punct::Minus),
                TokKind::Number { value: 5.0, integer: true },
                TokKind::Eof
            ]
        );
        assert_eq!(kinds("value-1"), [TokKind::Word("value-1".into()), TokKind::Eof]);
    }

    #[test]
    fn durations_times_and_numbers() {
        assert_eq!(kinds("5m")[0], TokKind::Duration(300_000_000));
        assert_eq!(kinds("1h30m")[0], TokKind::Duration(5_400_000_000));
        assert_eq!(kinds("500ms")[0], TokKind::Duration(500_000));
        assert_eq!(kinds("02:00")[0], TokKind::TimeOfDay(7_200_000_000));
        assert_eq!(kinds("1.5e3")[0], TokKind::Number { value: 1500.0, integer: false });
        assert!(matches!(kinds("25:00")[0], TokKind::Error(_)));
        assert!(matches!(kinds("5x")[0], TokKind::Error(_)));
        assert!(matches!(kinds("1.5m")[0], TokKind::Error(_)));
    }

    #[test]
    fn strings_hold_placeholders() {
        let toks = lex(r#""at {$p}: {value} dB {{x}}""#);
        let TokKind::Str(parts) = &toks[0].kind else { panic!() };
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[4], StrPart::Text(" dB {x}".into()));
        assert!(matches!(kinds(r#""a {"b"} c""#)[0], TokKind::Error(_)));
        assert!(matches!(kinds("\"open")[0], TokKind::Error(_)));
    }

    #[test]
    fn variables_take_an_optional_glob() {
        assert_eq!(kinds("$p:noise-*")[0], TokKind::Var { name: "p".into(), glob: Some("noise-*".into()) });
        assert_eq!(kinds("$home")[0], TokKind::Var { name: "home".into(), glob: None });
    }

    #[test]
    fn columns_count_characters() {
        let toks = lex("\"é\" x");
        assert_eq!(toks[1].span.start.column, 5);
    }
}
