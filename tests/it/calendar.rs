//! A calendar of the tests' own, counted month by month, so that the models' ages, birthdays and
//! days do not come from the implementation's date arithmetic.

/// Days the model's calendar gives to `month` of `year`.
pub fn month_days(year: i32, month: u32) -> i32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a civil date, counted month by month: a calendar of the test's own,
/// not the implementation's.
pub fn days(year: i32, month: u32, day: i32) -> i32 {
    let mut n = 0;
    for y in year.min(1970)..year.max(1970) {
        let len: i32 = (1..=12).map(|m| month_days(y, m)).sum();
        n += if year < 1970 { -len } else { len };
    }
    n + (1..month).map(|m| month_days(year, m)).sum::<i32>() + day - 1
}

/// A civil date (year, month, day): a birth date's form from which the models read ages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Birth(pub i32, pub u32, pub i32);

/// The civil date `d` days from 1970-01-01, walked year by year and month by month.
pub fn civil(mut d: i32) -> Birth {
    let year_days = |y: i32| (1..=12).map(|m| month_days(y, m)).sum::<i32>();
    let mut y = 1970;
    while d < 0 {
        y -= 1;
        d += year_days(y);
    }
    while d >= year_days(y) {
        d -= year_days(y);
        y += 1;
    }
    let mut m = 1;
    while d >= month_days(y, m) {
        d -= month_days(y, m);
        m += 1;
    }
    Birth(y, m, d + 1)
}

/// Age in whole years on `today`: the birthday this year has come unless today's (month, day)
/// is earlier than the birth's; a leap-day birthday comes on March 1 in other years.
pub fn age(b: Birth, today: (i32, u32, i32)) -> i64 {
    let (ty, tm, td) = today;
    let before = (tm, td) < (b.1, b.2);
    i64::from(ty - b.0) - i64::from(before)
}

/// Days from `today` to the next birthday of someone born on `b` (0 on the day): this year's
/// if it has not passed, else next year's; a leap-day birthday is March 1 in other years.
pub fn days_to_birthday(b: Birth, today: i32) -> i32 {
    let Birth(y, _, _) = civil(today);
    let on = |year: i32| {
        if (b.1, b.2) == (2, 29) && month_days(year, 2) == 28 {
            days(year, 3, 1)
        } else {
            days(year, b.1, b.2)
        }
    };
    if on(y) >= today {
        on(y) - today
    } else {
        on(y + 1) - today
    }
}

#[test]
fn the_calendar_counts_days_ages_and_birthdays() {
    assert_eq!(days(1970, 1, 1), 0);
    assert_eq!(days(2000, 3, 1), 11_017);
    assert_eq!(days(1969, 12, 31), -1);
    assert_eq!(days(2024, 2, 29), 19_782);
    for d in [-3_653, -1, 0, 59, 11_016, 19_782, 20_089] {
        let Birth(y, m, day) = civil(d);
        assert_eq!(days(y, m, day), d);
    }
    assert_eq!(age(Birth(2000, 2, 29), (2023, 2, 28)), 22);
    assert_eq!(age(Birth(2000, 2, 29), (2023, 3, 1)), 23);
    assert_eq!(age(Birth(2000, 2, 29), (2024, 2, 29)), 24);
    assert_eq!(age(Birth(1990, 12, 31), (2024, 12, 30)), 33);
    assert_eq!(age(Birth(1990, 12, 31), (2024, 12, 31)), 34);
    let d = |y, m, day| days(y, m, day);
    assert_eq!(days_to_birthday(Birth(2000, 2, 29), d(2023, 2, 28)), 1);
    assert_eq!(days_to_birthday(Birth(2000, 2, 29), d(2024, 2, 28)), 1);
    assert_eq!(days_to_birthday(Birth(2000, 2, 29), d(2024, 2, 29)), 0);
    assert_eq!(days_to_birthday(Birth(2000, 2, 29), d(2024, 3, 1)), 365);
    assert_eq!(days_to_birthday(Birth(1990, 1, 1), d(2024, 12, 31)), 1);
    assert_eq!(days_to_birthday(Birth(1990, 6, 15), d(2024, 6, 15)), 0);
}
