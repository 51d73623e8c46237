//! `CustomerColumns`: a batch of customers given column by column, as patches.
//!
//! A column names its attribute once for the whole batch, so the work per value is the value's
//! own check; the result is what the same customers sent as `Customer` messages give (values go
//! through [`convert::value_in`], whose checks they share). Errors about one customer name its row
//! as `customers[i]`, errors about a whole column name it as `columns.attributes[j]`.

use crate::api::pb::{self, attribute_column::Values, value::Kind};
use crate::api::{Limits, convert};
use crate::error::{Error, Result};
use crate::store::batch::{AttrColumn, Coded, ColumnBatch, ColumnValues};
use crate::store::input::{self, CustomerPatch};
use crate::store::schema::{AttrDef, AttrType, Schema};
use crate::time;

/// Every customer of `columns` as a patch checked against `schema`, or the first failure; the
/// number of customers is checked against `limits` first.
pub fn column_patches(
    schema: &Schema,
    limits: Option<&Limits>,
    columns: pb::CustomerColumns,
) -> Result<Vec<CustomerPatch>> {
    Ok(column_batch(schema, limits, columns)?.patches(schema))
}

/// `columns` checked against `schema` into the batch the writer applies, or the first failure;
/// the number of customers is checked against `limits` first.
pub fn column_batch(
    schema: &Schema,
    limits: Option<&Limits>,
    columns: pb::CustomerColumns,
) -> Result<ColumnBatch> {
    let pb::CustomerColumns {
        customer_ids,
        emails,
        attributes,
    } = columns;
    let n = customer_ids.len();
    if let Some(limits) = limits {
        limits.check_batch("columns.customer_ids", n)?;
    }
    if !emails.is_empty() && emails.len() != n {
        return Err(Error::invalid(
            "columns.emails",
            format!(
                "{} e-mails for {n} customers (give none or one per customer)",
                emails.len()
            ),
        ));
    }
    // Columns in attribute order, as the batch keeps them.
    let mut resolved: Vec<(&AttrDef, usize, pb::AttributeColumn)> = Vec::with_capacity(attributes.len());
    for (j, column) in attributes.into_iter().enumerate() {
        let field = || format!("columns.attributes[{j}]");
        let def = schema.get(&column.name).ok_or_else(|| {
            Error::invalid(
                field(),
                format!("unknown attribute `{}` (see Admin.GetSchema)", column.name),
            )
        })?;
        if let Some((_, first, _)) = resolved.iter().find(|(d, _, _)| d.id == def.id) {
            return Err(Error::invalid(
                field(),
                format!(
                    "attribute `{}` has another column (columns.attributes[{first}])",
                    def.name
                ),
            ));
        }
        if def.read_only {
            return Err(Error::invalid(
                field(),
                format!(
                    "attribute `{}` is maintained by RecordOrders and cannot be set",
                    def.name
                ),
            ));
        }
        check_shape(def, n, &column).map_err(|e| e.within(&field()))?;
        resolved.push((def, j, column));
    }
    resolved.sort_unstable_by_key(|(def, _, _)| def.id);

    for (i, customer_id) in customer_ids.iter().enumerate() {
        let within = |e: Error| e.within(&format!("customers[{i}]"));
        input::check_customer_id(customer_id).map_err(within)?;
        if let Some(email) = emails.get(i).filter(|e| !e.is_empty()) {
            input::check_email(email).map_err(within)?;
        }
    }
    let emails = emails
        .into_iter()
        .map(|email| (!email.is_empty()).then_some(email))
        .collect();
    let mut out = ColumnBatch {
        ids: customer_ids,
        emails,
        columns: Vec::with_capacity(resolved.len()),
    };
    for (def, _, column) in resolved {
        let values = column_values(
            def,
            &column.missing,
            column.values.expect("the shape check found values"),
        )?;
        out.columns.push(AttrColumn {
            attr: def.id,
            missing: column.missing,
            values,
        });
    }
    Ok(out)
}

