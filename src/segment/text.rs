//! The text form of rules: a parser reporting line and column, and a printer whose output parses
//! back to the same tree.
//!
//! ```text
//! expr      := term ("or" term)*
//! term      := factor ("and" factor)*
//! factor    := "not" factor | "(" expr ")" | predicate
//! predicate := ATTR                                  -- a bool attribute is true
//!            | ATTR ("=" | "!=" | "<" | "<=" | ">" | ">=") literal
//!            | ATTR "between" literal "and" literal  -- inclusive
//!            | ATTR ["not"] "in" "(" literal ("," literal)* ")"
//!            | ATTR ("starts_with" | "ends_with" | "contains") STRING ["ignore_case"]
//!            | ATTR "is" ["not"] "set"
//!            | ATTR ("has_any" | "has_all") "(" STRING ("," STRING)* ")"
//!            | ATTR "within" DURATION                -- 90d, 12h, 2w, 30m, 45s
//!            | "birthday" "within" DURATION
//!            | "in" "segment" STRING
//! literal   := STRING | NUMBER | true | false | DATE (2024-01-31) | TIMESTAMP (RFC 3339)
//! ```
//! Keywords are case-insensitive; strings are double-quoted with `\"` and `\\` escapes.

use crate::error::{Error, Result};
use crate::segment::rule::{CmpOp, Literal, MAX_RULE_TEXT, Pred, PredOp, Rule, TextOp};
use crate::time;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Date(i32),
    Timestamp(i64),
    Duration(i64),
    Op(CmpOp),
    LParen,
    RParen,
    Comma,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Date(_) => "a date".into(),
            Tok::Timestamp(_) => "a timestamp".into(),
            Tok::Duration(_) => "a duration".into(),
            Tok::Op(op) => format!("`{}`", op.symbol()),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::End => "the end of the rule".into(),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }
}

/// A token and where it starts (1-based line and column).
#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    line: usize,
    col: usize,
}

fn err(line: usize, col: usize, msg: impl std::fmt::Display) -> Error {
    Error::invalid("rule_text", format!("line {line}, column {col}: {msg}"))
}

fn lex(src: &str) -> Result<Vec<Spanned>> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    let advance = |i: &mut usize, line: &mut usize, col: &mut usize| {
        let c = chars[*i];
        *i += 1;
        if c == '\n' {
            *line += 1;
            *col = 1;
        } else {
            *col += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let (l0, c0) = (line, col);
        if c.is_whitespace() {
            advance(&mut i, &mut line, &mut col);
            continue;
        }
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' => Tok::Op(CmpOp::Eq),
            '!' if chars.get(i + 1) == Some(&'=') => {
                advance(&mut i, &mut line, &mut col);
                Tok::Op(CmpOp::Ne)
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                if eq {
                    advance(&mut i, &mut line, &mut col);
                }
                Tok::Op(match (c, eq) {
                    ('<', false) => CmpOp::Lt,
                    ('<', true) => CmpOp::Le,
                    ('>', false) => CmpOp::Gt,
                    _ => CmpOp::Ge,
                })
            }
            '"' => {
                let mut s = String::new();
                advance(&mut i, &mut line, &mut col);
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(err(l0, c0, "unterminated string"));
                    };
                    match d {
                        '"' => break,
                        '\\' => {
                            advance(&mut i, &mut line, &mut col);
                            match chars.get(i) {
                                Some(&e @ ('"' | '\\')) => s.push(e),
                                Some(&'n') => s.push('\n'),
                                Some(&'t') => s.push('\t'),
                                _ => return Err(err(line, col, "unknown escape (use \\\" \\\\ \\n \\t)")),
                            }
                        }
                        _ => s.push(d),
                    }
                    advance(&mut i, &mut line, &mut col);
                }
                Tok::Str(s)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i + 1 < chars.len() && (chars[i + 1].is_ascii_alphanumeric() || chars[i + 1] == '_') {
                    advance(&mut i, &mut line, &mut col);
                }
                Tok::Ident(chars[start..=i].iter().collect())
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) => {
                let start = i;
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || matches!(chars[i + 1], '.' | ':' | '+' | '-'))
                {
                    advance(&mut i, &mut line, &mut col);
                }
                let word: String = chars[start..=i].iter().collect();
                classify_number(&word).ok_or_else(|| {
                    if let Some(why) = impossible_date(&word) {
                        return err(l0, c0, format!("invalid date `{word}`: {why}"));
                    }
                    err(l0, c0, format!("`{word}` is not a number, date (2024-01-31), timestamp (RFC 3339) or duration (90d)"))
                })?
            }
            other => return Err(err(l0, c0, format!("unexpected character `{other}`"))),
        };
        advance(&mut i, &mut line, &mut col);
        out.push(Spanned {
            tok,
            line: l0,
            col: c0,
        });
    }
    out.push(Spanned {
        tok: Tok::End,
        line,
        col,
    });
    Ok(out)
}

