//! Civil-calendar arithmetic for `date` (days since 1970-01-01) and `timestamp`
//! (microseconds since the Unix epoch, UTC) values, without a calendar dependency.

/// Microseconds in one day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Smallest and largest supported year: the range a `Date` message may carry.
pub const MIN_YEAR: i32 = 1;
pub const MAX_YEAR: i32 = 9999;

/// Why `year-month-day` is not a date (for a date [`days_from_civil`] refuses): the message
/// after "invalid date ...".
pub fn no_such_date(year: i32, month: i32, day: i32) -> String {
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return format!("years run from {MIN_YEAR} to {MAX_YEAR}");
    }
    if !(1..=12).contains(&month) {
        return format!("there is no month {month}");
    }
    let days = (28..=31)
        .rev()
        .find(|&d| days_from_civil(year, month, d).is_some())
        .unwrap_or(28);
    if day < 1 || day > days {
        format!("month {month} of {year} has {days} days")
    } else {
        "not a date".to_string()
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date, or `None` when the date does not exist.
pub fn days_from_civil(year: i32, month: i32, day: i32) -> Option<i32> {
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) || !(1..=12).contains(&month) {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // Howard Hinnant's algorithm, shifted so that March is the first month of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The (year, month, day) of a day number produced by [`days_from_civil`].
pub fn civil_from_days(days: i32) -> (i32, i32, i32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i32::from(month <= 2);
    (year, month, day)
}

/// Whether `year` is a leap year in the Gregorian calendar.
pub fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1..=12) of `year`.
pub fn days_in_month(year: i32, month: i32) -> i32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Bounds of a valid timestamp in microseconds: years 1 to 9999, as RFC 3339 allows.
pub const MIN_TIMESTAMP_MICROS: i64 = -62_135_596_800_000_000;
pub const MAX_TIMESTAMP_MICROS: i64 = 253_402_300_799_999_999;

/// Microseconds since the epoch of `seconds` and `nanos`, or `None` outside years 1 to 9999.
pub fn micros_from_parts(seconds: i64, nanos: i32) -> Option<i64> {
    if !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    let micros = seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(nanos) / 1000)?;
    (MIN_TIMESTAMP_MICROS..=MAX_TIMESTAMP_MICROS)
        .contains(&micros)
        .then_some(micros)
}

/// Splits microseconds since the epoch into (seconds, nanos) with nanos in 0..1e9.
pub fn parts_from_micros(micros: i64) -> (i64, i32) {
    let seconds = micros.div_euclid(1_000_000);
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as i32;
    (seconds, nanos)
}

/// The current time in microseconds since the epoch.
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(1969, 12, 31), Some(-1));
        assert_eq!(days_from_civil(2023, 2, 29), None);
        assert_eq!(
            days_from_civil(2024, 2, 29).map(civil_from_days),
            Some((2024, 2, 29))
        );
        for d in (-719_162..2_932_896).step_by(997) {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), Some(d));
        }
    }

    #[test]
    fn timestamp_bounds() {
        assert_eq!(micros_from_parts(1, 999_999_999), Some(1_999_999));
        assert_eq!(micros_from_parts(0, -1), None);
        assert_eq!(micros_from_parts(i64::MAX, 0), None);
        assert_eq!(parts_from_micros(-1), (-1, 999_999_000));
    }
}

/// The source of "now" for relative-time rules, replaceable in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the epoch.
    fn now_micros(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        now_micros()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(micros: i64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(micros))
    }

    pub fn set(&self, micros: i64) {
        self.0.store(micros, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn advance(&self, micros: i64) {
        self.0.fetch_add(micros, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