/// A column's values checked as `Value` messages holding them are; an error names the row of the
/// first bad one.
fn column_values(def: &AttrDef, missing: &[u32], values: Values) -> Result<ColumnValues> {
    let within = |k: usize, e: Error| {
        let row = nth_present(missing, k);
        e.within(&format!("customers[{row}].attributes[\"{}\"]", def.name))
    };
    let check_all = |n: usize, check: &dyn Fn(usize) -> Result<()>| {
        (0..n).try_for_each(|k| check(k).map_err(|e| within(k, e)))
    };
    Ok(match (def.ty, values) {
        (AttrType::Bool, Values::Bools(c)) => ColumnValues::Bool(c.values),
        (AttrType::Int | AttrType::Money | AttrType::Timestamp, Values::Ints(c) | Values::Timestamps(c)) => {
            if def.ty == AttrType::Timestamp {
                check_all(c.values.len(), &|k| timestamp(c.values[k]).map(drop))?;
            }
            ColumnValues::I64(c.values)
        }
        (AttrType::Float, Values::Doubles(c)) => {
            check_all(c.values.len(), &|k| finite(c.values[k]))?;
            ColumnValues::F64(c.values)
        }
        (AttrType::Float, Values::Ints(c)) => {
            ColumnValues::F64(c.values.into_iter().map(|v| v as f64).collect())
        }
        (AttrType::Date, Values::Dates(c)) => {
            let mut days = Vec::with_capacity(c.values.len());
            for (k, &v) in c.values.iter().enumerate() {
                days.push(date(v).map_err(|e| within(k, e))?);
            }
            ColumnValues::I32(days)
        }
        (AttrType::Keyword, Values::Strings(c)) => {
            check_all(c.values.len(), &|k| input::check_keyword(&c.values[k]))?;
            ColumnValues::Keyword(Coded {
                strings: c.values,
                codes: Vec::new(),
            })
        }
        (AttrType::Text, Values::Strings(c)) => {
            check_all(c.values.len(), &|k| text(&c.values[k]))?;
            ColumnValues::Text(c.values)
        }
        (AttrType::Keywords, Values::Lists(c)) => {
            let mut strings = Vec::new();
            let mut ends = Vec::with_capacity(c.values.len());
            for (k, list) in c.values.into_iter().enumerate() {
                input::check_keyword_list(&list.values).map_err(|e| within(k, e))?;
                let mut items = list.values;
                items.sort_unstable();
                items.dedup();
                strings.extend(items);
                ends.push(u32::try_from(strings.len()).expect("a batch holds fewer than 2^32 items"));
            }
            ColumnValues::Keywords {
                items: Coded {
                    strings,
                    codes: Vec::new(),
                },
                ends,
            }
        }
        (_, values) => unreachable!(
            "the shape check let {} through for {}",
            kind_name(&values),
            def.ty.name()
        ),
    })
}

/// The row of the `k`th value of a column whose rows `missing` have none.
fn nth_present(missing: &[u32], k: usize) -> usize {
    let mut row = k;
    for &m in missing {
        if m as usize <= row {
            row += 1;
        } else {
            break;
        }
    }
    row
}

/// `customers` given column by column, meaning what they mean as messages; `None` when that
/// cannot be said in columns: a value that clears an attribute, an e-mail removed with `""`, an
/// attribute given as two kinds (ints and doubles) or an invalid date or timestamp.
pub fn to_columns(customers: &[pb::Customer]) -> Option<pb::CustomerColumns> {
    let mut out = pb::CustomerColumns {
        customer_ids: customers.iter().map(|c| c.customer_id.clone()).collect(),
        ..Default::default()
    };
    if customers.iter().any(|c| c.email.is_some()) {
        for c in customers {
            match c.email.as_deref() {
                Some("") => return None,
                email => out.emails.push(email.unwrap_or_default().to_string()),
            }
        }
    }
    let mut index: std::collections::BTreeMap<&str, usize> = Default::default();
    for (row, c) in customers.iter().enumerate() {
        for (name, value) in &c.attributes {
            let j = *index.entry(name).or_insert_with(|| {
                out.attributes.push(pb::AttributeColumn {
                    name: name.clone(),
                    ..Default::default()
                });
                out.attributes.len() - 1
            });
            let column = &mut out.attributes[j];
            let filled = column.missing.len() + values_len(column.values.as_ref());
            column.missing.extend(filled as u32..row as u32);
            push_value(&mut column.values, value.kind.clone()?)?;
        }
    }
    for column in &mut out.attributes {
        let filled = column.missing.len() + values_len(column.values.as_ref());
        column.missing.extend(filled as u32..customers.len() as u32);
    }
    Some(out)
}

fn values_len(values: Option<&Values>) -> usize {
    match values {
        None => 0,
        Some(Values::Bools(c)) => c.values.len(),
        Some(Values::Ints(c) | Values::Dates(c) | Values::Timestamps(c)) => c.values.len(),
        Some(Values::Doubles(c)) => c.values.len(),
        Some(Values::Strings(c)) => c.values.len(),
        Some(Values::Lists(c)) => c.values.len(),
    }
}

