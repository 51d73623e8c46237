//! Attribute types, the built-in retail schema and custom attributes.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use crate::columnar::dict::Dict;
use crate::error::{Error, Result};

/// The type of an attribute column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrType {
    Bool,
    Int,
    Float,
    /// Integer minor units (cents).
    Money,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// One dictionary-encoded value, with a bitmap per common value.
    Keyword,
    /// A set of dictionary-encoded values, with a bitmap per value.
    Keywords,
    Text,
}

impl AttrType {
    /// The type named by [`AttrType::name`].
    pub fn from_name(name: &str) -> Option<AttrType> {
        Some(match name {
            "bool" => AttrType::Bool,
            "int" => AttrType::Int,
            "float" => AttrType::Float,
            "money" => AttrType::Money,
            "date" => AttrType::Date,
            "timestamp" => AttrType::Timestamp,
            "keyword" => AttrType::Keyword,
            "keywords" => AttrType::Keywords,
            "text" => AttrType::Text,
            _ => return None,
        })
    }

    /// The lower-case name used in messages and the rule language.
    pub fn name(self) -> &'static str {
        match self {
            AttrType::Bool => "bool",
            AttrType::Int => "int",
            AttrType::Float => "float",
            AttrType::Money => "money",
            AttrType::Date => "date",
            AttrType::Timestamp => "timestamp",
            AttrType::Keyword => "keyword",
            AttrType::Keywords => "keywords",
            AttrType::Text => "text",
        }
    }
}

/// Index of an attribute in the schema; also the index of its column in every shard.
pub type AttrId = u16;

/// One attribute of the schema.
#[derive(Debug, Clone)]
pub struct AttrDef {
    pub id: AttrId,
    pub name: Arc<str>,
    pub ty: AttrType,
    pub description: Arc<str>,
    pub builtin: bool,
    /// Maintained by the server (purchase aggregates): refused on upsert.
    pub read_only: bool,
    /// The value dictionary of `keyword` and `keywords` attributes, shared by every shard.
    pub dict: Option<Arc<Dict>>,
}

/// Longest attribute name.
pub const MAX_ATTR_NAME: usize = 64;
/// Most attributes a schema may hold (built-in and custom together).
pub const MAX_ATTRIBUTES: usize = 1024;

/// Names of derived values and customer fields; with the rule language's keywords, they cannot
/// be attribute names.
const RESERVED: &[&str] = &["age", "birthday", "days_since_last_order", "customer_id", "email"];

/// The built-in schema of a retailer's customer base: (name, type, read_only, description).
const BUILTIN: &[(&str, AttrType, bool, &str)] = &[
    (
        "registered",
        AttrType::Bool,
        false,
        "Has a registered account (not a guest)",
    ),
    (
        "registered_at",
        AttrType::Timestamp,
        false,
        "When the account was registered",
    ),
    (
        "last_visit_at",
        AttrType::Timestamp,
        false,
        "Last visit to the shop or site",
    ),
    (
        "gender",
        AttrType::Keyword,
        false,
        "Gender as declared (for example F, M, X)",
    ),
    (
        "birth_date",
        AttrType::Date,
        false,
        "Date of birth; rules may use the derived age and birthday",
    ),
    ("marital_status", AttrType::Keyword, false, "Marital status"),
    ("household_size", AttrType::Int, false, "People in the household"),
    ("income_band", AttrType::Keyword, false, "Income band"),
    (
        "country",
        AttrType::Keyword,
        false,
        "Country code (ISO 3166-1 alpha-2)",
    ),
    ("region", AttrType::Keyword, false, "Region or state"),
    ("city", AttrType::Keyword, false, "City"),
    ("postal_code", AttrType::Keyword, false, "Postal code"),
    (
        "home_store",
        AttrType::Keyword,
        false,
        "The customer's home store",
    ),
    (
        "account_id",
        AttrType::Keyword,
        false,
        "B2B account the customer belongs to",
    ),
    ("organization", AttrType::Keyword, false, "B2B organization name"),
    (
        "language",
        AttrType::Keyword,
        false,
        "Preferred language (BCP 47)",
    ),
    (
        "email_opt_in",
        AttrType::Bool,
        false,
        "Agreed to marketing e-mail",
    ),
    ("sms_opt_in", AttrType::Bool, false, "Agreed to marketing SMS"),
    ("loyalty_tier", AttrType::Keyword, false, "Loyalty programme tier"),
    ("vip", AttrType::Bool, false, "Flagged as VIP"),
    ("tags", AttrType::Keywords, false, "Free tags"),
    (
        "order_count",
        AttrType::Int,
        true,
        "Orders recorded (from RecordOrders)",
    ),
    (
        "total_spent",
        AttrType::Money,
        true,
        "Sum of order amounts, minor units (from RecordOrders)",
    ),
    (
        "avg_order_value",
        AttrType::Money,
        true,
        "total_spent / order_count, minor units (from RecordOrders)",
    ),
    (
        "first_order_at",
        AttrType::Timestamp,
        true,
        "Earliest order (from RecordOrders)",
    ),
    (
        "last_order_at",
        AttrType::Timestamp,
        true,
        "Latest order (from RecordOrders)",
    ),
    (
        "promo_order_count",
        AttrType::Int,
        true,
        "Orders that used a promotion (from RecordOrders)",
    ),
    (
        "categories_bought",
        AttrType::Keywords,
        true,
        "Categories of every order (from RecordOrders)",
    ),
    (
        "brands_bought",
        AttrType::Keywords,
        true,
        "Brands of every order (from RecordOrders)",
    ),
];

