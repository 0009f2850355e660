//! `Loc<T>`: a value together with where it was written, so that errors found after parsing
//! (an unknown node, a conflicting action) still point at a line and column.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A line and column in a scenario file (1-based; 0 when unknown, e.g. for values built in code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const UNKNOWN: Pos = Pos { line: 0, column: 0 };
    pub fn is_known(self) -> bool {
        self.line > 0
    }
}

/// Where `key:` is written in `text`, given the position of its value (serde records only
/// where values are): the text before the value, across blank space, line breaks and comments,
/// must be `key:` (the key bare or quoted). `None` when it is not.
pub fn key_before(text: &str, value: Pos, key: &str) -> Option<Pos> {
    let lines: Vec<&str> = text.lines().collect();
    let mut line = usize::try_from(value.line.checked_sub(1)?).ok()?;
    let col = usize::try_from(value.column.checked_sub(1)?).ok()?;
    let mut before: Vec<char> = lines.get(line)?.chars().take(col).collect();
    loop {
        while before.last().is_some_and(|c| c.is_whitespace()) {
            before.pop();
        }
        if !before.is_empty() {
            break;
        }
        // The value starts a line: the key ends an earlier one, perhaps before a comment (a
        // `#` inside a quoted string makes this give up, which only costs the caret).
        line = line.checked_sub(1)?;
        let l = lines[line];
        let l = if l.trim_start().starts_with('#') {
            ""
        } else {
            l.find(" #").map_or(l, |i| &l[..i])
        };
        before = l.chars().collect();
    }
    if before.pop() != Some(':') {
        return None;
    }
    while before.last().is_some_and(|c| *c == ' ' || *c == '\t') {
        before.pop();
    }
    let s: String = before.iter().collect();
    [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .find_map(|k| {
            let head = s.strip_suffix(k.as_str())?;
            // A whole key, not the end of a longer one (`xon:`).
            if head
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || "-_.\"'".contains(c))
            {
                return None;
            }
            // At the key's first letter, inside any quote.
            let quote = usize::from(k.len() > key.len());
            Some(Pos {
                line: u32::try_from(line + 1).ok()?,
                column: u32::try_from(head.chars().count() + 1 + quote).ok()?,
            })
        })
}

/// A value with its source position. Compares, hashes and serialises as the bare value.
#[derive(Clone, Default)]
pub struct Loc<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> Loc<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Loc { value, pos }
    }
    /// A value with no source position (built in code, not read from a file).
    pub fn bare(value: T) -> Self {
        Loc {
            value,
            pos: Pos::UNKNOWN,
        }
    }
    pub fn get(&self) -> &T {
        &self.value
    }
}

impl<T> Deref for Loc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl Borrow<str> for Loc<String> {
    fn borrow(&self) -> &str {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Loc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: fmt::Display> fmt::Display for Loc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Loc<T> {
    fn eq(&self, o: &Self) -> bool {
        self.value == o.value
    }
}
impl<T: Eq> Eq for Loc<T> {}
impl<T: PartialOrd> PartialOrd for Loc<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        self.value.partial_cmp(&o.value)
    }
}
impl<T: Ord> Ord for Loc<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.value.cmp(&o.value)
    }
}
impl<T: Hash> Hash for Loc<T> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.value.hash(h)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loc<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        let pos = Pos {
            line: u32::try_from(s.referenced.line()).unwrap_or(u32::MAX),
            column: u32::try_from(s.referenced.column()).unwrap_or(u32::MAX),
        };
        Ok(Loc {
            value: s.value,
            pos,
        })
    }
}

impl<T: Serialize> Serialize for Loc<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Loc<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, column: u32) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn finds_the_key_before_its_value() {
        let t = "- {name: w, on: [a]}\n- name: v\n  on:   # old\n\n    # still old\n    - a\n- \"on\": [b]\n- xon: [c]\n- on [d]\n";
        assert_eq!(key_before(t, at(1, 17), "on"), Some(at(1, 13)));
        assert_eq!(key_before(t, at(6, 5), "on"), Some(at(3, 3)));
        assert_eq!(key_before(t, at(7, 9), "on"), Some(at(7, 4)));
        assert_eq!(key_before(t, at(8, 8), "on"), None, "`xon` is another key");
        assert_eq!(key_before(t, at(9, 6), "on"), None, "no colon");
        assert_eq!(key_before(t, at(1, 1), "on"), None, "nothing before");
        assert_eq!(key_before(t, Pos::UNKNOWN, "on"), None);
    }
}
