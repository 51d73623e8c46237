//! Deterministic synthetic retail customers for benchmarks: a realistic mix of attributes with
//! skewed cities and stores, so columns, dictionaries and bitmaps look like production ones.
#![allow(dead_code)]

use segmentd::api::pb::{self, value::Kind};

/// xorshift64*: small, fast, deterministic per seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Skewed pick in 0..n: low indexes are much more likely (big cities, flagship stores).
    pub fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        let c = self.below(n);
        a.min(b).min(c)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn s(v: impl Into<String>) -> pb::Value {
    pb::Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn ts(seconds: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::TimestampValue(prost_types::Timestamp { seconds, nanos: 0 })),
    }
}

const COUNTRIES: &[&str] = &["FR", "DE", "ES", "IT", "BE", "CH", "GB", "NL"];
const LANGS: &[&str] = &["fr", "de", "es", "it", "nl", "en"];
const TIERS: &[&str] = &["basic", "silver", "gold", "platinum"];
const TAGS: &[&str] = &[
    "golf", "ski", "tennis", "running", "cycling", "hiking", "swimming", "yoga",
];

/// Customer number `n` of the base generated with `seed`.
pub fn customer(n: u64, seed: u64) -> pb::Customer {
    let mut r = Rng::new(seed ^ n.wrapping_mul(0x100_0000_01B3));
    let country = r.skewed(COUNTRIES.len() as u64) as usize;
    let city = r.skewed(2_000);
    let registered_at = 1_420_070_400 + r.below(10 * 365 * 86_400) as i64; // 2015..2025
    let mut attrs: Vec<(&str, pb::Value)> = vec![
        (
            "registered",
            pb::Value {
                kind: Some(Kind::BoolValue(r.chance(85))),
            },
        ),
        ("registered_at", ts(registered_at)),
        ("last_visit_at", ts(registered_at + r.below(300 * 86_400) as i64)),
        (
            "gender",
            s(match r.below(100) {
                0..48 => "F",
                48..96 => "M",
                _ => "X",
            }),
        ),
        (
            "birth_date",
            pb::Value {
                kind: Some(Kind::DateValue(pb::Date {
                    year: 1940 + r.below(65) as i32,
                    month: 1 + r.below(12) as i32,
                    day: 1 + r.below(28) as i32,
                })),
            },
        ),
        ("country", s(COUNTRIES[country])),
        ("region", s(format!("{}-R{}", COUNTRIES[country], r.skewed(12)))),
        ("city", s(format!("city-{city}"))),
        ("postal_code", s(format!("{:05}", city * 10 + r.below(10)))),
        ("home_store", s(format!("store-{}", r.skewed(400)))),
        ("language", s(LANGS[country.min(LANGS.len() - 1)])),
        (
            "email_opt_in",
            pb::Value {
                kind: Some(Kind::BoolValue(r.chance(60))),
            },
        ),
        ("loyalty_tier", s(TIERS[r.skewed(TIERS.len() as u64) as usize])),
        (
            "household_size",
            pb::Value {
                kind: Some(Kind::IntValue(1 + r.skewed(6) as i64)),
            },
        ),
    ];
    if r.chance(30) {
        let tag = TAGS[r.below(TAGS.len() as u64) as usize];
        attrs.push((
            "tags",
            pb::Value {
                kind: Some(Kind::ListValue(pb::StringList {
                    values: vec![tag.into()],
                })),
            },
        ));
    }
    if r.chance(5) {
        let account = r.skewed(5_000);
        attrs.push(("account_id", s(format!("acct-{account}"))));
        attrs.push(("organization", s(format!("Organization {account}"))));
    }
    if r.below(1000) == 0 {
        attrs.push((
            "vip",
            pb::Value {
                kind: Some(Kind::BoolValue(true)),
            },
        ));
    }
    pb::Customer {
        customer_id: format!("C{n:09}"),
        email: Some(format!("customer{n}@example.com")),
        attributes: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}
