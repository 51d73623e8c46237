//! Protobuf ↔ domain types, without tonic: the `segmentd.v1` messages, the hand-written
//! decoders of customer batches ([`wire`], [`columns`]; measured 5-12x faster than generic
//! decoding) and the conversions of every other message ([`convert`]). The API adapters and
//! log replay both read customer batches through here.

pub mod columns;
pub mod convert;
pub mod rows;
pub mod tags;
pub mod wire;

/// The encoded descriptor set of every `segmentd.v1` proto (served by reflection, checked by
/// [`tags`]' test).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/segmentd_descriptor.bin"));

/// Generated `segmentd.v1` messages (`proto/segmentd/v1`); the services are in [`crate::api::pb`].
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/messages/segmentd.v1.rs"));

    /// Both customer-batch requests decode as [`CustomerBatch`](crate::codec::wire::CustomerBatch).
    pub use crate::codec::wire::CustomerBatch as UpsertCustomersRequest;
    pub use crate::codec::wire::CustomerBatch as LoadCustomersRequest;
}

/// Request limits enforced by the adapters.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items (customers, orders) in one message.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_batch: 10_000 }
    }
}

impl Limits {
    /// Refuses a batch longer than `max_batch`, naming the field.
    pub fn check_batch(&self, field: &str, len: usize) -> Result<(), crate::error::Error> {
        if len > self.max_batch {
            return Err(crate::error::Error::invalid(
                field,
                format!(
                    "{len} items, more than the limit of {} per message",
                    self.max_batch
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::FileDescriptorSet;

    /// Every constant of [`super::tags`], with the message and field it stands for.
    const FIELDS: &[(&str, &str, u32)] = &[
        (
            "UpsertCustomersRequest",
            "customers",
            super::tags::batch::CUSTOMERS,
        ),
        ("UpsertCustomersRequest", "columns", super::tags::batch::COLUMNS),
        ("LoadCustomersRequest", "customers", super::tags::batch::CUSTOMERS),
        ("LoadCustomersRequest", "columns", super::tags::batch::COLUMNS),
        (
            "LoadCustomersRequest",
            "validate_only",
            super::tags::batch::VALIDATE_ONLY,
        ),
        (
            "LoadCustomersRequest",
            "max_bad_rows",
            super::tags::batch::MAX_BAD_ROWS,
        ),
        ("Customer", "customer_id", super::tags::customer::CUSTOMER_ID),
        ("Customer", "email", super::tags::customer::EMAIL),
        ("Customer", "attributes", super::tags::customer::ATTRIBUTES),
        ("Customer.AttributesEntry", "key", super::tags::map_entry::KEY),
        ("Customer.AttributesEntry", "value", super::tags::map_entry::VALUE),
        ("Value", "bool_value", super::tags::value::BOOL_VALUE),
        ("Value", "int_value", super::tags::value::INT_VALUE),
        ("Value", "double_value", super::tags::value::DOUBLE_VALUE),
        ("Value", "string_value", super::tags::value::STRING_VALUE),
        ("Value", "date_value", super::tags::value::DATE_VALUE),
        ("Value", "timestamp_value", super::tags::value::TIMESTAMP_VALUE),
        ("Value", "list_value", super::tags::value::LIST_VALUE),
        ("StringList", "values", super::tags::string_list::VALUES),
        (
            "CustomerColumns",
            "customer_ids",
            super::tags::columns::CUSTOMER_IDS,
        ),
        ("CustomerColumns", "emails", super::tags::columns::EMAILS),
        ("CustomerColumns", "attributes", super::tags::columns::ATTRIBUTES),
        ("AttributeColumn", "name", super::tags::attribute_column::NAME),
        (
            "AttributeColumn",
            "missing",
            super::tags::attribute_column::MISSING,
        ),
        ("AttributeColumn", "bools", super::tags::attribute_column::BOOLS),
        ("AttributeColumn", "ints", super::tags::attribute_column::INTS),
        (
            "AttributeColumn",
            "doubles",
            super::tags::attribute_column::DOUBLES,
        ),
        ("AttributeColumn", "dates", super::tags::attribute_column::DATES),
        (
            "AttributeColumn",
            "timestamps",
            super::tags::attribute_column::TIMESTAMPS,
        ),
        (
            "AttributeColumn",
            "strings",
            super::tags::attribute_column::STRINGS,
        ),
        ("AttributeColumn", "lists", super::tags::attribute_column::LISTS),
        ("BoolColumn", "values", super::tags::column_values::VALUES),
        ("IntColumn", "values", super::tags::column_values::VALUES),
        ("DoubleColumn", "values", super::tags::column_values::VALUES),
        ("ListColumn", "values", super::tags::column_values::VALUES),
        ("StringColumn", "values", super::tags::string_column::VALUES),
        ("StringColumn", "indexes", super::tags::string_column::INDEXES),
    ];

    #[test]
    fn every_field_number_is_the_descriptors() {
        let set = FileDescriptorSet::decode(crate::codec::FILE_DESCRIPTOR_SET).unwrap();
        let package: Vec<_> = set
            .file
            .iter()
            .filter(|f| f.package() == "segmentd.v1")
            .flat_map(|f| &f.message_type)
            .collect();
        for &(path, field, number) in FIELDS {
            let mut names = path.split('.');
            let top = names.next().unwrap();
            let mut message = *package
                .iter()
                .find(|m| m.name() == top)
                .unwrap_or_else(|| panic!("no message {top}"));
            for nested in names {
                message = message
                    .nested_type
                    .iter()
                    .find(|m| m.name() == nested)
                    .unwrap_or_else(|| panic!("no message {path}"));
            }
            let declared = message
                .field
                .iter()
                .find(|f| f.name() == field)
                .unwrap_or_else(|| panic!("no field {path}.{field}"))
                .number();
            assert_eq!(declared, number as i32, "{path}.{field}");
        }
    }
}
