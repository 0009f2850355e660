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