fn classify_number(word: &str) -> Option<Tok> {
    if let Ok(i) = word.parse::<i64>() {
        return Some(Tok::Int(i));
    }
    if let Some(d) = parse_date(word) {
        return Some(Tok::Date(d));
    }
    if let Some(t) = parse_timestamp(word) {
        return Some(Tok::Timestamp(t));
    }
    if let Some(unit) = word.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let n: i64 = word[..word.len() - 1].parse().ok().filter(|n| *n >= 0)?;
        let secs = match unit.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        return n.checked_mul(secs * 1_000_000).map(Tok::Duration);
    }
    word.parse::<f64>().ok().filter(|f| f.is_finite()).map(Tok::Float)
}

/// Why `word`, written as a date (`YYYY-MM-DD`, alone or starting a timestamp), names no day:
/// `None` if it is not written as a date or names one.
pub fn impossible_date(word: &str) -> Option<String> {
    let b = word.as_bytes();
    let shaped = b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && (b.len() == 10 || matches!(b[10], b'T' | b't'))
        && [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| b[i].is_ascii_digit());
    if !shaped || parse_date(&word[..10]).is_some() {
        return None;
    }
    let part = |r: std::ops::Range<usize>| word[r].parse::<i32>().ok();
    Some(time::no_such_date(part(0..4)?, part(5..7)?, part(8..10)?))
}

/// `YYYY-MM-DD` as days since the epoch.
pub fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i32 = s[0..4].parse().ok()?;
    let m: i32 = s[5..7].parse().ok()?;
    let d: i32 = s[8..10].parse().ok()?;
    time::days_from_civil(y, m, d)
}

