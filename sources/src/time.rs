//! Timestamps found in logs, as Unix milliseconds UTC. Logs without a zone
//! (syslog, fail2ban) are read as UTC, the Ubuntu server default; see
//! docs/events.md.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

fn month(s: &str) -> Option<Month> {
    Some(match s {
        "Jan" => Month::January,
        "Feb" => Month::February,
        "Mar" => Month::March,
        "Apr" => Month::April,
        "May" => Month::May,
        "Jun" => Month::June,
        "Jul" => Month::July,
        "Aug" => Month::August,
        "Sep" => Month::September,
        "Oct" => Month::October,
        "Nov" => Month::November,
        "Dec" => Month::December,
        _ => return None,
    })
}

fn hms(s: &str) -> Option<(u8, u8, u8, u16)> {
    let (main, frac) = match s.split_once([',', '.']) {
        Some((m, f)) => (m, f),
        None => (s, "0"),
    };
    let mut it = main.split(':');
    let h = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let sec = it.next()?.parse().ok()?;
    let ms_digits: String = frac.chars().take(3).collect();
    let ms = format!("{ms_digits:0<3}").parse().ok()?;
    Some((h, m, sec, ms))
}

fn to_ms(d: Date, (h, m, s, ms): (u8, u8, u8, u16)) -> Option<i64> {
    let t = Time::from_hms_milli(h, m, s, ms).ok()?;
    let dt = PrimitiveDateTime::new(d, t).assume_offset(UtcOffset::UTC);
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `Feb 25 14:34:10` (syslog, no year): the year that puts it nearest to
/// `read_ms`, so December lines read in January land in the old year.
pub fn syslog(month_s: &str, day: &str, clock: &str, read_ms: i64) -> Option<i64> {
    let mo = month(month_s)?;
    let day: u8 = day.parse().ok()?;
    let c = hms(clock)?;
    let read_year = OffsetDateTime::from_unix_timestamp(read_ms / 1000)
        .ok()?
        .year();
    (read_year - 1..=read_year + 1)
        .filter_map(|y| to_ms(Date::from_calendar_date(y, mo, day).ok()?, c))
        .min_by_key(|t| (t - read_ms).abs())
}

/// `2026-11-23 02:04:27,491` (fail2ban) or `2017 Nov 11 00:00:01` (OSSEC).
pub fn ymd(date: &str, clock: &str) -> Option<i64> {
    let mut p = date.split('-');
    let y = p.next()?.parse().ok()?;
    let m = Month::try_from(p.next()?.parse::<u8>().ok()?).ok()?;
    let d = p.next()?.parse().ok()?;
    to_ms(Date::from_calendar_date(y, m, d).ok()?, hms(clock)?)
}

pub fn y_mon_d(year: &str, mon: &str, day: &str, clock: &str) -> Option<i64> {
    let d = Date::from_calendar_date(year.parse().ok()?, month(mon)?, day.parse().ok()?).ok()?;
    to_ms(d, hms(clock)?)
}

/// RFC 3339 and the variants Suricata and Wazuh write
/// (`2016-09-30T23:11:58.939187+0200`, `2022-05-11T12:29:19.905+0000`).
pub fn rfc3339ish(s: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    }
    // +hhmm without a colon.
    let (main, sign, off) = match s.rfind(['+', '-']) {
        Some(i) if i > 10 => (&s[..i], &s[i..i + 1], &s[i + 1..]),
        _ => return None,
    };
    if off.len() != 4 || !off.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fixed = format!("{main}{sign}{}:{}", &off[..2], &off[2..]);
    let t = OffsetDateTime::parse(&fixed, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEC_31_2024: i64 = 1_735_603_200_000; // 2024-12-31T00:00:00Z
    const JAN_1_2025: i64 = 1_735_689_600_000;

    #[test]
    fn syslog_year_is_the_nearest_one() {
        // Read on New Year's Day: a Dec 31 line is from last year.
        let t = syslog("Dec", "31", "23:59:00", JAN_1_2025 + 60_000).unwrap();
        assert_eq!(t, DEC_31_2024 + 86_340_000);
        // Read on Dec 31: a Jan 1 line (clock skew) is next year's.
        let t = syslog("Jan", " 1".trim(), "00:00:05", DEC_31_2024 + 86_399_000).unwrap();
        assert_eq!(t, JAN_1_2025 + 5_000);
        assert!(syslog("Foo", "1", "00:00:00", 0).is_none());
        assert!(syslog("Feb", "30", "00:00:00", JAN_1_2025).is_none());
    }

    #[test]
    fn other_forms() {
        assert_eq!(ymd("2024-12-16", "18:00:15,123"), Some(1_734_372_015_123));
        assert_eq!(
            y_mon_d("2024", "Dec", "16", "18:00:15"),
            Some(1_734_372_015_000)
        );
        assert_eq!(
            rfc3339ish("2024-12-16T20:00:15.123+0200"),
            Some(1_734_372_015_123)
        );
        assert_eq!(
            rfc3339ish("2024-12-16T18:00:15.123456Z"),
            Some(1_734_372_015_123)
        );
        assert_eq!(rfc3339ish("garbage"), None);
        assert_eq!(ymd("2024-13-01", "00:00:00"), None);
    }
}