/// Ids of the purchase aggregates, fixed by their place in the built-in schema.
pub mod purchase {
    use super::AttrId;
    pub const ORDER_COUNT: AttrId = 21;
    pub const TOTAL_SPENT: AttrId = 22;
    pub const AVG_ORDER_VALUE: AttrId = 23;
    pub const FIRST_ORDER_AT: AttrId = 24;
    pub const LAST_ORDER_AT: AttrId = 25;
    pub const PROMO_ORDER_COUNT: AttrId = 26;
    pub const CATEGORIES_BOUGHT: AttrId = 27;
    pub const BRANDS_BOUGHT: AttrId = 28;
    /// Every aggregate an order changes.
    pub const ALL: [AttrId; 8] = [
        ORDER_COUNT,
        TOTAL_SPENT,
        AVG_ORDER_VALUE,
        FIRST_ORDER_AT,
        LAST_ORDER_AT,
        PROMO_ORDER_COUNT,
        CATEGORIES_BOUGHT,
        BRANDS_BOUGHT,
    ];
}

/// The set of attributes. Immutable: defining an attribute makes a new `Schema` (copy on write),
/// so readers hold an `Arc<Schema>` without locks.
#[derive(Debug, Clone)]
pub struct Schema {
    attrs: Vec<AttrDef>,
    by_name: HashMap<Arc<str>, AttrId>,
}

impl Schema {
    /// The built-in schema.
    pub fn builtin() -> Schema {
        let mut schema = Schema {
            attrs: Vec::new(),
            by_name: HashMap::new(),
        };
        for &(name, ty, read_only, description) in BUILTIN {
            schema
                .push(name, ty, description, true, read_only)
                .expect("built-in schema is valid");
        }
        debug_assert_eq!(
            schema.attrs[purchase::ORDER_COUNT as usize].name.as_ref(),
            "order_count"
        );
        debug_assert_eq!(
            schema.attrs[purchase::BRANDS_BOUGHT as usize].name.as_ref(),
            "brands_bought"
        );
        schema
    }

    fn push(
        &mut self,
        name: &str,
        ty: AttrType,
        description: &str,
        builtin: bool,
        read_only: bool,
    ) -> Result<&AttrDef> {
        let id = AttrId::try_from(self.attrs.len())
            .ok()
            .filter(|&id| usize::from(id) < MAX_ATTRIBUTES)
            .ok_or_else(|| {
                Error::ResourceExhausted(format!("the schema holds at most {MAX_ATTRIBUTES} attributes"))
            })?;
        let name: Arc<str> = Arc::from(name);
        let dict = matches!(ty, AttrType::Keyword | AttrType::Keywords).then(|| Arc::new(Dict::default()));
        self.by_name.insert(name.clone(), id);
        self.attrs.push(AttrDef {
            id,
            name,
            ty,
            description: Arc::from(description),
            builtin,
            read_only,
            dict,
        });
        Ok(&self.attrs[usize::from(id)])
    }