/// An RFC 3339 timestamp (`2024-01-31T10:00:00Z`, fractional seconds and offsets allowed).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if s.len() < 20 || !matches!(s.as_bytes()[10], b'T' | b't') {
        return None;
    }
    let days = parse_date(&s[..10])?;
    let rest = &s[11..];
    let (hms, zone) = rest.split_at(rest.find(['Z', 'z', '+', '-'])?);
    let (hms, frac) = match hms.split_once('.') {
        Some((a, f)) => (a, f),
        None => (hms, ""),
    };
    let mut parts = hms.split(':');
    let h: i64 = parts.next()?.parse().ok().filter(|h| (0..24).contains(h))?;
    let mi: i64 = parts.next()?.parse().ok().filter(|m| (0..60).contains(m))?;
    let se: i64 = parts.next()?.parse().ok().filter(|s| (0..61).contains(s))?;
    if parts.next().is_some() || !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let micros_frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}")[..6].parse().ok()?
    };
    let offset = match zone {
        "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z[1..].split_once(':')?;
            let oh: i64 = oh.parse().ok().filter(|h| (0..24).contains(h))?;
            let om: i64 = om.parse().ok().filter(|m| (0..60).contains(m))?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = i64::from(days) * 86_400 + h * 3600 + mi * 60 + se - offset;
    time::micros_from_parts(secs, 0).map(|m| m + micros_frac)
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Spanned {
        &self.toks[self.pos]
    }

    fn next(&mut self) -> Spanned {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn expected(&self, what: &str) -> Error {
        let t = self.peek();
        err(
            t.line,
            t.col,
            format!("expected {what}, found {}", t.tok.describe()),
        )
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek().tok.is_kw(kw) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.expected(&format!("`{kw}`")))
        }
    }

    fn expect(&mut self, tok: Tok) -> Result<()> {
        if self.peek().tok == tok {
            self.next();
            Ok(())
        } else {
            Err(self.expected(&tok.describe()))
        }
    }

    fn expr(&mut self) -> Result<Rule> {
        let mut terms = vec![self.term()?];
        while self.eat_kw("or") {
            terms.push(self.term()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Rule::Or(terms)
        })
    }

    fn term(&mut self) -> Result<Rule> {
        let mut factors = vec![self.factor()?];
        while self.eat_kw("and") {
            factors.push(self.factor()?);
        }
        Ok(if factors.len() == 1 {
            factors.pop().unwrap()
        } else {
            Rule::And(factors)
        })
    }

    fn factor(&mut self) -> Result<Rule> {
        self.depth += 1;
        if self.depth > crate::segment::rule::MAX_RULE_DEPTH {
            let t = self.peek();
            return Err(err(
                t.line,
                t.col,
                format!(
                    "nested deeper than {} levels",
                    crate::segment::rule::MAX_RULE_DEPTH
                ),
            ));
        }
        let r = if self.eat_kw("not") {
            Rule::Not(Box::new(self.factor()?))
        } else if self.peek().tok == Tok::LParen {
            self.next();
            let e = self.expr()?;
            self.expect(Tok::RParen)?;
            e
        } else {
            Rule::Pred(self.predicate()?)
        };
        self.depth -= 1;
        Ok(r)
    }

    fn string(&mut self) -> Result<String> {
        match self.peek().tok.clone() {
            Tok::Str(s) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.expected("a string in double quotes")),
        }
    }

    fn literal(&mut self) -> Result<Literal> {
        let lit = match self.peek().tok.clone() {
            Tok::Str(s) => Literal::Str(s),
            Tok::Int(i) => Literal::Int(i),
            Tok::Float(f) => Literal::Float(f),
            Tok::Date(d) => Literal::Date(d),
            Tok::Timestamp(t) => Literal::Timestamp(t),
            Tok::Ident(s) if s.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Tok::Ident(s) if s.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => return Err(self.expected("a value (string, number, true, false, date or timestamp)")),
        };
        self.next();
        Ok(lit)
    }

    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        self.expect(Tok::LParen)?;
        let mut out = vec![item(self)?];
        while self.peek().tok == Tok::Comma {
            self.next();
            out.push(item(self)?);
        }
        self.expect(Tok::RParen)?;
        if out.len() > crate::segment::rule::MAX_LIST_VALUES {
            let t = self.peek();
            return Err(err(t.line, t.col, "list longer than 1000 values"));
        }
        Ok(out)
    }

    /// `90d`, `12h`, `2w`, or spelled out: `90 days`, `1 week`.
    fn duration(&mut self) -> Result<i64> {
        match self.peek().tok {
            Tok::Duration(d) => {
                self.next();
                Ok(d)
            }
            Tok::Int(n) if n >= 0 => {
                self.next();
                let secs = match &self.peek().tok {
                    Tok::Ident(unit) => match unit.to_ascii_lowercase().as_str() {
                        "second" | "seconds" => 1,
                        "minute" | "minutes" => 60,
                        "hour" | "hours" => 3600,
                        "day" | "days" => 86_400,
                        "week" | "weeks" => 7 * 86_400,
                        _ => return Err(self.expected("a unit: seconds, minutes, hours, days or weeks")),
                    },
                    _ => return Err(self.expected("a unit: seconds, minutes, hours, days or weeks")),
                };
                self.next();
                n.checked_mul(secs * 1_000_000)
                    .ok_or_else(|| self.expected("a shorter duration"))
            }
            _ => Err(self.expected("a duration such as 90d, 12h, 2w or 7 days")),
        }
    }

    fn predicate(&mut self) -> Result<Pred> {
        if self.peek().tok.is_kw("in") {
            self.next();
            self.expect_kw("segment")?;
            let id = self.string()?;
            return Ok(Pred {
                attr: String::new(),
                op: PredOp::InSegment(id),
            });
        }
        let attr = match self.peek().tok.clone() {
            Tok::Ident(name) if !is_reserved(&name) || name.eq_ignore_ascii_case("birthday") => {
                self.next();
                name
            }
            _ => return Err(self.expected("an attribute name, `not`, `(` or `in segment`")),
        };
        let t = self.peek().tok.clone();
        if attr.eq_ignore_ascii_case("birthday") && !t.is_kw("within") {
            return Err(self.expected("`within` after `birthday`"));
        }
        let op = match t {
            Tok::Op(op) => {
                self.next();
                PredOp::Cmp(op, self.literal()?)
            }
            _ if t.is_kw("between") => {
                self.next();
                let lo = self.literal()?;
                self.expect_kw("and")?;
                PredOp::Between(lo, self.literal()?)
            }
            _ if t.is_kw("not") => {
                self.next();
                self.expect_kw("in")?;
                PredOp::In {
                    negated: true,
                    values: self.list(Self::literal)?,
                }
            }
            _ if t.is_kw("in") => {
                self.next();
                PredOp::In {
                    negated: false,
                    values: self.list(Self::literal)?,
                }
            }
            _ if t.is_kw("starts_with") || t.is_kw("ends_with") || t.is_kw("contains") => {
                self.next();
                let op = if t.is_kw("starts_with") {
                    TextOp::StartsWith
                } else if t.is_kw("ends_with") {
                    TextOp::EndsWith
                } else {
                    TextOp::Contains
                };
                let value = self.string()?;
                let ignore_case = self.eat_kw("ignore_case");
                PredOp::Text {
                    op,
                    value,
                    ignore_case,
                }
            }
            _ if t.is_kw("is") => {
                self.next();
                let negated = self.eat_kw("not");
                self.expect_kw("set")?;
                PredOp::IsSet { negated }
            }
            _ if t.is_kw("has_any") || t.is_kw("has_all") => {
                self.next();
                PredOp::Has {
                    all: t.is_kw("has_all"),
                    values: self.list(Self::string)?,
                }
            }
            _ if t.is_kw("within") => {
                self.next();
                PredOp::Within {
                    micros: self.duration()?,
                }
            }
            _ => PredOp::IsTrue,
        };
        let attr = if attr.eq_ignore_ascii_case("birthday") {
            "birthday".into()
        } else {
            attr
        };
        Ok(Pred { attr, op })
    }
}

