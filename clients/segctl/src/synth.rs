//! `segctl gen`: a deterministic synthetic retail base for demos, tests and benches.
//!
//! Customers (`customers.csv`): ages 18 to 85 weighted toward 25-55, 51% women, 47% men, 2% other;
//! eight countries with their regions, 2,000 cities and 400 home stores picked with a strong skew
//! toward the big ones; registrations spread over 2015-2025; about 5% B2B customers in 5,000
//! accounts, about 0.1% VIP. Orders (`orders.csv`): 35% of customers never ordered, about 30%
//! ordered once, the rest follow a heavy tail; amounts are log-normal-like per customer, with
//! Black Friday and Christmas peaks and sport seasons (ski in winter, golf and tennis in summer);
//! a third of customers are promotion hunters. Customer `n` depends only on the seed and `n`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::values::{Failure, Result, civil_from_days, days_from_civil};

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, n: u64) -> Rng {
        let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Low indexes much more likely (big cities, flagship stores).
    fn skewed(&mut self, n: u64) -> u64 {
        let u = self.unit();
        ((u * u * u) * n as f64) as u64 % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const COUNTRIES: &[(&str, &str, &[&str])] = &[
    (
        "FR",
        "fr",
        &[
            "IDF", "ARA", "PACA", "OCC", "NAQ", "HDF", "GES", "BRE", "PDL", "NOR",
        ],
    ),
    ("DE", "de", &["BY", "BW", "NW", "HE", "NI", "BE", "SN", "HH"]),
    ("ES", "es", &["MD", "CT", "AN", "VC", "PV", "GA"]),
    ("IT", "it", &["LOM", "LAZ", "CAM", "PIE", "VEN", "TOS"]),
    ("GB", "en", &["ENG", "SCT", "WLS", "NIR"]),
    ("BE", "fr", &["BRU", "VLG", "WAL"]),
    ("CH", "de", &["ZH", "GE", "VD", "BE"]),
    ("NL", "nl", &["NH", "ZH", "UT", "NB"]),
];
/// Share of customers per country, in per mille.
const COUNTRY_WEIGHTS: &[u64] = &[420, 160, 110, 100, 90, 50, 40, 30];
const MARITAL: &[&str] = &["single", "married", "married", "partnered", "divorced", "widowed"];
const INCOME: &[&str] = &["low", "lower-middle", "middle", "middle", "upper-middle", "high"];
const TIERS: &[&str] = &["basic", "silver", "gold", "platinum"];
const SPORTS: &[&str] = &[
    "golf", "ski", "tennis", "running", "cycling", "hiking", "swimming", "fitness",
];
const BRANDS: &[&[&str]] = &[
    &["Titleist", "Callaway", "TaylorMade", "Ping"],
    &["Rossignol", "Salomon", "Atomic", "Head"],
    &["Wilson", "Babolat", "Head", "Yonex"],
    &["Asics", "Nike", "Hoka", "Brooks", "Adidas"],
    &["Specialized", "Trek", "Shimano", "Giant"],
    &["Salomon", "The North Face", "Columbia", "Merrell"],
    &["Speedo", "Arena", "TYR"],
    &["Nike", "Adidas", "Reebok", "Under Armour"],
];
/// Month (1-12) weights per sport: ski in winter, golf and tennis in summer.
fn season(sport: usize, month: u32) -> u64 {
    let winter = matches!(month, 12 | 1 | 2);
    let summer = matches!(month, 5..=8);
    match SPORTS[sport] {
        "ski" if winter => 6,
        "ski" if summer => 1,
        "golf" | "tennis" | "cycling" | "swimming" if summer => 4,
        "golf" | "tennis" | "cycling" | "swimming" if winter => 1,
        _ => 2,
    }
}

/// First day of 2015 and of 2026, in days since the epoch.
fn span() -> (i64, i64) {
    (
        days_from_civil(2015, 1, 1).expect("valid date"),
        days_from_civil(2026, 1, 1).expect("valid date"),
    )
}

pub const CUSTOMER_HEADER: &str = "customer_id,email,registered,registered_at,last_visit_at,gender,birth_date,\
marital_status,household_size,income_band,country,region,city,postal_code,home_store,account_id,organization,\
language,email_opt_in,sms_opt_in,loyalty_tier,vip,tags";
pub const ORDER_HEADER: &str = "order_id,customer_id,placed_at,amount,promotion,categories,brands";

fn date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn timestamp(days: i64, secs: u64) -> String {
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date(days),
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// Writes customer `n`'s row and its orders.
fn customer(seed: u64, n: u64, out: &mut impl Write, orders: &mut impl Write) -> std::io::Result<u64> {
    let mut r = Rng::new(seed, n);
    let (first, end) = span();
    let mut pick = r.below(1000);
    let country = COUNTRY_WEIGHTS
        .iter()
        .position(|&w| {
            if pick < w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .unwrap_or(0);
    let (code, lang, regions) = COUNTRIES[country];
    let region = regions[r.skewed(regions.len() as u64) as usize];
    let city = r.skewed(250);
    let gender = match r.below(100) {
        0..51 => "F",
        51..98 => "M",
        _ => "X",
    };
    // Ages 18..85, weighted toward the middle (sum of two uniforms).
    let age = 18 + (r.below(34) + r.below(34)) as i64;
    let registered_days = first + r.below((end - first - 30) as u64) as i64;
    let now = end - 1;
    let birth = now - age * 365 - r.below(365) as i64;
    let b2b = r.chance(0.05);
    let vip = r.chance(0.001);
    let sport = r.skewed(SPORTS.len() as u64) as usize;
    let promo_hunter = r.chance(0.33);
    // Orders: 35% none, ~30% one, then a heavy tail.
    let order_count = match r.below(100) {
        0..35 => 0,
        35..65 => 1,
        _ => 2 + (1.0 / (1.0 - r.unit()).max(1e-3)).powf(0.8) as u64 % 60,
    };
    // Spend level per customer: heavy-tailed basket size.
    let basket = 15.0 + 60.0 * (-(1.0 - r.unit()).ln()) * if vip || b2b { 4.0 } else { 1.0 };
    let mut last_seen = registered_days;
    for k in 0..order_count {
        // Seasonal month by rejection sampling over the customer's active span.
        let mut day;
        loop {
            day = registered_days + r.below((end - registered_days).max(1) as u64) as i64;
            let (_, month, dom) = civil_from_days(day);
            let mut weight = season(sport, month);
            if month == 11 && dom >= 20 || month == 12 && dom <= 24 {
                weight += 4;
            }
            if r.below(10) < weight {
                break;
            }
        }
        last_seen = last_seen.max(day);
        let promotion = r.chance(if promo_hunter { 0.8 } else { 0.1 });
        let cents = ((basket * (0.5 + r.unit() * 1.5)) * 100.0) as u64;
        let other = r.below(SPORTS.len() as u64) as usize;
        let (cat2, brand) = if r.chance(0.2) {
            (SPORTS[other], r.pick(BRANDS[other]))
        } else {
            (SPORTS[sport], r.pick(BRANDS[sport]))
        };
        let categories = if cat2 == SPORTS[sport] {
            cat2.to_string()
        } else {
            format!("{}|{cat2}", SPORTS[sport])
        };
        writeln!(
            orders,
            "O{seed}-{n}-{k},C{n:09},{},{}.{:02},{},{categories},{brand}",
            timestamp(day, r.below(86_400)),
            cents / 100,
            cents % 100,
            promotion,
        )?;
    }
    let last_visit = (last_seen + r.below(120) as i64).min(now);
    let account = r.skewed(5_000);
    let tags = if r.chance(0.4) {
        let second = SPORTS[r.below(SPORTS.len() as u64) as usize];
        if second == SPORTS[sport] {
            SPORTS[sport].to_string()
        } else {
            format!("{}|{second}", SPORTS[sport])
        }
    } else {
        String::new()
    };
    writeln!(
        out,
        "C{n:09},customer{n}.{seed}@example.com,{},{},{},{gender},{},{},{},{},{code},{code}-{region},{code}-city-{city},{code}{:05},store-{},{},{},{lang},{},{},{},{},{tags}",
        r.chance(0.9),
        timestamp(registered_days, r.below(86_400)),
        timestamp(last_visit, r.below(86_400)),
        date(birth),
        r.pick(MARITAL),
        1 + r.skewed(6),
        r.pick(INCOME),
        city * 100 + r.below(100),
        r.skewed(400),
        if b2b {
            format!("acct-{account}")
        } else {
            String::new()
        },
        if b2b {
            format!("Organization {account}")
        } else {
            String::new()
        },
        r.chance(0.6),
        r.chance(0.3),
        TIERS[r.skewed(TIERS.len() as u64) as usize],
        if vip { "true" } else { "" },
    )?;
    Ok(order_count)
}

/// Writes `customers.csv` and `orders.csv` for `count` customers into `dir`.
pub fn write(count: u64, seed: u64, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())))?;
    let create = |name: &str| -> Result<BufWriter<File>> {
        let path = dir.join(name);
        let f = File::create(&path)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", path.display())))?;
        Ok(BufWriter::with_capacity(1 << 20, f))
    };
    let (mut customers, mut orders) = (create("customers.csv")?, create("orders.csv")?);
    writeln!(customers, "{CUSTOMER_HEADER}")?;
    writeln!(orders, "{ORDER_HEADER}")?;
    let started = std::time::Instant::now();
    let mut order_total = 0;
    for n in 0..count {
        order_total += customer(seed, n, &mut customers, &mut orders)?;
    }
    customers.flush()?;
    orders.flush()?;
    eprintln!(
        "wrote {count} customers and {order_total} orders to {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seed: u64, n: u64) -> (String, String) {
        let (mut c, mut o) = (Vec::new(), Vec::new());
        for i in 0..n {
            customer(seed, i, &mut c, &mut o).unwrap();
        }
        (String::from_utf8(c).unwrap(), String::from_utf8(o).unwrap())
    }

    #[test]
    fn deterministic_per_seed() {
        assert_eq!(rows(7, 200), rows(7, 200));
        assert_ne!(rows(7, 200).0, rows(8, 200).0);
    }

    #[test]
    fn realistic_mixes() {
        let (customers, orders) = rows(1, 20_000);
        let fields = CUSTOMER_HEADER.split(',').count();
        let lines: Vec<Vec<&str>> = customers.lines().map(|l| l.split(',').collect()).collect();
        assert!(lines.iter().all(|l| l.len() == fields));
        let share = |f: &dyn Fn(&Vec<&str>) -> bool| {
            lines.iter().filter(|l| f(l)).count() as f64 / lines.len() as f64
        };
        let b2b = share(&|l| !l[15].is_empty());
        assert!((0.04..0.06).contains(&b2b), "{b2b}");
        let women = share(&|l| l[5] == "F");
        assert!((0.48..0.54).contains(&women), "{women}");
        let vip = share(&|l| l[21] == "true");
        assert!(vip < 0.003, "{vip}");
        // Many one-time buyers, some who never ordered, a heavy tail.
        let mut per_customer = std::collections::HashMap::<&str, usize>::new();
        for o in orders.lines() {
            *per_customer.entry(o.split(',').nth(1).unwrap()).or_default() += 1;
        }
        let once = per_customer.values().filter(|&&c| c == 1).count() as f64 / lines.len() as f64;
        assert!((0.25..0.35).contains(&once), "{once}");
        let never = 1.0 - per_customer.len() as f64 / lines.len() as f64;
        assert!((0.3..0.4).contains(&never), "{never}");
        assert!(per_customer.values().any(|&c| c >= 20));
    }
}