    /// A new schema with one more (custom) attribute.
    pub fn with_attribute(&self, name: &str, ty: AttrType, description: &str) -> Result<Schema> {
        validate_attr_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(Error::AlreadyExists(format!("attribute `{name}` already exists")));
        }
        if description.len() > 1024 {
            return Err(Error::invalid("description", "longer than 1024 bytes"));
        }
        let mut next = self.clone();
        // RFM scores are written by reclassification only.
        next.push(name, ty, description, false, RFM_SCORES.contains(&name))?;
        Ok(next)
    }

    pub fn get(&self, name: &str) -> Option<&AttrDef> {
        self.by_name.get(name).map(|&id| &self.attrs[usize::from(id)])
    }

    pub fn attr(&self, id: AttrId) -> &AttrDef {
        &self.attrs[usize::from(id)]
    }

    /// The attribute whose name is nearest `name`, if one is near enough to be a typo of it
    /// (an edit or two for short names, a quarter of the letters for long ones).
    pub fn nearest(&self, name: &str) -> Option<&str> {
        let most = (name.chars().count() / 4).max(2);
        self.attrs
            .iter()
            .map(|a| (strsim::damerau_levenshtein(name, &a.name), &*a.name))
            .filter(|&(d, _)| d <= most)
            .min()
            .map(|(_, n)| n)
    }

    /// The message for an attribute the schema does not have, with the nearest name if any:
    /// "unknown attribute `gendre` (did you mean `gender`? see Admin.GetSchema)".
    pub fn unknown(&self, name: &str) -> String {
        match self.nearest(name) {
            Some(near) => format!("unknown attribute `{name}` (did you mean `{near}`? see Admin.GetSchema)"),
            None => format!("unknown attribute `{name}` (see Admin.GetSchema)"),
        }
    }

    pub fn attrs(&self) -> &[AttrDef] {
        &self.attrs
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }
}

/// The RFM scores (1 to 5), defined by the first reclassification and written only by it.
pub const RFM_SCORES: [&str; 3] = ["rfm_r", "rfm_f", "rfm_m"];

/// Checks a custom attribute name: `[a-z][a-z0-9_]*`, at most 64 bytes, not a reserved word.
pub fn validate_attr_name(name: &str) -> Result<()> {
    let field = "name";
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_ATTR_NAME {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_ATTR_NAME} bytes"),
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(Error::invalid(
            field,
            format!("`{name}` must be lower-case letters, digits and '_', starting with a letter"),
        ));
    }
    if RESERVED.contains(&name) || RULE_WORDS.contains(&name) {
        return Err(Error::invalid(field, format!("`{name}` is a reserved word")));
    }
    Ok(())
}

/// Words of the rule language ([`crate::segment::rule::KEYWORDS`]): none can be an attribute
/// name.
pub const RULE_WORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "is",
    "set",
    "segment",
    "between",
    "within",
    "true",
    "false",
    "has_any",
    "has_all",
    "starts_with",
    "ends_with",
    "contains",
    "ignore_case",
    "birthday",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_purchase_ids_in_place() {
        let s = Schema::builtin();
        assert_eq!(s.get("total_spent").unwrap().id, purchase::TOTAL_SPENT);
        assert_eq!(s.get("last_order_at").unwrap().id, purchase::LAST_ORDER_AT);
        assert!(s.get("order_count").unwrap().read_only);
        assert!(!s.get("gender").unwrap().read_only);
    }

    #[test]
    fn custom_names_are_checked() {
        let s = Schema::builtin();
        assert!(s.with_attribute("golf_handicap", AttrType::Int, "").is_ok());
        assert!(matches!(
            s.with_attribute("gender", AttrType::Int, ""),
            Err(Error::AlreadyExists(_))
        ));
        for bad in ["", "Golf", "1x", "a-b", "and", "age"] {
            assert!(matches!(
                s.with_attribute(bad, AttrType::Int, ""),
                Err(Error::InvalidArgument { .. })
            ));
        }
    }
}
