//! Checking a rule against the schema and turning it into an expression of typed leaves.
//!
//! Numeric predicates become sorted inclusive ranges (`age > 40` is `[41, MAX]`, `x != 3` is `[3, 3]`
//! negated), money literals are major units turned into minor units (`total_spent >= 1000` is
//! `>= 100000` cents, rounded to the nearest cent), and relative-time predicates stay relative until
//! [`crate::segment::eval`] binds them to "now".

use crate::columnar::schema::{AttrId, AttrType, Schema};
use crate::error::{Error, Result};
use crate::segment::rule::{CmpOp, Literal, MAX_RULE_DEPTH, MAX_RULE_NODES, Pred, PredOp, Rule, TextOp};
use crate::time::MICROS_PER_DAY;

/// A test on a number: inside any of the inclusive ranges, or outside all of them when negated.
/// A missing value fails the test either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges<T> {
    pub ranges: Vec<(T, T)>,
    pub negated: bool,
}

impl<T: PartialOrd + Copy> Ranges<T> {
    pub fn test(&self, v: T) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi) != self.negated
    }
}

/// A test on a string value.
#[derive(Debug, Clone, PartialEq)]
pub enum StrTest {
    /// One of these values (or none of them when negated).
    Values { values: Vec<String>, negated: bool },
    Match {
        op: TextOp,
        pattern: String,
        ignore_case: bool,
    },
}

impl StrTest {
    pub fn test(&self, s: &str) -> bool {
        match self {
            StrTest::Values { values, negated } => values.iter().any(|v| v == s) != *negated,
            StrTest::Match {
                op,
                pattern,
                ignore_case,
            } => {
                if *ignore_case {
                    text_match(*op, &s.to_lowercase(), pattern)
                } else {
                    text_match(*op, s, pattern)
                }
            }
        }
    }
}

fn text_match(op: TextOp, s: &str, pattern: &str) -> bool {
    match op {
        TextOp::StartsWith => s.starts_with(pattern),
        TextOp::EndsWith => s.ends_with(pattern),
        TextOp::Contains => s.contains(pattern),
    }
}

/// Relative-time predicates, bound to a concrete range when evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum Relative {
    /// A timestamp within the last `micros` (and not in the future).
    TimestampWithin { attr: AttrId, micros: i64 },
    /// A date within the last `days` days, today included.
    DateWithin { attr: AttrId, days: i32 },
    /// `age` in whole years, from `birth_date`.
    Age { attr: AttrId, years: Ranges<i64> },
    /// Whole days since a timestamp (`days_since_last_order`).
    DaysSince { attr: AttrId, days: Ranges<i64> },
    /// The next birthday (from `birth_date`) is within `days` days, today included.
    Birthday { attr: AttrId, days: i32 },
}

impl Relative {
    pub fn attr(&self) -> AttrId {
        match self {
            Relative::TimestampWithin { attr, .. }
            | Relative::DateWithin { attr, .. }
            | Relative::Age { attr, .. }
            | Relative::DaysSince { attr, .. }
            | Relative::Birthday { attr, .. } => *attr,
        }
    }
}

/// A predicate checked against the schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf {
    /// A bool attribute equals `value`.
    Bool {
        attr: AttrId,
        value: bool,
    },
    /// int, money (minor units), timestamp (micros).
    I64 {
        attr: AttrId,
        test: Ranges<i64>,
    },
    /// date (days since the epoch).
    I32 {
        attr: AttrId,
        test: Ranges<i32>,
    },
    F64 {
        attr: AttrId,
        test: Ranges<f64>,
    },
    Keyword {
        attr: AttrId,
        test: StrTest,
    },
    Keywords {
        attr: AttrId,
        values: Vec<String>,
        all: bool,
    },
    Text {
        attr: AttrId,
        test: StrTest,
    },
    IsSet {
        attr: AttrId,
        negated: bool,
    },
    Relative(Relative),
    /// Member of the segment in this registry slot.
    InSegment {
        slot: u32,
    },
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Leaf(Leaf),
    /// A predicate that can never hold (`household_size = 2.5`).
    Never,
}

