//! A parser for the Prometheus text exposition format (0.0.4) and the OpenMetrics 1.0 text
//! format, as far as reading sample values needs.
//!
//! Why our own: the one crate for this on crates.io, `prometheus-parse` 0.2, matches lines with
//! regular expressions and splits label sets on `,` and `=`, so a label value holding a comma,
//! an `=` or an escaped quote (`path="/a,b"`, `msg="say \"hi\""`) is silently mangled; it also
//! regroups histograms, losing the raw `_bucket` series, and pulls in chrono, regex and
//! itertools. `openmetrics-parser` is unmaintained since 2022. The grammar is small enough to
//! parse exactly by hand, and exactness is what assertions need.
//!
//! What is accepted:
//! - `# HELP name text` and `# TYPE name type` lines (kept), `# UNIT`, `# EOF` and any other
//!   comment (ignored); blank lines; `\n` or `\r\n` line ends.
//! - `name{label="value",…} value [timestamp]`, with an optional trailing comma in the label
//!   set, spaces or tabs between tokens, `\\`, `\"` and `\n` escapes in label values, and
//!   values such as `1.5e3`, `NaN`, `+Inf`, `-Inf`. Timestamps are kept as written (integer
//!   milliseconds in the Prometheus format, float seconds in OpenMetrics).
//! - Prometheus 3's quoted names: `{"http.requests", "label.x"="v"} 1`.
//! - An OpenMetrics exemplar (` # {…} value [ts]`) after the value is ignored.
//!
//! Histogram and summary families are kept as the flat series the format writes
//! (`x_bucket{le="0.1"}`, `x_sum`, `x_count`, `x{quantile="0.99"}`), so an assertion selects
//! exactly the series it names.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// As written: milliseconds (Prometheus) or seconds (OpenMetrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<f64>,
}

/// A metric family's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Untyped,
}

impl MetricType {
    fn parse(s: &str) -> MetricType {
        match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            _ => MetricType::Untyped,
        }
    }
}

/// A parsed exposition: every sample in order, and the families' declared types and help.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Exposition {
    pub series: Vec<Series>,
    pub types: BTreeMap<String, MetricType>,
    pub help: BTreeMap<String, String>,
}

impl Exposition {
    /// The declared type of the family a series belongs to (`x_bucket` → the type of `x`).
    pub fn type_of(&self, series_name: &str) -> Option<MetricType> {
        if let Some(t) = self.types.get(series_name) {
            return Some(*t);
        }
        [
            "_bucket", "_sum", "_count", "_total", "_created", "_gsum", "_gcount", "_info",
        ]
        .iter()
        .filter_map(|suf| series_name.strip_suffix(suf))
        .find_map(|base| self.types.get(base).copied())
    }

    /// Distinct series names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A line that is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses a whole exposition.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            parse_comment(comment, &mut out);
            continue;
        }
        let series = Cursor::new(trimmed).sample().map_err(err)?;
        out.series.push(series);
    }
    Ok(out)
}

