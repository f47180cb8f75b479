//! RFC 3339 timestamps (Kubernetes `creationTimestamp`) as comparable instants, without a date
//! crate: route precedence only needs to order them.

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into (seconds since the Unix epoch, nanos).
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.trim().as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos: u32 = 0;
    if let Some((b'.', frac)) = rest.split_first() {
        let len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        for (i, &c) in frac[..len].iter().enumerate() {
            if i < 9 {
                nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
            }
        }
        rest = &frac[len..];
    }
    let offset_secs: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let minutes = digits(&[*h1, *h2])? * 60 + digits(&[*m1, *m2])?;
            let secs = minutes * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3_600 + minute * 60 + second - offset_secs, nanos))
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_and_offset_forms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse_rfc3339("2024-03-01T12:00:00Z"), Some((1_709_294_400, 0)));
        assert_eq!(parse_rfc3339("2024-03-01T13:00:00+01:00"), Some((1_709_294_400, 0)));
        assert_eq!(
            parse_rfc3339("2024-03-01T12:00:00.5Z"),
            Some((1_709_294_400, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2024-03-01T12:00:00.1234567891Z"),
            Some((1_709_294_400, 123_456_789))
        );
        assert!(parse_rfc3339("2023-12-31T23:59:59Z") < parse_rfc3339("2024-01-01T00:00:00Z"));
    }

    #[test]
    fn every_field_counts_in_the_instant() {
        // Expected values from Python's datetime (an independent RFC 3339 implementation).
        assert_eq!(parse_rfc3339("2024-03-01T12:34:56Z"), Some((1_709_296_496, 0)));
        assert_eq!(parse_rfc3339("2024-03-01T12:34:56+05:30"), Some((1_709_276_696, 0)));
        assert_eq!(parse_rfc3339("2024-03-01T12:34:56-01:00"), Some((1_709_300_096, 0)));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some((951_782_400, 0)));
        // `t` or a space may separate date and time; the upper bounds are inclusive (a leap
        // second is :60).
        assert_eq!(parse_rfc3339("2024-03-01t12:34:56z"), Some((1_709_296_496, 0)));
        assert_eq!(parse_rfc3339("2024-03-01 12:34:56Z"), Some((1_709_296_496, 0)));
        assert_eq!(parse_rfc3339("2024-12-31T23:59:60Z"), Some((1_735_689_600, 0)));
    }

    #[test]
    fn each_separator_and_range_is_checked_on_its_own() {
        for s in [
            "2024/03-01T12:34:56Z",
            "2024-03/01T12:34:56Z",
            "2024-03-01X12:34:56Z",
            "2024-03-01T12-34:56Z",
            "2024-03-01T12:34-56Z",
            "2024-00-01T12:34:56Z",
            "2024-03-00T12:34:56Z",
            "2024-03-32T12:34:56Z",
            "2024-03-01T24:34:56Z",
            "2024-03-01T12:60:56Z",
            "2024-03-01T12:34:61Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for s in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "２０２４-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }
}
