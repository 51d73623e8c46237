//! Checked inputs of the store's write path, and the limits they are checked against.

use crate::columnar::schema::AttrId;
use crate::columnar::value::Value;
use crate::error::{Error, Result};

/// Longest customer id, in bytes.
pub const MAX_CUSTOMER_ID: usize = 128;
/// Longest e-mail, in bytes (RFC 5321 path limit).
pub const MAX_EMAIL: usize = 254;
pub use crate::columnar::value::{MAX_KEYWORD, check_keyword};
/// Most items in one `keywords` value, order category or brand list.
pub const MAX_LIST_ITEMS: usize = 256;
/// Longest `text` value, in bytes.
pub const MAX_TEXT: usize = 4096;

// Every string input accepts fits a string column.
const _: () = assert!(
    MAX_TEXT <= crate::columnar::strings::MAX_STRING && MAX_EMAIL <= crate::columnar::strings::MAX_STRING
);
/// Longest order id, in bytes.
pub const MAX_ORDER_ID: usize = 128;

/// A change to one customer: created if the id is new, else merged into the existing customer.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerPatch {
    pub customer_id: String,
    /// `None` keeps the e-mail, `Some("")` removes it, anything else sets it.
    pub email: Option<String>,
    /// Attribute values to set; `None` clears the attribute.
    pub attrs: Vec<(AttrId, Option<Value>)>,
}

/// One order of the order feed.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderIn {
    pub order_id: String,
    pub customer_id: String,
    /// Microseconds since the epoch.
    pub placed_at: i64,
    pub amount_minor: i64,
    pub promotion: bool,
    pub categories: Vec<String>,
    pub brands: Vec<String>,
}

/// How a customer is named by a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerKey {
    Id(String),
    Email(String),
}

/// Checks an external customer id: 1 to 128 bytes, no control characters.
pub fn check_customer_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("customer_id", "must not be empty"));
    }
    if id.len() > MAX_CUSTOMER_ID {
        return Err(Error::invalid(
            "customer_id",
            format!("longer than {MAX_CUSTOMER_ID} bytes"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid("customer_id", "contains a control character"));
    }
    Ok(())
}

/// Checks the shape of an e-mail: `local@domain`, a dot in the domain, no spaces, at most 254 bytes.
pub fn check_email(email: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(
            "email",
            format!("`{email}` is not a valid e-mail: {why}"),
        ))
    };
    if email.len() > MAX_EMAIL {
        return Err(Error::invalid("email", format!("longer than {MAX_EMAIL} bytes")));
    }
    // Printable ASCII (the usual case, told in one pass over the bytes) has neither.
    let printable = email.bytes().all(|b| (b'!'..=b'~').contains(&b));
    if !printable && email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains white space or a control character");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return bad("no '@'");
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return bad("the part before '@' must be 1 to 64 characters without '@'");
    }
    if domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.as_bytes().windows(2).any(|w| w == b"..")
    {
        return bad("the domain must have a dot between non-empty labels");
    }
    Ok(())
}

/// Checks a list of keywords (a `keywords` value, an order's categories or brands).
pub fn check_keyword_list<S: AsRef<str>>(items: impl ExactSizeIterator<Item = S>) -> Result<()> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(Error::invalid("", format!("more than {MAX_LIST_ITEMS} items")));
    }
    for (i, s) in items.enumerate() {
        check_keyword(s.as_ref()).map_err(|e| e.within(&format!("[{i}]")))?;
    }
    Ok(())
}

impl OrderIn {
    /// Checks everything that does not depend on the store's state.
    pub fn check(&self) -> Result<()> {
        if self.order_id.is_empty() {
            return Err(Error::invalid("order_id", "must not be empty"));
        }
        if self.order_id.len() > MAX_ORDER_ID {
            return Err(Error::invalid(
                "order_id",
                format!("longer than {MAX_ORDER_ID} bytes"),
            ));
        }
        check_customer_id(&self.customer_id)?;
        if self.amount_minor < 0 {
            return Err(Error::invalid("amount_minor", "must not be negative"));
        }
        check_keyword_list(self.categories.iter()).map_err(|e| e.within("categories"))?;
        check_keyword_list(self.brands.iter()).map_err(|e| e.within("brands"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for good in [
            "a@b.co",
            "Ann.Lee+promo@example.com",
            "x@sub.domain.fr",
            "zoë@exämple.fr",
        ] {
            assert!(check_email(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "a@b",
            "a b@c.com",
            "a@.com",
            "a@b..com",
            "a@b.com.",
            "a\tb@c.com",
            "a\u{a0}b@c.com",
            "a\u{7f}@c.com",
            "zoë@exämple..fr",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn customer_ids() {
        assert!(check_customer_id("C-1").is_ok());
        assert!(check_customer_id("").is_err());
        assert!(check_customer_id(&"x".repeat(129)).is_err());
        assert!(check_customer_id("a\nb").is_err());
    }
}