/// A rule ready to evaluate, with what it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub expr: Expr,
    /// Attributes read, by id.
    pub attrs: Vec<AttrId>,
    /// Segment slots read through `in segment`.
    pub segments: Vec<u32>,
    /// Whether the result depends on the current time.
    pub time_dependent: bool,
}

/// Compiles `rule` against `schema`; `segment_slot` resolves `in segment` ids.
pub fn compile(rule: &Rule, schema: &Schema, segment_slot: &dyn Fn(&str) -> Option<u32>) -> Result<Compiled> {
    let (nodes, depth) = rule.size();
    if nodes > MAX_RULE_NODES {
        return Err(Error::invalid(
            "rule",
            format!("{nodes} nodes, more than {MAX_RULE_NODES}"),
        ));
    }
    if depth > MAX_RULE_DEPTH {
        return Err(Error::invalid(
            "rule",
            format!("nested {depth} deep, more than {MAX_RULE_DEPTH}"),
        ));
    }
    let mut c = Compiled {
        expr: Expr::Never,
        attrs: Vec::new(),
        segments: Vec::new(),
        time_dependent: false,
    };
    c.expr = compile_node(rule, schema, segment_slot, &mut c)?;
    c.attrs.sort_unstable();
    c.attrs.dedup();
    c.segments.sort_unstable();
    c.segments.dedup();
    Ok(c)
}

fn compile_node(
    rule: &Rule,
    schema: &Schema,
    slot: &dyn Fn(&str) -> Option<u32>,
    c: &mut Compiled,
) -> Result<Expr> {
    Ok(match rule {
        Rule::And(v) if v.is_empty() => return Err(Error::invalid("rule", "`and` needs at least one rule")),
        Rule::Or(v) if v.is_empty() => return Err(Error::invalid("rule", "`or` needs at least one rule")),
        Rule::And(v) => Expr::And(
            v.iter()
                .map(|r| compile_node(r, schema, slot, c))
                .collect::<Result<_>>()?,
        ),
        Rule::Or(v) => Expr::Or(
            v.iter()
                .map(|r| compile_node(r, schema, slot, c))
                .collect::<Result<_>>()?,
        ),
        Rule::Not(r) => Expr::Not(Box::new(compile_node(r, schema, slot, c)?)),
        Rule::Pred(p) => compile_pred(p, schema, slot, c)?,
    })
}

fn mismatch(p: &Pred, what: &str) -> Error {
    Error::invalid("rule", format!("`{}`: {what}", p.attr))
}

fn lit_name(l: &Literal) -> &'static str {
    match l {
        Literal::Str(_) => "a string",
        Literal::Int(_) | Literal::Float(_) => "a number",
        Literal::Bool(_) => "true or false",
        Literal::Date(_) => "a date",
        Literal::Timestamp(_) => "a timestamp",
    }
}

