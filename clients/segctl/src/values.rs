//! Errors in plain words, and attribute values between text and protobuf.

use std::fmt;

use crate::pb::{self, value::Kind};

/// A failure to report to the user: one line, no debug dump, and the exit code it ends segctl
/// with ([`EXIT_ERROR`], or [`EXIT_PARTLY`] when something was not found or only part of a load
/// was applied).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit: u8,
}

/// Exit codes: 0 done, 1 an error, 2 a usage error (clap's), 3 partly applied or not found.
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_PARTLY: u8 = 3;

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit: EXIT_ERROR,
        }
    }

    /// Ends segctl with [`EXIT_PARTLY`].
    pub fn partly(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit: EXIT_PARTLY,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub type Result<T, E = Failure> = std::result::Result<T, E>;

pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Failure::new(msg.into()))
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let what = match s.code() {
            Code::InvalidArgument => "invalid request",
            Code::NotFound => "not found",
            Code::AlreadyExists => "already exists",
            Code::FailedPrecondition => "refused",
            Code::Unavailable => "server unavailable",
            Code::Unauthenticated => "not authenticated",
            Code::PermissionDenied => "permission denied",
            Code::ResourceExhausted => "server busy or over a limit",
            Code::DeadlineExceeded => "timed out",
            Code::OutOfRange => "out of range",
            _ => "server error",
        };
        // A transport failure's status says little ("http2 error"); its causes say what.
        let mut said = vec![s.message().to_string()];
        let mut source = std::error::Error::source(&s);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !said.contains(&text) {
                said.push(text);
            }
            source = cause.source();
        }
        let said = said.join(": ");
        // "not found: customer `x` not found" says it twice: the server's words suffice.
        let message = if said.to_lowercase().contains(what) {
            said
        } else {
            format!("{what}: {said}")
        };
        // Not found, or a load stopped after some batches were applied: partly done.
        use tonic_types::StatusExt;
        let partly = s.code() == Code::NotFound
            || s.get_error_details()
                .error_info()
                .is_some_and(|i| i.reason == "PARTIALLY_APPLIED");
        if partly {
            Failure::partly(message)
        } else {
            Failure::new(message)
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader of segctl's output closed the pipe: it has what it wanted.
            return Failure {
                message: String::new(),
                exit: 0,
            };
        }
        Failure::new(e.to_string())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        match e.io_error_kind() {
            Some(kind) => std::io::Error::from(kind).into(),
            None => Failure::new(e.to_string()),
        }
    }
}

impl From<csv::Error> for Failure {
    fn from(e: csv::Error) -> Self {
        if let csv::ErrorKind::Io(io) = e.kind()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return std::io::Error::from(std::io::ErrorKind::BrokenPipe).into();
        }
        Failure::new(e.to_string())
    }
}

/// An attribute type, as `Admin.GetSchema` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Bool,
    Int,
    Float,
    Money,
    Date,
    Timestamp,
    Keyword,
    Keywords,
    Text,
}

impl Ty {
    pub fn from_pb(t: i32) -> Option<Ty> {
        use pb::AttributeType as T;
        Some(match T::try_from(t).ok()? {
            T::Bool => Ty::Bool,
            T::Int => Ty::Int,
            T::Float => Ty::Float,
            T::Money => Ty::Money,
            T::Date => Ty::Date,
            T::Timestamp => Ty::Timestamp,
            T::Keyword => Ty::Keyword,
            T::Keywords => Ty::Keywords,
            T::Text => Ty::Text,
            T::Unspecified => return None,
        })
    }
}