/// Keywords that cannot start a predicate as an attribute name.
fn is_reserved(word: &str) -> bool {
    crate::segment::rule::KEYWORDS
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// Parses the text form of a rule. Errors name the line and column and what was expected.
pub fn parse(src: &str) -> Result<Rule> {
    if src.len() > MAX_RULE_TEXT {
        return Err(Error::invalid(
            "rule_text",
            format!("longer than {MAX_RULE_TEXT} bytes"),
        ));
    }
    let toks = lex(src)?;
    if toks.len() == 1 {
        return Err(err(1, 1, "the rule is empty"));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let rule = p.expr()?;
    if p.peek().tok != Tok::End {
        return Err(p.expected("`and`, `or` or the end of the rule"));
    }
    Ok(rule)
}

/// The text form of a rule; `parse(&print(r)) == r` for every rule the parser produces.
pub fn print(rule: &Rule) -> String {
    let mut out = String::new();
    write_rule(rule, 0, &mut out);
    out
}

/// Precedence: 0 at top, 1 inside `or`, 2 inside `and`, 3 under `not`.
fn write_rule(rule: &Rule, ctx: u8, out: &mut String) {
    match rule {
        Rule::Or(v) => {
            let paren = ctx > 0;
            if paren {
                out.push('(');
            }
            for (i, c) in v.iter().enumerate() {
                if i > 0 {
                    out.push_str(" or ");
                }
                write_rule(c, 1, out);
            }
            if paren {
                out.push(')');
            }
        }
        Rule::And(v) => {
            let paren = ctx > 1;
            if paren {
                out.push('(');
            }
            for (i, c) in v.iter().enumerate() {
                if i > 0 {
                    out.push_str(" and ");
                }
                write_rule(c, 2, out);
            }
            if paren {
                out.push(')');
            }
        }
        Rule::Not(c) => {
            out.push_str("not ");
            write_rule(c, 3, out);
        }
        Rule::Pred(p) => write_pred(p, out),
    }
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A literal in the text form.
pub fn literal_text(l: &Literal) -> String {
    match l {
        Literal::Str(s) => quote(s),
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => {
            let s = format!("{f:?}");
            let s = if s.contains(['e', 'E']) { format!("{f}") } else { s };
            // Keep it a float when read back: `5909973711006583000` would read as an int.
            if s.contains('.') { s } else { format!("{s}.0") }
        }
        Literal::Bool(b) => b.to_string(),
        Literal::Date(d) => {
            let (y, m, dd) = time::civil_from_days(*d);
            format!("{y:04}-{m:02}-{dd:02}")
        }
        Literal::Timestamp(t) => timestamp_text(*t),
    }
}

/// RFC 3339 in UTC with the fraction only when needed.
pub fn timestamp_text(micros: i64) -> String {
    let (secs, nanos) = time::parts_from_micros(micros);
    let days = secs.div_euclid(86_400) as i32;
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = time::civil_from_days(days);
    let base = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos == 0 {
        format!("{base}Z")
    } else {
        format!("{base}.{:06}Z", nanos / 1000)
    }
}

/// A duration in the largest unit that divides it.
pub fn duration_text(micros: i64) -> String {
    let secs = micros / 1_000_000;
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs % n == 0 && secs != 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

fn write_pred(p: &Pred, out: &mut String) {
    let list = |v: &[String]| v.join(", ");
    let text = match &p.op {
        PredOp::IsTrue => p.attr.clone(),
        PredOp::Cmp(op, l) => format!("{} {} {}", p.attr, op.symbol(), literal_text(l)),
        PredOp::Between(a, b) => format!("{} between {} and {}", p.attr, literal_text(a), literal_text(b)),
        PredOp::In { negated, values } => format!(
            "{}{} in ({})",
            p.attr,
            if *negated { " not" } else { "" },
            list(&values.iter().map(literal_text).collect::<Vec<_>>())
        ),
        PredOp::Text {
            op,
            value,
            ignore_case,
        } => format!(
            "{} {} {}{}",
            p.attr,
            op.keyword(),
            quote(value),
            if *ignore_case { " ignore_case" } else { "" }
        ),
        PredOp::IsSet { negated } => format!("{} is {}set", p.attr, if *negated { "not " } else { "" }),
        PredOp::Has { all, values } => format!(
            "{} {} ({})",
            p.attr,
            if *all { "has_all" } else { "has_any" },
            list(&values.iter().map(|v| quote(v)).collect::<Vec<_>>())
        ),
        PredOp::Within { micros } => format!("{} within {}", p.attr, duration_text(*micros)),
        PredOp::InSegment(id) => format!("in segment {}", quote(id)),
    };
    out.push_str(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(attr: &str, op: PredOp) -> Rule {
        Rule::Pred(Pred {
            attr: attr.into(),
            op,
        })
    }

    #[test]
    fn parses_the_examples() {
        let r = parse(r#"registered and gender = "M" and age > 40"#).unwrap();
        assert_eq!(
            r,
            Rule::And(vec![
                pred("registered", PredOp::IsTrue),
                pred("gender", PredOp::Cmp(CmpOp::Eq, Literal::Str("M".into()))),
                pred("age", PredOp::Cmp(CmpOp::Gt, Literal::Int(40))),
            ])
        );
        let r =
            parse(r#"total_spent >= 1000 AND last_order_at WITHIN 90d and not in segment "staff""#).unwrap();
        let Rule::And(v) = &r else { panic!() };
        assert_eq!(
            v[1],
            pred(
                "last_order_at",
                PredOp::Within {
                    micros: 90 * 86_400_000_000
                }
            )
        );
        assert_eq!(
            v[2],
            Rule::Not(Box::new(pred("", PredOp::InSegment("staff".into()))))
        );
    }

    #[test]
    fn precedence_and_round_trip() {
        let cases = [
            r#"a or b and c"#,
            r#"(a or b) and not (c or d)"#,
            r#"city in ("Lyon", "Paris") and postal_code not in ("75001")"#,
            r#"email_domain ends_with "example.com" ignore_case"#,
            r#"tags has_all ("golf", "ski") or tags has_any ("tennis")"#,
            r#"birth_date between 1980-01-01 and 1989-12-31 and registered_at < 2024-01-01T10:30:00.250Z"#,
            r#"birthday within 7d and x is not set and y is set and z != -3.5 and w = false"#,
            r#"name = "say \"hi\" \\ there""#,
        ];
        for src in cases {
            let r = parse(src).unwrap();
            let printed = print(&r);
            assert_eq!(parse(&printed).unwrap(), r, "{src} -> {printed}");
        }
        assert_eq!(print(&parse("a or b and c").unwrap()), "a or b and c");
        assert_eq!(print(&parse("(a or b) and c").unwrap()), "(a or b) and c");
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("gender = ").unwrap_err().to_string();
        assert!(
            e.contains("line 1, column 10") && e.contains("expected a value"),
            "{e}"
        );
        let e = parse("registered and\n  (age > 40").unwrap_err().to_string();
        assert!(
            e.contains("line 2, column 12") && e.contains("expected `)`"),
            "{e}"
        );
        let e = parse("age > 40 40").unwrap_err().to_string();
        assert!(e.contains("line 1, column 10"), "{e}");
        let e = parse(r#"name = "open"#).unwrap_err().to_string();
        assert!(e.contains("unterminated string"), "{e}");
        let e = parse("a within 90y").unwrap_err().to_string();
        assert!(e.contains("column 10"), "{e}");
        assert!(parse("").is_err());
        assert!(
            parse(&"(".repeat(40))
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
        let e = parse("birthday = 3").unwrap_err().to_string();
        assert!(e.contains("expected `within`"), "{e}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_timestamp("1970-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.5Z"), Some(500_000));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00Z"), None);
        assert_eq!(timestamp_text(1_500_000), "1970-01-01T00:00:01.500000Z");
    }

    #[test]
    fn an_impossible_date_says_so() {
        let e = parse("birth_date > 2025-02-30").unwrap_err().to_string();
        assert!(
            e.contains("column 14: invalid date `2025-02-30`: month 2 of 2025 has 28 days"),
            "{e}"
        );
        let e = parse("birth_date > 2024-02-30").unwrap_err().to_string();
        assert!(e.contains("month 2 of 2024 has 29 days"), "{e}");
        let e = parse("registered_at > 2025-13-01T00:00:00Z")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid date `2025-13-01T00:00:00Z`: there is no month 13"),
            "{e}"
        );
        // Not written as a date: the general message.
        let e = parse("age > 12x").unwrap_err().to_string();
        assert!(e.contains("is not a number, date"), "{e}");
        assert_eq!(impossible_date("2024-02-29"), None);
        assert_eq!(
            impossible_date("2024-04-31").as_deref(),
            Some("month 4 of 2024 has 30 days")
        );
    }
}
