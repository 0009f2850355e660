//! Reading a workload's metrics from inside its node, and picking numbers out of them.
//!
//! [`scrape`] fetches the endpoint over HTTP/1.1 through the node's [`SocketFactory`] (so a
//! partitioned node is exactly as reachable as it would be for anyone else in its site) and
//! parses it: Prometheus/OpenMetrics text with our own parser ([`super::expo`]: see there why
//! not a crate), JSON with `serde_json`.
//!
//! [`select`] returns every matching series' value; [`aggregate`] folds them (and the values
//! of several workload instances) into the one number an assertion compares. A selection that
//! matches nothing is an error naming what was there, not an empty list: `== 0` on a metric
//! whose name was mistyped must fail, not pass.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use super::expo::{self, Exposition};
use super::net;
use crate::host::ns::SocketFactory;
use crate::scenario::model::{Aggregate, MetricsFormat};

/// A parsed metrics document.
#[derive(Debug, Clone, PartialEq)]
pub enum Scraped {
    Prometheus(Exposition),
    Json(serde_json::Value),
}

/// A scrape or selection that did not produce a number.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("scraping http://{addr}{path}: {source}")]
    Http {
        addr: SocketAddrV4,
        path: String,
        #[source]
        source: net::HttpError,
    },
    #[error("scraping http://{addr}{path}: no response within {}", crate::units::Dur(*.timeout))]
    Timeout {
        addr: SocketAddrV4,
        path: String,
        timeout: Duration,
    },
    #[error("scraping http://{addr}{path}: status {status}")]
    Status {
        addr: SocketAddrV4,
        path: String,
        status: u16,
    },
    #[error("parsing the metrics from http://{addr}{path}: {source}")]
    Parse {
        addr: SocketAddrV4,
        path: String,
        #[source]
        source: expo::ParseError,
    },
    #[error("parsing the JSON from http://{addr}{path}: {source}")]
    Json {
        addr: SocketAddrV4,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the metrics are not UTF-8 text")]
    NotText,
    #[error("{0}")]
    Select(String),
}

/// Fetches `http://addr{path}` from the namespace behind `sockets` and parses it as `format`,
/// all within `timeout`.
pub async fn scrape(
    sockets: &SocketFactory,
    addr: SocketAddrV4,
    path: &str,
    format: MetricsFormat,
    timeout: Duration,
) -> Result<Scraped, ScrapeError> {
    let host = addr.to_string();
    let resp = tokio::time::timeout(timeout, net::get(sockets, addr, &host, path))
        .await
        .map_err(|_| ScrapeError::Timeout {
            addr,
            path: path.to_string(),
            timeout,
        })?
        .map_err(|source| ScrapeError::Http {
            addr,
            path: path.to_string(),
            source,
        })?;
    if !resp.status.is_success() {
        return Err(ScrapeError::Status {
            addr,
            path: path.to_string(),
            status: resp.status.as_u16(),
        });
    }
    parse_body(&resp.body, format).map_err(|e| match e {
        BodyError::Text => ScrapeError::NotText,
        BodyError::Expo(source) => ScrapeError::Parse {
            addr,
            path: path.to_string(),
            source,
        },
        BodyError::Json(source) => ScrapeError::Json {
            addr,
            path: path.to_string(),
            source,
        },
    })
}

enum BodyError {
    Text,
    Expo(expo::ParseError),
    Json(serde_json::Error),
}

fn parse_body(body: &[u8], format: MetricsFormat) -> Result<Scraped, BodyError> {
    match format {
        MetricsFormat::Prometheus => {
            let text = std::str::from_utf8(body).map_err(|_| BodyError::Text)?;
            expo::parse(text)
                .map(Scraped::Prometheus)
                .map_err(BodyError::Expo)
        }
        MetricsFormat::Json => serde_json::from_slice(body)
            .map(Scraped::Json)
            .map_err(BodyError::Json),
    }
}

/// Parses an already fetched document (for callers that fetch by other means, e.g. `docker
/// exec` or SSH on other targets).
pub fn parse_document(body: &[u8], format: MetricsFormat) -> Result<Scraped, ScrapeError> {
    parse_body(body, format).map_err(|e| match e {
        BodyError::Text => ScrapeError::NotText,
        BodyError::Expo(e) => ScrapeError::Select(format!("parsing the metrics: {e}")),
        BodyError::Json(e) => ScrapeError::Select(format!("parsing the JSON: {e}")),
    })
}

