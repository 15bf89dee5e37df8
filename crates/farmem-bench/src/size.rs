//! Byte sizes as people write them: `4096`, `64K`, `1G`, `1GiB`, `2 gb`.
//!
//! Suffixes are binary (K = 1024) and case-insensitive, with an optional `B`/`iB` after the
//! letter (`1GB` is 2^30 here, as in `dd`, `free` and most memory tools). Only whole numbers
//! are accepted: write `1536M`, not `1.5G`.

/// A size string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Empty input.
    #[error("empty size: give a number of bytes with an optional K/M/G/T suffix, e.g. 512M")]
    Empty,
    /// The number part is missing or not a whole number.
    #[error(
        "{given:?} is not a size: give a whole number with an optional K/M/G/T suffix, e.g. 512M or 1536M (fractions like 1.5G are not accepted)"
    )]
    Number {
        /// The input.
        given: String,
    },
    /// The suffix is unknown.
    #[error(
        "{given:?} has unknown unit {unit:?}: use B, K, M, G or T (optionally followed by B or iB), binary multiples of 1024"
    )]
    Unit {
        /// The input.
        given: String,
        /// The unit part.
        unit: String,
    },
    /// The value does not fit in 64 bits.
    #[error("{given:?} is too large: sizes must be below 16 EiB")]
    Overflow {
        /// The input.
        given: String,
    },
}

const UNITS: [(char, u32); 4] = [('K', 10), ('M', 20), ('G', 30), ('T', 40)];

/// Parses a size in bytes; see the module docs for the accepted forms.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(SizeError::Number { given: s.into() });
    }
    let unit = unit.trim_start();
    if unit.starts_with(['.', ',']) {
        return Err(SizeError::Number { given: s.into() });
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        u => {
            let mut chars = u.chars();
            let letter = chars.next();
            let rest = chars.as_str();
            match UNITS.iter().find(|(c, _)| Some(*c) == letter) {
                Some(&(_, shift)) if matches!(rest, "" | "B" | "IB") => shift,
                _ => {
                    return Err(SizeError::Unit {
                        given: s.into(),
                        unit: unit.into(),
                    });
                }
            }
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::Overflow { given: s.into() })?;
    n.checked_mul(1u64 << shift)
        .ok_or(SizeError::Overflow { given: s.into() })
}

/// Formats a size exactly, in the largest binary unit that divides it: `1GiB`, `1536MiB`,
/// `4097B`. [`parse_size`] reads every output back to the same value.
pub fn format_size(bytes: u64) -> String {
    for &(c, shift) in UNITS.iter().rev() {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{c}iB", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Formats a size for reading, rounded to three significant digits: `1.50 GiB`, `977 KiB`.
pub fn format_size_approx(bytes: u64) -> String {
    for &(c, shift) in UNITS.iter().rev() {
        let unit = 1u64 << shift;
        if bytes >= unit {
            let v = bytes as f64 / unit as f64;
            let prec = if v >= 100.0 {
                0
            } else if v >= 10.0 {
                1
            } else {
                2
            };
            return format!("{v:.prec$} {c}iB");
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepted_forms() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size(" 2 M "), Ok(2 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096b"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn rejected_forms_say_why() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("G"), Err(SizeError::Number { .. })));
        assert!(matches!(parse_size("-1G"), Err(SizeError::Number { .. })));
        let e = parse_size("1.5G").unwrap_err();
        assert!(e.to_string().contains("1536M"), "{e}");
        assert!(matches!(parse_size("1X"), Err(SizeError::Unit { .. })));
        assert!(matches!(parse_size("1GiBB"), Err(SizeError::Unit { .. })));
        assert!(matches!(parse_size("1Bi"), Err(SizeError::Unit { .. })));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::Overflow { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow { .. })
        ));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        assert_eq!(format_size(4097), "4097B");
        assert_eq!(format_size_approx(1536 << 20), "1.50 GiB");
        assert_eq!(format_size_approx(1000 << 10), "1000 KiB");
        assert_eq!(format_size_approx(12), "12 B");
    }

    proptest! {
        #[test]
        fn format_then_parse_roundtrips(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        }

        #[test]
        fn suffixes_multiply(n in 0u64..(1 << 20), unit in 0usize..4, lower in any::<bool>(), tail in 0usize..3) {
            let (c, shift) = UNITS[unit];
            let c = if lower { c.to_ascii_lowercase() } else { c };
            let tail = ["", "B", "iB"][tail];
            prop_assert_eq!(parse_size(&format!("{n}{c}{tail}")), Ok(n << shift));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,12}") {
            let _ = parse_size(&s);
        }
    }
}
