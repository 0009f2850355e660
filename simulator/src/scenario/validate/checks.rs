//! Probes and assertions: their targets, windows and expressions.

use super::*;

impl Validator<'_> {
    fn target_addr(&mut self, p: &Plan, host: &str, pos: Pos, ctx: &str) -> Option<Ipv4Addr> {
        if let Some(i) = p.node_index(host) {
            return Some(p.nodes[i].addr);
        }
        if let Ok(a) = host.parse::<Ipv4Addr>() {
            if p.pool.contains(&a) {
                return Some(a);
            }
            self.err(
                pos,
                format!("address {a} {ctx} is outside the lab's pool {}", p.pool),
            )
            .hint = Some("probes only reach addresses inside the lab".into());
            return None;
        }
        self.unknown(
            pos,
            "node",
            host,
            &format!(" {ctx}"),
            p.nodes.iter().map(|n| n.name.as_str()),
        );
        None
    }

    pub(super) fn probes(&mut self, p: &Plan) -> Vec<plan::Probe> {
        let sc = self.sc;
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for pr in &sc.spec.probes {
            self.name_ok(&pr.name, "probe");
            self.name_unique(&mut seen, &pr.name, "probe");
            let ctx = format!("in probe `{}`", pr.name.value);
            let from = self.select(std::slice::from_ref(&pr.from), &ctx);
            let from = match from.as_deref() {
                Some([one]) => Some(*one),
                Some(_) => {
                    self.err(
                        pr.from.pos,
                        format!(
                            "a probe runs from one node; `{}` selects several",
                            pr.from.value
                        ),
                    );
                    None
                }
                None => None,
            };
            let every = pr.every.as_ref().map_or(Duration::from_secs(1), |d| d.0);
            if every < Duration::from_millis(10) {
                let pos = pr.every.as_ref().map_or(pr.name.pos, |d| d.pos);
                self.err(pos, "probe interval must be at least 10ms");
            }
            let timeout = pr.timeout.as_ref().map_or(Duration::from_secs(1), |d| d.0);
            let n = [pr.ping.is_some(), pr.tcp.is_some(), pr.http.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if n != 1 {
                self.err(
                    pr.name.pos,
                    format!(
                        "probe `{}` needs exactly one of `ping`, `tcp`, `http`",
                        pr.name.value
                    ),
                );
                continue;
            }
            if pr.expect_status.is_some() && pr.http.is_none() {
                self.err(pr.name.pos, "`expectStatus` goes with `http`");
            }
            let kind = if let Some(t) = &pr.ping {
                self.target_addr(p, t, t.pos, &ctx)
                    .map(|addr| plan::ProbeKind::Ping {
                        target: t.value.clone(),
                        addr,
                    })
            } else if let Some(t) = &pr.tcp {
                match t.value.rsplit_once(':').and_then(|(h, port)| {
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .map(|port| (h, port))
                }) {
                    Some((h, port)) => {
                        self.target_addr(p, h, t.pos, &ctx)
                            .map(|a| plan::ProbeKind::Tcp {
                                target: h.to_string(),
                                addr: SocketAddrV4::new(a, port),
                            })
                    }
                    None => {
                        self.err(t.pos, format!("`{}` is not `node:port`", t.value))
                            .hint = Some("write e.g. `tcp: sink:8080`".into());
                        None
                    }
                }
            } else if let Some(u) = &pr.http {
                self.http_target(p, u, &ctx, pr.expect_status.as_ref().map(|s| s.value))
            } else {
                None
            };
            if let (Some(from), Some(kind)) = (from, kind) {
                out.push(plan::Probe {
                    name: pr.name.value.clone(),
                    from,
                    kind,
                    every,
                    timeout,
                });
            }
        }
        out
    }

    fn http_target(
        &mut self,
        p: &Plan,
        u: &Loc<String>,
        ctx: &str,
        expect_status: Option<u16>,
    ) -> Option<plan::ProbeKind> {
        let uri: http::Uri = match u.value.parse() {
            Ok(x) => x,
            Err(e) => {
                self.err(u.pos, format!("`{}` is not a URL: {e}", u.value));
                return None;
            }
        };
        if uri.scheme_str() != Some("http") {
            self.err(
                u.pos,
                format!("`{}`: only http:// URLs can be probed", u.value),
            )
            .hint = Some("write e.g. `http://sink:8080/healthz`".into());
            return None;
        }
        let host = uri.host()?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        let addr = self.target_addr(p, &host, u.pos, ctx)?;
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |pq| pq.as_str().to_string());
        Some(plan::ProbeKind::Http {
            url: u.value.clone(),
            target: host.clone(),
            addr: SocketAddrV4::new(addr, port),
            path,
            host: if port == 80 {
                host
            } else {
                format!("{host}:{port}")
            },
            expect_status,
        })
    }

    pub(super) fn assertions(&mut self, p: &Plan) -> Vec<plan::Assertion> {
        let sc = self.sc;
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for a in &sc.spec.assertions {
            self.name_unique(&mut seen, &a.name, "assertion");
            let subject = match (&a.probe, &a.metric) {
                (Some(pr), None) => {
                    if let Some(at) = &a.at {
                        self.err(
                            at.pos,
                            "`at` is for metric assertions; a probe assertion takes `during`",
                        );
                    }
                    let Some(pi) = p.probes.iter().position(|x| x.name == pr.value) else {
                        self.unknown(
                            pr.pos,
                            "probe",
                            pr,
                            "",
                            p.probes.iter().map(|x| x.name.as_str()),
                        );
                        continue;
                    };
                    let window = match &a.during {
                        None => crate::scenario::expect::Window::ALL,
                        Some(w) => {
                            match parse_window(w) {
                                Ok(win) => {
                                    let (f, t) = win.resolve(p.duration);
                                    if f >= p.duration || t > p.duration {
                                        self.err(w.pos, format!("window `{}` reaches past the end of the scenario ({})", w.value, Dur(p.duration)));
                                    }
                                    let _ = t;
                                    win
                                }
                                Err(m) => {
                                    self.err(w.pos, m);
                                    continue;
                                }
                            }
                        }
                    };
                    plan::Subject::Probe {
                        probe: pi,
                        window,
                        reference: None,
                    }
                }
                (None, Some(m)) => {
                    if let Some(d) = &a.during {
                        self.err(
                            d.pos,
                            "`during` is for probe assertions; a metric assertion takes `at`",
                        );
                    }
                    let Some(wi) = p.workload_index(&m.workload) else {
                        self.unknown(
                            m.workload.pos,
                            "workload",
                            &m.workload,
                            "",
                            p.workloads.iter().map(|w| w.name.as_str()),
                        );
                        continue;
                    };
                    let w = &p.workloads[wi];
                    let Some(ep) = &w.metrics else {
                        self.err(
                            m.workload.pos,
                            format!("workload `{}` declares no `metrics` endpoint", w.name),
                        )
                        .hint = Some(
                            "add `metrics: {port: 9100}` (and `path`, `format`) to the workload"
                                .into(),
                        );
                        continue;
                    };
                    match ep.format {
                        model::MetricsFormat::Prometheus => {
                            if m.name.is_none() {
                                self.err(
                                    m.workload.pos,
                                    "a Prometheus metric assertion needs `name`",
                                );
                            }
                            if let Some(j) = &m.json {
                                self.err(j.pos, format!("workload `{}` serves Prometheus text; `json` is for JSON endpoints", w.name));
                            }
                        }
                        model::MetricsFormat::Json => {
                            match &m.json {
                                None => {
                                    self.err(
                                        m.workload.pos,
                                        "a JSON metric assertion needs `json: /pointer/to/number`",
                                    );
                                }
                                Some(j) if !j.value.starts_with('/') => {
                                    self.err(
                                        j.pos,
                                        format!(
                                            "`{}` is not a JSON pointer (it starts with `/`)",
                                            j.value
                                        ),
                                    );
                                }
                                _ => {}
                            }
                            if let Some(n) = &m.name {
                                self.err(n.pos, format!("workload `{}` serves JSON; use `json: /pointer` instead of `name`", w.name));
                            }
                        }
                    }
                    let nodes = match &m.nodes {
                        None => w.nodes.clone(),
                        Some(sel) => {
                            let Some(ch) = self.select(sel, "in metric") else {
                                continue;
                            };
                            if let Some(x) = ch.iter().find(|n| !w.nodes.contains(n)) {
                                self.err(
                                    sel.pos,
                                    format!(
                                        "workload `{}` does not run on `{}`",
                                        w.name, p.nodes[*x].name
                                    ),
                                );
                                continue;
                            }
                            ch
                        }
                    };
                    let at = match &a.at {
                        None => Bound::End,
                        Some(s) => match parse_bound(s) {
                            Ok(Bound::Start) => {
                                self.err(
                                    s.pos,
                                    "a metric is read at an offset or at `end`, not at `start`",
                                );
                                continue;
                            }
                            Ok(Bound::At(d)) if d > p.duration => {
                                self.err(
                                    s.pos,
                                    format!(
                                        "{} is after the end of the scenario ({})",
                                        s.value,
                                        Dur(p.duration)
                                    ),
                                );
                                continue;
                            }
                            Ok(b) => b,
                            Err(e) => {
                                self.err(s.pos, e);
                                continue;
                            }
                        },
                    };
                    plan::Subject::Metric {
                        workload: wi,
                        name: m.name.as_ref().map(|n| n.value.clone()),
                        json: m.json.as_ref().map(|n| n.value.clone()),
                        labels: m.labels.clone(),
                        nodes,
                        aggregate: m.aggregate,
                        at,
                    }
                }
                _ => {
                    self.err(
                        a.name.pos,
                        format!(
                            "assertion `{}` needs exactly one of `probe` or `metric`",
                            a.name.value
                        ),
                    );
                    continue;
                }
            };
            let metric = matches!(subject, plan::Subject::Metric { .. });
            let mut subject = subject;
            match parse_expectation(&a.expect, metric) {
                Ok(expect) => {
                    if let (Some(r), plan::Subject::Probe { reference, .. }) =
                        (expect.reference(), &mut subject)
                    {
                        match p.probes.iter().position(|x| x.name == r.probe) {
                            Some(ri) => *reference = Some(ri),
                            None => {
                                let names: Vec<&str> =
                                    p.probes.iter().map(|x| x.name.as_str()).collect();
                                let d = self.err(
                                    a.expect.pos,
                                    format!(
                                        "assertion `{}` compares with unknown probe `{}`",
                                        a.name.value, r.probe
                                    ),
                                );
                                d.width = width(&a.expect);
                                d.hint =
                                    super::super::diag::unknown_hint(&r.probe, "probes", &names);
                                continue;
                            }
                        }
                    }
                    out.push(plan::Assertion {
                        name: a.name.value.clone(),
                        subject,
                        expect,
                    })
                }
                Err((m, h)) => {
                    let d = self.err(a.expect.pos, format!("assertion `{}`: {m}", a.name.value));
                    d.width = width(&a.expect);
                    d.hint = h;
                }
            }
        }
        out
    }
}