fn parse_comment(comment: &str, out: &mut Exposition) {
    let mut words = comment
        .trim_start_matches([' ', '\t'])
        .splitn(3, [' ', '\t']);
    let (Some(kw), Some(name)) = (words.next(), words.next()) else {
        return;
    };
    let rest = words.next().unwrap_or("").trim();
    match kw {
        "TYPE" => {
            out.types.insert(name.to_string(), MetricType::parse(rest));
        }
        "HELP" => {
            out.help.insert(name.to_string(), unescape_help(rest));
        }
        _ => {}
    }
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) -> bool {
        let before = self.pos;
        let r = self.rest();
        self.pos += r.len() - r.trim_start_matches([' ', '\t']).len();
        self.pos > before
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// A bare name `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    fn name(&mut self) -> Option<&'a str> {
        let r = self.rest();
        let mut chars = r.char_indices();
        match chars.next() {
            Some((_, c)) if is_name_start(c) => {}
            _ => return None,
        }
        let end = chars
            .find(|(_, c)| !is_name_char(*c))
            .map(|(i, _)| i)
            .unwrap_or(r.len());
        self.pos += end;
        Some(&r[..end])
    }

    /// A double-quoted string with `\\`, `\"` and `\n` escapes; the cursor is on the quote.
    fn quoted(&mut self) -> Result<String, String> {
        if !self.eat('"') {
            return Err(format!("expected `\"` at `{}`", snippet(self.rest())));
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, o)) => return Err(format!("unknown escape `\\{o}` in a label value")),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".into())
    }

    fn token(&mut self) -> &'a str {
        let r = self.rest();
        let end = r.find([' ', '\t']).unwrap_or(r.len());
        self.pos += end;
        &r[..end]
    }

    fn sample(mut self) -> Result<Series, String> {
        let mut name = self.name().map(str::to_string);
        let mut labels = BTreeMap::new();
        let mut spaced = self.skip_ws();
        if self.eat('{') {
            self.labels(&mut name, &mut labels)?;
            spaced = self.skip_ws();
        }
        let name =
            name.ok_or_else(|| format!("expected a metric name at `{}`", snippet(self.rest())))?;
        if !spaced {
            return Err(format!(
                "expected a space and a value after `{name}`, found `{}`",
                snippet(self.rest())
            ));
        }
        let v = self.token();
        let value = parse_value(v).ok_or_else(|| format!("`{v}` is not a sample value"))?;
        self.skip_ws();
        let mut timestamp = None;
        if !self.rest().is_empty() && self.peek() != Some('#') {
            let t = self.token();
            timestamp = Some(
                t.parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite())
                    .ok_or_else(|| format!("`{t}` is not a timestamp"))?,
            );
            self.skip_ws();
        }
        // Whatever follows is an OpenMetrics exemplar (`# {…} v`) or garbage.
        if !self.rest().is_empty() && self.peek() != Some('#') {
            return Err(format!(
                "unexpected `{}` after the sample",
                snippet(self.rest())
            ));
        }
        Ok(Series {
            name,
            labels,
            value,
            timestamp,
        })
    }

    /// The label set after `{`, up to and including `}`. A quoted string not followed by `=`
    /// is the metric name (Prometheus 3 UTF-8 names).
    fn labels(
        &mut self,
        name: &mut Option<String>,
        labels: &mut BTreeMap<String, String>,
    ) -> Result<(), String> {
        loop {
            self.skip_ws();
            if self.eat('}') {
                return Ok(());
            }
            let key = if self.peek() == Some('"') {
                self.quoted()?
            } else {
                self.name()
                    .ok_or_else(|| format!("expected a label name at `{}`", snippet(self.rest())))?
                    .to_string()
            };
            self.skip_ws();
            if self.eat('=') {
                self.skip_ws();
                let value = self.quoted()?;
                if labels.insert(key.clone(), value).is_some() {
                    return Err(format!("label `{key}` appears twice"));
                }
            } else if name.is_none() {
                *name = Some(key);
            } else {
                return Err(format!("expected `=` after label `{key}`"));
            }
            self.skip_ws();
            if self.eat(',') {
                continue;
            }
            if self.eat('}') {
                return Ok(());
            }
            return Err(format!(
                "expected `,` or `}}` in the label set at `{}`",
                snippet(self.rest())
            ));
        }
    }
}

