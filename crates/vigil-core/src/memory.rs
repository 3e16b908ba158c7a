//! Memory checks before large allocations.
//!
//! Sizes that come from a user (a file's header, `--draws`) are checked here before anything is
//! allocated: an allocation the machine cannot hold aborts the process (no error, no cleanup),
//! and one beyond the address space panics. Every caller states what it needs in bytes and gets
//! a typed error naming the need and what is available.

/// A planned allocation that cannot fit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} would need {} but {}", human_bytes(*.needed), available_text(*.available))]
pub struct OutOfMemory {
    /// What would be allocated.
    pub what: String,
    /// Bytes needed (saturated at `u64::MAX` when the size overflows).
    pub needed: u64,
    /// Bytes the system reports available (`MemAvailable`), when it could be read.
    pub available: Option<u64>,
}

fn available_text(available: Option<u64>) -> String {
    match available {
        Some(bytes) => format!("only {} of memory is available", human_bytes(bytes)),
        None => "that is beyond what this machine can address".into(),
    }
}

/// Bytes as a short human figure (`1.5 GB`, decimal units).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e12 {
        format!("{:.1} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{bytes} bytes")
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` where it cannot be read, e.g. not Linux).
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// The `MemAvailable:` line of a `/proc/meminfo` text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut parts = line.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(unit)
}

/// Refuses an allocation of `needed` bytes for `what` when it exceeds the address space
/// (`isize::MAX`, what Rust can allocate at all) or the memory available now.
pub fn check_fits(what: impl Into<String>, needed: u64) -> Result<(), OutOfMemory> {
    check_fits_within(what, needed, available_bytes())
}

/// [`check_fits`] against a given `available` figure (tests; `None` = unknown).
pub fn check_fits_within(
    what: impl Into<String>,
    needed: u64,
    available: Option<u64>,
) -> Result<(), OutOfMemory> {
    let addressable = isize::MAX as u64;
    let over_available = available.is_some_and(|a| needed > a);
    if needed > addressable || over_available {
        return Err(OutOfMemory {
            what: what.into(),
            needed,
            available,
        });
    }
    Ok(())
}

/// The product of `factors` in bytes, saturating at `u64::MAX` (which no machine has, so an
/// overflowing size is refused as too large instead of wrapping around to a small one).
pub fn bytes_of(factors: &[usize]) -> u64 {
    factors
        .iter()
        .fold(1u64, |acc, &f| acc.saturating_mul(f as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed_in_kibibytes() {
        let text = "MemTotal:  16000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn sizes_beyond_memory_or_address_space_are_refused() {
        assert!(check_fits_within("x", 1000, Some(2000)).is_ok());
        assert!(check_fits_within("x", 1000, None).is_ok());
        let err = check_fits_within("the traces", 3_000_000_000, Some(2_000_000_000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the traces would need 3.0 GB but only 2.0 GB of memory is available"
        );
        let err = check_fits_within("x", u64::MAX, None).unwrap_err();
        assert!(err.to_string().contains("beyond"), "{err}");
        assert_eq!(bytes_of(&[usize::MAX, 4]), u64::MAX);
        assert_eq!(bytes_of(&[2, 3, 4]), 24);
    }
}
