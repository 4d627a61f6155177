//! Durations as written in the config: `250us`, `500ms`, `2s`, `5m`, `1h`,
//! `1d`, and sums of them such as `1h30m`.

use std::time::Duration;

/// Parses a duration with units (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, `d`),
/// possibly compound (`1h30m`). A bare number is refused: `30` could mean
/// seconds or milliseconds, and guessing wrong is a silent misconfiguration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty duration; use a unit, e.g. 2s".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` has no unit; use a unit, e.g. 2s"));
    }
    if text.contains('.') {
        return Err(format!(
            "`{text}`: fractions are not supported; use a smaller unit, e.g. 1500ms"
        ));
    }
    let invalid = || format!("`{text}` is not a duration; expected e.g. 500ms, 2s or 1h30m");
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            "" => {
                return Err(format!(
                    "`{text}`: `{number}` has no unit; use a unit, e.g. 2s"
                ))
            }
            _ => {
                return Err(format!(
                    "`{text}`: unknown unit `{unit}`; use ns, us, ms, s, m, h or d"
                ))
            }
        };
        // More than 39 digits overflow u128 anyway; the sum check below
        // catches everything that fits here but not in a Duration.
        let n: u128 = number
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        total = n
            .checked_mul(nanos_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{text}` is too large"))?;
        rest = after;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("`{text}` is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_compounds() {
        let cases = [
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("0s", Duration::ZERO),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("24h", Duration::from_secs(86_400)),
            ("1d", Duration::from_secs(86_400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m30s500ms", Duration::from_millis(90_500)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors() {
        let cases = [
            ("", "empty duration; use a unit, e.g. 2s"),
            ("2", "`2` has no unit; use a unit, e.g. 2s"),
            ("1h30", "`1h30`: `30` has no unit; use a unit, e.g. 2s"),
            (
                "1.5s",
                "`1.5s`: fractions are not supported; use a smaller unit, e.g. 1500ms",
            ),
            (
                "2 s",
                "`2 s`: unknown unit ` s`; use ns, us, ms, s, m, h or d",
            ),
            (
                "2sec",
                "`2sec`: unknown unit `sec`; use ns, us, ms, s, m, h or d",
            ),
            (
                "-1s",
                "`-1s` is not a duration; expected e.g. 500ms, 2s or 1h30m",
            ),
            (
                "s",
                "`s` is not a duration; expected e.g. 500ms, 2s or 1h30m",
            ),
            (
                "99999999999999999999999999999d",
                "`99999999999999999999999999999d` is too large",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Err(want.to_string()), "{text}");
        }
    }
}
