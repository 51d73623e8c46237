//! Rules as written: a tree of `and` / `or` / `not` over predicates, before it is checked against
//! the schema. Both spellings (the protobuf tree and the text form) convert to and from this.

/// A rule tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Pred(Pred),
}

/// One predicate on an attribute (or the derived `age`, `birthday`, `days_since_last_order`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pred {
    /// The attribute; empty for `in segment`.
    pub attr: String,
    pub op: PredOp,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// String matching operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextOp {
    StartsWith,
    EndsWith,
    Contains,
}

impl TextOp {
    pub fn keyword(self) -> &'static str {
        match self {
            TextOp::StartsWith => "starts_with",
            TextOp::EndsWith => "ends_with",
            TextOp::Contains => "contains",
        }
    }
}

/// What a predicate tests.
#[derive(Debug, Clone, PartialEq)]
pub enum PredOp {
    /// A bool attribute is true (`vip`).
    IsTrue,
    Cmp(CmpOp, Literal),
    /// Inclusive at both ends.
    Between(Literal, Literal),
    In {
        negated: bool,
        values: Vec<Literal>,
    },
    Text {
        op: TextOp,
        value: String,
        ignore_case: bool,
    },
    IsSet {
        negated: bool,
    },
    /// `has_any` (`all` false) or `has_all` on a `keywords` attribute.
    Has {
        all: bool,
        values: Vec<String>,
    },
    /// A date or timestamp in the last `micros`; for `birthday`, a birthday in the next days.
    Within {
        micros: i64,
    },
    /// Member of another segment.
    InSegment(String),
}

/// A literal value in a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the epoch.
    Timestamp(i64),
}

/// Words of the rule language; none can be an attribute name (the schema refuses them).
pub use crate::columnar::schema::RULE_WORDS as KEYWORDS;

/// Longest rule text, in bytes.
pub const MAX_RULE_TEXT: usize = 16 * 1024;
/// Most nodes (predicates and operators) in one rule.
pub const MAX_RULE_NODES: usize = 1000;
/// Deepest nesting of `and` / `or` / `not`.
pub const MAX_RULE_DEPTH: usize = 32;
/// Most values in one `in` / `has_any` / `has_all` list.
pub const MAX_LIST_VALUES: usize = 1000;

impl Rule {
    /// Every predicate, depth first.
    pub fn preds(&self) -> Vec<&Pred> {
        let mut out = Vec::new();
        fn walk<'a>(r: &'a Rule, out: &mut Vec<&'a Pred>) {
            match r {
                Rule::And(v) | Rule::Or(v) => v.iter().for_each(|c| walk(c, out)),
                Rule::Not(c) => walk(c, out),
                Rule::Pred(p) => out.push(p),
            }
        }
        walk(self, &mut out);
        out
    }

    /// Ids of the segments this rule reads with `in segment`.
    pub fn segment_refs(&self) -> Vec<&str> {
        self.preds()
            .into_iter()
            .filter_map(|p| match &p.op {
                PredOp::InSegment(id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    /// (nodes, depth) of the tree.
    pub fn size(&self) -> (usize, usize) {
        match self {
            Rule::And(v) | Rule::Or(v) => v.iter().fold((1, 1), |(n, d), c| {
                let (cn, cd) = c.size();
                (n + cn, d.max(cd + 1))
            }),
            Rule::Not(c) => {
                let (n, d) = c.size();
                (n + 1, d + 1)
            }
            Rule::Pred(_) => (1, 1),
        }
    }
}