/// The comparison as a list of literals and the shape of the test.
enum Shape<'a> {
    Cmp(CmpOp, &'a Literal),
    Between(&'a Literal, &'a Literal),
    In(bool, &'a [Literal]),
}

fn compile_pred(
    p: &Pred,
    schema: &Schema,
    segment_slot: &dyn Fn(&str) -> Option<u32>,
    c: &mut Compiled,
) -> Result<Expr> {
    if let PredOp::InSegment(id) = &p.op {
        let slot = segment_slot(id)
            .ok_or_else(|| Error::invalid("rule", format!("`in segment \"{id}\"`: no such segment")))?;
        c.segments.push(slot);
        return Ok(Expr::Leaf(Leaf::InSegment { slot }));
    }
    // Derived attributes.
    let derived = |base: &str| -> Result<AttrId> {
        schema
            .get(base)
            .map(|d| d.id)
            .ok_or_else(|| Error::Internal(format!("built-in attribute `{base}` is missing")))
    };
    match p.attr.as_str() {
        "age" | "days_since_last_order" => {
            let base = derived(if p.attr == "age" {
                "birth_date"
            } else {
                "last_order_at"
            })?;
            c.attrs.push(base);
            if let PredOp::IsSet { negated } = p.op {
                return Ok(Expr::Leaf(Leaf::IsSet { attr: base, negated }));
            }
            let shape = shape(p)?;
            let Some(ranges) = int_ranges(p, &shape, 1, false)? else {
                return Ok(Expr::Never);
            };
            c.time_dependent = true;
            return Ok(Expr::Leaf(Leaf::Relative(if p.attr == "age" {
                Relative::Age {
                    attr: base,
                    years: ranges,
                }
            } else {
                Relative::DaysSince {
                    attr: base,
                    days: ranges,
                }
            })));
        }
        "birthday" => {
            let PredOp::Within { micros } = p.op else {
                return Err(mismatch(p, "only `birthday within <days>` is supported"));
            };
            let attr = derived("birth_date")?;
            c.attrs.push(attr);
            c.time_dependent = true;
            return Ok(Expr::Leaf(Leaf::Relative(Relative::Birthday {
                attr,
                days: whole_days(micros),
            })));
        }
        _ => {}
    }
    let def = schema.get(&p.attr).ok_or_else(|| {
        let hint = schema
            .nearest(&p.attr)
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        Error::invalid(
            "rule",
            format!("`{}`: unknown attribute{hint} (see Admin.GetSchema)", p.attr),
        )
    })?;
    let attr = def.id;
    c.attrs.push(attr);
    let ty = def.ty;
    let leaf = match (&p.op, ty) {
        (PredOp::IsSet { negated }, _) => Leaf::IsSet {
            attr,
            negated: *negated,
        },
        (PredOp::IsTrue, AttrType::Bool) => Leaf::Bool { attr, value: true },
        (PredOp::IsTrue, _) => {
            return Err(mismatch(
                p,
                &format!("is a {}, not a bool: compare it with a value", ty.name()),
            ));
        }
        (PredOp::Within { micros }, AttrType::Timestamp) => {
            c.time_dependent = true;
            Leaf::Relative(Relative::TimestampWithin {
                attr,
                micros: *micros,
            })
        }
        (PredOp::Within { micros }, AttrType::Date) => {
            c.time_dependent = true;
            Leaf::Relative(Relative::DateWithin {
                attr,
                days: whole_days(*micros),
            })
        }
        (PredOp::Within { .. }, _) => {
            return Err(mismatch(
                p,
                &format!("is a {}; `within` needs a date or timestamp", ty.name()),
            ));
        }
        (PredOp::Has { all, values }, AttrType::Keywords) => Leaf::Keywords {
            attr,
            values: values.clone(),
            all: *all,
        },
        (PredOp::Has { .. }, _) => {
            return Err(mismatch(
                p,
                &format!("is a {}; has_any/has_all need a keywords attribute", ty.name()),
            ));
        }
        (_, AttrType::Keywords) => {
            return Err(mismatch(
                p,
                "is a keywords set: use has_any (...), has_all (...) or is set",
            ));
        }
        (
            PredOp::Text {
                op,
                value,
                ignore_case,
            },
            AttrType::Keyword | AttrType::Text,
        ) => {
            let test = StrTest::Match {
                op: *op,
                pattern: if *ignore_case {
                    value.to_lowercase()
                } else {
                    value.clone()
                },
                ignore_case: *ignore_case,
            };
            if ty == AttrType::Keyword {
                Leaf::Keyword { attr, test }
            } else {
                Leaf::Text { attr, test }
            }
        }
        (PredOp::Text { .. }, _) => {
            return Err(mismatch(
                p,
                &format!("is a {}; starts_with/ends_with/contains need a string", ty.name()),
            ));
        }
        (_, AttrType::Keyword | AttrType::Text) => {
            let test = str_test(p, &shape(p)?)?;
            if ty == AttrType::Keyword {
                Leaf::Keyword { attr, test }
            } else {
                Leaf::Text { attr, test }
            }
        }
        (_, AttrType::Bool) => {
            let shape = shape(p)?;
            let (value, negated) = match shape {
                Shape::Cmp(CmpOp::Eq, Literal::Bool(b)) => (*b, false),
                Shape::Cmp(CmpOp::Ne, Literal::Bool(b)) => (*b, true),
                _ => {
                    return Err(mismatch(
                        p,
                        "is a bool: use `= true`, `= false`, `!=` or the name alone",
                    ));
                }
            };
            // `!= true` holds for customers whose value is false, not for missing values.
            Leaf::Bool {
                attr,
                value: value != negated,
            }
        }
        (_, AttrType::Int | AttrType::Money | AttrType::Timestamp) => {
            let shape = shape(p)?;
            let scale = if ty == AttrType::Money { 100 } else { 1 };
            match int_ranges(p, &shape, scale, ty == AttrType::Timestamp)? {
                Some(test) => Leaf::I64 { attr, test },
                None => return Ok(Expr::Never),
            }
        }
        (_, AttrType::Date) => {
            let shape = shape(p)?;
            let ranges = date_ranges(p, &shape)?;
            Leaf::I32 { attr, test: ranges }
        }
        (_, AttrType::Float) => Leaf::F64 {
            attr,
            test: float_ranges(p, &shape(p)?)?,
        },
    };
    Ok(Expr::Leaf(leaf))
}

fn whole_days(micros: i64) -> i32 {
    (micros.div_euclid(MICROS_PER_DAY) + i64::from(micros.rem_euclid(MICROS_PER_DAY) != 0))
        .min(i64::from(i32::MAX)) as i32
}

fn shape(p: &Pred) -> Result<Shape<'_>> {
    Ok(match &p.op {
        PredOp::Cmp(op, l) => Shape::Cmp(*op, l),
        PredOp::Between(a, b) => Shape::Between(a, b),
        PredOp::In { negated, values } if !values.is_empty() => Shape::In(*negated, values),
        PredOp::In { .. } => return Err(mismatch(p, "`in` needs at least one value")),
        _ => return Err(mismatch(p, "this operator does not apply here")),
    })
}

