//! A customer batch taken apart row by row, for loads that skip bad rows or only check them
//! (`LoadCustomersRequest.max_bad_rows`, `validate_only`): each row is checked alone, so every
//! bad one is found (a batch as a whole stops at its first), and the good ones make a batch
//! again. The slow path of a load: taken only for a batch that failed as a whole, or to
//! validate.

use std::collections::HashMap;

use crate::codec::pb::{self, value::Kind};
use crate::codec::wire::CustomerBatch;
use crate::error::{Error, Result};
use crate::time;

/// The customers of `batch` as messages, in row order: those given as messages, or the rows
/// of its `columns` (a missing cell leaves the attribute out, an e-mail of "" gives none).
pub fn rows(batch: &CustomerBatch) -> Result<Vec<pb::Customer>> {
    let bad = |e: prost::DecodeError| Error::invalid("customers", format!("cannot decode: {e}"));
    match batch.columns().map_err(bad)? {
        Some(columns) => column_rows(columns),
        None => batch.customers().map_err(bad),
    }
}

/// The rows of a `CustomerColumns`, each a `Customer` meaning what its row means.
pub fn column_rows(columns: pb::CustomerColumns) -> Result<Vec<pb::Customer>> {
    let n = columns.customer_ids.len();
    if !columns.emails.is_empty() && columns.emails.len() != n {
        return Err(Error::invalid(
            "columns.emails",
            format!("{} e-mails for {n} customers", columns.emails.len()),
        ));
    }
    let mut out: Vec<pb::Customer> = columns
        .customer_ids
        .into_iter()
        .map(|customer_id| pb::Customer {
            customer_id,
            ..Default::default()
        })
        .collect();
    for (row, email) in columns.emails.into_iter().enumerate() {
        if !email.is_empty() {
            out[row].email = Some(email);
        }
    }
    for (j, column) in columns.attributes.into_iter().enumerate() {
        let field = format!("columns.attributes[{j}]");
        let mut missing = column.missing.iter().map(|&m| m as usize).peekable();
        let rows: Vec<usize> = (0..n)
            .filter(|&r| {
                if missing.peek() == Some(&r) {
                    missing.next();
                    false
                } else {
                    true
                }
            })
            .collect();
        let values = column_values(column.values, &field)?;
        if values.len() != rows.len() {
            return Err(Error::invalid(
                field,
                format!("{} values for {} rows with a value", values.len(), rows.len()),
            ));
        }
        for (row, kind) in rows.into_iter().zip(values) {
            out[row]
                .attributes
                .insert(column.name.clone(), pb::Value { kind: Some(kind) });
        }
    }
    Ok(out)
}

/// A column's values, each as a `Value`'s kind.
fn column_values(values: Option<pb::attribute_column::Values>, field: &str) -> Result<Vec<Kind>> {
    use pb::attribute_column::Values as V;
    Ok(match values {
        None => Vec::new(),
        Some(V::Bools(c)) => c.values.into_iter().map(Kind::BoolValue).collect(),
        Some(V::Ints(c)) => c.values.into_iter().map(Kind::IntValue).collect(),
        Some(V::Doubles(c)) => c.values.into_iter().map(Kind::DoubleValue).collect(),
        Some(V::Dates(c)) => c
            .values
            .into_iter()
            .map(|days| {
                let days = i32::try_from(days)
                    .map_err(|_| Error::invalid(field, format!("{days} days is not a date")))?;
                let (year, month, day) = time::civil_from_days(days);
                Ok(Kind::DateValue(pb::Date { year, month, day }))
            })
            .collect::<Result<_>>()?,
        Some(V::Timestamps(c)) => c
            .values
            .into_iter()
            .map(|micros| {
                let (seconds, nanos) = time::parts_from_micros(micros);
                Kind::TimestampValue(prost_types::Timestamp { seconds, nanos })
            })
            .collect(),
        Some(V::Strings(c)) if c.indexes.is_empty() => c.values.into_iter().map(Kind::StringValue).collect(),
        Some(V::Strings(c)) => c
            .indexes
            .iter()
            .map(|&i| {
                c.values
                    .get(i as usize)
                    .map(|s| Kind::StringValue(s.clone()))
                    .ok_or_else(|| {
                        Error::invalid(field, format!("index {i} past the {} strings", c.values.len()))
                    })
            })
            .collect::<Result<_>>()?,
        Some(V::Lists(c)) => c.values.into_iter().map(Kind::ListValue).collect(),
    })
}

