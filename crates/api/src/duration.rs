//! Durations written the way Kubernetes and Knative users write them: Go's `time.ParseDuration`
//! syntax (`12s`, `0.5ms`, `1h30m`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses a Go-style duration: a sequence of decimal numbers, each with a unit
/// (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`). `0` alone is allowed. Negative durations are rejected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("{text:?} is not a duration: expected a number at {rest:?}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration: bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!("{text:?} is missing a unit (ns, us, ms, s, m or h), e.g. \"{text}ms\""));
            }
            other => return Err(format!("{text:?} has unknown unit {other:?}; use ns, us, ms, s, m or h")),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats like Go's `Duration.String()` for the common cases: `1h2m3s`, `12s`, `1.5s`, `500ms`,
/// `250µs`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_micros(1) {
        return format!("{}ns", d.as_nanos());
    }
    if d < Duration::from_millis(1) {
        return format!("{}µs", trim_float(d.as_secs_f64() * 1e6));
    }
    if d < Duration::from_secs(1) {
        return format!("{}ms", trim_float(d.as_secs_f64() * 1e3));
    }
    let secs = d.as_secs_f64();
    let hours = (secs / 3600.0).floor();
    let minutes = ((secs - hours * 3600.0) / 60.0).floor();
    let rest = secs - hours * 3600.0 - minutes * 60.0;
    let mut out = String::new();
    if hours > 0.0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0.0 || minutes > 0.0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", trim_float(rest)));
    out
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A duration that (de)serializes as a Go-style string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct GoDuration(pub Duration);

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, like \"50ms\" or \"12s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_duration(v).map(GoDuration).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<GoDuration, E> {
                if v == 0 {
                    Ok(GoDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!("{v} is missing a unit (ns, us, ms, s, m or h), e.g. \"{v}ms\"")))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<GoDuration, E> {
                if v < 0 { Err(E::custom(format!("{v} is negative"))) } else { self.visit_u64(v as u64) }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<GoDuration, E> {
                Err(E::custom(format!("{v} is missing a unit (ns, us, ms, s, m or h), e.g. \"{v}ms\"")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("50ms"), Ok(ms(50)));
        assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("12s"), Ok(Duration::from_secs(12)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m0.5s"), Ok(ms(60_500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn rejects_what_go_rejects_and_negatives() {
        for bad in ["", "12", "5 s", "s", "1d", "-1s", "1.2.3s", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("12").unwrap_err().contains("missing a unit"));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_micros(500)), "500µs");
        assert_eq!(format_duration(Duration::from_secs(12)), "12s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format_duration(Duration::from_secs(61)), "1m1s");
        for d in ["50ms", "0.5ms", "12s", "1h30m0s", "1.5s"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed, "{d}");
        }
    }
}