fn str_test(p: &Pred, shape: &Shape<'_>) -> Result<StrTest> {
    let s = |l: &Literal| match l {
        Literal::Str(s) => Ok(s.clone()),
        other => Err(mismatch(
            p,
            &format!(
                "is a string attribute; {} is {}",
                describe(other),
                lit_name(other)
            ),
        )),
    };
    Ok(match shape {
        Shape::Cmp(CmpOp::Eq, l) => StrTest::Values {
            values: vec![s(l)?],
            negated: false,
        },
        Shape::Cmp(CmpOp::Ne, l) => StrTest::Values {
            values: vec![s(l)?],
            negated: true,
        },
        Shape::In(negated, ls) => StrTest::Values {
            values: ls.iter().map(s).collect::<Result<_>>()?,
            negated: *negated,
        },
        _ => {
            return Err(mismatch(
                p,
                "strings compare with =, !=, in, starts_with, ends_with or contains",
            ));
        }
    })
}

fn describe(l: &Literal) -> String {
    crate::segment::text::literal_text(l)
}

/// Integer ranges for `shape`; `None` when nothing can match. `scale` turns major units into minor
/// units for money; timestamps also accept dates (midnight UTC).
fn int_ranges(p: &Pred, shape: &Shape<'_>, scale: i64, timestamp: bool) -> Result<Option<Ranges<i64>>> {
    // Each literal as an exact value, or a fractional one to round in the comparison's favour.
    let num = |l: &Literal| -> Result<f64> {
        match l {
            Literal::Int(i) => Ok(*i as f64 * scale as f64),
            Literal::Float(f) if !timestamp => Ok(if scale == 1 {
                *f
            } else {
                (f * scale as f64).round()
            }),
            Literal::Timestamp(t) if timestamp => Ok(*t as f64),
            Literal::Date(d) if timestamp => Ok(f64::from(*d) * MICROS_PER_DAY as f64),
            other => Err(mismatch(
                p,
                &format!(
                    "is {}; {} is {}",
                    if timestamp {
                        "a timestamp (compare with a date or timestamp)"
                    } else {
                        "a number"
                    },
                    describe(other),
                    lit_name(other)
                ),
            )),
        }
    };
    // Exact integer paths first, to keep full i64 precision for timestamps.
    let exact = |l: &Literal| -> Option<i64> {
        match l {
            Literal::Int(i) => i.checked_mul(scale),
            Literal::Timestamp(t) if timestamp => Some(*t),
            Literal::Date(d) if timestamp => Some(i64::from(*d) * MICROS_PER_DAY),
            _ => None,
        }
    };
    let bound = |l: &Literal, up: bool| -> Result<Option<i64>> {
        let f = num(l)?;
        if let Some(x) = exact(l) {
            return Ok(Some(x));
        }
        let r = if up { f.ceil() } else { f.floor() };
        Ok((r >= i64::MIN as f64 && r <= i64::MAX as f64).then_some(r as i64))
    };
    let point = |l: &Literal| -> Result<Option<i64>> {
        num(l)?;
        Ok(exact(l).or_else(|| match l {
            Literal::Float(f) if (f * scale as f64).fract() == 0.0 => Some((f * scale as f64) as i64),
            _ => None,
        }))
    };
    let one = |lo: i64, hi: i64, negated| Ranges {
        ranges: vec![(lo, hi)],
        negated,
    };
    Ok(Some(match shape {
        Shape::Cmp(CmpOp::Eq, l) => match point(l)? {
            Some(x) => one(x, x, false),
            None => return Ok(None),
        },
        Shape::Cmp(CmpOp::Ne, l) => match point(l)? {
            Some(x) => one(x, x, true),
            None => one(i64::MIN, i64::MAX, false),
        },
        Shape::Cmp(CmpOp::Lt, l) => match (exact(l), bound(l, false)?) {
            (Some(x), _) => one(i64::MIN, x.saturating_sub(1), false),
            (None, Some(x)) => one(i64::MIN, if num(l)?.fract() == 0.0 { x - 1 } else { x }, false),
            (None, None) => return Ok(None),
        },
        Shape::Cmp(CmpOp::Le, l) => one(i64::MIN, bound(l, false)?.unwrap_or(i64::MAX), false),
        Shape::Cmp(CmpOp::Gt, l) => match (exact(l), bound(l, true)?) {
            (Some(x), _) => one(x.saturating_add(1), i64::MAX, false),
            (None, Some(x)) => one(if num(l)?.fract() == 0.0 { x + 1 } else { x }, i64::MAX, false),
            (None, None) => return Ok(None),
        },
        Shape::Cmp(CmpOp::Ge, l) => one(bound(l, true)?.unwrap_or(i64::MIN), i64::MAX, false),
        Shape::Between(a, b) => {
            let (lo, hi) = (
                bound(a, true)?.unwrap_or(i64::MIN),
                bound(b, false)?.unwrap_or(i64::MAX),
            );
            if lo > hi {
                return Ok(None);
            }
            one(lo, hi, false)
        }
        Shape::In(negated, ls) => {
            let mut ranges = Vec::new();
            for l in ls.iter() {
                if let Some(x) = point(l)? {
                    ranges.push((x, x));
                }
            }
            if ranges.is_empty() && !negated {
                return Ok(None);
            }
            Ranges {
                ranges,
                negated: *negated,
            }
        }
    }))
}

