//! Customer rows turned into the `CustomerColumns` of a `LoadCustomersRequest`: a batch sent column
//! by column names each attribute once, where `Customer` messages repeat every name in every row,
//! so it is about a third of the bytes to send, and the cheapest form for the server to read and log.

use crate::pb::{self, attribute_column::Values, value::Kind};

/// One checked row: its id, e-mail, and values by attribute slot (an index into the names the
/// [`ColumnsBuilder`] was given).
pub struct ColumnRow {
    pub customer_id: String,
    pub email: Option<String>,
    pub values: Vec<(usize, Kind)>,
}

/// Gathers rows into one `CustomerColumns`.
pub struct ColumnsBuilder<'a> {
    names: &'a [String],
    columns: pb::CustomerColumns,
    /// The column of each attribute slot, once it has a value.
    column_of: Vec<Option<usize>>,
}

impl<'a> ColumnsBuilder<'a> {
    /// A builder for attributes named by slot in `names`, sized for `rows` rows.
    pub fn new(names: &'a [String], rows: usize) -> Self {
        ColumnsBuilder {
            names,
            columns: pb::CustomerColumns {
                customer_ids: Vec::with_capacity(rows),
                ..Default::default()
            },
            column_of: vec![None; names.len()],
        }
    }

    /// Adds a row. Its values' kinds follow the attribute's type, so a column holds one kind.
    pub fn push(&mut self, row: ColumnRow) {
        let at = self.columns.customer_ids.len();
        self.columns.customer_ids.push(row.customer_id);
        if let Some(email) = row.email {
            // E-mails are all given or none: rows before the first without one get "".
            self.columns.emails.resize(at, String::new());
            self.columns.emails.push(email);
        }
        for (slot, kind) in row.values {
            let j = *self.column_of[slot].get_or_insert_with(|| {
                self.columns.attributes.push(pb::AttributeColumn {
                    name: self.names[slot].clone(),
                    missing: Vec::new(),
                    values: Some(empty_like(&kind)),
                });
                self.columns.attributes.len() - 1
            });
            let column = &mut self.columns.attributes[j];
            let values = column.values.as_mut().expect("a column has values");
            let filled = column.missing.len() + values_len(values);
            column.missing.extend(filled as u32..at as u32);
            push(values, kind);
        }
    }

    /// The rows as columns.
    pub fn finish(mut self) -> pb::CustomerColumns {
        let rows = self.columns.customer_ids.len();
        if !self.columns.emails.is_empty() {
            self.columns.emails.resize(rows, String::new());
        }
        for column in &mut self.columns.attributes {
            let filled = column.missing.len() + column.values.as_ref().map_or(0, values_len);
            column.missing.extend(filled as u32..rows as u32);
        }
        self.columns
    }
}

fn empty_like(kind: &Kind) -> Values {
    match kind {
        Kind::BoolValue(_) => Values::Bools(Default::default()),
        Kind::IntValue(_) => Values::Ints(Default::default()),
        Kind::DoubleValue(_) => Values::Doubles(Default::default()),
        Kind::StringValue(_) => Values::Strings(Default::default()),
        Kind::DateValue(_) => Values::Dates(Default::default()),
        Kind::TimestampValue(_) => Values::Timestamps(Default::default()),
        Kind::ListValue(_) => Values::Lists(Default::default()),
    }
}

fn values_len(values: &Values) -> usize {
    match values {
        Values::Bools(c) => c.values.len(),
        Values::Ints(c) | Values::Dates(c) | Values::Timestamps(c) => c.values.len(),
        Values::Doubles(c) => c.values.len(),
        Values::Strings(c) => c.values.len(),
        Values::Lists(c) => c.values.len(),
    }
}

/// Appends a value to its column. Dates go as days since 1970-01-01 and timestamps as
/// microseconds, as `CustomerColumns` carries them (the row parser checked both).
fn push(values: &mut Values, kind: Kind) {
    match (values, kind) {
        (Values::Bools(c), Kind::BoolValue(v)) => c.values.push(v),
        (Values::Ints(c), Kind::IntValue(v)) => c.values.push(v),
        (Values::Doubles(c), Kind::DoubleValue(v)) => c.values.push(v),
        (Values::Strings(c), Kind::StringValue(v)) => c.values.push(v),
        (Values::Lists(c), Kind::ListValue(v)) => c.values.push(v),
        (Values::Dates(c), Kind::DateValue(d)) => c
            .values
            .push(crate::values::days_from_civil(d.year, d.month, d.day).unwrap_or(i64::MIN)),
        (Values::Timestamps(c), Kind::TimestampValue(t)) => c.values.push(
            t.seconds
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(t.nanos) / 1000),
        ),
        (_, kind) => unreachable!("a column holds one kind of value, not {kind:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_columns_with_missing_rows() {
        let names = vec![
            "gender".to_string(),
            "household_size".to_string(),
            "birth_date".to_string(),
        ];
        let mut b = ColumnsBuilder::new(&names, 3);
        b.push(ColumnRow {
            customer_id: "a".into(),
            email: None,
            values: vec![(1, Kind::IntValue(2))],
        });
        b.push(ColumnRow {
            customer_id: "b".into(),
            email: Some("b@x.fr".into()),
            values: vec![
                (0, Kind::StringValue("F".into())),
                (
                    2,
                    Kind::DateValue(pb::Date {
                        year: 1970,
                        month: 1,
                        day: 3,
                    }),
                ),
            ],
        });
        b.push(ColumnRow {
            customer_id: "c".into(),
            email: None,
            values: vec![(1, Kind::IntValue(5))],
        });
        let c = b.finish();
        assert_eq!(c.customer_ids, ["a", "b", "c"]);
        assert_eq!(c.emails, ["", "b@x.fr", ""]);
        let by_name = |n: &str| c.attributes.iter().find(|a| a.name == n).unwrap().clone();
        let size = by_name("household_size");
        assert_eq!(size.missing, [1]);
        assert_eq!(
            size.values,
            Some(Values::Ints(pb::IntColumn { values: vec![2, 5] }))
        );
        let gender = by_name("gender");
        assert_eq!(gender.missing, [0, 2]);
        assert_eq!(
            by_name("birth_date").values,
            Some(Values::Dates(pb::IntColumn { values: vec![2] }))
        );
        assert_eq!(c.attributes.len(), 3);
    }
}