/// Appends one value to a column, which takes the kind of its first value; `None` when the value
/// is of another kind or is not a valid date or timestamp.
fn push_value(values: &mut Option<Values>, kind: Kind) -> Option<()> {
    let values = values.get_or_insert_with(|| match &kind {
        Kind::BoolValue(_) => Values::Bools(Default::default()),
        Kind::IntValue(_) => Values::Ints(Default::default()),
        Kind::DoubleValue(_) => Values::Doubles(Default::default()),
        Kind::StringValue(_) => Values::Strings(Default::default()),
        Kind::DateValue(_) => Values::Dates(Default::default()),
        Kind::TimestampValue(_) => Values::Timestamps(Default::default()),
        Kind::ListValue(_) => Values::Lists(Default::default()),
    });
    match (values, kind) {
        (Values::Bools(c), Kind::BoolValue(v)) => c.values.push(v),
        (Values::Ints(c), Kind::IntValue(v)) => c.values.push(v),
        (Values::Doubles(c), Kind::DoubleValue(v)) => c.values.push(v),
        (Values::Strings(c), Kind::StringValue(v)) => c.values.push(v),
        (Values::Lists(c), Kind::ListValue(v)) => c.values.push(v),
        (Values::Dates(c), Kind::DateValue(d)) => c.values.push(i64::from(convert::date_in(&d).ok()?)),
        (Values::Timestamps(c), Kind::TimestampValue(t)) => c.values.push(convert::timestamp_in(&t).ok()?),
        _ => return None,
    }
    Some(())
}

/// Checks that a column's values fit its attribute's type and that it gives one value for each
/// row it does not list as missing.
fn check_shape(def: &AttrDef, n: usize, column: &pb::AttributeColumn) -> Result<()> {
    let Some(values) = &column.values else {
        return Err(Error::invalid("values", "no values given"));
    };
    let (kind, count) = (kind_name(values), values_len(Some(values)));
    if !accepted(def.ty).contains(&kind) {
        return Err(Error::invalid(
            "values",
            format!(
                "attribute `{}` is {}: expected {}, got {kind}",
                def.name,
                def.ty.name(),
                accepted(def.ty).join(" or ")
            ),
        ));
    }
    let mut previous: Option<u32> = None;
    for (k, &row) in column.missing.iter().enumerate() {
        if row as usize >= n || previous.is_some_and(|p| p >= row) {
            return Err(Error::invalid(
                format!("missing[{k}]"),
                format!("row {row} is not ascending within the {n} customers"),
            ));
        }
        previous = Some(row);
    }
    let wanted = n - column.missing.len();
    if count != wanted {
        return Err(Error::invalid(
            "values",
            format!(
                "{count} values for {n} customers with {} missing (expected {wanted})",
                column.missing.len()
            ),
        ));
    }
    Ok(())
}

/// The `values` field's name.
fn kind_name(values: &Values) -> &'static str {
    match values {
        Values::Bools(_) => "bools",
        Values::Ints(_) => "ints",
        Values::Doubles(_) => "doubles",
        Values::Dates(_) => "dates",
        Values::Timestamps(_) => "timestamps",
        Values::Strings(_) => "strings",
        Values::Lists(_) => "lists",
    }
}

/// The `values` fields a column of an attribute of type `ty` may use.
fn accepted(ty: AttrType) -> &'static [&'static str] {
    match ty {
        AttrType::Bool => &["bools"],
        AttrType::Int | AttrType::Money => &["ints"],
        AttrType::Float => &["doubles", "ints"],
        AttrType::Date => &["dates"],
        AttrType::Timestamp => &["timestamps"],
        AttrType::Keyword | AttrType::Text => &["strings"],
        AttrType::Keywords => &["lists"],
    }
}

/// A float as `Value` messages take it.
fn finite(x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid("", "must be a finite number"))
    }
}

/// A text as `Value` messages take it.
fn text(s: &str) -> Result<()> {
    if s.len() > input::MAX_TEXT {
        return Err(Error::invalid(
            "",
            format!("longer than {} bytes", input::MAX_TEXT),
        ));
    }
    Ok(())
}

fn date(days: i64) -> Result<i32> {
    let first = time::days_from_civil(time::MIN_YEAR, 1, 1).expect("valid date");
    let last = time::days_from_civil(time::MAX_YEAR, 12, 31).expect("valid date");
    match i32::try_from(days) {
        Ok(d) if (first..=last).contains(&d) => Ok(d),
        _ => Err(Error::invalid(
            "",
            format!("{days} days since 1970-01-01 is outside years 1 to 9999"),
        )),
    }
}

