//! Field numbers of the `segmentd.v1` messages that the hand-written decoders (`codec::wire`,
//! `codec::columns`) and segctl's encoder (which includes this file) read and write without
//! generated code. One place, checked by a test in `codec` against the descriptors compiled from
//! `proto/`: a field renumbered there fails the test instead of being misread.

/// `UpsertCustomersRequest` and `LoadCustomersRequest` (the same two fields, and the load's
/// options).
pub mod batch {
    pub const CUSTOMERS: u32 = 1;
    pub const COLUMNS: u32 = 2;
    /// `LoadCustomersRequest` only.
    pub const VALIDATE_ONLY: u32 = 3;
    /// `LoadCustomersRequest` only.
    pub const MAX_BAD_ROWS: u32 = 4;
}

/// `Customer`.
pub mod customer {
    pub const CUSTOMER_ID: u32 = 1;
    pub const EMAIL: u32 = 2;
    pub const ATTRIBUTES: u32 = 3;
}

/// An entry of a protobuf map (`Customer.attributes`).
pub mod map_entry {
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
}

/// `Value`'s `kind`.
pub mod value {
    pub const BOOL_VALUE: u32 = 1;
    pub const INT_VALUE: u32 = 2;
    pub const DOUBLE_VALUE: u32 = 3;
    pub const STRING_VALUE: u32 = 4;
    pub const DATE_VALUE: u32 = 5;
    pub const TIMESTAMP_VALUE: u32 = 6;
    pub const LIST_VALUE: u32 = 7;
}

/// `StringList`.
pub mod string_list {
    pub const VALUES: u32 = 1;
}

/// `CustomerColumns`.
pub mod columns {
    pub const CUSTOMER_IDS: u32 = 1;
    pub const EMAILS: u32 = 2;
    pub const ATTRIBUTES: u32 = 3;
}

/// `AttributeColumn`: its name, its missing rows, and its `values`, one field per kind.
pub mod attribute_column {
    pub const NAME: u32 = 1;
    pub const MISSING: u32 = 2;
    pub const BOOLS: u32 = 3;
    pub const INTS: u32 = 4;
    pub const DOUBLES: u32 = 5;
    pub const DATES: u32 = 6;
    pub const TIMESTAMPS: u32 = 7;
    pub const STRINGS: u32 = 8;
    pub const LISTS: u32 = 9;
}

/// `BoolColumn`, `IntColumn`, `DoubleColumn` and `ListColumn`: their one `values` field.
pub mod column_values {
    pub const VALUES: u32 = 1;
}

/// `StringColumn`.
pub mod string_column {
    pub const VALUES: u32 = 1;
    pub const INDEXES: u32 = 2;
}