fn value(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

/// A text cell as a value of type `ty`.
pub fn parse_cell(ty: Ty, cell: &str) -> Result<pb::Value, String> {
    let cell = trimmed(cell);
    Ok(match ty {
        Ty::Bool => value(Kind::BoolValue(parse_bool(cell)?)),
        Ty::Int => value(Kind::IntValue(
            cell.parse()
                .map_err(|_| format!("`{cell}` is not a whole number"))?,
        )),
        Ty::Float => value(Kind::DoubleValue(
            cell.parse().map_err(|_| format!("`{cell}` is not a number"))?,
        )),
        Ty::Money => value(Kind::IntValue(parse_money(cell)?)),
        Ty::Date => value(Kind::DateValue(parse_date(cell)?)),
        Ty::Timestamp => value(Kind::TimestampValue(parse_timestamp(cell)?)),
        Ty::Keyword | Ty::Text => value(Kind::StringValue(cell.to_string())),
        Ty::Keywords => value(Kind::ListValue(pb::StringList {
            values: cell
                .split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        })),
    })
}

/// A JSON value as a value of type `ty` (strings are parsed as cells).
pub fn parse_json(ty: Ty, v: &serde_json::Value) -> Result<Option<pb::Value>, String> {
    use serde_json::Value as J;
    Ok(Some(match (ty, v) {
        (_, J::Null) => return Ok(None),
        (_, J::String(s)) => parse_cell(ty, s)?,
        (Ty::Bool, J::Bool(b)) => value(Kind::BoolValue(*b)),
        (Ty::Int, J::Number(n)) => value(Kind::IntValue(
            n.as_i64().ok_or_else(|| format!("{n} is not a whole number"))?,
        )),
        (Ty::Float, J::Number(n)) => value(Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN))),
        (Ty::Money, J::Number(n)) => value(Kind::IntValue(parse_money(&n.to_string())?)),
        (Ty::Keywords, J::Array(items)) => value(Kind::ListValue(pb::StringList {
            values: items
                .iter()
                .map(|i| match i {
                    J::String(s) => Ok(s.clone()),
                    other => Err(format!("list items must be strings, got {other}")),
                })
                .collect::<Result<_, _>>()?,
        })),
        (_, other) => return Err(format!("{other} does not fit this attribute's type")),
    }))
}

pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" => return Ok(true),
        "false" => return Ok(false),
        _ => {}
    }
    let is = |words: [&str; 4]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
    if is(["true", "yes", "y", "1"]) {
        Ok(true)
    } else if is(["false", "no", "n", "0"]) {
        Ok(false)
    } else {
        Err(format!("`{s}` is not true/false"))
    }
}

/// The number `b` spells in ASCII digits (at most 9 of them), if that is all it holds.
fn digits(b: &[u8]) -> Option<i32> {
    debug_assert!(b.len() <= 9);
    b.iter().try_fold(0i32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i32::from(c - b'0'))
    })
}

/// Major units with at most two decimals (`12.5`, `-3`, `1000.00`) as minor units.
pub fn parse_money(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not an amount (major units, at most 2 decimals)");
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || frac.len() > 2 || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let cents: i64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let v = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(bad)?;
    Ok(if neg { -v } else { v })
}

/// Minor units in major units with two decimals (`1250` → `12.50`, `-7` → `-0.07`): the
/// inverse of [`parse_money`].
pub fn format_money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

pub fn parse_date(s: &str) -> Result<pb::Date, String> {
    // The usual form, read byte by byte: what the general reading below gives it.
    if let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = *s.as_bytes()
        && let (Some(year), Some(month), Some(day)) =
            (digits(&[y0, y1, y2, y3]), digits(&[m0, m1]), digits(&[d0, d1]))
    {
        return Ok(pb::Date { year, month, day });
    }
    any_date(s)
}

/// [`parse_date`] of any form it takes.
fn any_date(s: &str) -> Result<pb::Date, String> {
    let bad = || format!("`{s}` is not a date (YYYY-MM-DD)");
    let mut parts = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(pb::Date {
        year: y.parse().map_err(|_| bad())?,
        month: m.parse().map_err(|_| bad())?,
        day: d.parse().map_err(|_| bad())?,
    })
}

/// RFC 3339 (`2024-05-01T10:00:00Z`, offsets and fractions allowed) or a date (midnight UTC).
pub fn parse_timestamp(s: &str) -> Result<prost_types::Timestamp, String> {
    timestamp(s, true)
}