fn date_ranges(p: &Pred, shape: &Shape<'_>) -> Result<Ranges<i32>> {
    let d = |l: &Literal| match l {
        Literal::Date(d) => Ok(*d),
        other => Err(mismatch(
            p,
            &format!("is a date; {} is {}", describe(other), lit_name(other)),
        )),
    };
    let one = |lo: i32, hi: i32, negated| Ranges {
        ranges: vec![(lo, hi)],
        negated,
    };
    Ok(match shape {
        Shape::Cmp(CmpOp::Eq, l) => one(d(l)?, d(l)?, false),
        Shape::Cmp(CmpOp::Ne, l) => one(d(l)?, d(l)?, true),
        Shape::Cmp(CmpOp::Lt, l) => one(i32::MIN, d(l)?.saturating_sub(1), false),
        Shape::Cmp(CmpOp::Le, l) => one(i32::MIN, d(l)?, false),
        Shape::Cmp(CmpOp::Gt, l) => one(d(l)?.saturating_add(1), i32::MAX, false),
        Shape::Cmp(CmpOp::Ge, l) => one(d(l)?, i32::MAX, false),
        Shape::Between(a, b) => one(d(a)?, d(b)?, false),
        Shape::In(negated, ls) => Ranges {
            ranges: ls.iter().map(|l| d(l).map(|x| (x, x))).collect::<Result<_>>()?,
            negated: *negated,
        },
    })
}

