//! Evaluating compiled rules: over a whole shard at once (segment creation, preview) and for one
//! customer (incremental updates on writes, explain).
//!
//! Whole-shard evaluation builds dense bitsets for comparisons on number columns and turns them
//! into a roaring container in one step; keyword predicates reuse the per-value bitmaps. Both paths
//! share the same semantics: a predicate on a missing value is false, and `not` of it is true.

use roaring::RoaringBitmap;

use crate::columnar::column::{Column, ColumnData};
use crate::columnar::schema::{AttrId, Schema};
use crate::columnar::{SHARD_SIZE, local};
use crate::segment::SegShard;
use crate::segment::compile::{Expr, Leaf, Ranges, Relative, StrTest};
use crate::time::{self, MICROS_PER_DAY};

/// "Now", for relative-time predicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub micros: i64,
    /// Today, in days since the epoch (UTC).
    pub today: i32,
}

impl Now {
    pub fn at(micros: i64) -> Now {
        Now {
            micros,
            today: micros.div_euclid(MICROS_PER_DAY) as i32,
        }
    }
}

/// A leaf with "now" and dictionary codes resolved, for whole-shard evaluation.
#[derive(Debug, Clone)]
pub enum Bound {
    Bool {
        attr: AttrId,
        value: bool,
    },
    I64 {
        attr: AttrId,
        test: Ranges<i64>,
    },
    I32 {
        attr: AttrId,
        test: Ranges<i32>,
    },
    F64 {
        attr: AttrId,
        test: Ranges<f64>,
    },
    /// Customers whose keyword code is one of `codes`, or (negated) present and none of them.
    Codes {
        attr: AttrId,
        codes: Vec<u32>,
        negated: bool,
    },
    /// `has_any` / `has_all`; `None` for a value never seen.
    Sets {
        attr: AttrId,
        codes: Vec<Option<u32>>,
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
    Birthday {
        attr: AttrId,
        now: Now,
        days: i32,
    },
    InSegment {
        slot: u32,
    },
}

/// A compiled expression bound to a moment and to the dictionaries' current codes.
#[derive(Debug, Clone)]
pub enum BoundExpr {
    And(Vec<BoundExpr>),
    Or(Vec<BoundExpr>),
    Not(Box<BoundExpr>),
    Leaf(Bound),
    Never,
}

/// The day `years` years before `today` (Feb 29 becomes Feb 28), clamped to the supported range.
fn years_before(today: i32, years: i64) -> i32 {
    let (y, m, d) = time::civil_from_days(today);
    let target = i64::from(y) - years;
    if target < i64::from(time::MIN_YEAR) {
        return i32::MIN;
    }
    if target > i64::from(time::MAX_YEAR) {
        return i32::MAX;
    }
    let target = target as i32;
    let d = if m == 2 && d == 29 && !time::is_leap(target) {
        28
    } else {
        d
    };
    time::days_from_civil(target, m, d).expect("valid date")
}

/// Age in whole years at `today` of someone born on `birth`.
pub fn age(birth: i32, today: i32) -> i64 {
    let (by, bm, bd) = time::civil_from_days(birth);
    let (ty, tm, td) = time::civil_from_days(today);
    i64::from(ty - by) - i64::from((tm, td) < (bm, bd))
}

/// Days from `today` to the next birthday of someone born on `birth` (0 when it is today).
/// A Feb 29 birthday falls on Mar 1 in other years.
pub fn days_to_birthday(birth: i32, today: i32) -> i32 {
    let (_, bm, bd) = time::civil_from_days(birth);
    let (ty, _, _) = time::civil_from_days(today);
    let on = |year: i32| {
        if bm == 2 && bd == 29 && !time::is_leap(year) {
            time::days_from_civil(year, 3, 1)
        } else {
            time::days_from_civil(year, bm, bd)
        }
        .unwrap_or(i32::MAX)
    };
    let this_year = on(ty);
    if this_year >= today {
        this_year - today
    } else {
        on(ty + 1).saturating_sub(today)
    }
}

/// Whole days between a timestamp and now (negative for the future).
fn days_since(t: i64, now: Now) -> i64 {
    (now.micros - t).div_euclid(MICROS_PER_DAY)
}

/// Binds `expr` to `now` and to the dictionaries' codes.
pub fn bind(expr: &Expr, schema: &Schema, now: Now) -> BoundExpr {
    match expr {
        Expr::And(v) => BoundExpr::And(v.iter().map(|e| bind(e, schema, now)).collect()),
        Expr::Or(v) => BoundExpr::Or(v.iter().map(|e| bind(e, schema, now)).collect()),
        Expr::Not(e) => BoundExpr::Not(Box::new(bind(e, schema, now))),
        Expr::Never => BoundExpr::Never,
        Expr::Leaf(leaf) => BoundExpr::Leaf(match leaf {
            Leaf::Bool { attr, value } => Bound::Bool {
                attr: *attr,
                value: *value,
            },
            Leaf::I64 { attr, test } => Bound::I64 {
                attr: *attr,
                test: test.clone(),
            },
            Leaf::I32 { attr, test } => Bound::I32 {
                attr: *attr,
                test: test.clone(),
            },
            Leaf::F64 { attr, test } => Bound::F64 {
                attr: *attr,
                test: test.clone(),
            },
            Leaf::Keyword { attr, test } => {
                let dict = schema.attr(*attr).dict.as_deref().expect("keyword dictionary");
                let (mut codes, negated) = match test {
                    StrTest::Values { values, negated } => (
                        values.iter().filter_map(|v| dict.code(v)).collect::<Vec<_>>(),
                        *negated,
                    ),
                    StrTest::Match { .. } => (dict.codes_where(|v| test.test(v)), false),
                };
                codes.sort_unstable();
                codes.dedup();
                Bound::Codes {
                    attr: *attr,
                    codes,
                    negated,
                }
            }
            Leaf::Keywords { attr, values, all } => {
                let dict = schema.attr(*attr).dict.as_deref().expect("keywords dictionary");
                Bound::Sets {
                    attr: *attr,
                    codes: values.iter().map(|v| dict.code(v)).collect(),
                    all: *all,
                }
            }
            Leaf::Text { attr, test } => Bound::Text {
                attr: *attr,
                test: test.clone(),
            },
            Leaf::IsSet { attr, negated } => Bound::IsSet {
                attr: *attr,
                negated: *negated,
            },
            Leaf::InSegment { slot } => Bound::InSegment { slot: *slot },
            Leaf::Relative(rel) => bind_relative(rel, now),
        }),
    }
}

/// A relative-time leaf bound to `now`.
pub(crate) fn bind_relative(rel: &Relative, now: Now) -> Bound {
    match rel {
        Relative::TimestampWithin { attr, micros } => Bound::I64 {
            attr: *attr,
            test: Ranges {
                ranges: vec![(now.micros.saturating_sub(*micros), now.micros)],
                negated: false,
            },
        },
        Relative::DateWithin { attr, days } => Bound::I32 {
            attr: *attr,
            test: Ranges {
                ranges: vec![(now.today.saturating_sub(*days), now.today)],
                negated: false,
            },
        },
        Relative::Age { attr, years } => Bound::I32 {
            attr: *attr,
            test: Ranges {
                ranges: years
                    .ranges
                    .iter()
                    .map(|&(lo, hi)| {
                        // age >= lo  <=>  born on or before today minus lo years;
                        // age <= hi  <=>  born after today minus (hi + 1) years.
                        let latest = if lo <= 0 {
                            i32::MAX
                        } else {
                            years_before(now.today, lo)
                        };
                        let earliest = if hi == i64::MAX {
                            i32::MIN
                        } else {
                            years_before(now.today, hi.saturating_add(1)).saturating_add(1)
                        };
                        (earliest, latest)
                    })
                    .collect(),
                negated: years.negated,
            },
        },
        Relative::DaysSince { attr, days } => Bound::I64 {
            attr: *attr,
            test: Ranges {
                ranges: days
                    .ranges
                    .iter()
                    .map(|&(lo, hi)| {
                        // floor((now - t) / day) in [lo, hi]  <=>  t in [now - (hi+1)·day + 1, now - lo·day]
                        let earliest = if hi == i64::MAX {
                            i64::MIN
                        } else {
                            now.micros
                                .saturating_sub(hi.saturating_add(1).saturating_mul(MICROS_PER_DAY))
                                .saturating_add(1)
                        };
                        let latest = if lo == i64::MIN {
                            i64::MAX
                        } else {
                            now.micros.saturating_sub(lo.saturating_mul(MICROS_PER_DAY))
                        };
                        (earliest, latest)
                    })
                    .collect(),
                negated: days.negated,
            },
        },
        Relative::Birthday { attr, days } => Bound::Birthday {
            attr: *attr,
            now,
            days: *days,
        },
    }
}

/// Builds a bitmap of the ordinals `base + i` for which `f(i)` holds, `i < len`, one 64-bit word
/// at a time, then makes it a roaring container in one step.
fn dense<F: Fn(usize) -> bool>(base: u32, len: usize, f: F) -> RoaringBitmap {
    let words = len.div_ceil(64);
    let mut bytes = Vec::with_capacity(words * 8);
    for w in 0..words {
        let start = w * 64;
        let end = (start + 64).min(len);
        let mut word = 0u64;
        for i in start..end {
            word |= u64::from(f(i)) << (i - start);
        }
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    RoaringBitmap::from_lsb0_bytes(base, &bytes)
}

fn ranges_bits<T: PartialOrd + Copy>(
    base: u32,
    values: &[T],
    test: &Ranges<T>,
    present: &RoaringBitmap,
) -> RoaringBitmap {
    let bits = match (test.ranges.as_slice(), test.negated) {
        ([(lo, hi)], false) => {
            let (lo, hi) = (*lo, *hi);
            dense(base, values.len(), |i| lo <= values[i] && values[i] <= hi)
        }
        ([(lo, hi)], true) => {
            let (lo, hi) = (*lo, *hi);
            dense(base, values.len(), |i| !(lo <= values[i] && values[i] <= hi))
        }
        _ => dense(base, values.len(), |i| test.test(values[i])),
    };
    bits & present
}

/// What evaluation reads of one shard of customers (the store's shards are one): who is in it,
/// their columns, and each segment's members there (for `in segment`).
pub trait ShardView {
    /// The shard's customers, by local ordinal.
    fn live(&self) -> &RoaringBitmap;
    /// Attribute `attr`'s column, if any customer of the shard ever had a value.
    fn column(&self, attr: AttrId) -> Option<&Column>;
    /// Segment `slot`'s state in this shard, if it was ever written here.
    fn segment(&self, slot: u32) -> Option<&SegShard>;
}

/// Members of one shard under `expr`. `live` are the shard's customers.
pub fn eval_shard(expr: &BoundExpr, shard: &impl ShardView, base: u32) -> RoaringBitmap {
    match expr {
        BoundExpr::Never => RoaringBitmap::new(),
        BoundExpr::And(v) => {
            let mut acc: Option<RoaringBitmap> = None;
            for e in v {
                let bits = eval_shard(e, shard, base);
                let next = match acc {
                    None => bits,
                    Some(mut a) => {
                        a &= bits;
                        a
                    }
                };
                if next.is_empty() {
                    return next;
                }
                acc = Some(next);
            }
            acc.unwrap_or_default()
        }
        BoundExpr::Or(v) => {
            let mut acc = RoaringBitmap::new();
            for e in v {
                acc |= eval_shard(e, shard, base);
            }
            acc
        }
        BoundExpr::Not(e) => shard.live() - eval_shard(e, shard, base),
        BoundExpr::Leaf(leaf) => eval_leaf(leaf, shard, base),
    }
}

fn eval_leaf(leaf: &Bound, shard: &impl ShardView, base: u32) -> RoaringBitmap {
    if let Bound::InSegment { slot } = leaf {
        return shard
            .segment(*slot)
            .map(|s| s.members.clone())
            .unwrap_or_default();
    }
    let attr = match leaf {
        Bound::Bool { attr, .. }
        | Bound::I64 { attr, .. }
        | Bound::I32 { attr, .. }
        | Bound::F64 { attr, .. }
        | Bound::Codes { attr, .. }
        | Bound::Sets { attr, .. }
        | Bound::Text { attr, .. }
        | Bound::IsSet { attr, .. }
        | Bound::Birthday { attr, .. } => *attr,
        Bound::InSegment { .. } => unreachable!(),
    };
    let Some(col) = shard.column(attr) else {
        // Never written in this shard: every value is missing.
        return match leaf {
            Bound::IsSet { negated: true, .. } => shard.live().clone(),
            _ => RoaringBitmap::new(),
        };
    };
    let Column { present, data } = col;
    match (leaf, data) {
        (Bound::IsSet { negated: false, .. }, _) => present.clone(),
        (Bound::IsSet { negated: true, .. }, _) => shard.live() - present,
        (Bound::Bool { value: true, .. }, ColumnData::Bool(trues)) => trues.clone(),
        (Bound::Bool { value: false, .. }, ColumnData::Bool(trues)) => present - trues,
        (Bound::I64 { test, .. }, ColumnData::I64(values)) => ranges_bits(base, values, test, present),
        (Bound::I32 { test, .. }, ColumnData::I32(values)) => ranges_bits(base, values, test, present),
        (Bound::F64 { test, .. }, ColumnData::F64(values)) => ranges_bits(base, values, test, present),
        (Bound::Codes { codes, negated, .. }, ColumnData::Keyword { .. }) => {
            let acc = col.with_codes(codes);
            if *negated { present - acc } else { acc }
        }
        (Bound::Sets { codes, all, .. }, ColumnData::Keywords { by_value }) => {
            let empty = RoaringBitmap::new();
            let bitmap = |c: &Option<u32>| c.and_then(|c| by_value.get(&c)).unwrap_or(&empty);
            if *all {
                let mut acc = present.clone();
                for c in codes {
                    acc &= bitmap(c);
                }
                acc
            } else {
                let mut acc = RoaringBitmap::new();
                for c in codes {
                    acc |= bitmap(c);
                }
                acc
            }
        }
        (Bound::Text { test, .. }, ColumnData::Text(strings)) => RoaringBitmap::from_sorted_iter(
            present
                .iter()
                .filter(|&ord| strings.get(local(ord)).is_some_and(|s| test.test(s))),
        )
        .unwrap_or_default(),
        (Bound::Birthday { now, days, .. }, ColumnData::I32(values)) => RoaringBitmap::from_sorted_iter(
            present
                .iter()
                .filter(|&ord| days_to_birthday(values[local(ord)], now.today) <= *days),
        )
        .unwrap_or_default(),
        // A leaf is compiled against the column's type, so other pairs cannot occur.
        _ => RoaringBitmap::new(),
    }
}

/// Whether customer `ord` of `shard` matches `expr` at `now`: the per-customer twin of
/// [`eval_shard`], reading values directly (no binding, so it is cheap for one customer).
pub fn eval_one(expr: &Expr, shard: &impl ShardView, ord: u32, schema: &Schema, now: Now) -> bool {
    match expr {
        Expr::Never => false,
        Expr::And(v) => v.iter().all(|e| eval_one(e, shard, ord, schema, now)),
        Expr::Or(v) => v.iter().any(|e| eval_one(e, shard, ord, schema, now)),
        Expr::Not(e) => !eval_one(e, shard, ord, schema, now),
        Expr::Leaf(leaf) => leaf_one(leaf, shard, ord, schema, now),
    }
}

fn leaf_one(leaf: &Leaf, shard: &impl ShardView, ord: u32, schema: &Schema, now: Now) -> bool {
    let col = |attr: AttrId| shard.column(attr).filter(|c| c.present.contains(ord));
    let i = local(ord);
    match leaf {
        Leaf::InSegment { slot } => shard.segment(*slot).is_some_and(|s| s.members.contains(ord)),
        Leaf::IsSet { attr, negated } => col(*attr).is_some() != *negated,
        Leaf::Bool { attr, value } => match col(*attr).map(|c| &c.data) {
            Some(ColumnData::Bool(trues)) => trues.contains(ord) == *value,
            _ => false,
        },
        Leaf::I64 { attr, test } => match col(*attr).map(|c| &c.data) {
            Some(ColumnData::I64(v)) => test.test(v[i]),
            _ => false,
        },
        Leaf::I32 { attr, test } => match col(*attr).map(|c| &c.data) {
            Some(ColumnData::I32(v)) => test.test(v[i]),
            _ => false,
        },
        Leaf::F64 { attr, test } => match col(*attr).map(|c| &c.data) {
            Some(ColumnData::F64(v)) => test.test(v[i]),
            _ => false,
        },
        Leaf::Keyword { attr, test } => {
            let def = schema.attr(*attr);
            match (col(*attr), def.dict.as_deref()) {
                (Some(c), Some(dict)) => match c.keyword_code(ord) {
                    Some(code) => test.test(&dict.value(code)),
                    None => false,
                },
                _ => false,
            }
        }
        Leaf::Keywords { attr, values, all } => {
            let def = schema.attr(*attr);
            let (Some(c), Some(dict)) = (col(*attr), def.dict.as_deref()) else {
                return false;
            };
            let ColumnData::Keywords { by_value } = &c.data else {
                return false;
            };
            let has = |v: &String| {
                dict.code(v)
                    .and_then(|code| by_value.get(&code))
                    .is_some_and(|bm| bm.contains(ord))
            };
            if *all {
                values.iter().all(has)
            } else {
                values.iter().any(has)
            }
        }
        Leaf::Text { attr, test } => match col(*attr).map(|c| &c.data) {
            Some(ColumnData::Text(strings)) => strings.get(i).is_some_and(|s| test.test(s)),
            _ => false,
        },
        Leaf::Relative(rel) => {
            let attr = rel.attr();
            match (rel, col(attr).map(|c| &c.data)) {
                (Relative::TimestampWithin { micros, .. }, Some(ColumnData::I64(v))) => {
                    v[i] >= now.micros.saturating_sub(*micros) && v[i] <= now.micros
                }
                (Relative::DateWithin { days, .. }, Some(ColumnData::I32(v))) => {
                    v[i] >= now.today.saturating_sub(*days) && v[i] <= now.today
                }
                (Relative::Age { years, .. }, Some(ColumnData::I32(v))) => years.test(age(v[i], now.today)),
                (Relative::DaysSince { days, .. }, Some(ColumnData::I64(v))) => {
                    days.test(days_since(v[i], now))
                }
                (Relative::Birthday { days, .. }, Some(ColumnData::I32(v))) => {
                    days_to_birthday(v[i], now.today) <= *days
                }
                _ => false,
            }
        }
    }
}

/// Ordinals `base..base + SHARD_SIZE` of `bitmap` (a bitmap spanning many shards).
pub fn shard_part(bitmap: &RoaringBitmap, base: u32) -> RoaringBitmap {
    let end = base as u64 + SHARD_SIZE as u64;
    RoaringBitmap::from_sorted_iter(bitmap.range(base..(end.min(u64::from(u32::MAX) + 1) as u32)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: i32, dd: i32) -> i32 {
        time::days_from_civil(y, m, dd).unwrap()
    }

    #[test]
    fn age_and_birthdays() {
        assert_eq!(age(d(1980, 5, 17), d(2020, 5, 16)), 39);
        assert_eq!(age(d(1980, 5, 17), d(2020, 5, 17)), 40);
        assert_eq!(age(d(2000, 2, 29), d(2025, 2, 28)), 24);
        assert_eq!(age(d(2000, 2, 29), d(2025, 3, 1)), 25);
        assert_eq!(days_to_birthday(d(1990, 12, 25), d(2024, 12, 20)), 5);
        assert_eq!(days_to_birthday(d(1990, 1, 2), d(2024, 12, 30)), 3);
        assert_eq!(
            days_to_birthday(d(2000, 2, 29), d(2025, 2, 27)),
            2,
            "Mar 1 in a common year"
        );
        assert_eq!(days_to_birthday(d(1990, 6, 1), d(2024, 6, 1)), 0);
    }

    #[test]
    fn age_ranges_bind_to_birth_dates_exactly() {
        // For every birth date over a few years, the bound range agrees with the age formula.
        let today = d(2024, 3, 1);
        for (lo, hi) in [(40, i64::MAX), (i64::MIN, 39), (18, 25), (0, 0)] {
            let rel = Relative::Age {
                attr: 0,
                years: Ranges {
                    ranges: vec![(lo, hi)],
                    negated: false,
                },
            };
            let Bound::I32 { test, .. } = bind_relative(&rel, Now::at(i64::from(today) * MICROS_PER_DAY))
            else {
                panic!()
            };
            for birth in d(1975, 1, 1)..d(2024, 3, 2) {
                let a = age(birth, today);
                assert_eq!(
                    test.test(birth),
                    lo <= a && a <= hi,
                    "birth {birth} age {a} in [{lo}, {hi}]"
                );
            }
        }
    }

    #[test]
    fn days_since_binds_exactly() {
        let now = Now::at(1_700_000_000_000_000 + 12_345);
        let rel = Relative::DaysSince {
            attr: 0,
            days: Ranges {
                ranges: vec![(0, 89)],
                negated: false,
            },
        };
        let Bound::I64 { test, .. } = bind_relative(&rel, now) else {
            panic!()
        };
        for t in (now.micros - 100 * MICROS_PER_DAY..now.micros + MICROS_PER_DAY).step_by(3_600_000_000 - 7) {
            let ds = days_since(t, now);
            assert_eq!(test.test(t), (0..=89).contains(&ds), "t {t} days {ds}");
        }
    }
}