/// [`parse_timestamp`], its usual form read byte by byte when `quick`.
fn timestamp(s: &str, quick: bool) -> Result<prost_types::Timestamp, String> {
    let bad = || format!("`{s}` is not a timestamp (RFC 3339, e.g. 2024-05-01T10:00:00Z)");
    let date = s.get(..10).ok_or_else(bad)?;
    let date = if quick { parse_date(date) } else { any_date(date) }.map_err(|_| bad())?;
    let days = days_from_civil(date.year, date.month, date.day).ok_or_else(|| invalid_date(&date))?;
    let mut seconds = days * 86_400;
    let mut nanos = 0i32;
    let rest = &s[10..];
    // The usual form (`T10:00:00Z`), read byte by byte: what the general reading below gives it.
    if quick
        && let [
            b'T' | b't' | b' ',
            h0,
            h1,
            b':',
            m0,
            m1,
            b':',
            s0,
            s1,
            b'Z' | b'z',
        ] = *rest.as_bytes()
        && let (Some(h), Some(m), Some(sec)) = (digits(&[h0, h1]), digits(&[m0, m1]), digits(&[s0, s1]))
    {
        if h >= 24 || m >= 60 || sec >= 61 {
            return Err(bad());
        }
        seconds += i64::from(h * 3600 + m * 60 + sec);
        return Ok(prost_types::Timestamp { seconds, nanos });
    }
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
        let zone_at = rest.find(['Z', 'z', '+', '-']).ok_or_else(bad)?;
        let (clock, zone) = rest.split_at(zone_at);
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
        let hms: Vec<i64> = hms
            .split(':')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [h, m, sec] = hms[..] else { return Err(bad()) };
        if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..61).contains(&sec) {
            return Err(bad());
        }
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !frac.is_empty() {
            nanos = format!("{frac:0<9}").parse().map_err(|_| bad())?;
        }
        let offset = match zone {
            "Z" | "z" => 0,
            z => {
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let (oh, om) = z[1..].split_once(':').ok_or_else(bad)?;
                let oh: i64 = oh.parse().map_err(|_| bad())?;
                let om: i64 = om.parse().map_err(|_| bad())?;
                sign * (oh * 3600 + om * 60)
            }
        };
        seconds += h * 3600 + m * 60 + sec - offset;
    }
    Ok(prost_types::Timestamp { seconds, nanos })
}

/// Days since 1970-01-01 of a proleptic Gregorian date, if valid.
pub fn days_from_civil(y: i32, m: i32, d: i32) -> Option<i64> {
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let y = i64::from(if m <= 2 { y - 1 } else { y });
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// "invalid date 2025-02-30: month 2 of 2025 has 28 days", as the server words it.
pub fn invalid_date(d: &pb::Date) -> String {
    let why = if !(1..=9999).contains(&d.year) {
        "years run from 1 to 9999".to_string()
    } else if !(1..=12).contains(&d.month) {
        format!("there is no month {}", d.month)
    } else {
        format!(
            "month {} of {} has {} days",
            d.month,
            d.year,
            days_in_month(d.year, d.month)
        )
    };
    format!("invalid date {:04}-{:02}-{:02}: {why}", d.year, d.month, d.day)
}

/// "1 bad row", "2 bad rows".
pub fn bad_rows(n: u64) -> String {
    format!("{n} bad row{}", if n == 1 { "" } else { "s" })
}

fn days_in_month(y: i32, m: i32) -> i32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// (year, month, day) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 in UTC, seconds precision unless there are nanos.
pub fn format_timestamp(t: &prost_types::Timestamp) -> String {
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if t.nanos == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        let frac = format!("{:09}", t.nanos);
        format!(
            "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{}Z",
            frac.trim_end_matches('0')
        )
    }
}

/// A value in the text form of CSV cells (the inverse of [`parse_cell`] but for money, which
/// this leaves in minor units: see [`cell`] for money in major units).
pub fn format_value(v: &pb::Value) -> String {
    match &v.kind {
        None => String::new(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::IntValue(i)) => i.to_string(),
        Some(Kind::DoubleValue(f)) => f.to_string(),
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::DateValue(d)) => format!("{:04}-{:02}-{:02}", d.year, d.month, d.day),
        Some(Kind::TimestampValue(t)) => format_timestamp(t),
        Some(Kind::ListValue(l)) => l.values.join("|"),
    }
}

/// A value of an attribute typed `ty` as a cell of segctl's output: money in major units, as
/// load files and rules write it.
pub fn cell(v: &pb::Value, ty: Option<Ty>) -> crate::output::Cell {
    use crate::output::Cell;
    match (&v.kind, ty) {
        (None, _) => Cell::Null,
        (Some(Kind::IntValue(i)), Some(Ty::Money)) => Cell::Money(*i),
        (Some(Kind::BoolValue(b)), _) => Cell::Bool(*b),
        (Some(Kind::IntValue(i)), _) => Cell::Int(*i),
        (Some(Kind::DoubleValue(f)), _) => Cell::Float(*f),
        (Some(Kind::ListValue(l)), _) => Cell::List(l.values.clone()),
        (Some(_), _) => Cell::Text(format_value(v)),
    }
}

