//! Reading stored timestamps: SQLite's text form is parsed directly rather than through chrono's format parser.
//!
//! diesel reads a SQLite `Timestamp` by trying up to 18 `strftime` patterns with `NaiveDateTime::parse_from_str`,
//! about 2,600 instructions for each timestamp of each row (11% of an in-process GetUser, more of a page of a
//! list). Every timestamp this service writes has the one form diesel writes, `YYYY-MM-DD HH:MM:SS[.fraction]`;
//! that form is parsed here by position, and any other text (or a number) goes to diesel's own parser, so what a
//! stored value reads as never changes. PostgreSQL sends timestamps in binary and reads them as diesel does.
//!
//! Rows name these types with `#[diesel(deserialize_as = …)]`; the field itself stays a `NaiveDateTime`.

use std::convert::Infallible;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::Pg;
use diesel::sql_types::{Nullable, Timestamp};
use diesel::sqlite::Sqlite;

use super::connection::MultiBackend;

/// A non-null stored timestamp.
#[derive(Debug, Clone, Copy, FromSqlRow)]
pub struct StoredTime(NaiveDateTime);

/// A nullable stored timestamp.
#[derive(Debug, Clone, Copy, FromSqlRow)]
pub struct MaybeStoredTime(Option<NaiveDateTime>);

impl StoredTime {
    /// What a `Queryable` derive calls to build the row's field from the value read (its conversion is
    /// `value.try_into()?`, and an inherent method is found before the `TryInto` trait's).
    pub fn try_into(self) -> Result<NaiveDateTime, Infallible> {
        Ok(self.0)
    }
}

impl MaybeStoredTime {
    /// See [`StoredTime::try_into`].
    pub fn try_into(self) -> Result<Option<NaiveDateTime>, Infallible> {
        Ok(self.0)
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` with an optional fraction of 1 to 9 digits, as diesel writes a `NaiveDateTime`
/// to SQLite (`%F %T%.f`). `None` for any other text, including an out-of-range date or time and leap seconds,
/// which are left to diesel's parser.
pub fn parse_sqlite_text(text: &str) -> Option<NaiveDateTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b' '
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let year = digits(&bytes[0..4])?;
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    let hour = digits(&bytes[11..13])?;
    let minute = digits(&bytes[14..16])?;
    let second = digits(&bytes[17..19])?;
    let nanosecond = match &bytes[19..] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanosecond)?;
    Some(date.and_time(time))
}

/// The value of a run of ASCII digits (at most 9, so it fits), `None` if any byte is not one.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |value, &b| {
        b.is_ascii_digit().then(|| value * 10 + u32::from(b - b'0'))
    })
}

fn from_sqlite(mut value: <Sqlite as Backend>::RawValue<'_>) -> deserialize::Result<NaiveDateTime> {
    if let Some(time) = parse_sqlite_text(value.read_text()) {
        return Ok(time);
    }
    <NaiveDateTime as FromSql<Timestamp, Sqlite>>::from_sql(value)
}

fn from_pg(value: <Pg as Backend>::RawValue<'_>) -> deserialize::Result<NaiveDateTime> {
    <NaiveDateTime as FromSql<Timestamp, Pg>>::from_sql(value)
}

/// Through the multi-backend connection: the backend's own reading above.
fn from_multi(value: <MultiBackend as Backend>::RawValue<'_>) -> deserialize::Result<NaiveDateTime> {
    value.from_sql::<StoredTime, Timestamp>().map(|time| time.0)
}

/// Both types for each backend, from the function that reads a non-null value of it.
macro_rules! stored_time_from_sql {
    ($($backend:ty => $read:ident),* $(,)?) => {$(
        impl FromSql<Timestamp, $backend> for StoredTime {
            fn from_sql(value: <$backend as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                $read(value).map(StoredTime)
            }
        }

        impl FromSql<Nullable<Timestamp>, $backend> for MaybeStoredTime {
            fn from_sql(value: <$backend as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                $read(value).map(|time| MaybeStoredTime(Some(time)))
            }

            fn from_nullable_sql(value: Option<<$backend as Backend>::RawValue<'_>>) -> deserialize::Result<Self> {
                value.map_or(Ok(MaybeStoredTime(None)), |value| {
                    <Self as FromSql<Nullable<Timestamp>, $backend>>::from_sql(value)
                })
            }
        }
    )*};
}

stored_time_from_sql!(Sqlite => from_sqlite, Pg => from_pg, MultiBackend => from_multi);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What diesel's own SQLite parser makes of `text` (its first patterns are the only ones that can match the
    /// form parsed here).
    fn chrono_reads(text: &str) -> Option<NaiveDateTime> {
        ["%F %T%.f", "%F %T"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    }

    #[test]
    fn the_written_forms_read_back_exactly() {
        for text in [
            "2026-12-02 13:40:20",
            "2026-12-02 13:40:20.6",
            "2026-12-02 13:40:20.639",
            "2026-12-02 13:40:20.639319",
            "2026-12-02 13:40:20.639319123",
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59.999999999",
            "2024-02-29 00:00:00.000001",
        ] {
            assert_eq!(parse_sqlite_text(text), chrono_reads(text), "{text}");
            assert!(parse_sqlite_text(text).is_some(), "{text}");
        }
        let now = chrono::Utc::now().naive_utc();
        let written = now.format("%F %T%.f").to_string();
        assert_eq!(parse_sqlite_text(&written), Some(now));
    }

    #[test]
    fn other_text_is_left_to_diesel() {
        for text in [
            "",
            "2026-12-02",
            "2026-12-02T13:40:20",
            "2026-12-02 13:40:20Z",
            "2026-12-02 13:40:20+00:00",
            "2026-12-02 13:40:20.",
            "2026-12-02 13:40:20.1234567890",
            "2026-13-02 13:40:20",
            "2023-02-29 13:40:20",
            "2026-12-02 24:00:00",
            "2026-12-02 13:40:60",
            "+2026-12-02 13:40:20",
            "2026-12-0x 13:40:20",
            "2461011.5",
        ] {
            assert_eq!(parse_sqlite_text(text), None, "{text}");
        }
    }

    proptest! {
        /// Whatever this parser accepts, chrono reads the same way; whatever chrono reads in the written form at
        /// whole seconds or with a fraction, this parser accepts.
        #[test]
        fn agrees_with_chrono(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?",
            noise in "[0-9 :.T+Z-]{0,24}",
        ) {
            for candidate in [&text, &noise] {
                if let Some(parsed) = parse_sqlite_text(candidate) {
                    prop_assert_eq!(Some(parsed), chrono_reads(candidate));
                }
            }
            let fraction = text.split_once('.').map_or(0, |(_, f)| f.len());
            let second_ok = text[17..19].parse::<u32>().is_ok_and(|s| s < 60);
            if second_ok && fraction <= 9 && !text.ends_with('.') {
                prop_assert_eq!(parse_sqlite_text(&text), chrono_reads(&text));
            }
        }
    }
}
