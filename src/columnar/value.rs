//! Typed attribute values, as the engine stores and returns them.

use crate::columnar::schema::AttrType;
use crate::error::{Error, Result};

/// One attribute value, already checked against its attribute's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Minor units (cents).
    Money(i64),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    Keyword(String),
    /// A set: order is irrelevant and duplicates collapse.
    Keywords(Vec<String>),
    Text(String),
}

impl Value {
    /// The attribute type this value belongs to.
    pub fn ty(&self) -> AttrType {
        match self {
            Value::Bool(_) => AttrType::Bool,
            Value::Int(_) => AttrType::Int,
            Value::Float(_) => AttrType::Float,
            Value::Money(_) => AttrType::Money,
            Value::Date(_) => AttrType::Date,
            Value::Timestamp(_) => AttrType::Timestamp,
            Value::Keyword(_) => AttrType::Keyword,
            Value::Keywords(_) => AttrType::Keywords,
            Value::Text(_) => AttrType::Text,
        }
    }
}

/// Longest `keyword` value or `keywords` item, in bytes.
pub const MAX_KEYWORD: usize = 256;

/// Checks a `keyword` value or a `keywords` item.
pub fn check_keyword(s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid("", "must not be empty"));
    }
    if s.len() > MAX_KEYWORD {
        return Err(Error::invalid("", format!("longer than {MAX_KEYWORD} bytes")));
    }
    Ok(())
}
