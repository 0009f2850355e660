//! kube's `tower-test` double of the API server, for the kind target's unit tests: the only
//! test double the project allows, because no API server can run where the tests do.

// Test support: a failure here is a failed test, so it unwraps as the tests do (clippy's
// allow-unwrap-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used)]

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// A request the mock API server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub content_type: String,
    pub body: Value,
}

impl Seen {
    pub fn call(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// kube's tower-test double of the API server: `route` answers every request with a
/// status code and a JSON body; the task returns the requests seen once the client is
/// dropped.
pub fn mock(
    mut route: impl FnMut(&Seen) -> (u16, Value) + Send + 'static,
) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let s = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts
                    .uri
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                },
            };
            let (status, answer) = route(&s);
            seen.push(s);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        seen
    });
    (Client::new(svc, "default"), task)
}

pub fn not_found(what: &str) -> (u16, Value) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{what} not found"), "reason": "NotFound", "code": 404,
    });
    (404, status)
}

/// An `APIResourceList` as `GET /api/v1` or `/apis/<group>/<version>` answers it.
pub fn resources(group_version: &str, list: &[(&str, &str, bool)]) -> (u16, Value) {
    let resources: Vec<Value> = list
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({
                "name": plural, "singularName": "", "namespaced": namespaced, "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    (
        200,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}
