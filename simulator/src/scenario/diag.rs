//! Diagnostics for bad input: a message, the file, line and column it refers to, the source
//! line with a caret, and a hint (often "did you mean …?").
//!
//! A diagnostic is an error (the scenario is rejected) or a warning (it is accepted, but
//! something in it should change, e.g. a deprecated key): warnings are printed with the
//! errors, or on their own in front of a plan, and never fail validation.
//!
//! Rendering imitates rustc, which most users can read at a glance:
//! ```text
//! error: unknown node `gw-4` in probe `uplink`
//!   --> scenarios/quickstart.yaml:31:33
//!    |
//! 31 |     - {name: uplink, from: gw-1, ping: gw-4, every: 200ms}
//!    |                                        ^^^^
//!    = hint: did you mean `gw-1`? (nodes: sink, gw-1, gw-2, gw-3)
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use super::loc::Pos;

/// Whether a diagnostic rejects the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Severity {
    #[default]
    Error,
    /// Printed, but the file is still valid.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub pos: Pos,
    /// How many characters the caret underlines (at least one).
    pub width: usize,
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error.
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            pos,
            width: 1,
            hint: None,
        }
    }
    /// A warning: reported, but the file stays valid.
    pub fn warning(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::new(pos, message)
        }
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }
    pub fn width(mut self, w: usize) -> Self {
        self.width = w.max(1);
        self
    }
}

/// All problems found in one file, with the text they refer to, ready to print.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: &Path, source: &str, items: Vec<Diagnostic>) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            source: source.to_string(),
            items,
        }
    }
    /// How many of the items are errors.
    pub fn errors(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }
    /// How many of the items are warnings.
    pub fn warnings(&self) -> usize {
        self.items.len() - self.errors()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.source.lines().collect();
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{}: {}", d.severity, d.message)?;
            if d.pos.is_known() {
                writeln!(
                    f,
                    "  --> {}:{}:{}",
                    self.file.display(),
                    d.pos.line,
                    d.pos.column
                )?;
                if let Some(text) = lines.get(d.pos.line as usize - 1) {
                    let num = d.pos.line.to_string();
                    let pad = " ".repeat(num.len());
                    writeln!(f, "{pad} |")?;
                    writeln!(f, "{num} | {text}")?;
                    let col = (d.pos.column as usize).saturating_sub(1);
                    // Keep the caret under the same characters even when the line has tabs.
                    let lead: String = text
                        .chars()
                        .take(col)
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    writeln!(f, "{pad} | {lead}{}", "^".repeat(d.width))?;
                    if let Some(h) = &d.hint {
                        writeln!(f, "{pad} = hint: {h}")?;
                    }
                    continue;
                }
            } else {
                writeln!(f, "  --> {}", self.file.display())?;
            }
            if let Some(h) = &d.hint {
                writeln!(f, "   = hint: {h}")?;
            }
        }
        Ok(())
    }
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(f64, &'a str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        let dist = strsim::levenshtein(word, c);
        let plausible = score >= 0.82 || dist <= 2.max(word.len() / 4);
        if plausible && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A hint for an unknown name: "did you mean `x`?" when one is close, followed by the list of
/// valid names when it is short enough to read.
pub fn unknown_hint(word: &str, kind: &str, candidates: &[&str]) -> Option<String> {
    let close = did_you_mean(word, candidates.iter().copied());
    let list = if candidates.is_empty() {
        format!("there are no {kind}")
    } else if candidates.len() <= 12 {
        format!("{kind}: {}", candidates.join(", "))
    } else {
        format!(
            "{kind}: {}, … ({} in all)",
            candidates[..10].join(", "),
            candidates.len()
        )
    };
    Some(match close {
        Some(c) => format!("did you mean `{c}`? ({list})"),
        None => list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("dely", ["delay", "jitter", "loss"]),
            Some("delay")
        );
        assert_eq!(did_you_mean("gw-4", ["sink", "gw-1"]), Some("gw-1"));
        assert_eq!(did_you_mean("zzz", ["delay", "jitter"]), None);
    }

    #[test]
    fn renders_caret_under_the_column() {
        let src = "a: 1\nbb: oops\n";
        let d = Diagnostics::new(
            Path::new("x.yaml"),
            src,
            vec![
                Diagnostic::new(Pos { line: 2, column: 5 }, "bad value")
                    .width(4)
                    .hint("try 1"),
            ],
        );
        let s = d.to_string();
        assert_eq!(
            s,
            "error: bad value\n  --> x.yaml:2:5\n  |\n2 | bb: oops\n  |     ^^^^\n  = hint: try 1\n"
        );
    }

    #[test]
    fn warnings_render_as_warnings_and_are_counted_apart() {
        let src = "on: [a]\nbb: oops\n";
        let d = Diagnostics::new(
            Path::new("x.yaml"),
            src,
            vec![
                Diagnostic::warning(Pos { line: 1, column: 1 }, "old key").width(2),
                Diagnostic::new(Pos { line: 2, column: 5 }, "bad value"),
            ],
        );
        assert_eq!((d.errors(), d.warnings()), (1, 1));
        assert!(
            d.to_string().starts_with(
                "warning: old key\n  --> x.yaml:1:1\n  |\n1 | on: [a]\n  | ^^\n\nerror: bad value"
            ),
            "{d}"
        );
    }
}