/// A row's error with its field path numbered as the row's in its batch (`customers[from]` →
/// `customers[to]`): checked alone, the row was `customers[0]`; in a batch of the good rows,
/// the good row `from`.
pub fn renumbered(e: Error, from: usize, to: usize) -> Error {
    match e {
        Error::InvalidArgument { field, message } => {
            let prefix = format!("customers[{from}]");
            let rest = field.strip_prefix(prefix.as_str()).unwrap_or(&field);
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            Error::invalid("", message).within_field(&field_path(to, rest))
        }
        other => other,
    }
}

fn field_path(row: usize, rest: &str) -> String {
    if rest.is_empty() {
        format!("customers[{row}]")
    } else {
        format!("customers[{row}].{rest}")
    }
}

/// The rows among `rows` that repeat an earlier row's customer id or e-mail (which a batch may
/// not), each with its error.
pub fn repeats(rows: &[pb::Customer]) -> Vec<(usize, Error)> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    let mut emails: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(&first) = ids.get(row.customer_id.as_str()) {
            out.push((
                i,
                Error::invalid(
                    field_path(i, "customer_id"),
                    format!(
                        "`{}` appears twice in the batch (also customers[{first}])",
                        row.customer_id
                    ),
                ),
            ));
            continue;
        }
        ids.insert(&row.customer_id, i);
        if let Some(email) = row.email.as_deref().filter(|e| !e.is_empty()) {
            let norm = crate::store::index::normalize_email(email).into_owned();
            if let Some(&first) = emails.get(&norm) {
                out.push((
                    i,
                    Error::invalid(
                        field_path(i, "email"),
                        format!("`{email}` is also given to customers[{first}] in the batch"),
                    ),
                ));
                continue;
            }
            emails.insert(norm, i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_become_the_rows_they_mean() {
        use pb::attribute_column::Values;
        let columns = pb::CustomerColumns {
            customer_ids: vec!["a".into(), "b".into(), "c".into()],
            emails: vec!["a@x.io".into(), String::new(), "c@x.io".into()],
            attributes: vec![
                pb::AttributeColumn {
                    name: "city".into(),
                    missing: vec![1],
                    values: Some(Values::Strings(pb::StringColumn {
                        values: vec!["Lyon".into()],
                        indexes: vec![0, 0],
                    })),
                },
                pb::AttributeColumn {
                    name: "birth_date".into(),
                    missing: vec![0, 2],
                    values: Some(Values::Dates(pb::IntColumn { values: vec![1] })),
                },
            ],
        };
        let rows = column_rows(columns).unwrap();
        assert_eq!(rows[0].email.as_deref(), Some("a@x.io"));
        assert_eq!(rows[1].email, None);
        assert_eq!(
            rows[2].attributes["city"].kind,
            Some(Kind::StringValue("Lyon".into()))
        );
        assert!(!rows[1].attributes.contains_key("city"));
        assert_eq!(
            rows[1].attributes["birth_date"].kind,
            Some(Kind::DateValue(pb::Date {
                year: 1970,
                month: 1,
                day: 2
            }))
        );
        assert_eq!(rows[0].attributes.len(), 1);
    }

    #[test]
    fn repeated_ids_and_emails_are_named() {
        let row = |id: &str, email: Option<&str>| pb::Customer {
            customer_id: id.into(),
            email: email.map(str::to_string),
            ..Default::default()
        };
        let rows = [row("a", Some("X@x.io")), row("b", Some("x@X.IO")), row("a", None)];
        let found: Vec<String> = repeats(&rows)
            .into_iter()
            .map(|(i, e)| format!("{i} {e}"))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("1 customers[1].email"), "{found:?}");
        assert!(found[1].starts_with("2 customers[2].customer_id"), "{found:?}");
        let e = renumbered(Error::invalid("customers[0].email", "bad"), 0, 7);
        assert_eq!(e.to_string(), "customers[7].email: bad");
        let e = renumbered(Error::invalid("customers[2]", "bad"), 2, 9);
        assert_eq!(e.to_string(), "customers[9]: bad");
    }
}