fn snippet(s: &str) -> &str {
    match s.char_indices().nth(24) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses a sample value: a float as Go's `strconv.ParseFloat` writes them, including `NaN`,
/// `+Inf`, `-Inf` (in any case).
pub fn parse_value(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    // Rust's parser accepts `inf`, `infinity` and `nan` in any case, with an optional sign:
    // the same set the Go client writes and Prometheus reads.
    s.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Series {
        let e = parse(line).unwrap();
        assert_eq!(e.series.len(), 1, "{line}");
        e.series.into_iter().next().unwrap()
    }

    #[test]
    fn plain_and_labelled_samples() {
        let s = one("up 1");
        assert_eq!((s.name.as_str(), s.value, s.labels.len()), ("up", 1.0, 0));
        let s = one("http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000");
        assert_eq!(s.labels["method"], "post");
        assert_eq!(s.labels["code"], "200");
        assert_eq!(s.value, 1027.0);
        assert_eq!(s.timestamp, Some(1395066363000.0));
        let s = one("x{a=\"1\",} 2");
        assert_eq!(s.labels["a"], "1");
        let s = one("x { a = \"1\" , b=\"2\" }\t3");
        assert_eq!((s.labels.len(), s.value), (2, 3.0));
        let s = one("x{} 4");
        assert_eq!(s.value, 4.0);
    }

    #[test]
    fn escapes_commas_and_equals_in_label_values() {
        let s = one(r#"msg{text="say \"hi\", then \\ and\nmore",path="/a=b,c"} 7"#);
        assert_eq!(s.labels["text"], "say \"hi\", then \\ and\nmore");
        assert_eq!(s.labels["path"], "/a=b,c");
        assert_eq!(s.value, 7.0);
    }

    #[test]
    fn special_values() {
        assert!(one("a NaN").value.is_nan());
        assert_eq!(one("a +Inf").value, f64::INFINITY);
        assert_eq!(one("a -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one("a 1.5e-3").value, 0.0015);
        assert_eq!(one("a -0.25").value, -0.25);
        assert!(parse("a").is_err());
        assert!(parse("a one").is_err());
        assert!(parse("a 1 two").is_err());
    }

    #[test]
    fn comments_help_type_and_histograms() {
        let text = "# HELP rpc_seconds RPC latency.\\nIn seconds.\n\
                    # TYPE rpc_seconds histogram\n\
                    rpc_seconds_bucket{le=\"0.05\"} 24054\n\
                    rpc_seconds_bucket{le=\"+Inf\"} 144320\n\
                    rpc_seconds_sum 53423\n\
                    rpc_seconds_count 144320\n\
                    \n\
                    # a free comment\n\
                    # TYPE q summary\n\
                    q{quantile=\"0.99\"} 3.5\r\n\
                    # EOF\n";
        let e = parse(text).unwrap();
        assert_eq!(e.series.len(), 5);
        assert_eq!(e.help["rpc_seconds"], "RPC latency.\nIn seconds.");
        assert_eq!(e.type_of("rpc_seconds_bucket"), Some(MetricType::Histogram));
        assert_eq!(e.type_of("rpc_seconds_count"), Some(MetricType::Histogram));
        assert_eq!(e.type_of("q"), Some(MetricType::Summary));
        assert_eq!(e.type_of("nope"), None);
        assert_eq!(e.series[1].labels["le"], "+Inf");
        assert_eq!(e.series[4].labels["quantile"], "0.99");
        assert_eq!(
            e.names(),
            vec![
                "q",
                "rpc_seconds_bucket",
                "rpc_seconds_count",
                "rpc_seconds_sum"
            ]
        );
    }

    #[test]
    fn openmetrics_exemplars_and_utf8_names() {
        let s = one("foo_total{a=\"b\"} 17 1520879607.789 # {trace_id=\"x\"} 1 1520879607.7");
        assert_eq!(s.value, 17.0);
        assert_eq!(s.timestamp, Some(1520879607.789));
        let s = one("foo_total 17 # {trace_id=\"x\"} 1");
        assert_eq!((s.value, s.timestamp), (17.0, None));
        let s = one("{\"my.metric\", \"le.x\"=\"1\"} 2");
        assert_eq!(s.name, "my.metric");
        assert_eq!(s.labels["le.x"], "1");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("ok 1\nbad{a=\"1\" 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("expected `,` or `}`"), "{e}");
        assert!(
            parse("x{a=\"1} 2")
                .unwrap_err()
                .message
                .contains("unterminated")
        );
        assert!(
            parse("x{a=\"\\q\"} 2")
                .unwrap_err()
                .message
                .contains("escape")
        );
        assert!(
            parse("x{a=\"1\",a=\"2\"} 2")
                .unwrap_err()
                .message
                .contains("twice")
        );
        assert!(parse("9x 1").is_err());
        assert!(parse("x{a=1} 1").is_err());
    }
}