fn float_ranges(p: &Pred, shape: &Shape<'_>) -> Result<Ranges<f64>> {
    let f = |l: &Literal| match l {
        Literal::Int(i) => Ok(*i as f64),
        Literal::Float(f) => Ok(*f),
        other => Err(mismatch(
            p,
            &format!("is a number; {} is {}", describe(other), lit_name(other)),
        )),
    };
    let one = |lo: f64, hi: f64, negated| Ranges {
        ranges: vec![(lo, hi)],
        negated,
    };
    Ok(match shape {
        Shape::Cmp(CmpOp::Eq, l) => one(f(l)?, f(l)?, false),
        Shape::Cmp(CmpOp::Ne, l) => one(f(l)?, f(l)?, true),
        Shape::Cmp(CmpOp::Lt, l) => one(f64::NEG_INFINITY, f(l)?.next_down(), false),
        Shape::Cmp(CmpOp::Le, l) => one(f64::NEG_INFINITY, f(l)?, false),
        Shape::Cmp(CmpOp::Gt, l) => one(f(l)?.next_up(), f64::INFINITY, false),
        Shape::Cmp(CmpOp::Ge, l) => one(f(l)?, f64::INFINITY, false),
        Shape::Between(a, b) => one(f(a)?, f(b)?, false),
        Shape::In(negated, ls) => Ranges {
            ranges: ls.iter().map(|l| f(l).map(|x| (x, x))).collect::<Result<_>>()?,
            negated: *negated,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::text::parse;

    fn c(src: &str) -> Result<Compiled> {
        compile(&parse(src).unwrap(), &Schema::builtin(), &|id| {
            (id == "vip").then_some(7)
        })
    }

    fn leaf(src: &str) -> Leaf {
        match c(src).unwrap().expr {
            Expr::Leaf(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_become_ranges() {
        let id = |n: &str| Schema::builtin().get(n).unwrap().id;
        assert_eq!(
            leaf("total_spent >= 1000"),
            Leaf::I64 {
                attr: id("total_spent"),
                test: Ranges {
                    ranges: vec![(100_000, i64::MAX)],
                    negated: false
                }
            }
        );
        assert_eq!(
            leaf("total_spent > 19.99"),
            Leaf::I64 {
                attr: id("total_spent"),
                test: Ranges {
                    ranges: vec![(2000, i64::MAX)],
                    negated: false
                }
            }
        );
        assert_eq!(
            leaf("household_size < 2.5"),
            Leaf::I64 {
                attr: id("household_size"),
                test: Ranges {
                    ranges: vec![(i64::MIN, 2)],
                    negated: false
                }
            }
        );
        assert_eq!(
            leaf("household_size > 2"),
            Leaf::I64 {
                attr: id("household_size"),
                test: Ranges {
                    ranges: vec![(3, i64::MAX)],
                    negated: false
                }
            }
        );
        assert_eq!(c("household_size = 2.5").unwrap().expr, Expr::Never);
        assert_eq!(
            leaf("registered_at < 2024-01-01"),
            Leaf::I64 {
                attr: id("registered_at"),
                test: Ranges {
                    ranges: vec![(i64::MIN, 19_723 * MICROS_PER_DAY - 1)],
                    negated: false
                }
            }
        );
    }

    #[test]
    fn type_errors_name_the_attribute() {
        for (src, needle) in [
            (r#"age = "old""#, "`age`"),
            (r#"gender > 3"#, "`gender`"),
            (r#"tags = "golf""#, "`tags`"),
            (r#"vip = 1"#, "`vip`"),
            (r#"shoe_size = 3"#, "`shoe_size`: unknown attribute"),
            (r#"gender within 3d"#, "`gender`"),
            (r#"in segment "nope""#, "no such segment"),
            (r#"birth_date = 3"#, "`birth_date`"),
        ] {
            let e = c(src).unwrap_err().to_string();
            assert!(e.starts_with("rule:") && e.contains(needle), "{src}: {e}");
        }
    }

    #[test]
    fn dependencies_are_collected() {
        let r = c(r#"registered and age > 40 and in segment "vip" and last_order_at within 90d"#).unwrap();
        let s = Schema::builtin();
        let mut want: Vec<AttrId> = ["registered", "birth_date", "last_order_at"]
            .iter()
            .map(|n| s.get(n).unwrap().id)
            .collect();
        want.sort();
        assert_eq!(r.attrs, want);
        assert_eq!(r.segments, vec![7]);
        assert!(r.time_dependent);
    }
}