fn timestamp(micros: i64) -> Result<i64> {
    if (time::MIN_TIMESTAMP_MICROS..=time::MAX_TIMESTAMP_MICROS).contains(&micros) {
        Ok(micros)
    } else {
        Err(Error::invalid(
            "",
            format!("{micros} microseconds since the epoch is outside years 1 to 9999"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::value::Value;

    fn ints(values: Vec<i64>) -> Option<Values> {
        Some(Values::Ints(pb::IntColumn { values }))
    }

    fn strings(values: &[&str]) -> Option<Values> {
        Some(Values::Strings(pb::StringColumn {
            values: values.iter().map(|s| s.to_string()).collect(),
        }))
    }

    fn column(name: &str, missing: Vec<u32>, values: Option<Values>) -> pb::AttributeColumn {
        pb::AttributeColumn {
            name: name.into(),
            missing,
            values,
        }
    }

    fn batch(attributes: Vec<pb::AttributeColumn>) -> pb::CustomerColumns {
        pb::CustomerColumns {
            customer_ids: vec!["a".into(), "b".into(), "c".into()],
            emails: vec!["a@x.fr".into(), String::new(), "c@x.fr".into()],
            attributes,
        }
    }

    fn error(columns: pb::CustomerColumns) -> String {
        let schema = Schema::builtin();
        column_patches(&schema, None, columns).unwrap_err().to_string()
    }

    #[test]
    fn missing_rows_keep_their_value_and_attributes_come_sorted() {
        let schema = Schema::builtin();
        let patches = column_patches(
            &schema,
            None,
            batch(vec![
                column("household_size", vec![1], ints(vec![2, 4])),
                column("gender", vec![0, 2], strings(&["F"])),
            ]),
        )
        .unwrap();
        let id = |name: &str| schema.get(name).unwrap().id;
        assert_eq!(patches[0].email.as_deref(), Some("a@x.fr"));
        assert_eq!(patches[1].email, None);
        assert_eq!(
            patches[0].attrs,
            vec![(id("household_size"), Some(Value::Int(2)))]
        );
        let mut b = vec![(id("gender"), Some(Value::Keyword("F".into())))];
        b.sort_by_key(|(id, _)| *id);
        assert_eq!(patches[1].attrs, b);
        assert_eq!(
            patches[2].attrs,
            vec![(id("household_size"), Some(Value::Int(4)))]
        );
    }

    #[test]
    fn errors_name_the_column_or_the_customer() {
        let e = error(batch(vec![column("shoe_size", vec![], ints(vec![1, 2, 3]))]));
        assert!(
            e.contains("columns.attributes[0]") && e.contains("unknown attribute `shoe_size`"),
            "{e}"
        );
        let e = error(batch(vec![column(
            "household_size",
            vec![],
            strings(&["1", "2", "3"]),
        )]));
        assert!(
            e.contains("columns.attributes[0].values") && e.contains("expected ints, got strings"),
            "{e}"
        );
        let e = error(batch(vec![column("household_size", vec![], ints(vec![1, 2]))]));
        assert!(
            e.contains("columns.attributes[0].values") && e.contains("2 values for 3 customers"),
            "{e}"
        );
        let e = error(batch(vec![column("household_size", vec![2, 1], ints(vec![1]))]));
        assert!(e.contains("columns.attributes[0].missing[1]"), "{e}");
        let e = error(batch(vec![column("household_size", vec![3], ints(vec![1, 2]))]));
        assert!(e.contains("columns.attributes[0].missing[0]"), "{e}");
        let e = error(batch(vec![column("household_size", vec![], None)]));
        assert!(e.contains("no values given"), "{e}");
        let e = error(batch(vec![
            column("gender", vec![], strings(&["F", "M", "F"])),
            column("gender", vec![], strings(&["F", "M", "F"])),
        ]));
        assert!(
            e.contains("columns.attributes[1]") && e.contains("(columns.attributes[0])"),
            "{e}"
        );
        let long = "x".repeat(input::MAX_KEYWORD + 1);
        let e = error(batch(vec![column("gender", vec![0], strings(&["F", &long]))]));
        assert!(e.contains("customers[2].attributes[\"gender\"]"), "{e}");
        let e = error(batch(vec![column(
            "birth_date",
            vec![],
            Some(Values::Dates(pb::IntColumn {
                values: vec![0, 1, 3_000_000],
            })),
        )]));
        assert!(
            e.contains("customers[2].attributes[\"birth_date\"]") && e.contains("outside years"),
            "{e}"
        );
        let mut bad_email = batch(vec![]);
        bad_email.emails[2] = "not an e-mail".into();
        assert!(error(bad_email).contains("customers[2].email"));
        let mut short = batch(vec![]);
        short.emails.pop();
        assert!(error(short).contains("columns.emails"));
        let mut empty_id = batch(vec![]);
        empty_id.customer_ids[1].clear();
        assert!(error(empty_id).contains("customers[1].customer_id"));
    }

    #[test]
    fn the_batch_limit_counts_customers() {
        let schema = Schema::builtin();
        let limits = Limits { max_batch: 2 };
        let e = column_patches(&schema, Some(&limits), batch(vec![])).unwrap_err();
        assert!(e.to_string().contains("columns.customer_ids"), "{e}");
    }
}
