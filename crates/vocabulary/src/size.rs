//! Sizes as operators write them, one syntax everywhere: `--max-message-size`,
//! `--throttle-database-size` (CLI and bindings), the adapters' `max_message_size` and
//! `batch_bytes_max` settings. Parsed by `bytesize`.

/// The largest size taken: 8 EiB less a byte (sizes are stored as PostgreSQL `bigint`).
pub const SIZE_MAX_BYTES: u64 = i64::MAX as u64;

/// Parses a size: plain bytes (`1048576`) or a number with a unit — `B`, `KB`, `MB`, `GB`,
/// `TB` (powers of 1000), `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) — as in `100MB`,
/// `512MiB`, `100 MB`, `1.5GB`; units in any case (`kB`, `mb`), `K`/`M`/`G` for `KB`/`MB`/`GB`.
/// Refused: no number, a sign, an unknown unit, above [`SIZE_MAX_BYTES`]. 0 is a size:
/// a caller that needs one above 0 says so.
///
/// The error reads `'TEXT' is not a size (why)` or `'TEXT' is too large (…)`, for the
/// caller to prefix with the argument or setting it came from.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    // bytesize saturates an overflowing product to u64::MAX; refusing everything above
    // SIZE_MAX_BYTES refuses that too
    let size: bytesize::ByteSize = trimmed
        .parse()
        .map_err(|e| format!("'{text}' is not a size ({e})"))?;
    let bytes = size.as_u64();
    if bytes > SIZE_MAX_BYTES {
        return Err(format!("'{text}' is too large (at most 8EiB)"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_spellings_are_sizes() {
        let cases = [
            ("1048576", 1_048_576),
            ("0", 0),
            ("100MB", 100_000_000),
            ("1MiB", 1 << 20),
            ("512KB", 512_000),
            ("512kB", 512_000),
            ("50GB", 50_000_000_000),
            ("512MiB", 512 << 20),
            ("1GiB", 1 << 30),
            ("10B", 10),
            ("2TB", 2_000_000_000_000),
            ("1TiB", 1 << 40),
            // a space, surrounding blanks, any case, a fraction
            ("100 MB", 100_000_000),
            (" 100MB ", 100_000_000),
            ("100mb", 100_000_000),
            ("1mib", 1 << 20),
            ("1.5GB", 1_500_000_000),
            ("1K", 1_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_size_is_refused_with_its_text() {
        for text in [
            "", "MB", "lots", "-5GB", "-1", "10 XB", "1e3", "100MBs", "0x10",
        ] {
            let e = parse_size(text).unwrap_err();
            assert!(
                e.starts_with(&format!("'{text}' is not a size (")),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn a_size_too_large_for_the_database_is_refused() {
        assert_eq!(parse_size("9223372036854775807"), Ok(SIZE_MAX_BYTES));
        for text in [
            "9223372036854775808",
            "16EiB",
            "99999999999999999999GB",
            "20EB",
        ] {
            let e = parse_size(text).unwrap_err();
            assert!(e.contains("too large"), "{text}: {e}");
        }
    }
}