/// The values of every series named `name` whose labels include all of `labels` (Prometheus),
/// or the number at JSON pointer `json` (JSON). Matching nothing is an error that lists what
/// the document does hold.
pub fn select(
    scraped: &Scraped,
    name: Option<&str>,
    json: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<f64>, ScrapeError> {
    match scraped {
        Scraped::Prometheus(e) => {
            let name = name.ok_or_else(|| {
                ScrapeError::Select("a Prometheus metric is selected by `name`".into())
            })?;
            let named: Vec<_> = e.series.iter().filter(|s| s.name == name).collect();
            if named.is_empty() {
                let names = e.names();
                let hint = match names
                    .iter()
                    .map(|n| (strsim::jaro_winkler(n, name), *n))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                {
                    Some((_, n)) => format!(" (did you mean `{n}`?)"),
                    None => format!(" ({} series names exposed)", names.len()),
                };
                return Err(ScrapeError::Select(format!(
                    "no series named `{name}`{hint}"
                )));
            }
            let values: Vec<f64> = named
                .iter()
                .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| s.value)
                .collect();
            if values.is_empty() {
                let want = fmt_labels(labels);
                let seen: Vec<String> = named
                    .iter()
                    .take(5)
                    .map(|s| fmt_labels(&s.labels))
                    .collect();
                return Err(ScrapeError::Select(format!(
                    "no `{name}` series has labels {want}; it has {}{}",
                    seen.join(", "),
                    if named.len() > 5 { ", …" } else { "" }
                )));
            }
            Ok(values)
        }
        Scraped::Json(doc) => {
            let ptr = json.ok_or_else(|| {
                ScrapeError::Select("a JSON metric is selected by a `json` pointer".into())
            })?;
            match doc.pointer(ptr) {
                Some(serde_json::Value::Number(n)) => n
                    .as_f64()
                    .map(|v| vec![v])
                    .ok_or_else(|| ScrapeError::Select(format!("`{ptr}` is not a finite number"))),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_f64())
                    .collect::<Option<Vec<f64>>>()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        ScrapeError::Select(format!("`{ptr}` is not an array of numbers"))
                    }),
                Some(other) => Err(ScrapeError::Select(format!(
                    "`{ptr}` is {}, not a number",
                    json_kind(other)
                ))),
                None => Err(ScrapeError::Select(format!(
                    "nothing at JSON pointer `{ptr}`"
                ))),
            }
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// Folds values into one; `None` for no values. NaN propagates (a NaN gauge is worth
/// reporting, not hiding).
pub fn aggregate(values: &[f64], how: Aggregate) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let nan = values.iter().any(|v| v.is_nan());
    Some(match how {
        Aggregate::Sum => values.iter().sum(),
        Aggregate::Avg => values.iter().sum::<f64>() / values.len() as f64,
        Aggregate::Max if nan => f64::NAN,
        Aggregate::Min if nan => f64::NAN,
        Aggregate::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregate::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregate::Distinct => {
            let mut v: Vec<u64> = values.iter().map(|x| x.to_bits()).collect();
            v.sort_unstable();
            v.dedup();
            v.len() as f64
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_counts_different_values() {
        assert_eq!(aggregate(&[3.0, 3.0, 3.0], Aggregate::Distinct), Some(1.0));
        assert_eq!(aggregate(&[3.0, 4.0, 3.0], Aggregate::Distinct), Some(2.0));
    }

    const TEXT: &str = "# TYPE req_total counter\n\
        req_total{code=\"200\",path=\"/a\"} 10\n\
        req_total{code=\"500\",path=\"/a\"} 2\n\
        req_total{code=\"200\",path=\"/b\"} 5\n\
        missing_total 0\n";

    fn prom() -> Scraped {
        parse_document(TEXT.as_bytes(), MetricsFormat::Prometheus).unwrap()
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selects_every_series_matching_the_labels() {
        let p = prom();
        let mut all = select(&p, Some("req_total"), None, &BTreeMap::new()).unwrap();
        all.sort_by(f64::total_cmp);
        assert_eq!(all, vec![2.0, 5.0, 10.0]);
        let ok = select(&p, Some("req_total"), None, &labels(&[("code", "200")])).unwrap();
        assert_eq!(aggregate(&ok, Aggregate::Sum), Some(15.0));
        let one = select(
            &p,
            Some("req_total"),
            None,
            &labels(&[("code", "200"), ("path", "/b")]),
        )
        .unwrap();
        assert_eq!(one, vec![5.0]);
        assert_eq!(
            select(&p, Some("missing_total"), None, &BTreeMap::new()).unwrap(),
            vec![0.0]
        );
    }

    #[test]
    fn selecting_nothing_is_an_error_that_helps() {
        let p = prom();
        let e = select(&p, Some("req_totl"), None, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("did you mean `req_total`"), "{e}");
        let e = select(&p, Some("req_total"), None, &labels(&[("code", "404")])).unwrap_err();
        assert!(e.to_string().contains("code=\"404\""), "{e}");
        assert!(e.to_string().contains("code=\"200\""), "{e}");
        assert!(select(&p, None, Some("/x"), &BTreeMap::new()).is_err());
    }

    #[test]
    fn json_pointers() {
        let doc = br#"{"sink": {"missing": 0, "received": 1200.5, "name": "x", "per": [1, 2, 3]}}"#;
        let j = parse_document(doc, MetricsFormat::Json).unwrap();
        let none = BTreeMap::new();
        assert_eq!(
            select(&j, None, Some("/sink/missing"), &none).unwrap(),
            vec![0.0]
        );
        assert_eq!(
            select(&j, None, Some("/sink/received"), &none).unwrap(),
            vec![1200.5]
        );
        assert_eq!(
            select(&j, None, Some("/sink/per"), &none).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        let e = select(&j, None, Some("/sink/name"), &none).unwrap_err();
        assert!(e.to_string().contains("a string"), "{e}");
        assert!(
            select(&j, None, Some("/nope"), &none)
                .unwrap_err()
                .to_string()
                .contains("nothing at")
        );
        assert!(select(&j, Some("x"), None, &none).is_err());
        assert!(parse_document(b"{", MetricsFormat::Json).is_err());
    }

    #[test]
    fn aggregates() {
        let v = [3.0, 1.0, 2.0];
        assert_eq!(aggregate(&v, Aggregate::Sum), Some(6.0));
        assert_eq!(aggregate(&v, Aggregate::Avg), Some(2.0));
        assert_eq!(aggregate(&v, Aggregate::Max), Some(3.0));
        assert_eq!(aggregate(&v, Aggregate::Min), Some(1.0));
        assert_eq!(aggregate(&[], Aggregate::Sum), None);
        assert!(
            aggregate(&[1.0, f64::NAN], Aggregate::Max)
                .unwrap()
                .is_nan()
        );
        assert_eq!(
            aggregate(&[1.0, f64::INFINITY], Aggregate::Sum),
            Some(f64::INFINITY)
        );
    }
}
