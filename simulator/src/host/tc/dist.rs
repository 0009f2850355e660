//! netem delay-distribution tables, read from the files iproute2 installs (`normal.dist`,
//! `pareto.dist`, `paretonormal.dist`) and parsed exactly as `tc` parses them, so the table
//! the kernel receives is the one `tc … distribution NAME` would send. Where the files are not
//! installed (board images, minimal containers), the qdisc code takes the same tables computed
//! by [`crate::linkem::dist`] (a port of iproute2's generators, unit-tested equal to the files).

use std::path::{Path, PathBuf};

use super::Distribution;
use crate::host::{HostError, Result};

/// Most entries tc accepts in a table (`MAX_DIST`).
pub const MAX_DIST: usize = 16 * 1024;

/// Directories searched for `NAME.dist`, in order: `$TC_LIB_DIR` (as tc honours it), then
/// where Debian/Ubuntu (multiarch), Fedora/RHEL and upstream's default install them.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("TC_LIB_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let arch = std::env::consts::ARCH;
    dirs.push(PathBuf::from(format!("/usr/lib/{arch}-linux-gnu/tc")));
    for d in ["/usr/lib64/tc", "/usr/lib/tc", "/usr/share/tc"] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

impl Distribution {
    /// The file stem iproute2 uses, for the distributions it ships.
    pub fn name(&self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Normal => "normal",
            Distribution::Pareto => "pareto",
            Distribution::ParetoNormal => "paretonormal",
            Distribution::Custom(_) => "custom",
        }
    }

    /// The table to send as `TCA_NETEM_DELAY_DIST`: `None` for uniform (the kernel's built-in
    /// behaviour when no table is given; iproute2 ships no `uniform.dist`), the given values
    /// for a custom table, else the iproute2 file found in [`search_dirs`].
    pub fn table(&self) -> Result<Option<Vec<i16>>> {
        match self {
            Distribution::Uniform => Ok(None),
            Distribution::Custom(v) => Ok(Some(v.clone())),
            named => {
                let file = format!("{}.dist", named.name());
                let dirs = search_dirs();
                let path = dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file());
                match path {
                    Some(p) => load(&p).map(Some),
                    None => Err(HostError::other(
                        "loading netem delay distribution",
                        file,
                        format!(
                            "not found in {} (install iproute2's tc data files or set TC_LIB_DIR)",
                            dirs.iter()
                                .map(|d| d.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )),
                }
            }
        }
    }
}

/// Reads and parses one `.dist` file.
pub fn load(path: &Path) -> Result<Vec<i16>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| HostError::io("reading netem distribution", path.display().to_string(), e))?;
    parse(&text).map_err(|detail| {
        HostError::other(
            "parsing netem distribution",
            path.display().to_string(),
            detail,
        )
    })
}

/// tc's parser: lines that are empty or start with `#` are skipped; on other lines numbers are
/// read with `strtol(…, 0)` (decimal, `0x` hex, leading-`0` octal) until the first token that
/// is not one; each value is truncated to 16 bits as the C assignment to `__s16` does.
pub fn parse(text: &str) -> std::result::Result<Vec<i16>, String> {
    let mut out = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.starts_with('\n') || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        while let Some((value, tail)) = strtol(rest) {
            if out.len() >= MAX_DIST {
                return Err(format!("too much data (more than {MAX_DIST} values)"));
            }
            // Truncation to 16 bits is the C behaviour being reproduced.
            out.push(value as i16);
            rest = tail;
        }
    }
    if out.is_empty() {
        return Err("no values".into());
    }
    Ok(out)
}

/// `strtol(s, &end, 0)`: the value and the rest, or `None` when no number starts `s`.
fn strtol(s: &str) -> Option<(i64, &str)> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (16, &t[2..])
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let mag = i64::from_str_radix(&digits[..end], radix).unwrap_or(i64::MAX);
    Some((if neg { -mag } else { mag }, &digits[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_tc() {
        let text = "# comment\n 1 -2 0x10 010\n\n3 junk 4\n-32769\n";
        assert_eq!(parse(text).unwrap(), vec![1, -2, 16, 8, 3, 32767]);
        assert!(parse("# nothing\n").is_err());
    }

    #[test]
    fn installed_tables_load() {
        for d in [
            Distribution::Normal,
            Distribution::Pareto,
            Distribution::ParetoNormal,
        ] {
            match d.table() {
                Ok(Some(t)) => assert_eq!(t.len(), 4096, "{}", d.name()),
                Ok(None) => panic!("{} must have a table", d.name()),
                Err(e) => eprintln!("skipped: iproute2 distribution files absent: {e}"),
            }
        }
        assert_eq!(Distribution::Uniform.table().unwrap(), None);
    }
}