/// `s` without leading and trailing whitespace, as `str::trim`; most cells have none, and their
/// first and last bytes say so without decoding characters.
pub fn trimmed(s: &str) -> &str {
    let solid = |b: Option<&u8>| b.is_some_and(|&b| b.is_ascii() && !b.is_ascii_whitespace());
    if solid(s.as_bytes().first()) && solid(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual forms read byte by byte give what the general reading gives, for good and bad
    /// input alike.
    #[test]
    fn quick_dates_and_timestamps_read_as_the_general_reading_does() {
        let mut cells: Vec<String> = [
            "2024-05-01",
            "1999-12-31",
            "0001-01-01",
            "9999-12-31",
            "2024-02-30",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "2024-01-1",
            "2024/01/01",
            "20a4-01-01",
            "+024-01-01",
            "2024-+1-01",
            "2024-01-+1",
            " 2024-01-01",
            "2024-01-01x",
            "2024-05-01T10:00:00Z",
            "2024-05-01t23:59:60z",
            "2024-05-01 00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T10:60:00Z",
            "2024-05-01T10:00:61Z",
            "2024-05-01T1:00:00Z",
            "2024-05-01T10:00:00+02:00",
            "2024-05-01T10:00:00.5Z",
            "2024-05-01T10:0a:00Z",
            "2024-05-01X10:00:00Z",
            "2024-05-01T10:00:00",
            "2024-05-01T+1:00:00Z",
            "",
        ]
        .map(String::from)
        .to_vec();
        let mut x = 1u64;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let n = |m: u64, shift: u32| (x >> shift) % m;
            cells.push(format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                n(10_000, 3),
                n(14, 17),
                n(33, 23),
                n(26, 31),
                n(62, 37),
                n(63, 43)
            ));
        }
        for cell in &cells {
            assert_eq!(parse_date(cell), any_date(cell), "{cell}");
            assert_eq!(parse_timestamp(cell), timestamp(cell, false), "{cell}");
        }
    }

    #[test]
    fn booleans_in_any_case() {
        for (cell, want) in [
            ("TRUE", true),
            ("Yes", true),
            ("y", true),
            ("1", true),
            ("fAlse", false),
            ("N", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool(cell), Ok(want), "{cell}");
        }
        for cell in ["", "t", "2", "truee", "oui"] {
            assert!(parse_bool(cell).is_err(), "{cell}");
        }
    }

    #[test]
    fn trimmed_trims_as_str_trim_does() {
        for s in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "\ta\n",
            "2025-01-01",
            "\u{a0}x\u{a0}",
            "é",
            " é ",
            "x\u{2003}",
        ] {
            assert_eq!(trimmed(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn money_in_major_units() {
        assert_eq!(parse_money("12.5"), Ok(1250));
        assert_eq!(parse_money("1000"), Ok(100_000));
        assert_eq!(parse_money("-0.07"), Ok(-7));
        assert!(parse_money("1.234").is_err());
        assert!(parse_money("abc").is_err());
        assert!(parse_money("").is_err());
        for minor in [0, 7, -7, 1250, -1250, 100_000, i64::MIN + 1, i64::MAX] {
            assert_eq!(parse_money(&format_money(minor)), Ok(minor), "{minor}");
        }
        assert_eq!(format_money(-7), "-0.07");
        assert_eq!(format_money(1250), "12.50");
    }

    #[test]
    fn impossible_dates_say_why() {
        assert_eq!(
            parse_timestamp("2025-02-30").unwrap_err(),
            "invalid date 2025-02-30: month 2 of 2025 has 28 days"
        );
        assert_eq!(
            parse_timestamp("2025-13-01T00:00:00Z").unwrap_err(),
            "invalid date 2025-13-01: there is no month 13"
        );
        assert_eq!(bad_rows(1), "1 bad row");
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2024-02-29T23:59:58.25+01:00").unwrap();
        assert_eq!(format_timestamp(&t), "2024-02-29T22:59:58.25Z");
        let midnight = parse_timestamp("1969-12-31").unwrap();
        assert_eq!(midnight.seconds, -86_400);
        assert!(parse_timestamp("2024-13-01").is_err());
        assert!(parse_timestamp("2024-01-01T25:00:00Z").is_err());
        for days in [-800_000i64, -1, 0, 19_000, 2_900_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y as i32, m as i32, d as i32), Some(days));
        }
    }

    #[test]
    fn cells_by_type() {
        assert_eq!(
            parse_cell(Ty::Bool, "Yes").unwrap().kind,
            Some(Kind::BoolValue(true))
        );
        let list = parse_cell(Ty::Keywords, "golf| ski||").unwrap();
        assert_eq!(format_value(&list), "golf|ski");
        assert!(parse_cell(Ty::Int, "4.5").is_err());
        assert!(parse_cell(Ty::Date, "2024/01/01").is_err());
    }
}
